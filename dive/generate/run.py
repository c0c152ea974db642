"""`dive generate`: identities x camera tokens x N images, resumable and shardable.

Layout of the output folder::

    images/<identity>/<camera>/<index>.png   one file per image (atomic writes)
    manifest-<rank>.jsonl                    one row per finished image, appended after its file
    manifest.jsonl                           all rows, sorted; written when every shard is done
    generate.json                            the settings (and checkpoint hash) of the run

Resume: rows already in the manifests are skipped, so a killed run continues without redoing or
corrupting finished images; an image written but not yet listed is simply made again (same seed,
same bytes). Sharding: under torchrun / accelerate each process takes every world-th job.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from dive.checkpoint import IdentityToken, TokenTable, resolve_base, trained_base
from dive.generate import DEFAULT_GUIDANCE
from dive.generate.pipeline import GenerationRequest, Generator, load_generator
from dive.utils.config import config_to_dict
from dive.utils.device import DEVICE_HELP, DTYPE_HELP, DTYPES, dtype_name, resolve
from dive.utils.io import save_image, write_json, write_text
from dive.utils.lock import output_lock


@dataclass
class GenerateConfig:
    """Generation. Paper: 18 images per infrared camera, DPM-Solver++ 25 steps."""

    checkpoint: Path = field(metadata={"help": "DiVE checkpoint folder (LoRA + embeddings + tokens.json)"})
    out: Path = field(metadata={"help": "output folder (resumable)"})
    base: Path | None = field(default=None, metadata={
        "help": "diffusers SD-1.x folder the checkpoint was trained on; None: the one its dive.json names"})
    identities: str = field(default="external", metadata={"help": "which identity tokens: external, vi or all", "choices": ["external", "vi", "all"]})
    min_images: int = field(default=12, metadata={"help": "only identities with at least this many real images (paper: more than 11)"})
    top_k: int = field(default=0, metadata={"help": "then keep the K with the most images (0: all)"})
    random_k: int = field(default=0, metadata={"help": "then keep K chosen at random with --seed (0: all)"})
    ids: tuple[str, ...] = field(default=(), metadata={"help": "explicit identity tokens (overrides the selection)"})
    cameras: str = field(default="infrared", metadata={"help": "camera tokens: infrared, visible, all, or comma-separated tokens"})
    n: int = field(default=18, metadata={"help": "images per identity and camera"})
    seed: int = field(default=0, metadata={"help": "global seed; each image's seed derives from (seed, identity, camera, index)"})
    steps: int = field(default=25, metadata={"help": "DPM-Solver++ steps"})
    guidance: float = field(default=DEFAULT_GUIDANCE, metadata={"help": "classifier-free guidance scale (1: off)"})
    negative_prompt: str = field(default="", metadata={
        "help": "negative prompt (used when guidance > 1); {camera} / {identity} become each image's tokens: "
                "'a {camera} photo of person' guides along the identity only"})
    batch_size: int = field(default=16, metadata={"help": "images per forward pass"})
    device: str = field(default="auto", metadata={"help": DEVICE_HELP})
    dtype: str = field(default="fp32", metadata={"help": DTYPE_HELP, "choices": list(DTYPES)})
    fast: bool = field(default=False, metadata={
        "help": "fast mode: text-derived values once per batch instead of once per step, one q/k/v matmul; "
                "images within 2 grey levels of the default (float rounding); see docs/generation-speed.md"})
    deep_cache: int = field(default=0, metadata={
        "help": "deep-feature cache interval N >= 2: the whole UNet on one step in N, its shallow path on the "
                "others (DeepCache); faster, other images (0: off); see docs/generation-speed.md"})
    stop_after: int = field(default=0, metadata={"help": "stop (as if killed) after this many images; for tests"})


#: generate.json keys written only when not at these values (earlier folders lack them)
_ABSENT_SETTINGS = {"dtype": "fp32", "fast": False, "deep_cache": 0}


def recorded_setting(settings: dict, key: str):
    """A generate.json setting, a key written only when on read at its default."""
    return settings.get(key, _ABSENT_SETTINGS.get(key))


def select_identities(table: TokenTable, *, which: str = "external", min_images: int = 12, top_k: int = 0,
                      random_k: int = 0, ids: tuple[str, ...] = (), seed: int = 0) -> list[IdentityToken]:
    if ids:
        return [table.get(t) for t in ids]  # type: ignore[misc]
    pool = table.identities
    if which == "external":
        pool = [t for t in pool if table.is_external(t.dataset)]
    elif which == "vi":
        pool = [t for t in pool if not table.is_external(t.dataset)]
    pool = [t for t in pool if t.images >= min_images]
    if top_k:
        pool = sorted(pool, key=lambda t: (-t.images, t.token))[:top_k]
    if random_k and random_k < len(pool):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 4242]))
        pool = [pool[i] for i in sorted(rng.choice(len(pool), size=random_k, replace=False))]
    return sorted(pool, key=lambda t: t.token)


def select_cameras(table: TokenTable, spec: str) -> list[str]:
    if spec in ("infrared", "visible"):
        return [c.token for c in table.cameras if c.modality == spec]
    if spec == "all":
        return [c.token for c in table.cameras]
    toks = [s.strip() for s in spec.split(",") if s.strip()]
    for t in toks:
        table.get(t)
    return toks


def safe_name(token: str) -> str:
    return token.strip("<>").replace("/", "_")


def image_relpath(identity: str, camera: str, index: int) -> str:
    return f"images/{safe_name(identity)}/{camera}/{index:04d}.png"


def read_manifest_rows(out: Path) -> list[dict]:
    rows = []
    for p in sorted(out.glob("manifest-*.jsonl")):
        for line in p.read_text().splitlines():
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a row cut by a kill: its image is simply made again
    return rows


def _end_partial_row(shard: Path) -> None:
    """A kill mid-append can leave a last row without its newline: close it, so the next row
    starts on its own line (the cut row is then skipped as unreadable, its image made again)."""
    if shard.exists() and shard.stat().st_size:
        with open(shard, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")


def generate(cfg: GenerateConfig, *, generator: Generator | None = None, progress: bool = True,
             rank: int | None = None, world: int | None = None, on_batch=None, should_stop=None) -> Path:
    """Run (or resume) a generation job; returns the output folder. Rank 0 holds the folder's lock."""
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world = int(os.environ.get("WORLD_SIZE", 1)) if world is None else world
    with output_lock(cfg.out, enabled=rank == 0):
        return _generate(cfg, generator, progress, rank, world, on_batch, should_stop)


