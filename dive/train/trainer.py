# size: one trainer class (model setup, step, checkpoint, exact resume) that reads best whole; packaging beside it
"""`dive train`: DiVE fine-tuning of any diffusers SD-1.x folder.

Trainable: one embedding row per identity token (textual inversion; added to tokenizer and
embedding matrix in ONE resize, initialised from the word "person"; a gradient mask keeps every
other row fixed) and one peft LoRA on the UNet attention (to_q, to_k, to_v, to_out.0). Camera
tokens are plain strings read by the LoRA (the paper) or, with `--camera-mode embedding`, learned
rows too. `--infrared-adapter` adds a second LoRA that only infrared-camera images switch on
(`dive.utils.adapters`). accelerate handles device, mixed precision, gradient accumulation and several processes.

Exact resume: every step's randomness (batch, flips, noise, timesteps) is drawn from a generator
seeded by (seed, step), so no RNG state needs saving and a resumed run continues the same loss
curve; checkpoints hold LoRA, embedding rows, optimizer state and the step.
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from dive.caption.infrared import load_infrared_words
from dive.caption.run import load_captions
from dive.checkpoint import INFRARED_ADAPTER, TOKENS_FILE, TokenTable, reference_path, save_checkpoint
from dive.data.records import Modality
from dive.train.data import TrainingSet, build_training_set, load_sources
from dive.utils.adapters import AdapterGate, MergedLoRAForward
from dive.utils.config import config_to_dict
from dive.utils.device import DTYPES, accelerate_options
from dive.utils.diffusion import diffusion_loss, encode_latents
from dive.utils.io import cast_safetensors, load_rgb, load_rgb_tensor, require_safetensors, save_image, write_json
from dive.utils.state import (
    latest_checkpoint,
    new_dir_beside,
    prune_checkpoints,
    read_training_state,
    save_training_state,
    step_generator,
    truncate_log,
    warmup_cosine,
)
from dive.utils.lock import output_lock
from dive.utils.threads import torch_threads

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
#: which UNet layers carry the LoRA: the attention projections (the paper, diffusers' LoRA recipe);
#: the whole transformer blocks; or everything that renders (+ the ResNet convolutions)
_TRANSFORMER_TARGETS = LORA_TARGETS + ("proj_in", "proj_out", "ff.net.0.proj", "ff.net.2")
LORA_TARGET_SETS: dict[str, tuple[str, ...]] = {
    "attention": LORA_TARGETS,
    "transformer": _TRANSFORMER_TARGETS,
    "all": _TRANSFORMER_TARGETS + ("conv1", "conv2", "conv_shortcut", "time_emb_proj"),
}
TEXT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


@dataclass
class DiVETrainConfig:
    """DiVE fine-tuning. Paper: SD 1.5, rank 128, lr 5e-5, batch 16, 400k steps, 512x256. CPU demo
    defaults (tiny base, 128x64): rank 32, LoRA lr 1e-3, embedding lr 5e-3, batch 32, 4,000 steps."""

    base: Path = field(metadata={"help": "diffusers SD-1.x folder (the shipped tiny base or a real SD 1.5)"})
    data: Path = field(metadata={"help": "the VI dataset (or a SynthVI world, which includes the external set)"})
    out: Path = field(metadata={"help": "run folder: checkpoints, loss log, previews, config"})
    data_format: str | None = field(default=None, metadata={"help": "layout of --data (auto-detected)"})
    external: Path | None = field(default=None, metadata={"help": "external visible dataset (not with a SynthVI world)"})
    external_format: str | None = field(default=None, metadata={"help": "layout of --external (auto-detected)"})
    min_images: int = field(default=12, metadata={"help": "external ids need at least this many images"})
    granularity: str = field(default="camera", metadata={"help": "one token per camera or per modality", "choices": ["camera", "modality"]})
    camera_mode: str = field(default="embedding", metadata={"help": "camera tokens: learned embeddings (also read by the LoRA; measured better, see README) or frozen strings read by the LoRA only (the paper)", "choices": ["string", "embedding"]})
    vi_modalities: str = field(default="both", metadata={"help": "VI images used: both modalities or infrared only (ablation)", "choices": ["both", "infrared"]})
    infrared_share: float = field(default=0.0, metadata={
        "help": "fraction of each batch drawn from the infrared images (0: uniform over all images, ~20% infrared "
                "in SynthVI); identity tokens shared with the far more common visible images learned to ignore "
                "infrared (see docs/infrared-identity.md)"})
    identity_modalities: str = field(default="both", metadata={
        "help": "images whose loss trains the identity tokens: both modalities (the paper) or visible only; with "
                "visible, infrared images train the LoRA and camera tokens but cannot write an id's infrared look "
                "into its token, so the LoRA must learn to draw a visible-learned identity in infrared, which is "
                "all the external ids have",
        "choices": ["both", "visible"]})
    captions: Path | None = field(default=None, metadata={
        "help": "captions file (`dive caption`): every prompt also names what its identity looks like, "
                "\"a [camera] photo of [identity] person, wearing a ...\"; kept in tokens.json, so generation uses them"})
    infrared_words: Path | None = field(default=None, metadata={
        "help": "infrared words file (`dive infrared-words`): in infrared prompts each caption colour is named by "
                "its infrared grey (\"red sweater\" -> \"white sweater\"), so the LoRA need not learn that lookup; "
                "kept in tokens.json. Needs --captions"})
    seed: int = field(default=0, metadata={"help": "seed of every random step"})
    steps: int = field(default=4000, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=32, metadata={"help": "images per optimizer step (all processes, all accumulation)"})
    grad_accum: int = field(default=1, metadata={"help": "gradient accumulation steps"})
    lr: float = field(default=1e-3, metadata={"help": "LoRA learning rate (paper: 5e-5 at 400k steps)"})
    embedding_lr: float = field(default=5e-3, metadata={"help": "learning rate of the token embeddings"})
    embedding_max_norm: float = field(default=0.0, metadata={
        "help": "after each step, shrink learned token rows longer than this (0: off); the base's word rows have norm ~0.25-0.3"})
    warmup: int = field(default=100, metadata={"help": "linear warm-up steps, then cosine decay to 10%"})
    rank: int = field(default=32, metadata={"help": "LoRA rank (paper: 128); alpha = rank"})
    lora_targets: str = field(default="attention", metadata={
        "help": "UNet layers with a LoRA: attention projections (the paper), whole transformer blocks, or all "
                "(+ ResNet convolutions; a tiny base's attention is a small part of its renderer)",
        "choices": list(LORA_TARGET_SETS)})
    merged_lora: bool = field(default=True, metadata={
        "help": "compute each UNet LoRA linear layer as one matmul with W + s*B*A (autograd through A and B): the "
                "same function and parameters, rounded differently, a faster step (docs/throughput.md); false: "
                "peft's x*W + s*(x*A)*B"})
    infrared_adapter: bool = field(default=False, metadata={
        "help": "experiment: a second UNet LoRA (same layers and rank) that is on for infrared camera images only: the shared "
                "LoRA and the identity tokens keep what both modalities share, the infrared LoRA turns it into "
                "infrared without having to read the camera token (see dive/utils/adapters.py); saved as "
                "infrared_lora_weights.safetensors. On SynthVI it did not carry identity into infrared (docs/infrared-identity.md)"})
    init_from: Path | None = field(default=None, metadata={
        "help": "start from this DiVE checkpoint's token embeddings and LoRA(s) (its token table must be this run's: "
                "same data and token settings)"})
    train_parts: str = field(default="all", metadata={
        "help": "what trains: everything, or only the infrared adapter on infrared images only (a second stage "
                "after --init-from: identity tokens and the shared LoRA stay as they are, so visible renders do not "
                "change and every image of the batch teaches the infrared adapter)",
        "choices": ["all", "infrared-adapter"]})
    text_rank: int = field(default=0, metadata={
        "help": "experiment: rank of a LoRA on the text encoder's attention (0: off, as the paper: CLIP stays frozen). "
                "The camera token precedes the identity token, so the encoder could re-map an identity per camera"})
    init_word: str = field(default="person", metadata={"help": "word whose embedding initialises identity tokens"})
    caption_dropout: float = field(default=0.05, metadata={"help": "chance of the empty prompt (keeps guidance usable)"})
    snr_gamma: float = field(default=5.0, metadata={"help": "min-SNR loss weighting (0: plain MSE)"})
    hflip: bool = field(default=True, metadata={"help": "random horizontal flip"})
    dtype: str | None = field(default=None, metadata={
        "help": "mixed precision: fp32, bf16 or fp16 (fp16 needs a GPU); the trainable weights stay float32. None: "
                "--mixed-precision", "choices": list(DTYPES)})
    device: str = field(default="auto", metadata={"help": "auto (a GPU when present), cpu, cuda or mps"})
    mixed_precision: str = field(default="no", metadata={"help": "accelerate mixed precision (older spelling of --dtype)", "choices": ["no", "bf16", "fp16"]})
    cpu: bool = field(default=False, metadata={"help": "force CPU even when a GPU is present (= --device cpu)"})
    save_every: int = field(default=500, metadata={"help": "checkpoint every N steps"})
    keep_checkpoints: int = field(default=2, metadata={"help": "how many checkpoints to keep"})
    preview_every: int = field(default=500, metadata={"help": "fixed-seed preview grid every N steps (0: off)"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: leave as is)"})
    stop_after: int = field(default=0, metadata={"help": "stop (as if killed) after this many steps of this invocation; for tests"})


def load_images(records, height: int, width: int) -> torch.Tensor:
    return load_rgb_tensor([r.path for r in records], height, width, resize=True)


def draw_indices(g: torch.Generator, batch: int, num_images: int, *, hflip: bool, infrared: torch.Tensor | None = None,
                 infrared_share: float = 0.0) -> torch.Tensor:
    """One batch of latent indices in [0, 2N) with hflip (mirror of image i = i + N), else [0, N).
    With `infrared_share` > 0, each slot is an infrared image (indices in `infrared`) with that
    probability and one of the other images otherwise."""
    n = 2 * num_images if hflip else num_images
    if not infrared_share:
        return torch.randint(0, n, (batch,), generator=g)
    if infrared is None or not 0 < len(infrared) < num_images:
        raise ValueError("infrared_share needs both infrared and other images in the training set")
    is_ir = torch.zeros(num_images, dtype=torch.bool)
    is_ir[infrared] = True
    other = (~is_ir).nonzero().flatten()
    pick_ir = torch.rand(batch, generator=g) < infrared_share
    idx = torch.where(pick_ir, infrared[torch.randint(0, len(infrared), (batch,), generator=g)],
                      other[torch.randint(0, len(other), (batch,), generator=g)])
    if hflip:
        idx = idx + num_images * torch.randint(0, 2, (batch,), generator=g)
    return idx


def add_tokens(tokenizer, text_encoder, tokens: list[str], init_words: list[str]) -> torch.Tensor:
    """Add every token in ONE resize, rows initialised from their words; returns the new rows' ids."""
    added = tokenizer.add_tokens(tokens)
    if added != len(tokens):
        raise ValueError(f"{len(tokens) - added} of the new tokens already exist in the tokenizer")
    ids = tokenizer.convert_tokens_to_ids(tokens)
    old = text_encoder.get_input_embeddings().weight.shape[0]
    text_encoder.resize_token_embeddings(len(tokenizer))
    emb = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        for tid, word in zip(ids, init_words):
            wid = tokenizer(word, add_special_tokens=False).input_ids
            if not wid:
                raise ValueError(f"init word {word!r} has no token")
            emb[tid] = emb[wid].mean(0)
    if min(ids) < old:
        raise RuntimeError("added token ids overlap the original vocabulary")
    return torch.tensor(ids)


