"""`dive bench`: the paper's tables in miniature."""

from __future__ import annotations

import argparse

from dive.cli.common import add_stage
from dive.utils.config import dataclass_from_args


def _cmd_bench(args: argparse.Namespace) -> int:
    from dive.bench.config import BenchConfig
    from dive.bench.run import plan_bench, run_bench

    cfg = dataclass_from_args(BenchConfig, args)
    if args.plan:
        plan_bench(cfg)
        return 0
    result = run_bench(cfg)
    claims = [t["claim"]["holds"] for k, t in result["tables"].items() if k.startswith("main-")]
    print(f"tables: {args.out / 'tables.md'} (+ tables.json, plots); paper's claim holds: {all(claims)}")
    return 0


def _cmd_bench_row(args: argparse.Namespace) -> int:
    from dive.bench.rows import BenchProgressConfig, BenchRowConfig, bench_progress, bench_row, progress_lines

    cfg = dataclass_from_args(BenchRowConfig, args)
    bench_row(cfg)
    print("\n".join(progress_lines(bench_progress(BenchProgressConfig(folders=(cfg.out,))))))
    return 0


def _cmd_bench_progress(args: argparse.Namespace) -> int:
    from dive.bench.rows import BenchProgressConfig, bench_progress, progress_lines

    print("\n".join(progress_lines(bench_progress(dataclass_from_args(BenchProgressConfig, args)))))
    return 0


def _register_bench(sub) -> None:
    from dive.bench.config import BenchConfig

    p = add_stage(sub, "bench", "the paper's tables in miniature: generate, baselines, export, ReID, metrics",
                  BenchConfig, _cmd_bench)
    p.add_argument("--plan", action="store_true", help="print the projection (work left and projected time per "
                   "stage) and the ReID job list, write OUT/plan.json, and stop: nothing runs")


def _register_bench_row(sub) -> None:
    from dive.bench.rows import BenchRowConfig

    add_stage(sub, "bench-row", "one Table 1 row beside a finished bench: its export and ReID recipe (or an "
              "explicit budget) on a synthetic folder, a DiVE checkpoint, the baseline or external RGB",
              BenchRowConfig, _cmd_bench_row)


def _register_bench_progress(sub) -> None:
    from dive.bench.rows import BenchProgressConfig

    add_stage(sub, "bench-progress", "the rows of the finished ReID runs of bench folders, with the claim check",
              BenchProgressConfig, _cmd_bench_progress)


def _cmd_bench_sweep(args: argparse.Namespace) -> int:
    from dive.bench.sweep import SweepConfig, run_sweep

    cfg = dataclass_from_args(SweepConfig, args)
    result = run_sweep(cfg)
    if "rows" in result:
        print((cfg.out / "sweep.md").read_text(), end="")
        print(f"table: {cfg.out / 'sweep.md'} (+ sweep.json)")
    return 0


def _register_bench_sweep(sub) -> None:
    from dive.bench.sweep import SweepConfig

    add_stage(sub, "bench-sweep", "synthetic-data knobs (batch share, loss weight, filter, images per id, guidance) "
              "one at a time at one equal ReID budget over seeds: one table, the setting chosen on the val ids",
              SweepConfig, _cmd_bench_sweep)


COMMANDS = {"bench": _register_bench, "bench-row": _register_bench_row, "bench-progress": _register_bench_progress,
            "bench-sweep": _register_bench_sweep}
