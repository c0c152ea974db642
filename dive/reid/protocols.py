"""Standard VI-ReID evaluation protocols (SYSU-MM01, LLCM, RegDB) on top of `dive.utils.ranking`.

Why a separate layer: the ranking metrics are protocol-agnostic; what makes numbers comparable
with published tables is *which* gallery is ranked (cameras, single-shot sampling, trials) and
which pairs are excluded. Those rules live here, in one registry.

Protocols (``PROTOCOLS``):

* ``sysu-all`` / ``sysu-indoor``: query = every given query (the infrared images of the test
  identities); gallery = the visible cameras 1, 2, 4, 5 (all-search) or 1, 2 (indoor-search),
  single-shot: one random image per (identity, camera), re-drawn for each of ``trials`` trials;
  a query from camera 3 never sees gallery camera 2. With ``gallery="as-given"`` there is one
  trial and the gallery is used exactly as passed (no camera restriction, no sampling; the
  cam-3/cam-2 exclusion still applies).
* ``llcm-v2i`` / ``llcm-i2v``: the two LLCM directions (the caller passes the matching query and
  gallery sets); gallery items with the query's identity *and* camera are removed; single-shot
  gallery (one random image per (identity, camera)) re-drawn per trial, 10 trials by default.
* ``regdb-v2t`` / ``regdb-t2v``: no exclusion, gallery as given, always one trial, and the CMC
  of the raw ranking (AGW's ``eval_regdb``: a rank-k hit is a correct image among the first k,
  not a correct identity among the first k identities). RegDB's "10 trials" are the dataset's
  10 train/test splits: the caller evaluates one split at a time and averages those results.

Gallery draws (``gallery=``): with ``"sampled"`` (the default) trial ``t`` draws its gallery with
``np.random.default_rng([seed, t])``, so a trial is reproducible on its own and independent of
how many trials are run. ``"agw"`` repeats AGW's own draw (``process_gallery_sysu``, and DEEN's
``process_gallery_llcm``) with Python's ``random``: seeded with ``seed + t`` (``random.seed(t)``
at the default seed 0), identities ascending, cameras in the protocol's order (ascending when it
names none), and for each (identity, camera) with images one ``random.choice`` over its images
sorted by path (``gallery_path``; without paths, the given order is taken as that sorted order).
Seed for seed, the gallery is then the one the published numbers were computed on.
Results are in percent: ``rank1/5/10/20``, ``mAP``, ``mINP`` (means over trials), ``cmc``
(mean curve), ``per_trial`` (one dict per trial). Distances come either from features (cosine
distance on L2-normalised features, as AGW does) or from a precomputed (queries x gallery) matrix.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Optional

import numpy as np

from dive.utils.ranking import EXCLUSION_RULES, cosine_distance, evaluate_ranking

__all__ = [
    "Protocol",
    "PROTOCOLS",
    "get_protocol",
    "sample_single_shot_gallery",
    "agw_single_shot_gallery",
    "trial_rng",
    "evaluate",
    "evaluate_npz",
]

RANK_KEYS = (1, 5, 10, 20)
METRIC_KEYS = tuple(f"rank{k}" for k in RANK_KEYS) + ("mAP", "mINP")
GALLERY_MODES = ("sampled", "as-given", "agw")


@dataclass(frozen=True)
class Protocol:
    """One evaluation protocol: which gallery is ranked and which pairs are excluded."""

    name: str
    dataset: str
    query_modality: str
    gallery_modality: str
    exclusion: str  # key of dive.utils.ranking.EXCLUSION_RULES
    gallery_cams: Optional[tuple[int, ...]] = None  # None: every gallery camera given
    single_shot: bool = False  # one random image per (identity, camera), re-drawn per trial
    fixed_trials: Optional[int] = None  # e.g. RegDB: always 1 (splits are the caller's trials)
    cmc: str = "dedup"  # "dedup": identity ranking (AGW eval_sysu); "raw": image ranking (eval_regdb)
    description: str = ""


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol("sysu-all", "sysu-mm01", "infrared", "visible", "sysu-cam3-cam2",
                 gallery_cams=(1, 2, 4, 5), single_shot=True,
                 description="SYSU-MM01 all-search, single-shot gallery from cams 1,2,4,5"),
        Protocol("sysu-indoor", "sysu-mm01", "infrared", "visible", "sysu-cam3-cam2",
                 gallery_cams=(1, 2), single_shot=True,
                 description="SYSU-MM01 indoor-search, single-shot gallery from cams 1,2"),
        Protocol("llcm-v2i", "llcm", "visible", "infrared", "same-id-same-camera",
                 single_shot=True, description="LLCM visible -> infrared"),
        Protocol("llcm-i2v", "llcm", "infrared", "visible", "same-id-same-camera",
                 single_shot=True, description="LLCM infrared -> visible"),
        Protocol("regdb-v2t", "regdb", "visible", "thermal", "none", fixed_trials=1, cmc="raw",
                 description="RegDB visible -> thermal, one split per call"),
        Protocol("regdb-t2v", "regdb", "thermal", "visible", "none", fixed_trials=1, cmc="raw",
                 description="RegDB thermal -> visible, one split per call"),
    )
}


def get_protocol(protocol: str | Protocol) -> Protocol:
    """Resolve a protocol name (or pass a Protocol through)."""
    if isinstance(protocol, Protocol):
        return protocol
    try:
        return PROTOCOLS[protocol]
    except KeyError:
        raise ValueError(
            f"unknown protocol {protocol!r}; expected one of: {', '.join(PROTOCOLS)}"
        ) from None


def trial_rng(seed: int, trial: int) -> np.random.Generator:
    """The generator of trial `trial`: derived from (seed, trial) only."""
    return np.random.default_rng([int(seed), int(trial)])


def sample_single_shot_gallery(
    gallery_pid: np.ndarray, gallery_cam: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Indices (ascending) of one uniformly random gallery image per (identity, camera) pair.

    Vectorised: every item gets a random key; after sorting by (identity, camera, key) the first
    item of each (identity, camera) group is kept.
    """
    gp = np.asarray(gallery_pid)
    gc = np.asarray(gallery_cam)
    if gp.ndim != 1 or gc.shape != gp.shape:
        raise ValueError(
            f"gallery_pid and gallery_cam must be 1-D of equal length; got {gp.shape} and {gc.shape}"
        )
    if gp.size == 0:
        return np.zeros(0, dtype=np.int64)
    key = rng.random(gp.size)
    order = np.lexsort((key, gc, gp))
    sp, sc = gp[order], gc[order]
    first = np.r_[True, (sp[1:] != sp[:-1]) | (sc[1:] != sc[:-1])]
    return np.sort(order[first]).astype(np.int64)


