"""`dive bench`: the paper's Tables 1/2, 3, 5 and 6 on SynthVI, composed from the stages.

Stages (each resumable: a finished stage's output is reused when the bench is rerun):
world -> DiVE checkpoints (shipped, or trained here) -> generation per DiVE variant (and, with
--translate-strength, the img2img row) -> comparison baselines (grayscale, CycleGAN) -> one export
per training set -> ReID runs (in parallel, one thread each; with diagnostics also the oracle's
true infrared renders and a longer baseline) -> quality metrics (plus the oracle's true infrared
renders, as the ceiling) -> tables (Markdown + JSON) and plots under `out/`.

Folder layout: out/{world, dive/<variant>, synthetic/<name>, cyclegan, exports/<name>,
reid/<train set>-<method>-seed<s>, metrics, tables.md, tables.json, *.png, bench.json}.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dive.bench.config import QUICK_WORLD, BenchConfig, quick_config
from dive.bench.tables import write_tables
from dive.utils.config import config_to_dict
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


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------------
# stages
# ------------------------------------------------------------------------------------------------


def ensure_world(cfg: BenchConfig) -> Path:
    from dive.data.registry import detect_format
    from dive.data.synthvi.build import SynthConfig, build_world

    if cfg.data.exists() and (cfg.data / "synthvi.json").exists():
        fmt = detect_format(cfg.data)
        if fmt != "synthvi":
            raise ValueError(f"{cfg.data}: the bench needs a SynthVI world; found a {fmt} folder")
        return cfg.data
    if cfg.data.exists() and any(cfg.data.iterdir()):
        raise FileExistsError(f"{cfg.data}: not a SynthVI world (no synthvi.json) and not empty; "
                              "give --data a world or a new folder")
    sizes = QUICK_WORLD if cfg.quick else {}
    _log(f"building the SynthVI world (seed {cfg.world_seed}) in {cfg.data}")
    build_world(SynthConfig(out=cfg.data, seed=cfg.world_seed, force=True, **sizes), progress=not cfg.quick)
    return cfg.data


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


def ensure_checkpoints(cfg: BenchConfig) -> dict[str, Path]:
    """Each DiVE variant's checkpoint: the given folder, or one trained (and packaged) here. A
    missing ablation is trained with the per-camera checkpoint's own recipe and base; a given one
    must share that base (Table 3 would otherwise compare two base models)."""
    from dive.checkpoint import check_checkpoint_dir, trained_base
    from dive.train.trainer import DiVETrainConfig, train_dive

    found: dict[str, Path] = {}
    recipe: dict = {}
    base = cfg.base
    for name, overrides, attr in DIVE_VARIANTS:
        given = getattr(cfg, attr)
        if given is not None and given.exists():
            found[name] = check_checkpoint_dir(given)
        else:
            run = cfg.out / "dive" / name
            if not (run / "final" / "dive.json").exists():
                steps = recipe.get("steps", cfg.dive_steps)
                _log(f"training the DiVE '{name}' checkpoint ({steps} steps on {base}) in {run}"
                     + (f" ({given} does not exist)" if given is not None else ""))
                settings = dict(steps=steps, warmup=min(100, steps // 4)) | recipe | overrides
                tcfg = DiVETrainConfig(**settings, base=base, data=cfg.data, out=run, min_images=cfg.min_images,
                                       seed=0, threads=cfg.threads, save_every=max(1, min(500, steps)),
                                       preview_every=0)
                train_dive(tcfg, progress=not cfg.quick)
            found[name] = check_checkpoint_dir(run / "final")
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


def _generation_done(out: Path) -> bool:
    return (out / "manifest.jsonl").exists() and (out / "generate.json").exists()


def generate_variants(cfg: BenchConfig, checkpoints: dict[str, Path]) -> dict[str, Path]:
    from dive.generate.run import GenerateConfig, generate

    folders = {}
    for name, ckpt in checkpoints.items():
        out = cfg.out / "synthetic" / f"dive-{name}"
        if not _generation_done(out):
            _log(f"generating with DiVE '{name}' -> {out}")
            with torch_threads(cfg.threads):
                # each checkpoint with the base it was trained on (its dive.json): shipped ones may
                # predate the current base
                generate(GenerateConfig(checkpoint=ckpt, out=out, min_images=cfg.min_images,
                                        n=cfg.n_per_camera, steps=cfg.gen_steps, guidance=cfg.guidance,
                                        seed=cfg.gen_seed), progress=not cfg.quick)
        folders[f"dive-{name}"] = out
    return folders


def translate_source(cfg: BenchConfig, checkpoint: Path) -> dict[str, Path]:
    """With `translate_strength`: the per-camera checkpoint's img2img of the external ids' own
    visible images (the grayscale and CycleGAN baselines' sources, image for image)."""
    from dive.generate.translate import TranslateConfig, translate

    if not cfg.translate_strength:
        return {}
    out = cfg.out / "synthetic" / "dive-translate"
    if not _generation_done(out):
        _log(f"DiVE img2img at strength {cfg.translate_strength} -> {out}")
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
    if not (gray / "manifest.jsonl").exists():
        _log(f"grayscale baseline -> {gray}")
        run_grayscale(GrayscaleConfig(data=cfg.data, out=gray, min_images=cfg.min_images, n=cfg.n_per_camera,
                                      seed=cfg.gen_seed), progress=not cfg.quick)
    folders["grayscale"] = gray
    run = cfg.out / "cyclegan"
    if cfg.cyclegan is not None and cfg.cyclegan.exists():
        check_trained_on(cfg.cyclegan, cfg.data)
        run = cfg.cyclegan
    elif not (run / GENERATOR_WEIGHTS).exists():
        _log(f"training the CycleGAN baseline ({cfg.cyclegan_steps} steps) in {run}")
        train_cyclegan(CycleGANTrainConfig(data=cfg.data, out=run, steps=cfg.cyclegan_steps, seed=cfg.gen_seed,
                                           save_every=max(1, min(250, cfg.cyclegan_steps))), progress=not cfg.quick)
    cg = cfg.out / "synthetic" / "cyclegan"
    if not (cg / "manifest.jsonl").exists():
        _log(f"CycleGAN baseline -> {cg}")
        apply_cyclegan(CycleGANApplyConfig(generator=run, data=cfg.data, out=cg, min_images=cfg.min_images,
                                           n=cfg.n_per_camera, seed=cfg.gen_seed), progress=not cfg.quick)
    folders["cyclegan"] = cg
    return folders


def oracle_source(cfg: BenchConfig) -> Path:
    """The external ids' true infrared renders (`dive baseline oracle`): Table 6's ceiling row and,
    with `diagnostics`, a one-seed ReID row that shows what a perfect generator would add."""
    from dive.baselines.oracle import OracleConfig, run_oracle

    out = cfg.out / "synthetic" / "oracle"
    if not (out / "manifest.jsonl").exists():
        _log(f"oracle (true infrared renders, the metrics' ceiling) -> {out}")
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
    if not (out / "manifest.jsonl").exists():
        base = resolve_base(checkpoint)
        _log(f"oracle through {base}/vae (a perfect UNet on this base) -> {out}")
        with torch_threads(cfg.threads):
            vae_round_trip(oracle, base, out, progress=not cfg.quick)
    return out


def subset_source(src: Path, dst: Path, count: int, seed: int) -> Path:
    """A synthetic folder holding the images of `count` of `src`'s identities (a seeded, nested
    choice: the first `count` of one fixed permutation), hard-linked, for Table 5."""
    if (dst / "manifest.jsonl").exists():
        return dst
    rows = [json.loads(line) for line in (src / "manifest.jsonl").read_text().splitlines() if line.strip()]
    keys = sorted({(r["dataset"], int(r["pid"])) for r in rows})
    order = np.random.default_rng(seed).permutation(len(keys))
    keep = {keys[i] for i in order[:count]}
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


def _count_ids(folder: Path) -> int:
    rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines() if line.strip()]
    return len({(r["dataset"], int(r["pid"])) for r in rows})


