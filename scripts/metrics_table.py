"""One table over several scoring ReID models: `dive metrics` reports in OUT/metrics-seed*/ (as
`research/evaluate_demo.sh` writes them with REID_SEEDS="0 1 2") -> per source, each model's FD /
AUC / identity Rank-1 / mAP and their mean. Rows are comparable only under the same model, which
is why every model's value is printed beside the mean.

    python scripts/metrics_table.py runs/evaluate-v3
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    root = Path(sys.argv[1])
    reports = sorted(root.glob("metrics-seed*/metrics.json"))
    if not reports:
        raise SystemExit(f"{root}: no metrics-seed*/metrics.json (run research/evaluate_demo.sh with REID_SEEDS)")
    runs = {p.parent.name.removeprefix("metrics-"): json.loads(p.read_text())["sources"] for p in reports}
    names = list(next(iter(runs.values())))
    cols = {"FD": lambda s: s["fd"]["value"], "AUC": lambda s: s["distances"].get("auc"),
            "Rank-1": lambda s: s["retrieval"]["rank1"], "mAP": lambda s: s["retrieval"]["mAP"],
            # the same with each copy's own source picture out of its gallery (newer reports)
            "AUC w/o source": lambda s: s.get("auc_without_source"),
            "Rank-1 w/o source": lambda s: s.get("retrieval_without_source", {}).get("rank1"),
            "mAP w/o source": lambda s: s.get("retrieval_without_source", {}).get("mAP")}
    seeds = ", ".join(runs)
    print(f"| source ({len(runs)} scoring models: {seeds}) | " + " | ".join(f"{c} (each; mean)" for c in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for name in names:
        cells = []
        for fn in cols.values():
            vals = [fn(r[name]) for r in runs.values() if name in r and fn(r[name]) is not None]
            each = " / ".join(f"{v:.3g}" for v in vals)
            cells.append(f"{each}; **{sum(vals) / len(vals):.3g}**" if vals else "n/a")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
