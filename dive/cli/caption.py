"""`dive caption` and `dive infrared-words`: the words DiVE trains on."""

from __future__ import annotations

import argparse

from dive.cli.common import add_stage
from dive.utils.config import dataclass_from_args


def _cmd_caption(args: argparse.Namespace) -> int:
    from dive.caption.run import CaptionConfig, run_caption

    cfg = dataclass_from_args(CaptionConfig, args)
    path = run_caption(cfg)
    print((cfg.out / "report.md").read_text().rstrip())
    print(f"  written: {path}, {cfg.out / 'report.json'}")
    print(f"next: dive train ... --captions {path}")
    return 0


def _cmd_infrared_words(args: argparse.Namespace) -> int:
    from dive.caption.infrared import InfraredWordsConfig, report_lines, run_infrared_words

    cfg = dataclass_from_args(InfraredWordsConfig, args)
    path = run_infrared_words(cfg)
    print("\n".join(report_lines(path)))
    print(f"  written: {path}")
    print(f"next: dive train ... --captions {cfg.captions} --infrared-words {path}")
    return 0


def _register_caption(sub) -> None:
    from dive.caption.run import CaptionConfig

    add_stage(sub, "caption", "describe every training identity in words (attribute reader trained on the web pool)",
              CaptionConfig, _cmd_caption)


def _register_infrared_words(sub) -> None:
    from dive.caption.infrared import InfraredWordsConfig

    add_stage(sub, "infrared-words", "each caption colour's grey in infrared, fitted on the VI set (for dive train "
              "--infrared-words)", InfraredWordsConfig, _cmd_infrared_words)


COMMANDS = {"caption": _register_caption, "infrared-words": _register_infrared_words}
