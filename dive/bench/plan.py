"""`dive bench`'s projection: the work the bench has left and the time it will take, made before
any stage runs (`dive bench` prints it first and writes it to OUT/plan.json; `dive bench --plan`
prints it with the ReID job list and stops).

Work: each stage in the bench's order, split into its parts (each DiVE variant's training and
generation, each baseline, each export, the ReID runs of each table, the metrics), in its own
unit: images, training steps, ReID batches. It is counted from the world (before the world is
built, from its plan: the same identities and images, not rendered) with the stages' own
selections: the external ids with at least `min_images` images, a checkpoint's own identity and
infrared camera tokens, Table 5's seeded subsets. The ReID jobs are `reid_jobs` itself, given each
training set's AGW epoch as counted here (its export may not exist yet), so the job list, the
equal budget and each run's batches are the bench's. What the folder already holds is done, by the
stages' own tests (a ReID run: `finished_report`, the same recipe finished); exports are re-checked
on every run, so they always count.

Cost: seconds per unit (dive.bench.probe), recorded by this folder's runs where there are, else
probed. Wall time: units x cost / the processes working in parallel; the ReID runs are scheduled
longest first on `reid_workers` processes (at most one per CPU core), as the bench runs them, and
each table's share of that schedule is its part. A part whose cost is not measured (DiVE or
CycleGAN training before this folder has a log of it) is shown as such and left out of the total.
"""

from __future__ import annotations

import heapq
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from dive.bench import probe
from dive.bench.config import BenchConfig, sweep_runs
from dive.bench.jobs import CONVERGED, METHOD_COST, adoptable, finished_report, reid_jobs
from dive.bench.stages import (dive_variants, finished_checkpoint, generation_done, metrics_done, source_done,
                               subset_keys)
from dive.bench.world import captions_done, is_shipped_world, world_config, world_ready

PLAN_FILE = "plan.json"
#: each stage of the bench's own timings (bench.json `timings_s`), in order
STAGES = ("world", "dive checkpoints", "generation", "translation", "comparison baselines", "oracle", "oracle vae",
          "exports", "reid", "protocols", "metrics")


@dataclass
class Census:
    """What the bench's work is counted from: the world's VI images and the external ids it expands."""

    vi_images: int  # every VI image: each export copies them all
    vi_train: int
    vi_train_visible: int
    vi_train_infrared: int
    vi_val: int
    vi_test: int
    ext: dict  # (dataset, pid) of each external id with >= min_images training images -> their number
    infrared_cameras: int
    world_images: int = 0  # images the world build renders (0: built)
    vi_test_ids: int = 0


def _census(vi: list[tuple[str, bool]], ext: dict, infrared_cameras: int, world_images: int = 0,
            test_ids: int = 0) -> Census:
    train = [ir for split, ir in vi if split == "train"]
    return Census(len(vi), len(train), train.count(False), train.count(True), sum(s == "val" for s, _ in vi),
                  sum(s == "test" for s, _ in vi), ext, infrared_cameras, world_images, test_ids)


def count_world(cfg: BenchConfig):
    """(census, the world's SynthConfig, its plan): the last two only when the world is not built."""
    if world_ready(cfg.data):
        from dive.data.records import Modality
        from dive.generate.sources import load_baseline_inputs, select_external_ids

        inp = load_baseline_inputs(cfg.data)
        counts = Counter((r.dataset, r.pid) for r in inp.external_records)
        ext = {k: counts[k] for k in select_external_ids(inp.external_records, min_images=cfg.min_images)}
        vi = [(r.split, r.modality is Modality.INFRARED) for r in inp.vi_records]
        test_ids = len({r.pid for r in inp.vi_records if r.split == "test"})
        return _census(vi, ext, len(inp.infrared_cameras), test_ids=test_ids), None, None
    from dive.data.synthvi.build import plan_world
    from dive.data.synthvi.world import VI_CAMERAS

    synth = world_config(cfg)
    world = plan_world(synth)
    split_of = {pid: split for split, ids in world.vi_splits.items() for pid in ids}
    vi = [(split_of.get(j.pid, ""), VI_CAMERAS[j.cam].infrared) for j in world.jobs if j.dataset == "vi"]
    counts = Counter(("synthvi_ext", j.pid) for j in world.jobs
                     if j.dataset == "external" and j.rel_path.startswith("external/bounding_box_train/"))
    ext = {k: n for k, n in sorted(counts.items()) if n >= cfg.min_images}
    ir = sum(1 for cam in VI_CAMERAS.values() if cam.infrared)
    return _census(vi, ext, ir, len(world.jobs), len(world.vi_splits.get("test", ()))), synth, world


