"""The studio's attention view: the identity and camera tokens first, the other words folded into
one "other words" map (or shown each), on one shared colour scale (the default: flat maps look
flat) or each map scaled to its own maximum; and the table of where each token attends."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np

from dive.generate.attention.maps import AttentionResult, attention_stats

OTHER = "other words"
#: the table's columns, explained in the UI under the table
COLUMNS = OrderedDict([
    ("token", "the prompt's identity token, camera token, or other words"),
    ("on person %", "share of the token's attention that falls on the person (the dashed outline)"),
    ("contrast", "attention per person pixel / per background pixel (1: no preference; higher: on the person)"),
    ("area50", "smallest share of the image holding half of the attention (0.5: spread evenly; small: focused)"),
    ("peak", "the map's maximum on the shared scale (1: the hottest map of this image)"),
])


def grouped_maps(res: AttentionResult, others: str = "folded") -> "OrderedDict[str, np.ndarray]":
    """label -> raw map: identity tokens, camera tokens, then the other words (summed into one map
    when `others` is "folded", else each)."""
    kind = {s.label: s.kind for s in res.spans}
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for want in ("identity", "camera"):
        for label, r in res.raw.items():
            if kind.get(label) == want:
                out[label] = r
    rest = [(label, r) for label, r in res.raw.items() if kind.get(label) not in ("identity", "camera")]
    if others == "folded" and rest:
        out[f"{OTHER} ({', '.join(label for label, _ in rest)})"] = np.sum([r for _, r in rest], axis=0)
    else:
        out.update(rest)
    return out


def scaled(maps: "OrderedDict[str, np.ndarray]", scale: str = "shared") -> "OrderedDict[str, np.ndarray]":
    """Maps in [0, 1]: divided by the largest value of all maps ("shared") or each by its own."""
    top = max((float(m.max()) for m in maps.values()), default=0.0)
    out = OrderedDict()
    for label, m in maps.items():
        peak = top if scale == "shared" else float(m.max())
        out[label] = (m / peak if peak > 0 else m).astype(np.float32)
    return out


def table_rows(res: AttentionResult, others: str = "folded") -> list[dict]:
    """One row per shown map, with the COLUMNS."""
    maps = grouped_maps(res, others)
    norm = scaled(maps, "shared")
    rows = []
    for label, m in maps.items():
        st = attention_stats(m, res.mask)
        rows.append({"token": label, "on person %": round(100 * st["inside"], 1), "contrast": round(st["contrast"], 2),
                     "area50": round(st["area50"], 3), "peak": round(float(norm[label].max()), 3)})
    return rows


def studio_figure(res: AttentionResult, path: str | Path, *, scale: str = "shared", others: str = "folded",
                  alpha: float = 0.5, cmap: str = "jet") -> Path:
    """PNG, one row: the image with the person outline, then each shown map over the image, large
    enough to read at 1400 px (at most 6 panels a row)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize

    from dive.utils.io import atomic_path

    maps = scaled(grouped_maps(res, others), scale)
    h, w = res.image.shape[:2]
    n = 1 + len(maps)
    cols = min(n, 6)
    rows = -(-n // cols)
    pw = 2.2
    fig, grid = plt.subplots(rows, cols, squeeze=False, dpi=110, layout="constrained",
                             figsize=(cols * pw + 1.0, rows * (pw * h / w + 0.7) + 0.4))
    norm = Normalize(0.0, 1.0)
    for i, ax in enumerate(grid.ravel()):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.axis("off")
            continue
        ax.imshow(res.image, interpolation="nearest")
        if i == 0:
            if res.mask.any() and not res.mask.all():
                ax.contour(res.mask.astype(float), levels=[0.5], colors="white", linewidths=1.0, linestyles="--")
            ax.set_title("image (dashed: person)", fontsize=9)
            continue
        label = list(maps)[i - 1]
        ax.imshow(maps[label], cmap=cmap, norm=norm, alpha=alpha, interpolation="bilinear")
        short = label if len(label) <= 28 else label[:26] + "…"
        ax.set_title(short.replace("] ", "]\n", 1), fontsize=9)
    bar = fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=grid, fraction=0.03, pad=0.01)
    bar.set_label("attention / largest of all maps" if scale == "shared" else "attention / this map's maximum",
                  fontsize=8)
    fig.suptitle(f"{res.prompt} · seed {res.seed} · {res.steps} steps", fontsize=9)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
