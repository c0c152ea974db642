"""Readers find exactly what a fake tree in each real layout holds, and name what is wrong."""

from __future__ import annotations

import shutil

import pytest

from dive.data.readers.cuhk03_np import CUHK03NP
from dive.data.readers.llcm import LLCM
from dive.data.readers.market1501 import Market1501
from dive.data.readers.regdb import RegDB
from dive.data.records import Modality
from dive.data.registry import DatasetLayoutError, available_datasets, detect_format, load_dataset, records_sorted
from fake_layouts import (
    counts_of,
    counts_only,
    make_cuhk03np_tree,
    make_llcm_tree,
    make_market_tree,
    make_regdb_tree,
    make_sysu_tree,
    write_image,
)


def test_all_readers_registered():
    assert {"sysu_mm01", "llcm", "regdb", "market1501", "cuhk03_np"} <= set(available_datasets())


# --- SYSU-MM01 -------------------------------------------------------------------------------


def test_sysu_counts_and_unlisted(tmp_path):
    exp = make_sysu_tree(tmp_path, images_per_cam=2, unlisted=[9], skip=[(5, 6), (1, 2)])
    ds = load_dataset("sysu_mm01", tmp_path)
    got = counts_of(ds.records)
    assert got == counts_only(exp)
    assert got["ids"] == {"test": [4, 5], "train": [1, 2], "unlisted": [9], "val": [3]}
    assert got["cameras"]["train"] == {"infrared": [3, 6], "visible": [1, 2, 4, 5]}
    assert got["images"]["train"] == 2 * 6 * 2 - 2  # (1, cam2) missing
    assert got["images"]["test"] == 2 * 6 * 2 - 2  # (5, cam6) missing
    assert ds.split("unlisted") and all(r.pid == 9 for r in ds.split("unlisted"))


def test_sysu_missing_split_file(tmp_path):
    make_sysu_tree(tmp_path)
    (tmp_path / "exp" / "val_id.txt").unlink()
    with pytest.raises(DatasetLayoutError) as e:
        load_dataset("sysu_mm01", tmp_path)
    assert str(tmp_path / "exp" / "val_id.txt") in str(e.value)


def test_sysu_malformed_person_folder(tmp_path):
    make_sysu_tree(tmp_path)
    bad = tmp_path / "cam4" / "abc"
    write_image(bad / "0001.jpg")
    with pytest.raises(DatasetLayoutError, match="4-digit") as e:
        load_dataset("sysu_mm01", tmp_path)
    assert str(bad) in str(e.value)


# --- Market-1501 -----------------------------------------------------------------------------


def test_market_counts_junk_and_distractors(tmp_path):
    exp = make_market_tree(tmp_path, junk=2, distractors=3)
    ds = Market1501(tmp_path)
    got = counts_of(ds.records)
    assert got == counts_only(exp)
    assert ds.dropped == {"junk": 2, "distractor": 0}
    assert got["ids"] == {"gallery": [0, 3, 5], "query": [3, 5], "train": [2, 7]}
    assert got["cameras"]["gallery"] == {"visible": [1, 2, 3]}
    assert sum(r.pid == 0 for r in ds.split("gallery")) == 3
    assert all(r.modality is Modality.VISIBLE for r in ds.records)
    assert not any(r.pid == -1 for r in ds.records)


def test_market_drop_distractors(tmp_path):
    exp = make_market_tree(tmp_path, junk=1, distractors=2)
    ds = Market1501(tmp_path, keep_distractors=False)
    assert ds.dropped == {"junk": 1, "distractor": 2}
    assert not any(r.pid == 0 for r in ds.records)
    assert len(ds) == sum(exp["images"].values()) - 2


def test_market_malformed_query_name(tmp_path):
    make_market_tree(tmp_path)
    bad = write_image(tmp_path / "query" / "abc.jpg")
    with pytest.raises(DatasetLayoutError, match="malformed file name") as e:
        Market1501(tmp_path)
    assert str(bad) in str(e.value)


# --- LLCM ------------------------------------------------------------------------------------


