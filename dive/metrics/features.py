"""Feature extractors for the quality metrics (`dive metrics`): one interface, two networks.

An extractor is called as ``extractor(paths, infrared) -> (N, dim) float32`` (``infrared``: one
bool per image) and says what it is with ``describe() -> dict`` (name, weights file and their
sha256, which layer); every metrics report stores that description.

* ``ReIDFeatures(run)``: a VI-ReID network trained by ``dive reid train`` / ``run``. Every image
  goes through its own modality's stem (infrared images through the infrared stream, visible
  through the visible one), then the shared layers. ``feature="pooled"`` (default) is the GeM
  pooled feature before the BN neck (what the triplet loss sees); ``"bnneck"`` is the BN-neck
  output, the feature the ReID test uses.
* ``InceptionFeatures(weights)``: the Inception-v3 network of the FID (pool3, 2048 dimensions),
  rebuilt here in plain torch with the layout of pytorch-fid's ``FIDInceptionA/C/E_1/E_2``
  blocks (average pools that do not count padding; max pool in the last block's pool branch)
  and loaded from a ``.safetensors`` file holding the usual torchvision / pytorch-fid names
  (``Conv2d_1a_3x3.conv.weight``, ..., or pytorch-fid's wrapper names ``blocks.0.0.conv.weight``
  ...). Images are scaled to [0, 1], resized to 299x299 (bilinear, ``align_corners=False``) and
  mapped to [-1, 1], as pytorch-fid does. No weights ship with the project and nothing can be
  downloaded here, so without ``--inception-weights`` only the ReID extractor is available. The
  architecture is checked (every tensor's name and shape must match) but it could not be checked
  against reference activations offline: numbers are comparable with each other, and with
  published FIDs only once the module has been validated on the real weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dive.utils.io import load_rgb, sha256_file
from dive.utils.threads import torch_threads

REID_FEATURES = ("pooled", "bnneck")


class FeatureExtractor(Protocol):
    kind: str

    def describe(self) -> dict: ...

    def __call__(self, paths: Sequence[str], infrared: Sequence[bool], *, progress: bool = False,
                 desc: str = "features") -> np.ndarray: ...


def _batches(n: int, size: int, progress: bool, desc: str):
    starts = range(0, n, max(1, size))
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=desc, unit="batch", leave=False)
    return starts


# ------------------------------------------------------------------------------------------------
# VI-ReID network
# ------------------------------------------------------------------------------------------------


class ReIDFeatures:
    """Features of a trained VI-ReID run folder (or a ``.safetensors`` + ``.json`` checkpoint)."""

    kind = "reid"

    def __init__(self, run: str | Path, feature: str = "pooled", *, batch_size: int = 64, threads: int = 1,
                 device: str = "cpu"):
        from dive.reid.train import load_checkpoint

        if feature not in REID_FEATURES:
            raise ValueError(f"feature must be one of {REID_FEATURES}; got {feature!r}")
        self.run = Path(run)
        self.model, self.meta = load_checkpoint(self.run)
        if (self.meta.get("model_spec") or {}).get("dee_branches"):
            raise ValueError(f"{self.run}: a DEEN network (several expanded embeddings per image); the quality "
                             "metrics read one AGW / CAJ feature per image: give an AGW or CAJ run as the feature model")
        weights = (self.run / "model.safetensors") if self.run.is_dir() else self.run.with_suffix(".safetensors")
        self.weights = weights
        self.sha256 = sha256_file(weights)
        stored = self.meta.get("weights_sha256")
        if stored and stored != self.sha256:
            raise ValueError(f"{weights}: sha256 {self.sha256[:12]} differs from the {stored[:12]} recorded in "
                             f"{weights.with_suffix('.json').name}; the checkpoint was modified")
        self.feature = feature
        self.batch_size = int(batch_size)
        self.threads = int(threads)
        self.device = torch.device(device)
        self.model.to(self.device).eval()

    @property
    def dim(self) -> int:
        return int(self.model.feat_dim)

    def describe(self) -> dict:
        cfg = self.meta.get("config", {})
        return {
            "kind": self.kind,
            "name": f"reid-{cfg.get('method', 'model')}-{self.feature}",
            "run": str(self.run.resolve()),
            "weights": str(self.weights.resolve()),
            "weights_sha256": self.sha256,
            "feature": self.feature,
            "feature_dim": self.dim,
            "method": cfg.get("method"),
            "seed": cfg.get("seed"),
            "model_spec": self.meta.get("model_spec"),
            "epoch": self.meta.get("epoch"),
            "selected_by": self.meta.get("selected_by"),
            "trained_on": (self.meta.get("meta") or {}).get("data"),
            "streams": "each image through its own modality's stem (infrared -> stem_infrared)",
        }

    @torch.no_grad()
    def __call__(self, paths: Sequence[str], infrared: Sequence[bool], *, progress: bool = False,
                 desc: str = "features") -> np.ndarray:
        from dive.reid.transforms import eval_batch, load_images

        paths = [str(p) for p in paths]
        is_ir = np.asarray(infrared, dtype=bool).reshape(-1)
        if is_ir.size != len(paths):
            raise ValueError(f"{is_ir.size} modality flags for {len(paths)} images")
        spec = self.model.spec
        out = np.empty((len(paths), self.dim), dtype=np.float32)
        with torch_threads(self.threads):
            for code in (False, True):
                idx = np.flatnonzero(is_ir == code)
                stream = "infrared" if code else "visible"
                for s in _batches(idx.size, self.batch_size, progress and idx.size > 0, f"{desc} ({stream})"):
                    sel = idx[s:s + self.batch_size]
                    x = eval_batch(load_images([paths[i] for i in sel], spec.height, spec.width)).to(self.device)
                    f = self.model.pooled(x, stream)
                    if self.feature == "bnneck":
                        f = self.model.bnneck(f)
                    out[sel] = f.float().cpu().numpy()
        return out


# ------------------------------------------------------------------------------------------------
# FID Inception-v3
# ------------------------------------------------------------------------------------------------


class BasicConv2d(nn.Module):
    """conv (no bias) + BN (eps 1e-3) + ReLU, torchvision's naming (`conv`, `bn`)."""

    def __init__(self, cin: int, cout: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    # the FID network's pools do not count the zero padding (the TF graph's behaviour)
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            d = layer(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    def __init__(self, cin: int, pool: str):
        super().__init__()
        self.pool = pool  # "avg" (Mixed_7b) or "max" (Mixed_7c), as in the FID graph
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        p = _avg_pool(x) if self.pool == "avg" else F.max_pool2d(x, 3, stride=1, padding=1)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(p)], 1)


