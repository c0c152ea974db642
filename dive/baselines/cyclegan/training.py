"""`dive baseline cyclegan train`: the resumable, seeded training loop and its run folder."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from dive.generate.sources import load_baseline_inputs
from dive.baselines.cyclegan.networks import (FORMAT, GENERATOR_CONFIG, GENERATOR_WEIGHTS, ImagePool,
                                              PatchDiscriminator, ResnetGenerator, count_parameters, init_weights,
                                              load_generator, rgb_tensor, to_unit)
from dive.data.records import Modality, Record
from dive.utils.config import config_to_dict
from dive.utils.io import save_safetensors, sha256_file, write_json
from dive.utils.state import (latest_checkpoint, load_training_state, optimizer_from_flat, optimizer_to_flat,
                              prune_checkpoints, read_training_state, save_training_state, step_generator, truncate_log)
from dive.utils.threads import torch_threads

STAGE = 11  # the `stage` of step_generator for this trainer


@dataclass
class CycleGANTrainConfig:
    """Unpaired visible->infrared CycleGAN on the VI training set. Default: about 10 minutes on a
    2-core CPU with one thread (0.46 s/step measured, 1,300 steps)."""

    data: Path = field(metadata={"help": "the VI set: a SynthVI world or a VI dataset (SYSU-MM01, LLCM, RegDB layout)"})
    out: Path = field(default=Path("runs/baselines/cyclegan"), metadata={
        "help": "run folder: checkpoints, log.jsonl, generator.safetensors + generator.json (resumable)"})
    format: str = field(default="auto", metadata={"help": "layout of --data (auto: detected)"})
    vi_splits: tuple[str, ...] = field(default=("train",), metadata={"help": "VI splits whose images train the translator"})
    height: int = field(default=128, metadata={"help": "image height (a multiple of 2^downsamples)"})
    width: int = field(default=64, metadata={"help": "image width"})
    g_width: int = field(default=16, metadata={"help": "generator base width (channels at most width x 4)"})
    g_blocks: int = field(default=4, metadata={"help": "generator residual blocks"})
    d_width: int = field(default=16, metadata={"help": "discriminator base width"})
    d_layers: int = field(default=2, metadata={"help": "discriminator stride-2 layers"})
    steps: int = field(default=1300, metadata={"help": "training steps (one generator and one discriminator update each)"})
    batch_size: int = field(default=4, metadata={"help": "visible and infrared images per step (each)"})
    lr: float = field(default=2e-4, metadata={"help": "Adam learning rate (generators and discriminators)"})
    beta1: float = field(default=0.5, metadata={"help": "Adam beta1"})
    decay_from: float = field(default=0.5, metadata={"help": "fraction of the steps after which the learning rate decays linearly to 0"})
    lambda_cycle: float = field(default=10.0, metadata={"help": "weight of the cycle-consistency L1 loss"})
    lambda_identity: float = field(default=0.5, metadata={"help": "identity loss weight, relative to --lambda-cycle (0: off)"})
    pool_size: int = field(default=50, metadata={"help": "fake-image history per discriminator (0: off)"})
    hflip: bool = field(default=True, metadata={"help": "random horizontal flips"})
    seed: int = field(default=0, metadata={"help": "seed of the initialisation and of every step's randomness"})
    save_every: int = field(default=250, metadata={"help": "checkpoint every N steps (and at the end)"})
    keep_checkpoints: int = field(default=2, metadata={"help": "checkpoints kept"})
    log_every: int = field(default=10, metadata={"help": "write the losses to log.jsonl every N steps"})
    threads: int = field(default=1, metadata={
        "help": "torch CPU threads (0: torch's default); weights are bitwise-reproducible per thread count"})
    stop_after: int = field(default=0, metadata={"help": "stop (as if killed) after this many steps of this call; for tests"})

    def __post_init__(self) -> None:
        self.data, self.out = Path(self.data), Path(self.out)
        self.vi_splits = tuple(self.vi_splits)
        for name in ("height", "width", "g_width", "g_blocks", "d_width", "d_layers", "steps", "batch_size",
                     "save_every", "log_every"):
            if getattr(self, name) < (0 if name == "g_blocks" else 1):
                raise ValueError(f"{name.replace('_', '-')} must be positive; got {getattr(self, name)}")
        if self.height % 4 or self.width % 4:
            raise ValueError(f"height and width must be multiples of 4 (two stride-2 stages); got {self.height}x{self.width}")
        if not 0.0 <= self.decay_from <= 1.0:
            raise ValueError(f"decay-from must be in [0, 1]; got {self.decay_from}")
        if self.pool_size < 0 or self.lambda_cycle < 0 or self.lambda_identity < 0:
            raise ValueError("pool-size, lambda-cycle and lambda-identity must not be negative")


#: settings that may change between a run and its resume (they do not change the weights)
RESUMABLE_KEYS = ("out", "save_every", "keep_checkpoints", "log_every", "stop_after", "threads")


def lr_factor(step: int, steps: int, decay_from: float) -> float:
    """Constant, then linear decay to 0 (CycleGAN's schedule)."""
    start = int(round(decay_from * steps))
    if step < start:
        return 1.0
    return max(0.0, (steps - step) / max(1, steps - start))


def vi_training_records(data: Path, fmt: str, splits: tuple[str, ...]) -> tuple[list[Record], list[Record], str]:
    inputs = load_baseline_inputs(data, fmt, need_external=False)
    if inputs.vi_dataset is None:
        raise ValueError(f"{data}: a {inputs.data_format} dataset has no infrared images; the translator trains on a "
                         "VI set (a SynthVI world or a SYSU-MM01 / LLCM / RegDB folder)")
    recs = sorted((r for r in inputs.vi_records if r.split in splits), key=lambda r: r.path)
    vis = [r for r in recs if r.modality is Modality.VISIBLE]
    ir = [r for r in recs if r.modality is Modality.INFRARED]
    for name, lst in (("visible", vis), ("infrared", ir)):
        if not lst:
            found = sorted({r.split for r in inputs.vi_records})
            raise ValueError(f"{data}: no {name} images in split(s) {list(splits)} (splits present: {found})")
    return vis, ir, inputs.data_format


def load_images(records: list[Record], height: int, width: int, desc: str, progress: bool) -> torch.Tensor:
    out = torch.empty((len(records), 3, height, width), dtype=torch.uint8)
    for i, r in enumerate(tqdm(records, desc=desc, unit="img", leave=False, disable=not progress)):
        out[i] = rgb_tensor(r.path, height, width)
    return out


class CycleGAN:
    """The four networks, two optimizers and two pools of one run, and one training step."""

    def __init__(self, cfg: CycleGANTrainConfig):
        self.cfg = cfg
        with torch.random.fork_rng(devices=[]):  # seeded initialisation, global RNG left as it was
            torch.manual_seed(cfg.seed)
            self.g_v2i = ResnetGenerator(cfg.g_width, cfg.g_blocks)
            self.g_i2v = ResnetGenerator(cfg.g_width, cfg.g_blocks)
            self.d_i = PatchDiscriminator(cfg.d_width, cfg.d_layers)
            self.d_v = PatchDiscriminator(cfg.d_width, cfg.d_layers)
            for m in (self.g_v2i, self.g_i2v, self.d_i, self.d_v):
                init_weights(m)
        shape = (3, cfg.height, cfg.width)
        self.pool_i = ImagePool(cfg.pool_size, shape) if cfg.pool_size else None
        self.pool_v = ImagePool(cfg.pool_size, shape) if cfg.pool_size else None
        betas = (cfg.beta1, 0.999)
        self.opt_g = torch.optim.Adam([*self.g_v2i.parameters(), *self.g_i2v.parameters()], lr=cfg.lr, betas=betas)
        self.opt_d = torch.optim.Adam([*self.d_i.parameters(), *self.d_v.parameters()], lr=cfg.lr, betas=betas)

    @property
    def modules(self) -> dict[str, nn.Module]:
        mods = {"g_v2i": self.g_v2i, "g_i2v": self.g_i2v, "d_i": self.d_i, "d_v": self.d_v}
        if self.pool_i is not None:
            mods |= {"pool_i": self.pool_i, "pool_v": self.pool_v}
        return mods

    def save(self, directory: Path, meta: dict) -> None:
        d_tensors, d_meta = optimizer_to_flat(self.opt_d)
        save_training_state(directory, modules={**self.modules, "optim_d": d_tensors}, optimizer=self.opt_g,
                            meta={**meta, "optimizer_d": d_meta})

    def load(self, directory: Path) -> dict:
        meta = load_training_state(directory, modules=self.modules, optimizer=self.opt_g)
        tensors, _ = read_training_state(directory)
        prefix = "optim_d."
        optimizer_from_flat(self.opt_d, {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)},
                            meta["optimizer_d"])
        return meta

    def step(self, step: int, visible: torch.Tensor, infrared: torch.Tensor) -> dict[str, float]:
        cfg = self.cfg
        g = step_generator(cfg.seed, STAGE, step)
        b = cfg.batch_size
        iv = torch.randint(0, len(visible), (b,), generator=g)
        ii = torch.randint(0, len(infrared), (b,), generator=g)
        flips = torch.rand(2, b, generator=g) < 0.5
        real_v, real_i = to_unit(visible[iv]), to_unit(infrared[ii])
        if cfg.hflip:
            real_v = torch.where(flips[0, :, None, None, None], real_v.flip(-1), real_v)
            real_i = torch.where(flips[1, :, None, None, None], real_i.flip(-1), real_i)
        factor = lr_factor(step, cfg.steps, cfg.decay_from)
        for opt in (self.opt_g, self.opt_d):
            for group in opt.param_groups:
                group["lr"] = cfg.lr * factor

        # generators: fool both discriminators, reconstruct both cycles, keep target-domain images
        for p in (*self.d_i.parameters(), *self.d_v.parameters()):
            p.requires_grad_(False)
        fake_i = self.g_v2i(real_v)
        fake_v = self.g_i2v(real_i)
        pred_i, pred_v = self.d_i(fake_i), self.d_v(fake_v)
        loss_gan = F.mse_loss(pred_i, torch.ones_like(pred_i)) + F.mse_loss(pred_v, torch.ones_like(pred_v))
        loss_cycle = F.l1_loss(self.g_i2v(fake_i), real_v) + F.l1_loss(self.g_v2i(fake_v), real_i)
        loss_idt = torch.zeros(())
        if cfg.lambda_identity > 0:
            loss_idt = F.l1_loss(self.g_v2i(real_i), real_i) + F.l1_loss(self.g_i2v(real_v), real_v)
        loss_g = loss_gan + cfg.lambda_cycle * loss_cycle + cfg.lambda_cycle * cfg.lambda_identity * loss_idt
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()

        # discriminators: real -> 1, (pooled) fake -> 0
        for p in (*self.d_i.parameters(), *self.d_v.parameters()):
            p.requires_grad_(True)
        fi, fv = fake_i.detach(), fake_v.detach()
        if self.pool_i is not None:
            fi, fv = self.pool_i.query(fi, g), self.pool_v.query(fv, g)
        loss_d = 0.0
        for d, real, fake in ((self.d_i, real_i, fi), (self.d_v, real_v, fv)):
            pr, pf = d(real), d(fake)
            loss_d = loss_d + 0.5 * (F.mse_loss(pr, torch.ones_like(pr)) + F.mse_loss(pf, torch.zeros_like(pf)))
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        return {"loss_g": loss_g.item(), "loss_gan": loss_gan.item(), "loss_cycle": loss_cycle.item(),
                "loss_identity": loss_idt.item(), "loss_d": float(loss_d.item()), "lr": cfg.lr * factor}


