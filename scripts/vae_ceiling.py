"""How much identity survives the base model's VAE? A ceiling for any generator on that base.

Usage: python scripts/vae_ceiling.py SOURCE BASE OUT

SOURCE is a synthetic-source folder (images + manifest.jsonl), e.g. `dive baseline oracle`'s true
infrared renders of the external ids. Every image is encoded (posterior mean) and decoded by
BASE's VAE and written to OUT with the same manifest, so `dive metrics` scores the round trip
next to the originals: if the identity Rank-1 of the reconstructions falls to chance, no UNet
trained on this VAE's latents can draw those identities, whatever its tokens learn.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dive.utils.diffusion import encode_latents
from dive.utils.io import load_rgb_tensor, save_image


def main(source: str, base: str, out: str, batch: int = 64) -> None:
    from diffusers import AutoencoderKL

    src, dst = Path(source), Path(out)
    rows = [json.loads(line) for line in (src / "manifest.jsonl").read_text().splitlines() if line.strip()]
    if not rows:
        raise SystemExit(f"{src / 'manifest.jsonl'}: no rows")
    vae = AutoencoderKL.from_pretrained(Path(base) / "vae").eval()
    h, w = rows[0]["height"], rows[0]["width"]
    images = load_rgb_tensor([src / r["path"] for r in rows], h, w)
    with torch.no_grad():
        means, _ = encode_latents(vae, images, batch=batch, flip=False, progress=False)
        for i in range(0, len(rows), batch):
            rec = vae.decode(means[i : i + batch]).sample
            arr = ((rec.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
            for r, a in zip(rows[i : i + batch], arr):
                (dst / r["path"]).parent.mkdir(parents=True, exist_ok=True)
                save_image(dst / r["path"], Image.fromarray(np.ascontiguousarray(a)))
    shutil.copy2(src / "manifest.jsonl", dst / "manifest.jsonl")
    for extra in ("generate.json",):
        if (src / extra).exists():
            shutil.copy2(src / extra, dst / extra)
    err = (images.float() - load_rgb_tensor([dst / r["path"] for r in rows], h, w).float()).abs().mean().item()
    print(f"{len(rows)} images through {base}/vae -> {dst}; mean absolute pixel error {err:.2f} / 255")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