def export_all(cfg: BenchConfig, sources: dict[str, Path]) -> dict[str, Path]:
    """One SYSU-layout export per expanded training set (+ the external-RGB-only one)."""
    from dive.export.sysu import ExportConfig, export_dataset

    exports = {}
    for name, folder in sources.items():
        out = cfg.out / "exports" / name
        if not (out / "export.json").exists():
            _log(f"export {name} -> {out}")
        export_dataset(ExportConfig(data=cfg.data, out=out, synthetic=(folder,)), progress=False)
        exports[name] = out
    out = cfg.out / "exports" / "external-rgb"
    export_dataset(ExportConfig(data=cfg.data, out=out, external_ids="all", min_external_images=cfg.min_images),
                   progress=False)
    exports["external-rgb"] = out
    return exports


def _job_train_config(args: tuple):
    from dive.reid.train import ReIDTrainConfig

    key, data, fmt, run, method, seed, overrides = args
    return ReIDTrainConfig(out=Path(run), method=method, seed=seed, force=True, progress=False, threads=1, **overrides)


def _reid_job(args: tuple) -> tuple[str, dict]:
    from dive.reid.run import ReIDDataConfig, ReIDEvalConfig, run_reid

    key, data, fmt = args[:3]
    return key, run_reid(ReIDDataConfig(data=Path(data), format=fmt), _job_train_config(args), ReIDEvalConfig())


