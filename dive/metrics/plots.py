"""The metrics report's plots: distance histograms and the t-SNE of synthetic and real images."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from dive.utils.io import atomic_path


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
