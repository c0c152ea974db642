"""The studio as a public Space: visitors isolated (runs, exports, files), trainings and exports
capped, the run database never served, errors without the server's paths, spaces.GPU when
installed; the readable attention view; an export stopped and resumed gives the same bytes."""

from __future__ import annotations

import shutil
import sys
import types
from collections import OrderedDict
from types import SimpleNamespace

import numpy as np
import pytest

from dive.studio.sandbox import StudioError, visitor_id
from dive.studio.service import DEMO_NAME, Studio
from dive.studio.ui import err, gpu, neighbours


def _studio(tmp_path, **kw) -> Studio:
    return Studio(tmp_path / "data", shipped_dir=tmp_path / "none", default_base=tmp_path / "none", device="cpu", **kw)


def test_public_mode_isolates_visitors_and_caps_work(tmp_path):
    studio = _studio(tmp_path, public=True)
    a, b = visitor_id("session-a"), visitor_id("session-b")
    assert a != b and len(a) == 20 and visitor_id("session-a") == a
    out = studio.sandbox.new_job_dir("runs", a)
    assert out.parent.parent == studio.sandbox.root / "visitors" / a
    rec = studio.runs.launch("train", ["--no-such-option"], {"preset": "x", "owner": a}, out)
    assert [r.id for r in studio.visible_runs(a)] == [rec.id] and studio.visible_runs(b) == []
    assert studio.run_of(rec.id, a).id == rec.id
    for action in (studio.run_of, studio.stop_run, studio.resume_run):
        with pytest.raises(StudioError, match=f"no run {rec.id}"):
            action(rec.id, b)
    # local mode: one user who sees every run
    local = _studio(tmp_path)
    assert [r.id for r in local.visible_runs()] == [rec.id] and local.run_of(rec.id).id == rec.id
    # another visitor's folder reads as missing; one's own is found
    mine = studio.sandbox.relative(out)
    assert studio.resolve(mine, a) == out
    with pytest.raises(StudioError, match="does not exist"):
        studio.resolve(mine, b)
    # caps: one training and one export at a time (refused with one line)
    studio.runs.list = lambda: [SimpleNamespace(status="running", config={"owner": b})]
    with pytest.raises(StudioError, match="1 training\\(s\\) at a time"):
        studio.launch_training(preset="quick smoke test", data=None, base=None, steps=None, owner=a)
    with studio.export_slot():
        with pytest.raises(StudioError, match="1 export\\(s\\) at a time"):
            with studio.export_slot():
                pass
    with studio.export_slot():  # the slot is free again
        pass


def test_errors_name_paths_relative_to_the_data_folder(tmp_path):
    studio = _studio(tmp_path)
    root = str(studio.sandbox.root)
    with pytest.raises(StudioError) as e:
        studio.sandbox.resolve("/etc/passwd")
    assert root not in str(e.value) and "outside the studio's data folder" in str(e.value)
    msg = err(FileExistsError(f"{root}/exports/x/export: not empty"), studio)
    assert root not in msg and "exports/x/export: not empty" in msg


def test_gpu_decorator_uses_spaces_only_when_installed(monkeypatch):
    def f(x):
        return x + 1

    monkeypatch.setitem(sys.modules, "spaces", None)  # not installed: a no-op
    assert gpu(f) is f
    fake = types.ModuleType("spaces")
    fake.GPU = lambda fn: (lambda *a, **k: ("on gpu", fn(*a, **k)))
    monkeypatch.setitem(sys.modules, "spaces", fake)
    assert gpu(f)(1) == ("on gpu", 2)


def test_many_identities_are_the_selected_one_and_its_neighbours():
    ids = [f"id{i}" for i in range(20)]
    assert neighbours(ids, "id10", 8) == [f"id{i}" for i in range(7, 15)]
    assert neighbours(ids, "id0", 8) == ids[:8] and neighbours(ids, "id19", 8) == ids[12:]
    assert neighbours(ids, "unknown", 3) == ids[:3] and neighbours(ids[:2], "id1", 8) == ids[:2]


