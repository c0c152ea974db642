"""`dive translate`: DiVE from a real picture. Each external identity's own visible image, noised
to `strength`, is denoised under "a [infrared camera] photo of [identity] person" (img2img / SDEdit)
by the same base + DiVE checkpoint that `dive generate` uses.

Not the paper's method (DiVE draws from pure noise, `dive generate`): an option for a generator
too small to draw a person's build and pattern from a token alone. What the noise leaves of the
real image (pose, silhouette, pattern layout) stays; what it hides (the dyes' tones, the
background) is redrawn by the identity token, the caption and the infrared camera's LoRA. At
strength 1 the source is forgotten and it is `dive generate` again.

Sources are chosen exactly as the comparison baselines choose theirs (`dive.generate.sources`:
the same seed gives grayscale copies, CycleGAN and this command the same source for every output
image), so the three are compared image for image. The output folder has the baselines' layout
(images/, manifest.jsonl, generate.json), read by `dive export --synthetic` and `dive metrics`.
Resumable: images already written (atomically) under the same settings are kept; a rerun makes
only the missing ones, with the same bytes (per-image seeds from (seed, identity, camera, index)).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from dive import defaults
from dive.generate.sources import (SETTINGS_FILE, BaselineSelection, base_settings, finish_out, load_baseline_inputs,
                                   plan_jobs, prepare_out, read_rgb)
from dive.checkpoint import checkpoint_hash, resolve_base
from dive.generate import DEFAULT_GUIDANCE
from dive.generate.pipeline import Generator, ImageJob, image_seed, load_generator
from dive.utils.device import DEVICE_HELP, DTYPE_HELP, DTYPES, dtype_name, resolve
from dive.utils.io import save_image
from dive.utils.lock import output_lock

BASELINE_NAME = "dive-translate"


@dataclass
class TranslateConfig(BaselineSelection):
    """DiVE img2img from the identity's own visible images, N per infrared camera."""

    checkpoint: Path = field(default=defaults.DEMO, metadata={"help": "DiVE checkpoint folder"})
    base: Path | None = field(default=None, metadata={
        "help": "diffusers SD-1.x folder the checkpoint was trained on; None: the one its dive.json names"})
    strength: float = field(default=0.6, metadata={
        "help": "how much of the source is noised away (0-1]: 1 forgets it (plain generation), lower keeps more"})
    steps: int = field(default=25, metadata={"help": "DPM-Solver++ steps of the full schedule (strength x steps run)"})
    guidance: float = field(default=DEFAULT_GUIDANCE, metadata={"help": "classifier-free guidance scale (1: off)"})
    negative_prompt: str = field(default="", metadata={"help": "negative prompt (guidance > 1); {camera} / {identity} as in dive generate"})
    batch_size: int = field(default=16, metadata={"help": "images per forward pass"})
    device: str = field(default="auto", metadata={"help": DEVICE_HELP})
    dtype: str = field(default="fp32", metadata={"help": DTYPE_HELP, "choices": list(DTYPES)})
    stop_after: int = field(default=0, metadata={"help": "stop (as if killed) after this many new images; for tests"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.checkpoint = Path(self.checkpoint)
        if not 0.0 < self.strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1]; got {self.strength}")


def translate(cfg: TranslateConfig, *, generator: Generator | None = None, progress: bool = True) -> Path:
    """Write (or complete) the translated folder; returns it. Holds the folder's lock."""
    with output_lock(cfg.out):
        return _translate(cfg, generator, progress)


def _translate(cfg: TranslateConfig, generator: Generator | None, progress: bool) -> Path:
    if generator is None:
        device, dtype = resolve(cfg.device, cfg.dtype)  # a bad or absent device: one line, before anything else
        base = resolve_base(cfg.checkpoint, cfg.base)
        generator = load_generator(base, cfg.checkpoint, device=device, dtype=dtype)
    else:
        base = cfg.base or generator.base
    gen = generator
    table = gen.table
    inputs = load_baseline_inputs(cfg.data, cfg.format, cfg.external, cfg.external_format)
    jobs, keys, cams = plan_jobs(inputs, min_images=cfg.min_images, top_k=cfg.top_k, cameras=cfg.cameras, n=cfg.n,
                                 seed=cfg.seed, baseline=BASELINE_NAME)
    camera_tokens = {}
    for cam in cams:
        try:
            camera_tokens[cam] = table.camera(inputs.vi_dataset or "", cam).token
        except KeyError:
            raise ValueError(f"{cfg.checkpoint}: no camera token for {inputs.vi_dataset} camera {cam}; the checkpoint "
                             f"was trained on other data, or pass --cameras") from None
    identity_tokens = {}
    for ds, pid in keys:
        try:
            identity_tokens[(ds, pid)] = table.identity(ds, pid).token
        except KeyError:
            raise ValueError(f"{cfg.checkpoint}: no identity token for {ds} id {pid}; translate the ids the checkpoint "
                             f"learned (raise --min-images to its own, or pass the data it was trained on)") from None
    ckpt_hash = checkpoint_hash(cfg.checkpoint)
    scheduler = f"DPMSolverMultistep (dpmsolver++), img2img strength {cfg.strength}"
    settings = base_settings(BASELINE_NAME, inputs, cams, keys, checkpoint=str(Path(cfg.checkpoint).resolve()),
                             base=str(Path(base).resolve()), checkpoint_hash=ckpt_hash, min_images=cfg.min_images,
                             top_k=cfg.top_k, n=cfg.n, seed=cfg.seed, strength=cfg.strength, steps=cfg.steps,
                             guidance=cfg.guidance, negative_prompt=cfg.negative_prompt, height=gen.height,
                             width=gen.width, scheduler=scheduler,
                             # recorded only when not fp32: earlier fp32 folders resume as they were
                             **({} if dtype_name(gen.dtype) == "fp32" else {"dtype": dtype_name(gen.dtype)}))
    settings_path = Path(cfg.out) / SETTINGS_FILE
    earlier = json.loads(settings_path.read_text()) if settings_path.is_file() else None
    prepare_out(cfg.out, settings, inputs.protected + [Path(cfg.checkpoint)], cfg.force)
    if earlier is not None and earlier != settings:  # --force with other settings: no image is reused
        shutil.rmtree(Path(cfg.out) / "images", ignore_errors=True)
    work = []
    for job in jobs:
        idt = identity_tokens[(job.row["dataset"], job.row["pid"])]
        cam = camera_tokens[job.row["camid"]]
        image_job = ImageJob(idt, cam, job.row["index"], image_seed(cfg.seed, idt, cam, job.row["index"]),
                             table.prompt(idt, cam))
        job.row |= {"identity_token": idt, "camera_token": cam, "prompt": image_job.prompt, "seed": image_job.seed,
                    "steps": cfg.steps, "guidance": cfg.guidance, "negative_prompt": cfg.negative_prompt,
                    "strength": cfg.strength, "scheduler": scheduler, "checkpoint_hash": ckpt_hash,
                    "height": gen.height, "width": gen.width}
        work.append((job, image_job))
    # fixed batches of the job list: a resumed run renders an unfinished batch whole (same bytes)
    batches = [work[i : i + cfg.batch_size] for i in range(0, len(work), cfg.batch_size)]
    done = {job.rel for job, _ in work if (Path(cfg.out) / job.rel).exists()}
    bar = tqdm(total=len(work), initial=len(done), desc="dive translate", unit="img", disable=not progress)
    made = 0
    for batch in batches:
        if all(job.rel in done for job, _ in batch):
            continue
        if cfg.stop_after and made >= cfg.stop_after:
            bar.close()
            return Path(cfg.out)  # as if killed: no manifest, so the folder reads as unfinished
        sources = [read_rgb(job.source.path, gen.height, gen.width) for job, _ in batch]
        images = gen.render([ij for _, ij in batch], steps=cfg.steps, guidance=cfg.guidance,
                            negative_prompt=cfg.negative_prompt, init_images=sources, strength=cfg.strength)
        for (job, _), img in zip(batch, images):
            if job.rel in done:
                continue
            save_image(Path(cfg.out) / job.rel, Image.fromarray(img))
            made += 1
            bar.update(1)
    bar.close()
    return finish_out(cfg.out, [job for job, _ in work])
