# size: the three pretraining stages (VAE, text encoder, UNet) share one config, log and resume scheme
"""`dive base pretrain`: train the tiny SD-architecture base from scratch on the captioned web pool.

Three stages, each resumable from its last checkpoint:
1. the VAE, on random square crops of web images (a conv autoencoder is translation-equivariant,
   so crops train it at half the cost), 20% turned grey so it also reconstructs colourless images
   (grey copies of visible images: the base still never sees infrared);
2. the CLIP text encoder alone, contrastively against a small encoder of the VAE's latents (CLIP's
   own objective, on the web pool's image-caption pairs): SD's text encoder arrives pretrained, and
   a tiny one trained only through the UNet's loss learned so slowly that captions barely changed
   the UNet's predictions (5.5% lower loss for the right caption at t=950 after 4,000 steps; see
   docs/base-model.md). Then frozen, as in SD;
3. the UNet (and the text encoder too when stage 2 is off), on the VAE's latents of every web image
   (and its mirror image), noise-prediction MSE with min-SNR weighting, captions dropped 10% of the
   time so classifier-free guidance works.

Every step's randomness (batch, noise, timesteps, dropout) comes from a generator seeded by
(seed, stage, step), so a resumed run continues exactly the same loss curve.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from dive import defaults
from dive.base.models import (
    TinySDConfig,
    build_text_encoder,
    build_unet,
    build_vae,
    count_parameters,
    save_base,
    training_scheduler,
)
from dive.base.tokenizer import load_tokenizer, write_tokenizer_files
from dive.utils.config import config_to_dict
from dive.utils.diffusion import diffusion_loss, encode_latents
from dive.utils.io import load_rgb_tensor, require_safetensors, save_image, write_json
from dive.utils.state import (
    latest_checkpoint,
    load_training_state,
    prune_checkpoints,
    save_training_state,
    step_generator,
    truncate_log,
    warmup_cosine,
)
from dive.utils.threads import torch_threads

PREVIEW_PROMPTS = (
    "a photo of a tall medium person, seen from the front, wearing a red sweater and blue pants and black shoes, with short black hair",
    "a photo of a average slim person, seen from the back, wearing a yellow shirt and black shorts and white shoes, with long blonde hair, carrying a blue backpack",
    "a photo of a short broad person, seen from the side, wearing a green and white hstripes sweater and gray pants and brown shoes, bald",
    "a photo of a tall slim person, seen from the front, wearing a white and navy checks shirt and brown skirt and red shoes, with ponytail brown hair, wearing a red cap",
)


@dataclass
class BasePretrainConfig:
    """Pretraining of the tiny base. The defaults (base v3) take about 70 minutes on a 2-core CPU."""

    data: Path = field(metadata={"help": "a SynthVI world (its web/ pool is used)"})
    out: Path = field(default=defaults.RUNS / "base-pretrain" / "model", metadata={
        "help": "final diffusers folder (under checkpoints/ only with --force: shipped models are not overwritten)"})
    run_dir: Path = field(default=Path("runs/base-pretrain"), metadata={"help": "checkpoints, logs, previews (resumable)"})
    seed: int = field(default=0, metadata={"help": "seed of every random step"})
    vae_steps: int = field(default=6000, metadata={"help": "VAE training steps (v2's 2,000 left its loss still falling and blurred checks away)"})
    vae_batch: int = field(default=32, metadata={"help": "VAE batch size"})
    vae_lr: float = field(default=1e-3, metadata={"help": "VAE learning rate (AdamW)"})
    vae_kl_weight: float = field(default=1e-6, metadata={"help": "KL weight of the VAE loss"})
    vae_crop: int = field(default=64, metadata={"help": "square crop size for VAE training (0: full images)"})
    text_steps: int = field(default=600, metadata={
        "help": "contrastive (CLIP) pretraining steps of the text encoder before the UNet stage; it is then "
                "frozen (0: no such stage, the text encoder trains with the UNet)"})
    text_batch: int = field(default=256, metadata={"help": "image-caption pairs per contrastive step"})
    text_lr: float = field(default=1e-3, metadata={"help": "contrastive stage peak learning rate (AdamW)"})
    steps: int = field(default=3000, metadata={"help": "UNet + text encoder training steps"})
    batch_size: int = field(default=32, metadata={"help": "UNet batch size"})
    lr: float = field(default=5e-4, metadata={"help": "UNet (+ text encoder) peak learning rate (AdamW)"})
    warmup: int = field(default=200, metadata={"help": "linear warm-up steps, then cosine decay to 10%"})
    caption_dropout: float = field(default=0.1, metadata={"help": "chance of training on the empty caption"})
    snr_gamma: float = field(default=5.0, metadata={"help": "min-SNR loss weighting gamma (0: plain MSE)"})
    save_every: int = field(default=250, metadata={"help": "checkpoint every N steps (both stages)"})
    preview_every: int = field(default=500, metadata={"help": "fixed-seed preview grid every N UNet steps (0: off)"})
    max_images: int = field(default=0, metadata={"help": "use only the first N web images (0: all)"})
    threads: int = field(default=2, metadata={"help": "torch CPU threads"})
    text_time_embedding: bool = field(default=True, metadata={
        "help": "pooled-text pathway into the UNet's timestep embedding (sets model.text_time_embedding; "
                "the shipped base was trained without it: --no-text-time-embedding)"})
    unet_channels: tuple[int, ...] = field(default=(), metadata={
        "help": "UNet block channels, e.g. 32 64 128 for base v2 (default: the model config's, 64 128 192)"})
    vae_lr_decay: bool = field(default=True, metadata={
        "help": "cosine-decay the VAE learning rate to 10% (base v2 kept it constant: --no-vae-lr-decay)"})
    continue_from: Path | None = field(default=None, metadata={
        "help": "a base this command made (its dive_base.json): keep its VAE, tokenizer and frozen text encoder and "
                "train its UNet `steps` more (a warm restart of the schedule, on batches the first run did not draw); "
                "the model sizes are that base's"})
    force: bool = field(default=False, metadata={"help": "allow --out inside the repository's checkpoints/ folder"})
    model: TinySDConfig = field(default_factory=TinySDConfig, metadata={"cli": False})

    def __post_init__(self) -> None:
        shipped_root = (defaults.REPO_ROOT / defaults.CHECKPOINTS).resolve()
        out = Path(self.out).resolve()
        if not self.force and (out == shipped_root or shipped_root in out.parents):
            raise ValueError(f"--out {self.out}: inside the shipped checkpoints/ folder; write under runs/ "
                             "(the default) or pass --force to replace a shipped model")
        synced = {"text_time_embedding": self.text_time_embedding}
        if self.unet_channels:
            if len(self.unet_channels) != 3:
                raise ValueError(f"unet_channels: three block widths expected, got {tuple(self.unet_channels)}")
            synced["unet_channels"] = tuple(self.unet_channels)
        if any(getattr(self.model, k) != v for k, v in synced.items()):
            self.model = replace(self.model, **synced)


def load_web_pool(data: Path, max_images: int, height: int, width: int) -> tuple[torch.Tensor, list[str]]:
    from dive.data.registry import load_dataset

    pool = load_dataset("synthvi", data).web_pool()
    if max_images:
        pool = pool[:max_images]
    if not pool:
        raise ValueError(f"{data}: the web pool is empty")
    images = load_rgb_tensor([p for p, _ in pool], height, width, desc="loading web pool")
    return images, [c for _, c in pool]


def to_unit(x: torch.Tensor) -> torch.Tensor:
    return x.float().div(127.5).sub(1.0)


def _append_log(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


# ---------------------------------------------------------------------------------------------
# Stage 1: VAE
# ---------------------------------------------------------------------------------------------


def train_vae(cfg: BasePretrainConfig, images: torch.Tensor, log: Path, progress: bool = True):
    stage_dir = Path(cfg.run_dir) / "vae"
    vae = build_vae(cfg.model)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    start = 0
    ckpt = latest_checkpoint(stage_dir)
    if ckpt is not None:
        start = load_training_state(ckpt, modules={"vae": vae}, optimizer=opt)["step"]
    truncate_log(log, start, keep=lambda row: row.get("stage") != "vae")  # also a run killed before its first checkpoint

    vae.train()
    N, _, H, W = images.shape
    crop = cfg.vae_crop if cfg.vae_crop and cfg.vae_crop <= min(H, W) else 0
    bar = tqdm(range(start, cfg.vae_steps), initial=start, total=cfg.vae_steps, desc="vae", disable=not progress)
    for step in bar:
        g = step_generator(cfg.seed, 1, step)
        idx = torch.randint(0, N, (cfg.vae_batch,), generator=g)
        x = to_unit(images[idx])
        if crop:
            oy = int(torch.randint(0, H - crop + 1, (1,), generator=g))
            ox = int(torch.randint(0, W - crop + 1, (1,), generator=g))
            x = x[:, :, oy : oy + crop, ox : ox + crop]
        grey = torch.rand(cfg.vae_batch, generator=g) < 0.2
        x = torch.where(grey[:, None, None, None], x.mean(1, keepdim=True).expand_as(x), x)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        rec = vae.decode(z).sample
        kl = post.kl().mean() / x[0].numel()
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + cfg.vae_kl_weight * kl
        for group in opt.param_groups:
            group["lr"] = cfg.vae_lr * (warmup_cosine(step, 100, cfg.vae_steps) if cfg.vae_lr_decay else min(1.0, (step + 1) / 100))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        _append_log(log, {"stage": "vae", "step": step + 1, "loss": loss.item()})
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.vae_steps:
            save_training_state(stage_dir / f"checkpoint-{step + 1}", modules={"vae": vae}, optimizer=opt,
                                meta={"step": step + 1})
            prune_checkpoints(stage_dir, 2)
    vae.eval()
    return vae


@torch.no_grad()
def standardize_latents(vae, mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold a per-channel standardisation of the latents into the VAE's 1x1 quant convs.

    The raw latent channels had means up to 1.3 and stds from 0.4 to 1.3 (one global scaling
    factor cannot fix both); after folding, every channel has mean 0 and std 1, `scaling_factor`
    is 1 and `StableDiffusionPipeline` needs nothing new (SD 1.x pipelines apply no shift).
    Returns the posterior means / stds in the new latent space.
    """
    mu = mean.mean(dim=(0, 2, 3))
    sigma = mean.std(dim=(0, 2, 3)).clamp_min(1e-6)
    c = len(mu)
    q, pq = vae.quant_conv, vae.post_quant_conv
    q.weight[:c] /= sigma[:, None, None, None]
    q.bias[:c] = (q.bias[:c] - mu) / sigma
    q.bias[c:] -= 2 * sigma.log()  # log-variance
    pq.bias += (pq.weight[:, :, 0, 0] * mu[None, :]).sum(1)
    pq.weight *= sigma[None, :, None, None]
    vae.register_to_config(scaling_factor=1.0)
    shape = (1, c, 1, 1)
    return (mean - mu.view(shape)) / sigma.view(shape), std / sigma.view(shape)


