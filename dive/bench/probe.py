"""The unit costs behind the bench's projection (dive.bench.plan), measured on this machine.

Two sources, the first preferred:

* what this bench folder records: seconds per ReID batch of its finished runs (report.json's
  training timing) and of runs under way (their log.jsonl iteration rows), per method; seconds
  per step of a DiVE or CycleGAN training it has under way (log.jsonl);
* short seeded probes (`probe_costs`, a few seconds each): a few ReID training batches of the
  bench network per method (forward, backward and optimizer step on random images of the
  training shape, at the one thread each ReID run uses; `dive speed`'s ReID workload), a forward
  pass of the network at evaluation's batch size, a few DPM-Solver++ steps of the generator at the
  bench's batch size, threads and guidance (two step counts, so the per-step and the per-image
  parts are separated), the world renderer on a few images, and an image's read, decode, JPEG
  encode and write (what exports and the copying baselines do per image).

A cost is a dict: `seconds` per `unit`, and `source` (where the number comes from).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

from dive.bench.config import BenchConfig
from dive.bench.jobs import parse_reid_run_name

#: probe sizes: timed ReID batches per method (after one warm-up), images of the world renderer
#: and of the image I/O probe, and the two DPM-Solver++ step counts timed
REID_BATCHES = 2
WORLD_IMAGES = 24
IO_IMAGES = 12
GEN_STEPS = (2, 4)


def cost(seconds: float | None, unit: str, source: str, **detail) -> dict:
    return {"seconds": None if seconds is None else float(seconds), "unit": unit, "source": source, **detail}


def log_rate(path: Path, counter: str) -> float | None:
    """Median seconds per `counter` unit (iteration, step) between consecutive rows of a log.jsonl
    that carry both `counter` and `seconds` (a restart, whose clock begins again, is skipped)."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line) if line.strip() else {}
        except json.JSONDecodeError:
            continue  # a row cut by a kill
        if counter in row and "seconds" in row:
            rows.append((int(row[counter]), float(row["seconds"])))
    rates = [(s1 - s0) / (n1 - n0) for (n0, s0), (n1, s1) in zip(rows, rows[1:]) if n1 > n0 and s1 > s0]
    return statistics.median(rates) if rates else None


def recorded_costs(cfg: BenchConfig) -> dict[str, dict]:
    """The unit costs this bench folder records (see the module docstring): `reid:<method>`
    seconds per batch, `dive` and `cyclegan` seconds per training step."""
    per_method: dict[str, list[float]] = {}
    for run in sorted((cfg.out / "reid").glob("*")):
        parsed = parse_reid_run_name(run.name)
        if parsed is None:
            continue
        rate = None
        if (run / "report.json").exists():
            try:
                rate = json.loads((run / "report.json").read_text())["train"]["timing"]["seconds_per_batch"]
            except (ValueError, KeyError, TypeError):
                rate = None
        elif (run / "log.jsonl").exists():
            rate = log_rate(run / "log.jsonl", "iter")
        if rate:
            per_method.setdefault(parsed[1], []).append(float(rate))
    out = {f"reid:{m}": cost(statistics.median(v), "batch", f"this bench's runs ({len(v)})")
           for m, v in per_method.items()}
    dive = [r for log in sorted((cfg.out / "dive").glob("*/log.jsonl")) if (r := log_rate(log, "step"))]
    if dive:
        out["dive"] = cost(statistics.median(dive), "step", "this bench's DiVE training log")
    cyclegan = cfg.out / "cyclegan" / "log.jsonl"
    if cyclegan.exists() and (rate := log_rate(cyclegan, "step")):
        out["cyclegan"] = cost(rate, "step", "this bench's CycleGAN training log")
    return out


# ------------------------------------------------------------------------------------------------
# probes
# ------------------------------------------------------------------------------------------------


