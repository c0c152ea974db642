"""`dive baseline cyclegan train` / `apply`: a small unpaired visible->infrared translator
(CycleGAN, Zhu et al. 2017) in plain torch, trained on the VI set's training images and applied to
the external identities' visible images.

Model (sizes are options):

- two ResNet-style generators, G: visible->infrared and F: infrared->visible. 7x7 conv (width w),
  two stride-2 3x3 convs (2w, 4w), `--g-blocks` residual blocks at 4w, two (2x nearest upsampling +
  3x3 conv) stages back to w, 7x7 conv to 3 channels, tanh; reflection padding, instance norm.
  Default w = 16: 64 channels at most, 4 blocks, 0.35 M parameters each. (Upsampling + conv
  instead of transposed convs avoids checkerboard artefacts.)
- two PatchGAN discriminators (D_I on infrared, D_V on visible): 4x4 convs, widths 16, 32, 64
  (`--d-width`, `--d-layers` stride-2 layers, then one stride-1 layer and a 1-channel output), leaky
  ReLU 0.2, instance norm; each output cell judges a ~34x34 patch.
- losses: least-squares GAN, cycle L1 weighted `--lambda-cycle` (10), identity L1 (G(i) ~ i,
  F(v) ~ v) weighted `--lambda-cycle` x `--lambda-identity` (0.5; 0 turns it off); the
  discriminators see fakes through a 50-image history pool each; Adam 2e-4, beta1 0.5, constant
  learning rate, then linear decay to 0 over the last half of the steps.
- data: every training-split visible and infrared image of the VI set (`--vi-splits`), resized to
  128x64 once, unpaired (each step draws `--batch-size` visible and as many infrared images
  independently), random horizontal flips.

Determinism and resume: weights are initialised from `--seed`; each step's randomness (batch,
flips, pool) comes from a generator seeded by (seed, stage, step) (`dive.utils.state`), and a
checkpoint holds the four networks, both Adam states and both pools, so a run resumed from
`checkpoint-N` ends with exactly the weights of an uninterrupted run (same thread count).

Time: the default (batch 4, 1,300 steps) is sized for about 10 minutes on the project's 2-core CPU
with one thread: measured 0.46 s/step (median of 7 timings of 10-50 steps, range 0.42-0.58; default
config, `torch.set_num_threads(1)`, nice 19, while another training job held about 1.5 of the 2
cores), so 1,300 steps take about 10 minutes (9-12.5 with the load seen). Loading the default
SynthVI world's 7,804 training images first takes a few seconds.

Run folder (`--out`): `config.json`, `log.jsonl` (losses every `--log-every` steps),
`checkpoint-N/` (state.safetensors + state.json, the last `--keep-checkpoints` kept),
then `generator.safetensors` (G only) + `generator.json` (its architecture, image size, training
config, sha256), the latter written last.

`apply` translates the selected external identities' visible images (the same identities and
source images as `dive baseline grayscale` with the same seed, `dive.baselines.common`) with G.
CycleGAN has no camera control: every infrared camera gets its own `--n` images, from different
source images where the identity has enough, all made by the one generator; `camid` records the
camera the image is assigned to.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from dive.baselines.common import (BaselineSelection, base_settings, finish_out, load_baseline_inputs, plan_jobs,
                                   prepare_out, read_rgb)
from dive.data.records import Modality, Record
from dive.utils.config import config_to_dict
from dive.utils.io import atomic_path, save_image, sha256_file, write_json
from dive.utils.threads import torch_threads
from dive.utils.state import (latest_checkpoint, load_training_state, optimizer_from_flat, optimizer_to_flat,
                              prune_checkpoints, read_training_state, save_training_state, step_generator,
                              truncate_log)

GENERATOR_WEIGHTS = "generator.safetensors"
GENERATOR_CONFIG = "generator.json"
FORMAT = "dive-cyclegan-v1"
STAGE = 11  # the `stage` of step_generator for this trainer


# ---------------------------------------------------------------------------------------------
# networks
# ---------------------------------------------------------------------------------------------


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels), nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """Image-to-image generator (see the module docstring); input and output in [-1, 1]."""

    def __init__(self, width: int = 16, blocks: int = 4, downsamples: int = 2):
        super().__init__()
        self.spec = {"width": width, "blocks": blocks, "downsamples": downsamples}
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(3, width, 7), nn.InstanceNorm2d(width),
                                   nn.ReLU(inplace=True)]
        ch = width
        for _ in range(downsamples):
            layers += [nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1), nn.InstanceNorm2d(ch * 2), nn.ReLU(inplace=True)]
            ch *= 2
        layers += [ResidualBlock(ch) for _ in range(blocks)]
        for _ in range(downsamples):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.ReflectionPad2d(1), nn.Conv2d(ch, ch // 2, 3),
                       nn.InstanceNorm2d(ch // 2), nn.ReLU(inplace=True)]
            ch //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ch, 3, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PatchDiscriminator(nn.Module):
    """PatchGAN: one real/fake score per overlapping patch (no sigmoid: least-squares loss)."""

    def __init__(self, width: int = 16, layers: int = 2):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(3, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        ch = width
        for _ in range(layers - 1):
            mods += [nn.Conv2d(ch, ch * 2, 4, stride=2, padding=1), nn.InstanceNorm2d(ch * 2), nn.LeakyReLU(0.2, inplace=True)]
            ch *= 2
        mods += [nn.Conv2d(ch, ch * 2, 4, stride=1, padding=1), nn.InstanceNorm2d(ch * 2), nn.LeakyReLU(0.2, inplace=True),
                 nn.Conv2d(ch * 2, 1, 4, stride=1, padding=1)]
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ImagePool(nn.Module):
    """History of generated images shown to a discriminator (Shrivastava et al. 2017): once full,
    each new fake is returned as is or swapped for a stored one, with probability 1/2. Its
    contents are buffers, so checkpoints carry them."""

    def __init__(self, size: int, shape: tuple[int, int, int]):
        super().__init__()
        self.size = size
        self.register_buffer("images", torch.zeros((size, *shape)))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))

    def query(self, fakes: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        coins = torch.rand(len(fakes), generator=g)
        slots = torch.randint(0, self.size, (len(fakes),), generator=g)
        out = []
        for img, coin, slot in zip(fakes, coins.tolist(), slots.tolist()):
            n = int(self.count)
            if n < self.size:
                self.images[n] = img
                self.count += 1
                out.append(img)
            elif coin < 0.5:
                out.append(self.images[slot].clone())
                self.images[slot] = img
            else:
                out.append(img)
        return torch.stack(out)


def init_weights(module: nn.Module) -> None:
    """N(0, 0.02) convolution weights, zero biases (the CycleGAN initialisation)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------


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


