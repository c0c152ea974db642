"""`dive metrics`: how good are generated infrared images? Distribution, identity and retrieval metrics.

For each synthetic folder (``manifest.jsonl`` rows with path, dataset, pid, camid, modality: the
format ``dive generate`` writes and ``dive export`` reads), only its infrared images are scored:

* **Fréchet distance** (FD) between the synthetic-IR features and the real-IR features (the VI
  dataset's infrared images of ``real_ir_splits``, default its training split), each set
  summarised by its mean and covariance. With the FID Inception network this is the FID; with the
  default VI-ReID network it is the same formula on ReID features (lower = closer distributions).
  The distance is computed by an eigen-decomposition: ``tr sqrt(S1 S2) = sum sqrt(eig(S1^1/2 S2
  S1^1/2))`` of a symmetric positive semi-definite matrix, so it is real by construction (tiny
  negative eigenvalues from rounding are clipped to 0); ``method="sqrtm"`` gives the usual
  ``scipy.linalg.sqrtm`` route (eps on the diagonals when the product is singular, imaginary
  part dropped when negligible) for cross-checks. As a noise floor the report gives the FD
  between two random halves of the real-IR set. FD depends on the sample sizes and the feature
  dimension: compare numbers computed at similar sizes only.
* **Identity distances**: cosine distances (L2-normalised features) between every synthetic-IR
  image and the REAL VISIBLE images of the same identity (intra) and of the other identities of
  the folder (inter): mean, std, median, the gap (inter - intra), d' = gap / sqrt((var_intra +
  var_inter) / 2) and the AUC = P(an intra distance < an inter distance). A histogram of both
  distributions is written as ``<source>-distances.png``.
* **Identity-preservation retrieval**: the synthetic-IR images as queries against the gallery of
  all real visible images of the folder's identities (multi-shot, nothing excluded), scored by
  ``dive.utils.ranking.evaluate_ranking``: Rank-1/5/10, mAP, mINP (percent), with the chance
  Rank-1 (100 / gallery ids).
* **Without the source image**: rows made from one real image (grayscale copies, img2img, CycleGAN:
  the manifest's ``source_path``) are also scored with that image left out of their own gallery
  ranking and intra distances (``retrieval_without_source``, ``auc_without_source``): a copy
  matched to the very picture it was made from shows pixels kept, not identity. Rows without a
  source (text-to-image generation) have nothing to leave out, so both numbers are equal for them.
* **t-SNE** (``sklearn.manifold.TSNE``, fixed seed, L2-normalised features) of synthetic IR + real
  visible images of up to ``tsne_ids`` identities, coloured by identity, marker by kind; real IR
  images of the same identities (when the folder expands VI ids) are coloured too, and up to
  ``tsne_real_ir`` real IR images of other identities are drawn in grey: ``<source>-tsne.png``.

Feature extractors (``dive.metrics.features``): the FD uses the FID Inception-v3 when
``inception_weights`` is given, else the VI-ReID run's network; the identity metrics use the ReID
network whenever ``reid_run`` is given (Inception features otherwise). Each image goes through
its own modality's stream. The report names every extractor with its weights' sha256.

Identities are (dataset, pid) pairs, so a manifest's ``dataset`` must be the name the reader gives
(``synthvi_ext`` / ``synthvi_vi`` in a SynthVI world, ``market1501``, ``cuhk03_np``, ``sysu_mm01``).

Outputs in ``out``: ``metrics.json`` (written last), ``metrics.md`` and the plots, each file
written atomically. ``quality_report(cfg)`` returns the same dict as ``metrics.json``.

This module holds the config, the data loading and ``quality_report``; the pieces live beside it:
``frechet`` (FD), ``identity`` (distances, retrieval), ``plots`` and ``markdown`` (metrics.md).
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from dive.data.records import Record
from dive.metrics.frechet import frechet_distance_features, split_half_fd
from dive.metrics.identity import distance_stats, retrieval_metrics
from dive.metrics.markdown import format_metrics_md
from dive.metrics.plots import plot_distance_histograms, plot_tsne, tsne_embedding
from dive.utils.config import config_to_dict
from dive.utils.io import write_json, write_text
from dive.utils.ranking import cosine_distance

REPORT_VERSION = 1
VI_FORMATS = ("auto", "synthvi", "sysu_mm01", "llcm", "regdb")
VISIBLE_FORMATS = ("auto", "synthvi", "market1501", "cuhk03_np", "sysu_mm01", "llcm", "regdb")


@dataclass
class MetricsConfig:
    """Quality metrics of generated infrared images (`dive metrics`)."""

    real_ir: Path = field(metadata={
        "help": "real infrared reference: a SynthVI world or a VI dataset (SYSU-MM01, LLCM, RegDB layout); its "
                "infrared images of --real-ir-splits are the real-IR set"})
    synthetic: tuple[Path, ...] = field(default=(), metadata={
        "help": "synthetic-image folders (manifest.jsonl + images: `dive generate` or a baseline), each scored "
                "on its own; repeat the option or list several"})
    out: Path | None = field(default=None, metadata={
        "help": "output folder: metrics.json, metrics.md, plots (none: nothing written)"})
    real_ir_format: str = field(default="auto", metadata={"help": "layout of --real-ir", "choices": list(VI_FORMATS)})
    real_ir_splits: tuple[str, ...] = field(default=("train",), metadata={
        "help": "splits of --real-ir whose infrared images form the real-IR set"})
    visible: Path | None = field(default=None, metadata={
        "help": "real visible images of the synthetic ids: an external dataset (Market-1501, CUHK03-NP) or a "
                "SynthVI world (a SynthVI --real-ir already brings its external/ and VI visible images)"})
    visible_format: str = field(default="auto", metadata={"help": "layout of --visible", "choices": list(VISIBLE_FORMATS)})
    visible_splits: tuple[str, ...] = field(default=("train",), metadata={
        "help": "splits whose visible images form the gallery of the synthetic ids"})
    reid_run: Path | None = field(default=None, metadata={
        "help": "trained VI-ReID run folder (dive reid train): the default feature extractor"})
    feature: str = field(default="pooled", metadata={
        "help": "ReID feature: pooled (GeM, before the BN neck) or bnneck (the ReID test feature)",
        "choices": ["pooled", "bnneck"]})
    inception_weights: Path | None = field(default=None, metadata={
        "help": "FID Inception-v3 weights (.safetensors, torchvision / pytorch-fid names): the FD then is the FID"})
    max_synthetic: int = field(default=5000, metadata={
        "help": "at most this many infrared images per synthetic folder (random, seeded; 0: all)"})
    max_real_ir: int = field(default=5000, metadata={"help": "at most this many real infrared images (0: all)"})
    combine: bool = field(default=False, metadata={"help": "score all synthetic folders as one set"})
    tsne: bool = field(default=True, metadata={"help": "draw the t-SNE plot"})
    tsne_ids: int = field(default=10, metadata={"help": "identities in the t-SNE plot"})
    tsne_per_id: int = field(default=30, metadata={"help": "t-SNE: at most this many images per identity and kind"})
    tsne_real_ir: int = field(default=200, metadata={"help": "t-SNE: real infrared images of other identities (grey)"})
    bins: int = field(default=50, metadata={"help": "histogram bins"})
    seed: int = field(default=0, metadata={"help": "seed of the subsets, the split-half reference and t-SNE"})
    batch_size: int = field(default=64, metadata={"help": "feature extraction batch size"})
    threads: int = field(default=1, metadata={"help": "torch / t-SNE CPU threads (0: library default)"})
    device: str = field(default="cpu", metadata={"help": "torch device of the feature extractor"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})

    def __post_init__(self) -> None:
        self.real_ir = Path(self.real_ir)
        self.synthetic = tuple(Path(p) for p in (self.synthetic or ()))
        for name in ("out", "visible", "reid_run", "inception_weights"):
            if getattr(self, name) is not None:
                setattr(self, name, Path(getattr(self, name)))
        self.real_ir_splits, self.visible_splits = tuple(self.real_ir_splits), tuple(self.visible_splits)
        if self.real_ir_format not in VI_FORMATS:
            raise ValueError(f"real_ir_format must be one of {VI_FORMATS}; got {self.real_ir_format!r}")
        if self.visible_format not in VISIBLE_FORMATS:
            raise ValueError(f"visible_format must be one of {VISIBLE_FORMATS}; got {self.visible_format!r}")
        if self.feature not in ("pooled", "bnneck"):
            raise ValueError(f"feature must be pooled or bnneck; got {self.feature!r}")
        if min(self.max_synthetic, self.max_real_ir, self.tsne_ids, self.tsne_per_id, self.tsne_real_ir) < 0:
            raise ValueError("max_synthetic, max_real_ir and the t-SNE sizes must be >= 0")
        if self.bins < 1 or self.batch_size < 1:
            raise ValueError("bins and batch_size must be >= 1")


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------


@dataclass
class SyntheticSet:
    name: str
    roots: list[Path]
    paths: list[str]
    keys: list[tuple[str, int]]  # (dataset, pid) of each image
    cams: list[int]
    skipped_visible: int  # rows of visible synthetic images (not scored)
    subsampled_from: int
    #: file name of the real image each row was made from ("" for text-to-image rows)
    sources: list[str] = field(default_factory=list)


@dataclass
class ReferenceData:
    real_ir: list[Record]
    real_ir_total: int
    visible: dict[tuple[str, int], list[Record]]  # real visible images per identity
    info: dict


def _load_any(path: Path, fmt: str):
    from dive.data.registry import detect_format, load_dataset

    fmt = detect_format(path) if fmt == "auto" else fmt
    return fmt, load_dataset(fmt, path)


def _subsample(n: int, cap: int, seed: int) -> np.ndarray:
    if cap <= 0 or n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, cap, replace=False))


def load_reference(cfg: MetricsConfig) -> ReferenceData:
    """The real-IR set (VI dataset, `real_ir_splits`) and the real visible images per identity."""
    fmt, ds = _load_any(cfg.real_ir, cfg.real_ir_format)
    recs = list(ds.records)
    ir_all = [r for r in recs if r.is_infrared and r.split in cfg.real_ir_splits]
    if not ir_all:
        have = sorted({r.split for r in recs if r.is_infrared})
        raise ValueError(f"{cfg.real_ir}: no infrared images in splits {list(cfg.real_ir_splits)} "
                         f"({fmt}; infrared images are in splits {have}); choose --real-ir-splits")
    real_ir = [ir_all[i] for i in _subsample(len(ir_all), cfg.max_real_ir, cfg.seed)]
    sources = [{"path": str(cfg.real_ir), "format": fmt}]
    vis_recs = [r for r in recs if not r.is_infrared]
    if cfg.visible is not None and cfg.visible.resolve() != cfg.real_ir.resolve():
        vfmt, vds = _load_any(cfg.visible, cfg.visible_format)
        vis_recs += [r for r in vds.records if not r.is_infrared]
        sources.append({"path": str(cfg.visible), "format": vfmt})
    visible: dict[tuple[str, int], list[Record]] = {}
    seen = set()
    for r in sorted(vis_recs, key=lambda r: (r.dataset, r.pid, r.path)):
        if r.split in cfg.visible_splits and r.path not in seen:
            seen.add(r.path)
            visible.setdefault((r.dataset, r.pid), []).append(r)
    info = {
        "real_ir": {"path": str(cfg.real_ir), "format": fmt, "splits": list(cfg.real_ir_splits),
                    "images": len(ir_all), "ids": len({(r.dataset, r.pid) for r in ir_all}),
                    "used_images": len(real_ir), "datasets": sorted({r.dataset for r in ir_all})},
        "visible": {"sources": sources, "splits": list(cfg.visible_splits),
                    "datasets": sorted({d for d, _ in visible})},
    }
    return ReferenceData(real_ir, len(ir_all), visible, info)


def _source_name(root: Path, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", root.resolve().name) or "synthetic"
    name, k = base, 2
    while name in taken:
        name, k = f"{base}-{k}", k + 1
    taken.add(name)
    return name


def load_synthetic_sets(cfg: MetricsConfig) -> list[SyntheticSet]:
    from dive.export.sources import read_synthetic_source

    if not cfg.synthetic:
        raise ValueError("no synthetic folder given (--synthetic DIR)")
    groups: list[tuple[str, list[Path], list]] = []
    taken: set[str] = set()
    for i, root in enumerate(cfg.synthetic):
        rows = read_synthetic_source(root, i).rows
        groups.append((_source_name(root, taken), [root], rows))
    if cfg.combine and len(groups) > 1:
        groups = [("combined", [r for _, roots, _ in groups for r in roots], [x for _, _, rows in groups for x in rows])]
    out = []
    for name, roots, rows in groups:
        ir_all = [r for r in rows if r.modality == "infrared"]
        if not ir_all:
            raise ValueError(f"{', '.join(map(str, roots))}: no infrared images in the manifest (only "
                             f"{len(rows)} visible rows); `dive metrics` scores generated infrared images")
        ir = [ir_all[i] for i in _subsample(len(ir_all), cfg.max_synthetic, cfg.seed)]
        out.append(SyntheticSet(name, roots, [str(r.path) for r in ir], [(r.dataset, r.pid) for r in ir],
                                [r.camid for r in ir], len(rows) - len(ir_all), len(ir_all),
                                [Path(str(r.meta.get("source_path", ""))).name for r in ir]))
    return out


# ------------------------------------------------------------------------------------------------
# features (each image extracted once per extractor and stream)
# ------------------------------------------------------------------------------------------------


class _FeatureStore:
    def __init__(self, progress: bool):
        self.progress = progress
        self.cache: dict[tuple[int, str, bool], np.ndarray] = {}

    def get(self, ex, paths: Sequence[str], infrared: bool | Sequence[bool], desc: str) -> np.ndarray:
        flags = [bool(infrared)] * len(paths) if isinstance(infrared, (bool, np.bool_)) else [bool(f) for f in infrared]
        keys = [(id(ex), str(p), f) for p, f in zip(paths, flags)]
        todo = list(dict.fromkeys(k for k in keys if k not in self.cache))
        if todo:
            feats = ex([k[1] for k in todo], [k[2] for k in todo], progress=self.progress, desc=desc)
            for k, f in zip(todo, feats):
                self.cache[k] = f
        if not keys:
            return np.zeros((0, getattr(ex, "dim", 0)), np.float32)
        return np.stack([self.cache[k] for k in keys])


# ------------------------------------------------------------------------------------------------
# the report
# ------------------------------------------------------------------------------------------------


def _key_str(key: tuple[str, int]) -> str:
    return f"{key[0]}:{key[1]}"


def _clean(obj):
    """NaN / inf -> None so metrics.json stays strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        return _clean(obj.item())
    return obj


