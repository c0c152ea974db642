"""The studio's server state: images that carry their settings and redraw identically from them,
exports refused when the checkpoint's identities are not the dataset's, and training runs whose
states are true and that resume on the same loss curve."""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest
from PIL import Image

from dive.studio import pngmeta
from dive.studio.sandbox import StudioError
from dive.studio.service import DEMO_NAME, Studio


def test_png_settings_round_trip_and_a1111_text(tmp_path):
    seed = 9_223_372_036_854_775_807 - 3  # 19 digits: a float would round it
    s = {"prompt": "a cam3 photo of <p1> person", "negative_prompt": "", "steps": 25, "sampler": pngmeta.SAMPLER,
         "guidance": 3.0, "seed": str(seed), "size": "64x128", "checkpoint": "shipped: dive-demo",
         "checkpoint_hash": "abc123", "base": "tiny", "base_hash": "def456", "version": "0.1.0",
         "request_seed": "7", "n": 4, "index": 2, "identity": "<p1>", "camera": "cam3", "strength": None}
    path = pngmeta.save_png(tmp_path / "x.png", np.zeros((8, 4, 3), np.uint8), s)
    with Image.open(path) as im:
        text = im.text["parameters"]
    lines = text.splitlines()
    assert lines[0] == s["prompt"]
    assert lines[1].startswith(f"Steps: 25, Sampler: DPM++ 2M, CFG scale: 3.0, Seed: {seed}, Size: 64x128, "
                               "Model: \"shipped: dive-demo\", Model hash: abc123, Base: tiny, Base hash: def456, ")
    assert "Batch size: 4, Batch pos: 2" in lines[1] and lines[1].endswith("Version: dive 0.1.0")
    back = pngmeta.read_settings(path)
    assert back == s and int(back["seed"]) == seed
    assert pngmeta.parse_seed(f" {seed} ") == seed and pngmeta.parse_seed("") == 0 and pngmeta.parse_seed(5.0) == 5
    for bad in ("1e19", "-3", "12.5", str(2**63)):
        with pytest.raises(ValueError, match="seed"):
            pngmeta.parse_seed(bad)
    Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")
    with pytest.raises(ValueError, match=r"plain\.png: has no DiVE settings"):
        pngmeta.read_settings(tmp_path / "plain.png")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"junk\.png: not an image"):
        pngmeta.read_settings(tmp_path / "junk.png")


def test_reused_settings_redraw_identical_pixels(studio_dirs):
    data, shipped = studio_dirs
    studio = Studio(data, shipped_dir=shipped)
    ck = f"shipped: {DEMO_NAME}"
    table = studio.table(ck)
    idt, cam = table.identities[-1].token, table.infrared_cameras()[0].token
    seed = 8_446_744_073_709_551_615  # 19 digits
    images = studio.generate(ck, [idt], [cam], n=3, seed=seed, steps=3, guidance=2.0)
    _, zpath, paths = studio.save_images(images)
    assert zpath.exists() and len(paths) == 3
    s = studio.reuse_settings(paths[1])
    assert s["checkpoint"] == ck and s["identity"] == idt and s["camera"] == cam
    assert s["request_seed"] == str(seed) and s["n"] == 3 and s["index"] == 1 and s["steps"] == 3
    assert s["checkpoint_hash"] == studio.generator(ck)[0].checkpoint_hash and len(s["base_hash"]) == 16
    gen = studio.generator(ck)[0]
    assert s["sampler"] == "DPM++ 2M" and s["size"] == f"{gen.width}x{gen.height}"
    again = studio.generate(s["checkpoint"], [s["identity"]], [s["camera"]], n=s["n"], seed=int(s["request_seed"]),
                            steps=s["steps"], guidance=s["guidance"])
    stored = np.asarray(Image.open(paths[1]).convert("RGB"))
    assert np.array_equal(again[s["index"]].image, stored)  # the PNG is lossless and the redraw exact
    assert again[1].settings["seed"] == s["seed"]
    with pytest.raises(StudioError, match="has no DiVE settings"):
        Image.new("RGB", (4, 4)).save(data / "plain.png")
        studio.reuse_settings(data / "plain.png")


def test_export_refuses_a_checkpoint_of_another_world(studio_dirs, tmp_path):
    from dive.data.synthvi.build import SynthConfig, build_world

    from conftest import TINY_WORLD

    data, shipped = studio_dirs
    other = data / "worlds" / "other-seed"
    if not (other / "synthvi.json").exists():
        build_world(SynthConfig(out=other, seed=11, workers=1, force=True, **(TINY_WORLD | {"ext_ids": 5})),
                    progress=False)
    studio = Studio(data, shipped_dir=shipped)
    before = set((data / "exports").glob("*")) if (data / "exports").exists() else set()
    calls = []
    with pytest.raises(StudioError, match=r"was trained on other identities than worlds/other-seed: \d+ of its"):
        studio.export(f"shipped: {DEMO_NAME}", "worlds/other-seed", which="external", min_images=0, top_k=1, ids=[],
                      cameras=[], n=1, seed=0, steps=2, guidance=1.0, progress=lambda *a: calls.append(a))
    after = set((data / "exports").glob("*")) if (data / "exports").exists() else set()
    assert after == before  # refused before any work
    assert calls and calls[0][0] == 0  # progress shows at once
    assert "worlds/other-seed" in studio.worlds()


def _wait(cond, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_failed_run_resumes_on_the_same_loss_curve(studio_dirs):
    data, shipped = studio_dirs
    studio = Studio(data, shipped_dir=shipped)
    steps = 30
    ref = studio.launch_training(preset="quick smoke test", data=None, base="bases/micro", steps=steps)
    run = studio.launch_training(preset="quick smoke test", data=None, base="bases/micro", steps=steps)
    # a process that dies is "failed", not "running"
    _wait(lambda: (run.run_dir / "checkpoint-20").is_dir() or studio.runs.get(run.id).status != "running", 600,
          "the first checkpoint")
    os.killpg(run.pid, signal.SIGKILL)
    _wait(lambda: [r.status for r in studio.runs.list() if r.id == run.id] == ["failed"], 30, "the failed state")
    assert studio.runs.checkpoints(studio.runs.get(run.id)), studio.runs.log_tail(run)
    resumed = studio.resume_run(run.id)
    assert resumed.status == "running" and resumed.pid != run.pid and resumed.run_dir == run.run_dir
    with pytest.raises(StudioError, match="still running"):
        studio.resume_run(run.id)
    ours = (ref.id, run.id)
    _wait(lambda: all(r.status != "running" for r in studio.runs.list() if r.id in ours), 900, "both runs to finish")
    studio.runs.refresh()
    assert studio.runs.get(ref.id).status == "finished", studio.runs.log_tail(ref)
    assert studio.runs.get(run.id).status == "finished", studio.runs.log_tail(run)
    a, b = studio.runs.loss_curve(ref), studio.runs.loss_curve(run)
    assert len(b) == steps and len({s for s, _ in b}) == steps  # no step logged twice, none missing
    assert a == b  # the resumed run continues the identical curve
    with pytest.raises(StudioError, match="finished"):
        studio.resume_run(run.id)
    rows = [json.loads(x) for x in (run.run_dir / "loss.jsonl").read_text().splitlines()]
    assert len(rows) == steps
