"""ReID training on several processes: each process's share of the global batch, and `dive reid
train` on two CPU processes launched by torchrun (DistributedDataParallel), killed and resumed."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dive.data.records import Modality
from dive.reid import resume
from dive.reid.device import BatchLoader, keep_identities
from dive.reid.distributed import Group, is_main_process, world_size
from dive.reid.sampler import IdentitySampler
from dive.reid.transforms import AugmentConfig

# 2 batches of 4 ids x (2 visible + 2 infrared) at 64x32: two ids per process
TINY = dict(base_width=4, height=64, width=32, num_ids=4, num_per_modality=2, batches_per_epoch=2,
            warmup_epochs=1.0, lr_steps=(6,), threads=1, log_every=1, progress=False)
TINY_CLI = ["--base-width", "4", "--height", "64", "--width", "32", "--num-ids", "4", "--num-per-modality", "2",
            "--batches-per-epoch", "2", "--warmup-epochs", "1", "--lr-steps", "6", "--threads", "1",
            "--log-every", "1", "--no-progress"]
EPOCHS = 8
ENV = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")


def _sampler_and_images(num_ids: int = 4):
    labels = np.repeat(np.arange(6), 6)  # 6 ids x (3 visible + 3 infrared)
    is_ir = np.tile([False] * 3 + [True] * 3, 6)
    is_ir[-6:] = False  # id 5: visible only
    images = torch.rand(len(labels), 3, 16, 8)
    return IdentitySampler(labels, is_ir, num_ids, 2, 3, seed=4), images, torch.as_tensor(labels)


@pytest.mark.parametrize("workers,channel_aug", [(0, False), (0, True), (1, True)])
def test_each_process_keeps_its_ids_of_the_single_process_batch(workers, channel_aug):
    sampler, images, labels = _sampler_and_images()
    aug = AugmentConfig()

    def epoch(share):
        loader = BatchLoader(sampler, images, labels, torch.Generator().manual_seed(3), aug, channel_aug,
                             workers=workers, seed=3, share=share)
        return list(loader.epoch(1))

    full, halves = epoch((0, 1)), [epoch((0, 2)), epoch((1, 2))]
    for b, batch in enumerate(sampler.epoch(1)):
        assert sorted(batch.ids.tolist()) == sorted(set(full[b][2].tolist()))
        seen = []
        for r, half in enumerate(halves):
            x, mask, y = half[b]
            assert set(y.tolist()) == set(batch.ids[r::2].tolist())  # ids r, r+2, ... of the drawn order
            want = keep_identities(full[b], batch.ids[r::2].tolist())  # the very rows (augmentation included)
            assert all(torch.equal(got, w) for got, w in zip((x, mask, y), want))
            seen += y.tolist()
        assert sorted(seen) == sorted(full[b][2].tolist())  # together: the whole global batch, once


def test_single_process_without_launch_environment(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert world_size() == 1 and is_main_process()
    g = Group()
    assert not g.enabled and g.is_main and g.gather([1.5, 2.0]) == [[1.5, 2.0]]
    model = torch.nn.Linear(2, 2)
    assert g.wrap(model, find_unused=False) is model
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert world_size() == 2 and not is_main_process()


def test_fewer_ids_per_batch_than_processes_is_refused(tmp_path):
    from dive.reid.train import ReIDTrainConfig, _train

    cfg = ReIDTrainConfig(out=tmp_path / "r", **dict(TINY, num_ids=2))
    with pytest.raises(ValueError, match="--num-ids 2: each of the 3 processes"):
        _train(cfg, [], None, None, Group(rank=0, world=3))
    assert not (tmp_path / "r").exists()


def _torchrun(world: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "dive", "reid", "train", "--data", str(world), "--out", str(out), "--epochs", str(EPOCHS), *TINY_CLI]


def _first_step_losses_per_process(world: Path) -> list[float]:
    """Each process's first-step loss, computed here in one process from the same seed."""
    from dive.reid.run import ReIDDataConfig, load_reid_data
    from dive.reid.train import ReIDTrainConfig, _runtime, build_losses, identity_of, label_map
    from dive.reid.model import build_model
    from dive.reid.transforms import load_images

    cfg = ReIDTrainConfig(epochs=EPOCHS, **TINY)
    records = load_reid_data(ReIDDataConfig(data=world)).train
    labels_of = label_map(records, cfg.identity_key)
    y_all = torch.tensor([labels_of[identity_of(r, cfg.identity_key)] for r in records])
    is_ir = np.array([r.modality is Modality.INFRARED for r in records])
    out = []
    with _runtime(cfg):
        images = load_images([r.path for r in records], cfg.height, cfg.width, False, "")
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model_spec(len(labels_of))).train()
        ce, tri, _ = build_losses(cfg)
        sampler = IdentitySampler(y_all.numpy(), is_ir, cfg.num_ids, cfg.num_per_modality, cfg.batches_per_epoch,
                                  cfg.seed)
        for rank in range(2):
            loader = BatchLoader(sampler, images, y_all, torch.Generator().manual_seed(cfg.seed), cfg.augment(),
                                 cfg.use_channel_aug, share=(rank, 2))
            x, mask, y = next(iter(loader.epoch(0)))
            with torch.no_grad():
                feat, logits = model(x, mask)
                out.append(float(ce(logits, y) + cfg.triplet_weight * tri(feat, y)[0]))
    return out


