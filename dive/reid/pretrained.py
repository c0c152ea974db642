"""ImageNet ResNet weights from a .safetensors file into the two-stream network, and the paper preset.

``load_pretrained(model, path)`` reads ResNet-18/34/50/101 weights in any of three key layouts:

* torchvision (``conv1.weight``, ``bn1.*``, ``layer1.0.conv1.weight``, ``layer1.0.downsample.0.weight``,
  ``fc.*``), which is also timm's layout for its ResNets (e.g. ``timm/resnet50.tv_in1k``);
* transformers' ``ResNetModel`` (e.g. ``microsoft/resnet-50``): ``embedder.embedder.convolution.weight``,
  ``encoder.stages.S.layers.L.layer.K.convolution.weight`` / ``.normalization.*``,
  ``encoder.stages.S.layers.L.shortcut.*``, with or without the ``resnet.`` prefix of
  ``ResNetForImageClassification`` (whose ``classifier.*`` is then unused).

The file's stem (conv1 + bn1) goes into both modality stems (``stem_visible``, ``stem_infrared``),
layer1..layer4 into the shared layers. The ReID head (GeM, BN neck, classifier) is never in an
ImageNet file and keeps its initialisation. Every tensor of the file is either loaded or reported
as unused; every backbone tensor of the network that the file lacks is reported as missing. A
shape mismatch is an `InputError` naming the key, the file and both shapes. Only safetensors are
read (never pickles); a torchvision ``.pth`` is converted once by its owner::

    python -c "import torch, safetensors.torch as s; s.save_file(torch.load('r50.pth'), 'r50.safetensors')"

``--preset paper``: AGW's published recipe (github mangye16/Cross-Modal-Re-ID-baseline, train.py):
ResNet-50 at width 64, 288x144, P = 8 ids x K = 4 images per modality, SGD (momentum 0.9, Nesterov,
weight decay 5e-4) at lr 0.1 for the head and 0.01 for the backbone, 10 warm-up epochs, x0.1 at
epochs 20 and 50, epochs 0..80 (81), an epoch = visible images // (P*K). The preset gives the
values of the options the command line did not set; explicit options win.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from dive.utils.errors import InputError

PRESETS: dict[str, dict] = {
    "paper": dict(arch="resnet50", base_width=64, height=288, width=144, num_ids=8, num_per_modality=4,
                  batches_per_epoch=0, epochs=81, optimizer="sgd", lr=0.1, base_lr_mult=0.1, momentum=0.9,
                  weight_decay=5e-4, warmup_epochs=10.0, lr_steps=(20, 50), lr_gamma=0.1),
}
PRESET_CHOICES = ("none", *PRESETS)

_HF_STEM = re.compile(r"^embedder\.embedder\.(convolution|normalization)\.(.+)$")
_HF_SHORTCUT = re.compile(r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.(convolution|normalization)\.(.+)$")
_HF_LAYER = re.compile(r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.(convolution|normalization)\.(.+)$")
_TV_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.(conv\d|bn\d|downsample\.[01])\.(.+)$")


@dataclass
class LoadReport:
    """What `load_pretrained` did: file tensors used, file tensors unused, backbone tensors missing."""

    path: str
    layout: str
    loaded: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.path}: {self.layout} layout, {len(self.loaded)} loaded into both stems and layer1-4, "
                f"unused: {self.unused}, missing: {self.missing}")


def _strip_prefix(key: str) -> str:
    for prefix in ("module.", "resnet."):
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


def detect_layout(keys) -> str:
    """'transformers' when any key is a ResNetModel key, else 'torchvision' (torchvision / timm)."""
    for k in keys:
        k = _strip_prefix(k)
        if k.startswith("embedder.") or k.startswith("encoder.stages."):
            return "transformers"
    return "torchvision"


def torchvision_name(key: str, layout: str) -> str | None:
    """The torchvision-layout name of a file key, or None when it is not a backbone tensor."""
    key = _strip_prefix(key)
    if layout == "transformers":
        kind = {"convolution": "conv", "normalization": "bn"}
        if m := _HF_STEM.match(key):
            return f"{kind[m[1]]}1.{m[2]}"
        if m := _HF_SHORTCUT.match(key):
            part = "0" if m[3] == "convolution" else "1"
            return f"layer{int(m[1]) + 1}.{m[2]}.downsample.{part}.{m[4]}"
        if m := _HF_LAYER.match(key):
            return f"layer{int(m[1]) + 1}.{m[2]}.{kind[m[4]]}{int(m[3]) + 1}.{m[5]}"
        return None
    if re.match(r"^(conv1|bn1)\.", key) or _TV_BLOCK.match(key):
        return key
    return None


def model_names(tv_name: str) -> list[str]:
    """Where a torchvision-layout tensor goes in `TwoStreamReID` (the stem twice: one per modality)."""
    head, _, rest = tv_name.partition(".")
    if head == "conv1":
        return [f"stem_{m}.conv.{rest}" for m in ("visible", "infrared")]
    if head == "bn1":
        return [f"stem_{m}.bn.{rest}" for m in ("visible", "infrared")]
    return [tv_name.replace(".downsample.", ".shortcut.")]


def _backbone_keys(model: nn.Module) -> list[str]:
    keys = []
    for k in model.state_dict():
        if k.split(".")[0] in ("stem_visible", "stem_infrared", "layer1", "layer2", "layer3", "layer4"):
            keys.append(k)
    return keys


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a .safetensors file (never a pickle); one-line `InputError` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found; expected ImageNet ResNet weights as a .safetensors file")
    if path.suffix.lower() in (".pth", ".pt", ".bin", ".ckpt", ".tar"):
        raise InputError(f"{path}: a pickle checkpoint; expected a .safetensors file (convert it once with "
                         "python -c \"import torch, safetensors.torch as s; "
                         f"s.save_file(torch.load('{path.name}'), '{path.stem}.safetensors')\")")
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for damaged headers
        raise InputError(f"{path}: not a readable safetensors file ({err}); expected ImageNet ResNet weights") from None


def load_pretrained(model: nn.Module, path: str | os.PathLike) -> LoadReport:
    """Copy a ResNet's ImageNet weights from `path` into `model`'s stems and shared layers (in place)."""
    tensors = read_safetensors(path)
    layout = detect_layout(tensors)
    report = LoadReport(str(path), "transformers ResNetModel" if layout == "transformers" else "torchvision/timm")
    state = model.state_dict()
    spec = getattr(model, "spec", None)
    hint = (f" (the network is {spec.arch} at width {spec.base_width}; ImageNet ResNets need --base-width 64 "
            "and the file's --arch)") if spec is not None else ""
    filled: set[str] = set()
    plan: list[tuple[str, torch.Tensor, list[str]]] = []
    for key in sorted(tensors):
        tv = torchvision_name(key, layout)
        targets = [t for t in model_names(tv) if t in state] if tv is not None else []
        if not targets:
            report.unused.append(key)
            continue
        src = tensors[key]
        for t in targets:
            if tuple(state[t].shape) != tuple(src.shape):
                raise InputError(f"{path}: tensor {key} has shape {list(src.shape)}, the network's {t} "
                                 f"expects {list(state[t].shape)}{hint}")
        plan.append((key, src, targets))
    with torch.no_grad():
        for key, src, targets in plan:
            for t in targets:
                state[t].copy_(src.to(state[t].dtype))
                filled.add(t)
            report.loaded.append(key)
    report.missing = [k for k in _backbone_keys(model) if k not in filled and not k.endswith("num_batches_tracked")]
    return report


# ------------------------------------------------------------------------------------------------
# --preset: the preset fills the options the command line left unset
# ------------------------------------------------------------------------------------------------


def defer_preset_defaults(parser: argparse.ArgumentParser) -> None:
    """Make the options a preset sets default to None on `parser`, so an option given explicitly
    (even at its usual default) can be told from one left unset; `train_config_from_args` resolves."""
    names = {k for values in PRESETS.values() for k in values}
    parser.set_defaults(**{k: None for k in names})


def train_config_from_args(cls: type, args: argparse.Namespace):
    """Build the ReID training config from parsed options: each option left unset takes the preset's
    value (``--preset``), else the field's default."""
    preset = PRESETS.get(getattr(args, "preset", "none") or "none", {})
    values = {}
    for f in dataclasses.fields(cls):
        if not hasattr(args, f.name):
            continue
        v = getattr(args, f.name)
        if v is None and f.name in preset:
            v = preset[f.name]
        elif v is None and f.name in {k for p in PRESETS.values() for k in p}:
            v = f.default
        if isinstance(v, list) and isinstance(f.default, tuple):
            v = tuple(v)
        values[f.name] = v
    return cls(**values)


def preset_values(name: str) -> dict:
    """The option values of a named preset (for building a config in Python: ``cfg(**preset_values('paper'))``)."""
    if name == "none":
        return {}
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESET_CHOICES)}")
    return dict(PRESETS[name])
