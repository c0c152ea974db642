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


def _cmd_data_layout(args: argparse.Namespace) -> int:
    from dive.data.layouts import LAYOUT_NAMES, LayoutConfig, write_layout

    cfg = dataclass_from_args(LayoutConfig, args)
    s = write_layout(cfg)
    info = s["info"]
    how = f"{s['linked']} hard links" + (f", {s['copied']} copies" if s["copied"] else "")
    print(f"SynthVI world {cfg.data} written in the {LAYOUT_NAMES[cfg.to]} layout to {cfg.out}: {s['images']} "
          f"images ({how}), {len(s['lists'])} list files")
    if cfg.to == "llcm":
        print(f"  ids: {len(info['splits']['train'])} train (the world's train + val), "
              f"{len(info['splits']['test'])} test; images: {info['images']}")
        print(f"next: dive reid test RUN --data {cfg.out}   (protocols llcm-v2i, llcm-i2v)")
    else:
        pad = info["padding"]["repeated_images"]
        trial = info["splits"]["trials"]["1"]
        print(f"  {cfg.regdb_images} images per id and modality; repeats to reach them: "
              f"{sum(pad['visible'].values())} visible, {sum(pad['thermal'].values())} thermal")
        print(f"  10 trials ({cfg.regdb_split} rule): trial 1 has {len(trial['train'])} train and "
              f"{len(trial['test'])} test ids")
        print(f"next: dive reid test RUN --data {cfg.out} --regdb-trial 1   (protocols regdb-v2t, regdb-t2v)")
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
    from dive.data.layouts import LayoutConfig
    from dive.data.synthvi.build import SynthConfig

    data = sub.add_parser("data", help="prepare and look at datasets").add_subparsers(dest="command", required=True)
    add_stage(data, "synth", "write a procedural SynthVI world (VI set, external set, web pool)", SynthConfig, _cmd_data_synth)
    add_stage(data, "layout", "write a SynthVI world's VI set in the LLCM or RegDB layout (hard links; same ids and "
              "images)", LayoutConfig, _cmd_data_layout)
    p = data.add_parser("hash", help="one digest over every file's path and sha256 (determinism checks)")
    p.add_argument("root", type=Path)
    p.set_defaults(func=_cmd_data_hash)
    p = data.add_parser("inspect", help="summary table, contact sheet and raw-pixel modality gap of a dataset")
    p.add_argument("root", type=Path, help="a `dive data synth` output or one dataset in a supported layout")
    add_dataclass_arguments(p, InspectConfig, skip=("root",))
    p.set_defaults(func=_cmd_data_inspect)


COMMANDS = {"data": _register_data}
