"""SynthVI: layouts readable by the project's own readers, determinism, and the world's rules."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dive.data.records import Modality
from dive.data.registry import DatasetLayoutError, detect_format, load_dataset
from dive.data.synthvi.build import SynthConfig, build_world
from dive.data.synthvi.world import (
    COLOR_NAMES, COLOR_NIR, COLORS, MATERIALS, VI_CAMERAS, nir_of, sample_identities, visible_luminance,
)

TINY = dict(vi_train_ids=6, vi_val_ids=2, vi_test_ids=4, vi_images_per_camera=(1, 2), ext_ids=8,
            ext_test_ids=2, web_images=10)


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("w") / "world"
    build_world(SynthConfig(out=out, seed=3, workers=1, **TINY), progress=False)
    return out


def test_world_reads_with_project_readers(tiny_world):
    assert detect_format(tiny_world) == "synthvi"
    assert detect_format(tiny_world / "vi") == "sysu_mm01"
    assert detect_format(tiny_world / "external") == "market1501"
    ds = load_dataset("synthvi", tiny_world)
    vi = ds.vi
    assert {s: len(vi.ids(s)) for s in ("train", "val", "test")} == {"train": 6, "val": 2, "test": 4}
    assert {r.pid for r in vi.records} == set(range(1, 13))
    # both infrared cameras hold every identity; visible cameras at least two per identity
    for pid in range(1, 13):
        cams = {r.camid for r in vi.records if r.pid == pid}
        assert {3, 6} <= cams and len(cams - {3, 6}) >= 2
    assert {r.modality for r in vi.records if r.camid in (3, 6)} == {Modality.INFRARED}
    ext = ds.external
    train_ids = {r.pid for r in ext.split("train")}
    assert train_ids == set(range(1, 9))
    assert ext.dropped["junk"] > 0  # junk boxes written and dropped by the reader
    assert any(r.pid == 0 for r in ext.split("gallery"))  # distractors kept in the gallery
    assert len(ds.web_pool()) == 10
    assert all(p.exists() and "photo of" in c for p, c in ds.web_pool())
    # every VI infrared image is colourless and has the default size
    for r in [r for r in vi.records if r.modality is Modality.INFRARED][:10]:
        arr = np.asarray(Image.open(r.path))
        assert arr.shape == (128, 64, 3)
        assert np.abs(arr[..., 0].astype(int) - arr[..., 1]).max() <= 3  # JPEG rounding only


def test_same_seed_identical_bytes_independent_of_workers(tiny_world, tmp_path):
    again = tmp_path / "again"
    build_world(SynthConfig(out=again, seed=3, workers=2, **TINY), progress=False)
    assert tree_hashes(again) == tree_hashes(tiny_world)


def test_different_seed_differs(tiny_world, tmp_path):
    other = tmp_path / "other"
    build_world(SynthConfig(out=other, seed=4, workers=1, **TINY), progress=False)
    a, b = tree_hashes(tiny_world), tree_hashes(other)
    common = set(a) & set(b)
    assert common and sum(a[k] != b[k] for k in common) > 0.9 * len(common)


def test_refuses_non_empty_output(tiny_world):
    with pytest.raises(FileExistsError, match="not empty"):
        build_world(SynthConfig(out=tiny_world, seed=3, workers=1, **TINY), progress=False)


def test_incomplete_world_is_not_read(tiny_world, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_world, broken)
    (broken / "synthvi.json").unlink()
    with pytest.raises(DatasetLayoutError, match="synthvi.json"):
        load_dataset("synthvi", broken)


def test_configurable_image_size(tmp_path):
    out = tmp_path / "small"
    build_world(SynthConfig(out=out, seed=0, workers=1, height=64, width=32, **TINY), progress=False)
    r = load_dataset("synthvi", out).records[0]
    assert Image.open(r.path).size == (32, 64)


def test_infrared_is_not_luminance():
    lum = [visible_luminance(COLORS[c]) for c in COLOR_NAMES for m in MATERIALS]
    nir = [nir_of(c, m) for c in COLOR_NAMES for m in MATERIALS]
    assert abs(np.corrcoef(lum, nir)[0, 1]) < 0.3
    # the order flips: black cloth is brighter than pink cloth in near-infrared
    assert visible_luminance(COLORS["black"]) < visible_luminance(COLORS["pink"])
    assert COLOR_NIR["black"] > COLOR_NIR["pink"]


def test_identities_distinct():
    ids = sample_identities(1200, np.random.default_rng(0))
    keys = np.array([[hash(v) for v in i.key()] for i in ids])
    diff = (keys[:, None, :] != keys[None, :, :]).sum(-1)
    np.fill_diagonal(diff, 99)
    assert diff.min() >= 2


def test_infrared_cameras_differ():
    ir = [c for c in VI_CAMERAS.values() if c.infrared]
    assert len(ir) == 2
    a, b = ir
    assert a.scene != b.scene and (a.blur, a.noise, a.contrast) != (b.blur, b.noise, b.contrast)


def test_inspect_reports_gap_and_sheet(tiny_world, tmp_path):
    from dive.data.inspect import InspectConfig, format_report, inspect

    rep = inspect(InspectConfig(root=tiny_world, out=tmp_path / "ins"))
    vi = rep["datasets"][0]
    gap = vi["modality_gap"]
    assert gap["ids"] == 4 and gap["chance_rank1"] == 25.0
    for key in ("visible->visible (other cameras)", "infrared->visible", "infrared->grayscale(visible)"):
        assert 0.0 <= gap[key]["rank1"] <= 100.0 and gap[key]["queries"] > 0
    assert rep["datasets"][1]["modality_gap"] is None  # visible-only external set
    sheet = Image.open(vi["contact_sheet"])
    assert sheet.size[0] > 6 * 64 and sheet.size[1] > 4 * 128
    text = format_report(rep)
    assert "infrared->visible" in text and "contact sheet" in text
    assert not (tiny_world / "inspect").exists()  # the dataset is never written
