"""`dive bench-sweep`: the knobs that decide whether synthetic data pays, measured one at a time at
one equal ReID budget over several seeds, in one table.

Rows: the baseline (the VI set only) and + DiVE at the bench's settings (the references), then one
row per knob setting, each changing only that knob from + DiVE:

* ``share`` F: ``ReIDTrainConfig.synthetic_share`` (the share of each batch's ids drawn from the
  expanded ids), on the + DiVE training set;
* ``weight`` W: ``ReIDTrainConfig.synthetic_weight`` (the loss weight of the synthetic images);
* ``filter`` F: `dive filter --keep F` of the + DiVE images, scored by the baseline run of the first
  seed (trained on the VI set alone: it never saw a test or an external id);
* ``n`` N and ``guidance`` G: a new `dive generate` folder of the bench's DiVE checkpoint with N
  images per id and infrared camera, or guidance scale G (a value equal to the bench's own is the
  + DiVE row itself, its runs shared);
* ``deep_cache`` N: the + DiVE images generated with `dive generate --fast --deep-cache N` (the
  faster sampling that changes the images: does it cost ReID accuracy?).

Every run trains the same number of batches: the bench's ReID epochs of the largest training set's
AGW epoch (`dive.bench.jobs.equal_budget`; a filtered set is a subset of + DiVE's and cannot be
larger). Each run is scored on the world's validation ids at its last epoch (`val_every`: infrared
val queries against a visible gallery, as `select: best-val` scores them) and on the test ids with
SYSU all-search. The setting is chosen by val Rank-1 alone (dive.bench.sweep_table), and the
table says whether it beats the equal-budget baseline on test.

Folders (under --out): world (a --quick sweep without --bench), dive/camera (a checkpoint it had to
train), synthetic/{dive-camera, n-N, guidance-G, deep-cache-N, filter-F}, exports/<set>,
reid/<row>-<method>-seed<s>, sweep.md, sweep.json. With --bench DIR the bench's world, DiVE
checkpoint and + DiVE images are used where DIR has them. Finished generations, filters and runs of
the same recipe are reused; runs go seed by seed, so a sweep stopped part way has whole one-seed
columns (`--so-far` writes their table).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from dive import defaults
from dive.bench.config import SWEEP_OPTIONS, BenchConfig, knob_value, quick_config
from dive.bench.jobs import equal_budget, finished_report, reid_recipe, reid_run_dir, run_reid_jobs
from dive.bench.stages import export_source, finished_checkpoint, generate_source, generation_done, log
from dive.bench.world import ensure_world, resolve_world, world_ready

#: the knobs, in the table's order
KNOBS = ("share", "weight", "filter", "n", "guidance", "deep_cache")
#: the + DiVE training set and its run name
DIVE_SET = "dive"
BASELINE_SET = "baseline"


@dataclass
class SweepConfig:
    """One table of synthetic-data knobs at equal budget, the setting chosen on the val ids."""

    out: Path = field(default=defaults.RUNS / "sweep", metadata={
        "help": "sweep folder (resumable: finished generations, filters and ReID runs are reused)"})
    bench: Path | None = field(default=None, metadata={
        "help": "a finished or partial `dive bench` folder: its settings (bench.json), world, DiVE checkpoint and "
                "+ DiVE images are used; none: the bench's defaults (the default world and the shipped demo)"})
    share: tuple[float, ...] = field(default=(0.25, 0.5), metadata={
        "help": "--synthetic-share values: share of each batch's ids drawn from the expanded ids"})
    weight: tuple[float, ...] = field(default=(0.5,), metadata={
        "help": "--synthetic-weight values: loss weight of the synthetic images"})
    filter_keep: tuple[float, ...] = field(default=(0.5,), metadata={
        "help": "`dive filter --keep` fractions of the + DiVE images (scorer: the baseline run of the first seed)"})
    n: tuple[int, ...] = field(default=(3, 12), metadata={
        "help": "generated images per id and infrared camera (each value a generation of its own)"})
    guidance: tuple[float, ...] = field(default=(2.0, 5.0), metadata={
        "help": "guidance scales (each value a generation of its own)"})
    deep_cache: tuple[int, ...] = field(default=(5,), metadata={
        "help": "deep-cache intervals of the + DiVE generation (each a generation of its own; `dive generate "
                "--fast --deep-cache N`)"})
    knobs: tuple[str, ...] = field(default=KNOBS, metadata={
        "help": "which knobs to sweep (the others are left out of the table)", "choices": list(KNOBS)})
    seeds: tuple[int, ...] = field(default=(0, 1, 2), metadata={"help": "ReID seeds of every row"})
    method: str = field(default="agw", metadata={"help": "ReID recipe of every run", "choices": ["agw", "caj", "deen"]})
    base: Path | None = field(default=None, metadata={
        "help": "diffusers base a missing DiVE checkpoint is trained on (none: the bench's)"})
    reid_workers: int = field(default=2, metadata={"help": "ReID runs in parallel (one thread each)"})
    threads: int = field(default=2, metadata={"help": "torch threads of DiVE training, generation and filtering"})
    quick: bool = field(default=False, metadata={
        "help": "toy size: the quick bench's world and sizes (`dive bench --quick`), a few minutes"})
    plan: bool = field(default=False, metadata={"help": "print the projected ReID runs and batches, and stop"})
    so_far: bool = field(default=False, metadata={
        "help": "write the table of the runs finished so far (sweep-so-far.md: rows with fewer seeds say so), "
                "train nothing, and stop; safe beside a running sweep"})
    records: Path | None = field(default=None, metadata={
        "help": "a lasting folder for the finished runs' records (config.json, report.json; the filter scorer's "
                "weights too): a run takes back those of its recipe before training and keeps each of its own "
                "there as it finishes, --so-far keeps them too; for a sweep that outlives its machine "
                "(dive.bench.records)"})

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.bench = Path(self.bench) if self.bench is not None else None
        self.base = Path(self.base) if self.base is not None else None
        self.records = Path(self.records) if self.records is not None else None
        for name in ("share", "weight", "filter_keep", "n", "guidance", "deep_cache", "knobs", "seeds"):
            setattr(self, name, tuple(getattr(self, name)))
        if not self.seeds:
            raise ValueError("seeds: at least one ReID seed is needed")
        bad = set(self.knobs) - set(KNOBS)
        if bad:
            raise ValueError(f"knobs: unknown {sorted(bad)}; expected some of {', '.join(KNOBS)}")
        if any(not 0.0 <= v <= 1.0 for v in self.share):
            raise ValueError(f"share: values in [0, 1]; got {list(self.share)}")
        if any(v < 0 for v in self.weight):
            raise ValueError(f"weight: values >= 0; got {list(self.weight)}")
        if any(not 0.0 < v <= 1.0 for v in self.filter_keep):
            raise ValueError(f"filter-keep: fractions in (0, 1]; got {list(self.filter_keep)}")
        if any(v < 1 for v in self.n):
            raise ValueError(f"n: values >= 1; got {list(self.n)}")
        if any(v == 1 or v < 0 for v in self.deep_cache):
            raise ValueError(f"deep-cache: intervals >= 2 (0: off, the + DiVE row); got {list(self.deep_cache)}")


# ------------------------------------------------------------------------------------------------
# settings and rows
# ------------------------------------------------------------------------------------------------


def _bench_was_quick(folder: Path) -> bool:
    plan = folder / "plan.json"
    try:
        return bool(json.loads(plan.read_text()).get("quick")) if plan.is_file() else False
    except ValueError:
        return False


def bench_of(cfg: SweepConfig) -> BenchConfig:
    """The bench settings the sweep stands on: the --bench folder's (its bench.json; a partial
    folder: the defaults, or the quick ones when its plan.json or --quick says so, its own world
    when it built one), else the bench's defaults in the sweep's folder (--quick: toy size)."""
    from dive.bench.rows import bench_settings

    if cfg.bench is not None:
        bench = bench_settings(cfg.bench)
        if not (cfg.bench / "bench.json").exists():
            if cfg.quick or _bench_was_quick(cfg.bench):
                bench = quick_config(dataclasses.replace(bench, quick=True))
            elif world_ready(cfg.bench / "world"):
                bench = dataclasses.replace(bench, data=cfg.bench / "world")
    else:
        bench = BenchConfig(out=cfg.out, quick=cfg.quick)
        bench = quick_config(bench) if cfg.quick else bench
    changes = dict(seeds=cfg.seeds, methods=(cfg.method,), reid_workers=cfg.reid_workers, threads=cfg.threads,
                   reid_budget="equal", projection=False)
    if cfg.base is not None:
        changes["base"] = cfg.base
    return resolve_world(dataclasses.replace(bench, **changes))


def _num(v: float) -> str:
    return f"{v:g}"


def knob_rows(cfg: SweepConfig, bench: BenchConfig) -> list[dict]:
    """The table's rows in order: {knob, value, name (its runs' and training set's name), set (the
    training set), overrides (ReIDTrainConfig fields), and for a new folder `generate` or `keep`}."""
    rows = [{"knob": "baseline", "value": None, "name": BASELINE_SET, "set": BASELINE_SET, "overrides": {}},
            {"knob": "dive", "value": None, "name": DIVE_SET, "set": DIVE_SET, "overrides": {}}]
    for knob in KNOBS:
        if knob not in cfg.knobs:
            continue
        for v in {"share": cfg.share, "weight": cfg.weight, "filter": cfg.filter_keep, "n": cfg.n,
                  "guidance": cfg.guidance, "deep_cache": cfg.deep_cache}[knob]:
            name = f"{knob.replace('_', '-')}-{_num(v)}"
            row = {"knob": knob, "value": v, "name": name, "set": DIVE_SET, "overrides": {}}
            if knob == "share":
                row["overrides"] = {"synthetic_share": float(v)}
            elif knob == "weight":
                row |= {"name": DIVE_SET} if float(v) == 1.0 else {"overrides": {"synthetic_weight": float(v)}}
            elif knob == "filter":
                row |= {"set": name, "keep": float(v)}
            else:  # a generation knob: a new folder, unless it is the bench's own setting (the + DiVE row)
                value = knob_value(knob, v)
                if value == getattr(bench, SWEEP_OPTIONS[knob]):
                    row["name"] = DIVE_SET
                else:
                    row |= {"set": name, "generate": {SWEEP_OPTIONS[knob]: value}}
            rows.append(row)
    return rows


def train_epochs(bench: BenchConfig) -> int:
    from dive.reid.config import ReIDTrainConfig

    return bench.reid_epochs or next(f.default for f in dataclasses.fields(ReIDTrainConfig) if f.name == "epochs")


def sweep_recipe(bench: BenchConfig, per_epoch: int) -> dict:
    """The bench's ReID recipe at `per_epoch` batches per epoch, val scored at the last epoch (the
    weights kept are the last epoch's, so val and test score the same network)."""
    epochs = train_epochs(bench)
    return reid_recipe(bench) | {"epochs": epochs, "batches_per_epoch": per_epoch, "val_every": epochs}


