"""Which of two VAEs reconstructs person images better? Reconstruction of the web pool's first N images by two VAEs (diffusers folders or base folders):
mean L1 in [-1, 1] units, and a grid (rows: real, first VAE, second VAE; 8 images).

    python research/compare_vaes.py VAE_A VAE_B [N] [GRID]
    e.g. python research/compare_vaes.py checkpoints/tiny-sd-base runs/base-v3/model 256 runs/vae-v2-v3.png
"""
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from PIL import Image

from dive.base.pretrain import load_web_pool, to_unit


def load_vae(path: str) -> AutoencoderKL:
    p = Path(path)
    return AutoencoderKL.from_pretrained(str(p / "vae" if (p / "vae").is_dir() else p)).eval()


def main(a: str, b: str, n: int = 256, grid: str = "runs/vae-compare.png") -> None:
    images, _ = load_web_pool(Path("data/synthvi"), n, 128, 64)  # as the VAE stage reads them
    x = to_unit(images)
    canvas = Image.new("RGB", (64 * 8, 128 * 3))
    for i in range(8):
        canvas.paste(Image.fromarray(images[i].permute(1, 2, 0).numpy()), (64 * i, 0))
    for k, path in enumerate((a, b)):
        vae = load_vae(path)
        with torch.no_grad():
            y = torch.cat([vae.decode(vae.encode(x[i:i + 64]).latent_dist.mean).sample for i in range(0, len(x), 64)])
        print(f"{path}: L1 {(y.clamp(-1, 1) - x).abs().mean().item():.4f} on {len(x)} web images")
        pix = ((y[:8].clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        for i in range(8):
            canvas.paste(Image.fromarray(pix[i]), (64 * i, 128 * (k + 1)))
    Path(grid).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(grid)
    print(f"grid: {grid}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2], *(int(sys.argv[3]),) if len(sys.argv) > 3 else (), *sys.argv[4:5])