def generated_images(cfg: BenchConfig, c: Census, checkpoint: Path | None, overrides: dict) -> int:
    """Images `dive generate` makes for one DiVE variant: its checkpoint's external identity tokens
    with enough images x its infrared camera tokens x n; before it is trained, the world's ids x
    its infrared cameras (one infrared token for a per-modality checkpoint)."""
    if checkpoint is not None:
        from dive.checkpoint.tokens import TokenTable
        from dive.generate.run import select_cameras, select_identities

        table = TokenTable.load(Path(checkpoint) / "tokens.json")
        ids = select_identities(table, min_images=cfg.min_images)
        return len(ids) * len(select_cameras(table, "infrared")) * cfg.n_per_camera
    cams = 1 if overrides.get("granularity") == "modality" else c.infrared_cameras
    return len(c.ext) * cams * cfg.n_per_camera


def training_sets(cfg: BenchConfig, c: Census, generated: dict[str, int]) -> dict[str, dict]:
    """Per ReID training set (the VI baseline and each export, by its name): visible training images
    (its AGW epoch), training images, synthetic images and the images its export writes."""
    keys = sorted(c.ext)
    copies = len(keys) * c.infrared_cameras * cfg.n_per_camera  # a baseline: one image per source image
    synthetic = dict(generated)
    if cfg.translate_strength:
        synthetic["dive-translate"] = copies
    synthetic |= {"grayscale": copies, "cyclegan": copies}
    ids = {name: keys for name in synthetic}
    for k in cfg.id_counts if cfg.ablations else ():
        chosen = subset_keys(keys, k, cfg.gen_seed)
        synthetic[f"dive-camera-k{k}"] = round(generated["dive-camera"] * len(chosen) / max(1, len(keys)))
        ids[f"dive-camera-k{k}"] = chosen
    if cfg.diagnostics:
        synthetic |= {"oracle": copies, "oracle-vae": copies}
        ids |= {"oracle": keys, "oracle-vae": keys}
    synthetic["external-rgb"], ids["external-rgb"] = 0, keys
    sets = {"baseline": {"visible": c.vi_train_visible, "train": c.vi_train, "synthetic": 0, "export": 0}}
    for name, n in synthetic.items():
        ext = sum(c.ext[k] for k in ids[name])
        sets[name] = {"visible": c.vi_train_visible + ext, "train": c.vi_train + ext + n, "synthetic": n,
                      "export": c.vi_images + ext + n}
    return sets


def planned_jobs(cfg: BenchConfig, sets: dict[str, dict]):
    """The bench's ReID jobs (`reid_jobs`) on these sets, and the AGW-epoch function they were made with."""
    from dive.reid.sampler import agw_epoch_batches
    from dive.reid.train import ReIDTrainConfig

    d = ReIDTrainConfig(out=Path("unused"))
    exports = {name: cfg.out / "exports" / name for name in sets if name != "baseline"}
    name_of = {str(cfg.data): "baseline"} | {str(path): name for name, path in exports.items()}

    def batches_of(data, fmt) -> int:
        return agw_epoch_batches(sets[name_of[str(data)]]["visible"], d.num_ids, d.num_per_modality)

    return reid_jobs(cfg, exports, batches_of), batches_of, name_of


def reid_group(cfg: BenchConfig, train_set: str, method: str, seed: int) -> str:
    """The table a ReID run belongs to."""
    if train_set.endswith(CONVERGED):
        return f"Tables 1/2 {method}, to convergence"
    if train_set in ("dive-modality", "dive-ir-only"):
        return "Table 3 ablations (agw)"
    if train_set.startswith("dive-camera-k"):
        return "Table 5 id counts (agw)"
    if train_set in ("oracle", "oracle-vae", "baseline-long"):
        return "diagnostics (agw)"
    if seed not in cfg.seeds:
        return "Tables 3/5 references (agw)"
    return f"Table {'1' if method == 'agw' else '2'} ({method})"


def _row(stage: str, part: str, units: float, unit: str, cost: str, done: bool, parallel: int = 1, **extra) -> dict:
    return {"stage": stage, "part": part, "units": int(units), "unit": unit, "cost": cost, "done": bool(done),
            "parallel": parallel, **extra}