# ---------------------------------------------------------------------------------------------
# Stage 2: the text encoder, contrastively (CLIP's objective)
# ---------------------------------------------------------------------------------------------


class LatentImageEncoder(torch.nn.Module):
    """CLIP's image tower for stage 2, on VAE latents (cheap: 16x8 at 128x64). Only the text
    encoder is kept; this tower exists to give captions something to be contrasted against."""

    def __init__(self, in_channels: int, dim: int, width: int = 64):
        super().__init__()
        act = torch.nn.SiLU()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(in_channels, width, 3, padding=1), act,
            torch.nn.Conv2d(width, width, 3, padding=1), act,
            torch.nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), act,
            torch.nn.Conv2d(2 * width, 2 * width, 3, padding=1), act,
            torch.nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), act,
            torch.nn.AdaptiveAvgPool2d((2, 1)), torch.nn.Flatten(),
            torch.nn.Linear(8 * width, dim),
        )

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.net(latents)


def contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric InfoNCE over a batch of matching pairs (row i of each is one pair)."""
    image_emb = F.normalize(image_emb, dim=-1)
    text_emb = F.normalize(text_emb, dim=-1)
    logits = logit_scale.exp().clamp(max=100.0) * image_emb @ text_emb.T
    target = torch.arange(len(logits))
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def train_text_encoder(cfg: BasePretrainConfig, text_encoder, latents: torch.Tensor, ids: torch.Tensor, log: Path,
                       progress: bool = True):
    """Stage 2: `latents` are the (2N) standardised posterior means (mirrors second), `ids` the N
    tokenised captions. Returns the text encoder, frozen."""
    stage_dir = Path(cfg.run_dir) / "text"
    dim = cfg.model.text_width
    image_encoder = LatentImageEncoder(latents.shape[1], dim)
    text_proj = torch.nn.Linear(dim, dim, bias=False)
    logit_scale = torch.nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))
    modules = {"text_encoder": text_encoder, "image_encoder": image_encoder, "text_proj": text_proj}
    params = [p for m in modules.values() for p in m.parameters()] + [logit_scale]
    opt = torch.optim.AdamW(params, lr=cfg.text_lr, weight_decay=1e-2)
    start = 0
    ckpt = latest_checkpoint(stage_dir)
    if ckpt is not None:
        state = load_training_state(ckpt, modules=modules, optimizer=opt)
        start = state["step"]
        logit_scale.data.fill_(state["logit_scale"])
    truncate_log(log, start, keep=lambda row: row.get("stage") != "text")

    for m in modules.values():
        m.train()
    N = len(ids)
    eos = text_encoder.config.eos_token_id
    bar = tqdm(range(start, cfg.text_steps), initial=start, total=cfg.text_steps, desc="text (contrastive)",
               disable=not progress)
    for step in bar:
        g = step_generator(cfg.seed, 3, step)
        idx = torch.randperm(2 * N, generator=g)[: cfg.text_batch]
        cap = ids[idx % N]
        # the pooled output is read at the first end token and attention is causal, so the padding
        # after the longest caption changes nothing: cut it (about 1.5x faster)
        cap = cap[:, : int((cap == eos).int().argmax(1).max()) + 1]
        text_emb = text_proj(text_encoder(cap).pooler_output)
        loss = contrastive_loss(image_encoder(latents[idx]), text_emb, logit_scale)
        lr = cfg.text_lr * warmup_cosine(step, min(100, cfg.text_steps // 10), cfg.text_steps)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        _append_log(log, {"stage": "text", "step": step + 1, "loss": loss.item(), "lr": lr})
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.text_steps:
            save_training_state(stage_dir / f"checkpoint-{step + 1}", modules=modules, optimizer=opt,
                                meta={"step": step + 1, "logit_scale": logit_scale.item()})
            prune_checkpoints(stage_dir, 2)
    text_encoder.eval()
    return text_encoder.requires_grad_(False)


# ---------------------------------------------------------------------------------------------
# Stage 3: UNet (+ text encoder when stage 2 is off)
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def encode_captions(text_encoder, ids: torch.Tensor, batch: int = 512, progress: bool = True) -> torch.Tensor:
    """(N, L) token ids -> (N, L, width) last hidden states of a frozen text encoder."""
    out = [text_encoder(ids[i:i + batch])[0] for i in tqdm(range(0, len(ids), batch), desc="caption states",
                                                           disable=not progress)]
    return torch.cat(out)


def lr_at(cfg: BasePretrainConfig, step: int) -> float:
    return cfg.lr * warmup_cosine(step, cfg.warmup, cfg.steps)


@torch.no_grad()
def preview_grid(tokenizer, text_encoder, vae, unet, prompts, *, seed: int, height: int, width: int, steps: int = 20,
                 guidance: float = 3.0, prediction_type: str = "v_prediction") -> Image.Image:
    from diffusers import StableDiffusionPipeline

    from dive.base.models import sampling_scheduler

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=sampling_scheduler(prediction_type), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(seed)
    imgs = pipe(list(prompts) * 2, height=height, width=width, num_inference_steps=steps, guidance_scale=guidance,
                generator=g, output_type="np").images
    imgs = (imgs * 255).round().astype(np.uint8)
    n = len(imgs)
    return Image.fromarray(np.concatenate(list(imgs), axis=1)) if n else Image.new("RGB", (width, height))


def pretrain(cfg: BasePretrainConfig, *, progress: bool = True) -> Path:
    with torch_threads(cfg.threads):  # scoped: a caller's own thread setting comes back afterwards
        return _pretrain(cfg, progress=progress)


def _pretrain(cfg: BasePretrainConfig, *, progress: bool) -> Path:
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", config_to_dict(cfg) | {"model": config_to_dict(cfg.model)})
    log = run_dir / "loss.jsonl"
    images, captions = load_web_pool(Path(cfg.data), cfg.max_images, cfg.model.height, cfg.model.width)
    if cfg.continue_from is not None:  # the source base's own tokenizer, VAE and text encoder
        return _continue_unet(cfg, images, captions, log, progress)

    tok_dir = write_tokenizer_files(run_dir / "tokenizer", model_max_length=cfg.model.max_length, seed=cfg.seed)
    tokenizer = load_tokenizer(tok_dir)
    torch.manual_seed(cfg.seed)
    vae = train_vae(cfg, images, log, progress)
    vae.requires_grad_(False)
    mean, std = encode_latents(vae, images, progress=progress)
    mean, std = standardize_latents(vae, mean, std)
    return _train_unet(cfg, tokenizer, tok_dir, vae, mean, std, captions, log, progress)


def _continue_unet(cfg: BasePretrainConfig, images, captions, log: Path, progress: bool) -> Path:
    """`--continue-from DIR`: DIR's VAE (already standardised), tokenizer and text encoder; its UNet
    trains on. Only a base with a frozen text encoder (a text stage) can continue."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    src = Path(cfg.continue_from)
    try:
        made = json.loads((src / "dive_base.json").read_text())["config"]
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"{src / 'dive_base.json'}: unreadable ({e}); --continue-from takes a base `dive base pretrain` wrote") from e
    if not made.get("text_steps"):
        raise ValueError(f"{src}: its text encoder trained with the UNet (text_steps 0); only a base with a frozen "
                         "text encoder can continue")
    model = TinySDConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in made["model"].items()})
    if (model.height, model.width) != (cfg.model.height, cfg.model.width):
        raise ValueError(f"{src}: trained at {model.height}x{model.width}, this run at {cfg.model.height}x{cfg.model.width}")
    if Path(cfg.out).resolve() == src.resolve():
        raise ValueError(f"--out {cfg.out}: write the continued base to a new folder, not over --continue-from")
    cfg = replace(cfg, model=model, unet_channels=(), text_steps=made["text_steps"],
                  text_time_embedding=model.text_time_embedding)
    tok_dir = src / "tokenizer"
    tokenizer = load_tokenizer(tok_dir)
    require_safetensors(src)
    vae = AutoencoderKL.from_pretrained(str(src / "vae"), use_safetensors=True).requires_grad_(False)
    mean, std = encode_latents(vae, images, progress=progress)
    text_encoder = CLIPTextModel.from_pretrained(str(src / "text_encoder"), use_safetensors=True)
    unet = UNet2DConditionModel.from_pretrained(str(src / "unet"), torch_dtype=torch.float32, use_safetensors=True)
    return _train_unet(cfg, tokenizer, tok_dir, vae, mean, std, captions, log, progress,
                       text_encoder=text_encoder, unet=unet, stream=3, made=made)


