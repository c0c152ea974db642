"""A synthetic-source folder passed through a base model's VAE (posterior mean, then decode).

Why: the VAE bounds every generator built on its latents. The oracle's true infrared renders
through the base's VAE are what a *perfect* UNet on that base would draw, so the ReID gain they
bring separates "the VAE loses the identity" (no generator on this base can help) from "the UNet
and its tokens do not draw it" (a better-trained generator on the same base could). The bench's
`--diagnostics` adds that row; `research/vae_ceiling.py` runs it alone.

The output has the source's `manifest.jsonl` (written last: marks completion) and `generate.json`,
with a `vae_round_trip` entry naming the VAE, so `dive export` / `dive metrics` read it like any
synthetic folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from dive.utils.io import load_rgb_tensor, require_safetensors, save_image, write_json, write_text


@torch.no_grad()
def vae_round_trip(source: str | Path, base: str | Path, out: str | Path, *, batch: int = 64,
                   progress: bool = True) -> dict:
    """Encode (posterior mean) and decode every image of `source` with `base`/vae into `out`.
    Returns {"images", "mean_abs_error"} (pixel error of the round trip, 0-255 scale). A finished
    `out` (its manifest present) is kept as it is."""
    from diffusers import AutoencoderKL

    from dive.utils.diffusion import encode_latents

    src, dst, base = Path(source), Path(out), Path(base)
    manifest = src / "manifest.jsonl"
    if not manifest.exists():
        raise FileNotFoundError(f"{manifest}: missing; SOURCE must be a synthetic-source folder "
                                "(dive generate / dive baseline ... output)")
    if not (base / "vae" / "config.json").exists():
        raise FileNotFoundError(f"{base / 'vae' / 'config.json'}: missing; BASE must be a diffusers model folder with vae/")
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{manifest}: no rows")
    if (dst / "manifest.jsonl").exists():
        return json.loads((dst / "generate.json").read_text())["vae_round_trip"]
    require_safetensors(base, ("vae",))
    vae = AutoencoderKL.from_pretrained(base / "vae", use_safetensors=True).eval()
    h, w = int(rows[0]["height"]), int(rows[0]["width"])
    images = load_rgb_tensor([src / r["path"] for r in rows], h, w)
    means, _ = encode_latents(vae, images, batch=batch, flip=False, progress=False)
    err = 0.0
    for i in tqdm(range(0, len(rows), batch), desc="VAE round trip", unit="batch", disable=not progress):
        rec = vae.decode(means[i : i + batch]).sample
        arr = ((rec.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        err += (arr.float() - images[i : i + batch].float()).abs().sum().item()
        for r, a in zip(rows[i : i + batch], arr.permute(0, 2, 3, 1).numpy()):
            save_image(dst / r["path"], Image.fromarray(np.ascontiguousarray(a)))
    info = {"images": len(rows), "vae": str(base / "vae"), "mean_abs_error": round(err / images.numel(), 3)}
    settings = json.loads((src / "generate.json").read_text()) if (src / "generate.json").exists() else {}
    write_json(dst / "generate.json", settings | {"vae_round_trip": info})
    write_text(dst / "manifest.jsonl", manifest.read_text())
    return info
