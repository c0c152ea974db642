"""SYSU-MM01 and LLCM at their real size (tests/realsize_trees.py: ~46k files each, no pixels):
each tree is detected and read with the exact id, camera and image counts; the SYSU tree is
exported with a handful of synthetic images and read back; the LLCM tree is exported in its own
layout with 4 external ids (real visible and synthetic infrared images) and read back; every
protocol's single-shot gallery is drawn for 10 trials with fixed seeds, one image per (id,
camera) pair of its cameras, and scored once on random features.

Each stage must finish within a bound, about 3x the slowest time measured on 2 CPU cores shared
with other jobs (load average 4 to 6), so a bound fails only on a real slowdown (a quadratic
step, a per-image rescan), not on a busy machine. Measured, the slowest seen -> bound (seconds):

    write SYSU tree (45,783 hard links to a 1x1 JPEG)     1.2 ->  10
    write LLCM tree (46,767 empty files)                  3.5 ->  10
    detect + read SYSU-MM01                               2.6 ->  15
    detect + read LLCM                                    4.8 ->  15
    export SYSU + 8 synthetic images, LLCM lists          133 -> 360
    read the export back                                  2.8 ->  15
    write LLCM tree (46,767 hard links to a 1x1 JPEG)     4.2 ->  10
    export LLCM + 4 external ids (12 real, 8 synthetic)   109 -> 360
    detect + read the LLCM export back                    5.6 ->  15
    10 gallery draws per protocol, both datasets          0.2 ->   5
    evaluate sysu-all + sysu-indoor, 10 trials each       6.7 ->  20
    evaluate llcm-v2i + llcm-i2v, 2 trials each          20.3 ->  60

The measured times are printed (run with -s to see them). docs/real-size-layouts.md has the counts
and a measured run.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dive.data.registry import detect_format, load_dataset
from dive.export import ExportConfig, export_dataset
from dive.reid.protocols import evaluate, get_protocol, sample_single_shot_gallery, trial_rng
from fake_layouts import make_market_tree
from realsize_trees import (LLCM_IMAGES, LLCM_SPLIT_SIZES, SYSU_GALLERY_SIZE, SYSU_SPLIT_SIZES, SYSU_TEST_IMAGES,
                            SYSU_TRAIN_IMAGES, make_llcm_realsize, make_sysu_realsize)

pytestmark = pytest.mark.slow

BOUND_S = {"write sysu": 10, "write llcm": 10, "read sysu": 15, "read llcm": 15, "export sysu": 360,
           "read export": 15, "sample galleries": 5, "evaluate sysu": 20, "evaluate llcm": 60,
           "write llcm stub": 10, "export llcm": 360, "read llcm export": 15}
TRIALS = 10
SYNTHETIC_IDS = 4


def timed(name: str, fn, *args, **kwargs):
    """Run `fn`, print its wall time and assert it is within `BOUND_S[name]`."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    took = time.perf_counter() - t0
    print(f"\n[real-size] {name}: {took:.2f} s (bound {BOUND_S[name]} s)")
    assert took < BOUND_S[name], f"{name} took {took:.1f} s, over its bound of {BOUND_S[name]} s"
    return out


@pytest.fixture(scope="module")
def sysu(tmp_path_factory):
    root = tmp_path_factory.mktemp("realsize") / "SYSU-MM01"
    return timed("write sysu", make_sysu_realsize, root, content="stub")


@pytest.fixture(scope="module")
def llcm(tmp_path_factory):
    root = tmp_path_factory.mktemp("realsize") / "LLCM"
    return timed("write llcm", make_llcm_realsize, root, content="empty")


@pytest.fixture(scope="module")
def sysu_ds(sysu):
    return timed("read sysu", lambda: load_dataset(detect_format(sysu.root), sysu.root))


@pytest.fixture(scope="module")
def llcm_ds(llcm):
    return timed("read llcm", lambda: load_dataset(detect_format(llcm.root), llcm.root))


def folder_counts(records) -> dict:
    """{(split, modality): {(pid, camera): images}} of a reader's records."""
    out: dict = {}
    for (split, mod, pid, cam), n in Counter((r.split, r.modality.value, r.pid, r.camid) for r in records).items():
        out.setdefault((split, mod), {})[(pid, cam)] = n
    return out