def _train_unet(cfg: BasePretrainConfig, tokenizer, tok_dir: Path, vae, mean, std, captions, log: Path, progress: bool,
                *, text_encoder=None, unet=None, stream: int = 2, made: dict | None = None) -> Path:
    """Stage 3 (and 2 when the text encoder is not given): the UNet. `stream` picks the batches'
    random stream: a continued base draws batches its first run did not."""
    run_dir = Path(cfg.run_dir)
    scaling = vae.config.scaling_factor

    ids = tokenizer(captions, padding="max_length", max_length=cfg.model.max_length, truncation=True,
                    return_tensors="pt").input_ids
    empty = tokenizer([""], padding="max_length", max_length=cfg.model.max_length, return_tensors="pt").input_ids

    train_text = cfg.text_steps == 0
    if text_encoder is None:
        torch.manual_seed(cfg.seed + 1)
        text_encoder = build_text_encoder(cfg.model, tokenizer)
        unet = build_unet(cfg.model)
        if not train_text:
            torch.manual_seed(cfg.seed + 2)
            text_encoder = train_text_encoder(cfg, text_encoder, mean, ids, log, progress)
    text_encoder.requires_grad_(train_text)
    params = list(unet.parameters()) + (list(text_encoder.parameters()) if train_text else [])
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-2)
    noise_sched = training_scheduler(cfg.model.prediction_type)
    stage_dir = run_dir / "unet"
    start = 0
    ckpt = latest_checkpoint(stage_dir)
    if ckpt is not None:
        start = load_training_state(ckpt, modules={"unet": unet, "text_encoder": text_encoder}, optimizer=opt)["step"]
    truncate_log(log, start, keep=lambda row: row.get("stage") != "unet")

    unet.train()
    text_encoder.train(train_text)
    N = len(captions)
    caption_ids = torch.cat([ids, empty])  # row N: the empty caption
    frozen_states = None
    if not train_text:  # a frozen text encoder gives each caption one hidden state: compute them once
        frozen_states = encode_captions(text_encoder, caption_ids, progress=progress)
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="unet+text" if train_text else "unet",
               disable=not progress)
    t0 = time.time()
    for step in bar:
        g = step_generator(cfg.seed, stream, step)
        idx = torch.randint(0, 2 * N, (cfg.batch_size,), generator=g)
        lat = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)) * scaling
        noise = torch.randn(lat.shape, generator=g)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (cfg.batch_size,), generator=g)
        noisy = noise_sched.add_noise(lat, noise, t)
        cap = idx % N
        drop = torch.rand(cfg.batch_size, generator=g) < cfg.caption_dropout
        cap[drop] = N  # the empty caption
        if frozen_states is not None:
            hidden = frozen_states[cap]
        else:
            hidden = text_encoder(caption_ids[cap])[0]
        pred = unet(noisy, t, encoder_hidden_states=hidden).sample
        loss = diffusion_loss(noise_sched, pred, lat, noise, t, snr_gamma=cfg.snr_gamma)
        lr = lr_at(cfg, step)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        _append_log(log, {"stage": "unet", "step": step + 1, "loss": loss.item(), "lr": lr})
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
            save_training_state(stage_dir / f"checkpoint-{step + 1}",
                                modules={"unet": unet, "text_encoder": text_encoder}, optimizer=opt,
                                meta={"step": step + 1, "seconds": time.time() - t0})
            prune_checkpoints(stage_dir, 2)
        if cfg.preview_every and ((step + 1) % cfg.preview_every == 0 or step + 1 == cfg.steps):
            unet.eval()
            text_encoder.eval()
            grid = preview_grid(tokenizer, text_encoder, vae, unet, PREVIEW_PROMPTS, seed=cfg.seed,
                                height=cfg.model.height, width=cfg.model.width,
                                prediction_type=cfg.model.prediction_type)
            save_image(run_dir / "previews" / f"step-{step + 1:06d}.png", grid)
            unet.train()
            text_encoder.train(train_text)
    unet.eval()
    text_encoder.eval()
    out = save_base(cfg.out, tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, unet=unet,
                    prediction_type=cfg.model.prediction_type)
    for name in ("vocab.json", "merges.txt"):  # the classic slow-tokenizer files, for older loaders
        shutil.copy(tok_dir / name, out / "tokenizer" / name)
    write_json(out / "dive_base.json", {
        "trained_by": "dive base pretrain",
        "config": config_to_dict(cfg) | {"model": config_to_dict(cfg.model)},
        **({"continued_from": {"path": str(cfg.continue_from), "config": made}} if made else {}),
        "parameters": {"unet": count_parameters(unet), "text_encoder": count_parameters(text_encoder),
                       "vae": count_parameters(vae)},
        "web_images": N,
    })
    return out
