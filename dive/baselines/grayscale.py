"""`dive baseline grayscale`: "infrared" images of the external identities as luminance copies of
their visible images (the simplest modality bridge, as CAJ's grayscale channel).

For each selected external identity and each infrared camera of the VI set, `--n` images: the
identity's visible images (chosen and cycled as `dive.generate.sources.assign_sources` says, fixed
by `--seed`), resized to `--height` x `--width` (bicubic), converted to luminance with PIL's
ITU-R 601-2 transform (L = 0.299 R + 0.587 G + 0.114 B) and stored as 3-channel PNG (R = G = B),
as SYSU stores infrared images. The folder (images, manifest.jsonl, generate.json) is what
`dive export --synthetic` reads; see `dive.baselines` for its layout. Same inputs and settings
give the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from dive.generate.sources import BaselineSelection, base_settings, finish_out, load_baseline_inputs, plan_jobs, prepare_out, read_rgb
from dive.utils.io import save_image


@dataclass
class GrayscaleConfig(BaselineSelection):
    """Grayscale copies of the external identities' visible images, per infrared camera."""

    height: int = field(default=128, metadata={"help": "output image height"})
    width: int = field(default=64, metadata={"help": "output image width"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.height < 1 or self.width < 1:
            raise ValueError(f"height and width must be positive; got {self.height}x{self.width}")


def to_grayscale(im: Image.Image) -> Image.Image:
    """3-channel luminance copy (R = G = B)."""
    return im.convert("L").convert("RGB")


def run_grayscale(cfg: GrayscaleConfig, *, progress: bool = True) -> Path:
    inputs = load_baseline_inputs(cfg.data, cfg.format, cfg.external, cfg.external_format)
    jobs, keys, cams = plan_jobs(inputs, min_images=cfg.min_images, top_k=cfg.top_k, cameras=cfg.cameras, n=cfg.n,
                                 seed=cfg.seed, baseline="grayscale")
    settings = base_settings("grayscale", inputs, cams, keys, min_images=cfg.min_images, top_k=cfg.top_k, n=cfg.n,
                             seed=cfg.seed, height=cfg.height, width=cfg.width,
                             transform="PIL convert('L') (ITU-R 601-2 luma), 3 channels; bicubic resize")
    prepare_out(cfg.out, settings, inputs.protected, cfg.force)
    cache: dict[str, Image.Image] = {}  # one identity's converted sources (its jobs are consecutive)
    current = None
    for job in tqdm(jobs, desc="grayscale", unit="img", disable=not progress):
        if (job.row["dataset"], job.row["pid"]) != current:
            cache.clear()
            current = (job.row["dataset"], job.row["pid"])
        src = job.source.path
        if src not in cache:
            cache[src] = to_grayscale(read_rgb(src, cfg.height, cfg.width))
        save_image(cfg.out / job.rel, cache[src])
        job.row |= {"height": cfg.height, "width": cfg.width}
    return finish_out(cfg.out, jobs)
