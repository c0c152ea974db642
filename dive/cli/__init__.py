"""The `dive` command line: thin. Each command parses its stage's config dataclass, calls the
stage's function, prints. Options and defaults are defined once, on the dataclasses.

One module per command group (`dive/cli/data.py`, `reid.py`, ...); each names its commands in a
`COMMANDS` dict (command name -> function that adds its subparser). `ORDER` fixes the order in
`dive --help`; a command missing from it is listed after the others."""

from __future__ import annotations

import argparse
import os
import sys

from dive.cli import (base, baselines, bench, caption, check, data, export, filter, generate, metrics, reid, speed,
                      studio, train)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

_MODULES = (data, base, caption, train, generate, export, metrics, filter, studio, bench, baselines, reid, speed, check)

ORDER = ("data", "base", "caption", "infrared-words", "train", "generate", "translate", "export", "attention",
         "metrics", "filter", "package", "studio-latency", "grid", "train-bench", "generate-bench", "speed", "bench",
         "bench-row", "bench-progress", "bench-sweep", "baseline", "reid", "check")


def _commands() -> dict:
    found: dict = {}
    for module in _MODULES:
        for name, register in module.COMMANDS.items():
            if name in found:
                raise RuntimeError(f"dive/cli: command {name!r} is registered twice")
            found[name] = register
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dive", description="DiVE Studio: visible-infrared ReID data expansion")
    sub = parser.add_subparsers(dest="group", required=True)
    commands = _commands()
    for name in sorted(commands, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n)):
        commands[name](sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError) as err:
        # user errors (a wrong path or layout, a bad option): one clear line, no traceback
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"dive: error: {msg}", file=sys.stderr)
        return 2