def _tsne_selection(syn: SyntheticSet, ids: list[tuple[str, int]], ref: ReferenceData, cfg: MetricsConfig):
    """(paths, infrared flags, label per point (-1 = other ids), kinds, id names) for the t-SNE plot."""
    rng = np.random.default_rng(cfg.seed)
    chosen = sorted(ids) if len(ids) <= cfg.tsne_ids else sorted(
        ids[i] for i in rng.choice(len(ids), cfg.tsne_ids, replace=False))
    label_of = {k: i for i, k in enumerate(chosen)}
    paths, flags, labels, kinds = [], [], [], []

    def add(items: list[str], ir: bool, label: int, kind: str, cap: int) -> None:
        for j in _subsample(len(items), cap, cfg.seed):
            paths.append(items[j])
            flags.append(ir)
            labels.append(label)
            kinds.append(kind)

    syn_by_id: dict[tuple[str, int], list[str]] = {}
    for p, k in zip(syn.paths, syn.keys):
        syn_by_id.setdefault(k, []).append(p)
    ir_by_id: dict[tuple[str, int], list[str]] = {}
    for r in ref.real_ir:
        ir_by_id.setdefault((r.dataset, r.pid), []).append(r.path)
    for k in chosen:
        add(syn_by_id.get(k, []), True, label_of[k], "synthetic IR", cfg.tsne_per_id)
        add([r.path for r in ref.visible.get(k, [])], False, label_of[k], "real visible", cfg.tsne_per_id)
        add(ir_by_id.get(k, []), True, label_of[k], "real IR", cfg.tsne_per_id)
    others = [r.path for r in ref.real_ir if (r.dataset, r.pid) not in label_of]
    add(others, True, -1, "real IR", cfg.tsne_real_ir)
    return paths, flags, labels, kinds, {i: _key_str(k) for k, i in label_of.items()}


