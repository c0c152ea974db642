"""AGW's single-shot gallery draw (`gallery="agw"`) against AGW's rule re-derived on a fake SYSU-MM01 tree."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
from fake_layouts import make_sysu_tree, write_image

from dive.data.readers.sysu_mm01 import SYSUMM01
from dive.data.records import Modality
from dive.reid.protocols import (agw_single_shot_gallery, evaluate, evaluate_npz, sample_single_shot_gallery,
                                 trial_rng)
from dive.utils.ranking import cosine_distance, evaluate_ranking

TEST_IDS = [12, 4, 9, 7]  # deliberately unsorted in the id file
ALL_CAMS = ("cam1", "cam2", "cam4", "cam5")
INDOOR_CAMS = ("cam1", "cam2")


@pytest.fixture(scope="module")
def sysu(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("agw") / "SYSU-MM01"
    make_sysu_tree(root, {"train": [1, 2], "val": [3], "test": TEST_IDS}, images_per_cam=2,
                   skip=[(9, 2), (7, 4), (12, 1)])
    # uneven image counts per (id, camera), so a different choice index picks a different file
    for pid, cam, n in ((4, 1, 5), (9, 1, 3), (7, 5, 6), (12, 2, 4), (4, 4, 3)):
        for k in range(3, n + 1):
            write_image(root / f"cam{cam}" / f"{pid:04d}" / f"{k:04d}.jpg")
    return root


def agw_rule(root: Path, cameras: tuple[str, ...], trial: int) -> list[str]:
    """AGW's process_gallery_sysu, written out: the expected gallery files of one trial."""
    random.seed(trial)
    ids = ["%04d" % int(x) for x in (root / "exp" / "test_id.txt").read_text().splitlines()[0].split(",")]
    files = []
    for pid in sorted(ids):
        for cam in cameras:
            img_dir = os.path.join(str(root), cam, pid)
            if os.path.isdir(img_dir):
                new_files = sorted([img_dir + "/" + name for name in os.listdir(img_dir)])
                files.append(random.choice(new_files))
    return files


def gallery_arrays(root: Path, shuffle_seed: int = 3):
    """Test-split visible records (pid, cam, path), in a shuffled order: the draw must not
    depend on the order the records come in."""
    recs = [r for r in SYSUMM01(root).records if r.split == "test" and r.modality is Modality.VISIBLE]
    order = np.random.default_rng(shuffle_seed).permutation(len(recs))
    recs = [recs[i] for i in order]
    return (np.array([r.pid for r in recs]), np.array([r.camid for r in recs]),
            np.array([str(r.path) for r in recs]))


@pytest.mark.parametrize("cams,cam_ids", [(ALL_CAMS, (1, 2, 4, 5)), (INDOOR_CAMS, (1, 2))])
def test_agw_draw_matches_agw_rule_seed_for_seed(sysu, cams, cam_ids):
    gp, gc, paths = gallery_arrays(sysu)
    draws = []
    for trial in range(10):
        idx = agw_single_shot_gallery(gp, gc, trial, cam_ids, paths)
        expected = agw_rule(sysu, cams, trial)
        got = [os.path.normpath(p) for p in paths[idx]]
        assert got == [os.path.normpath(p) for p in expected]  # same files, same order
        draws.append(tuple(got))
    assert len(set(draws)) > 1  # trials draw different galleries


def test_agw_draw_does_not_touch_global_random_state(sysu):
    gp, gc, paths = gallery_arrays(sysu)
    random.seed(123)
    before = random.random()
    random.seed(123)
    agw_single_shot_gallery(gp, gc, 5, (1, 2, 4, 5), paths)
    assert random.random() == before


def test_agw_draw_without_paths_takes_given_order_as_sorted(sysu):
    gp, gc, paths = gallery_arrays(sysu)
    order = np.argsort(paths, kind="stable")  # records in file-sorted order, no paths passed
    idx = agw_single_shot_gallery(gp[order], gc[order], 2, (1, 2, 4, 5))
    assert list(paths[order][idx]) == list(paths[agw_single_shot_gallery(gp, gc, 2, (1, 2, 4, 5), paths)])


