"""ReID training's CPU convolution kernels: oneDNN by default, torch's own with `--no-onednn`, each
giving the same bytes for the same seed and thread count; and the strided 1x1 convolution that keeps
clear of oneDNN's faulty narrow strided kernel."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from dive.reid.model import PointwiseConv
from dive.reid.run import ReIDDataConfig, load_reid_data
from dive.reid.train import ReIDTrainConfig, train_reid

TINY = dict(base_width=4, height=64, width=32, num_ids=2, num_per_modality=2, epochs=1, batches_per_epoch=2,
            warmup_epochs=0.0, lr_steps=(), progress=False, method="agw", seed=3)


@pytest.mark.parametrize("onednn", [True, False])
def test_strided_pointwise_conv_is_the_strided_convolution(onednn):
    conv = PointwiseConv(16, 32, 1, stride=2, bias=False)
    x = torch.randn(6, 16, 9, 8).contiguous(memory_format=torch.channels_last).requires_grad_()
    g = torch.randn(6, 32, 5, 4)
    with torch.backends.mkldnn.flags(enabled=onednn):
        ours = conv(x)
        ref = F.conv2d(x, conv.weight, stride=2)
        assert ours.shape == ref.shape == (6, 32, 5, 4)
        grads = [torch.autograd.grad(y, (x, conv.weight), g) for y in (ours, ref)]
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-4) for a, b in zip(*grads))
    if not onednn:  # torch's own kernels: the ordinary strided path, unchanged
        assert torch.equal(ours, ref) and all(torch.equal(a, b) for a, b in zip(*grads))


def test_narrow_strided_pointwise_backward_runs_under_onednn():
    # 4 input channels, stride 2, channels-last, a batch of 12: the shape whose oneDNN strided
    # backward corrupted the heap; run in a child process, which a crash would kill
    code = (
        "import torch\n"
        "from dive.reid.model import PointwiseConv\n"
        "torch.set_num_threads(1)\n"
        "conv = PointwiseConv(4, 8, 1, stride=2, bias=False).to(memory_format=torch.channels_last)\n"
        "x = torch.randn(12, 4, 16, 8).contiguous(memory_format=torch.channels_last).requires_grad_()\n"
        "assert torch.backends.mkldnn.enabled\n"
        "for _ in range(20):\n"
        "    conv(x).square().sum().backward()\n"
        "print('done', tuple(conv.weight.grad.shape))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "done (8, 4, 1, 1)" in out.stdout


@pytest.fixture(scope="module")
def records(tiny_world_dir):
    return load_reid_data(ReIDDataConfig(data=tiny_world_dir)).train


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_kernels_reproducibility_and_record(records, tmp_path):
    before = torch.backends.mkldnn.enabled
    runs = {}
    for name, onednn in [("on", True), ("on-again", True), ("off", False), ("off-again", False)]:
        runs[name] = train_reid(ReIDTrainConfig(out=tmp_path / name, onednn=onednn, threads=1, **TINY), records)
    assert torch.backends.mkldnn.enabled == before  # the run restores the process's setting
    w = {k: _weights(r) for k, r in runs.items()}
    assert _same(w["on"], w["on-again"])  # the same bytes for the same seed and threads
    assert _same(w["off"], w["off-again"])
    assert not _same(w["on"], w["off"])  # the kernels round differently: another run
    cfg = {k: json.loads((r / "config.json").read_text())["train"]["onednn"] for k, r in runs.items()}
    assert cfg == {"on": True, "on-again": True, "off": False, "off-again": False}
