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
from dive.utils.config import config_to_dict
from dive.utils.io import atomic_path, write_json, write_text
from dive.utils.ranking import cosine_distance, evaluate_ranking

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
# Fréchet distance
# ------------------------------------------------------------------------------------------------


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (dim,) and covariance (dim, dim) of (N, dim) features, float64 (unbiased, N - 1)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature rows (N, dim) for a covariance; got shape {f.shape}")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def _clip_eigenvalues(w: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with rounding noise (negative, or below n * eps * largest) set to 0."""
    tol = w.size * np.finfo(np.float64).eps * max(float(np.abs(w).max(initial=0.0)), 1e-300)
    return np.where(w > tol, w, 0.0)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2.0)
    return (v * np.sqrt(_clip_eigenvalues(w))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, *,
                     method: str = "eig", eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2), the Fréchet distance of two Gaussians.

    ``method="eig"``: tr((S1 S2)^1/2) = sum of sqrt(eigenvalues of S1^1/2 S2 S1^1/2), a symmetric PSD
    matrix (real, stable; eigenvalues below rounding level, n * eps * largest, count as 0).
    ``method="sqrtm"``: ``scipy.linalg.sqrtm`` of S1 S2, retried with ``eps`` added to both diagonals
    when the result is not finite, imaginary part dropped when it is negligible (an error otherwise).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"shapes differ: mu1 {mu1.shape}, sigma1 {s1.shape}, mu2 {mu2.shape}, sigma2 {s2.shape}")
    diff = mu1 - mu2
    if method == "eig":
        r = _psd_sqrt(s1)
        m = r @ s2 @ r
        tr_covmean = float(np.sqrt(_clip_eigenvalues(np.linalg.eigvalsh((m + m.T) / 2.0))).sum())
    elif method == "sqrtm":
        from scipy import linalg

        covmean = linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():
            offset = np.eye(d) * eps
            covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
        if np.iscomplexobj(covmean):
            if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
                raise ValueError(f"sqrtm has a large imaginary component ({np.abs(covmean.imag).max():.3g})")
            covmean = covmean.real
        tr_covmean = float(np.trace(covmean))
    else:
        raise ValueError(f"method must be 'eig' or 'sqrtm'; got {method!r}")
    fd = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    return max(fd, 0.0)