def test_sysu_tree_is_read_with_the_real_counts(sysu, sysu_ds):
    assert sysu_ds.name == "sysu_mm01"
    assert len(sysu_ds) == sysu.files == 45_783
    s = sysu_ds.summary()
    assert s["ids"] == 491
    assert s["per_modality"] == {"visible": 30_071, "infrared": 15_712}
    assert {k.split("/")[1] for k in s["per_camera"]} == {f"cam{c}" for c in range(1, 7)}
    assert {k for k in s["per_camera"] if k.startswith("infrared")} == {"infrared/cam3", "infrared/cam6"}
    ids = {split: {r.pid for r in sysu_ds.records if r.split == split} for split in ("train", "val", "test")}
    assert {k: len(v) for k, v in ids.items()} == SYSU_SPLIT_SIZES
    assert {k: sorted(v) for k, v in ids.items()} == sysu.ids
    assert "unlisted" not in sysu_ds.splits
    imgs = Counter((r.split in ("train", "val"), r.modality.value) for r in sysu_ds.records)
    assert {m: imgs[(True, m)] for m in SYSU_TRAIN_IMAGES} == SYSU_TRAIN_IMAGES
    assert {m: imgs[(False, m)] for m in SYSU_TEST_IMAGES} == SYSU_TEST_IMAGES
    assert folder_counts(sysu_ds.records) == sysu.folders


def test_llcm_tree_is_read_with_the_real_counts(llcm, llcm_ds):
    assert llcm_ds.name == "llcm"
    assert len(llcm_ds) == llcm.files == 46_767
    imgs = Counter((r.split, r.modality.value) for r in llcm_ds.records)
    assert dict(imgs) == LLCM_IMAGES
    ids = {split: sorted({r.pid for r in llcm_ds.records if r.split == split}) for split in LLCM_SPLIT_SIZES}
    assert {k: len(v) for k, v in ids.items()} == LLCM_SPLIT_SIZES and ids == llcm.ids
    assert not set(ids["train"]) & set(ids["test"])
    for key in LLCM_IMAGES:  # 9 cameras on each side, in both splits
        assert {r.camid for r in llcm_ds.records if (r.split, r.modality.value) == key} == set(range(1, 10))
    assert folder_counts(llcm_ds.records) == llcm.folders
    # every training image carries its list label: 0..712 in ascending id order
    assert len(llcm_ds.labels) == 30_921
    label_of = {pid: i for i, pid in enumerate(ids["train"])}
    assert all(llcm_ds.labels[r.path] == label_of[r.pid] for r in llcm_ds.records if r.split == "train")


def write_synthetic(folder: Path, ids: list[int], dataset: str = "sysu_mm01") -> int:
    """Two 2x2 infrared PNGs (cameras 3 and 6) per id of `dataset`, in `dive generate`'s manifest format."""
    rows = []
    for pid in ids:
        for cam in (3, 6):
            rel = f"images/{pid:04d}_c{cam}.png"
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (2, 2), (pid % 256, cam, 7)).save(folder / rel)
            rows.append({"path": rel, "dataset": dataset, "pid": pid, "camid": cam, "modality": "infrared",
                         "prompt": f"photo of person {pid}", "seed": pid * 10 + cam, "checkpoint_hash": "0123abcd"})
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)