def test_llcm_counts_and_labels(tmp_path):
    exp = make_llcm_tree(tmp_path, images_per_cam=2)
    ds = load_dataset("llcm", tmp_path)
    got = counts_of(ds.records)
    assert got == counts_only(exp)
    assert got["ids"] == {"test": [3, 4], "train": [1, 2]}
    assert got["cameras"]["train"] == {"infrared": [1, 2, 9], "visible": [1, 2, 3]}
    assert got["modality"]["test"] == {"infrared": 12, "visible": 12}
    assert ds.labels == exp["labels"]
    assert ds.records == records_sorted(ds.records)


def test_llcm_camera_from_file_name(tmp_path):
    make_llcm_tree(tmp_path)
    rel = "train_vis/extra/0001/0001_c05_s200502_f9999_v.jpg"
    write_image(tmp_path / rel)
    with (tmp_path / "idx" / "train_vis.txt").open("a") as f:
        f.write(f"{rel} 0\n")
    ds = LLCM(tmp_path)
    rec = next(r for r in ds.records if r.path == str(tmp_path / rel))
    assert (rec.pid, rec.camid, rec.modality, rec.split) == (1, 5, Modality.VISIBLE, "train")


def test_llcm_no_camera_names_path(tmp_path):
    make_llcm_tree(tmp_path)
    rel = "train_nir/extra/0002/img.jpg"
    write_image(tmp_path / rel)
    with (tmp_path / "idx" / "train_nir.txt").open("a") as f:
        f.write(f"{rel} 1\n")
    with pytest.raises(DatasetLayoutError, match="camN") as e:
        LLCM(tmp_path)
    assert str(tmp_path / rel) in str(e.value)


def test_llcm_idx_line_to_missing_image(tmp_path):
    make_llcm_tree(tmp_path)
    idx = tmp_path / "idx" / "train_nir.txt"
    n_lines = len(idx.read_text().splitlines())
    with idx.open("a") as f:
        f.write("train_nir/cam1/0001/0001_c01_s200502_f1_n.jpg 0\n")
    with pytest.raises(DatasetLayoutError) as e:
        LLCM(tmp_path)
    msg = str(e.value)
    assert str(idx) in msg and f"line {n_lines + 1}" in msg and "0001_c01_s200502_f1_n.jpg" in msg


def test_llcm_malformed_idx_line(tmp_path):
    make_llcm_tree(tmp_path)
    idx = tmp_path / "idx" / "train_vis.txt"
    idx.write_text("train_vis/cam1/0001/x.jpg not_a_label\n")
    with pytest.raises(DatasetLayoutError, match="line 1 is malformed") as e:
        LLCM(tmp_path)
    assert str(idx) in str(e.value)


def test_llcm_missing_test_folder(tmp_path):
    make_llcm_tree(tmp_path)
    shutil.rmtree(tmp_path / "test_nir")
    with pytest.raises(DatasetLayoutError) as e:
        LLCM(tmp_path)
    assert str(tmp_path / "test_nir") in str(e.value)


def test_llcm_malformed_camera_folder(tmp_path):
    make_llcm_tree(tmp_path)
    bad = tmp_path / "test_vis" / "camera1"
    write_image(bad / "0003" / "0003_c01_s1_f1_v.jpg")
    with pytest.raises(DatasetLayoutError, match="cam1..cam9") as e:
        LLCM(tmp_path)
    assert str(bad) in str(e.value)


# --- RegDB -----------------------------------------------------------------------------------


@pytest.mark.parametrize("trial", [1, 2])
def test_regdb_counts_per_trial(tmp_path, trial):
    exp = make_regdb_tree(tmp_path, n_ids=4, images_per_id=2, trials=(1, 2))
    ds = RegDB(tmp_path, trial=trial)
    got = counts_of(ds.records)
    assert got == exp[trial]
    assert got["ids"] == {"test": [0, 1], "train": [0, 1]}
    assert got["cameras"]["train"] == {"infrared": [2], "visible": [1]}
    assert got["images"] == {"test": 8, "train": 8}
    assert ds.records == records_sorted(ds.records)


