"""`dive filter`: keep the generated images that look like their identity.

Every row of a synthetic folder (``manifest.jsonl``: ``dive generate`` or a baseline) is scored
with a trained VI-ReID network (``dive.metrics.features.ReIDFeatures``; each image through its own
modality's stream) against the REAL VISIBLE images of the folder's identities, read from ``--data``
(a SynthVI world, or a VI set with ``--external`` for the external identities):

* ``own``: the cosine similarity of the image to its own identity; with ``score="centroid"`` the
  cosine to the identity's centroid (mean of its L2-normalised visible features), with
  ``score="mean"`` the mean cosine to each of its visible images;
* ``best_other``: the same similarity to the closest OTHER identity of the folder;
* ``margin = own - best_other`` (``own`` alone when the folder has a single identity).

Selection, on the margin: ``keep`` (a fraction: the round(keep x images) best margins) or
``threshold`` (margin >= T). Ties are broken by the image's path in the folder, so the choice is
deterministic. Every identity keeps at least ``min_per_id`` of its images (its best ones) even
when that exceeds the fraction or the threshold. With ``keep``, these guaranteed images count
toward the fraction.

Output folder ``out``, a synthetic folder that ``dive export --synthetic`` and ``dive metrics``
read: the kept images at their own relative paths (hard links, or copies where linking fails or
with ``copy``), ``manifest.jsonl`` (the kept rows, verbatim and in the input's order),
``generate.json`` (the input's, with this filter appended to its ``filters`` list),
``scores.jsonl`` (one row per input image: similarities, margin, rank, kept), ``filter.json``
(config, ReID run, counts per identity, kept fraction, score statistics, identity metrics of all /
kept / dropped images: ``dive.metrics.identity``) and ``report.md``. Everything is written into a
temporary folder beside ``out`` and renamed onto it at the end: ``out`` is either absent, the old
one, or complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from dive.metrics.identity import distance_stats, retrieval_metrics
from dive.metrics.quality import VI_FORMATS, VISIBLE_FORMATS, MetricsConfig, load_reference
from dive.utils.config import config_to_dict
from dive.utils.io import write_json, write_text
from dive.utils.ranking import cosine_distance

FILTER_FORMAT = "dive-filter"
FILTER_VERSION = 1
SCORES = ("centroid", "mean")
DEFAULT_KEEP = 0.5


@dataclass
class FilterConfig:
    """Keep the generated images whose ReID features match their own identity (`dive filter`)."""

    synthetic: Path = field(metadata={"help": "synthetic folder to filter (manifest.jsonl + images: `dive generate` "
                                              "or a baseline)"})
    data: Path = field(metadata={"help": "the real images: a SynthVI world, or a VI dataset (SYSU-MM01, LLCM, RegDB "
                                         "layout; with --external for external identities)"})
    reid_run: Path = field(metadata={"help": "a finished VI-ReID run folder (`dive reid train` / `run`): the features"})
    out: Path = field(metadata={"help": "new synthetic folder: the kept images, manifest.jsonl, generate.json, "
                                        "scores.jsonl, filter.json, report.md"})
    keep: float | None = field(default=None, metadata={
        "help": f"fraction of the images to keep, best margins first; none: {DEFAULT_KEEP} unless --threshold is given"})
    threshold: float | None = field(default=None, metadata={
        "help": "keep the images whose margin (own identity's similarity minus the best other's) is at least this"})
    min_per_id: int = field(default=1, metadata={
        "help": "every identity keeps at least this many of its images (its best), whatever --keep / --threshold"})
    score: str = field(default="centroid", metadata={
        "help": "similarity to an identity: cosine to the centroid of its real visible features, or the mean cosine "
                "to each of them", "choices": list(SCORES)})
    feature: str = field(default="pooled", metadata={
        "help": "ReID feature: pooled (GeM, before the BN neck) or bnneck (the ReID test feature)",
        "choices": ["pooled", "bnneck"]})
    data_format: str = field(default="auto", metadata={"help": "layout of --data", "choices": list(VI_FORMATS)})
    external: Path | None = field(default=None, metadata={
        "help": "external visible dataset (Market-1501, CUHK03-NP) holding the real images of external identities "
                "when --data is a VI dataset (a SynthVI world has its own)"})
    external_format: str = field(default="auto", metadata={
        "help": "layout of --external", "choices": list(VISIBLE_FORMATS)})
    visible_splits: tuple[str, ...] = field(default=("train",), metadata={
        "help": "splits whose real visible images stand for the identities"})
    copy: bool = field(default=False, metadata={
        "help": "copy the kept images (default: hard links, copies where the file system cannot link)"})
    force: bool = field(default=False, metadata={"help": "replace an existing --out"})
    batch_size: int = field(default=64, metadata={"help": "feature extraction batch size"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads (0: library default)"})
    device: str = field(default="cpu", metadata={"help": "torch device of the ReID network"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})

    def __post_init__(self) -> None:
        for name in ("synthetic", "data", "reid_run", "out"):
            setattr(self, name, Path(getattr(self, name)))
        self.external = Path(self.external) if self.external is not None else None
        self.visible_splits = tuple(self.visible_splits)
        if self.keep is not None and self.threshold is not None:
            raise ValueError("give --keep or --threshold, not both")
        if self.keep is not None and not 0.0 < float(self.keep) <= 1.0:
            raise ValueError(f"--keep must be a fraction in (0, 1]; got {self.keep}")
        if self.min_per_id < 0 or self.batch_size < 1:
            raise ValueError("--min-per-id must be >= 0 and --batch-size >= 1")
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}; got {self.score!r}")


# ------------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------------


def check_reid_run(run: Path) -> None:
    """A finished ReID run: a folder with model.safetensors + model.json (or such a checkpoint pair)."""
    run = Path(run)
    if not run.exists():
        raise FileNotFoundError(f"{run}: ReID run not found; give a run folder of `dive reid train` / `dive reid run`")
    stem = run / "model" if run.is_dir() else run.with_suffix("")
    if stem.with_suffix(".safetensors").is_file() and stem.with_suffix(".json").is_file():
        return
    if run.is_dir() and ((run / "config.json").is_file() or (run / "last.state.safetensors").is_file()):
        raise ValueError(f"{run}: an unfinished ReID run (no model.safetensors + model.json yet); let it finish "
                         "(rerunning its command resumes it) or give a finished run")
    raise ValueError(f"{run}: not a finished ReID run (expected model.safetensors + model.json from "
                     "`dive reid train` / `dive reid run`)")


def _manifest_rows(root: Path) -> tuple[list, dict[str, dict], dict | None]:
    """The checked rows (`dive.export.sources`), each row's JSON as written, and generate.json."""
    from dive.export.sources import read_synthetic_source

    src = read_synthetic_source(root, 0)  # names a missing manifest, a bad row, a missing image
    raw = {}
    for line in (root / "manifest.jsonl").read_text().splitlines():
        if line.strip():
            d = json.loads(line)
            raw[str(PurePosixPath(str(d["path"])))] = d
    return src.rows, raw, src.settings