def test_sysu_tree_exports_and_reads_back(sysu, sysu_ds, tmp_path):
    syn_ids = sysu.ids["train"][:SYNTHETIC_IDS]
    n_syn = write_synthetic(tmp_path / "synthetic", syn_ids)
    cfg = ExportConfig(data=sysu.root, out=tmp_path / "export", synthetic=(tmp_path / "synthetic",), llcm_idx=True)
    summary = timed("export sysu", export_dataset, cfg, progress=False)
    assert summary["complete"] and summary["written"] == sysu.files + n_syn
    counts = summary["counts"]
    assert counts["images"] == sysu.files + n_syn
    assert counts["per_modality"] == {"visible": 30_071, "infrared": 15_712 + n_syn}
    assert counts["ids_per_split"] == SYSU_SPLIT_SIZES and counts["labels"] == 395 and counts["new_ids"] == 0
    lists = summary["files"]["llcm_idx"]
    assert lists["visible"]["lines"] == SYSU_TRAIN_IMAGES["visible"]
    assert lists["infrared"]["lines"] == SYSU_TRAIN_IMAGES["infrared"] + n_syn

    back = timed("read export", load_dataset, "sysu_mm01", cfg.out)
    assert len(back) == sysu.files + n_syn
    real = folder_counts(sysu_ds.records)
    exported = folder_counts(back.records)
    # a synthetic image goes after the last real image of its (camera, id) folder
    for pid in syn_ids:
        for cam in (3, 6):
            have = real[("train", "infrared")].get((pid, cam), 0)
            assert exported[("train", "infrared")][(pid, cam)] == have + 1
            assert (cfg.out / f"cam{cam}" / f"{pid:04d}" / f"{have + 1:04d}.jpg").is_file()
    for key, folders in real.items():
        for pair, n in folders.items():
            extra = 1 if key == ("train", "infrared") and pair[0] in syn_ids and pair[1] in (3, 6) else 0
            assert exported[key][pair] == n + extra


MARKET_IDS = (2, 7, 11, 15)  # the external ids the LLCM export adds: one image in each of Market cameras 1..3


def test_llcm_tree_exports_in_its_own_layout_and_reads_back(tmp_path):
    tree = timed("write llcm stub", make_llcm_realsize, tmp_path / "LLCM", content="stub")  # the export decodes
    make_market_tree(tmp_path / "Market", train_ids=MARKET_IDS, cams=(1, 2, 3))
    n_syn = write_synthetic(tmp_path / "synthetic", list(MARKET_IDS), dataset="market1501")
    n_ext = 3 * len(MARKET_IDS)
    cfg = ExportConfig(data=tree.root, external=tmp_path / "Market", out=tmp_path / "export",
                       synthetic=(tmp_path / "synthetic",))
    summary = timed("export llcm", export_dataset, cfg, progress=False)
    assert summary["complete"] and summary["layout"] == "llcm"
    assert summary["written"] == summary["counts"]["images"] == tree.files + n_ext + n_syn
    assert summary["counts"]["ids_per_split"] == {"train": 713 + 4, "test": 351}
    new = [d["id"] for d in summary["new_ids"]]
    assert new == [1065, 1066, 1067, 1068]  # after LLCM's largest id, labelled after its largest label
    assert [d["labels"]["label"] for d in summary["new_ids"]] == [713, 714, 715, 716]
    lists = summary["lists"]
    assert lists["idx/train_vis.txt"] == {"lines": LLCM_IMAGES[("train", "visible")] + n_ext, "added": n_ext}
    assert lists["idx/train_nir.txt"] == {"lines": LLCM_IMAGES[("train", "infrared")] + n_syn, "added": n_syn}

    back = timed("read llcm export", lambda: load_dataset(detect_format(cfg.out), cfg.out))
    assert back.name == "llcm" and len(back) == tree.files + n_ext + n_syn
    exported = folder_counts(back.records)
    for key in (("test", "visible"), ("test", "infrared")):  # the test split as it was
        assert exported[key] == tree.folders[key]
    for key in (("train", "visible"), ("train", "infrared")):
        real = {k: n for k, n in exported[key].items() if k[0] not in new}
        assert real == tree.folders[key]  # every real training folder as it was
    added = Counter((r.pid, r.camid, r.modality.value) for r in back.records if r.pid in new)
    assert added == {(nid, cam, mod): n for nid in new for cam, mod, n in
                     [(1, "visible", 1), (2, "visible", 1), (3, "visible", 1), (3, "infrared", 1), (6, "infrared", 1)]}
    assert {back.labels[r.path] for r in back.records if r.pid in new} == {713, 714, 715, 716}


def gallery_arrays(records, split: str, modality: str):
    recs = [r for r in records if r.split == split and r.modality.value == modality]
    return np.array([r.pid for r in recs]), np.array([r.camid for r in recs])