def sweep_jobs(bench: BenchConfig, rows: list[dict], sets: dict[str, tuple], per_epoch: int) -> list[tuple]:
    """The ReID jobs of the rows (one per distinct row name and seed), in the bench's job format,
    seed by seed: every row's first seed before any row's second, so a sweep stopped part way has
    whole one-seed columns to read (`--so-far`), not three seeds of its first rows."""
    recipe = sweep_recipe(bench, per_epoch)
    first: dict[str, dict] = {}
    for row in rows:  # rows sharing a run name (a setting equal to the bench's) are one job: the first's
        first.setdefault(row["name"], row)
    jobs = []
    for seed in bench.seeds:
        for row in first.values():
            data, fmt = sets[row["set"]]
            run = reid_run_dir(bench, row["name"], bench.methods[0], seed)
            jobs.append((f"{row['name']}|{bench.methods[0]}|{seed}", str(data), fmt, str(run), bench.methods[0], seed,
                         recipe | row["overrides"]))
    return jobs


def run_jobs_of(bench: BenchConfig, rows: list[dict], per_epoch: int) -> list[tuple]:
    """The rows' jobs without their training data (enough to find, check and table their runs)."""
    return sweep_jobs(bench, rows, {r["set"]: ("", "") for r in rows}, per_epoch)


