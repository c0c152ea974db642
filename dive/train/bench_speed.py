"""`dive train-bench`: our DiVE training step vs a plain reference loop, same model, same batch.

The reference follows the diffusers textual-inversion + LoRA example recipe as written: every
step encodes its images with the VAE, runs the text encoder and the LoRA UNet, steps one optimizer
over LoRA and the whole embedding matrix, then copies the original rows back (the recipe's
`index_no_updates` restore). Ours encodes each image once up front, masks the embedding gradient
to the new rows, computes each LoRA layer as one matmul with the adapter folded into the weight
(`merged_lora`) and draws each step from a seeded generator (exact resume). Both are timed in one
process, after the same warm-up, on the same data.

The result also says how far each loop is from the machine's limit: the FLOPs of one step
(counted by torch's FLOP counter on the first warm-up step: forward and backward of the text
encoder and UNet, and the reference's per-step VAE encode), the FLOP/s each loop reached, and its
share of the float32 (and, where the CPU has it, bf16) matmul peak on the same threads
(dive.utils.flops). `train_speed` times our step alone for `dive speed`.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from dive.train.trainer import DiVETrainConfig, DiVETrainer, load_images
from dive.utils.flops import count_flops, measure_peaks, speed_fields, workload_record
from dive.utils.threads import torch_threads


@dataclass
class TrainBenchConfig:
    base: Path = field(metadata={"help": "diffusers SD-1.x folder"})
    data: Path = field(metadata={"help": "a SynthVI world or VI dataset"})
    steps: int = field(default=20, metadata={"help": "timed steps of each loop"})
    warmup: int = field(default=3, metadata={"help": "untimed steps first"})
    batch_size: int = field(default=32, metadata={"help": "images per step"})
    rank: int = field(default=32, metadata={"help": "LoRA rank"})
    threads: int = field(default=2, metadata={"help": "torch CPU threads"})
    out: Path = field(default=Path("runs/train-bench"), metadata={"help": "scratch run folder"})
    flops: bool = field(default=True, metadata={
        "help": "also count FLOPs per step and report FLOP/s as a share of the machine's matmul peak"})


def _timed(step_fn, steps: int, warmup: int, counted: dict | None) -> float:
    """Steps per second of `step_fn(step)` over `steps` timed steps after `warmup` untimed ones. With
    `counted`, one untimed step (the first warm-up step, else one more before the loop) runs under
    the FLOP counter and its FLOPs go to ``counted["flops"]``."""
    if counted is not None and warmup == 0:
        counted["flops"] = count_flops(lambda: step_fn(0))[0]
    t0 = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            t0 = time.perf_counter()
        if counted is not None and step == 0 and warmup > 0:
            counted["flops"] = count_flops(lambda: step_fn(0))[0]
        else:
            step_fn(step)
    return steps / (time.perf_counter() - t0)


def reference_loop(trainer: DiVETrainer, images: torch.Tensor, steps: int, warmup: int, batch_size: int,
                   counted: dict | None = None) -> float:
    """Steps per second of the recipe-style loop on the trainer's (unprepared) modules."""
    unet, te, vae = trainer.unet, trainer.text_encoder, trainer.vae
    sched = trainer.noise_scheduler
    emb = te.get_input_embeddings().weight
    orig = emb.detach().clone()
    keep = torch.ones(emb.shape[0], dtype=torch.bool)
    keep[trainer.new_ids] = False
    params = [p for p in unet.parameters() if p.requires_grad] + [emb]
    opt = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator().manual_seed(0)

    def step_fn(step: int) -> None:
        idx = torch.randint(0, len(images), (batch_size,), generator=g)
        x = images[idx].float().div(127.5).sub(1.0)
        with torch.no_grad():
            lat = vae.encode(x).latent_dist.sample(generator=g) * vae.config.scaling_factor
        noise = torch.randn(lat.shape, generator=g)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch_size,), generator=g)
        noisy = sched.add_noise(lat, noise, t)
        hidden = te(trainer.ids[idx])[0]
        pred = unet(noisy, t, encoder_hidden_states=hidden).sample
        target = noise if sched.config.prediction_type == "epsilon" else sched.get_velocity(lat, noise, t)
        loss = F.mse_loss(pred, target)
        loss.backward()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            emb[keep] = orig[keep]

    with trainer.merged_lora.off() if trainer.merged_lora is not None else nullcontext():  # peft's own forward
        return _timed(step_fn, steps, warmup, counted)