#: run settings that do not change what a ReID run learns
_NOT_RECIPE = {"out", "force", "progress", "threads", "eval_threads", "log_every"}


def finished_report(job: tuple) -> dict | None:
    """The report of a finished run of exactly this job's recipe, else None: a rerun after a budget
    or recipe change must retrain, never mix old runs into new tables."""
    run = Path(job[3])
    if not (run / "report.json").exists() or not (run / "config.json").exists():
        return None
    saved = json.loads((run / "config.json").read_text()).get("train", {})
    want = json.loads(json.dumps(config_to_dict(_job_train_config(job))))
    if any(saved.get(k) != v for k, v in want.items() if k not in _NOT_RECIPE):
        return None
    return json.loads((run / "report.json").read_text())


def reid_run_name(train_set: str, method: str, seed: int) -> str:
    """The folder name of one ReID run under out/reid (read back by `parse_reid_run_name`)."""
    return f"{train_set}-{method}-seed{seed}"


def reid_run_dir(cfg: BenchConfig, train_set: str, method: str, seed: int) -> Path:
    """Where this bench keeps one ReID run (its jobs write there; Table 6 reads its feature model there)."""
    return cfg.out / "reid" / reid_run_name(train_set, method, seed)


def parse_reid_run_name(name: str) -> tuple[str, str, int] | None:
    """(train set, method, seed) of a `reid_run_name`, or None for a folder the bench did not name."""
    from dive.reid.train import METHODS

    head, sep, seed = name.rpartition("-seed")
    train_set, _, method = head.rpartition("-")
    if not sep or not seed.isdigit() or not train_set or method not in METHODS:
        return None
    return train_set, method, int(seed)


def reid_recipe(cfg: BenchConfig) -> dict:
    """The bench's changes to `dive reid run`'s training defaults, shared by every ReID job (and by
    scripts that add a row beside a finished bench)."""
    recipe = {"batches_per_epoch": cfg.reid_batches_per_epoch}  # 0: AGW's epoch, grows with the data
    if cfg.reid_epochs:
        recipe["epochs"] = cfg.reid_epochs
        recipe["lr_steps"] = tuple(e for e in (int(cfg.reid_epochs * 2 / 3), int(cfg.reid_epochs * 8 / 9)) if e > 0)
        recipe["warmup_epochs"] = min(2.0, cfg.reid_epochs / 4)
    return recipe