def caption_cost() -> dict | None:
    """Seconds per caption reader step, from the shipped reader's report.json (its training time
    over its steps, at the threads it recorded); None when that report is not there."""
    from dive import defaults

    path = defaults.shipped(defaults.CAPTION_READER_NAME) / "report.json"
    if not path.exists():
        return None
    report = json.loads(path.read_text())
    steps = report.get("config", {}).get("steps")
    if not steps or not report.get("seconds"):
        return None
    threads = report["config"].get("threads") or "all"
    return cost(report["seconds"] / steps, "step", f"the shipped caption reader's training ({threads} thread(s))")


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def probe_reid(method: str, seed: int = 0) -> dict:
    """Seconds per training batch of the bench's ReID network and recipe `method`, one thread."""
    from dive.reid.speed import ReIDSpeedConfig, reid_speed

    # the record's share-of-peak fields are not used here: no peak is measured (it takes seconds)
    no_peak = {"threads": 1, "float32_flop_per_s": 1.0, "bf16_flop_per_s": None, "bf16": "not measured"}
    rec = reid_speed(ReIDSpeedConfig(method=method, batches=REID_BATCHES, warmup=1, num_classes=16, threads=1,
                                     seed=seed), no_peak)
    return cost(rec["seconds_per_unit"], "batch", "probe", gflops=rec["gflops_per_unit"],
                batch_size=rec["batch_size"])


def probe_forward(seed: int = 0) -> dict:
    """Seconds per image of the ReID network's test-time forward pass (evaluation's batch size and
    thread count), what evaluation and the quality metrics spend per image."""
    import torch

    from dive.reid.config import ReIDTrainConfig
    from dive.reid.evaluate import extract_features
    from dive.reid.model import build_model
    from dive.reid.run import ReIDEvalConfig
    from dive.utils.threads import torch_threads

    ev, tcfg = ReIDEvalConfig(), ReIDTrainConfig()
    n = ev.eval_batch_size
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, tcfg.height, tcfg.width), generator=g, dtype=torch.uint8)
    with torch_threads(ev.eval_threads):
        torch.manual_seed(seed)
        model = build_model(tcfg.model_spec(16))
        extract_features(model, images=images[:8], modality=[False] * 8)
        seconds = _timed(lambda: extract_features(model, images=images, modality=[False] * n, batch_size=n))
    return cost(seconds / n, "image", "probe")


def probe_images(files: list[Path], tmp: Path) -> dict:
    """Seconds per image to read, decode, JPEG-encode and write one image (`files`: real images)."""
    import io

    from dive.export.files import encode_image
    from dive.utils.io import load_rgb, write_bytes

    def one(i: int, path: Path) -> None:
        raw = path.read_bytes()
        img = load_rgb(path, data=raw)
        buf = io.BytesIO()
        img.save(buf, format="PNG")  # a generated image arrives as PNG and leaves as JPEG
        write_bytes(tmp / f"io-{i}.jpg", encode_image(buf.getvalue(), "jpg", 95))

    files = files[:IO_IMAGES]
    one(0, files[0])
    seconds = _timed(lambda: [one(i, p) for i, p in enumerate(files)])
    return cost(seconds / len(files), "image", "probe")