def test_evaluate_agw_scores_the_agw_gallery_each_trial(sysu):
    gp, gc, paths = gallery_arrays(sysu)
    rng = np.random.default_rng(0)
    qp = np.repeat(np.array(sorted(TEST_IDS)), 3)
    qc = np.tile([3, 6, 3], len(TEST_IDS))
    centers = rng.normal(size=(13, 8))
    qf = centers[qp] + rng.normal(scale=1.0, size=(qp.size, 8))
    gf = centers[gp] + rng.normal(scale=1.0, size=(gp.size, 8))
    res = evaluate("sysu-all", query_pid=qp, query_cam=qc, gallery_pid=gp, gallery_cam=gc, query_feat=qf,
                   gallery_feat=gf, trials=4, gallery="agw", gallery_path=paths, seed=0)
    dist = cosine_distance(qf, gf)
    for t, row in enumerate(res["per_trial"]):
        want = agw_rule(sysu, ALL_CAMS, t)
        cols = np.array([list(map(os.path.normpath, paths)).index(os.path.normpath(p)) for p in want])
        ref = evaluate_ranking(dist[:, cols], qp, qc, gp[cols], gc[cols],
                               exclude=(qc[:, None] == 3) & (gc[cols][None, :] == 2))
        assert row["gallery_size"] == len(want)
        assert row["rank1"] == pytest.approx(100 * ref["cmc"][0])
        assert row["mAP"] == pytest.approx(100 * ref["mAP"])
        assert row["mINP"] == pytest.approx(100 * ref["mINP"])
    # seed s shifts the trials: seed 2, trial 0 is AGW's trial 2
    shifted = evaluate("sysu-all", query_pid=qp, query_cam=qc, gallery_pid=gp, gallery_cam=gc, query_feat=qf,
                       gallery_feat=gf, trials=1, gallery="agw", gallery_path=paths, seed=2)
    assert shifted["per_trial"][0] == res["per_trial"][2]
    # the default draw is unchanged: numpy's per-(seed, trial) generator
    default = evaluate("sysu-all", query_pid=qp, query_cam=qc, gallery_pid=gp, gallery_cam=gc, query_feat=qf,
                       gallery_feat=gf, trials=1, seed=0)
    pool = np.flatnonzero(np.isin(gc, [1, 2, 4, 5]))
    cols = pool[sample_single_shot_gallery(gp[pool], gc[pool], trial_rng(0, 0))]
    ref = evaluate_ranking(dist[:, cols], qp, qc, gp[cols], gc[cols],
                           exclude=(qc[:, None] == 3) & (gc[cols][None, :] == 2))
    assert default["mAP"] == pytest.approx(100 * ref["mAP"])


def test_npz_gallery_paths_order_the_agw_draw(sysu, tmp_path):
    gp, gc, paths = gallery_arrays(sysu)
    qp, qc = np.array(sorted(TEST_IDS)), np.full(len(TEST_IDS), 6)
    dist = np.random.default_rng(4).random((qp.size, gp.size))
    np.savez(tmp_path / "d.npz", query_pid=qp, query_cam=qc, gallery_pid=gp, gallery_cam=gc, distance=dist,
             gallery_path=paths)
    got = evaluate_npz(tmp_path / "d.npz", "sysu-all", trials=3, gallery="agw")
    want = evaluate("sysu-all", query_pid=qp, query_cam=qc, gallery_pid=gp, gallery_cam=gc, distance=dist,
                    trials=3, gallery="agw", gallery_path=paths)
    assert got["per_trial"] == want["per_trial"]


def test_agw_draw_input_errors():
    with pytest.raises(ValueError, match="gallery_path"):
        agw_single_shot_gallery(np.array([1, 2]), np.array([1, 1]), 0, None, np.array(["a"]))
    with pytest.raises(ValueError, match="gallery must be one of"):
        evaluate("sysu-all", query_pid=[1], query_cam=[3], gallery_pid=[1], gallery_cam=[1],
                 distance=np.zeros((1, 1)), gallery="agw2")
