"""The CycleGAN networks (ResNet-style generator, PatchGAN discriminator, the fake-image history
pool), their image range, and the generator files a finished run holds (`load_generator`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file

from dive.generate.sources import read_rgb

GENERATOR_WEIGHTS = "generator.safetensors"
GENERATOR_CONFIG = "generator.json"
FORMAT = "dive-cyclegan-v1"


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels), nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """Image-to-image generator (see the module docstring); input and output in [-1, 1]."""

    def __init__(self, width: int = 16, blocks: int = 4, downsamples: int = 2):
        super().__init__()
        self.spec = {"width": width, "blocks": blocks, "downsamples": downsamples}
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(3, width, 7), nn.InstanceNorm2d(width),
                                   nn.ReLU(inplace=True)]
        ch = width
        for _ in range(downsamples):
            layers += [nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1), nn.InstanceNorm2d(ch * 2), nn.ReLU(inplace=True)]
            ch *= 2
        layers += [ResidualBlock(ch) for _ in range(blocks)]
        for _ in range(downsamples):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.ReflectionPad2d(1), nn.Conv2d(ch, ch // 2, 3),
                       nn.InstanceNorm2d(ch // 2), nn.ReLU(inplace=True)]
            ch //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ch, 3, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PatchDiscriminator(nn.Module):
    """PatchGAN: one real/fake score per overlapping patch (no sigmoid: least-squares loss)."""

    def __init__(self, width: int = 16, layers: int = 2):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(3, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        ch = width
        for _ in range(layers - 1):
            mods += [nn.Conv2d(ch, ch * 2, 4, stride=2, padding=1), nn.InstanceNorm2d(ch * 2), nn.LeakyReLU(0.2, inplace=True)]
            ch *= 2
        mods += [nn.Conv2d(ch, ch * 2, 4, stride=1, padding=1), nn.InstanceNorm2d(ch * 2), nn.LeakyReLU(0.2, inplace=True),
                 nn.Conv2d(ch * 2, 1, 4, stride=1, padding=1)]
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ImagePool(nn.Module):
    """History of generated images shown to a discriminator (Shrivastava et al. 2017): once full,
    each new fake is returned as is or swapped for a stored one, with probability 1/2. Its
    contents are buffers, so checkpoints carry them."""

    def __init__(self, size: int, shape: tuple[int, int, int]):
        super().__init__()
        self.size = size
        self.register_buffer("images", torch.zeros((size, *shape)))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))

    def query(self, fakes: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        coins = torch.rand(len(fakes), generator=g)
        slots = torch.randint(0, self.size, (len(fakes),), generator=g)
        out = []
        for img, coin, slot in zip(fakes, coins.tolist(), slots.tolist()):
            n = int(self.count)
            if n < self.size:
                self.images[n] = img
                self.count += 1
                out.append(img)
            elif coin < 0.5:
                out.append(self.images[slot].clone())
                self.images[slot] = img
            else:
                out.append(img)
        return torch.stack(out)


def init_weights(module: nn.Module) -> None:
    """N(0, 0.02) convolution weights, zero biases (the CycleGAN initialisation)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def rgb_tensor(path: str | Path, height: int, width: int) -> torch.Tensor:
    """uint8 (3, height, width) tensor of one image."""
    return torch.from_numpy(np.array(read_rgb(path, height, width))).permute(2, 0, 1)


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return x.float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def load_generator(path: Path) -> tuple[ResnetGenerator, dict]:
    """G and its generator.json from a run folder (or any folder holding the two files)."""
    folder = Path(path)
    cfg_path, weights = folder / GENERATOR_CONFIG, folder / GENERATOR_WEIGHTS
    for p in (cfg_path, weights):
        if not p.is_file():
            hint = " (training has not finished: rerun `dive baseline cyclegan train`)" if (folder / "config.json").exists() else ""
            raise FileNotFoundError(f"{p}: missing; a CycleGAN generator folder holds {GENERATOR_WEIGHTS} + "
                                    f"{GENERATOR_CONFIG}{hint}")
    try:
        meta = json.loads(cfg_path.read_text())
        spec = meta["generator"]
        gen = ResnetGenerator(int(spec["width"]), int(spec["blocks"]), int(spec["downsamples"]))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{cfg_path}: not a CycleGAN generator config ({err.__class__.__name__}: {err})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{cfg_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    try:
        state = load_file(str(weights))
        gen.load_state_dict(state)
    except Exception as err:  # safetensors and load_state_dict raise several types
        raise ValueError(f"{weights}: does not hold the generator {spec} ({err.__class__.__name__}: {err})") from None
    gen.eval()
    return gen, meta
