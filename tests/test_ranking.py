"""Hand-computed checks of dive.utils.ranking (CMC on de-duplicated identities, mAP, mINP)."""

from __future__ import annotations

import numpy as np
import pytest

from dive.utils.ranking import (
    EXCLUSION_RULES,
    cosine_distance,
    evaluate_ranking,
    same_camera_same_id_mask,
    sysu_cam3_cam2_mask,
)

# Gallery (index: pid, cam):  g0: 1,c1   g1: 2,c1   g2: 1,c2   g3: 3,c1   g4: 2,c2
G_PID = np.array([1, 2, 1, 3, 2])
G_CAM = np.array([1, 1, 2, 1, 2])
Q_PID = np.array([1, 2])
Q_CAM = np.array([3, 3])
DIST = np.array(
    [
        [0.5, 0.1, 0.9, 0.2, 0.3],  # query A (pid 1)
        [0.2, 0.4, 0.1, 0.6, 0.8],  # query B (pid 2)
    ]
)
# Query A: order g1(2) g3(3) g4(2) g0(1) g2(1); correct at positions 4, 5.
#   AP = (1/4 + 2/5) / 2 = 0.325; INP = 2/5 = 0.4.
#   Identity ranking 2, 3, 1 -> correct identity at identity-rank 3 (g4, a second pid-2 image,
#   takes no identity position), although the first correct *image* is at position 4.
# Query B: order g2(1) g0(1) g1(2) g3(3) g4(2); correct at positions 3, 5.
#   AP = (1/3 + 2/5) / 2 = 11/30; INP = 2/5 = 0.4.
#   Identity ranking 1, 2, 3 -> identity-rank 2 (two pid-1 images count as one position).
# CMC over ranks 1..5 = [0, 1/2, 1, 1, 1]; mAP = (0.325 + 11/30) / 2; mINP = 0.4.


def test_hand_computed_two_queries_five_gallery():
    res = evaluate_ranking(DIST, Q_PID, Q_CAM, G_PID, G_CAM, max_rank=5)
    np.testing.assert_allclose(res["cmc"], [0.0, 0.5, 1.0, 1.0, 1.0])
    assert res["mAP"] == pytest.approx((0.325 + 11 / 30) / 2)
    assert res["mINP"] == pytest.approx(0.4)
    assert res["num_valid_queries"] == 2 and res["num_queries"] == 2
    assert res["cmc"].shape == (5,)


def test_dedup_cmc_two_wrong_images_count_as_one_position():
    # Query A alone: two pid-2 images (g1, g4) and one pid-3 image precede the first pid-1 image
    # (image position 4) but it is at identity-rank 3.
    res = evaluate_ranking(DIST[:1], Q_PID[:1], Q_CAM[:1], G_PID, G_CAM, max_rank=5)
    np.testing.assert_allclose(res["cmc"], [0, 0, 1, 1, 1])
    # Minimal case: wrong id twice, then the right one -> rank-2 hit (not rank 3).
    res = evaluate_ranking(np.array([[0.1, 0.2, 0.3]]), np.array([7]), np.array([3]),
                           np.array([5, 5, 7]), np.array([1, 2, 1]), max_rank=3)
    np.testing.assert_allclose(res["cmc"], [0, 1, 1])
    assert res["mAP"] == pytest.approx(1 / 3)  # mAP keeps the full image ranking