def scorer_phase(work: BenchConfig, rows: list[dict], sets: dict[str, tuple], per_epoch: int) -> list[tuple]:
    """The jobs trained before the filters: the scorer (the first seed's baseline run, trained on
    the VI set alone) and, beside it, as many runs of rows that need no filtered set as there are
    other workers, so no worker waits idle while the scorer trains."""
    ready = [r for r in rows if "keep" not in r]
    jobs = sweep_jobs(work, ready, sets, per_epoch)
    return jobs[: max(1, work.reid_workers)]


# ------------------------------------------------------------------------------------------------
# projection
# ------------------------------------------------------------------------------------------------


def projection(bench: BenchConfig, work: BenchConfig, rows: list[dict]) -> dict:
    """ReID runs and batches before anything runs: the equal budget from the world's census (the
    VI visible training images plus the expanded ids' visible images: every DiVE set's AGW epoch)."""
    from dive.bench.plan import count_world
    from dive.reid.sampler import agw_epoch_batches
    from dive.reid.train import ReIDTrainConfig

    census = count_world(bench)[0]
    d = ReIDTrainConfig(out=Path("unused"))
    per_epoch = bench.reid_batches_per_epoch or agw_epoch_batches(
        census.vi_train_visible + sum(census.ext.values()), d.num_ids, d.num_per_modality)
    jobs = run_jobs_of(work, rows, per_epoch)
    done = sum(finished_report(j) is not None for j in jobs)
    batches = per_epoch * train_epochs(bench)
    return {"rows": len(rows), "runs": len(jobs), "done": done, "batches_per_run": batches,
            "batches_per_epoch": per_epoch, "epochs": train_epochs(bench), "total_batches": batches * (len(jobs) - done),
            "generations": [r["name"] for r in rows if "generate" in r and not generation_done(_folder(work, r))],
            "filters": [r["name"] for r in rows if "keep" in r]}


