"""`dive bench`: the paper's Tables 1/2, 3, 5 and 6 on SynthVI, composed from the stages.

Stages (each resumable: a finished stage's output is reused when the bench is rerun):
world -> DiVE checkpoints (shipped, or trained here with the demo's recipe; on a world other than
the shipped one, after that world's own captions and infrared words: dive.bench.world) -> generation per DiVE variant (and, with
--translate-strength, the img2img row) -> comparison baselines (grayscale, CycleGAN) -> one export
per training set -> ReID runs (in parallel, one thread each; with diagnostics also the oracle's
true infrared renders and a longer baseline) -> quality metrics (plus the oracle's true infrared
renders, as the ceiling) -> tables (Markdown + JSON) and plots under `out/`.

Before the first stage the bench prints its projection (dive.bench.plan): the work left per stage
and its projected time from measured unit costs, written to plan.json and compared with the actual
time in tables.md; `plan_bench` (`dive bench --plan`) prints it and runs nothing.

Folder layout: out/{world, captions, dive/<variant>, synthetic/<name>, cyclegan, exports/<name>,
reid/<train set>-<method>-seed<s>, layouts/{llcm,regdb}, protocols, metrics, plan.json, tables.md,
tables.json, *.png, bench.json}.

This module is the driver; the stages live in `stages.py`, the ReID jobs in `jobs.py`, the tables
in `tables.py`, the projection in `plan.py` (its unit costs in `probe.py`).
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

from dive.bench.config import BenchConfig, quick_config, sweep_runs, with_sweep_choice
from dive.bench.jobs import adopt_runs, reid_jobs, reid_run_dir, run_reid_jobs
from dive.bench.plan import project
from dive.bench.plan_text import job_lines, projection_lines, write_plan
from dive.bench.protocols import protocol_tables
from dive.bench.stages import (check_inputs, comparison_baselines, count_ids, ensure_checkpoints,
                               export_all, generate_variants, log, metrics_done, oracle_source, oracle_vae_source,
                               subset_source, translate_source)
from dive.bench.tables import write_tables
from dive.bench.world import ensure_world, resolve_world
from dive.utils.config import config_to_dict
from dive.utils.io import write_json
from dive.utils.lock import FolderLocked, output_lock


def quality(cfg: BenchConfig, sources: dict[str, Path], reports: dict[str, dict]) -> dict:
    """Table 6: FD to real IR and identity Rank-1, with the VI-only AGW model (seed 0 of the
    first seed list) as the feature extractor: it never saw an external identity."""
    from dive.metrics.quality import quality_report

    out = cfg.out / "metrics"
    done = metrics_done(cfg.out, sources)
    if done is not None:
        return done
    if f"baseline|agw|{cfg.seeds[0]}" not in reports:
        raise ValueError(f"Table 6 needs the baseline AGW run at seed {cfg.seeds[0]} as its feature extractor")
    # the run's folder in this bench, not the path its report was written at: a bench folder that
    # was moved, or runs brought in from another folder, must not read a model elsewhere
    extractor = reid_run_dir(cfg, "baseline", "agw", cfg.seeds[0])
    log(f"quality metrics (features: {extractor}) -> {out}")
    return quality_report(real_ir=cfg.data, synthetic=tuple(sources.values()), reid_run=extractor, out=out,
                          progress=False, tsne=not cfg.quick)


def run_bench(cfg: BenchConfig) -> dict:
    if cfg.quick:
        cfg = quick_config(cfg)
    cfg = with_sweep_choice(resolve_world(cfg))
    with output_lock(cfg.out):  # one bench per --out
        return _run_bench(cfg)


def plan_bench(cfg: BenchConfig) -> dict:
    """`dive bench --plan`: print the projection and the ReID job list, run nothing. The projection
    goes to OUT/plan.json too, unless a bench is running in that folder (its own plan stays)."""
    if cfg.quick:
        cfg = quick_config(cfg)
    cfg = with_sweep_choice(resolve_world(cfg))
    projection = project(cfg, probing=cfg.projection)
    print("\n".join(projection_lines(projection) + [""] + job_lines(projection)))
    try:
        with output_lock(cfg.out, "dive bench --plan"):
            path = write_plan(cfg, projection)
        print(f"written: {path}")
    except FolderLocked:
        print(f"{cfg.out}: a bench is running there; its {cfg.out / 'plan.json'} is left as it is")
    return projection


def _run_bench(cfg: BenchConfig) -> dict:
    t0 = time.time()
    cfg.out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    projection = None
    if cfg.projection:  # what is left and how long it will take, before any stage runs
        projection = project(cfg)
        write_plan(cfg, projection)
        print("\n".join(projection_lines(projection)), flush=True)
        t0 = time.time()  # the bench's own time starts after the projection

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
    for k in cfg.id_counts if cfg.ablations else ():
        table5[f"dive-camera-k{k}"] = subset_source(sources["dive-camera"], cfg.out / "synthetic" / f"dive-camera-k{k}",
                                                    k, cfg.gen_seed)
    ceilings = {"oracle": timed("oracle", oracle_source, cfg)}
    if cfg.diagnostics:
        ceilings["oracle-vae"] = timed("oracle vae", oracle_vae_source, cfg, ceilings["oracle"], checkpoints["camera"])
    exports = timed("exports", export_all, cfg, sources | table5 | (ceilings if cfg.diagnostics else {}))
    jobs = reid_jobs(cfg, exports)
    adopted = adopt_runs(jobs, sweep_runs(cfg))
    if adopted:
        log(f"ReID: {len(adopted)} finished runs of the sweep {cfg.from_sweep} copied in (same recipe and data): "
            + ", ".join(adopted))
    keep = None
    if cfg.records is not None:  # records of a bench that outlives its machine: taken back, kept as runs finish
        from dive.bench.records import bench_keep, bench_restore, keep_as_it_finishes

        back = bench_restore(cfg, jobs)
        log(f"records: {len(back)} finished run(s) taken back from {cfg.records}")
        keep = keep_as_it_finishes(functools.partial(bench_keep, cfg, jobs))
    try:
        reports = timed("reid", run_reid_jobs, cfg, jobs, keep)
        protocols = timed("protocols", protocol_tables, cfg, reports)  # Tables 1/2 models on LLCM and RegDB
    finally:
        if cfg.records is not None:
            bench_keep(cfg, jobs)
    metrics = timed("metrics", quality, cfg, sources | ceilings, reports)
    timings["total"] = round(time.time() - t0, 1)
    id_counts = {"baseline": 0, "dive-camera": count_ids(sources["dive-camera"])}
    id_counts |= {name: count_ids(folder) for name, folder in table5.items()}
    result = write_tables(cfg, reports, metrics, id_counts, timings, projection, protocols)
    write_json(cfg.out / "bench.json", {"config": config_to_dict(cfg), "checkpoints": {k: str(v) for k, v in checkpoints.items()},
                                        "timings_s": timings,
                                        "projected_s": projection["total_seconds"] if projection else None})
    log(f"done in {timings['total']:.0f} s: {cfg.out / 'tables.md'}")
    return result

