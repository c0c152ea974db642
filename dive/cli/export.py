"""`dive export`: the expanded set as a new tree (SYSU-MM01 layout; LLCM and RegDB in their own)."""

from __future__ import annotations

import argparse
from pathlib import Path

from dive.utils.config import add_dataclass_arguments, dataclass_from_args


def _cmd_export(args: argparse.Namespace) -> int:
    from dive.export import ExportConfig, export_dataset
    from dive.export.layouts import LAYOUT_NAMES

    cfg = dataclass_from_args(ExportConfig, args)
    s = export_dataset(cfg)
    if not s["complete"]:
        print(f"stopped after {s['done']}/{s['total']} images; rerun the same command to finish {cfg.out}")
        return 1
    c = s["counts"]
    origin = " + ".join(f"{n} {k}" for k, n in c["per_origin"].items())
    ids = (f"ids per split {c['ids_per_split']}" if "ids_per_split" in c
           else f"ids per trial {c.get('ids_per_trial', {})}")
    print(f"exported {c['images']} images ({origin}) to {cfg.out} in {LAYOUT_NAMES[s['layout']]} layout; "
          f"{ids} ({c['new_ids']} new); {s['written']} written, {s['skipped']} unchanged, "
          f"{s['removed']} stale removed, {s['seconds']} s")
    print(f"next: dive reid run --data {cfg.out}")
    return 0


def _register_export(sub) -> None:
    from dive.export import ExportConfig

    p = sub.add_parser("export", help="write the expanded set (VI + external RGB + synthetic IR) as a new tree: "
                                      "SYSU-MM01 layout, or an LLCM / RegDB input's own layout")
    add_dataclass_arguments(p, ExportConfig, skip=("synthetic",))
    p.add_argument("--synthetic", type=Path, nargs="+", action="extend", default=[], metavar="DIR",
                   help=ExportConfig.__dataclass_fields__["synthetic"].metadata["help"])
    p.set_defaults(func=_cmd_export)


COMMANDS = {"export": _register_export}