def rgb_tensor(path: str | Path, height: int, width: int) -> torch.Tensor:
    """uint8 (3, height, width) tensor of one image."""
    return torch.from_numpy(np.array(read_rgb(path, height, width))).permute(2, 0, 1)


def load_images(records: list[Record], height: int, width: int, desc: str, progress: bool) -> torch.Tensor:
    out = torch.empty((len(records), 3, height, width), dtype=torch.uint8)
    for i, r in enumerate(tqdm(records, desc=desc, unit="img", leave=False, disable=not progress)):
        out[i] = rgb_tensor(r.path, height, width)
    return out


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return x.float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


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
    with atomic_path(weights) as tmp:
        save_file({k: v.detach().contiguous() for k, v in model.g_v2i.state_dict().items()}, str(tmp),
                  metadata={"format": FORMAT})
    cfg = model.cfg
    write_json(run / GENERATOR_CONFIG, {
        "format": FORMAT, "direction": "visible->infrared", "generator": model.g_v2i.spec,
        "parameters": count_parameters(model.g_v2i), "height": cfg.height, "width": cfg.width,
        "steps": cfg.steps, "seed": cfg.seed, "config": cfg_dict, "data": data_meta,
        "sha256": sha256_file(weights), "train_seconds": round(seconds, 2),
        "seconds_per_step": round(seconds / max(1, cfg.steps), 4), "threads": torch.get_num_threads(),
        "torch": torch.__version__})


# ---------------------------------------------------------------------------------------------
# apply
# ---------------------------------------------------------------------------------------------