def _work(cfg: BenchConfig, c: Census, synth, checkpoints: dict, generated: dict, sets: dict) -> list[dict]:
    """The rows of every stage but ReID, unpriced."""
    from dive.baselines.cyclegan.networks import GENERATOR_WEIGHTS
    from dive.bench.stages import variant_recipe

    cpus = os.cpu_count() or 1
    syn = cfg.out / "synthetic"
    copies = len(c.ext) * c.infrared_cameras * cfg.n_per_camera
    rows = [_row("world", "SynthVI world", c.world_images, "image", "world", world_ready(cfg.data),
                 min(synth.workers, cpus) if synth is not None else 1)]
    if checkpoints["camera"] is None and not is_shipped_world(cfg):  # this world's own captions first
        rows.append(_row("dive checkpoints", "captions: reader training", cfg.caption_steps, "step", "caption",
                         captions_done(cfg)))
    steps = cfg.dive_steps  # an ablation the bench trains copies the per-camera checkpoint's steps
    if checkpoints["camera"] is not None:
        steps = variant_recipe(checkpoints["camera"]).get("steps", steps)
    for name, _, _ in dive_variants(cfg):
        rows.append(_row("dive checkpoints", f"DiVE {name} training", steps, "step", "dive", checkpoints[name]))
    for name, _, _ in dive_variants(cfg):
        given = name == "camera" and cfg.dive_images is not None  # --dive-images: nothing to generate
        rows.append(_row("generation", f"dive-{name}", generated[f"dive-{name}"], "image", "generate",
                         given or generation_done(syn / f"dive-{name}")))
    if cfg.translate_strength:
        rows.append(_row("translation", "dive-translate", copies, "image", "translate",
                         generation_done(syn / "dive-translate")))
    cyclegan_done = ((cfg.cyclegan is not None and cfg.cyclegan.exists())
                     or (cfg.out / "cyclegan" / GENERATOR_WEIGHTS).exists())
    rows += [_row("comparison baselines", "grayscale", copies, "image", "image", source_done(syn / "grayscale")),
             _row("comparison baselines", "CycleGAN training", cfg.cyclegan_steps, "step", "cyclegan", cyclegan_done),
             _row("comparison baselines", "CycleGAN images", copies, "image", "image", source_done(syn / "cyclegan")),
             _row("oracle", "true infrared renders", copies, "image", "image", source_done(syn / "oracle"))]
    if cfg.diagnostics:
        rows.append(_row("oracle vae", "through the base's VAE", copies, "image", "vae",
                         source_done(syn / "oracle-vae")))
    for name, s in sets.items():
        if name != "baseline":
            again = (cfg.out / "exports" / name / "export.json").exists()
            rows.append(_row("exports", name, s["export"], "image", "image", False,
                             note="re-checked (export.json present)" if again else ""))
    sources = [f"dive-{n}" for n, _, _ in dive_variants(cfg)] + ["dive-translate"] * bool(cfg.translate_strength) + [
        "grayscale", "cyclegan", "oracle"] + ["oracle-vae"] * cfg.diagnostics
    images = (sum(generated.get(n, copies) for n in sources)  # scored, + the real IR and the ids' visible images
              + c.vi_train_infrared + sum(c.ext.values()))
    rows.append(_row("metrics", "FD and identity Rank-1", images, "image", "metric",
                     metrics_done(cfg.out, sources) is not None))
    return rows


def _protocol_rows(cfg: BenchConfig, c: Census, runs: list[dict]) -> list[dict]:
    """The LLCM/RegDB stage: the two layouts (hard links of the VI images), then every Tables 1/2
    model's features of the LLCM test images and of RegDB's (10 per id and modality, scored once:
    the bench's trials are one split), priced as loading + a forward pass per image."""
    from dive.bench.jobs import reid_run_name
    from dive.bench.protocols import layout_dirs
    from dive.bench.tables import MAIN_ROWS
    from dive.data.layouts import INFO_FILE, LayoutConfig

    main = {t for t, _ in MAIN_ROWS}
    keys = [r["key"].split("|") for r in runs]
    names = [reid_run_name(t, m, int(s)) for t, m, s in keys if t in main and int(s) in cfg.seeds]
    models = len(names)
    scored = sum((cfg.out / "protocols" / f"{n}.json").is_file() for n in names)
    regdb_images = LayoutConfig(data=cfg.data, to="regdb", out=cfg.out).regdb_images
    per_model = c.vi_test + 2 * regdb_images * c.vi_test_ids
    layouts = all((d / INFO_FILE).is_file() for d in layout_dirs(cfg).values())
    return [_row("protocols", "LLCM and RegDB layouts", 2 * c.vi_images, "image", "image", layouts),
            _row("protocols", f"scoring {models} Tables 1/2 models", per_model * max(0, models - scored), "image",
                 "metric", scored >= models)]


