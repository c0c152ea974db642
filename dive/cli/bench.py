"""`dive bench`: the paper's tables in miniature."""

from __future__ import annotations

import argparse

from dive.cli.common import add_stage
from dive.utils.config import dataclass_from_args


def _cmd_bench(args: argparse.Namespace) -> int:
    from dive.bench.config import BenchConfig
    from dive.bench.run import run_bench

    result = run_bench(dataclass_from_args(BenchConfig, args))
    claims = [t["claim"]["holds"] for k, t in result["tables"].items() if k.startswith("main-")]
    print(f"tables: {args.out / 'tables.md'} (+ tables.json, plots); paper's claim holds: {all(claims)}")
    return 0


def _register_bench(sub) -> None:
    from dive.bench.config import BenchConfig

    add_stage(sub, "bench", "the paper's tables in miniature: generate, baselines, export, ReID, metrics",
              BenchConfig, _cmd_bench)


COMMANDS = {"bench": _register_bench}
