"""A Stable Diffusion 1.5-architecture base with random weights, written offline as a diffusers folder.

The configs are SD 1.5's published ones (runwayml/stable-diffusion-v1-5: unet/, vae/, text_encoder/
config.json and scheduler/scheduler_config.json) and the tokenizer is CLIP's own 49,408 tokens
(`dive.base.clip_vocab`), so every shape the project's code meets on a real SD 1.5 folder is here:
the 860M-parameter UNet, the 123M-parameter CLIP ViT-L/14 text encoder, the 84M-parameter VAE,
the 49,408-row token embedding. Only the weights are random (seeded), so images are noise: what
this base checks is that the code runs at SD 1.5's shape, and at what cost.

One change from the published UNet config: `sample_size` is the (height, width) latent grid of
the images to train and generate at (64 x 32 for the paper's 512 x 256) instead of SD's square 64;
`dive train` and `dive generate` take their image size from it. A real SD 1.5 folder trains at
512 x 512 unless its unet/config.json names [64, 32] the same way.

`size="tiny"`: SD 1.5's block layout with micro widths and the same 49,408-token tokenizer and
vocabulary, for tests (a few seconds end to end).
"""

from __future__ import annotations

from pathlib import Path

#: unet/config.json of SD 1.5 (sample_size: see the module docstring)
SD15_UNET = dict(
    act_fn="silu", attention_head_dim=8, block_out_channels=(320, 640, 1280, 1280), center_input_sample=False,
    cross_attention_dim=768, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",), downsample_padding=1,
    flip_sin_to_cos=True, freq_shift=0, in_channels=4, layers_per_block=2, mid_block_scale_factor=1, norm_eps=1e-5,
    norm_num_groups=32, out_channels=4, sample_size=64, up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
)
#: vae/config.json of SD 1.5
SD15_VAE = dict(
    act_fn="silu", block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4, in_channels=3,
    latent_channels=4, layers_per_block=2, norm_num_groups=32, out_channels=3, sample_size=512,
    up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=0.18215,
)
#: text_encoder/config.json of SD 1.5: CLIP ViT-L/14's text tower (bos/eos/pad ids as published)
SD15_TEXT = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768,
    attention_dropout=0.0, dropout=0.0, initializer_factor=1.0, initializer_range=0.02,
    bos_token_id=0, eos_token_id=2, pad_token_id=1,
)
#: scheduler/scheduler_config.json of SD 1.5 (PNDM; epsilon prediction, diffusers' default; clip_sample is
#: not a PNDM argument but is in the published file, where DDPM, which `dive train` builds from it, reads it)
SD15_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, clip_sample=False,
    set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, trained_betas=None, prediction_type="epsilon",
)
#: micro widths in SD 1.5's layout (four UNet blocks, four VAE blocks, 49,408-token text encoder)
TINY_OVERRIDES = {
    "unet": dict(block_out_channels=(16, 16, 32, 32), layers_per_block=1, attention_head_dim=4, cross_attention_dim=32,
                 norm_num_groups=8),
    "vae": dict(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=8, sample_size=128),
    "text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, projection_dim=32),
}
SIZES = ("full", "tiny")
#: image (height, width) each size trains and generates at: the paper's 512 x 256; the tiny base's 128 x 64
IMAGE_SIZE = {"full": (512, 256), "tiny": (128, 64)}


def sd15_configs(size: str = "full") -> dict[str, dict]:
    """{"unet", "vae", "text", "scheduler"}: the constructor arguments of each part at `size`."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}; got {size!r}")
    parts = {"unet": dict(SD15_UNET), "vae": dict(SD15_VAE), "text": dict(SD15_TEXT), "scheduler": dict(SD15_SCHEDULER)}
    if size == "tiny":
        for name, over in TINY_OVERRIDES.items():
            parts[name].update(over)
    height, width = IMAGE_SIZE[size]
    scale = 2 ** (len(parts["vae"]["block_out_channels"]) - 1)
    parts["unet"]["sample_size"] = (height // scale, width // scale)
    return parts


def build_sd15_base(directory: str | Path, *, size: str = "full", seed: int = 0,
                    vocab_file: str | Path | None = None) -> Path:
    """Write an SD 1.5-architecture diffusers folder (safetensors) with seeded random weights and
    CLIP's 49,408-token tokenizer: tokenizer/, text_encoder/, vae/, unet/, scheduler/ (PNDM, as SD 1.5
    ships), model_index.json. `directory` must be new or empty."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from dive.base.clip_vocab import write_clip_tokenizer

    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"{directory}: not empty; the SD 1.5-architecture base needs a new or empty folder")
    cfg = sd15_configs(size)
    tok_dir = write_clip_tokenizer(directory / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir))
    if len(tokenizer) != cfg["text"]["vocab_size"]:
        raise RuntimeError(f"{tok_dir}: {len(tokenizer)} tokens; the text encoder has {cfg['text']['vocab_size']} rows")
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**cfg["text"]))
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**cfg["vae"])
    torch.manual_seed(seed + 2)
    unet = UNet2DConditionModel(**cfg["unet"])
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=PNDMScheduler.from_config(cfg["scheduler"]), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(directory), safe_serialization=True)
    return directory


def parameter_counts(directory: str | Path) -> dict[str, int]:
    """Parameters per part of a diffusers SD folder, read from its safetensors headers (no weights loaded)."""
    import json
    import struct

    counts = {}
    for part in ("unet", "vae", "text_encoder"):
        n = 0
        for f in sorted((Path(directory) / part).glob("*.safetensors")):
            with open(f, "rb") as fh:
                header = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0]))
            for key, info in header.items():
                if key != "__metadata__":
                    size = 1
                    for d in info["shape"]:
                        size *= d
                    n += size
        counts[part] = n
    return counts
