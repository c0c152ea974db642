"""`dive check sd15`: the whole DiVE path at Stable Diffusion 1.5's shape, offline, timed per stage."""

from __future__ import annotations

import argparse
import json

from dive.utils.config import add_dataclass_arguments, dataclass_from_args


def _cmd_check_sd15(args: argparse.Namespace) -> int:
    from dive.check.meter import StageMeter
    from dive.check.sd15 import CheckSD15Config, check_sd15, resolve_device

    cfg = dataclass_from_args(CheckSD15Config, args)
    meter = StageMeter(resolve_device(cfg.device))
    res = check_sd15(cfg, progress=True, meter=meter)
    print(f"dive check sd15 --size {cfg.size}: device {res['device']}, {res['torch_threads']} torch threads, "
          f"peak memory by {res['memory_method']}")
    print(meter.table())
    print(json.dumps(res, sort_keys=True))
    if res["work"]:
        print(f"written: {res['work']} (base, runs, packages, images, export, check-sd15.json)")
    return 0


def _register_check(sub) -> None:
    from dive.check.sd15 import CheckSD15Config

    check = sub.add_parser("check", help="run the whole path at a real model's shape, offline, timed per stage"
                           ).add_subparsers(dest="command", required=True)
    p = check.add_parser("sd15", help="SD 1.5-architecture base (random weights, CLIP's 49,408-token tokenizer) at "
                         "512x256: DiVE training (1,400 ids, rank-128 LoRA, both camera modes), package, vanilla "
                         "diffusers load, generation, attention maps, export; seconds and peak memory per stage")
    add_dataclass_arguments(p, CheckSD15Config)
    p.set_defaults(func=_cmd_check_sd15)


COMMANDS = {"check": _register_check}