def _score_source(syn: SyntheticSet, ref: ReferenceData, store: _FeatureStore, fid_ex, id_ex,
                  real_ir_fid: np.ndarray, cfg: MetricsConfig, out: Path | None) -> dict:
    t0 = time.perf_counter()
    ids = sorted(set(syn.keys))
    with_vis = [k for k in ids if ref.visible.get(k)]
    if not with_vis:
        known = sorted({d for d, _ in ref.visible})
        raise ValueError(
            f"{syn.name}: none of its {len(ids)} identities (e.g. {', '.join(map(_key_str, ids[:3]))}) has real "
            f"visible images in splits {list(cfg.visible_splits)} of the given data (datasets {known}); a manifest's "
            "dataset must be the reader's name, and external ids need --visible (a SynthVI --real-ir has its own)")
    res: dict = {
        "path": [str(r) for r in syn.roots] if len(syn.roots) > 1 else str(syn.roots[0]),
        "infrared_images": syn.subsampled_from, "used_images": len(syn.paths),
        "visible_rows_skipped": syn.skipped_visible, "ids": len(ids), "ids_with_visible": len(with_vis),
        "images_per_camera": {str(c): n for c, n in sorted(Counter(syn.cams).items())},
    }
    # distribution: FD to the real IR set
    syn_fid = store.get(fid_ex, syn.paths, True, f"{syn.name}: synthetic IR")
    res["fd"] = {"value": frechet_distance_features(syn_fid, real_ir_fid), "synthetic_images": len(syn_fid),
                 "real_ir_images": len(real_ir_fid), "feature_dim": int(syn_fid.shape[1]),
                 "rank_deficient": bool(min(len(syn_fid), len(real_ir_fid)) <= syn_fid.shape[1])}
    # identity: synthetic IR vs the real visible images of the folder's identities
    code = {k: i for i, k in enumerate(with_vis)}
    q_idx = [i for i, k in enumerate(syn.keys) if k in code]
    gallery = [r for k in with_vis for r in ref.visible[k]]
    q_feat = store.get(id_ex, [syn.paths[i] for i in q_idx], True, f"{syn.name}: synthetic IR")
    g_feat = store.get(id_ex, [r.path for r in gallery], False, f"{syn.name}: real visible")
    q_ids = np.array([code[syn.keys[i]] for i in q_idx])
    g_ids = np.array([code[(r.dataset, r.pid)] for r in gallery])
    dist = cosine_distance(q_feat, g_feat)
    stats = distance_stats(dist, q_ids[:, None] == g_ids[None, :], bins=cfg.bins, seed=cfg.seed)
    res["distances"] = stats
    q_cams, g_cams = np.array([syn.cams[i] for i in q_idx]), np.array([r.camid for r in gallery])
    res["retrieval"] = retrieval_metrics(q_feat, q_ids, q_cams, g_feat, g_ids, g_cams, dist=dist)
    # the same with each row's own source image left out (copies and img2img match their source's pixels)
    q_src = np.array([syn.sources[i] if syn.sources else "" for i in q_idx])
    g_names = np.array([Path(r.path).name for r in gallery])
    own = (q_src[:, None] == g_names[None, :]) & (q_ids[:, None] == g_ids[None, :]) & (q_src[:, None] != "")
    res["sources_left_out"] = int(own.sum())
    res["retrieval_without_source"] = (retrieval_metrics(q_feat, q_ids, q_cams, g_feat, g_ids, g_cams, dist=dist,
                                                         exclude=own) if own.any() else res["retrieval"])
    res["auc_without_source"] = (distance_stats(dist, q_ids[:, None] == g_ids[None, :], bins=cfg.bins, seed=cfg.seed,
                                                keep=~own)["auc"] if own.any() else stats["auc"])
    res["plots"] = {}
    if out is not None:
        p = plot_distance_histograms(stats, out / f"{syn.name}-distances.png",
                                     f"{syn.name}: synthetic IR vs real visible ({len(with_vis)} ids)")
        res["plots"]["distances"] = p.name
    if cfg.tsne and cfg.tsne_ids > 0:
        paths, flags, labels, kinds, names = _tsne_selection(syn, with_vis, ref, cfg)
        if len(paths) >= 5:
            feats = store.get(id_ex, paths, flags, f"{syn.name}: t-SNE")
            pts, perplexity = tsne_embedding(feats, cfg.seed, cfg.threads)
            res["tsne"] = {"points": len(paths), "ids": len(names), "perplexity": perplexity, "seed": cfg.seed,
                           "per_kind": dict(sorted(Counter(kinds).items()))}
            if out is not None:
                p = plot_tsne(pts, labels, kinds, out / f"{syn.name}-tsne.png", id_names=names,
                              title=f"{syn.name}: t-SNE of {id_ex.describe()['name']} features")
                res["plots"]["tsne"] = p.name
        else:
            res["tsne"] = {"skipped": f"only {len(paths)} points"}
    res["seconds"] = round(time.perf_counter() - t0, 2)
    return res


