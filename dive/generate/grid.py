"""`dive grid`: identities x cameras at a glance: each row an identity's real visible images, then
generated images per infrared camera token (the same images `dive generate` makes), or per
every camera token with `--cameras all`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from dive.checkpoint import reference_path, resolve_base
from dive.generate import DEFAULT_GUIDANCE
from dive.generate.pipeline import GenerationRequest, load_generator
from dive.generate.run import select_identities
from dive.utils.device import DEVICE_HELP, DTYPE_HELP, DTYPES, resolve
from dive.utils.io import load_rgb, save_image


@dataclass
class GridConfig:
    checkpoint: Path = field(metadata={"help": "DiVE checkpoint folder"})
    base: Path | None = field(default=None, metadata={"help": "diffusers SD-1.x folder; None: the one the checkpoint's dive.json names"})
    out: Path = field(default=Path("runs/grid.png"), metadata={"help": "PNG to write"})
    identities: int = field(default=8, metadata={"help": "rows: the identities with the most images"})
    which: str = field(default="external", metadata={
        "help": "rows from the external ids (never seen in infrared) or the VI set's ids (seen in both)",
        "choices": ["external", "vi"]})
    n: int = field(default=2, metadata={"help": "generated images per camera"})
    cameras: str = field(default="infrared", metadata={
        "help": "columns: the infrared camera tokens, or every camera token (visible ones too: does the token "
                "keep identity in the light it was trained on?)", "choices": ["infrared", "all"]})
    seed: int = field(default=0, metadata={"help": "generation seed"})
    steps: int = field(default=25, metadata={"help": "DPM-Solver++ steps"})
    guidance: float = field(default=DEFAULT_GUIDANCE, metadata={"help": "guidance scale"})
    negative_prompt: str = field(default="", metadata={
        "help": "negative prompt (guidance > 1); {camera} / {identity} become each image's tokens"})
    device: str = field(default="auto", metadata={"help": DEVICE_HELP})
    dtype: str = field(default="fp32", metadata={"help": DTYPE_HELP, "choices": list(DTYPES)})


def identity_grid(cfg: GridConfig) -> Path:
    device, dtype = resolve(cfg.device, cfg.dtype)
    gen = load_generator(resolve_base(cfg.checkpoint, cfg.base), cfg.checkpoint, device=device, dtype=dtype)
    table = gen.table
    ids = select_identities(table, which=cfg.which, min_images=0, top_k=cfg.identities)
    cams = table.infrared_cameras() if cfg.cameras == "infrared" else list(table.cameras)
    req = GenerationRequest([t.token for t in ids], [c.token for c in cams], n=cfg.n, seed=cfg.seed, steps=cfg.steps,
                            guidance=cfg.guidance, negative_prompt=cfg.negative_prompt)
    images = np.concatenate([batch for _, batch in gen.iter_batches(req, batch_size=16)])
    H, W = gen.height, gen.width
    per_row = len(cams) * cfg.n
    rows = []
    for r, t in enumerate(ids):
        ref_path = reference_path(cfg.checkpoint, t.token)
        ref = np.asarray(load_rgb(ref_path).resize((3 * W, H))) if ref_path.exists() else np.full((H, 3 * W, 3), 200, np.uint8)
        gap = np.full((H, 6, 3), 255, np.uint8)
        rows.append(np.concatenate([ref, gap, *images[r * per_row : (r + 1) * per_row]], axis=1))
    grid = np.concatenate(rows, axis=0)
    header = Image.new("RGB", (grid.shape[1], 16), (255, 255, 255))
    d = ImageDraw.Draw(header)
    d.text((2, 2), "real visible", fill=(0, 0, 0))
    for k, c in enumerate(cams):
        ir = c.modality == "infrared"
        name = (f"{c.dataset.split('_')[-1]}{c.camid}{' IR' if ir else ''}" if cfg.cameras == "all"
                else f"IR cam{c.camid} ({c.token})")
        d.text((3 * W + 6 + k * cfg.n * W + 2, 2), name, fill=(0, 0, 0))
    out = Image.fromarray(np.concatenate([np.asarray(header), grid], axis=0))
    save_image(cfg.out, out)
    return Path(cfg.out)