def frechet_distance_features(a: np.ndarray, b: np.ndarray, **kwargs) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets (rows = samples)."""
    return frechet_distance(*feature_stats(a), *feature_stats(b), **kwargs)


def split_half_fd(features: np.ndarray, seed: int = 0) -> dict | None:
    """FD between two random halves of one set: the distance two samples of the SAME distribution get."""
    n = len(features)
    if n < 4:
        return None
    perm = np.random.default_rng(seed).permutation(n)
    a, b = features[perm[: n // 2]], features[perm[n // 2:]]
    return {"fd": frechet_distance_features(a, b), "sizes": [len(a), len(b)]}


# ------------------------------------------------------------------------------------------------
# identity distances, retrieval
# ------------------------------------------------------------------------------------------------


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


# ------------------------------------------------------------------------------------------------
# plots
# ------------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    plt = _pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def plot_distance_histograms(stats: dict, path: str | Path, title: str = "") -> Path:
    """Density histograms of the intra- and inter-identity distances (from ``distance_stats``)."""
    plt = _pyplot()
    path = Path(path)
    hist = stats.get("histogram")
    fig, ax = plt.subplots(figsize=(5.6, 3.6), dpi=120)
    if hist is not None:
        edges = np.asarray(hist["edges"])
        width = np.diff(edges)
        for key, color, label in (("inter", "tab:red", "other identities"), ("intra", "tab:blue", "same identity")):
            counts = np.asarray(hist[key], np.float64)
            dens = counts / max(counts.sum(), 1.0) / width
            s = stats[key]
            ax.stairs(dens, edges, fill=True, alpha=0.35, color=color,
                      label=f"{label} (n {s['n']}" + (f", mean {s['mean']:.3f})" if s["n"] else ")"))
            ax.stairs(dens, edges, color=color, lw=1.0)
            if s["n"]:
                ax.axvline(s["mean"], color=color, ls="--", lw=1.0)
    ax.set_xlabel("cosine distance, synthetic IR -> real visible")
    ax.set_ylabel("density")
    extra = []
    if stats.get("gap") is not None:
        extra.append(f"gap {stats['gap']:.3f}")
    if stats.get("auc") is not None:
        extra.append(f"AUC {stats['auc']:.3f}")
    ax.set_title(title + (f"\n{', '.join(extra)}" if extra else ""), fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    return path


def tsne_embedding(features: np.ndarray, seed: int = 0, threads: int = 1) -> tuple[np.ndarray, float]:
    """2-D t-SNE of L2-normalised features (init PCA, fixed seed); returns (points, perplexity)."""
    from sklearn.manifold import TSNE

    f = np.asarray(features, np.float64)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    n = len(f)
    perplexity = float(min(30.0, max(1.0, (n - 1) / 3.0)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, method="barnes_hut")
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - sklearn depends on threadpoolctl
        return tsne.fit_transform(f), perplexity
    with threadpool_limits(threads if threads > 0 else None):
        return tsne.fit_transform(f), perplexity


_KIND_MARKERS = {"synthetic IR": "^", "real visible": "o", "real IR": "s"}


def plot_tsne(points: np.ndarray, labels: Sequence[int], kinds: Sequence[str], path: str | Path, *,
              id_names: dict[int, str] | None = None, title: str = "") -> Path:
    """Scatter of 2-D points: colour = identity (label -1: other identities, grey), marker = kind."""
    plt = _pyplot()
    from matplotlib.lines import Line2D

    path = Path(path)
    labels, kinds = np.asarray(labels), np.asarray(kinds)
    ids = sorted(int(i) for i in set(labels.tolist()) if i >= 0)
    cmap = plt.get_cmap("tab10" if len(ids) <= 10 else "tab20")
    color_of = {i: cmap(k % cmap.N) for k, i in enumerate(ids)}
    fig, ax = plt.subplots(figsize=(6.4, 5.0), dpi=120)
    for kind, marker in _KIND_MARKERS.items():
        sel = (kinds == kind) & (labels < 0)
        if sel.any():
            ax.scatter(points[sel, 0], points[sel, 1], s=10, marker=marker, c="0.75", alpha=0.6, linewidths=0)
        for i in ids:
            sel = (kinds == kind) & (labels == i)
            if sel.any():
                ax.scatter(points[sel, 0], points[sel, 1], s=22 if kind == "synthetic IR" else 16, marker=marker,
                           color=color_of[i], alpha=0.9, edgecolors="k" if kind == "synthetic IR" else "none",
                           linewidths=0.4)
    handles = [Line2D([], [], ls="", marker=m, color="k", label=k) for k, m in _KIND_MARKERS.items()
               if ((kinds == k) & (labels >= 0)).any()]
    if (labels < 0).any():
        handles.append(Line2D([], [], ls="", marker="s", color="0.75", label="real IR, other ids"))
    handles += [Line2D([], [], ls="", marker="o", color=color_of[i], label=(id_names or {}).get(i, str(i)))
                for i in ids]
    ax.legend(handles=handles, fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    return path


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


# ------------------------------------------------------------------------------------------------
# markdown
# ------------------------------------------------------------------------------------------------


def _f(v, nd: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{nd}f}"


def _describe_line(d: dict) -> str:
    where = f"run `{d['run']}`" if d.get("run") else f"weights `{d['weights']}`"
    return (f"`{d['name']}` ({where}, sha256 `{d['weights_sha256'][:16]}`, feature {d['feature']}, "
            f"{d['feature_dim']}-d; {d['streams']})")


def format_metrics_md(report: dict) -> str:
    ex = report["extractors"]
    data = report["data"]
    ir = data["real_ir"]
    lines = ["# Quality of generated infrared images", ""]
    if ex["fd"] == ex["identity"]:
        lines.append(f"Feature extractor: {_describe_line(ex['fd'])}.")
    else:
        lines += [f"- FD features: {_describe_line(ex['fd'])}", f"- identity features: {_describe_line(ex['identity'])}"]
    lines += [
        "",
        f"Real infrared set: `{ir['path']}` ({ir['format']}, splits {', '.join(ir['splits'])}): {ir['images']} images, "
        f"{ir['ids']} ids ({ir['used_images']} used). Real visible gallery: splits "
        f"{', '.join(data['visible']['splits'])} of " + ", ".join(f"`{s['path']}` ({s['format']})"
                                                              for s in data["visible"]["sources"]) + ".",
        "",
        "| source | IR images | ids | FD ↓ | intra dist ↓ | inter dist | gap ↑ | d' ↑ | AUC ↑ | Rank-1 ↑ | mAP ↑ | "
        "chance R1 | without source: AUC / Rank-1 / mAP |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in report["sources"].items():
        d, r = s["distances"], s["retrieval"]
        w = s.get("retrieval_without_source", r)
        lines.append(
            f"| {name} | {s['used_images']} | {s['ids_with_visible']}/{s['ids']} | {_f(s['fd']['value'], 2)} | "
            f"{_f(d['intra']['mean'])} ± {_f(d['intra']['std'])} | {_f(d['inter']['mean'])} ± {_f(d['inter']['std'])} | "
            f"{_f(d['gap'])} | {_f(d['d_prime'], 2)} | {_f(d['auc'])} | {_f(r['rank1'], 2)} | {_f(r['mAP'], 2)} | "
            f"{_f(r['chance_rank1'], 2)} | {_f(s.get('auc_without_source', d['auc']))} / {_f(w['rank1'], 2)} / "
            f"{_f(w['mAP'], 2)} |")
    ref = report["reference"]["fd_real_ir_split_half"]
    lines += [""]
    if ref:
        lines.append(f"Reference: FD between two random halves of the real infrared set: {ref['fd']:.2f} "
                     f"({ref['sizes'][0]} vs {ref['sizes'][1]} images).")
    lines += [
        "FD: Fréchet distance of the synthetic-IR features to the real-IR features (lower = closer); it depends on "
        "the sample sizes and the feature dimension, so compare numbers at similar sizes only. Distances: cosine "
        "distance from each synthetic IR image to the real visible images of the same identity (intra) and of "
        "the folder's other identities (inter); AUC = P(intra < inter). Rank-1 / mAP (percent): synthetic IR "
        "queries against all real visible images of the folder's identities. Without source: the same with "
        "each image's own source picture (copies, img2img) left out of its ranking and intra distances.",
        "",
    ]
    for name, s in report["sources"].items():
        for kind, fname in s.get("plots", {}).items():
            lines.append(f"![{name} {kind}]({fname})")
    lines.append("")
    return "\n".join(lines)


def summary_lines(report: dict) -> list[str]:
    out = [f"features: {report['extractors']['fd']['name']} (FD), {report['extractors']['identity']['name']} (identity)"]
    for name, s in report["sources"].items():
        d, r = s["distances"], s["retrieval"]
        out.append(f"{name}: FD {_f(s['fd']['value'], 2)} | intra {_f(d['intra']['mean'])} inter "
                   f"{_f(d['inter']['mean'])} gap {_f(d['gap'])} AUC {_f(d['auc'])} | Rank-1 {_f(r['rank1'], 2)} "
                   f"mAP {_f(r['mAP'], 2)} ({s['used_images']} IR images, {s['ids_with_visible']} ids)"
                   + (f" | without source: AUC {_f(s['auc_without_source'])} Rank-1 "
                      f"{_f(s['retrieval_without_source']['rank1'], 2)} mAP {_f(s['retrieval_without_source']['mAP'], 2)}"
                      if s.get("sources_left_out") else ""))
    ref = report["reference"]["fd_real_ir_split_half"]
    if ref:
        out.append(f"reference: FD real IR half vs half {ref['fd']:.2f}")
    return out
