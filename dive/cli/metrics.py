"""`dive metrics`: quality of generated infrared images."""

from __future__ import annotations

import argparse
from pathlib import Path

from dive.utils.config import add_dataclass_arguments, dataclass_from_args


def _cmd_metrics(args: argparse.Namespace) -> int:
    from dive.metrics.markdown import summary_lines
    from dive.metrics.quality import MetricsConfig, quality_report

    cfg = dataclass_from_args(MetricsConfig, args)
    report = quality_report(cfg)
    print("\n".join(summary_lines(report)))
    print(f"  written: {cfg.out / 'metrics.json'}, {cfg.out / 'metrics.md'} and "
          f"{sum(len(s.get('plots', {})) for s in report['sources'].values())} plots in {cfg.out}")
    return 0


def _register_metrics(sub) -> None:
    from dive.metrics.quality import MetricsConfig

    p = sub.add_parser("metrics", help="quality of generated infrared images: FD to real IR, identity distances, "
                                       "Rank-1 against real visible, t-SNE (metrics.json/.md + plots)")
    add_dataclass_arguments(p, MetricsConfig, skip=("synthetic", "out"))
    p.add_argument("--synthetic", type=Path, nargs="+", action="extend", required=True, metavar="DIR",
                   help=MetricsConfig.__dataclass_fields__["synthetic"].metadata["help"])
    p.add_argument("--out", type=Path, required=True, help="output folder: metrics.json, metrics.md, plots")
    p.set_defaults(func=_cmd_metrics)


COMMANDS = {"metrics": _register_metrics}