def test_regdb_trials_differ(tmp_path):
    make_regdb_tree(tmp_path, n_ids=4, trials=(1, 2))
    train1 = {r.path for r in RegDB(tmp_path, trial=1).split("train")}
    train2 = {r.path for r in RegDB(tmp_path, trial=2).split("train")}
    assert train1 != train2


def test_regdb_missing_trial_file(tmp_path):
    make_regdb_tree(tmp_path, trials=(1,))
    with pytest.raises(DatasetLayoutError) as e:
        RegDB(tmp_path, trial=3)
    assert str(tmp_path / "idx" / "train_visible_3.txt") in str(e.value)


def test_regdb_missing_image(tmp_path):
    make_regdb_tree(tmp_path, trials=(1,))
    idx = tmp_path / "idx" / "test_thermal_1.txt"
    with idx.open("a") as f:
        f.write("Thermal/Male/99/male_front_t_09900_99.bmp 5\n")
    with pytest.raises(DatasetLayoutError) as e:
        RegDB(tmp_path, trial=1)
    assert str(idx) in str(e.value) and "male_front_t_09900_99.bmp" in str(e.value)


@pytest.mark.parametrize("trial", [0, 11, "1"])
def test_regdb_bad_trial(tmp_path, trial):
    make_regdb_tree(tmp_path, trials=(1,))
    with pytest.raises(ValueError, match="trial"):
        RegDB(tmp_path, trial=trial)


# --- CUHK03-NP -------------------------------------------------------------------------------


@pytest.mark.parametrize("subset", ["detected", "labeled"])
def test_cuhk03np_counts(tmp_path, subset):
    exp = make_cuhk03np_tree(tmp_path)
    ds = load_dataset("cuhk03_np", tmp_path, subset=subset)
    got = counts_of(ds.records)
    assert got == exp[subset]
    assert got["ids"] == {"gallery": [3, 4], "query": [3, 4], "train": [1, 2]}
    assert got["cameras"]["query"] == {"visible": [1, 2]}
    assert got["images"]["query"] == 4


def test_cuhk03np_subsets_differ_and_default(tmp_path):
    exp = make_cuhk03np_tree(tmp_path)
    assert counts_of(CUHK03NP(tmp_path).records) == exp["detected"]
    assert exp["detected"]["images"] != exp["labeled"]["images"]


def test_cuhk03np_bad_subset(tmp_path):
    make_cuhk03np_tree(tmp_path)
    with pytest.raises(ValueError, match="subset"):
        CUHK03NP(tmp_path, subset="both")


def test_cuhk03np_missing_subset_folder(tmp_path):
    make_cuhk03np_tree(tmp_path, subsets=("detected",))
    with pytest.raises(DatasetLayoutError) as e:
        CUHK03NP(tmp_path, subset="labeled")
    assert str(tmp_path / "labeled" / "bounding_box_train") in str(e.value)
    assert detect_format(tmp_path) == "cuhk03_np"  # one complete subset is recognised


def test_cuhk03np_lenient_tail_and_bad_camera(tmp_path):
    exp = make_cuhk03np_tree(tmp_path, subsets=("detected",))
    write_image(tmp_path / "detected" / "bounding_box_train" / "0001_c2_extra_9.jpg")
    ds = CUHK03NP(tmp_path)
    assert len(ds.split("train")) == exp["detected"]["images"]["train"] + 1
    bad = write_image(tmp_path / "detected" / "query" / "0003_c3_1.png")
    with pytest.raises(DatasetLayoutError, match="camera 1 or 2") as e:
        CUHK03NP(tmp_path)
    assert str(bad) in str(e.value)


# --- format detection ------------------------------------------------------------------------

BUILDERS = {
    "sysu_mm01": make_sysu_tree,
    "llcm": make_llcm_tree,
    "regdb": make_regdb_tree,
    "market1501": make_market_tree,
    "cuhk03_np": make_cuhk03np_tree,
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_detect_format(tmp_path, name):
    BUILDERS[name](tmp_path)
    assert detect_format(tmp_path) == name
    assert len(load_dataset(detect_format(tmp_path), tmp_path)) > 0


def test_detect_format_unknown(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DatasetLayoutError, match="matches no known layout") as e:
        detect_format(tmp_path)
    assert str(tmp_path) in str(e.value)
