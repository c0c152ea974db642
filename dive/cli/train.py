"""`dive train`, `dive package` and `dive train-bench`: DiVE fine-tuning and its checkpoints."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dive.cli.common import add_stage, print_wait_note
from dive.utils.config import dataclass_from_args


def _cmd_train(args: argparse.Namespace) -> int:
    from dive.train.trainer import DiVETrainConfig, train_dive

    cfg = dataclass_from_args(DiVETrainConfig, args)
    print_wait_note(cfg.threads)
    final = train_dive(cfg)
    if final.exists():
        print(f"DiVE checkpoint written to {final} (LoRA + embeddings + tokens.json); run folder {cfg.out}")
    else:
        print(f"stopped before the last step; resume with the same command (run folder {cfg.out})")
    return 0


def _cmd_package(args: argparse.Namespace) -> int:
    import torch

    from dive.train.trainer import package_checkpoint

    print(f"packaged: {package_checkpoint(args.src, args.dst, lora_dtype=torch.float32 if args.float32 else torch.float16, base_name=args.base_name, overwrite=args.overwrite)}")
    return 0


def _cmd_train_bench(args: argparse.Namespace) -> int:
    from dive.train.bench_speed import TrainBenchConfig, train_bench

    res = train_bench(dataclass_from_args(TrainBenchConfig, args))
    print(f"ours: {res['ours_steps_per_s']} steps/s | reference loop (diffusers TI + LoRA recipe): "
          f"{res['reference_steps_per_s']} steps/s | ratio {res['ratio']} "
          f"(batch {res['batch_size']}, {res['steps']} timed steps, {res['threads']} threads)")
    if res.get("ours_gflop_per_s") is not None:
        print(f"ours: {res['ours_flops_per_step'] / 1e9:.1f} GFLOP/step, {res['ours_gflop_per_s']} GFLOP/s, "
              f"{100 * res['ours_share_of_float32_peak']:.1f}% of the float32 matmul peak "
              f"({res['peak_float32_gflop_per_s']} GFLOP/s)")
    print_wait_note(res["threads"])
    print(json.dumps(res))
    return 0


def _register_train(sub) -> None:
    from dive.train.trainer import DiVETrainConfig

    add_stage(sub, "train", "DiVE fine-tuning: identity tokens + camera tokens + UNet LoRA (resumable)", DiVETrainConfig, _cmd_train)


def _register_package(sub) -> None:
    p = sub.add_parser("package", help="copy a run's checkpoint without training state, with reference images")
    p.add_argument("src", type=Path, help="a run's checkpoint-N or final folder")
    p.add_argument("dst", type=Path, help="where to write the shippable checkpoint: a new or empty folder")
    p.add_argument("--overwrite", action="store_true", help="replace DST when it holds a DiVE checkpoint (written beside "
                   "it, then renamed into place); anything else in DST is never replaced")
    p.add_argument("--float32", action="store_true", help="keep the LoRA weights in float32 (default: float16, half the size)")
    p.add_argument("--base-name", default=None, help="name this base folder in dive.json instead of the one it trained on "
                   "(e.g. a shipped copy, repository-relative: checkpoints/NAME); refused unless its weights are identical")
    p.set_defaults(func=_cmd_package)


def _register_train_bench(sub) -> None:
    from dive.train.bench_speed import TrainBenchConfig

    add_stage(sub, "train-bench", "training speed: our DiVE step vs a plain diffusers-recipe loop", TrainBenchConfig, _cmd_train_bench)


COMMANDS = {"train": _register_train, "package": _register_package, "train-bench": _register_train_bench}
