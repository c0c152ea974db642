"""Fault injection: `kill -9` at a seeded random point of `dive generate`,
`dive export`, `dive train` and `dive reid train`, then the same command again, must end with the
bytes of an uninterrupted run. One kill per command, each at a point drawn from one seeded
generator (a count of finished outputs, plus a random delay), so a failure names a reproducible
point. Every command runs as a real subprocess on one thread."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

pytestmark = pytest.mark.slow

SEED = 31
ENV = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONHASHSEED="0")


@pytest.fixture(scope="module")
def rng() -> random.Random:
    return random.Random(SEED)


def _dive(*args) -> list[str]:
    return [sys.executable, "-m", "dive", *map(str, args)]


def _run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def _kill_at(cmd: list[str], progress: Callable[[], int], at: int, delay: float, timeout: float = 240) -> None:
    """Start `cmd`, wait until `progress()` reaches `at`, then `delay` seconds more, then SIGKILL it."""
    p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + timeout
    try:
        while p.poll() is None and time.time() < deadline:
            try:
                if progress() >= at:
                    break
            except (OSError, ValueError):  # a file being written
                pass
            time.sleep(0.005)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
    finally:
        p.wait()
    assert p.returncode == -signal.SIGKILL, f"finished before the kill point {at} (+{delay:.2f} s): {p.stderr.read()[-500:]}"


def _tree(root: Path, pattern: str = "*", skip: tuple[str, ...] = ()) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob(pattern))
            if p.is_file() and p.name not in skip}


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_generate(micro_base, micro_dive_run, tmp_path, rng):
    args = ("generate", "--base", micro_base, "--checkpoint", micro_dive_run / "final", "--identities", "external",
            "--min-images", "1", "--n", "2", "--steps", "2", "--batch-size", "2")
    ref, out = tmp_path / "ref", tmp_path / "killed"
    _run(_dive(*args, "--out", ref))
    total = len(_tree(ref, "*.png"))
    _kill_at(_dive(*args, "--out", out), lambda: len(list(out.rglob("*.png"))), rng.randrange(1, total // 2),
             rng.uniform(0, 0.2))
    _run(_dive(*args, "--out", out))
    assert _tree(out, skip=("generate.json",)) == _tree(ref, skip=("generate.json",))


def test_export(tiny_world_dir, tmp_path, rng):
    syn = tmp_path / "syn"  # synthetic rows for two external ids, in `dive generate`'s format
    from test_export import write_synthetic
    from dive.data.registry import load_dataset

    ext = sorted({r.pid for r in load_dataset("synthvi", tiny_world_dir).records
                  if r.dataset == "synthvi_ext" and r.split == "train"})
    write_synthetic(syn, ext[:2], (3, 6))
    args = ("export", "--data", tiny_world_dir, "--synthetic", syn, "--agw-arrays", "--agw-height", "32",
            "--agw-width", "16")
    ref, out = tmp_path / "ref", tmp_path / "killed"
    _run(_dive(*args, "--out", ref))
    total = len(_tree(ref, "*.jpg"))
    _kill_at(_dive(*args, "--out", out), lambda: len(list(out.rglob("*.jpg"))), rng.randrange(1, total // 2),
             rng.uniform(0, 0.05))
    _run(_dive(*args, "--out", out))
    done = json.loads((out / "export.json").read_text())
    assert done["settings"] == json.loads((ref / "export.json").read_text())["settings"]
    assert _tree(out, skip=("export.json",)) == _tree(ref, skip=("export.json",))


def test_dive_train(micro_base, tiny_world_dir, tmp_path, rng):
    args = ("train", "--base", micro_base, "--data", tiny_world_dir, "--steps", "6", "--batch-size", "4",
            "--min-images", "3", "--save-every", "2", "--preview-every", "0", "--rank", "4", "--threads", "1")
    ref, out = tmp_path / "ref", tmp_path / "killed"
    _run(_dive(*args, "--out", ref))
    _kill_at(_dive(*args, "--out", out), lambda: _lines(out / "loss.jsonl"), rng.randrange(1, 5), rng.uniform(0, 0.1))
    _run(_dive(*args, "--out", out))
    for sub in ("final", "checkpoint-6"):
        assert _tree(out / sub, "*.safetensors") == _tree(ref / sub, "*.safetensors"), sub
    losses = [[json.loads(x)["loss"] for x in (d / "loss.jsonl").read_text().splitlines()] for d in (ref, out)]
    assert losses[0] == losses[1] and len(losses[0]) == 6


def test_reid_train(tiny_world_dir, tmp_path, rng):
    epochs, batches = 4, 3
    args = ("reid", "train", "--data", tiny_world_dir, "--base-width", "4", "--height", "64", "--width", "32",
            "--num-ids", "2", "--num-per-modality", "2", "--epochs", epochs, "--batches-per-epoch", batches,
            "--warmup-epochs", "1", "--lr-steps", "3", "--threads", "1", "--log-every", "1", "--no-progress")
    ref, out = tmp_path / "ref", tmp_path / "killed"
    _run(_dive(*args, "--out", ref))

    def iterations() -> int:
        rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if x.endswith("}")]
        return max((r["iter"] for r in rows), default=0)

    _kill_at(_dive(*args, "--out", out), iterations, rng.randrange(1, (epochs - 1) * batches), rng.uniform(0, 0.05))
    _run(_dive(*args, "--out", out))
    for name in ("model.safetensors", "last.safetensors"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
