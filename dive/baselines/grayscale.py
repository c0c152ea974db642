"""`dive baseline grayscale`: "infrared" images of the external identities as luminance copies of
their visible images (the simplest modality bridge, as CAJ's grayscale channel).

For each selected external identity and each infrared camera of the VI set, `--n` images: the
identity's visible images (chosen and cycled as `dive.baselines.common.assign_sources` says, fixed
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

from dive.baselines.common import base_settings, finish_out, load_baseline_inputs, plan_jobs, prepare_out, read_rgb
from dive.utils.io import save_image


@dataclass
class GrayscaleConfig:
    """Grayscale copies of the external identities' visible images, per infrared camera."""

    data: Path = field(metadata={"help": "a SynthVI world, a VI dataset (with --external), or a Market-1501 / "
                                         "CUHK03-NP folder alone (then infrared cameras 3 and 6)"})
    out: Path = field(metadata={"help": "output folder (new, or an earlier output of this command)"})
    format: str = field(default="auto", metadata={"help": "layout of --data (auto: detected)"})
    external: Path | None = field(default=None, metadata={
        "help": "external visible dataset (Market-1501 or CUHK03-NP) when --data is a VI dataset"})
    external_format: str = field(default="auto", metadata={
        "help": "layout of --external", "choices": ["auto", "market1501", "cuhk03_np"]})
    min_images: int = field(default=12, metadata={"help": "only external ids with at least this many training images"})
    top_k: int = field(default=0, metadata={"help": "then keep the K ids with the most images (0: all)"})
    cameras: tuple[int, ...] = field(default=(), metadata={
        "help": "infrared cameras to write (default: the VI set's infrared cameras, SYSU 3 and 6)"})
    n: int = field(default=18, metadata={"help": "images per identity and infrared camera (paper: 18)"})
    seed: int = field(default=0, metadata={"help": "seed of the choice and order of source images"})
    height: int = field(default=128, metadata={"help": "output image height"})
    width: int = field(default=64, metadata={"help": "output image width"})
    force: bool = field(default=False, metadata={"help": "overwrite an earlier output made with other settings"})

    def __post_init__(self) -> None:
        self.data, self.out = Path(self.data), Path(self.out)
        self.external = Path(self.external) if self.external is not None else None
        self.cameras = tuple(int(c) for c in (self.cameras or ()))
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