class DiVETrainer:
    """Holds the models and data of one run; `train()` runs (or resumes) it."""

    def __init__(self, cfg: DiVETrainConfig, training_set: TrainingSet | None = None, progress: bool = True):
        self.cfg = cfg
        self.progress = progress
        with torch_threads(cfg.threads):  # for this run's own work only, not the caller's process
            self._setup(training_set)

    def _setup(self, training_set: TrainingSet | None) -> None:
        cfg, progress = self.cfg, self.progress
        # a bad or absent --device / --dtype: one line, before the seconds of importing the model libraries
        cpu, mixed = accelerate_options(cfg.device, cfg.dtype, cpu=cfg.cpu, mixed_precision=cfg.mixed_precision)
        from accelerate import Accelerator
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from peft import LoraConfig
        from transformers import CLIPTextModel, CLIPTokenizer

        self.accelerator = Accelerator(cpu=cpu, mixed_precision=mixed, gradient_accumulation_steps=cfg.grad_accum)
        acc = self.accelerator
        world = acc.num_processes
        if cfg.batch_size % (world * cfg.grad_accum):
            raise ValueError(f"batch_size {cfg.batch_size} must divide by processes x grad_accum = {world * cfg.grad_accum}")
        self.micro_batch = cfg.batch_size // (world * cfg.grad_accum)
        base = Path(cfg.base)
        for sub in ("tokenizer", "text_encoder", "unet", "vae", "scheduler"):
            if not (base / sub).is_dir():
                raise FileNotFoundError(f"{base / sub}: missing; --base must be a diffusers SD-1.x folder")
        self.tokenizer = CLIPTokenizer.from_pretrained(base / "tokenizer")
        require_safetensors(base)
        self.text_encoder = CLIPTextModel.from_pretrained(base / "text_encoder", use_safetensors=True)
        self.vae = AutoencoderKL.from_pretrained(base / "vae", use_safetensors=True)
        self.unet = UNet2DConditionModel.from_pretrained(base / "unet", use_safetensors=True)
        self.noise_scheduler = DDPMScheduler.from_pretrained(base / "scheduler")
        for m in (self.text_encoder, self.vae, self.unet):
            m.requires_grad_(False)

        if training_set is None:
            training_set = training_set_from_config(config_to_dict(cfg))
        self.ts = training_set
        self.is_infrared = torch.tensor([r.modality is Modality.INFRARED for r in training_set.records], dtype=torch.bool)
        table = training_set.table
        learned = table.learned_tokens
        init = [cfg.init_word] * len(table.identities) + ["camera"] * (len(learned) - len(table.identities))
        self.orig_vocab = len(self.tokenizer)
        self.new_ids = add_tokens(self.tokenizer, self.text_encoder, learned, init)
        emb = self.text_encoder.get_input_embeddings().weight
        emb.requires_grad_(True)
        self.frozen_rows = emb.detach()[: self.orig_vocab].clone()
        mask = torch.zeros(emb.shape[0], 1)
        mask[self.new_ids] = 1.0
        emb.register_hook(lambda g: g * mask.to(g.device, g.dtype))
        # identity_modalities="visible": per-batch (sample, position) mask of the identity-token positions
        # of infrared samples, whose embeddings enter the encoder detached (no gradient to the token)
        if cfg.identity_modalities not in ("both", "visible"):
            raise ValueError(f"identity_modalities must be 'both' or 'visible'; got {cfg.identity_modalities!r}")
        if cfg.identity_modalities == "visible" and cfg.vi_modalities == "infrared":
            raise ValueError("identity_modalities='visible' with vi_modalities='infrared' would never train the VI "
                             "identity tokens; use vi_modalities='both' or identity_modalities='both'")
        self.identity_ids = self.new_ids[: len(table.identities)]
        self._detach_mask: torch.Tensor | None = None
        self.text_encoder.get_input_embeddings().register_forward_hook(self._detach_identity_rows)

        if cfg.lora_targets not in LORA_TARGET_SETS:
            raise ValueError(f"lora_targets must be one of {sorted(LORA_TARGET_SETS)}; got {cfg.lora_targets!r}")
        self.lora_targets = LORA_TARGET_SETS[cfg.lora_targets]
        torch.manual_seed(cfg.seed)  # peft's gaussian LoRA init draws from the global generator
        self.unet.add_adapter(LoraConfig(r=cfg.rank, lora_alpha=cfg.rank, init_lora_weights="gaussian",
                                         target_modules=list(self.lora_targets)))
        self.gate: AdapterGate | None = None
        if cfg.infrared_adapter:
            if not self.is_infrared.any():
                raise ValueError("infrared_adapter: the training set has no infrared images to train it on")
            torch.manual_seed(cfg.seed + 2)
            self.unet.add_adapter(LoraConfig(r=cfg.rank, lora_alpha=cfg.rank, init_lora_weights="gaussian",
                                             target_modules=list(self.lora_targets)), adapter_name=INFRARED_ADAPTER)
            self.unet.set_adapters(["default", INFRARED_ADAPTER])  # both active (and trainable); the gate switches
            self.gate = AdapterGate(self.unet, INFRARED_ADAPTER)
        self.merged_lora = MergedLoRAForward(self.unet, skip=(INFRARED_ADAPTER,)) if cfg.merged_lora else None
        if cfg.init_from is not None:
            self._load_init(Path(cfg.init_from), emb)
        if cfg.train_parts not in ("all", "infrared-adapter"):
            raise ValueError(f"train_parts must be 'all' or 'infrared-adapter'; got {cfg.train_parts!r}")
        if cfg.train_parts == "infrared-adapter":
            if self.gate is None or cfg.text_rank:
                raise ValueError("train_parts='infrared-adapter' needs infrared_adapter=True (and no text_rank)")
            emb.requires_grad_(False)
            ir_params = [p for n, p in self.unet.named_parameters() if f".{INFRARED_ADAPTER}." in n]
            for p in self.unet.parameters():
                p.requires_grad_(False)
            for p in ir_params:
                p.requires_grad_(True)
            groups = [{"params": ir_params, "lr": cfg.lr, "weight_decay": 1e-2}]
        else:
            lora_params = [p for p in self.unet.parameters() if p.requires_grad]
            groups = [{"params": lora_params, "lr": cfg.lr, "weight_decay": 1e-2},
                      {"params": [emb], "lr": cfg.embedding_lr, "weight_decay": 0.0}]
        if cfg.text_rank < 0:
            raise ValueError(f"text_rank must be >= 0; got {cfg.text_rank}")
        if cfg.text_rank:
            from peft import inject_adapter_in_model

            torch.manual_seed(cfg.seed + 1)
            inject_adapter_in_model(LoraConfig(r=cfg.text_rank, lora_alpha=cfg.text_rank, init_lora_weights="gaussian",
                                               target_modules=list(TEXT_LORA_TARGETS)), self.text_encoder)
            emb.requires_grad_(True)  # peft leaves only adapter weights trainable; the token rows train too
            if emb is not self.text_encoder.get_input_embeddings().weight:
                raise RuntimeError("the text-encoder LoRA replaced the token embedding table")
            groups.append({"params": list(self._text_lora_params().values()), "lr": cfg.lr, "weight_decay": 1e-2})
        self.optimizer = torch.optim.AdamW(groups)
        self.base_lrs = [g["lr"] for g in groups]

        # data: images -> latents once (frozen VAE), prompts -> token ids once
        dev = acc.device
        self.vae.to(dev)
        h = int(self.unet.config.sample_size[0] if isinstance(self.unet.config.sample_size, (list, tuple)) else self.unet.config.sample_size)
        w = int(self.unet.config.sample_size[1] if isinstance(self.unet.config.sample_size, (list, tuple)) else self.unet.config.sample_size)
        scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.height, self.width = h * scale, w * scale
        # checked before the minutes of image loading and encoding
        self.infrared_index = torch.nonzero(self.is_infrared).flatten()
        if not 0.0 <= cfg.infrared_share < 1.0:
            raise ValueError(f"infrared_share must be in [0, 1); got {cfg.infrared_share}")
        if cfg.infrared_share and not 0 < len(self.infrared_index) < len(training_set.records):
            raise ValueError(f"infrared_share {cfg.infrared_share}: the training set has {len(self.infrared_index)} "
                             f"infrared images of {len(training_set.records)}; it needs both kinds")
        longest = max(len(ids) for ids in self.tokenizer(sorted(set(training_set.prompts))).input_ids)
        if longest > self.tokenizer.model_max_length:  # truncation would silently drop words (captions are long)
            raise ValueError(f"a training prompt is {longest} tokens; the text encoder reads "
                             f"{self.tokenizer.model_max_length}: shorten the captions or the template")
        images = load_images(training_set.records, self.height, self.width)
        self.mean, self.std = encode_latents(self.vae, images, device=dev, flip=cfg.hflip, progress=progress)
        self.num_images = len(images)
        self.ids = self.tokenizer(training_set.prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                                  truncation=True, return_tensors="pt").input_ids
        self.empty_ids = self.tokenizer([""], padding="max_length", max_length=self.tokenizer.model_max_length,
                                        return_tensors="pt").input_ids
        self.unet, self.text_encoder, self.optimizer = acc.prepare(self.unet, self.text_encoder, self.optimizer)
        self.run_dir = Path(cfg.out)
        self.start_step = 0

    def _load_init(self, ckpt: Path, emb: torch.Tensor) -> None:
        """Token rows and LoRA(s) of an earlier checkpoint of the same token table (--init-from)."""
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        from dive.checkpoint import EMBEDS_FILE, INFRARED_LORA_FILE, LORA_FILE, check_checkpoint_dir, has_infrared_adapter

        ckpt = check_checkpoint_dir(ckpt)
        if not TokenTable.load(ckpt / TOKENS_FILE).describes_same_tokens(self.ts.table):
            raise ValueError(f"{ckpt / TOKENS_FILE}: --init-from needs a checkpoint of this run's token table "
                             "(same data, min_images, granularity, camera_mode, vi_modalities, seed)")
        rows = load_file(str(ckpt / EMBEDS_FILE))
        with torch.no_grad():
            emb[self.new_ids] = torch.stack([rows[t] for t in self.ts.table.learned_tokens]).to(emb.dtype)
        files = [(LORA_FILE, "default")]
        if has_infrared_adapter(ckpt):
            if self.gate is None:
                raise ValueError(f"{ckpt / INFRARED_LORA_FILE}: the checkpoint has an infrared adapter; "
                                 "this run needs --infrared-adapter to continue it")
            files.append((INFRARED_LORA_FILE, INFRARED_ADAPTER))
        for name, adapter in files:
            state = {k[len("unet."):]: v for k, v in load_file(str(ckpt / name)).items() if k.startswith("unet.")}
            res = set_peft_model_state_dict(self.unet, state, adapter_name=adapter)
            missing = [k for k in getattr(res, "missing_keys", []) if f".{adapter}." in k and "lora_" in k]
            if getattr(res, "unexpected_keys", None) or missing or not state:
                raise ValueError(f"{ckpt / name}: its LoRA layers differ from this run's (lora_targets, rank)")

    # -- state ------------------------------------------------------------------------------------
    def _lora_state(self, adapter: str = "default") -> dict:
        from peft.utils import get_peft_model_state_dict

        return get_peft_model_state_dict(self.accelerator.unwrap_model(self.unet), adapter_name=adapter)

    def _text_lora_params(self) -> dict[str, torch.nn.Parameter]:
        """{"<module>.lora_A": A, "<module>.lora_B": B} of the text encoder (module names of the
        plain CLIPTextModel, what `dive.checkpoint.merge_text_lora` looks up)."""
        out = {}
        for name, mod in self.accelerator.unwrap_model(self.text_encoder).named_modules():
            if hasattr(mod, "lora_A") and "default" in mod.lora_A:
                out[f"{name}.lora_A"] = mod.lora_A["default"].weight
                out[f"{name}.lora_B"] = mod.lora_B["default"].weight
        return out

    def _embeddings(self) -> dict[str, torch.Tensor]:
        emb = self.accelerator.unwrap_model(self.text_encoder).get_input_embeddings().weight.detach().cpu()
        return {t: emb[i] for t, i in zip(self.ts.table.learned_tokens, self.new_ids.tolist())}

    def save(self, step: int, loss: float) -> Path:
        # written under a temporary name and renamed when complete: a run killed mid-save (the
        # studio's Stop) never leaves a half-written checkpoint-N behind
        final_dir = self.run_dir / f"checkpoint-{step}"
        ckpt = self.run_dir / f".checkpoint-{step}.tmp"
        if ckpt.exists():
            shutil.rmtree(ckpt)
        meta = {"step": step, "base": str(self.cfg.base), "config": config_to_dict(self.cfg), "loss": loss,
                "orig_vocab": self.orig_vocab, "height": self.height, "width": self.width}
        emb = self._embeddings()
        lora = self._lora_state()
        text_lora = {k: v.detach() for k, v in self._text_lora_params().items()} or None
        ir_lora = self._lora_state(INFRARED_ADAPTER) if self.gate is not None else None
        modules = {"lora": lora, "emb": {"rows": torch.stack(list(emb.values()))}}
        if text_lora:
            modules["text_lora"] = text_lora
        if ir_lora:
            modules["ir_lora"] = ir_lora
        save_training_state(ckpt, modules=modules,
                            optimizer=self.optimizer.optimizer if hasattr(self.optimizer, "optimizer") else self.optimizer,
                            meta=meta)
        save_checkpoint(ckpt, lora_state=lora, embeddings=emb, table=self.ts.table, meta=meta,
                        lora_rank=self.cfg.rank, lora_alpha=self.cfg.rank, target_modules=self.lora_targets,
                        text_lora=text_lora, text_lora_alpha=self.cfg.text_rank, infrared_lora_state=ir_lora)
        if final_dir.exists():
            shutil.rmtree(final_dir)
        ckpt.rename(final_dir)
        prune_checkpoints(self.run_dir, self.cfg.keep_checkpoints)
        return final_dir

    def resume(self) -> int:
        from peft.utils import set_peft_model_state_dict

        from dive.utils.state import optimizer_from_flat

        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is None:  # a run killed before its first checkpoint starts over: drop its rows
            if self.accelerator.is_main_process:
                truncate_log(self.run_dir / "loss.jsonl", 0)
            return 0
        tensors, meta = read_training_state(ckpt)
        saved_table = TokenTable.load(ckpt / TOKENS_FILE)
        if not saved_table.describes_same_tokens(self.ts.table):
            raise ValueError(f"{ckpt}: its token table differs from this run's data/config; use a new --out")
        lora = {k[len("lora."):]: v for k, v in tensors.items() if k.startswith("lora.")}
        set_peft_model_state_dict(self.accelerator.unwrap_model(self.unet), lora)
        ir_lora = {k[len("ir_lora."):]: v for k, v in tensors.items() if k.startswith("ir_lora.")}
        if bool(ir_lora) != (self.gate is not None):
            raise ValueError(f"{ckpt}: {'has' if ir_lora else 'has no'} infrared adapter but this run's infrared_adapter "
                             f"is {self.gate is not None}; use the run's own settings or a new --out")
        if ir_lora:
            set_peft_model_state_dict(self.accelerator.unwrap_model(self.unet), ir_lora, adapter_name=INFRARED_ADAPTER)
        text_lora = {k[len("text_lora."):]: v for k, v in tensors.items() if k.startswith("text_lora.")}
        if bool(text_lora) != bool(self.cfg.text_rank):
            raise ValueError(f"{ckpt}: {'has' if text_lora else 'has no'} text-encoder LoRA but this run's "
                             f"text_rank is {self.cfg.text_rank}; use the run's own settings or a new --out")
        params = self._text_lora_params()
        if set(text_lora) != set(params) and text_lora:
            raise ValueError(f"{ckpt}: its text-encoder LoRA modules differ from this run's")
        with torch.no_grad():
            for k, v in text_lora.items():
                params[k].copy_(v)
        emb = self.accelerator.unwrap_model(self.text_encoder).get_input_embeddings().weight
        with torch.no_grad():
            emb[self.new_ids] = tensors["emb.rows"].to(emb.dtype)
        opt = self.optimizer.optimizer if hasattr(self.optimizer, "optimizer") else self.optimizer
        optimizer_from_flat(opt, tensors, meta["optimizer"])
        # drop log rows written after this checkpoint so the curve continues exactly
        log = self.run_dir / "loss.jsonl"
        if self.accelerator.is_main_process:
            truncate_log(log, meta["step"])
        return int(meta["step"])

    # -- training ---------------------------------------------------------------------------------
    def training_loss(self, step: int, micro: int) -> torch.Tensor:
        cfg, acc = self.cfg, self.accelerator
        g = step_generator(cfg.seed, 3, step)
        share = 1.0 if cfg.train_parts == "infrared-adapter" else cfg.infrared_share  # only what trains the adapter
        idx_all = draw_indices(g, cfg.batch_size, self.num_images, hflip=cfg.hflip, infrared=self.infrared_index,
                               infrared_share=share)
        t_all = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (cfg.batch_size,), generator=g)
        drop_all = torch.rand(cfg.batch_size, generator=g) < cfg.caption_dropout
        eps_shape = (cfg.batch_size, *self.mean.shape[1:])
        eps_all = torch.randn(eps_shape, generator=g)
        noise_all = torch.randn(eps_shape, generator=g)
        # this process / micro-step's slice of the global batch
        part = micro * acc.num_processes + acc.process_index
        sl = slice(part * self.micro_batch, (part + 1) * self.micro_batch)
        idx, t, drop = idx_all[sl], t_all[sl], drop_all[sl]
        sf = self.vae.config.scaling_factor
        lat = (self.mean[idx] + self.std[idx] * eps_all[sl]) * sf
        noise = noise_all[sl]
        noisy = self.noise_scheduler.add_noise(lat, noise, t)
        rows = idx % self.num_images  # mirrored latents share their image's prompt and modality
        ids = self.ids[rows].clone()
        ids[drop] = self.empty_ids
        dev = acc.device
        if cfg.identity_modalities == "visible":
            self._detach_mask = self.is_infrared[rows][:, None] & torch.isin(ids, self.identity_ids)
        try:
            hidden = self.text_encoder(ids.to(dev))[0]
        finally:
            self._detach_mask = None
        with self._infrared_gate(self.is_infrared[rows]):
            pred = self.unet(noisy.to(dev), t.to(dev), encoder_hidden_states=hidden).sample
        return diffusion_loss(self.noise_scheduler, pred, lat, noise, t, snr_gamma=cfg.snr_gamma)

    def _infrared_gate(self, infrared):
        """The infrared adapter on for the images where `infrared` is true (nothing without one)."""
        return self.gate.images(infrared) if self.gate is not None else nullcontext()

    def _detach_identity_rows(self, module, inputs, output):
        """Forward hook on the token embedding: detach the masked positions (see identity_modalities)."""
        if self._detach_mask is None:
            return output
        return torch.where(self._detach_mask.to(output.device)[..., None], output.detach(), output)

    def train(self) -> Path:
        """Run (or resume) the training; the main process holds the run folder's lock meanwhile."""
        with torch_threads(self.cfg.threads), output_lock(self.run_dir, enabled=self.accelerator.is_main_process):
            return self._train()

    def _train(self) -> Path:
        cfg, acc = self.cfg, self.accelerator
        if acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_json(self.run_dir / "config.json", config_to_dict(cfg))
            self.ts.table.save(self.run_dir / TOKENS_FILE)
        acc.wait_for_everyone()
        start = self.resume()
        log_path = self.run_dir / "loss.jsonl"
        trainable = [p for group in self.optimizer.param_groups for p in group["params"]]
        emb = acc.unwrap_model(self.text_encoder).get_input_embeddings().weight
        bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="dive train",
                   disable=not (self.progress and acc.is_main_process))
        t0, done = time.time(), 0
        loss_value = float("nan")
        for step in bar:
            factor = warmup_cosine(step, cfg.warmup, cfg.steps)
            for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
                group["lr"] = base_lr * factor
            total = 0.0
            for micro in range(cfg.grad_accum):
                with acc.accumulate(self.unet, self.text_encoder):
                    loss = self.training_loss(step, micro)
                    acc.backward(loss)
                    if acc.sync_gradients:
                        acc.clip_grad_norm_(trainable, 1.0)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                total += loss.detach().float() / cfg.grad_accum
            with torch.no_grad():  # belt and braces: original vocabulary rows never change
                emb[: self.orig_vocab] = self.frozen_rows.to(emb.device, emb.dtype)
                if cfg.embedding_max_norm > 0:
                    rows = emb[self.new_ids]
                    scale = (cfg.embedding_max_norm / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)
                    emb[self.new_ids] = rows * scale
            loss_value = float(acc.reduce(total.to(acc.device), reduction="mean"))
            if acc.is_main_process:
                with open(log_path, "a") as f:
                    f.write(json.dumps({"step": step + 1, "loss": loss_value, "lr": self.base_lrs[0] * factor,
                                        "seconds": round(time.time() - t0, 3)}) + "\n")
                bar.set_postfix(loss=f"{loss_value:.4f}")
            if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
                if acc.is_main_process:
                    self.save(step + 1, loss_value)
                acc.wait_for_everyone()
            if cfg.preview_every and acc.is_main_process and ((step + 1) % cfg.preview_every == 0 or step + 1 == cfg.steps):
                save_image(self.run_dir / "previews" / f"step-{step + 1:06d}.png", self.preview())
            done += 1
            if cfg.stop_after and done >= cfg.stop_after:
                break
        final = latest_checkpoint(self.run_dir)
        if acc.is_main_process and final is not None and int(final.name.split("-")[1]) == cfg.steps:
            with new_dir_beside(self.run_dir / "final") as tmp:  # replaces the run's own final/ atomically
                shutil.copytree(final, tmp, ignore=shutil.ignore_patterns("state.*"), dirs_exist_ok=True)
                write_references(tmp, self.ts)
        acc.wait_for_everyone()
        acc.end_training()
        return self.run_dir / "final"

    @torch.no_grad()
    def preview(self, n_ids: int = 4, seed: int = 0) -> Image.Image:
        """Rows: a few identities (external first); columns: every infrared camera token."""
        from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

        unet = self.accelerator.unwrap_model(self.unet)
        te = self.accelerator.unwrap_model(self.text_encoder)
        unet.eval()
        te.eval()
        sched = DPMSolverMultistepScheduler.from_config(self.noise_scheduler.config, algorithm_type="dpmsolver++")
        pipe = StableDiffusionPipeline(vae=self.vae, text_encoder=te, tokenizer=self.tokenizer, unet=unet, scheduler=sched,
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        table = self.ts.table
        ids = sorted(table.identities, key=lambda t: (t.split != "train" or "ext" not in t.dataset, t.dataset, t.pid))[:n_ids]
        cams = table.infrared_cameras() or table.cameras[:2]
        prompts = [table.prompt(i, c) for i in ids for c in cams]
        with self._infrared_gate([c.modality == "infrared" for _ in ids for c in cams]):
            imgs = pipe(prompts, height=self.height, width=self.width, num_inference_steps=20, guidance_scale=1.0,
                        generator=torch.Generator().manual_seed(seed), output_type="np").images
        unet.train()
        te.train()
        imgs = (imgs * 255).round().astype(np.uint8).reshape(len(ids), len(cams), self.height, self.width, 3)
        return Image.fromarray(np.concatenate([np.concatenate(list(row), axis=1) for row in imgs], axis=0))


def write_references(checkpoint: Path, ts: TrainingSet, per_identity: int = 3) -> None:
    """A strip of real images per identity token, so the studio can show who a token is even where
    the training data is not at hand (a Hugging Face Space)."""
    by_id: dict[tuple[str, int], list] = {}
    for r in ts.records:
        by_id.setdefault((r.dataset, r.pid), []).append(r)
    for t in ts.table.identities:
        recs = sorted(by_id.get((t.dataset, t.pid), []), key=lambda r: (r.modality.value != "visible", r.camid, r.path))
        picks = recs[:per_identity]
        if not picks:
            continue
        ims = []
        for r in picks:
            ims.append(np.asarray(load_rgb(r.path).resize((64, 128))))
        save_image(reference_path(checkpoint, t.token), Image.fromarray(np.concatenate(ims, axis=1)), quality=90)


def training_set_from_config(cfg: dict) -> TrainingSet:
    """The training set a run's config (`DiVETrainConfig` as a dict, as saved in dive.json) implies:
    the trainer builds it, `package_checkpoint` rebuilds it to check a checkpoint's token table."""
    external = Path(cfg["external"]) if cfg.get("external") else None
    vi, ext = load_sources(Path(cfg["data"]), cfg.get("data_format"), external, cfg.get("external_format"))
    return build_training_set(vi, ext, min_images=cfg["min_images"], granularity=cfg["granularity"],
                              camera_mode=cfg["camera_mode"], vi_modalities=cfg["vi_modalities"], seed=cfg["seed"],
                              captions=load_captions(cfg["captions"]) if cfg.get("captions") else None,
                              infrared_words=load_infrared_words(cfg["infrared_words"]) if cfg.get("infrared_words") else None)


def _same_base_weights(trained: Path, named: Path) -> list[str]:
    """Weight files (relative paths) in which two base folders differ; [] when they are copies."""
    from dive.utils.io import sha256_file

    files = sorted({f.relative_to(b) for b in (trained, named) for f in b.rglob("*.safetensors")})
    return [str(f) for f in files if not ((trained / f).exists() and (named / f).exists()
                                         and sha256_file(trained / f) == sha256_file(named / f))]


def package_checkpoint(src: Path, dst: Path, lora_dtype: torch.dtype | None = torch.float16,
                       base_name: str | Path | None = None, overwrite: bool = False) -> Path:
    """Copy a run's checkpoint-N (or final) without its training state, adding reference images:
    the form in which checkpoints are shipped. The training data named in its dive.json must be at hand.
    The UNet LoRA files are stored as `lora_dtype` (default float16, half the size; None keeps
    float32): `load_lora_weights` casts them to the UNet's dtype on loading. `base_name`: write this
    path as the checkpoint's base in dive.json (a shipped copy of the base it trained on, named
    relative to the repository so the checkpoint finds it on any machine); refused unless its
    weights are byte-identical to the trained base's. `dst` must be new, empty, or (with
    `overwrite`) an earlier DiVE checkpoint, which is replaced atomically: the package is written
    beside it, renamed into place, and only then is the old one removed."""
    from dive.checkpoint import (INFRARED_LORA_FILE, LORA_FILE, META_FILE, check_checkpoint_dir, find_base, trained_base,
                                 training_config)

    src, dst = Path(src), Path(dst)
    cfg = training_config(check_checkpoint_dir(src))
    if base_name is not None:
        trained = trained_base(src)
        if trained is None:
            raise ValueError(f"{src / META_FILE}: the base it trained on is not at hand, so {base_name} cannot be "
                             "checked to be a copy of it")
        named = find_base(base_name)
        if named is None:
            raise ValueError(f"{base_name}: not a diffusers base folder (no model_index.json), here or in the repository")
        differ = _same_base_weights(trained, named)
        if differ:
            raise ValueError(f"{base_name}: not a copy of the base {src} trained on ({trained}): "
                             f"{', '.join(differ)} differ")
    ts = training_set_from_config(cfg)
    if not ts.table.describes_same_tokens(TokenTable.load(src / TOKENS_FILE)):
        raise ValueError(f"{src}: its token table does not match the data in its dive.json ({cfg['data']})")
    check_package_destination(src, dst, overwrite)
    with new_dir_beside(dst) as tmp:
        shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("state.*"), dirs_exist_ok=True)
        ts.table.save(tmp / TOKENS_FILE)  # the table rebuilt from the data: an older run's gains infrared_datasets
        if lora_dtype is not None:
            for name in (LORA_FILE, INFRARED_LORA_FILE):
                if (tmp / name).exists():
                    cast_safetensors(tmp / name, lora_dtype)
        write_references(tmp, ts)
        if base_name is not None:
            meta = json.loads((tmp / META_FILE).read_text())
            meta["base"] = str(base_name)  # config.base keeps the path it trained on
            write_json(tmp / META_FILE, meta)
        check_checkpoint_dir(tmp)
    return dst


