"""`dive check sd15`: the whole DiVE path at Stable Diffusion 1.5's real shape, offline, timed.

Stages, each through the library function its command calls:

1. base: an SD 1.5-architecture diffusers folder with seeded random weights and CLIP's 49,408-token
   tokenizer (`dive.base.sd15`), images of 512 x 256 (latents 64 x 32);
2. world: a SynthVI world whose training set holds 1,400 identities (100 VI ids in six cameras,
   1,300 external ids), read by the SynthVI reader as `dive train` reads it;
3. train-string, train-embedding: DiVE training (`DiVETrainer`, what `dive train` runs) for
   `--steps` steps: 1,400 identity tokens (+ the camera tokens in embedding mode) added to the
   tokenizer and embedding matrix in one resize, rank-128 LoRA on to_q/to_k/to_v/to_out.0, camera
   tokens as frozen strings (the paper) and as learned embeddings;
4. package: `package_checkpoint` (`dive package`) of both runs;
5. vanilla-load-*: each package loaded by plain diffusers (`load_textual_inversion`,
   `load_lora_weights`), its token rows checked against the file;
6. generate: `dive generate`'s `generate`, DPM-Solver++ `--gen-steps` steps;
7. attention: `dive attention`'s `run_attention`, maps over the 64 x 32 latent grid;
8. export: `dive export`'s `export_dataset` of the world plus the generated images.

The token table holds every identity, but with `--train-images N` only N of the world's images are
encoded and trained on (the VAE encoder costs seconds per 512 x 256 image on a CPU; 0: all of
them, exactly `dive train`). Weights are random, so images are noise: this measures that the code
runs at SD 1.5's shape and what each stage costs (seconds, peak memory), not image quality.
"""

from __future__ import annotations

import gc
import json
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

#: defaults per --size: identity tokens, LoRA rank
SIZE_DEFAULTS = {"full": {"identities": 1400, "rank": 128}, "tiny": {"identities": 6, "rank": 4}}