def reid_jobs(cfg: BenchConfig, exports: dict[str, Path]) -> list[tuple]:
    overrides = reid_recipe(cfg)
    sets = {"baseline": (cfg.data, "synthvi")} | {name: (path, "sysu_mm01") for name, path in exports.items()}
    per_set: dict[str, dict] = {}
    main = ("baseline", "external-rgb", "grayscale", "cyclegan", "dive-camera") + (
        ("dive-translate",) if "dive-translate" in sets else ())
    jobs = []
    for method in cfg.methods:
        for train_set in main if method in cfg.comparisons_for else ("baseline", "dive-camera"):
            for seed in cfg.seeds:
                jobs.append((train_set, method, seed))
    ablations = ["dive-modality", "dive-ir-only"] + [n for n in sets if n.startswith("dive-camera-k")]
    for train_set in ablations:
        for seed in cfg.ablation_seeds:
            jobs.append((train_set, "agw", seed))
    if cfg.diagnostics:
        # is a gain only more optimisation? the baseline for as many batches as + DiVE gets;
        # and what would a perfect generator add? the external ids' true infrared renders
        per_set["baseline-long"] = {"batches_per_epoch": cfg.reid_batches_per_epoch
                                    or epoch_batches_of(*sets["dive-camera"])}
        sets["baseline-long"] = sets["baseline"]
        for train_set in ("baseline-long", "oracle", "oracle-vae"):
            for seed in cfg.ablation_seeds:
                jobs.append((train_set, "agw", seed))
    for seed in cfg.ablation_seeds:  # Tables 3/5 compare against the same seeds
        if seed not in cfg.seeds:
            jobs += [("baseline", "agw", seed), ("dive-camera", "agw", seed)]
    out = []
    for train_set, method, seed in dict.fromkeys(jobs):
        data, fmt = sets[train_set]
        run = reid_run_dir(cfg, train_set, method, seed)
        out.append((f"{train_set}|{method}|{seed}", str(data), fmt, str(run), method, seed,
                    overrides | per_set.get(train_set, {})))
    return out


def epoch_batches_of(data: Path | str, fmt: str) -> int:
    """What `batches_per_epoch=0` resolves to on a training set (AGW's epoch, with `dive reid
    run`'s default P and K)."""
    from dive.data.records import Modality
    from dive.reid.run import ReIDDataConfig, load_reid_data
    from dive.reid.sampler import agw_epoch_batches
    from dive.reid.train import ReIDTrainConfig

    d = ReIDTrainConfig(out=Path("unused"))
    train = load_reid_data(ReIDDataConfig(data=Path(data), format=fmt)).train
    visible = sum(1 for r in train if r.modality == Modality.VISIBLE)
    return agw_epoch_batches(visible, d.num_ids, d.num_per_modality)


#: a CAJ batch holds 1.5x the images of an AGW batch (the channel-augmented visible copies)
_METHOD_COST = {"agw": 1.0, "caj": 1.5}


def longest_first(jobs: list[tuple]) -> list[tuple]:
    """Jobs ordered by their expected training time, longest first: with runs in parallel, a long
    run started last would leave the other workers idle at the end (expanded sets train twice as
    long as the baseline, and a CAJ batch is 1.5x an AGW one)."""
    from functools import cache

    batches_of = cache(epoch_batches_of)

    def cost(job: tuple) -> float:
        data, fmt, method, overrides = job[1], job[2], job[4], job[6]
        per_epoch = overrides.get("batches_per_epoch") or batches_of(data, fmt)
        return per_epoch * overrides.get("epochs", 1) * _METHOD_COST.get(method, 1.0)

    return sorted(jobs, key=cost, reverse=True)


def run_reid_jobs(cfg: BenchConfig, jobs: list[tuple]) -> dict[str, dict]:
    reports: dict[str, dict] = {}
    todo = []
    for job in jobs:
        done = finished_report(job)
        if done is not None:
            reports[job[0]] = done
        else:
            todo.append(job)
    if not todo:
        return reports
    todo = longest_first(todo)
    _log(f"ReID: {len(todo)} runs to do ({len(reports)} reused), {cfg.reid_workers} in parallel, longest first")
    bar = tqdm(total=len(todo), desc="reid runs")
    if cfg.reid_workers <= 1:
        for job in todo:
            key, rep = _reid_job(job)
            reports[key] = rep
            bar.update()
    else:
        with ProcessPoolExecutor(cfg.reid_workers, mp_context=get_context("spawn")) as pool:
            for fut in as_completed([pool.submit(_reid_job, job) for job in todo]):
                key, rep = fut.result()
                reports[key] = rep
                bar.update()
    bar.close()
    return reports


