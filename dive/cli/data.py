"""`dive data ...`: prepare and look at datasets."""

from __future__ import annotations

import argparse
from pathlib import Path

from dive.cli.common import add_stage
from dive.utils.config import add_dataclass_arguments, dataclass_from_args


def _cmd_data_synth(args: argparse.Namespace) -> int:
    from dive.data.synthvi.build import SynthConfig, build_world

    cfg = dataclass_from_args(SynthConfig, args)
    summary = build_world(cfg)
    imgs = summary["images"]
    print(f"SynthVI world written to {cfg.out} in {summary['seconds']} s (seed {cfg.seed})")
    print(f"  vi/        SYSU-MM01 layout: {imgs.get('vi', 0)} images, ids {summary['vi_splits']}")
    print(f"  external/  Market-1501 layout: {imgs.get('external', 0)} images "
          f"(+{imgs.get('junk', 0)} junk, +{imgs.get('distractor', 0)} distractors), {cfg.ext_ids}+{cfg.ext_test_ids} ids")
    print(f"  web/       captioned visible pool: {imgs.get('web', 0)} images")
    print(f"next: dive data inspect {cfg.out}")
    return 0


def _cmd_data_hash(args: argparse.Namespace) -> int:
    import hashlib

    from dive.utils.io import sha256_file

    root = Path(args.root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    total = hashlib.sha256()
    n = 0
    for p in sorted(root.rglob("*")):
        if p.is_file():
            total.update(f"{p.relative_to(root)}\0{sha256_file(p)}\n".encode())
            n += 1
    print(f"{total.hexdigest()}  {n} files  {root}")
    return 0


def _cmd_data_inspect(args: argparse.Namespace) -> int:
    from dive.data.inspect import InspectConfig, format_report, inspect

    cfg = dataclass_from_args(InspectConfig, args)
    report = inspect(cfg)
    print(format_report(report))
    return 2 if report["broken"] else 0  # broken images: listed above, and the exit status says so


def _register_data(sub) -> None:
    from dive.data.inspect import InspectConfig
    from dive.data.synthvi.build import SynthConfig

    data = sub.add_parser("data", help="prepare and look at datasets").add_subparsers(dest="command", required=True)
    add_stage(data, "synth", "write a procedural SynthVI world (VI set, external set, web pool)", SynthConfig, _cmd_data_synth)
    p = data.add_parser("hash", help="one digest over every file's path and sha256 (determinism checks)")
    p.add_argument("root", type=Path)
    p.set_defaults(func=_cmd_data_hash)
    p = data.add_parser("inspect", help="summary table, contact sheet and raw-pixel modality gap of a dataset")
    p.add_argument("root", type=Path, help="a `dive data synth` output or one dataset in a supported layout")
    add_dataclass_arguments(p, InspectConfig, skip=("root",))
    p.set_defaults(func=_cmd_data_inspect)


COMMANDS = {"data": _register_data}
