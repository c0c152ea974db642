"""`dive baseline cyclegan apply`: the trained generator G over the selected external ids' visible images."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from dive.generate.sources import (BaselineSelection, base_settings, finish_out, load_baseline_inputs, plan_jobs,
                                   prepare_out)
from dive.baselines.cyclegan.networks import (GENERATOR_WEIGHTS, ResnetGenerator, load_generator, rgb_tensor, to_uint8,
                                              to_unit)
from dive.utils.io import save_image, sha256_file
from dive.utils.threads import torch_threads


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