def test_attention_view_leads_with_identity_and_camera_on_one_scale(tmp_path):
    from dive.generate.attention.maps import AttentionResult
    from dive.generate.attention.tokens import TokenSpan
    from dive.studio.attention_view import COLUMNS, grouped_maps, scaled, studio_figure, table_rows

    h, w = 16, 8
    flat = np.full((h, w), 0.01, np.float32)
    hot = np.zeros((h, w), np.float32)
    hot[4:12, 2:6] = 1.0
    spans = [TokenSpan("a", "word", "a", (1,), ("a",)), TokenSpan("[camera] c1", "camera", "c1", (2,), ("c1",)),
             TokenSpan("photo", "word", "photo", (3,), ("photo",)),
             TokenSpan("[identity] p7", "identity", "p7", (5,), ("p7",))]
    raw = OrderedDict([("a", flat), ("[camera] c1", flat * 2), ("photo", flat), ("[identity] p7", hot)])
    mask = np.zeros((h, w), bool)
    mask[4:12, 2:6] = True
    res = AttentionResult(image=np.zeros((h, w, 3), np.uint8), maps=raw, raw=raw, spans=spans, mask=mask,
                          mask_method="given", summary=OrderedDict(), prompt="a c1 photo of p7 person",
                          identity="p7", camera="c1", seed=0, index=0, image_seed=0, steps=2, guidance=1.0,
                          layers=["x"], steps_used=[0, 1])
    maps = grouped_maps(res)
    assert list(maps)[:2] == ["[identity] p7", "[camera] c1"] and list(maps)[2] == "other words (a, photo)"
    assert len(grouped_maps(res, "each")) == 4
    shared, own = scaled(maps, "shared"), scaled(maps, "per token")
    assert shared["[camera] c1"].max() == pytest.approx(0.02)  # a flat map stays dim on the shared scale
    assert own["[camera] c1"].max() == pytest.approx(1.0)
    rows = table_rows(res)
    assert list(rows[0]) == list(COLUMNS) and rows[0]["token"] == "[identity] p7"
    assert rows[0]["on person %"] == 100.0 and rows[0]["peak"] == 1.0 and rows[1]["peak"] == pytest.approx(0.02)
    assert studio_figure(res, tmp_path / "fig.png").stat().st_size > 1000


def _export_files(out):
    """relative path -> bytes of an export folder (job folder names normalised)."""
    files = {}
    for p in sorted(out.rglob("*")):
        if p.is_file() and p.name not in ("export.json", "export.partial.json") and not p.name.startswith("."):
            data = p.read_bytes()
            if p.suffix in (".jsonl", ".csv"):
                data = data.replace(out.parent.name.encode(), b"JOB")
            files[str(p.relative_to(out))] = data
    return files


def test_export_stop_keeps_the_work_and_resume_gives_the_same_bytes(studio_dirs, tiny_world_dir):
    from dive.studio.exportjob import ExportStopped

    data, shipped = studio_dirs
    if not (data / "worlds" / "tiny").exists():
        shutil.copytree(tiny_world_dir, data / "worlds" / "tiny")
    studio = Studio(data, shipped_dir=shipped, default_base=data / "bases" / "micro")
    kw = dict(which="external", min_images=0, top_k=2, ids=[], cameras=[], n=2, seed=0, steps=2, guidance=1.0)
    ck = f"shipped: {DEMO_NAME}"
    whole, _, summary = studio.export(ck, "worlds/tiny", **kw)
    seen = []

    def progress(done, total, what):
        seen.append(what)

    with pytest.raises(ExportStopped, match="press Resume export") as e:
        studio.export(ck, "worlds/tiny", progress=progress, should_stop=lambda: any("/" in s for s in seen), **kw)
    assert "ETA" in " ".join(seen) and str(data) not in str(e.value)
    with pytest.raises(StudioError, match="no stopped export"):
        studio.resume_export("someone-else")
    out, zpath, again = studio.resume_export(None)
    assert zpath.exists() and out != whole
    assert again["counts"] == summary["counts"]
    assert _export_files(out) == _export_files(whole)
    with pytest.raises(StudioError, match="no stopped export"):
        studio.resume_export(None)
