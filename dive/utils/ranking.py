"""Exact, vectorised re-identification ranking metrics (CMC, mAP, mINP).

Pure numpy and a leaf module (imports nothing from the rest of `dive`) so that data inspection,
the ReID protocol layer and the quality metrics, from the lowest layer up, use the same numbers.

Conventions (these decide results when details differ between public codebases):

* Ranking: for each query the gallery is ordered by ascending distance with a *stable* sort
  (``np.argsort(kind="stable")``), so equal distances keep the gallery's given order.
* Exclusion: an optional boolean mask of shape (queries, gallery), True = remove this gallery
  item from this query's ranking (e.g. SYSU cam-3 queries vs cam-2 gallery, or the
  same-identity-same-camera rule of LLCM / Market-1501). Removed items take no rank position.
* CMC (``cmc="dedup"``, the default) is computed over the *de-duplicated identity ranking*:
  walking the filtered ranking, each gallery identity is counted once, at its first valid
  position (what AGW's ``eval_sysu`` / ``eval_llcm`` do), so two images of one wrong identity
  ahead of the right one cost one rank position. A query counts as a rank-k hit when its identity
  is among the first k identities. ``cmc="raw"`` counts positions of the filtered ranking itself
  (AGW's ``eval_regdb``): a rank-k hit is a correct match among the first k gallery items.
* mAP and mINP use the filtered full ranking (every non-excluded gallery item):
  AP = mean over the correct matches of precision at their positions;
  INP = (number of correct matches) / (1-based position of the last, i.e. hardest, correct match).
* A query with no correct match left after exclusion is "invalid": it is left out of the CMC,
  mAP and mINP averages and reported through ``num_valid_queries`` vs ``num_queries``.
  With no valid query at all the metrics are NaN.
* Results are fractions in [0, 1]; the protocol layer converts to percent.

Everything is vectorised over queries and gallery items; the only Python loop is over blocks
of queries, which bounds memory on very large query sets.
"""

from __future__ import annotations

from typing import Callable, Union

import numpy as np

CMC_MODES = ("dedup", "raw")

ExclusionRule = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]
Exclusion = Union[None, np.ndarray, ExclusionRule]

# Query rows processed together; keeps the (block x gallery) temporaries around ~tens of MB.
_BLOCK_ELEMENTS = 1 << 22

__all__ = [
    "cosine_distance",
    "evaluate_ranking",
    "same_camera_same_id_mask",
    "sysu_cam3_cam2_mask",
    "no_exclusion_mask",
    "EXCLUSION_RULES",
    "CMC_MODES",
]


def cosine_distance(query_feat: np.ndarray, gallery_feat: np.ndarray) -> np.ndarray:
    """1 - cosine similarity of L2-normalised rows, shape (queries, gallery).

    float32 inputs stay float32 (the usual feature dtype); anything else is computed in float64.
    All-zero rows get distance 1 to everything instead of NaN.
    """
    q = np.asarray(query_feat)
    g = np.asarray(gallery_feat)
    if q.ndim != 2 or g.ndim != 2:
        raise ValueError(
            f"query_feat and gallery_feat must be 2-D (rows x dim); got {q.shape} and {g.shape}"
        )
    if q.shape[1] != g.shape[1]:
        raise ValueError(
            f"feature dimensions differ: query_feat has {q.shape[1]}, gallery_feat has {g.shape[1]}"
        )
    dtype = np.float32 if (q.dtype == np.float32 and g.dtype == np.float32) else np.float64
    q = q.astype(dtype, copy=False)
    g = g.astype(dtype, copy=False)
    eps = np.finfo(dtype).tiny
    qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), eps)
    gn = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), eps)
    return (1.0 - qn @ gn.T).astype(dtype, copy=False)


# --------------------------------------------------------------------------- exclusion rules


def same_camera_same_id_mask(
    query_pid: np.ndarray, query_cam: np.ndarray, gallery_pid: np.ndarray, gallery_cam: np.ndarray
) -> np.ndarray:
    """LLCM / Market-1501 rule: drop gallery items sharing both identity and camera with the query."""
    qp, qc = np.asarray(query_pid), np.asarray(query_cam)
    gp, gc = np.asarray(gallery_pid), np.asarray(gallery_cam)
    return (qp[:, None] == gp[None, :]) & (qc[:, None] == gc[None, :])


