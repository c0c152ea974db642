"""Recording overhead (`dive generate-bench`) and the `dive attention` command."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from dive.generate import DEFAULT_GUIDANCE
from dive.generate.attention.figure import attention_figure
from dive.generate.attention.maps import MASK_METHODS, AttentionResult, attention_maps, default_tokens
from dive.generate.attention.record import record_attention
from dive.utils.device import DEVICE_HELP, DTYPE_HELP, DTYPES, resolve


def attention_overhead(generator, n: int = 4, steps: int = 25, *, guidance: float = 1.0, seed: int = 0,
                       layers=None, tokens: Sequence[int] | None = None, repeats: int = 1) -> dict:
    """Time `n` images x `steps` without and with recording (all cross-attention layers and
    steps, all 77 positions unless `tokens`), best of `repeats` alternating runs after a warm-up."""
    from dive.generate.pipeline import GenerationRequest

    identity, camera = default_tokens(generator.table)
    jobs = GenerationRequest([identity], [camera], n=n, seed=seed).jobs(generator.table)
    generator.render(jobs[:1], steps=2, guidance=guidance)  # warm-up
    plain, recorded, stats = [], [], {}
    img_plain = img_rec = None
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        img_plain = generator.render(jobs, steps=steps, guidance=guidance)
        plain.append(time.perf_counter() - t)
        t = time.perf_counter()
        with record_attention(generator.pipe, layers=layers, tokens=tokens) as rec:
            img_rec = generator.render(jobs, steps=steps, guidance=guidance)
        recorded.append(time.perf_counter() - t)
        t = time.perf_counter()
        rec.heatmaps((generator.height, generator.width))
        stats = {"records": len(rec.records), "record_mb": round(rec.nbytes() / 2**20, 2),
                 "layers": len(rec.recorded_layers), "aggregate_s": round(time.perf_counter() - t, 4)}
    p, r = min(plain), min(recorded)
    return {"n": n, "steps": steps, "guidance": guidance, "image_size": [generator.height, generator.width],
            "device": str(generator.device), "plain_s": round(p, 4), "recorded_s": round(r, 4),
            "overhead_pct": round(100 * (r - p) / p, 2),
            # back-to-back pairs cancel the machine's drift between repeats: the robust figure
            "overhead_pct_median_of_pairs": round(100 * (float(np.median(np.array(recorded) / np.array(plain))) - 1), 2),
            "identical": bool(np.array_equal(img_plain, img_rec)),
            **stats}


@dataclass
class AttentionConfig:
    """`dive attention`: one generated image and its per-token cross-attention maps."""

    checkpoint: Path = field(metadata={"help": "DiVE checkpoint folder (LoRA + embeddings + tokens.json)"})
    out: Path = field(metadata={"help": "figure (PNG); the summary is written beside it as <out>.json"})
    base: Path | None = field(default=None, metadata={
        "help": "diffusers SD-1.x folder the checkpoint was trained on; None: the one its dive.json names"})
    identity: str | None = field(default=None, metadata={"help": "identity token; when omitted, the table's first external identity"})
    camera: str | None = field(default=None, metadata={"help": "camera token; when omitted, the table's first infrared camera"})
    seed: int = field(default=0, metadata={"help": "global seed, as in `dive generate`"})
    index: int = field(default=0, metadata={"help": "image index, as in `dive generate` (same seed -> same image)"})
    steps: int = field(default=25, metadata={"help": "DPM-Solver++ steps"})
    guidance: float = field(default=DEFAULT_GUIDANCE, metadata={"help": "classifier-free guidance scale (1: off)"})
    negative_prompt: str = field(default="", metadata={
        "help": "negative prompt (used when guidance > 1); {camera} / {identity} become each image's tokens: "
                "'a {camera} photo of person' guides along the identity only"})
    layers: str = field(default="all", metadata={"help": "cross-attention layers: all, or comma-separated down, mid, up, 1/k (resolution), names"})
    step_range: str = field(default="all", metadata={"help": "sampling steps averaged: all, 'a:b' (indices, b exclusive) or fractions '0:0.5'"})
    mask: str = field(default="border", metadata={"help": "person mask for the summary", "choices": list(MASK_METHODS)})
    device: str = field(default="auto", metadata={"help": DEVICE_HELP})
    dtype: str = field(default="fp32", metadata={"help": DTYPE_HELP, "choices": list(DTYPES)})


def run_attention(cfg: AttentionConfig) -> tuple[AttentionResult, Path, Path]:
    from dive.checkpoint import resolve_base
    from dive.generate.pipeline import load_generator
    from dive.utils.io import write_json

    if cfg.out.suffix.lower() != ".png":
        raise ValueError(f"--out {cfg.out}: the figure is a PNG; give a path ending in .png")
    device, dtype = resolve(cfg.device, cfg.dtype)
    gen = load_generator(resolve_base(cfg.checkpoint, cfg.base), cfg.checkpoint, device=device, dtype=dtype)
    res = attention_maps(gen, cfg.identity, cfg.camera, seed=cfg.seed, index=cfg.index, steps=cfg.steps,
                         guidance=cfg.guidance, negative_prompt=cfg.negative_prompt, layers=cfg.layers,
                         step_range=cfg.step_range, mask=cfg.mask)
    fig = attention_figure(res, cfg.out)
    js = cfg.out.with_suffix(".json")
    write_json(js, res.to_dict())
    return res, fig, js
