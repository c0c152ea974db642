"""`dive generate-bench`: our generator's throughput vs a plain diffusers pipeline loop, and the
cost of attention recording.

The reference is what a diffusers user writes by hand: `StableDiffusionPipeline.from_pretrained`,
`load_lora_weights` + `load_textual_inversion` on the checkpoint, `fuse_lora()`, DPM-Solver++,
then `pipe(prompts, generator=...)` per batch. Both draw the same prompts, batch size and steps;
timed alternately, best of `repeats`, after one warm-up batch each.

With `flops` (default) the result also says how far each loop is from the machine's limit: the
FLOPs of one image (counted by torch's FLOP counter on one batch of each loop; the UNet per step
with both guidance branches and the VAE decode broken out), the FLOP/s each loop reached, and that
rate as a share of the float32 (and, where the CPU has it, bf16) matmul peak measured on the same
threads (dive.utils.flops). `generation_speed` times our loop alone for `dive speed`.

`fast` (on by default) adds columns: the same loop with `load_generator(fast=True)`, timed in the
same alternation, with its ratio to the plain loop, the median of its back-to-back pairs (wall and
CPU time), and the largest difference (grey levels) of its images from ours for the same seeds.
`deep_cache` N (5 by default) adds the same columns for `load_generator(fast=True, deep_cache=N)`,
which changes the images (dive.generate.deepcache), with its FLOPs per image.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dive import defaults
from dive.generate import DEFAULT_GUIDANCE
from dive.utils.flops import count_flops, measure_peaks, speed_fields, workload_record
from dive.utils.threads import torch_threads


@dataclass
class GenerateBenchConfig:
    checkpoint: Path = field(default=defaults.DEMO, metadata={"help": "DiVE checkpoint"})
    base: Path | None = field(default=None, metadata={"help": "diffusers base folder; None: the one the checkpoint's dive.json names"})
    n: int = field(default=64, metadata={"help": "images per timed run"})
    batch_size: int = field(default=16, metadata={"help": "images per forward pass (both loops)"})
    steps: int = field(default=25, metadata={"help": "DPM-Solver++ steps"})
    guidance: float = field(default=DEFAULT_GUIDANCE, metadata={"help": "classifier-free guidance scale (generation's default)"})
    repeats: int = field(default=3, metadata={"help": "timed runs of each loop (best is kept)"})
    threads: int = field(default=2, metadata={"help": "torch CPU threads"})
    attention: bool = field(default=True, metadata={"help": "also time attention recording on (all layers and steps)"})
    flops: bool = field(default=True, metadata={
        "help": "also count FLOPs per image and report FLOP/s as a share of the machine's matmul peak"})
    fast: bool = field(default=True, metadata={"help": "also time our loop in the fast mode (dive generate --fast)"})
    deep_cache: int = field(default=5, metadata={
        "help": "also time our loop with --fast --deep-cache N (other images: their largest difference is "
                "reported); 0: skip"})


def _plain_pipeline(base: Path, checkpoint: Path):
    """The hand-written diffusers pipeline; a checkpoint with an infrared adapter gets both LoRAs
    fused, as a user rendering infrared cameras would (the bench times infrared cameras only)."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
    from safetensors.torch import load_file

    from dive.checkpoint import INFRARED_ADAPTER, INFRARED_LORA_FILE, LORA_FILE, SHARED_ADAPTER, has_infrared_adapter

    from dive.utils.io import require_safetensors

    require_safetensors(base)
    pipe = StableDiffusionPipeline.from_pretrained(str(base), safety_checker=None, requires_safety_checker=False,
                                                   use_safetensors=True)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++")
    pipe.load_lora_weights(str(checkpoint), weight_name=LORA_FILE, adapter_name=SHARED_ADAPTER)
    names = [SHARED_ADAPTER]
    if has_infrared_adapter(checkpoint):
        pipe.load_lora_weights(str(checkpoint), weight_name=INFRARED_LORA_FILE, adapter_name=INFRARED_ADAPTER)
        names.append(INFRARED_ADAPTER)
    pipe.set_adapters(names)
    emb = load_file(str(Path(checkpoint) / "learned_embeds.safetensors"))
    pipe.load_textual_inversion(list(emb.values()), token=list(emb))
    pipe.fuse_lora(adapter_names=names)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generation_flops(render, batch: list, steps: int) -> dict:
    """FLOPs of one image, counted over one call `render(batch)`: in total, the UNet per sampling step
    (both guidance branches), the text encoder, and the rest (the VAE decode, mostly)."""
    total, modules, _ = count_flops(lambda: render(batch))
    n = len(batch)
    unet = sum(v for k, v in modules.items() if k.lower().startswith("unet"))
    text = sum(v for k, v in modules.items() if "text" in k.lower())
    return {"flops_per_image": total // n, "unet_flops_per_step": unet // (n * max(1, steps)),
            "text_encoder_flops_per_image": text // n, "decode_flops_per_image": (total - unet - text) // n}


def _prepare(cfg: GenerateBenchConfig, **options):
    """The generator (with `load_generator`'s `options`) and the bench's batches: distinct prompts
    over every identity and infrared camera."""
    from dive.checkpoint import resolve_base
    from dive.generate.pipeline import GenerationRequest, load_generator
    from dive.generate.run import select_cameras, select_identities

    base = resolve_base(cfg.checkpoint, cfg.base)
    gen = load_generator(base, cfg.checkpoint, **options)
    ids = [t.token for t in select_identities(gen.table, min_images=0)]
    cams = select_cameras(gen.table, "infrared")
    per = max(1, -(-cfg.n // max(1, len(ids) * len(cams))))  # distinct prompts, as in a real run
    jobs = GenerationRequest(ids, cams, n=per, steps=cfg.steps, guidance=cfg.guidance).jobs(gen.table)[: cfg.n]
    batches = [jobs[i : i + cfg.batch_size] for i in range(0, len(jobs), cfg.batch_size)]
    return base, gen, jobs, batches


def generation_speed(cfg: GenerateBenchConfig, peaks: dict | None = None) -> dict:
    """`dive speed`'s generation line: our loop alone at the bench's settings, its FLOPs per image
    and the FLOP/s of its best timed run (of `repeats`) against the matmul peak (measured here on
    `threads` unless given)."""
    with torch_threads(cfg.threads):
        _, gen, jobs, batches = _prepare(cfg)

        def ours():
            for b in batches:
                gen.render(b, steps=cfg.steps, guidance=cfg.guidance)

        gen.render(batches[0][:2], steps=2)
        counted = generation_flops(lambda b: gen.render(b, steps=cfg.steps, guidance=cfg.guidance), batches[0],
                                   cfg.steps)
        times = []
        for _ in range(max(1, cfg.repeats)):
            t = time.perf_counter()
            ours()
            times.append(time.perf_counter() - t)
        peaks = peaks or measure_peaks(cfg.threads)
    return workload_record("generate", "image", counted["flops_per_image"], min(times) / len(jobs), peaks,
                           **{k: v for k, v in counted.items() if k != "flops_per_image"},
                           images=len(jobs), batch_size=cfg.batch_size, steps=cfg.steps, guidance=cfg.guidance,
                           image_size=[gen.height, gen.width], repeats=cfg.repeats, checkpoint=str(cfg.checkpoint))


def generate_bench(cfg: GenerateBenchConfig) -> dict:
    with torch_threads(cfg.threads):  # scoped: a caller's own thread setting comes back afterwards
        return _generate_bench(cfg)


def _generate_bench(cfg: GenerateBenchConfig) -> dict:
    from dive.generate.attention import attention_overhead

    base, gen, jobs, batches = _prepare(cfg)
    plain = _plain_pipeline(base, cfg.checkpoint)

    def ours():
        for b in batches:
            gen.render(b, steps=cfg.steps, guidance=cfg.guidance)

    def plain_batch(b):
        gens = [torch.Generator().manual_seed(j.seed) for j in b]
        plain([j.prompt for j in b], height=gen.height, width=gen.width, num_inference_steps=cfg.steps,
              guidance_scale=cfg.guidance, generator=gens, output_type="np")

    def reference():
        for b in batches:
            plain_batch(b)

    variants = _variants(cfg)  # name -> (generator, warm-up seconds)

    def variant_loop(g):
        def run():
            for b in batches:
                g.render(b, steps=cfg.steps, guidance=cfg.guidance)
        return run

    gen.render(batches[0][:2], steps=2)
    plain([batches[0][0].prompt], height=gen.height, width=gen.width, num_inference_steps=2, output_type="np")
    t_ours, t_ref = [], []
    t_var: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in ("ours", "plain", *variants)}
    loops = [(ours, t_ours, "ours"), (reference, t_ref, "plain")] + [
        (variant_loop(g), t_var[name], name) for name, (g, _) in variants.items()]
    for _ in range(max(1, cfg.repeats)):
        for fn, acc, name in loops:
            t, c = time.perf_counter(), time.process_time()
            fn()
            acc.append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    res = {"images": len(jobs), "batch_size": cfg.batch_size, "steps": cfg.steps, "guidance": cfg.guidance,
           "threads": cfg.threads, "repeats": cfg.repeats,
           "ours_images_per_s": round(len(jobs) / min(t_ours), 3),
           "plain_diffusers_images_per_s": round(len(jobs) / min(t_ref), 3)}
    res["ratio"] = round(res["ours_images_per_s"] / res["plain_diffusers_images_per_s"], 4)
    # each repeat's two loops ran back to back: their ratio cancels the machine's drift between
    # repeats (a shared CPU's speed wanders by tens of percent), so the median pair is the robust figure
    res["ratio_median_of_pairs"] = _pairs(t_ours, t_ref)
    # CPU seconds of this process: on a busy machine with threads=1 they follow the work done, not
    # the share of the cores the process got (with more threads they also count spin-waiting)
    res["ratio_cpu_median_of_pairs"] = _pairs(cpu["ours"], cpu["plain"])
    for name, (g, warm_s) in variants.items():
        res.update(_variant_fields(name, t_var[name], t_ref, len(jobs), res["plain_diffusers_images_per_s"], warm_s))
        res[f"{name}_ratio_cpu_median_of_pairs"] = _pairs(cpu[name], cpu["plain"])
        ref = gen.render(batches[0], steps=cfg.steps, guidance=cfg.guidance)
        got = g.render(batches[0], steps=cfg.steps, guidance=cfg.guidance)
        diff = np.abs(ref.astype(np.int16) - got.astype(np.int16))
        res[f"{name}_max_grey_diff"] = int(diff.max())
        res[f"{name}_mean_grey_diff"] = round(float(diff.mean()), 2)
    if cfg.flops and "deep_cache" in variants:
        g = variants["deep_cache"][0]
        res["deep_cache_flops_per_image"] = generation_flops(
            lambda b: g.render(b, steps=cfg.steps, guidance=cfg.guidance), batches[0], cfg.steps)["flops_per_image"]
    if cfg.flops:
        res.update(_flop_fields(cfg, gen, batches[0], plain_batch, min(t_ours) / len(jobs), min(t_ref) / len(jobs)))
    if cfg.attention:
        res["attention"] = attention_overhead(gen, n=cfg.batch_size, steps=cfg.steps, guidance=cfg.guidance,
                                              repeats=cfg.repeats)
        for name in variants:  # recording wraps the fast mode's processors: its cost there
            res[f"{name}_attention"] = attention_overhead(variants[name][0], n=cfg.batch_size, steps=cfg.steps,
                                                          guidance=cfg.guidance, repeats=cfg.repeats)
    return res


def _variants(cfg: GenerateBenchConfig) -> dict:
    """The speed options the bench also times: name -> (its generator, the seconds of its warm-up
    calls at 2 steps, one per batch shape)."""
    options = {}
    if cfg.fast:
        options["fast"] = dict(fast=True)
    if cfg.deep_cache:
        options["deep_cache"] = dict(fast=True, deep_cache=cfg.deep_cache)
    out = {}
    for name, opts in options.items():
        _, g, _, batches = _prepare(cfg, **opts)
        t = time.perf_counter()
        for size in sorted({len(b) for b in batches}):
            g.render(batches[0][:size], steps=2, guidance=cfg.guidance)
        out[name] = (g, time.perf_counter() - t)
    return out


def _pairs(ours: list[float], plain: list[float]) -> float:
    """The median over repeats of plain / ours (each repeat's loops ran back to back)."""
    return round(statistics.median(p / o for o, p in zip(ours, plain)), 4)


def _variant_fields(name: str, times: list[float], t_ref: list[float], images: int, plain_rate: float,
                    warm_s: float) -> dict:
    rate = round(images / min(times), 3)
    return {f"{name}_images_per_s": rate, f"{name}_ratio": round(rate / plain_rate, 4),
            f"{name}_ratio_median_of_pairs": _pairs(times, t_ref), f"{name}_warmup_s": round(warm_s, 2)}


def _flop_fields(cfg: GenerateBenchConfig, gen, batch: list, plain_batch, s_ours: float, s_plain: float) -> dict:
    """Each loop's FLOPs per image (counted on one batch), its FLOP/s and share of the matmul peak."""
    ours = generation_flops(lambda b: gen.render(b, steps=cfg.steps, guidance=cfg.guidance), batch, cfg.steps)
    plain_total, _, _ = count_flops(lambda: plain_batch(batch))
    peaks = measure_peaks(cfg.threads)
    out = {**ours, **speed_fields(ours["flops_per_image"], s_ours, peaks, "ours_"),
           **speed_fields(plain_total // len(batch), s_plain, peaks, "plain_diffusers_"),
           "peak_float32_gflop_per_s": round(peaks["float32_flop_per_s"] / 1e9, 2),
           "peak_bf16_gflop_per_s": None if peaks["bf16_flop_per_s"] is None else round(peaks["bf16_flop_per_s"] / 1e9, 2),
           "bf16": peaks["bf16"]}
    out["plain_diffusers_flops_per_image"] = out.pop("plain_diffusers_flops_per_unit")
    out.pop("ours_flops_per_unit")
    return out
