"""`dive filter`: keep the generated images that look like their identity (a new synthetic folder)."""

from __future__ import annotations

import argparse


def _cmd_filter(args: argparse.Namespace) -> int:
    from dive.metrics.filter import FilterConfig, filter_synthetic
    from dive.utils.config import dataclass_from_args

    cfg = dataclass_from_args(FilterConfig, args)
    r = filter_synthetic(cfg)
    c, m = r["counts"], r["scores"]
    print(f"kept {c['kept']} of {c['images']} images ({c['kept_fraction']:.1%}; {c['ids_kept']} of {c['ids']} ids); "
          f"mean margin kept {m['kept']['margin'].get('mean', float('nan')):.4f}, dropped "
          f"{m['dropped']['margin'].get('mean', float('nan')):.4f}; written to {cfg.out} "
          "(manifest.jsonl, scores.jsonl, filter.json, report.md)")
    print(f"next: dive export --data {cfg.data} --synthetic {cfg.out} --out OUT")
    return 0


def _register_filter(sub) -> None:
    from dive.cli.common import add_stage
    from dive.metrics.filter import FilterConfig

    add_stage(sub, "filter", "keep the generated images whose ReID features match their own identity's real visible "
              "images (margin over the best other identity): a new synthetic folder", FilterConfig, _cmd_filter)


COMMANDS = {"filter": _register_filter}
