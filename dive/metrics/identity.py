"""Identity distances (intra vs inter, AUC, d') and identity-preservation retrieval of generated
images against real visible ones; see `dive.metrics.quality`."""

from __future__ import annotations

import math

import numpy as np

from dive.utils.ranking import cosine_distance, evaluate_ranking


def _summary(x: np.ndarray) -> dict:
    if x.size == 0:
        return {"n": 0, "mean": None, "std": None, "median": None, "min": None, "max": None}
    return {"n": int(x.size), "mean": float(x.mean()), "std": float(x.std()), "median": float(np.median(x)),
            "min": float(x.min()), "max": float(x.max())}


def auc_lower(intra: np.ndarray, inter: np.ndarray) -> float:
    """P(intra < inter) + 0.5 P(intra == inter) (the Mann-Whitney AUC), exact."""
    s = np.sort(np.asarray(inter, np.float64))
    x = np.asarray(intra, np.float64)
    left, right = np.searchsorted(s, x, "left"), np.searchsorted(s, x, "right")
    greater = s.size - right
    return float((greater.sum() + 0.5 * (right - left).sum()) / (x.size * s.size))


def distance_stats(dist: np.ndarray, same: np.ndarray, *, bins: int = 50, max_auc_pairs: int = 4_000_000,
                   seed: int = 0, keep: np.ndarray | None = None) -> dict:
    """Intra (``same`` True) vs inter (False) statistics of a (queries, gallery) distance matrix;
    with `keep`, only the pairs where it is True count.

    Returns ``intra`` / ``inter`` summaries (n, mean, std, median, min, max), ``gap`` (inter mean -
    intra mean), ``d_prime``, ``auc`` (P(intra < inter); over at most `max_auc_pairs` inter
    distances drawn at random when there are more) and ``histogram`` (shared bin edges, counts).
    """
    dist = np.asarray(dist)
    same = np.asarray(same, dtype=bool)
    if dist.shape != same.shape:
        raise ValueError(f"distance {dist.shape} and mask {same.shape} differ in shape")
    keep = np.ones_like(same) if keep is None else np.asarray(keep, dtype=bool)
    intra = dist[same & keep].astype(np.float64)
    inter = dist[~same & keep].astype(np.float64)
    out = {"intra": _summary(intra), "inter": _summary(inter), "gap": None, "d_prime": None, "auc": None}
    if intra.size and inter.size:
        gap = inter.mean() - intra.mean()
        pooled = math.sqrt((intra.var() + inter.var()) / 2.0)
        sub = inter
        if inter.size > max_auc_pairs:
            sub = np.random.default_rng(seed).choice(inter, max_auc_pairs, replace=False)
        out.update(gap=float(gap), d_prime=float(gap / pooled) if pooled > 0 else None,
                   auc=auc_lower(intra, sub), auc_inter_sampled=int(sub.size))
    both = np.concatenate([intra, inter])
    if both.size:
        lo, hi = float(both.min()), float(both.max())
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, bins + 1)
        out["histogram"] = {"edges": edges.tolist(), "intra": np.histogram(intra, edges)[0].tolist(),
                            "inter": np.histogram(inter, edges)[0].tolist()}
    return out


def retrieval_metrics(query_feat: np.ndarray, query_ids: np.ndarray, query_cams: np.ndarray,
                      gallery_feat: np.ndarray, gallery_ids: np.ndarray, gallery_cams: np.ndarray,
                      *, dist: np.ndarray | None = None, max_rank: int = 20, exclude: np.ndarray | None = None) -> dict:
    """Rank-k / mAP / mINP (percent) of queries against a gallery, cosine distance; `exclude`
    (queries x gallery, True = left out of that query's ranking), nothing by default."""
    if dist is None:
        dist = cosine_distance(query_feat, gallery_feat)
    res = evaluate_ranking(dist, np.asarray(query_ids), np.asarray(query_cams), np.asarray(gallery_ids),
                           np.asarray(gallery_cams), exclude=exclude, max_rank=max_rank)
    cmc = res["cmc"]

    def pct(v: float) -> float | None:
        return None if v is None or not np.isfinite(v) else round(100.0 * float(v), 4)

    n_ids = len(np.unique(np.asarray(gallery_ids)))
    return {
        "rank1": pct(cmc[0]), "rank5": pct(cmc[min(4, len(cmc) - 1)]), "rank10": pct(cmc[min(9, len(cmc) - 1)]),
        "mAP": pct(res["mAP"]), "mINP": pct(res["mINP"]), "cmc": [pct(c) for c in cmc],
        "num_queries": res["num_queries"], "num_valid_queries": res["num_valid_queries"],
        "gallery_images": int(len(gallery_ids)), "gallery_ids": int(n_ids),
        "chance_rank1": round(100.0 / n_ids, 4) if n_ids else None,
    }
