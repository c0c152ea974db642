"""The bench's ReID rows from the runs finished so far (a bench still running, or cut off by a
stop, resumes later; this reads its folder without touching it).

    python scripts/bench_progress.py runs/bench-v3

Prints, per ReID recipe and training set, all-search / indoor R1 and mAP as mean ± sample std over
the finished seeds, and the paper's claim check on what exists (the same `claim_check` the bench's
Table 1 uses)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dive.bench.run import parse_reid_run_name
from dive.bench.tables import _cell, claim_check
from dive.reid.baselines import aggregate

def main(out: Path) -> None:
    runs: dict[tuple[str, str], list[tuple[int, dict]]] = {}
    for report in sorted(out.glob("reid/*/report.json")):
        parsed = parse_reid_run_name(report.parent.name)
        if parsed:
            train_set, method, seed = parsed
            runs.setdefault((method, train_set), []).append((seed, json.loads(report.read_text())))
    for method in sorted({k[0] for k in runs}):
        print(f"\n{method.upper()} (percent; mean ± sample std over the seeds listed)")
        print("| train set | seeds | all R1 | all mAP | indoor R1 | indoor mAP |\n|---|---|---|---|---|---|")
        rows = {}
        for (meth, train_set), reps in sorted(runs.items()):
            if meth != method:
                continue
            agg = rows[train_set] = aggregate([r for _, r in reps])
            cells = " | ".join(_cell(agg, proto, key) for proto in ("sysu-all", "sysu-indoor") for key in ("rank1", "mAP"))
            print(f"| {train_set} | {','.join(str(s) for s, _ in reps)} | {cells} |")
        print("claim check on these rows:", json.dumps(claim_check(rows)))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/bench-v3"))
