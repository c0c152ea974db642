"""The studio without its UI: sandboxed paths, generation through the same stage functions,
background training runs that really stop and survive a restart."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from PIL import Image

from dive.checkpoint import check_checkpoint_dir
from dive.studio.sandbox import Sandbox, StudioError
from dive.studio.service import DEMO_NAME, Studio


def test_sandbox_refuses_traversal(tmp_path):
    sb = Sandbox(tmp_path / "data")
    (tmp_path / "secret").mkdir()
    os.symlink(tmp_path / "secret", sb.root / "link")
    for bad in ("../secret", "/etc/passwd", "a/../../secret", str(tmp_path / "secret"), "link", "link/x", ""):
        with pytest.raises(StudioError):
            sb.resolve(bad)
    assert sb.resolve("worlds/quick") == sb.root / "worlds" / "quick"
    a, b = sb.new_job_dir("exports"), sb.new_job_dir("exports")
    assert a != b and a.parent == b.parent == sb.root / "exports"


def test_service_generates_with_the_shipped_checkpoint(studio_dirs):
    data, shipped = studio_dirs
    studio = Studio(data, shipped_dir=shipped)
    labels = [c.label for c in studio.checkpoints()]
    assert labels[0] == f"shipped: {DEMO_NAME}"  # shipped first, then any runs other tests made
    # the studio opens on the demo by its exact name, not on another folder sharing its prefix
    demo = f"shipped: {DEMO_NAME}"
    assert Studio.default_choice(["shipped: a", f"{demo}-v2", demo, "shipped: dive-demo"]) == demo
    assert Studio.default_choice(["shipped: a", "run 1: final"]) == "shipped: a" and Studio.default_choice([]) is None
    table = studio.table(labels[0])
    ids = studio.identity_choices(table)
    cams = studio.camera_choices(table)
    assert ids[0][0].split(" · ")[1] == "external"  # external identities first
    assert "(infrared)" in cams[0][0]  # infrared cameras first
    imgs = studio.generate(labels[0], [ids[0][1]], [cams[0][1]], n=2, seed=4, steps=3, guidance=1.0)
    again = studio.generate(labels[0], [ids[0][1]], [cams[0][1]], n=2, seed=4, steps=3, guidance=1.0)
    assert len(imgs) == 2 and all(np.array_equal(a[0], b[0]) for a, b in zip(imgs, again))
    # captions in words: identity name, camera number and modality, seed (no raw token strings)
    t, c = table.get(ids[0][1]), table.get(cams[0][1])
    assert imgs[0][1] == f"{t.dataset} #{t.pid:04d} · cam{c.camid} · infrared · seed {imgs[0][2]['seed']}"
    assert ids[0][1] not in imgs[0][1]
    assert studio.reference_image(labels[0], ids[0][1]) is not None
    # img2img from a picture of any size: resized to the generator's, deterministic, and it matters
    pic = Image.fromarray(np.random.default_rng(0).integers(0, 255, (100, 50, 3), dtype=np.uint8))
    kw = dict(n=1, seed=4, steps=3, guidance=1.0, init_image=pic, strength=0.5)
    from_pic = studio.generate(labels[0], [ids[0][1]], [cams[0][1]], **kw)
    assert np.array_equal(from_pic[0][0], studio.generate(labels[0], [ids[0][1]], [cams[0][1]], **kw)[0][0])
    assert not np.array_equal(from_pic[0][0], imgs[0][0]) and "from your image, strength 0.5" in from_pic[0][1]
    with pytest.raises(StudioError, match="strength"):
        studio.generate(labels[0], [ids[0][1]], [cams[0][1]], **(kw | {"strength": 0.0}))
    with pytest.raises(StudioError, match="outside"):
        studio.resolve_checkpoint("../../etc")
    with pytest.raises(StudioError, match="not a DiVE checkpoint"):
        studio.resolve_checkpoint("bases/micro")
    with pytest.raises(StudioError):
        studio.generate(labels[0], ["<nobody>"], [cams[0][1]], n=1, seed=0, steps=2, guidance=1.0)


@pytest.mark.slow
def test_training_run_stops_and_survives_restart(studio_dirs):
    data, shipped = studio_dirs
    studio = Studio(data, shipped_dir=shipped)
    rec = studio.launch_training(preset="quick smoke test", data=None, base="bases/micro", steps=5000)
    deadline = time.time() + 240
    while time.time() < deadline and not studio.runs.checkpoints(studio.runs.get(rec.id)):
        assert studio.runs.get(rec.id).status == "running", studio.runs.log_tail(studio.runs.get(rec.id))
        studio.runs.refresh()
        time.sleep(0.5)
    assert studio.runs.checkpoints(rec), studio.runs.log_tail(rec)
    assert studio.runs.loss_curve(rec)
    t0 = time.time()
    stopped = studio.runs.stop(rec.id)
    elapsed = time.time() - t0
    print(f"\nStop: process gone and run marked stopped in {elapsed:.2f} s")
    assert stopped.status == "stopped" and elapsed < 5.0
    with pytest.raises(ProcessLookupError):
        os.kill(rec.pid, 0)  # the process is gone
    last = studio.runs.checkpoints(stopped)[0]
    check_checkpoint_dir(last)
    # a new app instance on the same folder still knows the run, and its checkpoint is offered
    studio2 = Studio(data, shipped_dir=shipped)
    assert studio2.runs.get(rec.id).status == "stopped"
    label = next(c.label for c in studio2.checkpoints() if c.path == last)
    table = studio2.table(label)
    assert studio2.generate(label, [table.identities[0].token], [table.cameras[0].token], n=1, seed=0, steps=2,
                            guidance=1.0)