def _data_summary(vis_recs: list[Record], ir_recs: list[Record]) -> dict:
    return {"visible_images": len(vis_recs), "infrared_images": len(ir_recs),
            "ids": len({r.pid for r in vis_recs + ir_recs})}


def check_trained_on(generator: Path, data: Path, fmt: str = "auto") -> dict:
    """A finished generator's generator.json, after checking that it was trained on `data`'s VI
    images (the same image and identity counts in the splits it names): a translator shipped or
    trained for one world must not stand in for another's baseline."""
    _, meta = load_generator(generator)
    splits = tuple(meta.get("config", {}).get("vi_splits", ("train",)))
    here = _data_summary(*vi_training_records(Path(data), fmt, splits)[:2])
    if meta.get("data") != here:
        raise ValueError(f"{generator}: trained on VI data {meta.get('data')}, but {data} holds "
                         f"{here} in splits {list(splits)}; train one on this data "
                         "(`dive baseline cyclegan train`) or give a folder that does not exist")
    return meta


def _comparable(cfg_dict: dict) -> dict:
    return {k: v for k, v in cfg_dict.items() if k not in RESUMABLE_KEYS}


def train_cyclegan(cfg: CycleGANTrainConfig, *, progress: bool = True) -> Path:
    """Train (or resume, or find finished) a run; returns the run folder. The generator files
    exist when all `cfg.steps` steps are done."""
    run = Path(cfg.out)
    vis_recs, ir_recs, fmt = vi_training_records(cfg.data, cfg.format, cfg.vi_splits)
    cfg_dict = config_to_dict(cfg) | {"data": str(cfg.data.resolve()), "format": fmt}
    data_meta = _data_summary(vis_recs, ir_recs)
    config_path = run / "config.json"
    if config_path.exists():
        try:
            old = json.loads(config_path.read_text())
        except json.JSONDecodeError:
            raise ValueError(f"{config_path}: not valid JSON; use a new --out") from None
        if _comparable(old.get("config", {})) != _comparable(cfg_dict) or old.get("data") != data_meta:
            raise ValueError(f"{config_path}: this run folder was trained with other settings or data; use a new --out")
    elif run.exists() and any(run.iterdir()):
        raise FileExistsError(f"{run}: not empty and not a `dive baseline cyclegan train` run folder; choose a new --out")
    if (run / GENERATOR_CONFIG).exists() and (run / GENERATOR_WEIGHTS).exists():
        return run  # finished earlier
    write_json(config_path, {"config": cfg_dict, "data": data_meta})

    with torch_threads(cfg.threads):
        visible = load_images(vis_recs, cfg.height, cfg.width, "visible images", progress)
        infrared = load_images(ir_recs, cfg.height, cfg.width, "infrared images", progress)
        model = CycleGAN(cfg)
        start, train_seconds = 0, 0.0
        ckpt = latest_checkpoint(run)
        if ckpt is not None:
            meta = model.load(ckpt)
            start, train_seconds = int(meta["step"]), float(meta.get("train_seconds", 0.0))
        truncate_log(run / "log.jsonl", start)
        log = open(run / "log.jsonl", "a")
        bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="cyclegan", disable=not progress)
        done, t0 = 0, time.perf_counter()
        try:
            for step in bar:
                losses = model.step(step, visible, infrared)
                bar.set_postfix(G=f"{losses['loss_g']:.3f}", D=f"{losses['loss_d']:.3f}",
                                cyc=f"{losses['loss_cycle']:.3f}")
                if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                    row = {"step": step + 1, **{k: round(v, 6) for k, v in losses.items()},
                           "seconds": round(train_seconds + time.perf_counter() - t0, 3)}
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                if not all(math.isfinite(v) for v in losses.values()):
                    raise FloatingPointError(f"{run}: non-finite loss at step {step + 1} ({losses}); lower --lr")
                done += 1
                if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
                    model.save(run / f"checkpoint-{step + 1}",
                               {"step": step + 1, "train_seconds": round(train_seconds + time.perf_counter() - t0, 3)})
                    prune_checkpoints(run, cfg.keep_checkpoints)
                if cfg.stop_after and done >= cfg.stop_after:
                    break
        finally:
            bar.close()
            log.close()
        elapsed = train_seconds + time.perf_counter() - t0
        if start + done >= cfg.steps:
            _save_generator(run, model, cfg_dict, data_meta, elapsed)
    return run


def _save_generator(run: Path, model: CycleGAN, cfg_dict: dict, data_meta: dict, seconds: float) -> None:
    weights = run / GENERATOR_WEIGHTS
    save_safetensors({k: v.detach().contiguous() for k, v in model.g_v2i.state_dict().items()}, weights,
                     {"format": FORMAT})
    cfg = model.cfg
    write_json(run / GENERATOR_CONFIG, {
        "format": FORMAT, "direction": "visible->infrared", "generator": model.g_v2i.spec,
        "parameters": count_parameters(model.g_v2i), "height": cfg.height, "width": cfg.width,
        "steps": cfg.steps, "seed": cfg.seed, "config": cfg_dict, "data": data_meta,
        "sha256": sha256_file(weights), "train_seconds": round(seconds, 2),
        "seconds_per_step": round(seconds / max(1, cfg.steps), 4), "threads": torch.get_num_threads(),
        "torch": torch.__version__})