def _key_str(key: tuple[str, int]) -> str:
    return f"{key[0]}:{key[1]}"


def _prepare_out(cfg: FilterConfig) -> None:
    syn, out = cfg.synthetic.resolve(), cfg.out.resolve()
    if out == syn or syn in out.parents or out in syn.parents:
        raise ValueError(f"{cfg.out}: the output must be a new folder outside {cfg.synthetic} (and not around it)")
    if cfg.out.exists() and not cfg.force:
        raise FileExistsError(f"{cfg.out}: exists; choose a new --out or pass --force to replace it")
    if cfg.out.exists() and not cfg.out.is_dir():
        raise FileExistsError(f"{cfg.out}: exists and is not a folder")


# ------------------------------------------------------------------------------------------------
# scores and selection
# ------------------------------------------------------------------------------------------------


def identity_similarities(feats: np.ndarray, gallery: np.ndarray, gallery_ids: np.ndarray, n_ids: int,
                          score: str = "centroid") -> np.ndarray:
    """(images, identities) similarity of every image to every identity's real images: the cosine
    to the identity's centroid (mean of L2-normalised features) or the mean cosine to its images."""
    feats, gallery = np.asarray(feats, np.float64), np.asarray(gallery, np.float64)
    onehot = np.zeros((len(gallery), n_ids))
    onehot[np.arange(len(gallery)), np.asarray(gallery_ids)] = 1.0
    counts = onehot.sum(0)
    if (counts == 0).any():
        raise ValueError(f"identity index {int(np.flatnonzero(counts == 0)[0])} has no gallery image")
    if score == "centroid":
        unit = gallery / np.maximum(np.linalg.norm(gallery, axis=1, keepdims=True), np.finfo(np.float64).tiny)
        return 1.0 - cosine_distance(feats, (onehot.T @ unit) / counts[:, None])
    if score == "mean":
        return ((1.0 - cosine_distance(feats, gallery)) @ onehot) / counts[None, :]
    raise ValueError(f"score must be one of {SCORES}; got {score!r}")