def test_sysu_cam3_cam2_exclusion():
    mask = sysu_cam3_cam2_mask(Q_CAM, G_CAM)
    np.testing.assert_array_equal(mask, [[0, 0, 1, 0, 1]] * 2)
    assert not sysu_cam3_cam2_mask(np.array([6]), G_CAM).any()  # only camera-3 queries
    res = evaluate_ranking(DIST, Q_PID, Q_CAM, G_PID, G_CAM, exclude=mask, max_rank=3)
    # A: g1(2) g3(3) g0(1) -> correct at 3: AP = INP = 1/3, identity-rank 3.
    # B: g0(1) g1(2) g3(3) -> correct at 2: AP = INP = 1/2, identity-rank 2.
    np.testing.assert_allclose(res["cmc"], [0, 0.5, 1])
    assert res["mAP"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert res["mINP"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    # The callable form gives the same numbers.
    res2 = evaluate_ranking(DIST, Q_PID, Q_CAM, G_PID, G_CAM,
                            exclude=EXCLUSION_RULES["sysu-cam3-cam2"], max_rank=3)
    np.testing.assert_allclose(res2["cmc"], res["cmc"])
    assert res2["mAP"] == res["mAP"]


def test_llcm_same_id_same_camera_exclusion():
    gp, gc = np.array([1, 2, 1]), np.array([1, 1, 2])
    qp, qc = np.array([1]), np.array([1])
    d = np.array([[0.1, 0.2, 0.3]])
    plain = evaluate_ranking(d, qp, qc, gp, gc, max_rank=2)
    # g0(1) g1(2) g2(1): matches at 1 and 3 -> AP = (1 + 2/3) / 2, INP = 2/3.
    assert plain["cmc"][0] == 1 and plain["mAP"] == pytest.approx(5 / 6)
    assert plain["mINP"] == pytest.approx(2 / 3)
    mask = same_camera_same_id_mask(qp, qc, gp, gc)
    np.testing.assert_array_equal(mask, [[True, False, False]])
    res = evaluate_ranking(d, qp, qc, gp, gc, exclude=mask, max_rank=2)
    # g0 removed: g1(2) g2(1) -> rank 2, AP = 1/2, INP = 1/2.
    np.testing.assert_allclose(res["cmc"], [0, 1])
    assert res["mAP"] == pytest.approx(0.5) and res["mINP"] == pytest.approx(0.5)


def test_ties_keep_gallery_order():
    d = np.array([[0.3, 0.3]])
    wrong_first = evaluate_ranking(d, np.array([1]), np.array([3]), np.array([2, 1]),
                                   np.array([1, 1]), max_rank=2)
    right_first = evaluate_ranking(d, np.array([1]), np.array([3]), np.array([1, 2]),
                                   np.array([1, 1]), max_rank=2)
    np.testing.assert_allclose(wrong_first["cmc"], [0, 1])
    assert wrong_first["mAP"] == pytest.approx(0.5)
    np.testing.assert_allclose(right_first["cmc"], [1, 1])
    assert right_first["mAP"] == pytest.approx(1.0)


def test_query_without_valid_match_is_counted_but_not_averaged():
    # Query C (pid 9) has no gallery image; query D's only match is removed by the mask.
    qp = np.array([1, 9, 3])
    qc = np.array([3, 3, 1])
    d = np.vstack([DIST[0], DIST[0], DIST[0]])
    mask = same_camera_same_id_mask(qp, qc, G_PID, G_CAM)  # removes g3 (pid 3, cam 1) for D
    res = evaluate_ranking(d, qp, qc, G_PID, G_CAM, exclude=mask, max_rank=5)
    assert res["num_queries"] == 3 and res["num_valid_queries"] == 1
    np.testing.assert_allclose(res["cmc"], [0, 0, 1, 1, 1])  # query A alone
    assert res["mAP"] == pytest.approx(0.325) and res["mINP"] == pytest.approx(0.4)
    none = evaluate_ranking(d[1:2], qp[1:2], qc[1:2], G_PID, G_CAM)
    assert none["num_valid_queries"] == 0 and np.isnan(none["mAP"])


def test_cmc_padded_beyond_gallery_and_max_rank_capped():
    res = evaluate_ranking(DIST, Q_PID, Q_CAM, G_PID, G_CAM, max_rank=20)
    assert res["cmc"].shape == (20,) and np.all(res["cmc"][2:] == 1.0)
    res = evaluate_ranking(DIST, Q_PID, Q_CAM, G_PID, G_CAM, max_rank=1)
    np.testing.assert_allclose(res["cmc"], [0.0])


def test_matches_naive_per_query_reference():
    """Random small cases with many ties vs a straightforward loop written from the definitions."""
    rng = np.random.default_rng(3)
    for _ in range(10):
        nq, ng = int(rng.integers(1, 15)), int(rng.integers(1, 25))
        qp, gp = rng.integers(0, 5, nq), rng.integers(0, 6, ng)
        qc, gc = rng.integers(1, 4, nq), rng.integers(1, 4, ng)
        d = rng.integers(0, 4, (nq, ng)).astype(np.float32)
        mask = same_camera_same_id_mask(qp, qc, gp, gc)
        got = evaluate_ranking(d, qp, qc, gp, gc, exclude=mask, max_rank=6)
        cmcs, aps, inps = [], [], []
        for i in range(nq):
            order = [j for j in np.argsort(d[i], kind="stable") if not mask[i, j]]
            hits = [gp[j] == qp[i] for j in order]
            if not any(hits):
                continue
            ids = list(dict.fromkeys(gp[j] for j in order))
            cmcs.append(np.arange(6) >= ids.index(qp[i]))
            pos = np.flatnonzero(hits) + 1
            aps.append(np.mean(np.arange(1, len(pos) + 1) / pos))
            inps.append(len(pos) / pos[-1])
        assert got["num_valid_queries"] == len(aps)
        if aps:
            np.testing.assert_allclose(got["cmc"], np.mean(cmcs, axis=0))
            assert got["mAP"] == pytest.approx(np.mean(aps))
            assert got["mINP"] == pytest.approx(np.mean(inps))


def test_cosine_distance():
    q = np.array([[1.0, 0.0], [0.0, 2.0]], dtype=np.float32)
    g = np.array([[3.0, 0.0], [1.0, 1.0], [0.0, 0.0]], dtype=np.float32)
    d = cosine_distance(q, g)
    assert d.dtype == np.float32 and d.shape == (2, 3)
    np.testing.assert_allclose(d, [[0, 1 - 2 ** -0.5, 1], [1, 1 - 2 ** -0.5, 1]], atol=1e-6)
    assert cosine_distance(q.astype(np.float64), g).dtype == np.float64


def test_shape_errors():
    with pytest.raises(ValueError, match="gallery_pid"):
        evaluate_ranking(DIST, Q_PID, Q_CAM, G_PID[:4], G_CAM)
    with pytest.raises(ValueError, match="exclusion mask"):
        evaluate_ranking(DIST, Q_PID, Q_CAM, G_PID, G_CAM, exclude=np.zeros((2, 4), bool))
    with pytest.raises(ValueError, match="NaN"):
        evaluate_ranking(np.full((2, 5), np.nan), Q_PID, Q_CAM, G_PID, G_CAM)
