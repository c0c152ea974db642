"""The bench's ReID rows from the runs finished so far (a bench still running, or cut off by a
stop, resumes later; this reads its folder without touching it).

    python scripts/bench_progress.py runs/bench-v3

Prints, per ReID recipe and training set, all-search / indoor R1 and mAP as mean ± sample std over
the finished seeds, and the paper's claim check on what exists (the same `claim_check` the bench's
Table 1 uses).

    python scripts/bench_progress.py runs/bench-v4 runs/control-s17 --as-dive oracle-vae

More folders add their runs (rows made beside a bench by scripts/bench_row.sh; a seed already read
is kept from the first folder); `--as-dive NAME` also checks the claim with NAME's row in DiVE's
place: would it hold with those images?"""

from __future__ import annotations

import json
from pathlib import Path

from dive.bench.run import parse_reid_run_name
from dive.bench.tables import _cell, claim_check
from dive.reid.baselines import aggregate

def main(folders: list[Path], as_dive: list[str]) -> None:
    runs: dict[tuple[str, str], dict[int, dict]] = {}
    for out in folders:
        for report in sorted(out.glob("reid/*/report.json")):
            parsed = parse_reid_run_name(report.parent.name)
            if parsed:
                train_set, method, seed = parsed
                runs.setdefault((method, train_set), {}).setdefault(seed, json.loads(report.read_text()))
    for method in sorted({k[0] for k in runs}):
        print(f"\n{method.upper()} (percent; mean ± sample std over the seeds listed)")
        print("| train set | seeds | all R1 | all mAP | indoor R1 | indoor mAP |\n|---|---|---|---|---|---|")
        rows = {}
        for (meth, train_set), reps in sorted(runs.items()):
            if meth != method:
                continue
            agg = rows[train_set] = aggregate([reps[s] for s in sorted(reps)])
            cells = " | ".join(_cell(agg, proto, key) for proto in ("sysu-all", "sysu-indoor") for key in ("rank1", "mAP"))
            print(f"| {train_set} | {','.join(str(s) for s in sorted(reps))} | {cells} |")
        print("claim check on these rows:", json.dumps(claim_check(rows)))
        for name in as_dive:
            if name in rows:
                print(f"claim check with {name} in DiVE's place:", json.dumps(claim_check(rows | {"dive-camera": rows[name]})))


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="*", type=Path, default=[Path("runs/bench-v3")])
    ap.add_argument("--as-dive", nargs="*", default=[], metavar="NAME")
    args = ap.parse_args()
    main(args.folders, args.as_dive)