@dataclass
class CheckSD15Config:
    """The SD 1.5-shape check (see `dive.check.sd15`)."""

    size: str = field(default="full", metadata={
        "help": "full: SD 1.5's published configs at 512x256 (~30 min on a 2-core CPU); tiny: SD 1.5's layout with "
                "micro widths at 128x64 and the same 49,408-token tokenizer (seconds)", "choices": ["full", "tiny"]})
    work: Path | None = field(default=None, metadata={
        "help": "folder for the base, runs, packages, images and export (new or empty; kept). None: a temporary "
                "folder, removed at the end"})
    steps: int = field(default=2, metadata={"help": "DiVE training steps per camera mode"})
    gen_steps: int = field(default=25, metadata={"help": "DPM-Solver++ steps of generation and of the attention image"})
    identities: int = field(default=0, metadata={"help": "identity tokens (0: 1,400 at full size, 6 at tiny)"})
    rank: int = field(default=0, metadata={"help": "UNet LoRA rank (0: 128 at full size, the paper's; 4 at tiny)"})
    batch_size: int = field(default=2, metadata={"help": "images per training step"})
    train_images: int = field(default=8, metadata={
        "help": "images encoded and trained on, spread over the identities (0: all, as `dive train`); the token "
                "table always holds every identity"})
    generate_from: str = field(default="string", metadata={
        "help": "which run's package generates, renders attention and is exported: the paper's string camera tokens "
                "or learned camera embeddings", "choices": ["string", "embedding"]})
    seed: int = field(default=0, metadata={"help": "seed of the weights, the world and every random step"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: leave as is)"})
    device: str = field(default="auto", metadata={"help": "auto (cuda when present), cpu, cuda"})


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is available here")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"--device {device}: expected auto, cpu or cuda")
    return device


def world_config(out: Path, identities: int, seed: int):
    """A SynthVI world with `identities` training identities: 1 in 14 a VI id (one image per camera
    it appears in, 4-6 cameras), the rest external ids of one image each."""
    from dive.data.synthvi.build import SynthConfig

    if identities < 3:
        raise ValueError(f"identities must be at least 3 (VI ids and external ids); got {identities}")
    vi = max(2, identities // 14)
    return SynthConfig(out=out, seed=seed, workers=1, vi_train_ids=vi, vi_val_ids=0, vi_test_ids=1,
                       vi_images_per_camera=(1, 1), ext_ids=identities - vi, ext_median_images=1.0,
                       ext_image_range=(1, 1), ext_test_ids=0, web_images=0)


def subset(training_set, n: int):
    """The training set with only `n` of its images (spread evenly over the VI and the external
    records, so both modalities and both datasets train); the token table is unchanged."""
    from dive.train.data import TrainingSet

    recs = training_set.records
    if not n or n >= len(recs):
        return training_set
    table = training_set.table
    groups = [[i for i, r in enumerate(recs) if not table.is_external(r.dataset)],
              [i for i, r in enumerate(recs) if table.is_external(r.dataset)]]
    groups = [g for g in groups if g]
    picks: list[int] = []
    for k, g in enumerate(groups):
        want = n // len(groups) + (1 if k < n % len(groups) else 0)
        step = max(1, len(g) // max(1, want))
        picks += g[::step][:want]
    picks = sorted(picks)
    return TrainingSet([recs[i] for i in picks], table, [training_set.prompts[i] for i in picks])


def lora_summary(path: Path) -> dict:
    """Layers, rank and targets of a diffusers LoRA file, from its header."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        downs = {k: f.get_slice(k).get_shape() for k in f.keys() if k.endswith("lora_A.weight")}
    names = [k.split(".lora_A")[0] for k in downs]
    targets = sorted({"to_out.0" if n.endswith("to_out.0") else n.rsplit(".", 1)[-1] for n in names})
    return {"lora_layers": len(downs), "lora_rank": sorted({s[0] for s in downs.values()}), "lora_targets": targets}


def train_run(cfg: CheckSD15Config, base: Path, world: Path, out: Path, camera_mode: str, device: str, rank: int,
              progress: bool) -> tuple[Path, dict]:
    from dive.train.trainer import DiVETrainConfig, DiVETrainer, training_set_from_config
    from dive.utils.config import config_to_dict

    tcfg = DiVETrainConfig(base=base, data=world, out=out, camera_mode=camera_mode, min_images=1, steps=cfg.steps,
                           batch_size=cfg.batch_size, rank=rank, lora_targets="attention", warmup=0,
                           save_every=cfg.steps, preview_every=0, seed=cfg.seed, threads=cfg.threads,
                           cpu=device == "cpu")
    ts = subset(training_set_from_config(config_to_dict(tcfg)), cfg.train_images)
    trainer = DiVETrainer(tcfg, training_set=ts, progress=progress)
    emb_rows = trainer.text_encoder.get_input_embeddings().weight.shape[0]
    info = {"vocab_before": trainer.orig_vocab, "tokens_added": len(trainer.tokenizer) - trainer.orig_vocab,
            "identity_tokens": len(ts.table.identities), "embedding_rows": emb_rows, "images": len(ts.records),
            "image_size": [trainer.height, trainer.width]}
    final = trainer.train()
    del trainer
    gc.collect()
    losses = [json.loads(line)["loss"] for line in (out / "loss.jsonl").read_text().splitlines()]
    from dive.checkpoint import LORA_FILE

    return final, {**info, "losses": losses, **lora_summary(final / LORA_FILE)}


def vanilla_load(base: Path, package: Path) -> dict:
    """Plain diffusers, no DiVE code: the base, then the package's embeddings and LoRA."""
    import torch
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    from dive.checkpoint import EMBEDS_FILE, LORA_FILE

    pipe = StableDiffusionPipeline.from_pretrained(str(base), safety_checker=None, requires_safety_checker=False)
    emb = load_file(str(package / EMBEDS_FILE))
    pipe.load_textual_inversion(list(emb.values()), token=list(emb))
    pipe.load_lora_weights(str(package), weight_name=LORA_FILE)
    rows = pipe.text_encoder.get_input_embeddings().weight
    ids = pipe.tokenizer.convert_tokens_to_ids(list(emb))
    same = all(torch.equal(rows[i].detach(), emb[t].to(rows.dtype)) for i, t in zip(ids, emb))
    lora_modules = sum(1 for _, m in pipe.unet.named_modules() if hasattr(m, "lora_A") and m.lora_A)
    info = {"vocab": len(pipe.tokenizer), "tokens_loaded": len(emb), "rows_match": same,
            "unet_adapters": pipe.get_list_adapters().get("unet", []), "lora_modules": lora_modules}
    del pipe
    gc.collect()
    if not same or not lora_modules:
        what = "no LoRA layer" if not lora_modules else "token rows other than learned_embeds.safetensors holds"
        raise RuntimeError(f"{package}: vanilla diffusers loaded {what}")
    return info


def check_sd15(cfg: CheckSD15Config, *, progress: bool = False, meter=None) -> dict:
    """Run every stage; returns {"config", "device", "stages": [rows], "work"} (also written as
    <work>/check-sd15.json when --work is given)."""
    from dive.check.meter import StageMeter
    from dive.utils.threads import torch_threads

    if cfg.size not in SIZE_DEFAULTS:
        raise ValueError(f"--size must be full or tiny; got {cfg.size!r}")
    if cfg.steps < 1 or cfg.gen_steps < 1 or cfg.batch_size < 1 or cfg.train_images < 0:
        raise ValueError("--steps, --gen-steps and --batch-size must be at least 1, --train-images at least 0")
    device = resolve_device(cfg.device)
    defaults = SIZE_DEFAULTS[cfg.size]
    cfg = replace(cfg, identities=cfg.identities or defaults["identities"], rank=cfg.rank or defaults["rank"])
    keep = cfg.work is not None
    work = Path(cfg.work) if keep else Path(tempfile.mkdtemp(prefix="dive-check-sd15-"))
    if keep and work.exists() and (not work.is_dir() or any(work.iterdir())):
        raise FileExistsError(f"{work}: exists and is not an empty folder; --work needs a new or empty folder")
    meter = meter or StageMeter(device)
    try:
        with torch_threads(cfg.threads):
            result = _run(cfg, work, device, meter, progress)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    result |= {"work": str(work) if keep else None, "memory_method": meter.method}
    if keep:
        from dive.utils.io import write_json

        write_json(work / "check-sd15.json", result)
    return result


def _run(cfg: CheckSD15Config, work: Path, device: str, meter, progress: bool) -> dict:
    base, world = work / "base", work / "world"
    with meter.stage("imports") as info:  # first imports of the libraries, apart from the stage that needs them
        import accelerate
        import diffusers
        import peft
        import torch
        import transformers
        from diffusers import StableDiffusionPipeline  # noqa: F401
        from transformers import CLIPTextModel  # noqa: F401

        from dive.base.sd15 import IMAGE_SIZE, build_sd15_base, parameter_counts
        from dive.checkpoint import TOKENS_FILE, TokenTable
        from dive.data.synthvi.build import build_world
        from dive.export import ExportConfig, export_dataset
        from dive.generate.attention import AttentionConfig, run_attention
        from dive.generate.run import GenerateConfig, generate
        from dive.train.trainer import package_checkpoint

        info["versions"] = {m.__name__: m.__version__ for m in (torch, diffusers, transformers, peft, accelerate)}
    with meter.stage("base") as info:
        build_sd15_base(base, size=cfg.size, seed=cfg.seed)
        h, w = IMAGE_SIZE[cfg.size]
        info |= {"parameters": parameter_counts(base), "image_size": [h, w]}
    with meter.stage("world") as info:
        summary = build_world(world_config(world, cfg.identities, cfg.seed), progress=progress)
        info["images"] = summary["images"]
    finals = {}
    for mode in ("string", "embedding"):
        with meter.stage(f"train-{mode}") as info:
            finals[mode], made = train_run(cfg, base, world, work / f"train-{mode}", mode, device, cfg.rank, progress)
            info |= made
    packages = {}
    with meter.stage("package") as info:
        for mode, final in finals.items():
            packages[mode] = package_checkpoint(final, work / f"package-{mode}")
        info["packages"] = sorted(p.name for p in packages.values())
    for mode, pkg in packages.items():
        with meter.stage(f"vanilla-load-{mode}") as info:
            info |= vanilla_load(base, pkg)
    pkg = packages[cfg.generate_from]
    table = TokenTable.load(pkg / TOKENS_FILE)
    identity = next(t.token for t in table.identities if table.is_external(t.dataset))
    with meter.stage("generate") as info:
        gen_out = generate(GenerateConfig(checkpoint=pkg, out=work / "generate", ids=(identity,), cameras="infrared",
                                          n=1, steps=cfg.gen_steps, device=device), progress=progress)
        rows = [json.loads(line) for line in (gen_out / "manifest.jsonl").read_text().splitlines()]
        info |= {"images": len(rows), "image_size": [rows[0]["height"], rows[0]["width"]], "steps": cfg.gen_steps}
    with meter.stage("attention") as info:
        res, fig, js = run_attention(AttentionConfig(checkpoint=pkg, out=work / "attention" / "attention.png",
                                                     identity=identity, steps=cfg.gen_steps, device=device))
        lh, lw = res.image.shape[0] // 8, res.image.shape[1] // 8
        if cfg.size == "full" and (lh, lw) != (64, 32):
            raise RuntimeError(f"attention image {res.image.shape[:2]}: expected 512x256 (64x32 latents)")
        info |= {"latent_grid": [lh, lw], "maps": len(res.maps), "layers": len(res.layers), "figure": fig.name}
    with meter.stage("export") as info:
        s = export_dataset(ExportConfig(data=world, out=work / "export", synthetic=(gen_out,)), progress=progress)
        if not s["complete"]:
            raise RuntimeError(f"{work / 'export'}: the export stopped after {s['done']} of {s['total']} images")
        info |= {"images": s["counts"]["images"], "per_origin": s["counts"]["per_origin"]}
    return {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items()}, "device": device,
            "torch_threads": torch.get_num_threads(), "stages": meter.rows}
