"""ImageNet ResNet weights from safetensors (torchvision / timm / transformers layouts) and --preset."""

from __future__ import annotations

import argparse

import pytest
import torch
from safetensors.torch import save_file

from dive.reid.model import ModelSpec, build_model
from dive.reid.pretrained import LoadReport, detect_layout, load_pretrained, train_config_from_args
from dive.utils.errors import InputError

STAGE_BLOCKS = (2, 2, 2, 2)  # resnet18


def torchvision_resnet18(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under torchvision's resnet18 key names and shapes (fc: 1000 classes)."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}

    def bn(prefix: str, c: int) -> None:
        out[f"{prefix}.weight"] = torch.rand(c, generator=g) + 0.5
        out[f"{prefix}.bias"] = torch.randn(c, generator=g)
        out[f"{prefix}.running_mean"] = torch.randn(c, generator=g)
        out[f"{prefix}.running_var"] = torch.rand(c, generator=g) + 0.1
        out[f"{prefix}.num_batches_tracked"] = torch.tensor(123)

    out["conv1.weight"] = torch.randn(64, 3, 7, 7, generator=g)
    bn("bn1", 64)
    cin = 64
    for s, n in enumerate(STAGE_BLOCKS):
        w = 64 * 2**s
        for b in range(n):
            p = f"layer{s + 1}.{b}"
            out[f"{p}.conv1.weight"] = torch.randn(w, cin, 3, 3, generator=g)
            bn(f"{p}.bn1", w)
            out[f"{p}.conv2.weight"] = torch.randn(w, w, 3, 3, generator=g)
            bn(f"{p}.bn2", w)
            if b == 0 and s > 0:
                out[f"{p}.downsample.0.weight"] = torch.randn(w, cin, 1, 1, generator=g)
                bn(f"{p}.downsample.1", w)
            cin = w
    out["fc.weight"] = torch.randn(1000, 512, generator=g)
    out["fc.bias"] = torch.randn(1000, generator=g)
    return out


def to_transformers(tv: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """The same tensors under transformers' ResNetModel names (written out independently here)."""
    out = {}
    for k, v in tv.items():
        parts = k.split(".")
        if parts[0] in ("conv1", "bn1"):
            kind = "convolution" if parts[0] == "conv1" else "normalization"
            name = f"embedder.embedder.{kind}.{'.'.join(parts[1:])}"
        elif parts[0] == "fc":
            name = f"classifier.1.{parts[1]}"
            out[name] = v  # ResNetForImageClassification: the head has no resnet. prefix
            continue
        else:
            stage, block, rest = int(parts[0][5:]) - 1, parts[1], parts[2:]
            base = f"encoder.stages.{stage}.layers.{block}"
            if rest[0] == "downsample":
                kind = "convolution" if rest[1] == "0" else "normalization"
                name = f"{base}.shortcut.{kind}.{'.'.join(rest[2:])}"
            else:
                kind = "convolution" if rest[0].startswith("conv") else "normalization"
                name = f"{base}.layer.{int(rest[0][-1]) - 1}.{kind}.{'.'.join(rest[1:])}"
        out[prefix + name] = v
    return out


def resnet18_model():
    torch.manual_seed(0)
    return build_model(ModelSpec(num_classes=5, arch="resnet18", base_width=64, height=64, width=32))


def assert_backbone_equals(model, tv: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    checked = 0
    for k, v in tv.items():
        if k.startswith("fc."):
            continue
        if k.startswith(("conv1.", "bn1.")):
            head, rest = k.split(".", 1)
            targets = [f"stem_{m}.{'conv' if head == 'conv1' else 'bn'}.{rest}" for m in ("visible", "infrared")]
        else:
            targets = [k.replace(".downsample.", ".shortcut.")]
        for t in targets:
            assert torch.equal(state[t], v), t
            checked += 1
    # every parameter and BN statistic of both stems and layer1..4 was checked
    backbone = [k for k in state if k.split(".")[0] in ("stem_visible", "stem_infrared", "layer1", "layer2",
                                                        "layer3", "layer4")]
    assert checked == len(backbone)


@pytest.mark.parametrize("layout", ["torchvision", "timm", "transformers", "transformers-classifier"])
def test_every_backbone_tensor_equals_the_file(tmp_path, layout):
    tv = torchvision_resnet18(seed=1)
    if layout == "transformers":
        tensors = {k: v for k, v in to_transformers(tv).items() if not k.startswith("classifier.")}
    elif layout == "transformers-classifier":
        tensors = to_transformers(tv, prefix="resnet.")
    else:  # timm's resnets use torchvision's names
        tensors = dict(tv)
    path = tmp_path / f"{layout}.safetensors"
    save_file(tensors, str(path))
    model = resnet18_model()
    before_head = model.classifier.weight.detach().clone()
    report = load_pretrained(model, path)
    assert isinstance(report, LoadReport)
    assert_backbone_equals(model, tv)
    assert torch.equal(model.classifier.weight, before_head)  # the ReID head keeps its initialisation
    assert report.missing == []
    fc = ["fc.bias", "fc.weight"] if layout in ("torchvision", "timm") else (
        ["classifier.1.bias", "classifier.1.weight"] if layout == "transformers-classifier" else [])
    assert report.unused == fc
    assert len(report.loaded) == len(tensors) - len(fc)
    line = report.summary()
    assert f"{len(report.loaded)} loaded" in line and str(path) in line
    assert ("transformers" in line) == layout.startswith("transformers")


def test_unused_and_missing_are_reported(tmp_path):
    tv = torchvision_resnet18()
    tv["extra.weight"] = torch.ones(3)
    del tv["layer4.1.conv2.weight"]
    path = tmp_path / "w.safetensors"
    save_file(tv, str(path))
    model = resnet18_model()
    report = load_pretrained(model, path)
    assert report.unused == ["extra.weight", "fc.bias", "fc.weight"]
    assert report.missing == ["layer4.1.conv2.weight"]
    assert "unused: ['extra.weight', 'fc.bias', 'fc.weight']" in report.summary()
    assert "missing: ['layer4.1.conv2.weight']" in report.summary()


def test_shape_mismatch_names_key_file_and_shapes(tmp_path):
    path = tmp_path / "r18.safetensors"
    save_file(torchvision_resnet18(), str(path))
    torch.manual_seed(0)
    narrow = build_model(ModelSpec(num_classes=5, arch="resnet18", base_width=16, height=64, width=32))
    with pytest.raises(InputError) as err:
        load_pretrained(narrow, path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: tensor bn1.bias has shape [64], the network's stem_visible.bn.bias expects [16]")
    assert "--base-width 64" in msg
    assert "\n" not in msg
    # a resnet18 file into a resnet50 network: the first bottleneck conv differs in shape
    torch.manual_seed(0)
    r50 = build_model(ModelSpec(num_classes=5, arch="resnet50", base_width=64, height=64, width=32))
    before = r50.stem_visible.conv.weight.detach().clone()
    with pytest.raises(InputError, match="layer1.0.conv1.weight"):
        load_pretrained(r50, path)
    assert torch.equal(r50.stem_visible.conv.weight, before)  # nothing is half-loaded


def test_only_safetensors_are_read(tmp_path):
    pth = tmp_path / "r50.pth"
    pth.write_bytes(b"\x80\x02not a safetensors file")
    with pytest.raises(InputError, match=r"r50\.pth: a pickle checkpoint; expected a \.safetensors file"):
        load_pretrained(resnet18_model(), pth)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(InputError, match="bad.safetensors: not a readable safetensors file"):
        load_pretrained(resnet18_model(), bad)
    with pytest.raises(InputError, match="missing.safetensors: file not found"):
        load_pretrained(resnet18_model(), tmp_path / "missing.safetensors")


def test_detect_layout():
    assert detect_layout(["conv1.weight", "layer1.0.conv1.weight"]) == "torchvision"
    assert detect_layout(["resnet.embedder.embedder.convolution.weight"]) == "transformers"
    assert detect_layout(["encoder.stages.0.layers.0.layer.0.convolution.weight"]) == "transformers"


@pytest.mark.slow
def test_real_transformers_resnet_layout(tmp_path):
    """The key names of transformers' own ResNetForImageClassification (resnet-18 shape)."""
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(3)
    hf = ResNetForImageClassification(ResNetConfig(layer_type="basic", depths=[2, 2, 2, 2], embedding_size=64,
                                                   hidden_sizes=[64, 128, 256, 512], num_labels=7))
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    path = tmp_path / "hf.safetensors"
    save_file(state, str(path))
    model = resnet18_model()
    report = load_pretrained(model, path)
    assert report.missing == [] and report.unused == ["classifier.1.bias", "classifier.1.weight"]
    assert torch.equal(model.stem_infrared.conv.weight, state["resnet.embedder.embedder.convolution.weight"])
    assert torch.equal(model.layer2[0].shortcut[0].weight,
                       state["resnet.encoder.stages.1.layers.0.shortcut.convolution.weight"])
    assert torch.equal(model.layer4[1].bn2.running_var,
                       state["resnet.encoder.stages.3.layers.1.layer.1.normalization.running_var"])
    # at layer4 stride 2 (ImageNet's), the stem + layers compute transformers' backbone function
    torch.manual_seed(0)
    same = build_model(ModelSpec(num_classes=5, arch="resnet18", base_width=64, last_stride=2, height=64, width=32))
    load_pretrained(same, path)
    with torch.no_grad():
        for bn in hf.modules():  # non-trivial BN statistics, so a misplaced tensor shows
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.running_mean.uniform_(-0.1, 0.1)
                bn.running_var.uniform_(0.5, 1.5)
        save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(path))
        load_pretrained(same, path)
        x = torch.randn(2, 3, 64, 32)
        ours = same.eval().layer4(same.layer3(same.layer2(same.layer1(same.stem_visible(x)))))
        theirs = hf.eval().resnet(x).last_hidden_state
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-4 * float(theirs.abs().max()))


def _args(**kw) -> argparse.Namespace:
    from dive.reid.pretrained import PRESETS

    base = {k: None for k in PRESETS["paper"]}
    base.update(out=None, seed=0, preset="none")
    base.update(kw)
    return argparse.Namespace(**base)


def test_preset_fills_unset_options_and_explicit_options_win():
    from dataclasses import dataclass, field

    @dataclass
    class Cfg:  # the fields the preset touches, with CPU defaults (the real config has them all)
        arch: str = "resnet18"
        base_width: int = 16
        height: int = 128
        width: int = 64
        num_ids: int = 8
        num_per_modality: int = 4
        batches_per_epoch: int = 100
        epochs: int = 18
        optimizer: str = "sgd"
        lr: float = 0.1
        base_lr_mult: float = 1.0
        momentum: float = 0.9
        weight_decay: float = 5e-4
        warmup_epochs: float = 2.0
        lr_steps: tuple = (12, 16)
        lr_gamma: float = 0.1
        seed: int = 0
        preset: str = "none"
        out: object = field(default=None)

    plain = train_config_from_args(Cfg, _args())
    assert (plain.arch, plain.height, plain.epochs, plain.lr_steps) == ("resnet18", 128, 18, (12, 16))
    paper = train_config_from_args(Cfg, _args(preset="paper", epochs=3, arch="resnet18"))
    assert (paper.arch, paper.base_width, paper.height, paper.width) == ("resnet18", 64, 288, 144)
    assert (paper.epochs, paper.warmup_epochs, paper.lr_steps, paper.base_lr_mult) == (3, 10.0, (20, 50), 0.1)
    assert paper.batches_per_epoch == 0 and paper.num_ids == 8 and paper.num_per_modality == 4