def projection_line(p: dict, seeds) -> str:
    gens = f"{len(p['generations'])} generations ({', '.join(p['generations'])})" if p["generations"] else "no generation"
    return (f"projected: {p['rows']} rows, {p['runs']} ReID runs over seeds {list(seeds)} ({p['done']} already "
            f"finished), {p['batches_per_run']} batches each ({p['epochs']} epochs x {p['batches_per_epoch']}), "
            f"{p['total_batches']} batches to train; {gens}; {len(p['filters'])} filter(s)")


# ------------------------------------------------------------------------------------------------
# stages
# ------------------------------------------------------------------------------------------------


def _folder(work: BenchConfig, row: dict) -> Path:
    return work.out / "synthetic" / row["set"]


def camera_checkpoint(bench: BenchConfig, work: BenchConfig) -> Path:
    """The bench's per-camera DiVE checkpoint (given, or trained in the bench's folder), else one
    trained here with the demo's recipe, as the bench trains it."""
    from dive.bench.world import demo_recipe
    from dive.checkpoint import check_checkpoint_dir
    from dive.train.trainer import DiVETrainConfig, train_dive

    for c in (bench, work):
        found = finished_checkpoint(c, "camera", "checkpoint")
        if found is not None:
            return check_checkpoint_dir(found)
    recipe = demo_recipe(work)
    steps = recipe.get("steps", work.dive_steps)
    run = work.out / "dive" / "camera"
    log(f"training the DiVE 'camera' checkpoint ({steps} steps on {work.base}) in {run}")
    train_dive(DiVETrainConfig(**(dict(steps=steps, warmup=min(100, steps // 4)) | recipe), base=work.base,
                               data=work.data, out=run, min_images=work.min_images, seed=0, threads=work.threads,
                               save_every=max(1, min(500, steps)), preview_every=0), progress=not work.quick)
    return check_checkpoint_dir(run / "final")


def dive_folder(bench: BenchConfig, work: BenchConfig, checkpoint: Path) -> Path:
    """The + DiVE images at the bench's settings: the bench's own folder when finished, else generated here."""
    theirs = bench.out / "synthetic" / "dive-camera"
    if generation_done(theirs):
        return theirs
    return generate_source(work, checkpoint, work.out / "synthetic" / "dive-camera")


def filter_folder(work: BenchConfig, source: Path, scorer: Path, keep: float, out: Path) -> Path:
    """`dive filter --keep` of `source` scored by the `scorer` run (reused when made from the same
    images, fraction and scorer weights)."""
    from dive.metrics.filter import FilterConfig, filter_synthetic

    done = out / "filter.json"
    if done.is_file():
        saved = json.loads(done.read_text())
        sha = json.loads((scorer / "model.json").read_text()).get("weights_sha256")
        if (saved.get("config", {}).get("keep") == keep and saved.get("extractor", {}).get("weights_sha256") == sha
                and Path(saved["config"]["synthetic"]).resolve() == source.resolve()):
            return out
    log(f"filter: keep {keep:g} of {source} (scorer {scorer}) -> {out}")
    filter_synthetic(FilterConfig(synthetic=source, data=work.data, reid_run=scorer, out=out, keep=keep, force=True,
                                  threads=work.threads, progress=False))
    return out


def run_sweep(cfg: SweepConfig) -> dict:
    from dive.utils.lock import output_lock

    bench = bench_of(cfg)
    work = dataclasses.replace(bench, out=cfg.out)
    rows = knob_rows(cfg, bench)
    p = projection(bench, work, rows)
    print(projection_line(p, cfg.seeds), flush=True)
    if cfg.plan:
        return {"projection": p}
    if cfg.so_far:
        lines = sweep_so_far(cfg, work, rows, p["batches_per_epoch"])
        print("\n".join(lines), flush=True)
        keep_records(cfg, work, rows, p["batches_per_epoch"])
        return {"projection": p, "so_far": lines}
    with output_lock(cfg.out, "dive bench-sweep"):
        if cfg.records is not None:
            from dive.bench.records import restore_records

            back = restore_records(run_jobs_of(work, rows, p["batches_per_epoch"]), cfg.records)
            log(f"records: {len(back)} finished run(s) taken back from {cfg.records}")
        per_epoch = p["batches_per_epoch"]
        try:
            result = _run(cfg, bench, work, rows, p)
            per_epoch = result.get("batches_per_epoch", per_epoch)
            return result
        finally:
            keep_records(cfg, work, rows, per_epoch)


def keep_records(cfg: SweepConfig, work: BenchConfig, rows: list[dict], per_epoch: int) -> None:
    """With --records: the records of the finished runs of this recipe, into cfg.records."""
    from dive.bench.records import save_records

    if cfg.records is None:
        return
    jobs = run_jobs_of(work, rows, per_epoch)
    scorer = reid_run_dir(work, BASELINE_SET, work.methods[0], work.seeds[0]).name
    weights = frozenset({scorer}) if any("keep" in r for r in rows) else frozenset()
    changed = save_records(jobs, cfg.records, with_weights=weights)
    log(f"records: {len(changed)} run record(s) written to {cfg.records}")


def sweep_so_far(cfg: SweepConfig, work: BenchConfig, rows: list[dict], per_epoch: int) -> list[str]:
    """The table of the finished runs of this recipe (`--so-far`): reads run folders, writes
    sweep-so-far.md, takes no lock and starts nothing."""
    from dive.bench.sweep_table import write_so_far

    jobs = run_jobs_of(work, rows, per_epoch)
    finished = {job[0]: rep for job in jobs if (rep := finished_report(job)) is not None}
    info = {"batches": per_epoch * train_epochs(work), "epochs": train_epochs(work), "batches_per_epoch": per_epoch,
            "fixed_epoch": bool(work.reid_batches_per_epoch)}
    return write_so_far(cfg, work, rows, finished, info)


def _run(cfg: SweepConfig, bench: BenchConfig, work: BenchConfig, rows: list[dict], p: dict) -> dict:
    from dive.bench.stages import check_inputs
    from dive.bench.sweep_table import write_sweep

    cfg.out.mkdir(parents=True, exist_ok=True)
    ensure_world(work)
    checkpoint = camera_checkpoint(bench, work)
    check_inputs(work, {"camera": checkpoint})
    default = dive_folder(bench, work, checkpoint)
    folders = {DIVE_SET: default}
    for row in rows:
        if "generate" in row:
            folders[row["set"]] = generate_source(dataclasses.replace(work, **row["generate"]), checkpoint,
                                                  _folder(work, row))
    sets = {BASELINE_SET: (work.data, "synthvi")}
    sets |= {name: (export_source(work, name, folder), "sysu_mm01") for name, folder in folders.items()}
    per_epoch = work.reid_batches_per_epoch or equal_budget(sets)
    if per_epoch != p["batches_per_epoch"]:
        log(f"equal budget: {per_epoch} batches per epoch (projected {p['batches_per_epoch']})")
    keep = None
    if cfg.records is not None:
        from dive.bench.records import keep_as_it_finishes

        keep = keep_as_it_finishes(lambda job, report: keep_records(cfg, work, rows, per_epoch))
    filtered = [r for r in rows if "keep" in r]
    if filtered:  # the scorer first (with other workers busy on runs that need no filter)
        first = scorer_phase(work, rows, sets, per_epoch)
        run_reid_jobs(work, first, on_done=keep)
        scorer = Path(first[0][3])
        for row in filtered:
            folder = filter_folder(work, default, scorer, row["keep"], _folder(work, row))
            sets[row["set"]] = (export_source(work, row["set"], folder), "sysu_mm01")
    jobs = sweep_jobs(work, rows, sets, per_epoch)
    reports = run_reid_jobs(work, jobs, on_done=keep)  # each run's record kept as it finishes
    return write_sweep(cfg, work, rows, reports, {"checkpoint": str(checkpoint), "dive_images": str(default),
                                                  "batches_per_epoch": per_epoch, "epochs": train_epochs(work),
                                                  "fixed_epoch": bool(work.reid_batches_per_epoch),
                                                  "projection": p})
