"""The attention figure: the image with its person-mask outline, then one heat-map overlay per token."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from dive.generate.attention.maps import AttentionResult


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """uint8 H x W x 3: a [0, 1] heat map (fixed scale) blended over the image (for galleries)."""
    import matplotlib

    colours = matplotlib.colormaps[cmap](np.clip(heat, 0, 1))[..., :3]
    mixed = (1 - alpha) * image.astype(np.float32) / 255 + alpha * colours
    return (np.clip(mixed, 0, 1) * 255).round().astype(np.uint8)


def _wrap(label: str, width: int = 14) -> str:
    if label.startswith("[") and "] " in label:
        head, tail = label.split("] ", 1)
        label = head + "]\n" + tail
    return "\n".join(line if len(line) <= width + 4 else line[: width + 2] + "\u2026" for line in label.split("\n"))


def build_figure(result: AttentionResult, *, cols: int = 8, panel_width: float = 1.5, alpha: float = 0.5,
                 cmap: str = "jet"):
    """The matplotlib figure of `attention_figure` (for callers that embed it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize

    h, w = result.image.shape[:2]
    labels = list(result.maps)
    n = 1 + len(labels)
    cols = max(1, min(cols, n))
    rows = -(-n // cols)
    panel_h = panel_width * h / w
    fig, grid = plt.subplots(rows, cols, squeeze=False, dpi=110, layout="constrained",
                             figsize=(cols * panel_width + 0.9, rows * (panel_h + 0.6) + 0.35))
    norm = Normalize(0.0, 1.0)
    axes = []
    for i, ax in enumerate(grid.ravel()):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.axis("off")
            continue
        ax.imshow(result.image, aspect="equal", interpolation="nearest")
        if i == 0:
            if result.mask.any() and not result.mask.all():
                ax.contour(result.mask.astype(float), levels=[0.5], colors="white", linewidths=0.8, linestyles="--")
            ax.set_title(f"image\n(mask: {result.mask_method.split()[0]})", fontsize=7)
        else:
            label = labels[i - 1]
            st = result.summary[label]
            ax.imshow(result.maps[label], cmap=cmap, norm=norm, alpha=alpha, aspect="equal", interpolation="bilinear")
            ax.set_title(f"{_wrap(label)}\nperson {100 * st['inside']:.0f}%  a50 {st['area50']:.2f}", fontsize=7)
        axes.append(ax)
    bar = fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=grid, fraction=0.03, pad=0.01,
                       shrink=0.9)
    bar.ax.tick_params(labelsize=6)
    bar.set_label("attention / token max", fontsize=7)
    fig.suptitle(f"{result.prompt}  |  seed {result.seed}:{result.index}, {result.steps} steps, guidance "
                 f"{result.guidance:g}, {len(result.layers)} layers, steps {_ranges(result.steps_used)}", fontsize=7)
    return fig, axes


def _ranges(steps: Sequence[int]) -> str:
    if not steps:
        return "-"
    s = sorted(steps)
    return f"{s[0]}-{s[-1]}" if s == list(range(s[0], s[-1] + 1)) else ",".join(map(str, s))


def attention_figure(result: AttentionResult, path: str | Path, **kwargs) -> Path:
    """PNG: the image (with the person-mask outline), then one heat-map overlay per token, all on
    one [0, 1] colour scale with one colour bar; panels keep the image's aspect ratio."""
    import matplotlib.pyplot as plt

    from dive.utils.io import atomic_path

    path = Path(path)
    fig, _ = build_figure(result, **kwargs)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