def quality_report(cfg: MetricsConfig | None = None, *, fid_extractor=None, identity_extractor=None,
                   **kwargs) -> dict:
    """Score every synthetic folder of `cfg` (or of ``MetricsConfig(**kwargs)``); see the module doc.

    `fid_extractor` / `identity_extractor`: pre-built extractors (``dive.metrics.features``) to reuse
    across calls; by default they are built from `cfg`. Writes metrics.json (last), metrics.md and
    the plots into ``cfg.out`` when it is set; returns the report dict either way.
    """
    from dive.metrics.features import InceptionFeatures, ReIDFeatures

    if cfg is None:
        cfg = MetricsConfig(**kwargs)
    elif kwargs:
        cfg = replace(cfg, **kwargs)
    t0 = time.perf_counter()
    if fid_extractor is None and identity_extractor is None and cfg.reid_run is None and cfg.inception_weights is None:
        raise ValueError("no feature extractor: give a trained VI-ReID run (--reid-run) or FID Inception weights "
                         "(--inception-weights)")
    common = dict(batch_size=cfg.batch_size, threads=cfg.threads, device=cfg.device)
    if identity_extractor is None and cfg.reid_run is not None:
        identity_extractor = ReIDFeatures(cfg.reid_run, cfg.feature, **common)
    if fid_extractor is None:
        fid_extractor = (InceptionFeatures(cfg.inception_weights, **dict(common, batch_size=min(cfg.batch_size, 32)))
                         if cfg.inception_weights is not None else identity_extractor)
    if identity_extractor is None:
        identity_extractor = fid_extractor
    synthetic = load_synthetic_sets(cfg)
    ref = load_reference(cfg)
    out = cfg.out
    if out is not None:
        if out.exists() and not out.is_dir():
            raise FileExistsError(f"{out}: exists and is not a folder")
        out.mkdir(parents=True, exist_ok=True)
    store = _FeatureStore(cfg.progress)
    real_ir_fid = store.get(fid_extractor, [r.path for r in ref.real_ir], True, "real IR")
    if len(real_ir_fid) < 2:
        raise ValueError(f"{cfg.real_ir}: {len(real_ir_fid)} real infrared image(s); the FD needs at least 2")
    report = {
        "format": "dive-quality-metrics", "version": REPORT_VERSION,
        "extractors": {"fd": fid_extractor.describe(), "identity": identity_extractor.describe()},
        "data": ref.info,
        "reference": {"fd_real_ir_split_half": split_half_fd(real_ir_fid, cfg.seed)},
        "sources": {},
        "config": config_to_dict(cfg),
    }
    for syn in synthetic:
        report["sources"][syn.name] = _score_source(syn, ref, store, fid_extractor, identity_extractor, real_ir_fid,
                                                    cfg, out)
    report["seconds"] = round(time.perf_counter() - t0, 2)
    report = _clean(report)
    if out is not None:
        write_text(out / "metrics.md", format_metrics_md(report))
        write_json(out / "metrics.json", report)
    return report