def sysu_cam3_cam2_mask(query_cam: np.ndarray, gallery_cam: np.ndarray) -> np.ndarray:
    """SYSU-MM01 rule: for a query from camera 3, drop every gallery image from camera 2.

    (Cameras 2 and 3 share a room in SYSU-MM01, so such pairs are considered too easy.)
    """
    qc, gc = np.asarray(query_cam), np.asarray(gallery_cam)
    return (qc[:, None] == 3) & (gc[None, :] == 2)


def no_exclusion_mask(
    query_pid: np.ndarray, query_cam: np.ndarray, gallery_pid: np.ndarray, gallery_cam: np.ndarray
) -> np.ndarray:
    """RegDB rule: nothing is removed."""
    return np.zeros((np.asarray(query_pid).shape[0], np.asarray(gallery_pid).shape[0]), dtype=bool)


def _sysu_rule(
    query_pid: np.ndarray, query_cam: np.ndarray, gallery_pid: np.ndarray, gallery_cam: np.ndarray
) -> np.ndarray:
    return sysu_cam3_cam2_mask(query_cam, gallery_cam)


#: Named rules with the uniform callable signature (query_pid, query_cam, gallery_pid, gallery_cam).
EXCLUSION_RULES: dict[str, ExclusionRule] = {
    "none": no_exclusion_mask,
    "same-id-same-camera": same_camera_same_id_mask,
    "sysu-cam3-cam2": _sysu_rule,
}


# --------------------------------------------------------------------------- evaluation


def _as_1d(name: str, arr: np.ndarray, length: int, what: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},) (one entry per {what}); got {a.shape}")
    return a


