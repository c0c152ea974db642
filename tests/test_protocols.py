"""Protocol layer: gallery restriction, single-shot sampling, trials, inputs and .npz loading."""

from __future__ import annotations

import time

import numpy as np
import pytest

from dive.reid.bench_eval import benchmark_eval
from dive.reid.protocols import (
    PROTOCOLS,
    evaluate,
    evaluate_npz,
    sample_single_shot_gallery,
    trial_rng,
)
from dive.utils.ranking import cosine_distance, evaluate_ranking, sysu_cam3_cam2_mask


def _toy(seed: int = 0, per_cam: int = 3, ids: int = 6, cams=(1, 2, 4, 5), nq: int = 20):
    """Small SYSU-like set with identity structure in the features."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((ids, 8))
    gp = np.repeat(np.arange(ids), len(cams) * per_cam)
    gc = np.tile(np.repeat(np.asarray(cams), per_cam), ids)
    gf = centres[gp] + 0.8 * rng.standard_normal((gp.size, 8))
    qp = rng.integers(0, ids, nq)
    qc = rng.choice([3, 6], nq)
    qf = centres[qp] + 0.8 * rng.standard_normal((nq, 8))
    return dict(query_pid=qp, query_cam=qc, query_feat=qf,
                gallery_pid=gp, gallery_cam=gc, gallery_feat=gf)


def test_registry():
    assert set(PROTOCOLS) == {"sysu-all", "sysu-indoor", "llcm-v2i", "llcm-i2v",
                              "regdb-v2t", "regdb-t2v"}
    assert PROTOCOLS["sysu-all"].gallery_cams == (1, 2, 4, 5)
    assert PROTOCOLS["sysu-indoor"].gallery_cams == (1, 2)
    assert PROTOCOLS["llcm-v2i"].exclusion == "same-id-same-camera"
    assert PROTOCOLS["regdb-t2v"].exclusion == "none" and not PROTOCOLS["regdb-t2v"].single_shot
    with pytest.raises(ValueError, match="unknown protocol"):
        evaluate("market", **_toy())


def test_single_shot_sampling_one_per_id_cam_reproducible_and_varies():
    d = _toy()
    gp, gc = d["gallery_pid"], d["gallery_cam"]
    idx = sample_single_shot_gallery(gp, gc, trial_rng(0, 0))
    pairs = list(zip(gp[idx].tolist(), gc[idx].tolist()))
    assert len(pairs) == len(set(pairs)) == len(set(zip(gp.tolist(), gc.tolist())))  # 24
    assert np.all(np.diff(idx) > 0)
    again = sample_single_shot_gallery(gp, gc, trial_rng(0, 0))
    np.testing.assert_array_equal(idx, again)
    other = sample_single_shot_gallery(gp, gc, trial_rng(0, 1))
    assert not np.array_equal(idx, other)
    assert not np.array_equal(idx, sample_single_shot_gallery(gp, gc, trial_rng(1, 0)))


def test_single_shot_gallery_equals_plain_ranking_each_trial():
    # One image per (id, cam): sampling picks everything, every trial = evaluate_ranking x 100.
    d = _toy(per_cam=1)
    res = evaluate("sysu-all", trials=3, **d)
    ref = evaluate_ranking(cosine_distance(d["query_feat"], d["gallery_feat"]), d["query_pid"],
                           d["query_cam"], d["gallery_pid"], d["gallery_cam"],
                           exclude=sysu_cam3_cam2_mask(d["query_cam"], d["gallery_cam"]))
    assert res["trials"] == 3 and len(res["per_trial"]) == 3
    for row in res["per_trial"]:
        assert row["rank1"] == pytest.approx(100 * ref["cmc"][0])
        assert row["rank20"] == pytest.approx(100 * ref["cmc"][19])
        assert row["mAP"] == pytest.approx(100 * ref["mAP"])
        assert row["mINP"] == pytest.approx(100 * ref["mINP"])
    np.testing.assert_allclose(res["cmc"], 100 * ref["cmc"])
    assert res["num_queries"] == 20 and res["num_valid_queries"] == ref["num_valid_queries"]


def test_sysu_gallery_cameras_restricted_unless_as_given():
    d = _toy(per_cam=1)
    # Add perfect matches from camera 7 (not a SYSU gallery camera): sampled ignores them.
    d["gallery_pid"] = np.r_[d["gallery_pid"], d["query_pid"]]
    d["gallery_cam"] = np.r_[d["gallery_cam"], np.full(20, 7)]
    d["gallery_feat"] = np.vstack([d["gallery_feat"], d["query_feat"]])
    base = evaluate("sysu-all", trials=2, **_toy(per_cam=1))
    res = evaluate("sysu-all", trials=2, **d)
    assert res["rank1"] == base["rank1"] and res["mAP"] == base["mAP"]
    assert res["per_trial"][0]["gallery_size"] == 24
    given = evaluate("sysu-all", gallery="as-given", trials=5, **d)
    assert given["trials"] == 1 and given["rank1"] == 100.0
    indoor = evaluate("sysu-indoor", trials=2, **d)
    assert indoor["per_trial"][0]["gallery_size"] == 12


def test_sysu_cam3_queries_do_not_see_cam2():
    # One identity; the cam-2 image is the query's twin but is removed for a cam-3 query.
    gp, gc = np.array([0, 1, 0]), np.array([2, 1, 1])
    dist = np.array([[0.0, 0.1, 0.2], [0.0, 0.1, 0.2]])
    res = evaluate("sysu-all", query_pid=np.array([0, 0]), query_cam=np.array([3, 6]),
                   gallery_pid=gp, gallery_cam=gc, distance=dist, trials=1)
    # cam-3 query: g1(1) g2(0) -> rank 2, AP 1/2; cam-6 query: g0 first -> rank 1, AP (1 + 2/3)/2.
    assert res["rank1"] == pytest.approx(50.0)
    assert res["mAP"] == pytest.approx(100 * (0.5 + 5 / 6) / 2)


def test_llcm_same_id_same_camera_and_trials():
    d = _toy(cams=(1, 2), nq=10)
    d["query_cam"] = np.where(np.arange(10) % 2 == 0, 1, 2)
    d["distance"] = cosine_distance(d.pop("query_feat"), d.pop("gallery_feat"))
    res = evaluate("llcm-v2i", **d)
    assert res["trials"] == 10 and res["per_trial"][0]["gallery_size"] == 12
    # With one image per (id, cam) and same-id-same-cam removed, each query keeps one match,
    # so AP == INP == 1 / (position of that match) for every query.
    row = res["per_trial"][0]
    assert row["mAP"] == pytest.approx(row["mINP"])
    assert res["num_valid_queries"] == 10
    assert len({r["mAP"] for r in res["per_trial"]}) > 1  # the gallery is re-drawn per trial
    # "as-given": one trial over the whole gallery (6 ids x 2 cams x 3 images).
    whole = evaluate("llcm-v2i", gallery="as-given", **d)
    assert whole["trials"] == 1 and whole["per_trial"][0]["gallery_size"] == 36


def test_regdb_single_trial_gallery_as_given():
    d = _toy(per_cam=2)
    res = evaluate("regdb-v2t", trials=10, **d)
    assert res["trials"] == 1 and res["per_trial"][0]["gallery_size"] == d["gallery_pid"].size
    ref = evaluate_ranking(cosine_distance(d["query_feat"], d["gallery_feat"]), d["query_pid"],
                           d["query_cam"], d["gallery_pid"], d["gallery_cam"])
    assert res["mAP"] == pytest.approx(100 * ref["mAP"])


def test_features_and_distance_give_identical_results():
    d = _toy()
    by_feat = evaluate("sysu-all", trials=3, seed=5, **d)
    dist = cosine_distance(d.pop("query_feat"), d.pop("gallery_feat"))
    by_dist = evaluate("sysu-all", trials=3, seed=5, distance=dist, **d)
    for k in ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP"):
        assert by_feat[k] == by_dist[k]
    np.testing.assert_array_equal(by_feat["cmc"], by_dist["cmc"])


def test_input_errors():
    d = _toy()
    with pytest.raises(ValueError, match="exactly one"):
        evaluate("sysu-all", distance=np.zeros((20, 72)), **d)
    ids = {k: v for k, v in d.items() if not k.endswith("feat")}
    with pytest.raises(ValueError, match="exactly one"):
        evaluate("sysu-all", **ids)
    with pytest.raises(ValueError, match=r"distance must have shape \(20, 72\)"):
        evaluate("sysu-all", distance=np.zeros((20, 71)), **ids)
    with pytest.raises(ValueError, match=r"gallery_feat must have shape \(72, 8\)"):
        evaluate("sysu-all", **{**d, "gallery_feat": np.zeros((72, 7))})
    with pytest.raises(ValueError, match=r"query_cam must have shape \(20,\)"):
        evaluate("sysu-all", **{**d, "query_cam": np.zeros(19)})
    with pytest.raises(ValueError, match="gallery must be one of"):
        evaluate("sysu-all", gallery="all", **d)


def test_evaluate_npz(tmp_path):
    d = _toy()
    good = tmp_path / "feats.npz"
    np.savez(good, **d)
    assert evaluate_npz(good, "sysu-all", trials=2)["mAP"] == evaluate("sysu-all", trials=2, **d)["mAP"]
    bad = tmp_path / "no_cam.npz"
    np.savez(bad, **{k: v for k, v in d.items() if k != "gallery_cam"})
    with pytest.raises(ValueError, match=r"no_cam\.npz: missing key 'gallery_cam'"):
        evaluate_npz(bad, "sysu-all")
    half = tmp_path / "half.npz"
    np.savez(half, **{k: v for k, v in d.items() if k != "query_feat"})
    with pytest.raises(ValueError, match="missing key 'query_feat'"):
        evaluate_npz(half, "sysu-all")
    pickled = tmp_path / "obj.npz"
    np.savez(pickled, **{**d, "query_pid": np.array([object()] * 20, dtype=object)})
    with pytest.raises(ValueError, match="obj.npz"):
        evaluate_npz(pickled, "sysu-all")


def test_speed_4000_queries_400_gallery_10_trials():
    start = time.perf_counter()
    res = benchmark_eval(num_queries=4000, gallery_ids=100, trials=10, dim=512, seed=0)
    total = time.perf_counter() - start
    print(f"\nevaluate sysu-all 4000 x {res['gallery_size']} x {res['trials']}: "
          f"{res['seconds']:.2f} s (with data generation {total:.2f} s), rank1 {res['rank1']:.1f}")
    assert res["gallery_size"] == 400 and res["trials"] == 10 and res["queries"] == 4000
    assert 0 < res["rank1"] < 100
    assert res["seconds"] < 20
