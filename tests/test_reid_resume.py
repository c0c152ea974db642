"""`dive reid train|run` resume after a kill and end with the same bytes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dive.reid import resume
from dive.reid.run import ReIDDataConfig, load_reid_data
from dive.reid.train import ReIDTrainConfig, train_reid
from test_reid_train import world  # noqa: F401  (the same tiny world, one copy of the fixture)

THREADS = 1
TINY = dict(base_width=4, height=64, width=32, num_ids=2, num_per_modality=2, warmup_epochs=1.0, lr_steps=(3,),
            progress=False, threads=THREADS, log_every=1)



def _epoch_rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]


def _same_files(a: Path, b: Path) -> None:
    for name in ("model.safetensors", "last.safetensors"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    # the resume state: the same tensors (its JSON holds timings)
    sa, sb = load_file(str(a / resume.STATE_FILE)), load_file(str(b / resume.STATE_FILE))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_gives_the_same_bytes(world, tmp_path):
    epochs, batches = 5, 3
    ref = train_reid(ReIDTrainConfig(out=tmp_path / "ref", epochs=epochs, batches_per_epoch=batches, **TINY),
                     load_reid_data(ReIDDataConfig(data=world)).train)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "dive", "reid", "train", "--data", str(world), "--out", str(out), "--base-width", "4",
           "--height", "64", "--width", "32", "--num-ids", "2", "--num-per-modality", "2", "--epochs", str(epochs),
           "--batches-per-epoch", str(batches), "--warmup-epochs", "1", "--lr-steps", "3", "--threads", str(THREADS),
           "--log-every", "1", "--no-progress"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    try:  # kill -9 inside the third epoch, after two saves
        while time.time() < deadline and p.poll() is None:
            log = out / "log.jsonl"
            if log.exists() and any(json.loads(line).get("epoch", 0) >= 2 for line in log.read_text().splitlines()
                                    if line.endswith("}")):
                break
            time.sleep(0.01)
        p.send_signal(signal.SIGKILL)
    finally:
        p.wait()
    assert p.returncode == -signal.SIGKILL, p.stderr.read()
    assert not (out / "model.json").exists(), "the run finished before it could be killed"
    assert out.joinpath(resume.STATE_FILE).exists()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    _same_files(ref, out)
    assert _epoch_rows(out) == _epoch_rows(ref)  # the log continues as if never killed
    assert json.loads((out / "model.json").read_text())["timing"]["iterations"] == epochs * batches
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # finished: refused, not redone
    assert r.returncode == 2 and "already holds a ReID run" in r.stderr


class _Killed(BaseException):
    pass


def dies_after(epoch: int):
    """A `resume.save_state` that writes the state of `epoch`, then stops the run as a kill would
    (take it before patching: it wraps the function in place now)."""
    save = resume.save_state

    def dying(run, model, opt, gen, best, info):
        path = save(run, model, opt, gen, best, info)
        if info["epoch"] == epoch:
            raise _Killed
        return path

    return dying


def test_best_val_caj_resumes_after_any_epoch(world, tmp_path, monkeypatch):
    data = load_reid_data(ReIDDataConfig(data=world))
    cfg = dict(TINY, epochs=3, batches_per_epoch=2, method="caj", select="best-val", val_trials=1)
    ref = train_reid(ReIDTrainConfig(out=tmp_path / "ref", **cfg), data.train, data.val)
    save = resume.save_state
    for kill_after in (1, 2, 3):  # dies right after the state of epoch N is written
        out = tmp_path / f"k{kill_after}"
        monkeypatch.setattr(resume, "save_state", dies_after(kill_after))
        with pytest.raises(_Killed):
            train_reid(ReIDTrainConfig(out=out, **cfg), data.train, data.val)
        monkeypatch.setattr(resume, "save_state", save)
        train_reid(ReIDTrainConfig(out=out, **cfg), data.train, data.val)
        _same_files(ref, out)
        ref_meta, meta = (json.loads((d / "model.json").read_text()) for d in (ref, out))
        assert meta["epoch"] == ref_meta["epoch"] and meta["selected_by"] == "best-val"


def test_other_settings_are_refused_and_an_unsaved_run_starts_over(world, tmp_path):
    data = load_reid_data(ReIDDataConfig(data=world))
    out = tmp_path / "r"

    class Stop(BaseException):
        pass

    save = resume.save_state

    def dying(*a):
        save(*a)
        raise Stop

    resume.save_state = dying
    try:
        with pytest.raises(Stop):
            train_reid(ReIDTrainConfig(out=out, epochs=2, batches_per_epoch=1, **TINY), data.train)
    finally:
        resume.save_state = save
    with pytest.raises(ValueError, match=r"last\.state\.safetensors: an unfinished run.*--lr"):
        train_reid(ReIDTrainConfig(out=out, epochs=2, batches_per_epoch=1, lr=0.05, **TINY), data.train)
    # --force starts over; killed before its first save (no state, only config and log): a rerun starts over too
    (out / resume.STATE_FILE).unlink()
    (out / "log.jsonl").write_text('{"type": "iter", "iter": 1}\n{"type": "it')
    run = train_reid(ReIDTrainConfig(out=out, epochs=2, batches_per_epoch=1, **TINY), data.train)
    ref = train_reid(ReIDTrainConfig(out=tmp_path / "ref", epochs=2, batches_per_epoch=1, **TINY), data.train)
    _same_files(ref, run)
    assert _epoch_rows(run) == _epoch_rows(ref)


def test_a_bench_job_stopped_part_way_continues_and_another_recipe_starts_over(world, tmp_path, monkeypatch):
    """A bench or sweep ReID job killed after its first epoch continues from that epoch when rerun,
    ending with the bytes and report of an unbroken run; the folder of a job whose recipe changed
    since (another lr) is not resumed but trained over."""
    from dive.bench.jobs import _reid_job, resumable

    recipe = {k: v for k, v in TINY.items() if k not in ("progress", "threads")} | dict(epochs=2, batches_per_epoch=1)

    def job(run, **over):
        return ("row|agw|0", str(world), "synthvi", str(run), "agw", 0, recipe | over)

    _, ref = _reid_job(job(tmp_path / "ref"))
    save, dying = resume.save_state, dies_after(1)
    monkeypatch.setattr(resume, "save_state", dying)
    with pytest.raises(_Killed):
        _reid_job(job(tmp_path / "killed"))
    monkeypatch.setattr(resume, "save_state", save)
    assert resumable(job(tmp_path / "killed")) and not resumable(job(tmp_path / "killed", lr=0.05))
    assert not resumable(job(tmp_path / "ref"))  # finished: nothing to continue
    _, report = _reid_job(job(tmp_path / "killed"))
    _same_files(tmp_path / "ref", tmp_path / "killed")
    assert _epoch_rows(tmp_path / "killed") == _epoch_rows(tmp_path / "ref")
    assert report["results"].keys() == ref["results"].keys()
    for name, res in ref["results"].items():  # every protocol scores the same network the same
        assert report["results"][name]["mAP"] == res["mAP"] and list(report["results"][name]["cmc"]) == list(res["cmc"])
    # a changed recipe: the unfinished folder is trained over, as a new run of that recipe
    monkeypatch.setattr(resume, "save_state", dying)
    with pytest.raises(_Killed):
        _reid_job(job(tmp_path / "changed"))
    monkeypatch.setattr(resume, "save_state", save)
    _reid_job(job(tmp_path / "changed", lr=0.05))
    _reid_job(job(tmp_path / "fresh", lr=0.05))
    _same_files(tmp_path / "fresh", tmp_path / "changed")
