"""The bench's stages, each resumable (a finished stage's output is reused on a rerun): the world
(dive.bench.world, with the models that belong to it), the DiVE checkpoints (shipped, or trained here), generation per DiVE variant and the img2img row,
the comparison baselines (grayscale, CycleGAN), the oracle's true infrared renders, Table 5's
identity subsets, one SYSU-layout export per training set, and the check that a rerun sees the
same inputs."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from dive.bench.config import BenchConfig
from dive.utils.io import write_json
from dive.utils.threads import torch_threads

#: DiVE variants of Table 3: (name, DiVETrainConfig overrides, BenchConfig field of its checkpoint)
DIVE_VARIANTS = (
    ("camera", {}, "checkpoint"),
    ("modality", {"granularity": "modality"}, "modality_checkpoint"),
    # infrared-only VI images: the VI identity tokens can only learn from infrared, whatever the
    # per-camera recipe's identity_modalities (a "visible" recipe would leave them untrained)
    ("ir-only", {"vi_modalities": "infrared", "identity_modalities": "both"}, "ir_only_checkpoint"),
)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def dive_variants(cfg: BenchConfig) -> tuple:
    """The DiVE variants the bench makes: all three, or the per-camera one alone (--no-ablations)."""
    return DIVE_VARIANTS if cfg.ablations else DIVE_VARIANTS[:1]


#: DiVETrainConfig fields that say how a run is carried out, not what it learns: not part of the
#: recipe the bench copies from the per-camera checkpoint into the ablations it trains
_RUN_FIELDS = {"base", "data", "out", "threads", "save_every", "preview_every", "stop_after", "cpu", "keep_checkpoints",
               "init_from", "train_parts", "data_format", "external", "external_format", "min_images", "seed"}


def variant_recipe(camera_checkpoint: Path) -> dict:
    """The per-camera checkpoint's training recipe (its dive.json), less run settings: an ablation
    the bench has to train uses it, so Table 3 changes one thing at a time (token granularity or
    the VI modalities), whatever recipe the shipped checkpoint was made with."""
    from dive.checkpoint import training_config
    from dive.train.trainer import DiVETrainConfig

    saved = training_config(camera_checkpoint)
    fields = {f.name: f for f in dataclasses.fields(DiVETrainConfig)}
    recipe = {}
    for key, value in saved.items():
        if key in fields and key not in _RUN_FIELDS:
            is_path = "Path" in str(fields[key].type) and value is not None
            recipe[key] = Path(value) if is_path else value
    return recipe


def recipe_differences(camera_recipe: dict, ablation_recipe: dict, overrides: dict) -> list[str]:
    """Recipe fields (other than the variant's own `overrides`) in which an ablation differs from the
    per-camera checkpoint, a field missing from an older dive.json read as its default."""
    from dive.train.trainer import DiVETrainConfig

    defaults = {f.name: f.default for f in dataclasses.fields(DiVETrainConfig)
                if f.default is not dataclasses.MISSING and f.name not in _RUN_FIELDS}

    def value(recipe: dict, key: str):
        v = recipe.get(key, defaults.get(key))
        return str(v) if isinstance(v, Path) else v

    keys = (set(camera_recipe) | set(ablation_recipe)) - set(overrides)
    return sorted(k for k in keys if value(camera_recipe, k) != value(ablation_recipe, k))


def finished_checkpoint(cfg: BenchConfig, name: str, attr: str) -> Path | None:
    """A DiVE variant's checkpoint folder when there is one: the given folder, or one the bench
    trained earlier in `out/dive/<name>/final`; None when the bench has to train it."""
    given = getattr(cfg, attr)
    if given is not None and given.exists():
        return given
    final = cfg.out / "dive" / name / "final"
    return final if (final / "dive.json").exists() else None


def ensure_checkpoints(cfg: BenchConfig) -> dict[str, Path]:
    """Each DiVE variant's checkpoint: the given folder, or one trained (and packaged) here. A
    missing ablation is trained with the per-camera checkpoint's own recipe and base; a given one
    must share that base (Table 3 would otherwise compare two base models)."""
    from dive.checkpoint import check_checkpoint_dir, trained_base
    from dive.train.trainer import DiVETrainConfig, train_dive

    found: dict[str, Path] = {}
    recipe: dict = {}
    base = cfg.base
    for name, overrides, attr in dive_variants(cfg):
        given = getattr(cfg, attr)
        done = finished_checkpoint(cfg, name, attr)
        if done is None:
            if name == "camera":  # the shipped demo's recipe, with this world's captions
                from dive.bench.world import demo_recipe

                recipe = demo_recipe(cfg)
            run = cfg.out / "dive" / name
            steps = recipe.get("steps", cfg.dive_steps)
            log(f"training the DiVE '{name}' checkpoint ({steps} steps on {base}) in {run}"
                 + (f" ({given} does not exist)" if given is not None else ""))
            settings = dict(steps=steps, warmup=min(100, steps // 4)) | recipe | overrides
            tcfg = DiVETrainConfig(**settings, base=base, data=cfg.data, out=run, min_images=cfg.min_images,
                                   seed=0, threads=cfg.threads, save_every=max(1, min(500, steps)),
                                   preview_every=0)
            train_dive(tcfg, progress=not cfg.quick)
            done = run / "final"
        found[name] = check_checkpoint_dir(done)
        if name == "camera":
            recipe = variant_recipe(found[name])
            base = trained_base(found[name]) or cfg.base
        elif given is not None and given.exists():
            own = trained_base(found[name])
            if own is None or Path(own).resolve() != Path(base).resolve():
                raise ValueError(f"{given}: trained on base {own}, but the per-camera checkpoint {found['camera']} on "
                                 f"{base}; Table 3 must compare one base. Pass --{attr.replace('_', '-')} with a "
                                 "checkpoint on that base, or a folder that does not exist to have the bench train it "
                                 "with the per-camera checkpoint's recipe")
            differ = recipe_differences(recipe, variant_recipe(found[name]), overrides)
            if differ:
                raise ValueError(f"{given}: its training recipe differs from the per-camera checkpoint "
                                 f"{found['camera']}'s in {', '.join(differ)}; Table 3 must change one thing at a time. "
                                 f"Pass --{attr.replace('_', '-')} with a folder that does not exist to have the bench "
                                 "train it with the per-camera checkpoint's recipe")
    return found


def generation_done(out: Path) -> bool:
    """A finished `dive generate` / `dive translate` folder."""
    return (out / "manifest.jsonl").exists() and (out / "generate.json").exists()


def source_done(folder: Path) -> bool:
    """A finished synthetic folder of a baseline (its manifest.jsonl is written last)."""
    return (folder / "manifest.jsonl").exists()


def generate_source(cfg: BenchConfig, checkpoint: Path, out: Path, check_done: bool = False) -> Path:
    """`dive generate` of one DiVE checkpoint at the bench's settings into `out` (reused when done;
    with `check_done`, a finished folder is handed to `generate` too, which refuses one made by
    another checkpoint or settings); the checkpoint renders on the base it was trained on (its
    dive.json): shipped ones may predate the current base."""
    from dive.generate.run import GenerateConfig, generate

    if check_done or not generation_done(out):
        log(f"generating with {checkpoint} -> {out}")
        with torch_threads(cfg.threads):
            generate(GenerateConfig(checkpoint=checkpoint, out=out, min_images=cfg.min_images, n=cfg.n_per_camera,
                                    steps=cfg.gen_steps, guidance=cfg.guidance, seed=cfg.gen_seed,
                                    fast=cfg.gen_deep_cache > 0, deep_cache=cfg.gen_deep_cache),
                     progress=not cfg.quick)
    return out


def check_given_images(cfg: BenchConfig, checkpoint: Path, folder: Path) -> None:
    """Refuse (ValueError naming the file and what differs) a `dive generate` folder given as the
    + DiVE images that the bench's per-camera checkpoint and settings would not have made; reads
    only, the folder is left as it is."""
    from dive.checkpoint import checkpoint_hash
    from dive.generate.run import recorded_setting

    made = json.loads((folder / "generate.json").read_text())
    want = {"checkpoint_hash": checkpoint_hash(checkpoint), "seed": cfg.gen_seed, "steps": cfg.gen_steps,
            "guidance": cfg.guidance, "n": cfg.n_per_camera, "min_images": cfg.min_images,
            "deep_cache": cfg.gen_deep_cache}
    differ = [f"{k} {recorded_setting(made, k)} (bench: {v})" for k, v in want.items()
              if recorded_setting(made, k) != v]
    if differ:
        raise ValueError(f"{folder / 'generate.json'}: these images were made with other settings than the bench's "
                         f"({'; '.join(differ)}); give the bench those settings or let it generate its own")


def generate_variants(cfg: BenchConfig, checkpoints: dict[str, Path]) -> dict[str, Path]:
    """Each checkpoint's images; the per-camera one's are `cfg.dive_images` when given (not generated)."""
    out = {}
    for name, ckpt in checkpoints.items():
        if name == "camera" and cfg.dive_images is not None:
            if not source_done(cfg.dive_images):
                raise ValueError(f"{cfg.dive_images / 'manifest.jsonl'}: not found; --dive-images needs a finished "
                                 "folder of + DiVE images")
            if (cfg.dive_images / "generate.json").is_file():  # a `dive generate` folder: made as the bench would?
                check_given_images(cfg, ckpt, cfg.dive_images)
            out["dive-camera"] = cfg.dive_images
        else:
            out[f"dive-{name}"] = generate_source(cfg, ckpt, cfg.out / "synthetic" / f"dive-{name}")
    return out


def translate_source(cfg: BenchConfig, checkpoint: Path) -> dict[str, Path]:
    """With `translate_strength`: the per-camera checkpoint's img2img of the external ids' own
    visible images (the grayscale and CycleGAN baselines' sources, image for image)."""
    from dive.generate.translate import TranslateConfig, translate

    if not cfg.translate_strength:
        return {}
    out = cfg.out / "synthetic" / "dive-translate"
    if not generation_done(out):
        log(f"DiVE img2img at strength {cfg.translate_strength} -> {out}")
        with torch_threads(cfg.threads):
            translate(TranslateConfig(data=cfg.data, out=out, checkpoint=checkpoint, min_images=cfg.min_images,
                                      n=cfg.n_per_camera, seed=cfg.gen_seed, strength=cfg.translate_strength,
                                      steps=cfg.gen_steps, guidance=cfg.guidance), progress=not cfg.quick)
    return {"dive-translate": out}


def comparison_baselines(cfg: BenchConfig) -> dict[str, Path]:
    from dive.baselines.cyclegan import (GENERATOR_WEIGHTS, CycleGANApplyConfig, CycleGANTrainConfig, apply_cyclegan,
                                         check_trained_on, train_cyclegan)
    from dive.baselines.grayscale import GrayscaleConfig, run_grayscale

    folders = {}
    gray = cfg.out / "synthetic" / "grayscale"
    if not source_done(gray):
        log(f"grayscale baseline -> {gray}")
        run_grayscale(GrayscaleConfig(data=cfg.data, out=gray, min_images=cfg.min_images, n=cfg.n_per_camera,
                                      seed=cfg.gen_seed), progress=not cfg.quick)
    folders["grayscale"] = gray
    run = cfg.out / "cyclegan"
    if cfg.cyclegan is not None and cfg.cyclegan.exists():
        check_trained_on(cfg.cyclegan, cfg.data)
        run = cfg.cyclegan
    elif not (run / GENERATOR_WEIGHTS).exists():
        log(f"training the CycleGAN baseline ({cfg.cyclegan_steps} steps) in {run}")
        train_cyclegan(CycleGANTrainConfig(data=cfg.data, out=run, steps=cfg.cyclegan_steps, seed=cfg.gen_seed,
                                           save_every=max(1, min(250, cfg.cyclegan_steps))), progress=not cfg.quick)
    cg = cfg.out / "synthetic" / "cyclegan"
    if not source_done(cg):
        log(f"CycleGAN baseline -> {cg}")
        apply_cyclegan(CycleGANApplyConfig(generator=run, data=cfg.data, out=cg, min_images=cfg.min_images,
                                           n=cfg.n_per_camera, seed=cfg.gen_seed), progress=not cfg.quick)
    folders["cyclegan"] = cg
    return folders


def oracle_source(cfg: BenchConfig) -> Path:
    """The external ids' true infrared renders (`dive baseline oracle`): Table 6's ceiling row and,
    with `diagnostics`, a one-seed ReID row that shows what a perfect generator would add."""
    from dive.baselines.oracle import OracleConfig, run_oracle

    out = cfg.out / "synthetic" / "oracle"
    if not source_done(out):
        log(f"oracle (true infrared renders, the metrics' ceiling) -> {out}")
        run_oracle(OracleConfig(data=cfg.data, out=out, min_images=cfg.min_images, n=cfg.n_per_camera,
                                seed=cfg.gen_seed), progress=not cfg.quick)
    return out


def oracle_vae_source(cfg: BenchConfig, oracle: Path, checkpoint: Path) -> Path:
    """With `diagnostics`: the oracle's renders through the DiVE checkpoint's base VAE, i.e. what a
    perfect UNet on that base would draw: its ReID row tells whether the base's VAE or the UNet and
    its tokens stand between DiVE and the oracle's gain."""
    from dive.baselines.vae_roundtrip import vae_round_trip
    from dive.checkpoint import resolve_base

    out = cfg.out / "synthetic" / "oracle-vae"
    if not source_done(out):
        base = resolve_base(checkpoint)
        log(f"oracle through {base}/vae (a perfect UNet on this base) -> {out}")
        with torch_threads(cfg.threads):
            vae_round_trip(oracle, base, out, progress=not cfg.quick)
    return out


def subset_keys(keys, count: int, seed: int) -> set:
    """Table 5's nested choice of `count` identities: the first `count` of one seeded permutation
    of the sorted (dataset, pid) keys."""
    keys = sorted(keys)
    order = np.random.default_rng(seed).permutation(len(keys))
    return {keys[i] for i in order[:count]}


def subset_source(src: Path, dst: Path, count: int, seed: int) -> Path:
    """A synthetic folder holding the images of `count` of `src`'s identities (a seeded, nested
    choice: the first `count` of one fixed permutation), hard-linked, for Table 5."""
    if source_done(dst):
        return dst
    rows = [json.loads(line) for line in (src / "manifest.jsonl").read_text().splitlines() if line.strip()]
    keep = subset_keys({(r["dataset"], int(r["pid"])) for r in rows}, count, seed)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    kept = [r for r in rows if (r["dataset"], int(r["pid"])) in keep]
    for r in kept:
        target = tmp / r["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src / r["path"], target)
        except OSError:
            shutil.copy2(src / r["path"], target)
    for extra in ("generate.json",):
        if (src / extra).exists():
            shutil.copy2(src / extra, tmp / extra)
    (tmp / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    return dst


def metrics_done(out: Path, names) -> dict | None:
    """The bench's finished quality metrics (out/metrics/metrics.json) when they cover every source
    in `names`, else None."""
    path = out / "metrics" / "metrics.json"
    if path.exists():
        done = json.loads(path.read_text())
        if set(done.get("sources", {})) >= set(names):
            return done
    return None


def count_ids(folder: Path) -> int:
    rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines() if line.strip()]
    return len({(r["dataset"], int(r["pid"])) for r in rows})


def export_source(cfg: BenchConfig, name: str, folder: Path | None) -> Path:
    """The SYSU-layout export of one training set, out/exports/<name>: the VI set plus a synthetic
    folder, or with `folder` None the external ids' own visible images (every id with at least
    `min_images`: the external-RGB row)."""
    from dive.export.sysu import ExportConfig, export_dataset

    out = cfg.out / "exports" / name
    if folder is None:
        export_dataset(ExportConfig(data=cfg.data, out=out, external_ids="all", min_external_images=cfg.min_images,
                                    allow_single_modality=True),  # visible-only by design
                       progress=False)
        return out
    if not (out / "export.json").exists():
        log(f"export {name} -> {out}")
    export_dataset(ExportConfig(data=cfg.data, out=out, synthetic=(folder,)), progress=False)
    return out


def export_all(cfg: BenchConfig, sources: dict[str, Path]) -> dict[str, Path]:
    """One SYSU-layout export per expanded training set (+ the external-RGB-only one)."""
    exports = {name: export_source(cfg, name, folder) for name, folder in sources.items()}
    exports["external-rgb"] = export_source(cfg, "external-rgb", None)
    return exports


def check_inputs(cfg: BenchConfig, checkpoints: dict[str, Path]) -> None:
    """Finished stages are reused on a rerun, so a rerun must see the same checkpoints, and the same
    base when the bench trained one of them (a given checkpoint renders on its own base, so --base
    alone does not change its images): their hashes are recorded in inputs.json on the first run
    and compared on every later one."""
    from dive.checkpoint import checkpoint_hash
    from dive.utils.io import sha256_file

    now: dict = {"checkpoints": {k: checkpoint_hash(v) for k, v in sorted(checkpoints.items())}}
    out = cfg.out.resolve()
    if any(out in Path(v).resolve().parents for v in checkpoints.values()):  # trained here on --base
        unet = next((cfg.base / "unet").glob("*.safetensors"), None)
        now["base_unet_sha256"] = sha256_file(unet) if unet else None
    path = cfg.out / "inputs.json"
    if path.exists():  # the checkpoints both runs use must agree (--no-ablations uses fewer)
        old = json.loads(path.read_text())
        before = old.get("checkpoints", {})
        if any(before[k] != v for k, v in now["checkpoints"].items() if k in before) or (
                "base_unet_sha256" in now and old.get("base_unet_sha256", now["base_unet_sha256"]) != now["base_unet_sha256"]):
            raise ValueError(f"{path}: this bench folder was made with another base or DiVE checkpoint "
                             f"(recorded {old}, now {now}); its finished stages would be stale: use a new --out")
        if set(now["checkpoints"]) - set(before) or ("base_unet_sha256" in now and "base_unet_sha256" not in old):
            write_json(path, old | now | {"checkpoints": before | now["checkpoints"]})
    else:
        write_json(path, now)