def check_package_destination(src: Path, dst: Path, overwrite: bool) -> None:
    """Refuse a `dive package` destination whose contents the command did not write: SRC itself, a
    folder holding SRC, a folder inside SRC, a file, or a non-empty folder that is not a DiVE
    checkpoint; a DiVE checkpoint is replaced only with `overwrite`."""
    from dive.checkpoint import is_checkpoint_dir

    s, d = Path(src).resolve(), Path(dst).resolve()
    if d == s or d in s.parents:
        raise FileExistsError(f"{dst}: is the checkpoint being packaged or a folder holding it ({src}); "
                              "package into a new folder")
    if s in d.parents:
        raise FileExistsError(f"{dst}: lies inside the checkpoint being packaged ({src}); package into a new folder")
    if not dst.exists() and not dst.is_symlink():
        return
    if not dst.is_dir() or dst.is_symlink():
        raise FileExistsError(f"{dst}: exists and is not a folder; package into a new folder")
    if not any(dst.iterdir()):
        return
    if not is_checkpoint_dir(dst):
        raise FileExistsError(f"{dst}: not empty and not a DiVE checkpoint; refusing to replace it "
                              "(package into a new or empty folder)")
    if not overwrite:
        raise FileExistsError(f"{dst}: already holds a DiVE checkpoint; pass --overwrite to replace it")


def train_dive(cfg: DiVETrainConfig, progress: bool = True) -> Path:
    return DiVETrainer(cfg, progress=progress).train()