def draw_galleries(gp, gc, cams, seed: int = 0) -> list[np.ndarray]:
    """Indices into the full gallery of each trial's single-shot draw, as `evaluate` draws them."""
    pool = np.arange(gp.size) if cams is None else np.flatnonzero(np.isin(gc, cams))
    return [pool[sample_single_shot_gallery(gp[pool], gc[pool], trial_rng(seed, t))] for t in range(TRIALS)]


def check_draws(draws, gp, gc, expected_pairs: set) -> None:
    assert len({tuple(d) for d in draws}) == TRIALS  # re-drawn in every trial
    for cols in draws:
        pairs = list(zip(gp[cols].tolist(), gc[cols].tolist()))
        assert len(pairs) == len(set(pairs)) == len(expected_pairs)  # one image per (id, camera)
        assert set(pairs) == expected_pairs


CASES = {"sysu-all": "sysu", "sysu-indoor": "sysu", "llcm-v2i": "llcm", "llcm-i2v": "llcm"}


def test_single_shot_galleries_have_one_image_per_id_and_camera(sysu, sysu_ds, llcm, llcm_ds):
    trees, datasets = {"sysu": sysu, "llcm": llcm}, {"sysu": sysu_ds, "llcm": llcm_ds}
    arrays, expected = {}, {}
    for name, which in CASES.items():
        proto = get_protocol(name)
        arrays[name] = gallery_arrays(datasets[which].records, "test", proto.gallery_modality)
        expected[name] = trees[which].pairs("test", proto.gallery_modality, proto.gallery_cams)
    assert {n: len(expected[n]) for n in ("sysu-all", "sysu-indoor")} == SYSU_GALLERY_SIZE
    draws = timed("sample galleries", lambda: {
        n: draw_galleries(*arrays[n], get_protocol(n).gallery_cams) for n in CASES})
    for name in CASES:
        check_draws(draws[name], *arrays[name], expected[name])
        again = draw_galleries(*arrays[name], get_protocol(name).gallery_cams)
        assert all(np.array_equal(a, b) for a, b in zip(draws[name], again))  # fixed seed, same galleries


def expected_valid(qp, qc, pairs: set, excluded) -> int:
    """Queries with at least one gallery (id, camera) pair that the protocol does not exclude."""
    cams_of: dict[int, set] = {}
    for pid, cam in pairs:
        cams_of.setdefault(pid, set()).add(cam)
    return sum(any(not excluded(c, g) for g in cams_of.get(p, ())) for p, c in zip(qp.tolist(), qc.tolist()))


def run_protocol(name: str, records, pairs: set, trials: int) -> None:
    proto = get_protocol(name)
    qp, qc = gallery_arrays(records, "test", proto.query_modality)
    gp, gc = gallery_arrays(records, "test", proto.gallery_modality)
    rng = np.random.default_rng(0)
    res = evaluate(name, query_pid=qp, query_cam=qc, gallery_pid=gp, gallery_cam=gc, trials=trials, seed=0,
                   query_feat=rng.standard_normal((qp.size, 8), dtype=np.float32),
                   gallery_feat=rng.standard_normal((gp.size, 8), dtype=np.float32))
    assert res["trials"] == trials and res["num_queries"] == qp.size
    assert [t["gallery_size"] for t in res["per_trial"]] == [len(pairs)] * trials
    if proto.exclusion == "sysu-cam3-cam2":
        excluded = lambda q, g: q == 3 and g == 2  # noqa: E731
    else:  # same id and same camera: the query's own camera
        excluded = lambda q, g: q == g  # noqa: E731
    assert res["num_valid_queries"] == expected_valid(qp, qc, pairs, excluded)
    assert 0 < res["mAP"] < 100


def test_sysu_protocols_score_the_real_query_set(sysu, sysu_ds):
    def both():
        for name in ("sysu-all", "sysu-indoor"):
            run_protocol(name, sysu_ds.records, sysu.pairs("test", "visible", get_protocol(name).gallery_cams), TRIALS)

    timed("evaluate sysu", both)


def test_llcm_protocols_score_the_real_query_sets(llcm, llcm_ds):
    def both():
        for name in ("llcm-v2i", "llcm-i2v"):
            run_protocol(name, llcm_ds.records, llcm.pairs("test", get_protocol(name).gallery_modality), 2)

    timed("evaluate llcm", both)