def _resolve(key: str, costs: dict, cfg: BenchConfig) -> dict | None:
    """The cost `key`, measured or composed of measured ones; None when not measured."""
    if key in costs and costs[key].get("seconds"):
        return costs[key]
    gen, io, fwd = costs.get("generate"), costs.get("image"), costs.get("forward")
    if key == "translate" and gen and "per_step_seconds" in gen:  # + a VAE encode, about a decode
        steps = max(1, round(cfg.gen_steps * cfg.translate_strength))
        return probe.cost(2 * gen["per_image_seconds"] + steps * gen["per_step_seconds"], "image", gen["source"])
    if key == "vae" and gen and io and "per_image_seconds" in gen:
        return probe.cost(2 * gen["per_image_seconds"] + io["seconds"], "image", gen["source"])
    if key == "metric" and fwd and io:
        return probe.cost(fwd["seconds"] + io["seconds"], "image", fwd["source"])
    if key == "caption":
        return probe.caption_cost()
    if key.startswith("reid:") and costs.get("reid:agw"):  # another method, by its relative batch cost
        method = key.split(":", 1)[1]
        agw = costs["reid:agw"]
        return probe.cost(agw["seconds"] * METHOD_COST.get(method, 1.0), "batch", f"{agw['source']} x method cost")
    return None


def _price(row: dict, cost: dict | None) -> dict:
    if row["done"]:
        return row | {"unit_seconds": None, "source": "", "seconds": 0.0}
    if cost is None:
        return row | {"unit_seconds": None, "source": "not measured", "seconds": 0.0}
    return row | {"unit_seconds": cost["seconds"], "source": cost["source"],
                  "seconds": round(row["units"] * cost["seconds"] / max(1, row["parallel"]), 1)}


def _needs(keys: set[str]) -> set[str]:
    out = set()
    for key in keys:
        out |= {"translate": {"generate"}, "vae": {"generate", "image"}, "metric": {"forward", "image"},
                "dive": set(), "cyclegan": set(), "caption": set()}.get(key, {key})
        if key.startswith("reid:"):
            out |= {"forward", "image"}  # a run's image loading and evaluation
    return out


def _schedule(durations: list[float], workers: int) -> float:
    """The wall time of jobs of these durations run longest first on `workers` processes."""
    loads = [0.0] * max(1, workers)
    for d in sorted(durations, reverse=True):
        heapq.heapreplace(loads, loads[0] + d)
    return max(loads)


