"""`dive base ...`: the tiny SD-architecture base model."""

from __future__ import annotations

import argparse

from dive.utils.config import add_dataclass_arguments, dataclass_from_args


def _cmd_base_pretrain(args: argparse.Namespace) -> int:
    from dive.base.pretrain import BasePretrainConfig, pretrain

    cfg = dataclass_from_args(BasePretrainConfig, args)
    out = pretrain(cfg)
    print(f"base model written to {out} (diffusers layout; logs and previews in {cfg.run_dir})")
    return 0


def _register_base(sub) -> None:
    from dive.base.pretrain import BasePretrainConfig

    base = sub.add_parser("base", help="the tiny SD-architecture base model").add_subparsers(dest="command", required=True)
    p = base.add_parser("pretrain", help="train the tiny base from scratch on a SynthVI web pool (resumable)")
    add_dataclass_arguments(p, BasePretrainConfig)
    p.set_defaults(func=_cmd_base_pretrain)


COMMANDS = {"base": _register_base}