def load_generator(path: Path) -> tuple[ResnetGenerator, dict]:
    """G and its generator.json from a run folder (or any folder holding the two files)."""
    folder = Path(path)
    cfg_path, weights = folder / GENERATOR_CONFIG, folder / GENERATOR_WEIGHTS
    for p in (cfg_path, weights):
        if not p.is_file():
            hint = " (training has not finished: rerun `dive baseline cyclegan train`)" if (folder / "config.json").exists() else ""
            raise FileNotFoundError(f"{p}: missing; a CycleGAN generator folder holds {GENERATOR_WEIGHTS} + "
                                    f"{GENERATOR_CONFIG}{hint}")
    try:
        meta = json.loads(cfg_path.read_text())
        spec = meta["generator"]
        gen = ResnetGenerator(int(spec["width"]), int(spec["blocks"]), int(spec["downsamples"]))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{cfg_path}: not a CycleGAN generator config ({err.__class__.__name__}: {err})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{cfg_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    try:
        state = load_file(str(weights))
        gen.load_state_dict(state)
    except Exception as err:  # safetensors and load_state_dict raise several types
        raise ValueError(f"{weights}: does not hold the generator {spec} ({err.__class__.__name__}: {err})") from None
    gen.eval()
    return gen, meta


@dataclass(kw_only=True)
class CycleGANApplyConfig(BaselineSelection):
    """Translate the external identities' visible images with a trained CycleGAN generator."""

    generator: Path = field(metadata={"help": "a `dive baseline cyclegan train` run folder (generator.safetensors + .json)"})
    batch_size: int = field(default=32, metadata={"help": "images per forward pass"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads (0: torch's default)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.generator = Path(self.generator)
        if self.batch_size < 1:
            raise ValueError(f"batch-size must be positive; got {self.batch_size}")


@torch.no_grad()
def translate(gen: ResnetGenerator, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """uint8 (N, 3, H, W) visible images -> uint8 translated images."""
    out = [to_uint8(gen(to_unit(images[i : i + batch_size]))) for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else images.clone()


def apply_cyclegan(cfg: CycleGANApplyConfig, *, progress: bool = True) -> Path:
    gen, meta = load_generator(cfg.generator)
    height, width = int(meta["height"]), int(meta["width"])
    ckpt_hash = sha256_file(Path(cfg.generator) / GENERATOR_WEIGHTS)
    inputs = load_baseline_inputs(cfg.data, cfg.format, cfg.external, cfg.external_format)
    jobs, keys, cams = plan_jobs(inputs, min_images=cfg.min_images, top_k=cfg.top_k, cameras=cfg.cameras, n=cfg.n,
                                 seed=cfg.seed, baseline="cyclegan")
    settings = base_settings("cyclegan", inputs, cams, keys, generator=str(Path(cfg.generator).resolve()),
                             checkpoint_hash=ckpt_hash, min_images=cfg.min_images, top_k=cfg.top_k, n=cfg.n,
                             seed=cfg.seed, height=height, width=width, batch_size=cfg.batch_size,
                             scheduler="CycleGAN visible->infrared (one generator, no camera control)")
    prepare_out(cfg.out, settings, inputs.protected + [Path(cfg.generator)], cfg.force)
    # an identity's jobs are consecutive: translate its distinct source images in one go
    groups: list[list] = []
    for job in jobs:
        if groups and (groups[-1][0].row["dataset"], groups[-1][0].row["pid"]) == (job.row["dataset"], job.row["pid"]):
            groups[-1].append(job)
        else:
            groups.append([job])
    bar = tqdm(total=len(jobs), desc="cyclegan apply", unit="img", disable=not progress)
    with torch_threads(cfg.threads):
        for group in groups:
            sources = sorted({j.source.path for j in group})
            images = torch.stack([rgb_tensor(p, height, width) for p in sources])
            fake = translate(gen, images, cfg.batch_size).permute(0, 2, 3, 1).numpy()
            index = {p: i for i, p in enumerate(sources)}
            for job in group:
                save_image(cfg.out / job.rel, Image.fromarray(fake[index[job.source.path]]))
                job.row |= {"height": height, "width": width, "checkpoint_hash": ckpt_hash,
                            "scheduler": settings["scheduler"]}
                bar.update(1)
    bar.close()
    return finish_out(cfg.out, jobs)