@pytest.mark.slow
def test_two_cpu_processes_train_log_and_resume(tiny_world_dir, tmp_path):
    ref = tmp_path / "ref"
    r = subprocess.run(_torchrun(tiny_world_dir, ref), env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("trained AGW") == 1  # the first process reports, the other is quiet
    meta = json.loads((ref / "model.json").read_text())
    assert meta["world_size"] == 2 and meta["timing"]["iterations"] == EPOCHS * 2
    assert json.loads((ref / "config.json").read_text())["world_size"] == 2
    rows = [json.loads(line) for line in (ref / "log.jsonl").read_text().splitlines()]
    steps = [row for row in rows if row["type"] == "iter"]
    assert len(steps) == EPOCHS * 2 and [row["iter"] for row in steps] == list(range(1, EPOCHS * 2 + 1))
    for row in steps:  # the logged loss is the mean of the two processes' losses, on the global batch
        assert math.isfinite(row["loss"]) and len(row["loss_ranks"]) == 2
        assert row["loss"] == pytest.approx(sum(row["loss_ranks"]) / 2, abs=2e-6)
        assert row["batch_size"] == 4 * 2 * 2 and row["loss_tri"] > 0  # two ids per process: triplets mine
    assert steps[0]["loss_ranks"] == pytest.approx(_first_step_losses_per_process(tiny_world_dir), abs=2e-6)

    # killed after an epoch, the same launch resumes every process and ends with the same bytes
    out = tmp_path / "killed"
    p = subprocess.Popen(_torchrun(tiny_world_dir, out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and p.poll() is None and not (out / resume.STATE_FILE).exists():
            time.sleep(0.01)
        p.send_signal(signal.SIGTERM)  # torchrun ends both training processes
    finally:
        p.wait(timeout=120)
    assert p.returncode != 0, p.stderr.read()[-3000:]
    assert not (out / "model.json").exists(), "the run finished before it could be killed"
    r = subprocess.run(_torchrun(tiny_world_dir, out), env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()

    # an unfinished two-process run is not resumed by one process
    from dive.reid.run import ReIDDataConfig, train_from_config
    from dive.reid.train import ReIDTrainConfig

    (out / "model.json").unlink()
    with pytest.raises(ValueError, match=r"unfinished run of 2 process\(es\); resume it on as many \(this launch: 1\)"):
        train_from_config(ReIDDataConfig(data=tiny_world_dir), ReIDTrainConfig(out=out, epochs=EPOCHS, **TINY))