class FIDInceptionV3(nn.Module):
    """Inception-v3 up to the 2048-d pool3 feature, with the FID graph's pooling variants."""

    input_size = 299
    feat_dim = 2048

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, 32)
        self.Mixed_5c = InceptionA(256, 64)
        self.Mixed_5d = InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128)
        self.Mixed_6c = InceptionC(768, 160)
        self.Mixed_6d = InceptionC(768, 160)
        self.Mixed_6e = InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, "avg")
        self.Mixed_7c = InceptionE(2048, "max")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x`: float images in [0, 1], (N, 3, H, W), any size -> (N, 2048)."""
        x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        x = 2.0 * x - 1.0
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                     "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(self, name)(x)
        return x.mean(dim=(2, 3))


# pytorch-fid's `InceptionV3` wrapper stores the same modules as blocks.<block>.<index>
_WRAPPER_NAMES = {
    (0, 0): "Conv2d_1a_3x3", (0, 1): "Conv2d_2a_3x3", (0, 2): "Conv2d_2b_3x3",
    (1, 0): "Conv2d_3b_1x1", (1, 1): "Conv2d_4a_3x3",
    **{(2, i): n for i, n in enumerate(("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c",
                                          "Mixed_6d", "Mixed_6e"))},
    (3, 0): "Mixed_7a", (3, 1): "Mixed_7b", (3, 2): "Mixed_7c",
}
_IGNORED_PREFIXES = ("fc.", "AuxLogits.")


def _canonical_name(key: str) -> str:
    if key.startswith("module."):
        key = key[len("module."):]
    parts = key.split(".")
    if len(parts) > 3 and parts[0] == "blocks" and parts[1].isdigit() and parts[2].isdigit():
        name = _WRAPPER_NAMES.get((int(parts[1]), int(parts[2])))
        if name is not None:
            return ".".join([name] + parts[3:])
    return key


def _inception_error(path: Path, why: str) -> ValueError:
    return ValueError(
        f"{path}: {why}. --inception-weights needs a .safetensors file with the FID Inception-v3 weights under "
        "torchvision / pytorch-fid names (e.g. Conv2d_1a_3x3.conv.weight, Mixed_7c.branch_pool.bn.running_var); "
        "none ship with this project and none can be downloaded here, so without such a file only the VI-ReID "
        "extractor (--reid-run) is available")


def load_fid_inception(path: str | Path) -> FIDInceptionV3:
    """The FID Inception-v3 with weights from a safetensors file; every tensor must match by name and shape."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: Inception weights file not found")
    try:
        raw = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise _inception_error(path, f"not a readable safetensors file ({err})") from None
    state = {}
    for k, v in raw.items():
        name = _canonical_name(k)
        if name.startswith(_IGNORED_PREFIXES) or name.endswith("num_batches_tracked"):
            continue  # classifier / auxiliary head / BN counters: not part of the pool3 feature
        state[name] = v
    model = FIDInceptionV3()
    expected = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        what = []
        if missing:
            what.append(f"{len(missing)} tensor(s) missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            what.append(f"{len(unexpected)} unknown tensor(s) (e.g. {', '.join(unexpected[:3])})")
        raise _inception_error(path, "does not hold the FID Inception-v3 layout: " + "; ".join(what))
    bad = [k for k in expected if tuple(state[k].shape) != tuple(expected[k].shape)]
    if bad:
        k = bad[0]
        raise _inception_error(path, f"{len(bad)} tensor(s) of the wrong shape (e.g. {k}: "
                                     f"{tuple(state[k].shape)}, expected {tuple(expected[k].shape)})")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=False)
    return model.eval()


class InceptionFeatures:
    """pool3 features (2048-d) of the FID Inception-v3 (one network: the modality flags are ignored)."""

    kind = "inception"

    def __init__(self, weights: str | Path, *, batch_size: int = 32, threads: int = 1, device: str = "cpu"):
        self.weights = Path(weights)
        self.model = load_fid_inception(self.weights)
        self.sha256 = sha256_file(self.weights)
        self.batch_size = int(batch_size)
        self.threads = int(threads)
        self.device = torch.device(device)
        self.model.to(self.device)

    dim = FIDInceptionV3.feat_dim

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "name": "inception-v3-fid-pool3",
            "weights": str(self.weights.resolve()),
            "weights_sha256": self.sha256,
            "feature": "pool3",
            "feature_dim": self.dim,
            "input": "RGB in [0, 1], bilinear resize to 299x299, scaled to [-1, 1] (pytorch-fid)",
            "streams": "one network for both modalities",
            "note": "architecture checked by tensor names and shapes; not validated against reference activations",
        }

    @torch.no_grad()
    def __call__(self, paths: Sequence[str], infrared: Sequence[bool], *, progress: bool = False,
                 desc: str = "features") -> np.ndarray:
        paths = [str(p) for p in paths]
        if len(np.asarray(infrared).reshape(-1)) != len(paths):
            raise ValueError(f"{len(np.asarray(infrared).reshape(-1))} modality flags for {len(paths)} images")
        out = np.empty((len(paths), self.dim), dtype=np.float32)
        size = FIDInceptionV3.input_size
        with torch_threads(self.threads):
            for s in _batches(len(paths), self.batch_size, progress, desc):
                batch = []
                for p in paths[s:s + self.batch_size]:
                    a = torch.from_numpy(np.asarray(load_rgb(p), dtype=np.uint8).copy())
                    x = a.permute(2, 0, 1)[None].float().div_(255.0)  # each image resized at its own size
                    batch.append(F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False))
                out[s:s + len(batch)] = self.model(torch.cat(batch).to(self.device)).float().cpu().numpy()
        return out

