"""The browser of exported datasets: a visitor's complete exports, each one's identities with real
and synthetic counts, one identity's images filtered by origin, captioned in words; another
visitor's exports neither listed nor opened."""

from __future__ import annotations

import csv
import shutil
from collections import Counter

import pytest

from dive.studio.sandbox import StudioError, visitor_id
from dive.studio.service import DEMO_NAME, Studio


@pytest.fixture(scope="module")
def exported(studio_dirs, tiny_world_dir, tmp_path_factory):
    """A public-mode studio where visitor `a` exported the tiny world expanded by the micro checkpoint."""
    _, shipped = studio_dirs
    data = tmp_path_factory.mktemp("browse") / "data"
    shutil.copytree(tiny_world_dir, data / "worlds" / "tiny")
    studio = Studio(data, shipped_dir=shipped, default_base=data / "none", device="cpu", public=True)
    a = visitor_id("browser-a")
    out, _, summary = studio.export(f"shipped: {DEMO_NAME}", "worlds/tiny", which="external", min_images=0, top_k=2,
                                    ids=[], cameras=[], n=2, seed=0, steps=2, guidance=1.0, owner=a)
    return studio, a, out, summary


def _manifest(out):
    with (out / "manifest.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_a_visitor_browses_their_export_by_identity_and_origin(exported):
    studio, a, out, summary = exported
    rel = studio.sandbox.relative(out)
    folders = studio.exports.folders(a)
    assert [v for _, v in folders] == [rel] and rel.startswith(f"visitors/{a}/exports/")
    assert f"{summary['counts']['images']} images" in folders[0][0]
    rows = _manifest(out)
    ids = studio.exports.identities(rel, a)
    count = Counter((int(r["pid"]), r["origin"]) for r in rows)
    assert {i.pid for i in ids} == {int(r["pid"]) for r in rows}
    assert all((i.real, i.synthetic) == (count[(i.pid, "real")], count[(i.pid, "synthetic")]) for i in ids)
    new = [i for i in ids if i.synthetic]
    assert new and ids[: len(new)] == new  # the expanded identities first
    pick = new[0]
    assert pick.label.startswith(f"#{pick.pid:04d} · ") and f"{pick.synthetic} synthetic" in pick.label

    synth, line = studio.exports.images(rel, str(pick.pid), "synthetic", a)
    assert len(synth) == pick.synthetic and f"{pick.synthetic} synthetic images" in line
    assert all(" · synthetic · seed " in c and p.exists() and out in p.parents for p, c in synth)
    real, _ = studio.exports.images(rel, pick.pid, "real", a)
    assert len(real) == pick.real and all(c.endswith(" · real") for _, c in real)
    both, _ = studio.exports.images(rel, pick.label, "both", a)  # the picker's label works as well
    # infrared first: here the synthetic images (this identity's real images are visible ones)
    assert all(" · infrared · " in c for _, c in synth) and all(" · visible · " in c for _, c in real)
    assert [c for _, c in both] == [c for _, c in synth] + [c for _, c in real]
    cam = next(r for r in rows if int(r["pid"]) == pick.pid and r["origin"] == "synthetic")
    assert any(c.startswith(f"cam{cam['camera']} · {cam['modality']} · synthetic · seed {cam['seed']}") for _, c in synth)
    few, line = studio.exports.images(rel, pick.pid, "both", a, limit=1)
    assert len(few) == 1 and "the first 1 shown" in line

    # the Datasets tab's callbacks: the visitor of the request, errors in one line
    from types import SimpleNamespace

    from dive.studio.datasets_ui import DatasetsTab

    tab, me, other = DatasetsTab(studio), SimpleNamespace(session_hash="browser-a"), SimpleNamespace(session_hash="b")
    assert tab.folders(None, me)["value"] == rel and tab.folders(rel, other)["value"] is None
    picker, line = tab.identities(rel, me)
    assert picker["value"] == str(pick.pid) and f"{len(ids)} identities" in line
    gallery, line = tab.images(rel, picker["value"], "synthetic", me)
    assert [c for _, c in gallery] == [c for _, c in synth] and all(isinstance(p, str) for p, _ in gallery)
    picker, line = tab.identities(rel, other)
    assert picker["choices"] == [] and "dive-error" in line and "does not exist" in line
    assert str(studio.sandbox.root) not in line


def test_another_visitor_and_bad_folders_are_refused(exported, tmp_path):
    studio, a, out, _ = exported
    rel = studio.sandbox.relative(out)
    b = visitor_id("browser-b")
    assert studio.exports.folders(b) == []
    for call in (lambda: studio.exports.identities(rel, b), lambda: studio.exports.images(rel, 1, "both", b)):
        with pytest.raises(StudioError, match="does not exist"):
            call()
    with pytest.raises(StudioError, match="not in your exports area"):
        studio.exports.identities("worlds/tiny", a)
    with pytest.raises(StudioError, match="choose an exported dataset"):
        studio.exports.identities("", a)
    with pytest.raises(StudioError, match="show must be one of"):
        studio.exports.images(rel, 1, "infrared", a)
    with pytest.raises(StudioError, match="not an identity"):
        studio.exports.images(rel, 9999, "both", a)
    # local mode: the data folder's own exports area; an unfinished export is refused by name;
    # a manifest.csv alone is read as well
    local = Studio(tmp_path / "data", shipped_dir=tmp_path / "none", default_base=tmp_path / "none", device="cpu")
    copy = local.sandbox.root / "exports" / "job1" / "export"
    shutil.copytree(out, copy)
    (copy / "manifest.jsonl").unlink()
    assert [v for _, v in local.exports.folders()] == ["exports/job1/export"]
    assert local.exports.identities("exports/job1/export") == studio.exports.identities(rel, a)
    (copy / "export.json").unlink()
    assert local.exports.folders() == []
    with pytest.raises(StudioError, match="not a complete export"):
        local.exports.identities("exports/job1/export")
