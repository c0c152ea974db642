"""The tiny SD-1.x-architecture base model: the real diffusers / transformers classes, small configs.

Every part is the class Stable Diffusion 1.5 uses (CLIPTextModel + CLIPTokenizer, AutoencoderKL,
UNet2DConditionModel, DDPM for training, DPM-Solver++ for sampling) so that everything downstream
(DiVE training, generation, attention maps, the studio) runs unchanged on a real SD 1.5 folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch



@dataclass
class TinySDConfig:
    """Sizes of the tiny base. Defaults: ~8.9M-param UNet (64/128/192), 4-layer width-128 CLIP,
    an 8x VAE (16x8 latents at 128x64) with 8 latent channels (see docs/base-model.md).

    Why this UNet: at 16x8 latents a step is mostly fixed cost on a CPU, so width is cheap (`research/unet_step_time.py`,
    2 threads, batch 32: 32/64/128 0.27 s, 64/128/192 0.43 s), and v2's 32/64/128 drew blurred
    figures that kept no identity even in visible light."""

    height: int = field(default=128, metadata={"help": "image height the model is trained at"})
    width: int = field(default=64, metadata={"help": "image width the model is trained at"})
    text_width: int = field(default=128, metadata={"help": "CLIP text encoder width (= cross-attention dim)"})
    text_layers: int = field(default=4, metadata={"help": "CLIP text encoder layers"})
    text_heads: int = field(default=4, metadata={"help": "CLIP text encoder attention heads"})
    max_length: int = field(default=77, metadata={"help": "tokenizer / text encoder context length"})
    unet_channels: tuple[int, int, int] = field(default=(64, 128, 192), metadata={"help": "UNet block channels"})
    unet_head_dim: int = field(default=8, metadata={"help": "UNet attention heads (diffusers' attention_head_dim)"})
    vae_channels: tuple[int, int, int, int] = field(default=(16, 32, 64, 64), metadata={"help": "VAE block channels (4 blocks = 8x)"})
    latent_channels: int = field(default=8, metadata={"help": "VAE latent channels"})
    norm_groups: int = field(default=16, metadata={"help": "group-norm groups in the VAE and UNet"})
    prediction_type: str = field(default="v_prediction", metadata={"help": "UNet target: v_prediction or epsilon (see dive/utils/diffusion.py)"})
    text_time_embedding: bool = field(default=True, metadata={
        "help": "also add an attention-pooled text embedding to the timestep embedding (diffusers' "
                "addition_embed_type='text'); without it the tiny UNet's cross-attention stayed near-uniform "
                "over all 77 positions and captions barely changed its predictions (see docs/base-model.md)"})
    text_time_heads: int = field(default=4, metadata={"help": "heads of that attention pooling"})


def build_text_encoder(cfg: TinySDConfig, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    conf = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.text_width,
        intermediate_size=4 * cfg.text_width,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        max_position_embeddings=cfg.max_length,
        hidden_act="quick_gelu",
        projection_dim=cfg.text_width,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(conf)


def build_vae(cfg: TinySDConfig):
    from diffusers import AutoencoderKL

    n = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.vae_channels),
        layers_per_block=1,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_groups,
        sample_size=cfg.height,
    )


def build_unet(cfg: TinySDConfig):
    from diffusers import UNet2DConditionModel

    scale = 2 ** (len(cfg.vae_channels) - 1)  # the VAE's downsampling
    return UNet2DConditionModel(
        sample_size=(cfg.height // scale, cfg.width // scale),
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        block_out_channels=tuple(cfg.unet_channels),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cfg.text_width,
        attention_head_dim=cfg.unet_head_dim,
        norm_num_groups=cfg.norm_groups,
        # computed from encoder_hidden_states inside the UNet: SD pipelines pass nothing new
        addition_embed_type="text" if cfg.text_time_embedding else None,
        addition_embed_type_num_heads=cfg.text_time_heads,
    )


def scheduler_config(prediction_type: str = "v_prediction") -> dict:
    """SD 1.x's noise schedule (scaled-linear betas 0.00085..0.012, 1000 steps); the tiny base
    predicts v (SD 2.x style) - see dive/utils/diffusion.py for why."""
    return dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type=prediction_type,
        steps_offset=1,
    )


def training_scheduler(prediction_type: str = "v_prediction"):
    from diffusers import DDPMScheduler

    return DDPMScheduler(**scheduler_config(prediction_type), clip_sample=False)


def sampling_scheduler(prediction_type: str = "v_prediction"):
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(**scheduler_config(prediction_type), algorithm_type="dpmsolver++", solver_order=2)


#: the largest weight file `save_base` writes: under the Hugging Face Hub's 10 MB limit for files
#: committed without Git LFS (larger models are split into shards that diffusers loads as one)
MAX_SHARD_SIZE = "9MB"


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def save_base(directory: str | Path, *, tokenizer, text_encoder, vae, unet, prediction_type: str = "v_prediction",
              unet_dtype: torch.dtype = torch.float16, max_shard_size: str = MAX_SHARD_SIZE) -> Path:
    """Save in diffusers' layout (safetensors) so `StableDiffusionPipeline.from_pretrained` loads it.

    The UNet's weights are stored as `unet_dtype` (default float16: half the size on disk, as SD's
    own fp16 files); diffusers loads them as float32 unless asked otherwise, so nothing else changes.
    Weight files larger than `max_shard_size` are split into shards with an index (diffusers' own
    layout), so every file stays under the Hugging Face Hub's 10 MB limit for files outside Git LFS.
    The caller's modules are not touched."""
    import copy

    from diffusers import StableDiffusionPipeline

    if unet_dtype != unet.dtype:
        unet = copy.deepcopy(unet).to(unet_dtype)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=sampling_scheduler(prediction_type),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(str(directory), safe_serialization=True, max_shard_size=max_shard_size)
    return Path(directory)
