"""Real images beside generated ones: one visible and (for a VI identity) one infrared image per
camera, from the dataset the checkpoint was trained on when it lies inside the studio's data
folder; else the checkpoint's reference strip; captions in words."""

from __future__ import annotations

import json
import shutil

import pytest

from dive.checkpoint import TokenTable
from dive.studio.sandbox import StudioError
from dive.studio.service import Studio


@pytest.fixture()
def real_studio(studio_dirs, tiny_world_dir, tmp_path):
    """A data folder holding the tiny world, and three checkpoints: trained on it (absolute path,
    and relative to the data folder), and trained on a world outside the data folder."""
    _, shipped = studio_dirs
    demo = next(p for p in shipped.iterdir() if p.is_dir())
    data = tmp_path / "data"
    shutil.copytree(tiny_world_dir, data / "worlds" / "tiny")
    mine = tmp_path / "shipped"
    for name, where in (("absolute", str(data / "worlds" / "tiny")), ("relative", "worlds/tiny"),
                        ("elsewhere", str(tiny_world_dir))):
        shutil.copytree(demo, mine / name)
        meta = json.loads((mine / name / "dive.json").read_text())
        meta["config"]["data"] = where
        (mine / name / "dive.json").write_text(json.dumps(meta))
    studio = Studio(data, shipped_dir=mine, default_base=data / "none", device="cpu")
    return studio, TokenTable.load(mine / "absolute" / "tokens.json"), data / "worlds" / "tiny"


def _first_per_camera(world, dataset, pid):
    from dive.data.registry import load_dataset

    recs = sorted((r for r in load_dataset("synthvi", world).records if (r.dataset, r.pid) == (dataset, pid)),
                  key=lambda r: r.path)
    first = {}
    for r in recs:
        first.setdefault((r.modality.value, r.camid), r.path)
    return first


def test_real_images_per_camera_from_the_training_dataset(real_studio):
    studio, table, world = real_studio
    vi = next(t for t in table.identities if not table.is_external(t.dataset))
    ext = next(t for t in table.identities if table.is_external(t.dataset))
    for label in ("shipped: absolute", "shipped: relative"):
        got = studio.real_images(label, vi.token)
        assert got.source == "worlds/tiny" and got.who == f"{vi.dataset} #{vi.pid:04d}"
        want = _first_per_camera(world, vi.dataset, vi.pid)
        caps = [c for _, c in got.items]
        # one image per camera, visible cameras first, captions in words
        assert caps == [f"cam{c} · {m} · real" for m, c in sorted(want, key=lambda k: (k[0] == "infrared", k[1]))]
        assert any("infrared" in c for c in caps) and any("visible" in c for c in caps)
        assert {(c.split(" · ")[1], int(c.split(" · ")[0][3:])): str(p) for p, c in got.items} == want
        assert "worlds/tiny" in got.message() and str(world) not in got.message()
    # an external identity of a visible-only dataset: its visible cameras only
    got = studio.real_images("shipped: absolute", ext.token)
    want = _first_per_camera(world, ext.dataset, ext.pid)
    assert got.items and all(c.endswith(" · visible · real") for _, c in got.items)
    assert len(got.items) == len(want) and all(p.is_relative_to(world / "external") for p, _ in got.items)


def test_real_images_fall_back_to_the_reference_strip(real_studio):
    studio, table, _ = real_studio
    tok = table.identities[0].token
    got = studio.real_images("shipped: elsewhere", tok)  # trained on a world outside the data folder
    assert got.source == "reference strip" and len(got.items) == 1
    path, caption = got.items[0]
    assert path.parent.name == "references" and path.exists() and caption == "reference strip · real"
    assert "reference strip" in got.message()
    shutil.rmtree(path.parent)
    none = studio.real_images("shipped: elsewhere", tok)
    assert none.items == [] and none.message().startswith("no real images of ")
    # the dataset still answers for the checkpoint trained inside the data folder
    assert studio.real_images("shipped: absolute", tok).source == "worlds/tiny"
    # what the Generate tab shows: pixels and captions, or the error in one line
    from dive.studio.ui import real_gallery

    items, line = real_gallery(studio, "shipped: absolute", tok, None)
    assert items and items[0][0].ndim == 3 and items[0][1].endswith(" · real") and "worlds/tiny" in line
    assert real_gallery(studio, "shipped: absolute", None, None) == ([], "")
    items, line = real_gallery(studio, "shipped: absolute", "<nobody>", None)
    assert items == [] and "dive-error" in line and "not a token" in line
    with pytest.raises(StudioError, match="camera token"):
        studio.real_images("shipped: absolute", table.cameras[0].token)
    with pytest.raises(StudioError, match="not a token of this checkpoint"):
        studio.real_images("shipped: absolute", "<nobody>")


def test_real_images_follow_a_changed_dataset(real_studio, monkeypatch):
    """The dataset is read once, and again when its folder changes."""
    import dive.data.sources as sources

    studio, table, world = real_studio
    calls = []
    real_load = sources.load_sources
    monkeypatch.setattr(sources, "load_sources", lambda *a, **k: calls.append(a) or real_load(*a, **k))
    tok = table.identities[0].token
    first = studio.real_images("shipped: absolute", tok)
    assert studio.real_images("shipped: absolute", tok).items == first.items and len(calls) == 1
    import os
    import time

    later = time.time() + 5
    os.utime(world / "synthvi.json", (later, later))
    assert studio.real_images("shipped: absolute", tok).items == first.items and len(calls) == 2


def test_public_mode_real_images_are_copies_in_the_visitor_s_own_folder(real_studio):
    """Locally the real images travel as pixels; for a public visitor as copies in their own
    `real/` folder (the only files a public studio serves), made once, byte for byte the source."""
    from pathlib import Path

    from dive.studio.ui import real_gallery

    studio, table, _ = real_studio
    vi = next(t for t in table.identities if not table.is_external(t.dataset))
    local, _ = real_gallery(studio, "shipped: absolute", vi.token, None)
    assert local and all(getattr(img, "ndim", 0) == 3 for img, _ in local)
    shown, msg = real_gallery(studio, "shipped: absolute", vi.token, "visitor1")
    sources = studio.real_images("shipped: absolute", vi.token, "visitor1").items
    folder = studio.sandbox.owner_root("visitor1") / "real"
    assert [c for _, c in shown] == [c for _, c in sources] and "worlds/tiny" in msg
    for (path, _), (src, _) in zip(shown, sources):
        assert Path(path).parent == folder and Path(path).read_bytes() == Path(src).read_bytes()
    again, _ = real_gallery(studio, "shipped: absolute", vi.token, "visitor1")
    assert [p for p, _ in again] == [p for p, _ in shown] and len(list(folder.iterdir())) == len(shown)