def agw_single_shot_gallery(
    gallery_pid: np.ndarray,
    gallery_cam: np.ndarray,
    seed: int,
    cameras: Optional[tuple[int, ...]] = None,
    gallery_path: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Indices of AGW's single-shot gallery, in AGW's order (identity, then camera).

    ``random.Random(seed)`` is what ``random.seed(seed)`` sets up; then for every identity in
    ascending order and every camera of `cameras` in the order given (default: the cameras
    present, ascending), one ``choice`` over the indices of that (identity, camera) sorted by
    `gallery_path` (given order when None). Empty pairs draw nothing, as AGW skips them.
    """
    gp = np.asarray(gallery_pid)
    gc = np.asarray(gallery_cam)
    if gp.ndim != 1 or gc.shape != gp.shape:
        raise ValueError(
            f"gallery_pid and gallery_cam must be 1-D of equal length; got {gp.shape} and {gc.shape}"
        )
    if gallery_path is not None and np.shape(gallery_path) != gp.shape:
        raise ValueError(f"gallery_path must have shape {gp.shape} (one path per gallery item); "
                         f"got {np.shape(gallery_path)}")
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (p, c) in enumerate(zip(gp.tolist(), gc.tolist())):
        groups.setdefault((p, c), []).append(i)
    if gallery_path is not None:
        paths = [str(x) for x in np.asarray(gallery_path).tolist()]
        for members in groups.values():
            members.sort(key=paths.__getitem__)
    cams = sorted({c for _, c in groups}) if cameras is None else [int(c) for c in cameras]
    rng = random.Random(int(seed))
    out = []
    for pid in sorted({p for p, _ in groups}):
        for cam in cams:
            members = groups.get((pid, cam))
            if members:
                out.append(rng.choice(members))
    return np.asarray(out, dtype=np.int64)


def _check_1d(name: str, arr: np.ndarray | None, length: int | None, what: str) -> np.ndarray:
    if arr is None:
        raise ValueError(f"{name} is required")
    a = np.asarray(arr)
    if a.ndim != 1 or (length is not None and a.shape[0] != length):
        shape = f"({length},)" if length is not None else "(n,)"
        raise ValueError(f"{name} must have shape {shape} (one entry per {what}); got {a.shape}")
    return a


def _distance_matrix(
    query_feat: np.ndarray | None,
    gallery_feat: np.ndarray | None,
    distance: np.ndarray | None,
    nq: int,
    ng: int,
) -> np.ndarray:
    has_feat = query_feat is not None or gallery_feat is not None
    if has_feat == (distance is not None):
        raise ValueError(
            "give exactly one of: features (query_feat and gallery_feat) or a precomputed "
            "distance matrix (distance, queries x gallery)"
            + ("; both were given" if has_feat else "; neither was given")
        )
    if distance is not None:
        d = np.asarray(distance)
        if d.shape != (nq, ng):
            raise ValueError(f"distance must have shape ({nq}, {ng}) (queries x gallery); got {d.shape}")
        return d
    if query_feat is None or gallery_feat is None:
        missing = "query_feat" if query_feat is None else "gallery_feat"
        raise ValueError(f"{missing} is missing: features need both query_feat and gallery_feat")
    qf, gf = np.asarray(query_feat), np.asarray(gallery_feat)
    if qf.ndim != 2 or qf.shape[0] != nq:
        raise ValueError(f"query_feat must have shape ({nq}, dim) (one row per query); got {qf.shape}")
    if gf.ndim != 2 or gf.shape[0] != ng:
        raise ValueError(f"gallery_feat must have shape ({ng}, dim) (one row per gallery item); got {gf.shape}")
    if qf.shape[1] != gf.shape[1]:
        raise ValueError(
            f"gallery_feat must have shape ({ng}, {qf.shape[1]}) (same dim as query_feat); got {gf.shape}"
        )
    return cosine_distance(qf, gf)


def evaluate(
    protocol: str | Protocol,
    *,
    query_pid: np.ndarray,
    query_cam: np.ndarray,
    gallery_pid: np.ndarray,
    gallery_cam: np.ndarray,
    query_feat: np.ndarray | None = None,
    gallery_feat: np.ndarray | None = None,
    distance: np.ndarray | None = None,
    trials: int = 10,
    gallery: str = "sampled",
    seed: int = 0,
    max_rank: int = 20,
    gallery_path: np.ndarray | None = None,
) -> dict:
    """Evaluate one protocol; metrics in percent, averaged over trials (see module docstring).

    ``gallery`` is ``"sampled"``, ``"agw"`` (AGW's draw; ``gallery_path`` orders each
    (identity, camera)'s images as AGW's sorted file list does) or ``"as-given"``.
    """
    proto = get_protocol(protocol)
    if gallery not in GALLERY_MODES:
        raise ValueError(f"gallery must be one of {GALLERY_MODES}; got {gallery!r}")
    if int(trials) < 1:
        raise ValueError(f"trials must be >= 1; got {trials}")
    if int(max_rank) < 1:
        raise ValueError(f"max_rank must be >= 1; got {max_rank}")
    qp = _check_1d("query_pid", query_pid, None, "query")
    nq = qp.shape[0]
    qc = _check_1d("query_cam", query_cam, nq, "query")
    gp = _check_1d("gallery_pid", gallery_pid, None, "gallery item")
    ng = gp.shape[0]
    gc = _check_1d("gallery_cam", gallery_cam, ng, "gallery item")
    dist = _distance_matrix(query_feat, gallery_feat, distance, nq, ng)
    if gallery_path is not None:
        _check_1d("gallery_path", gallery_path, ng, "gallery item")

    # Unsampled protocols (RegDB) and gallery="as-given": one trial on the gallery exactly as given.
    as_given = gallery == "as-given" or not proto.single_shot
    pool = np.arange(ng)
    if as_given:
        n_trials = 1
    else:
        n_trials = int(proto.fixed_trials or trials)
        if proto.gallery_cams is not None:
            pool = np.flatnonzero(np.isin(gc, np.asarray(proto.gallery_cams)))
    if pool.size == 0:
        raise ValueError(
            f"protocol {proto.name}: no gallery item from cameras {proto.gallery_cams} "
            f"(gallery cameras present: {sorted(np.unique(gc).tolist())})"
        )

    rule = EXCLUSION_RULES[proto.exclusion]
    # Metrics need rank-20 even if the caller asks for a shorter curve.
    curve_len = max(int(max_rank), max(RANK_KEYS))
    per_trial: list[dict] = []
    curves = []
    for t in range(n_trials):
        if as_given:
            cols = pool
        elif gallery == "agw":
            paths = None if gallery_path is None else np.asarray(gallery_path)[pool]
            cols = pool[agw_single_shot_gallery(gp[pool], gc[pool], int(seed) + t, proto.gallery_cams, paths)]
        else:
            cols = pool[sample_single_shot_gallery(gp[pool], gc[pool], trial_rng(seed, t))]
        res = evaluate_ranking(
            dist[:, cols], qp, qc, gp[cols], gc[cols], exclude=rule, max_rank=curve_len, cmc=proto.cmc
        )
        if res["num_valid_queries"] == 0:
            raise ValueError(
                f"protocol {proto.name}, trial {t}: no query has a correct match in the gallery "
                f"({nq} queries, {cols.size} gallery items); check that ids and cameras match"
            )
        cmc = res["cmc"] * 100.0
        row = {f"rank{k}": float(cmc[k - 1]) for k in RANK_KEYS}
        row["mAP"] = res["mAP"] * 100.0
        row["mINP"] = res["mINP"] * 100.0
        row["gallery_size"] = int(cols.size)
        row["num_valid_queries"] = res["num_valid_queries"]
        per_trial.append(row)
        curves.append(cmc)

    out: dict = {k: float(np.mean([r[k] for r in per_trial])) for k in METRIC_KEYS}
    out["cmc"] = np.mean(curves, axis=0)[: int(max_rank)]
    out["per_trial"] = per_trial
    out["protocol"] = proto.name
    out["trials"] = n_trials
    out["num_queries"] = int(nq)
    # Fewest valid queries of any trial (equal across trials in the usual single-shot setting).
    out["num_valid_queries"] = int(min(r["num_valid_queries"] for r in per_trial))
    return out


_NPZ_IDS = ("query_pid", "query_cam", "gallery_pid", "gallery_cam")


def evaluate_npz(
    path: str | os.PathLike,
    protocol: str | Protocol,
    trials: int = 10,
    gallery: str = "sampled",
    seed: int = 0,
    max_rank: int = 20,
) -> dict:
    """Evaluate an .npz of ids/cameras plus features or a distance matrix (never unpickled);
    an optional string array ``gallery_path`` orders the images of the ``"agw"`` draw."""
    path = os.fspath(path)
    try:
        npz = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except (OSError, ValueError) as e:  # not a numpy file, or one that would need unpickling
        raise ValueError(f"{path}: not a readable .npz archive ({e})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: expected an .npz archive of named arrays")
    with npz:
        keys = set(npz.files)
        for k in _NPZ_IDS:
            if k not in keys:
                raise ValueError(f"{path}: missing key {k!r} (found: {', '.join(sorted(keys)) or 'none'})")
        has_dist = "distance" in keys
        has_feat = "query_feat" in keys or "gallery_feat" in keys
        if has_dist and has_feat:
            raise ValueError(f"{path}: holds both 'distance' and features; keep exactly one")
        if not has_dist:
            for k in ("query_feat", "gallery_feat"):
                if k not in keys:
                    raise ValueError(
                        f"{path}: missing key {k!r} (need 'query_feat' and 'gallery_feat', "
                        f"or 'distance')"
                    )
        try:
            arrays = {k: npz[k] for k in keys
                      if k in _NPZ_IDS + ("distance", "query_feat", "gallery_feat", "gallery_path")}
        except ValueError as e:  # object arrays would need pickle
            raise ValueError(f"{path}: cannot read arrays without pickle ({e})") from None
    return evaluate(protocol, trials=trials, gallery=gallery, seed=seed, max_rank=max_rank, **arrays)
