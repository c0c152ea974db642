"""`dive baseline ...`: comparison baselines (folders for `dive export --synthetic`)."""

from __future__ import annotations

import argparse
import json

from dive.cli.common import add_stage
from dive.utils.config import dataclass_from_args


def _cmd_baseline_grayscale(args: argparse.Namespace) -> int:
    from dive.baselines.grayscale import GrayscaleConfig, run_grayscale

    cfg = dataclass_from_args(GrayscaleConfig, args)
    out = run_grayscale(cfg)
    print(f"grayscale baseline written to {out} (images/, manifest.jsonl, generate.json)")
    print(f"next: dive export --data {cfg.data} --synthetic {out} --out OUT")
    return 0


def _cmd_baseline_oracle(args: argparse.Namespace) -> int:
    from dive.baselines.oracle import OracleConfig, run_oracle

    cfg = dataclass_from_args(OracleConfig, args)
    out = run_oracle(cfg)
    print(f"oracle (true infrared renders, a ceiling) written to {out} (images/, manifest.jsonl, generate.json)")
    print(f"next: dive metrics --synthetic GENERATED {out} --real-ir {cfg.data} --reid-run RUN --out OUT")
    return 0


def _cmd_baseline_cyclegan_train(args: argparse.Namespace) -> int:
    from dive.baselines.cyclegan import GENERATOR_CONFIG, CycleGANTrainConfig, train_cyclegan

    cfg = dataclass_from_args(CycleGANTrainConfig, args)
    run = train_cyclegan(cfg)
    if (run / GENERATOR_CONFIG).exists():
        meta = json.loads((run / GENERATOR_CONFIG).read_text())
        print(f"CycleGAN generator written to {run} (generator.safetensors + generator.json; "
              f"{meta['steps']} steps, {meta['seconds_per_step']} s/step)")
        print(f"next: dive baseline cyclegan apply --generator {run} --data {cfg.data} --out OUT")
    else:
        print(f"stopped before the last step; resume with the same command (run folder {run})")
    return 0


def _cmd_baseline_cyclegan_apply(args: argparse.Namespace) -> int:
    from dive.baselines.cyclegan import CycleGANApplyConfig, apply_cyclegan

    cfg = dataclass_from_args(CycleGANApplyConfig, args)
    out = apply_cyclegan(cfg)
    print(f"CycleGAN baseline written to {out} (images/, manifest.jsonl, generate.json)")
    print(f"next: dive export --data {cfg.data} --synthetic {out} --out OUT")
    return 0


def _register_baseline(sub) -> None:
    from dive.baselines.cyclegan import CycleGANApplyConfig, CycleGANTrainConfig
    from dive.baselines.grayscale import GrayscaleConfig
    from dive.baselines.oracle import OracleConfig

    baseline = sub.add_parser("baseline", help="comparison baselines: synthetic infrared images of the external ids "
                              "(folders for `dive export --synthetic`)").add_subparsers(dest="command", required=True)
    add_stage(baseline, "grayscale", "grayscale copies of the external ids' visible images, N per infrared camera",
              GrayscaleConfig, _cmd_baseline_grayscale)
    add_stage(baseline, "oracle", "SynthVI only: the external ids' true infrared images from the world's renderer "
              "(the ceiling of the identity metrics, not a method)", OracleConfig, _cmd_baseline_oracle)
    cyclegan = baseline.add_parser("cyclegan", help="unpaired visible->infrared CycleGAN: train on the VI set, then "
                                   "apply to the external ids").add_subparsers(dest="action", required=True)
    add_stage(cyclegan, "train", "train the translator on the VI training images (resumable)", CycleGANTrainConfig,
              _cmd_baseline_cyclegan_train)
    add_stage(cyclegan, "apply", "translate the external ids' visible images, N per infrared camera",
              CycleGANApplyConfig, _cmd_baseline_cyclegan_apply)


COMMANDS = {"baseline": _register_baseline}