def our_loop(trainer: DiVETrainer, steps: int, warmup: int, counted: dict | None = None) -> float:
    """Steps per second of the trainer's own step (loss, backward, clipping, optimizer)."""
    opt = trainer.optimizer
    trainable = [p for grp in opt.param_groups for p in grp["params"]]

    def step_fn(step: int) -> None:
        loss = trainer.training_loss(step, 0)
        trainer.accelerator.backward(loss)
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return _timed(step_fn, steps, warmup, counted)


def train_bench(cfg: TrainBenchConfig) -> dict:
    with torch_threads(cfg.threads):  # scoped: a caller's own thread setting comes back afterwards
        return _train_bench(cfg)


def _trainer(cfg: TrainBenchConfig) -> DiVETrainer:
    tcfg = DiVETrainConfig(base=cfg.base, data=cfg.data, out=cfg.out, batch_size=cfg.batch_size, rank=cfg.rank,
                           steps=cfg.warmup + cfg.steps, cpu=True, preview_every=0)
    return DiVETrainer(tcfg, progress=False)


def _train_bench(cfg: TrainBenchConfig) -> dict:
    trainer = _trainer(cfg)
    images = load_images(trainer.ts.records, trainer.height, trainer.width)
    c_ours: dict | None = {} if cfg.flops else None
    c_ref: dict | None = {} if cfg.flops else None
    ours = our_loop(trainer, cfg.steps, cfg.warmup, c_ours)
    ref = reference_loop(trainer, images, cfg.steps, cfg.warmup, cfg.batch_size, c_ref)
    res = {"ours_steps_per_s": round(ours, 3), "reference_steps_per_s": round(ref, 3), "ratio": round(ours / ref, 3),
           "batch_size": cfg.batch_size, "steps": cfg.steps, "threads": cfg.threads,
           "images": len(images), "rank": cfg.rank}
    if c_ours is not None and c_ref is not None:
        peaks = measure_peaks(cfg.threads)
        mine = speed_fields(c_ours["flops"], 1 / ours, peaks, "ours_")
        theirs = speed_fields(c_ref["flops"], 1 / ref, peaks, "reference_")
        mine["ours_flops_per_step"] = mine.pop("ours_flops_per_unit")
        theirs["reference_flops_per_step"] = theirs.pop("reference_flops_per_unit")
        res |= mine | theirs | {
            "peak_float32_gflop_per_s": round(peaks["float32_flop_per_s"] / 1e9, 2),
            "peak_bf16_gflop_per_s": None if peaks["bf16_flop_per_s"] is None else round(peaks["bf16_flop_per_s"] / 1e9, 2),
            "bf16": peaks["bf16"]}
    return res


def train_speed(cfg: TrainBenchConfig, peaks: dict | None = None) -> dict:
    """`dive speed`'s training line: our DiVE step alone at the bench's batch and rank, its FLOPs
    and the FLOP/s of the timed steps against the matmul peak (measured here on `threads` unless given)."""
    with torch_threads(cfg.threads):
        trainer = _trainer(cfg)
        counted: dict = {}
        rate = our_loop(trainer, cfg.steps, cfg.warmup, counted)
        peaks = peaks or measure_peaks(cfg.threads)
    return workload_record("train", "step", counted["flops"], 1.0 / rate, peaks, batch_size=cfg.batch_size,
                           rank=cfg.rank, steps=cfg.steps, warmup=cfg.warmup, images=trainer.num_images,
                           base=str(cfg.base))