def probe_world(synth_cfg, plan, tmp: Path) -> tuple[dict, list[Path]]:
    """Seconds per image of the world renderer (on one process), and the files it wrote in `tmp`."""
    from dive.data.synthvi import build

    cfg = dataclasses.replace(synth_cfg, out=tmp / "world")
    jobs = [j for j in plan.jobs if j.dataset in ("vi", "external")][:: max(1, len(plan.jobs) // (4 * WORLD_IMAGES))]
    jobs = jobs[:WORLD_IMAGES]
    build._init_worker(cfg, plan)
    try:
        build._render_job(jobs[0])
        seconds = _timed(lambda: [build._render_job(j) for j in jobs[1:]])
    finally:
        build._WORKER.clear()
    return cost(seconds / max(1, len(jobs) - 1), "image", "probe"), [cfg.out / j.rel_path for j in jobs]


def probe_generation(cfg: BenchConfig, checkpoint: Path | None) -> dict:
    """Seconds per generated image at the bench's steps, guidance, batch size and threads: the
    per-checkpoint generator when it exists, else its base alone (the LoRA is fused: same cost).
    `detail`: the per-image part (text encoder, VAE decode) and the per-step part. With a deep-cache
    interval N the two timed runs are N and 2N steps (each one whole step and N-1 shallow ones), so
    the per-step part is the average of a cached run's steps."""
    from dive.checkpoint import resolve_base
    from dive.generate.pipeline import GenerationRequest, ImageJob, load_generator
    from dive.generate.run import GenerateConfig, select_cameras, select_identities
    from dive.utils.threads import torch_threads

    batch = next(f.default for f in dataclasses.fields(GenerateConfig) if f.name == "batch_size")
    base = resolve_base(checkpoint) if checkpoint is not None else cfg.base
    with torch_threads(cfg.threads):
        gen = load_generator(base, checkpoint, fast=cfg.gen_deep_cache > 0, deep_cache=cfg.gen_deep_cache)
        steps = (cfg.gen_deep_cache, 2 * cfg.gen_deep_cache) if cfg.gen_deep_cache else GEN_STEPS
        jobs = []
        if checkpoint is not None:
            ids = [t.token for t in select_identities(gen.table, min_images=cfg.min_images)]
            jobs = GenerationRequest(ids, select_cameras(gen.table, "infrared"), n=cfg.n_per_camera,
                                     seed=cfg.gen_seed).jobs(gen.table)[:batch]
        jobs = jobs or [ImageJob("", "", i, i, "a photo of a person") for i in range(batch)]
        gen.render(jobs[:2], steps=1, guidance=cfg.guidance)
        # the best of two of each: a shared machine's speed wanders
        lo, hi = (min(_timed(lambda s=s: gen.render(jobs, steps=s, guidance=cfg.guidance)) for _ in range(2))
                  for s in steps)
    per_step = (hi - lo) / (steps[1] - steps[0])
    if per_step <= 0:  # a noisy machine: count the whole time as steps
        per_step = hi / steps[1]
    fixed = max(0.0, lo - steps[0] * per_step)
    n = len(jobs)
    return cost((fixed + cfg.gen_steps * per_step) / n, "image", "probe", batch_size=n,
                per_image_seconds=fixed / n, per_step_seconds=per_step / n)


def probe_costs(cfg: BenchConfig, needs: set[str], *, world_plan=None, world_files: list[Path] = (),
                checkpoint: Path | None = None, synth_cfg=None) -> dict[str, dict]:
    """Probe the costs named in `needs`: `reid:<method>`, `forward`, `generate`, `world`, `image`."""
    out: dict[str, dict] = {}

    def run(key: str, fn, *args):
        t = time.perf_counter()
        res = fn(*args)
        found = res[0] if isinstance(res, tuple) else res
        out[key] = found | {"probe_seconds": round(time.perf_counter() - t, 1)}
        return res

    with tempfile.TemporaryDirectory(prefix="dive-bench-probe-") as tmp:
        files = list(world_files)
        if "world" in needs and world_plan is not None:
            files = run("world", probe_world, synth_cfg, world_plan, Path(tmp))[1]
        if "image" in needs and files:
            run("image", probe_images, files, Path(tmp))
    for key in sorted(needs):
        if key.startswith("reid:"):
            run(key, probe_reid, key.split(":", 1)[1], cfg.gen_seed)
    if "forward" in needs:
        run("forward", probe_forward, cfg.gen_seed)
    if "generate" in needs and (checkpoint is not None or (Path(cfg.base) / "model_index.json").exists()):
        run("generate", probe_generation, cfg, checkpoint)
    return out