def quality(cfg: BenchConfig, sources: dict[str, Path], reports: dict[str, dict]) -> dict:
    """Table 6: FD to real IR and identity Rank-1, with the VI-only AGW model (seed 0 of the
    first seed list) as the feature extractor: it never saw an external identity."""
    from dive.metrics.quality import quality_report

    out = cfg.out / "metrics"
    if (out / "metrics.json").exists():
        done = json.loads((out / "metrics.json").read_text())
        if set(done.get("sources", {})) >= set(sources):
            return done
    if f"baseline|agw|{cfg.seeds[0]}" not in reports:
        raise ValueError(f"Table 6 needs the baseline AGW run at seed {cfg.seeds[0]} as its feature extractor")
    # the run's folder in this bench, not the path its report was written at: a bench folder that
    # was moved, or runs brought in from another folder, must not read a model elsewhere
    extractor = reid_run_dir(cfg, "baseline", "agw", cfg.seeds[0])
    _log(f"quality metrics (features: {extractor}) -> {out}")
    return quality_report(real_ir=cfg.data, synthetic=tuple(sources.values()), reid_run=extractor, out=out,
                          progress=False, tsne=not cfg.quick)


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
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("checkpoints") != now["checkpoints"] or (
                "base_unet_sha256" in now and old.get("base_unet_sha256") != now["base_unet_sha256"]):
            raise ValueError(f"{path}: this bench folder was made with another base or DiVE checkpoint "
                             f"(recorded {old}, now {now}); its finished stages would be stale: use a new --out")
    else:
        write_json(path, now)


# ------------------------------------------------------------------------------------------------
# the whole bench
# ------------------------------------------------------------------------------------------------


def run_bench(cfg: BenchConfig) -> dict:
    if cfg.quick:
        cfg = quick_config(cfg)
    t0 = time.time()
    cfg.out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def timed(name, fn, *a):
        s = time.time()
        res = fn(*a)
        timings[name] = round(time.time() - s, 1)
        return res

    timed("world", ensure_world, cfg)
    checkpoints = timed("dive checkpoints", ensure_checkpoints, cfg)
    check_inputs(cfg, checkpoints)
    sources = timed("generation", generate_variants, cfg, checkpoints)
    sources |= timed("translation", translate_source, cfg, checkpoints["camera"])
    sources |= timed("comparison baselines", comparison_baselines, cfg)
    table5 = {}
    for k in cfg.id_counts:
        table5[f"dive-camera-k{k}"] = subset_source(sources["dive-camera"], cfg.out / "synthetic" / f"dive-camera-k{k}",
                                                    k, cfg.gen_seed)
    ceilings = {"oracle": timed("oracle", oracle_source, cfg)}
    if cfg.diagnostics:
        ceilings["oracle-vae"] = timed("oracle vae", oracle_vae_source, cfg, ceilings["oracle"], checkpoints["camera"])
    exports = timed("exports", export_all, cfg, sources | table5 | (ceilings if cfg.diagnostics else {}))
    reports = timed("reid", run_reid_jobs, cfg, reid_jobs(cfg, exports))
    metrics = timed("metrics", quality, cfg, sources | ceilings, reports)
    timings["total"] = round(time.time() - t0, 1)
    id_counts = {"baseline": 0, "dive-camera": _count_ids(sources["dive-camera"])}
    id_counts |= {name: _count_ids(folder) for name, folder in table5.items()}
    result = write_tables(cfg, reports, metrics, id_counts, timings)
    write_json(cfg.out / "bench.json", {"config": config_to_dict(cfg), "checkpoints": {k: str(v) for k, v in checkpoints.items()},
                                        "timings_s": timings})
    _log(f"done in {timings['total']:.0f} s: {cfg.out / 'tables.md'}")
    return result