def _generate(cfg: GenerateConfig, generator: Generator | None, progress: bool, rank: int, world: int, on_batch,
              should_stop) -> Path:
    if generator is None:
        device, dtype = resolve(cfg.device, cfg.dtype)  # a bad or absent device: one line, before anything else
        cfg = replace(cfg, base=resolve_base(cfg.checkpoint, cfg.base))
        generator = load_generator(cfg.base, cfg.checkpoint, device=device, dtype=dtype, fast=cfg.fast,
                                    deep_cache=cfg.deep_cache)
    elif cfg.base is None:  # the caller's generator is what renders; record its checkpoint's base if at hand
        cfg = replace(cfg, base=trained_base(cfg.checkpoint))
    gen = generator
    table = gen.table
    idents = select_identities(table, which=cfg.identities, min_images=cfg.min_images, top_k=cfg.top_k,
                               random_k=cfg.random_k, ids=cfg.ids, seed=cfg.seed)
    if not idents:
        raise ValueError(f"no identity of {cfg.checkpoint} matches the selection (min_images={cfg.min_images}, which={cfg.identities})")
    cams = select_cameras(table, cfg.cameras)
    if not cams:
        raise ValueError(f"{cfg.checkpoint}: no camera token matches {cfg.cameras!r}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in config_to_dict(cfg).items()
                if k not in ("stop_after", "device", "dtype", "fast", "deep_cache")}
    if dtype_name(gen.dtype) != "fp32":  # recorded only when not fp32: earlier fp32 folders resume as they were
        settings["dtype"] = dtype_name(gen.dtype)
    settings |= gen.speed_options  # likewise only when on: what the generator that renders does
    settings |= {"checkpoint_hash": gen.checkpoint_hash, "scheduler": "DPMSolverMultistep (dpmsolver++)",
                 "height": gen.height, "width": gen.width, "identities_selected": [t.token for t in idents],
                 "cameras_selected": cams}
    settings_path = out / "generate.json"
    if settings_path.exists():
        old = json.loads(settings_path.read_text())
        keys = ("checkpoint_hash", "seed", "steps", "guidance", "negative_prompt", "height", "width", "dtype", "fast",
                "deep_cache")
        differ = [f"{k} {recorded_setting(old, k)} -> {recorded_setting(settings, k)}" for k in keys
                  if recorded_setting(old, k) != recorded_setting(settings, k)]
        if differ:
            raise ValueError(f"{settings_path}: this folder was generated with other settings ({'; '.join(differ)}); "
                             "use a new --out")
    if rank == 0:
        write_json(settings_path, settings)

    request = GenerationRequest([t.token for t in idents], cams, n=cfg.n, seed=cfg.seed, steps=cfg.steps,
                                guidance=cfg.guidance, negative_prompt=cfg.negative_prompt)
    done = {(r["identity_token"], r["camera_token"], r["index"]) for r in read_manifest_rows(out)
            if (out / r["path"]).exists()}
    jobs = [j for i, j in enumerate(request.jobs(table)) if i % world == rank]
    key = lambda j: (j.identity, j.camera, j.index)  # noqa: E731
    # batches are fixed chunks of the shard's job list: a resumed run renders an unfinished batch
    # whole (same composition, so the same bytes as an uninterrupted run) and writes what is missing
    batches = [jobs[i : i + cfg.batch_size] for i in range(0, len(jobs), cfg.batch_size)]
    remaining = sum(key(j) not in done for j in jobs)
    shard = out / f"manifest-{rank}.jsonl"
    _end_partial_row(shard)
    bar = tqdm(total=len(jobs), initial=len(jobs) - remaining, desc=f"generate[{rank}]", unit="img",
               disable=not progress)
    t0, made = time.time(), 0
    for batch in batches:
        missing = [j for j in batch if key(j) not in done]
        if not missing:
            continue
        if (should_stop is not None and should_stop()) or (cfg.stop_after and made >= cfg.stop_after):
            break
        images = gen.render(batch, steps=cfg.steps, guidance=cfg.guidance, negative_prompt=cfg.negative_prompt)
        rows = []
        for job, img in zip(batch, images):
            if key(job) in done or (cfg.stop_after and made + len(rows) >= cfg.stop_after):
                continue
            rel = image_relpath(job.identity, job.camera, job.index)
            save_image(out / rel, Image.fromarray(img))
            ident = table.get(job.identity)
            cam = table.get(job.camera)
            rows.append({"path": rel, "identity_token": job.identity, "camera_token": job.camera, "index": job.index,
                         "dataset": ident.dataset, "pid": ident.pid, "camid": cam.camid, "modality": cam.modality,
                         "prompt": job.prompt, "seed": job.seed, "steps": cfg.steps, "guidance": cfg.guidance,
                         "negative_prompt": cfg.negative_prompt, "scheduler": settings["scheduler"],
                         "checkpoint_hash": gen.checkpoint_hash, "height": gen.height, "width": gen.width,
                         **gen.speed_options})
        with open(shard, "a") as f:
            f.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
            f.flush()
            os.fsync(f.fileno())
        made += len(rows)
        bar.update(len(rows))
        bar.set_postfix(img_per_s=f"{made / max(1e-9, time.time() - t0):.2f}")
        if on_batch is not None:
            on_batch(len(jobs) - remaining + made, len(jobs), rows)
    bar.close()
    rows = read_manifest_rows(out)
    keys = {(j.identity, j.camera, j.index) for j in request.jobs(table)}
    finished = {(r["identity_token"], r["camera_token"], r["index"]): r for r in rows}
    if keys <= set(finished):
        ordered = sorted(finished.values(), key=lambda r: (r["identity_token"], r["camera_token"], r["index"]))
        write_text(out / "manifest.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in ordered))
    return out
