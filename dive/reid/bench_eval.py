"""Timing of the evaluation protocol on synthetic SYSU-like data.

Why: evaluation runs after every epoch and in the studio, so its cost must stay small; this gives
a reproducible number (no dataset needed) that the CLI can print.
"""

from __future__ import annotations

import time

import numpy as np

from dive.reid.protocols import evaluate

VISIBLE_CAMS = (1, 2, 4, 5)
INFRARED_CAMS = (3, 6)


def _synthetic_sysu(
    num_queries: int, gallery_ids: int, dim: int, seed: int, images_per_cam: int = 3
) -> dict:
    """Features = identity centre + modality offset + noise, so rankings are non-trivial."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((gallery_ids, dim)).astype(np.float32)
    modality = rng.standard_normal(dim).astype(np.float32) * 0.5

    g_pid = np.repeat(np.arange(gallery_ids), len(VISIBLE_CAMS) * images_per_cam)
    g_cam = np.tile(np.repeat(np.asarray(VISIBLE_CAMS), images_per_cam), gallery_ids)
    g_feat = centres[g_pid] + 3 * rng.standard_normal((g_pid.size, dim)).astype(np.float32)

    q_pid = rng.integers(0, gallery_ids, num_queries)
    q_cam = rng.choice(np.asarray(INFRARED_CAMS), num_queries)
    q_feat = (centres[q_pid] + modality
              + 3 * rng.standard_normal((num_queries, dim)).astype(np.float32))
    return {
        "query_pid": q_pid, "query_cam": q_cam, "query_feat": q_feat,
        "gallery_pid": g_pid, "gallery_cam": g_cam, "gallery_feat": g_feat,
    }


def benchmark_eval(
    num_queries: int = 4000, gallery_ids: int = 100, trials: int = 10, dim: int = 512, seed: int = 0
) -> dict:
    """Time `evaluate("sysu-all")` (distance + all trials) on synthetic data.

    The sampled gallery has one image per (identity, visible camera): gallery_ids x 4 items.
    """
    data = _synthetic_sysu(num_queries, gallery_ids, dim, seed)
    start = time.perf_counter()
    res = evaluate("sysu-all", trials=trials, seed=seed, **data)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "queries": int(num_queries),
        "gallery_size": int(res["per_trial"][0]["gallery_size"]),
        "trials": int(res["trials"]),
        **{k: res[k] for k in ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")},
    }