def project(cfg: BenchConfig, probing: bool = True) -> dict:
    """The projection of `cfg`'s bench (already `quick_config`-ed when quick); see the module doc."""
    t0 = time.perf_counter()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # before the probes: a busy machine is slower
    from dive.reid.train import ReIDTrainConfig

    c, synth, world = count_world(cfg)
    checkpoints = {name: finished_checkpoint(cfg, name, attr) for name, _, attr in dive_variants(cfg)}
    generated = {f"dive-{name}": generated_images(cfg, c, checkpoints[name], over) for name, over, _ in dive_variants(cfg)}
    if cfg.dive_images is not None and (cfg.dive_images / "manifest.jsonl").is_file():  # e.g. a filtered folder
        with open(cfg.dive_images / "manifest.jsonl") as f:
            generated["dive-camera"] = sum(1 for line in f if line.strip())
    sets = training_sets(cfg, c, generated)
    jobs, batches_of, name_of = planned_jobs(cfg, sets)
    rows = _work(cfg, c, synth, checkpoints, generated, sets)
    default_epochs = ReIDTrainConfig(out=Path("unused")).epochs
    runs = []
    elsewhere = sweep_runs(cfg)  # --from-sweep: the sweep's finished runs of the same recipe are copied, not trained
    kept = {}
    if cfg.records is not None:  # --records: runs kept there are taken back, not trained
        from dive.bench.records import records_map

        kept = records_map(cfg.records, jobs)
    for job in jobs:
        train_set, method, seed = job[0].split("|")
        over = job[6]
        epochs = over.get("epochs", default_epochs)
        per_epoch = over.get("batches_per_epoch") or batches_of(job[1], job[2])
        vals = epochs if over.get("select") == "best-val" else 0
        runs.append({"key": job[0], "group": reid_group(cfg, train_set, method, int(seed)), "method": method,
                     "set": name_of[job[1]], "batches": per_epoch * epochs, "val_epochs": vals,
                     "done": finished_report(job) is not None or adoptable(job, elsewhere) is not None
                     or adoptable(job, kept, weights=False) is not None})
    rows += _protocol_rows(cfg, c, runs)
    costs = probe.recorded_costs(cfg)
    todo_keys = {r["cost"] for r in rows if not r["done"]} | {f"reid:{r['method']}" for r in runs if not r["done"]}
    needs = {k for k in _needs(todo_keys) if k not in costs}
    probe_seconds = 0.0
    if probing and needs:
        files = sorted((cfg.data / "vi").glob("cam1/*/*.jpg"))[:probe.IO_IMAGES] if world_ready(cfg.data) else []
        t = time.perf_counter()
        costs |= probe.probe_costs(cfg, needs, world_plan=world, world_files=files, synth_cfg=synth,
                                   checkpoint=checkpoints["camera"])
        probe_seconds = round(time.perf_counter() - t, 1)
    rows = [_price(r, _resolve(r["cost"], costs, cfg)) for r in rows]
    rows += _reid_rows(cfg, c, sets, runs, costs)
    rows.sort(key=lambda r: STAGES.index(r["stage"]))  # stable: each stage's parts keep their order
    total = round(sum(r["seconds"] for r in rows), 1)
    equal = [over["batches_per_epoch"] for *_, over in jobs[:1] if cfg.reid_budget == "equal"]
    return {"out": str(cfg.out), "made": time.strftime("%Y-%m-%d %H:%M:%S"), "quick": cfg.quick,
            "load": load, "cpus": os.cpu_count(),
            "census": asdict(c) | {"ext": len(c.ext)}, "costs": costs, "probe_seconds": probe_seconds,
            "seconds_to_plan": round(time.perf_counter() - t0, 1), "rows": rows, "total_seconds": total,
            "unmeasured": [f"{r['stage']}: {r['part']}" for r in rows if r["source"] == "not measured"],
            "reid": {"jobs": len(runs), "done": sum(r["done"] for r in runs), "workers": _workers(cfg),
                     "budget": cfg.reid_budget, "epochs": cfg.reid_epochs or default_epochs,
                     "equal_batches_per_epoch": equal[0] if equal else None, "runs": runs}}


def _workers(cfg: BenchConfig) -> int:
    return max(1, min(cfg.reid_workers, os.cpu_count() or 1))


def _reid_rows(cfg: BenchConfig, c: Census, sets: dict, runs: list[dict], costs: dict) -> list[dict]:
    """One row per table: its runs' batches, their cost, and its share of the schedule's wall time."""
    io, fwd = _resolve("image", costs, cfg), _resolve("forward", costs, cfg)
    todo = [r for r in runs if not r["done"]]
    measured = True
    for r in todo:
        batch = _resolve(f"reid:{r['method']}", costs, cfg)
        measured &= batch is not None
        overhead = 0.0
        if io and fwd:  # load the training images; score the test ids (and the val ids every epoch)
            scored = c.vi_test + c.vi_val * r["val_epochs"]
            overhead = io["seconds"] * sets[r["set"]]["train"] + fwd["seconds"] * scored
        r["seconds"] = r["batches"] * (batch["seconds"] if batch else 0.0) + overhead
        r["source"] = batch["source"] if batch else "not measured"
    workers = _workers(cfg)
    work = sum(r["seconds"] for r in todo)
    wall = _schedule([r["seconds"] for r in todo], workers) if measured else 0.0
    rows = []
    for group in dict.fromkeys(r["group"] for r in runs):
        mine = [r for r in runs if r["group"] == group]
        left = [r for r in mine if not r["done"]]
        method = mine[0]["method"]
        batches = sorted({r["batches"] for r in mine})
        row = _row("reid", group, sum(r["batches"] for r in left), "batch", f"reid:{method}", not left, workers,
                   runs=len(mine), runs_done=len(mine) - len(left), batches_per_run=batches,
                   method_cost=METHOD_COST.get(method, 1.0))
        share = sum(r["seconds"] for r in left) / work if work else 0.0
        batch = _resolve(f"reid:{method}", costs, cfg)
        row |= {"unit_seconds": batch["seconds"] if batch and left else None,
                "source": "" if not left else (batch["source"] if batch and measured else "not measured"),
                "seconds": round(wall * share, 1)}
        rows.append(row)
    return rows
