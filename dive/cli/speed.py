"""`dive speed`: how far generation, DiVE training and ReID training are from the machine's limit.

For each workload: the FLOPs of one unit (a generated image, a DiVE training step, a ReID training
batch) counted by torch's FLOP counter, the seconds per unit of a timed run of the same work, the
FLOP/s that makes, and its share of the float32 (and, where the CPU has native bf16, bf16) matmul
peak measured first on the same threads. One JSON line per workload (fields:
dive.utils.flops.RECORD_FIELDS, then the workload's settings) and the peak's own line, then a short
table. The peak line is always printed: every share refers to it.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

from dive import defaults
from dive.generate import DEFAULT_GUIDANCE
from dive.utils.config import dataclass_from_args

WORKLOADS = ("generate", "train", "reid", "peak")


@dataclass
class SpeedConfig:
    threads: int = field(default=2, metadata={"help": "torch CPU threads of every workload and of the peak"})
    only: tuple[str, ...] = field(default=WORKLOADS, metadata={
        "help": "workloads to run, some of: generate train reid peak (the matmul peak is always measured)",
        "choices": list(WORKLOADS)})
    json: Path | None = field(default=None, metadata={"help": "also write the JSON lines to this file"})
    # generation (dive generate-bench's settings)
    checkpoint: Path = field(default=defaults.DEMO, metadata={"help": "DiVE checkpoint generating"})
    base: Path | None = field(default=None, metadata={"help": "its diffusers base; None: the one its dive.json names"})
    images: int = field(default=64, metadata={"help": "images per timed generation run"})
    batch_size: int = field(default=16, metadata={"help": "images per forward pass"})
    steps: int = field(default=25, metadata={"help": "DPM-Solver++ steps"})
    guidance: float = field(default=DEFAULT_GUIDANCE, metadata={"help": "classifier-free guidance scale (generation's default)"})
    repeats: int = field(default=3, metadata={"help": "timed generation runs (best is kept)"})
    # DiVE training (dive train-bench's settings)
    train_base: Path = field(default=defaults.BASE, metadata={"help": "diffusers base the DiVE step trains on"})
    data: Path = field(default=defaults.DATA, metadata={"help": "SynthVI world or VI dataset of the DiVE step"})
    train_steps: int = field(default=10, metadata={"help": "timed DiVE training steps"})
    train_warmup: int = field(default=2, metadata={"help": "untimed DiVE steps first (the first is counted)"})
    train_batch_size: int = field(default=32, metadata={"help": "images per DiVE step"})
    rank: int = field(default=32, metadata={"help": "LoRA rank of the DiVE step"})
    train_out: Path = field(default=defaults.RUNS / "speed-train", metadata={"help": "scratch run folder of the DiVE step"})
    # ReID training (dive reid run's default network and batch)
    reid_method: str = field(default="agw", metadata={"help": "ReID recipe timed", "choices": ["agw", "caj", "deen"]})
    reid_batches: int = field(default=20, metadata={"help": "timed ReID batches"})
    reid_warmup: int = field(default=3, metadata={"help": "untimed ReID batches first (the first is counted)"})
    reid_onednn: bool = field(default=True, metadata={
        "help": "ReID convolutions by oneDNN, as dive reid runs them by default (--no-reid-onednn: torch's own)"})
    # peak
    peak_size: int = field(default=2048, metadata={"help": "size of the square matmul timed as the peak"})
    peak_repeats: int = field(default=5, metadata={"help": "timed peak runs (best is kept)"})

    def __post_init__(self) -> None:
        self.only = tuple(self.only)
        bad = [w for w in self.only if w not in WORKLOADS]
        if bad or not self.only:
            raise ValueError(f"--only: expected some of {', '.join(WORKLOADS)}; got {' '.join(self.only) or 'nothing'}")
        if "train" in self.only and not Path(self.data).exists():
            raise FileNotFoundError(f"{self.data}: not found; the DiVE training step needs a SynthVI world or VI "
                                    f"dataset (--data; build one with `dive data synth`), or leave train out (--only)")
        for name in ("threads", "images", "batch_size", "steps", "repeats", "train_steps", "train_batch_size",
                     "reid_batches", "peak_size", "peak_repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1; got {getattr(self, name)}")


def run_speed(cfg: SpeedConfig, emit=None) -> list[dict]:
    """The records of the chosen workloads, peak first; `emit(record)` is called as each one is done."""
    from dive.utils.flops import measure_peaks, peak_record

    peaks = measure_peaks(cfg.threads, size=cfg.peak_size, repeats=cfg.peak_repeats)
    records = [peak_record(peaks)]
    if emit:
        emit(records[-1])
    for name in WORKLOADS[:-1]:
        if name in cfg.only:
            records.append(_WORKLOAD[name](cfg, peaks))
            if emit:
                emit(records[-1])
    return records


def _generate(cfg: SpeedConfig, peaks: dict) -> dict:
    from dive.generate.bench import GenerateBenchConfig, generation_speed

    return generation_speed(GenerateBenchConfig(
        checkpoint=cfg.checkpoint, base=cfg.base, n=cfg.images, batch_size=cfg.batch_size, steps=cfg.steps,
        guidance=cfg.guidance, repeats=cfg.repeats, threads=cfg.threads, attention=False), peaks)


def _train(cfg: SpeedConfig, peaks: dict) -> dict:
    from dive.train.bench_speed import TrainBenchConfig, train_speed

    return train_speed(TrainBenchConfig(
        base=cfg.train_base, data=cfg.data, steps=cfg.train_steps, warmup=cfg.train_warmup,
        batch_size=cfg.train_batch_size, rank=cfg.rank, threads=cfg.threads, out=cfg.train_out), peaks)


def _reid(cfg: SpeedConfig, peaks: dict) -> dict:
    from dive.reid.speed import ReIDSpeedConfig, reid_speed

    return reid_speed(ReIDSpeedConfig(method=cfg.reid_method, batches=cfg.reid_batches, warmup=cfg.reid_warmup,
                                      threads=cfg.threads, onednn=cfg.reid_onednn), peaks)


_WORKLOAD = {"generate": _generate, "train": _train, "reid": _reid}


def _cmd_speed(args: argparse.Namespace) -> int:
    from dive.utils.flops import format_table
    from dive.utils.io import write_text

    cfg = dataclass_from_args(SpeedConfig, args)
    records = run_speed(cfg, emit=lambda r: print(json.dumps(r), flush=True))
    print(format_table(records))
    if cfg.json is not None:
        write_text(cfg.json, "".join(json.dumps(r) + "\n" for r in records))
        print(f"written: {cfg.json}")
    return 0


def _register_speed(sub) -> None:
    from dive.cli.common import add_stage

    add_stage(sub, "speed", "distance to the machine's limit: FLOPs per image / DiVE step / ReID batch, FLOP/s and "
              "share of the measured matmul peak (JSON lines + table)", SpeedConfig, _cmd_speed)


COMMANDS = {"speed": _register_speed}
