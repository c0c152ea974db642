"""Image transforms for ReID training and testing on batched torch tensors (no torchvision).

Images are cached as uint8 tensors (N, 3, H, W); a batch is augmented as a whole, each image with
its own random parameters drawn from a ``torch.Generator`` passed in (so the same generator state
gives the same pixels). The number of random numbers drawn per call depends only on the batch
size, never on earlier outcomes, so one augmentation never shifts the randomness of the next.

Training pipeline (AGW): zero-pad 10 px + random crop back to size, horizontal flip p = 0.5,
normalise (ImageNet mean / std), random erasing p = 0.5 (a rectangle of 2-40 % of the image,
aspect 0.3-3.3, filled with the per-channel mean, i.e. 0 after normalising).
CAJ adds, for every visible image, a channel-augmented copy: one of R / G / B copied to all three
channels, or (1 time in 4) the image left as is and then turned grayscale with p = 0.5; the copy
gets its own crop / flip and a random erasing with p = 0.5 whose fill is drawn per channel
("channel-level" erasing). The channel mixing is applied to [0, 1] pixels before normalising.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dive.utils.io import load_rgb

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)


# --------------------------------------------------------------------------------------------
# loading and deterministic transforms
# --------------------------------------------------------------------------------------------


def load_image(path: str | Path, height: int, width: int) -> np.ndarray:
    """An image file as uint8 (3, height, width) RGB (bilinear resize when the size differs)."""
    im = load_rgb(path)
    if im.size != (width, height):
        im = im.resize((width, height), Image.BILINEAR)
    return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1).copy()


def load_images(paths: Sequence[str], height: int, width: int, progress: bool = False,
                desc: str = "images") -> torch.Tensor:
    """All images as one uint8 tensor (N, 3, height, width): the training / test cache."""
    out = np.empty((len(paths), 3, height, width), dtype=np.uint8)
    it = enumerate(paths)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, total=len(paths), desc=desc, unit="img", leave=False)
    for i, p in it:
        out[i] = load_image(p, height, width)
    return torch.from_numpy(out)


def resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear (antialiased) resize of a (N, 3, h, w) batch; uint8 in, uint8 out."""
    if x.shape[-2:] == (height, width):
        return x
    was_uint8 = x.dtype == torch.uint8
    y = F.interpolate(x.float(), size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return y.round().clamp(0, 255).to(torch.uint8) if was_uint8 else y


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [0, 1]."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def normalize(x: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


def hflip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


# --------------------------------------------------------------------------------------------
# random transforms (per image parameters from a torch.Generator)
# --------------------------------------------------------------------------------------------


def _uniform(n: int, gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand((n,) + shape, generator=gen)


def pad_random_crop(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Zero-pad by `pad` pixels on each side, then crop a random window of the original size."""
    if pad <= 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    offs = torch.randint(0, 2 * pad + 1, (n, 2), generator=gen)
    out = torch.empty_like(x)
    for i in range(n):
        dy, dx = int(offs[i, 0]), int(offs[i, 1])
        out[i] = padded[i, :, dy:dy + h, dx:dx + w]
    return out


def random_hflip(x: torch.Tensor, gen: torch.Generator, p: float = 0.5) -> torch.Tensor:
    flip = _uniform(x.shape[0], gen) < p
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def random_erasing(x: torch.Tensor, gen: torch.Generator, p: float = 0.5, area: tuple[float, float] = (0.02, 0.4),
                   min_aspect: float = 0.3, fill: str = "zero", attempts: int = 10) -> torch.Tensor:
    """Random erasing (Zhong et al.) on a normalised float batch, in place on a copy.

    Each image is erased with probability `p`: up to `attempts` (area, aspect, position) draws,
    the first rectangle that fits is filled with 0 (``fill="zero"``: the per-channel mean after
    normalising) or with one random value per channel (``fill="channel"``, drawn in [-1, 1]).
    """
    x = x.clone()
    n, c, h, w = x.shape
    do = _uniform(n, gen) < p
    r = _uniform(n, gen, attempts, 4)
    vals = _uniform(n, gen, c) * 2.0 - 1.0
    log_lo, log_hi = math.log(min_aspect), math.log(1.0 / min_aspect)
    for i in range(n):
        if not bool(do[i]):
            continue
        for a in range(attempts):
            ra, rr, ry, rx = (float(v) for v in r[i, a])
            target = (area[0] + (area[1] - area[0]) * ra) * h * w
            aspect = math.exp(log_lo + (log_hi - log_lo) * rr)
            eh = int(round(math.sqrt(target * aspect)))
            ew = int(round(math.sqrt(target / aspect)))
            if 0 < eh < h and 0 < ew < w:
                y0 = int(ry * (h - eh + 1))
                x0 = int(rx * (w - ew + 1))
                if fill == "channel":
                    x[i, :, y0:y0 + eh, x0:x0 + ew] = vals[i].view(c, 1, 1)
                else:
                    x[i, :, y0:y0 + eh, x0:x0 + ew] = 0.0
                break
    return x


def channel_augment(x: torch.Tensor, gen: torch.Generator, gray_p: float = 0.5) -> torch.Tensor:
    """CAJ's channel exchange on a [0, 1] float batch: per image, one of four cases uniformly:
    R, G or B copied to all three channels, or the image kept and made grayscale with p = gray_p."""
    n = x.shape[0]
    choice = torch.randint(0, 4, (n,), generator=gen)
    gray_u = _uniform(n, gen)
    w = torch.tensor(GRAY_WEIGHTS, dtype=x.dtype).view(1, 3, 1, 1)
    gray = (x * w).sum(1, keepdim=True).expand_as(x)
    out = x.clone()
    for ch in range(3):
        sel = choice == ch
        if bool(sel.any()):
            out[sel] = x[sel, ch:ch + 1].expand(-1, 3, -1, -1)
    sel = (choice == 3) & (gray_u < gray_p)
    if bool(sel.any()):
        out[sel] = gray[sel]
    return out


@dataclass(frozen=True)
class AugmentConfig:
    pad: int = 10
    flip_p: float = 0.5
    erasing_p: float = 0.5
    channel_gray_p: float = 0.5
    channel_erasing_p: float = 0.5


def augment_batch(x: torch.Tensor, gen: torch.Generator, cfg: AugmentConfig = AugmentConfig(),
                  channel: bool = False) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> normalised float, with the training augmentations.

    ``channel=True`` makes the CAJ channel-augmented version (channel exchange / grayscale and
    channel-level erasing with ``channel_erasing_p``); otherwise plain AGW augmentation.
    """
    y = pad_random_crop(x, cfg.pad, gen)
    y = random_hflip(y, gen, cfg.flip_p)
    y = to_float(y)
    if channel:
        y = channel_augment(y, gen, cfg.channel_gray_p)
        return random_erasing(normalize(y), gen, cfg.channel_erasing_p, fill="channel")
    return random_erasing(normalize(y), gen, cfg.erasing_p, fill="zero")


def eval_batch(x: torch.Tensor) -> torch.Tensor:
    """uint8 batch -> normalised float (no augmentation)."""
    return normalize(to_float(x))