def margins_of(sims: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(own, best other, index of the best other identity: -1 when there is none) per image."""
    sims, ids = np.asarray(sims, np.float64), np.asarray(ids)
    rows = np.arange(len(ids))
    own = sims[rows, ids]
    if sims.shape[1] < 2:
        return own, np.full(len(ids), np.nan), np.full(len(ids), -1)
    others = sims.copy()
    others[rows, ids] = -np.inf
    best = others.argmax(1)
    return own, others[rows, best], best


def rank_order(margins: np.ndarray, names) -> np.ndarray:
    """Image indices, best margin first; equal margins in the order of `names` (paths)."""
    return np.lexsort((np.asarray(names), -np.asarray(margins, np.float64)))


def select(margins: np.ndarray, ids: np.ndarray, names, *, keep: float | None = None,
           threshold: float | None = None, min_per_id: int = 1) -> np.ndarray:
    """Bool mask of the kept images (see the module doc): the best `keep` fraction, or the margins
    >= `threshold`, plus each identity's best `min_per_id` images."""
    margins, ids = np.asarray(margins, np.float64), np.asarray(ids)
    n = len(margins)
    order = rank_order(margins, names)
    kept = np.zeros(n, bool)
    if min_per_id > 0:
        taken: dict = {}
        for i in order:
            if taken.get(ids[i], 0) < min_per_id:
                taken[ids[i]] = taken.get(ids[i], 0) + 1
                kept[i] = True
    if threshold is not None:
        return kept | (margins >= threshold)
    target = int(np.floor((DEFAULT_KEEP if keep is None else keep) * n + 0.5))
    extra = target - int(kept.sum())
    if extra > 0:
        rest = order[~kept[order]]
        kept[rest[:extra]] = True
    return kept


def _summary(x: np.ndarray) -> dict:
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    if not x.size:
        return {"n": 0}
    return {"n": int(x.size), "mean": float(x.mean()), "std": float(x.std()), "median": float(np.median(x)),
            "min": float(x.min()), "max": float(x.max())}


def _identity_metrics(dist: np.ndarray, q_ids, q_cams, g_ids, g_cams, mask: np.ndarray) -> dict | None:
    """AUC / d' of the identity distances and Rank-1 / mAP against the real visible gallery, on `mask`."""
    if not mask.any():
        return None
    d = dist[mask]
    stats = distance_stats(d, q_ids[mask][:, None] == g_ids[None, :])
    ret = retrieval_metrics(None, q_ids[mask], q_cams[mask], None, g_ids, g_cams, dist=d)
    return {"images": int(mask.sum()), "auc": stats["auc"], "d_prime": stats["d_prime"], "gap": stats["gap"],
            "rank1": ret["rank1"], "mAP": ret["mAP"]}


# ------------------------------------------------------------------------------------------------
# the command
# ------------------------------------------------------------------------------------------------


def _place(src: Path, dst: Path, copy: bool) -> str:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not copy:
        try:
            os.link(src, dst)
            return "link"
        except OSError:
            pass  # another file system, or links not allowed: copy
    shutil.copy2(src, dst)
    return "copy"


def filter_synthetic(cfg: FilterConfig | None = None, *, extractor=None, **kwargs) -> dict:
    """Score, select and write ``cfg.out`` (see the module doc); returns the filter.json dict.
    `extractor`: a pre-built ``ReIDFeatures`` (else built from ``cfg.reid_run``)."""
    from dive.metrics.features import ReIDFeatures

    cfg = cfg if cfg is not None else FilterConfig(**kwargs)
    t0 = time.perf_counter()
    _prepare_out(cfg)
    rows, raw, settings = _manifest_rows(cfg.synthetic)
    ref = load_reference(MetricsConfig(real_ir=cfg.data, real_ir_format=cfg.data_format, visible=cfg.external,
                                       visible_format=cfg.external_format, visible_splits=cfg.visible_splits,
                                       max_real_ir=1, progress=False))
    keys = [(r.dataset, r.pid) for r in rows]
    ids = sorted(set(keys))
    missing = [k for k in ids if not ref.visible.get(k)]
    if missing:
        shown = ", ".join(map(_key_str, missing[:8])) + (", ..." if len(missing) > 8 else "")
        raise ValueError(f"{cfg.synthetic}: {len(missing)} identit{'y' if len(missing) == 1 else 'ies'} without real "
                         f"visible images in splits {list(cfg.visible_splits)} of {cfg.data}: {shown} (datasets "
                         f"there: {ref.info['visible']['datasets']}); a manifest's dataset must be the reader's name, "
                         "and external identities of a VI dataset need --external")
    if extractor is None:
        check_reid_run(cfg.reid_run)
        extractor = ReIDFeatures(cfg.reid_run, cfg.feature, batch_size=cfg.batch_size, threads=cfg.threads,
                                 device=cfg.device)
    code = {k: i for i, k in enumerate(ids)}
    gallery = [r for k in ids for r in ref.visible[k]]
    q_ids = np.array([code[k] for k in keys])
    g_ids = np.array([code[(r.dataset, r.pid)] for r in gallery])
    q_feat = extractor([str(r.path) for r in rows], [r.modality == "infrared" for r in rows], progress=cfg.progress,
                       desc="generated images")
    g_feat = extractor([r.path for r in gallery], [False] * len(gallery), progress=cfg.progress,
                       desc="real visible images")
    sims = identity_similarities(q_feat, g_feat, g_ids, len(ids), cfg.score)
    own, other, best = margins_of(sims, q_ids)
    margin = own - np.nan_to_num(other, nan=0.0)
    names = [r.rel for r in rows]
    kept = select(margin, q_ids, names, keep=cfg.keep, threshold=cfg.threshold, min_per_id=cfg.min_per_id)
    rank = np.empty(len(rows), int)
    rank[rank_order(margin, names)] = np.arange(1, len(rows) + 1)

    dist = cosine_distance(q_feat, g_feat)
    q_cams, g_cams = np.array([r.camid for r in rows]), np.array([r.camid for r in gallery])
    per_id = {}
    for k in ids:
        m = q_ids == code[k]
        per_id[_key_str(k)] = {"images": int(m.sum()), "kept": int((m & kept).sum()),
                               "mean_margin": float(margin[m].mean())}
    mode = ({"threshold": cfg.threshold} if cfg.threshold is not None
            else {"keep": DEFAULT_KEEP if cfg.keep is None else cfg.keep})
    note = {"format": FILTER_FORMAT, "source": str(cfg.synthetic.resolve()), "reid_run": str(cfg.reid_run),
            "score": cfg.score, "feature": cfg.feature, **mode, "min_per_id": cfg.min_per_id,
            "images": len(rows), "kept": int(kept.sum())}
    report = {
        "format": FILTER_FORMAT, "version": FILTER_VERSION, "config": config_to_dict(cfg),
        "extractor": extractor.describe(), "data": ref.info["visible"],
        "selection": {**mode, "min_per_id": cfg.min_per_id, "score": cfg.score,
                      "margin": "own - best other identity" if len(ids) > 1 else "own (a single identity)",
                      "lowest_kept_margin": float(margin[kept].min()) if kept.any() else None},
        "counts": {"images": len(rows), "kept": int(kept.sum()), "dropped": int((~kept).sum()),
                   "kept_fraction": float(kept.mean()), "ids": len(ids),
                   "ids_kept": sum(1 for v in per_id.values() if v["kept"]), "per_id": per_id},
        "scores": {name: {"own": _summary(own[m]), "best_other": _summary(other[m]), "margin": _summary(margin[m])}
                   for name, m in (("all", np.ones_like(kept)), ("kept", kept), ("dropped", ~kept))},
        "identity": {name: _identity_metrics(dist, q_ids, q_cams, g_ids, g_cams, m)
                     for name, m in (("all", np.ones_like(kept)), ("kept", kept), ("dropped", ~kept))},
    }
    score_rows = [{"path": r.rel, "dataset": r.dataset, "pid": r.pid, "modality": r.modality,
                   "own": float(own[i]), "best_other": None if best[i] < 0 else float(other[i]),
                   "best_other_id": None if best[i] < 0 else _key_str(ids[best[i]]),
                   "margin": float(margin[i]), "rank": int(rank[i]), "kept": bool(kept[i])}
                  for i, r in enumerate(rows)]
    generate = dict(settings or {})
    generate["filters"] = list(generate.get("filters") or []) + [note]
    return _write(cfg, rows, raw, kept, generate, score_rows, report, t0)


def _num(v, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def format_filter_md(report: dict) -> str:
    """report.md: what was kept, how the kept and dropped images score."""
    c, sel, cfg = report["counts"], report["selection"], report["config"]
    how = (f"margin >= {sel['threshold']}" if "threshold" in sel else f"the best {sel['keep']:.0%} by margin")
    lines = [f"# Identity filter of {cfg['synthetic']}", "",
             f"- ReID features: `{report['extractor']['name']}` ({report['extractor'].get('run')}), "
             f"similarity to an identity: {sel['score']}; margin = {sel['margin']}",
             f"- kept {how}, at least {sel['min_per_id']} per identity: **{c['kept']} of {c['images']} images "
             f"({c['kept_fraction']:.1%})**, {c['ids_kept']} of {c['ids']} identities; lowest kept margin "
             f"{_num(sel['lowest_kept_margin'])}",
             f"- images placed: {report['placed']['link']} hard links, {report['placed']['copy']} copies", "",
             "| images | n | own similarity | best other | margin | AUC | Rank-1 | mAP |",
             "|---|---|---|---|---|---|---|---|"]
    for name in ("all", "kept", "dropped"):
        s, ident = report["scores"][name], report["identity"][name] or {}
        lines.append(f"| {name} | {s['margin']['n']} | {_num(s['own'].get('mean'))} | "
                     f"{_num(s['best_other'].get('mean'))} | {_num(s['margin'].get('mean'))} | "
                     f"{_num(ident.get('auc'))} | {_num(ident.get('rank1'), 2)} | {_num(ident.get('mAP'), 2)} |")
    lines += ["", "AUC: P(distance to an own real visible image < distance to another identity's); Rank-1 / mAP "
              "(percent): each image as a query against the real visible images of the folder's identities.", "",
              "| identity | images | kept | mean margin |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['images']} | {v['kept']} | {_num(v['mean_margin'])} |" for k, v in c["per_id"].items()]
    return "\n".join(lines) + "\n"


def _write(cfg: FilterConfig, rows, raw: dict, kept: np.ndarray, generate: dict, score_rows: list,
           report: dict, t0: float) -> dict:
    """Everything into a temporary folder beside `out`, then renamed onto it; returns the report."""
    from tqdm import tqdm

    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cfg.out.name}.", suffix=".tmp", dir=cfg.out.parent))
    try:
        placed = {"link": 0, "copy": 0}
        chosen = [r for r, k in zip(rows, kept) if k]
        for r in tqdm(chosen, desc="kept images", unit="img", disable=not cfg.progress, leave=False):
            placed[_place(r.path, tmp / r.rel, cfg.copy)] += 1
        order = [str(PurePosixPath(str(d["path"]))) for d in raw.values()]  # the input's row order
        kept_rel = {r.rel for r in chosen}
        write_text(tmp / "manifest.jsonl", "".join(json.dumps(raw[p]) + "\n" for p in order if p in kept_rel))
        write_json(tmp / "generate.json", generate)
        write_text(tmp / "scores.jsonl", "".join(json.dumps(s, sort_keys=True) + "\n" for s in score_rows))
        report = dict(report, placed=placed, seconds=round(time.perf_counter() - t0, 2))
        write_text(tmp / "report.md", format_filter_md(report))
        write_json(tmp / "filter.json", report)
        old = None
        if cfg.out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{cfg.out.name}.", suffix=".old", dir=cfg.out.parent))
            os.replace(cfg.out, old / "dir")
        os.replace(tmp, cfg.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return report
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