def _block_stats(
    dist: np.ndarray,
    q_code: np.ndarray,
    g_code: np.ndarray,
    excl: np.ndarray,
    group_cols: np.ndarray,
    group_starts: np.ndarray,
    cmc: str = "dedup",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-query (valid, rank, AP, INP) for one block of queries; `rank` is the 0-based CMC rank
    (of the de-duplicated identity ranking, or of the filtered ranking when ``cmc="raw"``).

    q_code is the query's identity as an index into the gallery's unique identities, or -1 when
    the identity does not occur in the gallery.
    """
    nq, ng = dist.shape
    keep = ~excl
    correct = (q_code[:, None] == g_code[None, :]) & keep  # original gallery order

    order = np.argsort(dist, axis=1, kind="stable")
    keep_r = np.take_along_axis(keep, order, axis=1)
    correct_r = np.take_along_axis(correct, order, axis=1)

    num_rel = correct_r.sum(axis=1)
    valid = num_rel > 0

    # Filtered 1-based positions and running hit counts along the ranking.
    fpos = np.cumsum(keep_r, axis=1, dtype=np.int64)
    hits = np.cumsum(correct_r, axis=1, dtype=np.int64)
    safe_rel = np.maximum(num_rel, 1)
    prec_sum = np.where(correct_r, hits / np.maximum(fpos, 1), 0.0).sum(axis=1)
    ap = prec_sum / safe_rel
    last_pos = np.where(correct_r, fpos, 0).max(axis=1)
    inp = num_rel / np.maximum(last_pos, 1)
    if cmc == "raw":  # filtered position of the first correct match
        first_hit = np.where(correct_r, fpos, ng + 1).min(axis=1) - 1
        return valid, first_hit, ap, inp

    # De-duplicated identity rank: rank position (unfiltered, same order) of each gallery item,
    # excluded items pushed past the end; then first position of every identity via reduceat.
    rank_pos = np.empty((nq, ng), dtype=np.int64)
    np.put_along_axis(rank_pos, order, np.broadcast_to(np.arange(ng), (nq, ng)), axis=1)
    rank_pos[excl] = ng
    # Column u of first_pos is gallery identity code u (groups are in code order).
    first_pos = np.minimum.reduceat(rank_pos[:, group_cols], group_starts, axis=1)  # (nq, U)
    own_first = first_pos[np.arange(nq), np.where(valid, q_code, 0)]
    dedup_rank = (first_pos < own_first[:, None]).sum(axis=1)  # 0-based identity position
    return valid, dedup_rank, ap, inp


def evaluate_ranking(
    distance: np.ndarray,
    query_pid: np.ndarray,
    query_cam: np.ndarray,
    gallery_pid: np.ndarray,
    gallery_cam: np.ndarray,
    *,
    exclude: Exclusion = None,
    max_rank: int = 20,
    cmc: str = "dedup",
) -> dict:
    """CMC / mAP / mINP of one distance matrix (queries x gallery), as fractions in [0, 1].

    ``exclude`` is None, a boolean (queries x gallery) mask (True = remove), or a callable
    ``rule(query_pid, query_cam, gallery_pid, gallery_cam) -> mask`` (see ``EXCLUSION_RULES``).
    Returns ``cmc`` (float64 array of length ``max_rank``), ``mAP``, ``mINP``,
    ``num_valid_queries`` and ``num_queries``. ``cmc`` is ``"dedup"`` (de-duplicated identity
    ranking) or ``"raw"`` (the filtered ranking as is). See the module docstring for the conventions.
    """
    dist = np.asarray(distance)
    if dist.ndim != 2:
        raise ValueError(f"distance must be 2-D (queries x gallery); got shape {dist.shape}")
    nq, ng = dist.shape
    qp = _as_1d("query_pid", query_pid, nq, "query row of distance")
    qc = _as_1d("query_cam", query_cam, nq, "query row of distance")
    gp = _as_1d("gallery_pid", gallery_pid, ng, "gallery column of distance")
    gc = _as_1d("gallery_cam", gallery_cam, ng, "gallery column of distance")
    if int(max_rank) < 1:
        raise ValueError(f"max_rank must be >= 1; got {max_rank}")
    max_rank = int(max_rank)
    if cmc not in CMC_MODES:
        raise ValueError(f"cmc must be one of {CMC_MODES}; got {cmc!r}")
    if np.issubdtype(dist.dtype, np.floating) and np.isnan(dist).any():
        raise ValueError("distance contains NaN values; the ranking would be undefined")

    if exclude is None:
        excl = np.zeros((nq, ng), dtype=bool)
    elif callable(exclude):
        excl = np.asarray(exclude(qp, qc, gp, gc))
    else:
        excl = np.asarray(exclude)
    if excl.shape != (nq, ng):
        raise ValueError(f"exclusion mask must have shape ({nq}, {ng}); got {excl.shape}")
    excl = excl.astype(bool, copy=False)

    empty = {
        "cmc": np.full(max_rank, np.nan),
        "mAP": float("nan"),
        "mINP": float("nan"),
        "num_valid_queries": 0,
        "num_queries": int(nq),
    }
    if nq == 0 or ng == 0:
        return empty

    # Integer identity codes: gallery identities -> 0..U-1, query identities -> code or -1.
    uniq, g_code = np.unique(gp, return_inverse=True)
    g_code = g_code.reshape(-1)
    pos = np.clip(np.searchsorted(uniq, qp), 0, len(uniq) - 1)
    q_code = np.where(uniq[pos] == qp, pos, -1)
    # Gallery columns grouped by identity (for the per-identity first position).
    group_cols = np.argsort(g_code, kind="stable")
    sorted_codes = g_code[group_cols]
    group_starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])

    block = max(1, _BLOCK_ELEMENTS // ng)
    parts = [
        _block_stats(
            dist[s : s + block], q_code[s : s + block], g_code, excl[s : s + block],
            group_cols, group_starts, cmc,
        )
        for s in range(0, nq, block)
    ]
    valid, rank, ap, inp = (np.concatenate(x) for x in zip(*parts))

    n_valid = int(valid.sum())
    if n_valid == 0:
        return empty
    ranks = rank[valid]
    hit_counts = np.bincount(np.minimum(ranks, max_rank), minlength=max_rank + 1)[:max_rank]
    curve = np.cumsum(hit_counts) / n_valid
    return {
        "cmc": curve.astype(np.float64),
        "mAP": float(ap[valid].mean()),
        "mINP": float(inp[valid].mean()),
        "num_valid_queries": n_valid,
        "num_queries": int(nq),
    }
