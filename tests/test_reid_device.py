"""ReID device, precision, DataLoader workers and the --preset / --pretrained / --device options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from dive.cli import build_parser, main
from dive.data.synthvi.build import SynthConfig, build_world
from dive.reid.device import BatchLoader, Runtime, resolve_device
from dive.reid.model import ModelSpec, build_model
from dive.reid.pretrained import train_config_from_args
from dive.reid.run import ReIDDataConfig, load_reid_data
from dive.reid.sampler import IdentitySampler
from dive.reid.train import ReIDTrainConfig, train_reid
from dive.reid.transforms import AugmentConfig

TINY = dict(base_width=4, height=64, width=32, num_ids=2, num_per_modality=2, epochs=1, batches_per_epoch=2,
            warmup_epochs=0.0, lr_steps=(), progress=False, threads=1, device="cpu")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reiddev") / "world"
    build_world(SynthConfig(out=out, vi_train_ids=6, vi_val_ids=2, vi_test_ids=4, vi_images_per_camera=(2, 2),
                            ext_ids=4, ext_test_ids=1, web_images=2, workers=1), progress=False)
    return out


def test_device_names():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cuda: torch sees no CUDA GPU here"):
            resolve_device("cuda")
    else:
        assert resolve_device("cuda").type == "cuda"
    with pytest.raises(ValueError, match="device must be one of"):
        ReIDTrainConfig(device="tpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        ReIDTrainConfig(precision="int8")
    with pytest.raises(ValueError, match="workers must be >= 0"):
        ReIDTrainConfig(workers=-1)


def test_autocast_runs_the_forward_in_bf16_on_cpu():
    torch.manual_seed(0)
    model = build_model(ModelSpec(num_classes=3, base_width=4, height=64, width=32)).train()
    x = torch.randn(4, 3, 64, 32)
    rt = Runtime("cpu", "bf16")
    with rt.autocast():
        feat, logits = model(x, "visible")
    assert logits.dtype == torch.bfloat16
    with Runtime("cpu", "fp32").autocast():
        _, logits32 = model(x, "visible")
    assert logits32.dtype == torch.float32
    assert Runtime("cpu", "fp16").scaler is None  # loss scaling only on cuda


def _loader(workers: int, channel_aug: bool = True) -> BatchLoader:
    g = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 6)
    is_ir = np.tile(np.array([False, False, False, True, True, True]), 4)
    sampler = IdentitySampler(labels, is_ir, 2, 2, 3, seed=1)
    images = torch.from_numpy(g.integers(0, 255, (24, 3, 32, 16), dtype=np.uint8))
    return BatchLoader(sampler, images, torch.from_numpy(labels), torch.Generator().manual_seed(1),
                       AugmentConfig(), channel_aug, workers=workers, seed=1)


def test_worker_batches_do_not_depend_on_the_number_of_workers():
    one = list(_loader(1).epoch(2))
    two = list(_loader(2).epoch(2))
    assert len(one) == len(two) == 3
    for (x1, m1, y1), (x2, m2, y2) in zip(one, two):
        assert torch.equal(x1, x2) and torch.equal(m1, m2) and torch.equal(y1, y2)
        assert x1.shape[0] == 2 * 2 * 3 and int(m1.sum()) == 4  # visible, channel-augmented copies, infrared
    other_epoch = list(_loader(1).epoch(3))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(one, other_epoch))


def test_bf16_and_worker_runs_train_and_save_fp32_weights(world, tmp_path):
    data = load_reid_data(ReIDDataConfig(data=world))
    fp32 = train_reid(ReIDTrainConfig(out=tmp_path / "fp32", seed=2, **TINY), data.train)
    bf16 = train_reid(ReIDTrainConfig(out=tmp_path / "bf16", seed=2, precision="bf16", **TINY), data.train)
    w1 = train_reid(ReIDTrainConfig(out=tmp_path / "w1", seed=2, workers=1, **TINY), data.train)
    a, b, c = (load_file(str(r / "model.safetensors")) for r in (fp32, bf16, w1))
    assert all(v.dtype == a[k].dtype for k, v in b.items())  # checkpoints stay fp32
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())
    assert all(torch.isfinite(v).all() for v in b.values() if v.is_floating_point())
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())  # own augmentation seeds
    meta = json.loads((bf16 / "model.json").read_text())
    assert meta["device"] == "cpu" and meta["config"]["precision"] == "bf16" and meta["pretrained"] is None


def test_cli_preset_pretrained_and_test_device(world, tmp_path):
    parser = build_parser()
    args = parser.parse_args(["reid", "train", "--data", str(world), "--preset", "paper", "--epochs", "2",
                              "--arch", "resnet18"])
    cfg = train_config_from_args(ReIDTrainConfig, args)
    assert (cfg.arch, cfg.base_width, cfg.height, cfg.width, cfg.epochs) == ("resnet18", 64, 288, 144, 2)
    assert (cfg.lr_steps, cfg.warmup_epochs, cfg.base_lr_mult, cfg.batches_per_epoch) == ((20, 50), 10.0, 0.1, 0)
    plain = train_config_from_args(ReIDTrainConfig, parser.parse_args(["reid", "train", "--data", str(world)]))
    assert plain == ReIDTrainConfig()

    # --pretrained: a width-4 resnet18 "ImageNet" file in torchvision's layout, then test on --device cpu
    torch.manual_seed(7)
    donor = build_model(ModelSpec(num_classes=3, base_width=4, height=64, width=32))
    tv = {}
    for k, v in donor.state_dict().items():
        if k.startswith("stem_visible."):
            tv[k.replace("stem_visible.conv", "conv1").replace("stem_visible.bn", "bn1")] = v.contiguous()
        elif k.startswith("layer"):
            tv[k.replace(".shortcut.", ".downsample.")] = v.contiguous()
    tv["fc.weight"] = torch.zeros(10, 32)
    path = tmp_path / "r18.safetensors"
    save_file(tv, str(path))
    run = tmp_path / "run"
    tiny = ["--base-width", "4", "--height", "64", "--width", "32", "--num-ids", "2", "--num-per-modality", "2",
            "--epochs", "1", "--batches-per-epoch", "1", "--threads", "1", "--no-progress", "--lr", "0"]
    assert main(["reid", "train", "--data", str(world), "--out", str(run), "--pretrained", str(path),
                 "--device", "cpu", *tiny]) == 0
    meta = json.loads((run / "model.json").read_text())
    assert meta["pretrained"]["loaded"] == len(tv) - 1 and meta["pretrained"]["unused"] == ["fc.weight"]
    w = load_file(str(run / "model.safetensors"))
    # lr 0: the weights are the file's (BN statistics move with the batch; the convolutions do not)
    assert torch.equal(w["stem_infrared.conv.weight"], tv["conv1.weight"])
    assert torch.equal(w["layer3.0.shortcut.0.weight"], tv["layer3.0.downsample.0.weight"])
    assert main(["reid", "test", str(run), "--data", str(world), "--device", "cpu", "--trials", "1"]) == 0
    assert "from ImageNet weights" in (run / "report.md").read_text()
