"""The bench's ReID runs: the recipe every job shares (`reid_recipe`), the jobs of every table and
the folders they write (`reid_jobs`, `reid_run_dir`), reuse of finished runs of the same recipe,
and running them in parallel, longest first."""

from __future__ import annotations

import dataclasses
import json
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

from tqdm import tqdm

from dive.bench.config import BenchConfig
from dive.bench.stages import log
from dive.utils.config import config_to_dict


def _job_train_config(args: tuple, force: bool = True):
    from dive.reid.train import ReIDTrainConfig

    key, data, fmt, run, method, seed, overrides = args
    return ReIDTrainConfig(out=Path(run), method=method, seed=seed, force=force, progress=False, threads=1, **overrides)


def _reid_job(args: tuple) -> tuple[str, dict]:
    """Train and score one job: an unfinished run of its recipe in its folder (a bench or sweep
    stopped part way) continues from its last finished epoch, with the same result as an unbroken
    run; anything else in the folder is replaced (a run of another recipe, or one whose data changed
    since)."""
    from dive.reid.resume import CannotResume
    from dive.reid.run import ReIDDataConfig, ReIDEvalConfig, run_reid

    key, data, fmt = args[:3]
    data_cfg = ReIDDataConfig(data=Path(data), format=fmt)
    if resumable(args):
        try:
            return key, run_reid(data_cfg, _job_train_config(args, force=False), ReIDEvalConfig())
        except CannotResume as err:
            log(f"{key}: starting over ({err})")
    return key, run_reid(data_cfg, _job_train_config(args), ReIDEvalConfig())


def resumable(job: tuple) -> bool:
    """Whether the job's folder holds an unfinished run of exactly its recipe with a resume state."""
    from dive.reid.resume import STATE_FILE

    run = Path(job[3])
    if (run / "model.json").exists() or not (run / STATE_FILE).is_file():
        return False
    try:
        return _same_recipe(job)
    except ValueError:  # a config.json cut short by a kill
        return False


#: run settings that do not change what a ReID run learns
_NOT_RECIPE = {"out", "force", "progress", "threads", "eval_threads", "log_every"}


def finished_report(job: tuple) -> dict | None:
    """The report of a finished run of exactly this job's recipe, else None: a rerun after a budget
    or recipe change must retrain, never mix old runs into new tables."""
    run = Path(job[3])
    if not (run / "report.json").exists() or not _same_recipe(job):
        return None
    return json.loads((run / "report.json").read_text())


def _same_recipe(job: tuple) -> bool:
    """Whether the job's run folder holds a config.json of exactly the job's recipe."""
    path = Path(job[3]) / "config.json"
    if not path.is_file():
        return False
    saved = json.loads(path.read_text()).get("train", {})
    want = json.loads(json.dumps(config_to_dict(_job_train_config(job))))
    return all(saved.get(k) == v for k, v in want.items() if k not in _NOT_RECIPE)


def adopt_runs(jobs: list[tuple], elsewhere: dict[str, Path], weights: bool = True) -> list[str]:
    """For each job without a finished run, copy into its run folder a finished run of exactly its
    recipe and seed from another folder: `elsewhere` maps a job's train set to the run folder there
    (`{method}` and `{seed}` in its name filled in), trained on the same data (the caller's check),
    with its weights unless `weights` is False (a run's record: dive.bench.records).
    Returns the keys adopted."""
    import shutil

    adopted = []
    for job in jobs:
        if finished_report(job) is not None:
            continue
        there = adoptable(job, elsewhere, weights)
        if there is None:
            continue
        run = Path(job[3])
        if run.exists():
            shutil.rmtree(run)  # an unfinished or other-recipe run: replaced by the finished one
        shutil.copytree(there, run)
        adopted.append(job[0])
    return adopted


def adoptable(job: tuple, elsewhere: dict[str, Path], weights: bool = True) -> Path | None:
    """The run folder in `elsewhere` (see `adopt_runs`) holding a finished run of exactly this job's
    recipe and seed (with its weights, unless `weights` is False), else None."""
    train_set = job[0].split("|")[0]
    if train_set not in elsewhere:
        return None
    there = Path(str(elsewhere[train_set]).format(method=job[4], seed=job[5]))
    if weights and not (there / "model.safetensors").is_file():
        return None  # a record only: whatever reads this run's weights would fail
    return there if finished_report(job[:3] + (str(there),) + job[4:]) is not None else None


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
    scripts that add a row beside a finished bench). Each run is also scored on the world's val ids
    at its last epoch (the weights it keeps), which changes nothing in its training and makes its
    run the same as `dive bench-sweep`'s, so a sweep's finished runs can stand in (--from-sweep)."""
    from dive.reid.config import ReIDTrainConfig

    recipe = {"batches_per_epoch": cfg.reid_batches_per_epoch}  # 0: AGW's epoch, grows with the data
    if cfg.reid_epochs:
        recipe["epochs"] = cfg.reid_epochs
        recipe["lr_steps"] = tuple(e for e in (int(cfg.reid_epochs * 2 / 3), int(cfg.reid_epochs * 8 / 9)) if e > 0)
        recipe["warmup_epochs"] = min(2.0, cfg.reid_epochs / 4)
    recipe["val_every"] = cfg.reid_epochs or ReIDTrainConfig(out=Path("unused")).epochs
    return recipe


#: the suffix of a Tables 1/2 row trained to convergence (its own run folders and job keys)
CONVERGED = "-converged"

#: rows without synthetic images for --synthetic-share / --synthetic-weight to act on: the VI set
#: alone, and external RGB (its added images are the external ids' real photos, "real" in its export)
NO_SYNTHETIC = ("baseline", "baseline-long", "baseline" + CONVERGED, "external-rgb", "external-rgb" + CONVERGED)


def converged_recipe(cfg: BenchConfig, batches_per_epoch: int) -> dict:
    """Training to convergence: `reid_converge_epochs` epochs of the equal budget's length, the val
    ids' Rank-1 checked every epoch, the weights of its best epoch kept."""
    recipe = reid_recipe(dataclasses.replace(cfg, reid_epochs=cfg.reid_converge_epochs))
    return recipe | {"batches_per_epoch": batches_per_epoch, "select": "best-val", "val_every": 1}


def equal_budget(sets: dict[str, tuple], batches_of=None) -> int:
    """Batches per epoch that give every set the training of the largest: the largest AGW epoch
    (`batches_of(data, fmt)`: a set's AGW epoch; default `epoch_batches_of`, which reads the set)."""
    batches_of = batches_of or epoch_batches_of
    return max(batches_of(*v) for v in sets.values())


def reid_jobs(cfg: BenchConfig, exports: dict[str, Path], batches_of=None) -> list[tuple]:
    """Every ReID run of the bench. With `reid_budget="equal"` (default) every run trains the same
    number of batches: the largest training set's AGW epochs, so the baseline row stands at the
    budget of + DiVE and of every other expansion row. `batches_of(data, fmt)` gives a set's AGW
    epoch (default `epoch_batches_of`; the projection counts the sets before they are exported)."""
    batches_of = batches_of or epoch_batches_of
    overrides = reid_recipe(cfg)
    sets = {"baseline": (cfg.data, "synthvi")} | {name: (path, "sysu_mm01") for name, path in exports.items()}
    per_set: dict[str, dict] = {}
    equal = 0
    if cfg.reid_budget == "equal" and not cfg.reid_batches_per_epoch:
        equal = equal_budget(sets, batches_of)
        overrides = overrides | {"batches_per_epoch": equal}
    main = ("baseline", "external-rgb", "grayscale", "cyclegan", "dive-camera") + (
        ("dive-translate",) if "dive-translate" in sets else ())
    jobs = []
    for method in cfg.methods:
        for train_set in main if method in cfg.comparisons_for else ("baseline", "dive-camera"):
            for seed in cfg.seeds:
                jobs.append((train_set, method, seed))
    ablations = ["dive-modality", "dive-ir-only"] + [n for n in sets if n.startswith("dive-camera-k")]
    for train_set in ablations if cfg.ablations else ():
        for seed in cfg.ablation_seeds:
            jobs.append((train_set, "agw", seed))
    if cfg.reid_converge_epochs:
        per_epoch = equal or cfg.reid_batches_per_epoch or equal_budget(sets, batches_of)
        for train_set, method, seed in list(jobs):
            if train_set in main:
                sets[train_set + CONVERGED] = sets[train_set]
                per_set[train_set + CONVERGED] = converged_recipe(cfg, per_epoch)
                jobs.append((train_set + CONVERGED, method, seed))
    if cfg.diagnostics:
        # what would a perfect generator add? the external ids' true infrared renders; and, where
        # runs have their own budgets, is a gain only more optimisation? the baseline for as many
        # batches as + DiVE gets
        diagnostic = ["oracle", "oracle-vae"]
        if not equal:
            per_set["baseline-long"] = {"batches_per_epoch": cfg.reid_batches_per_epoch
                                        or batches_of(*sets["dive-camera"])}
            sets["baseline-long"] = sets["baseline"]
            diagnostic.insert(0, "baseline-long")
        for train_set in diagnostic:
            for seed in cfg.ablation_seeds:
                jobs.append((train_set, "agw", seed))
    for seed in cfg.ablation_seeds if cfg.ablations or cfg.diagnostics else ():  # they compare at these seeds
        if seed not in cfg.seeds:
            jobs += [("baseline", "agw", seed), ("dive-camera", "agw", seed)]
    out = []
    for train_set, method, seed in dict.fromkeys(jobs):
        data, fmt = sets[train_set]
        run = reid_run_dir(cfg, train_set, method, seed)
        added = {} if train_set in NO_SYNTHETIC else cfg.synthetic_overrides  # --synthetic-share/-weight
        out.append((f"{train_set}|{method}|{seed}", str(data), fmt, str(run), method, seed,
                    overrides | added | per_set.get(train_set, {})))
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


#: relative cost of a batch: CAJ holds 1.5x the images (the channel-augmented visible copies)
METHOD_COST = {"agw": 1.0, "caj": 1.5, "deen": 1.7}  # DEEN: 3x the batch after layer3


def longest_first(jobs: list[tuple]) -> list[tuple]:
    """Jobs ordered by their expected training time, longest first: with runs in parallel, a long
    run started last would leave the other workers idle at the end (expanded sets train twice as
    long as the baseline, and a CAJ batch is 1.5x an AGW one)."""
    from functools import cache

    batches_of = cache(epoch_batches_of)

    def cost(job: tuple) -> float:
        data, fmt, method, overrides = job[1], job[2], job[4], job[6]
        per_epoch = overrides.get("batches_per_epoch") or batches_of(data, fmt)
        return per_epoch * overrides.get("epochs", 1) * METHOD_COST.get(method, 1.0)

    return sorted(jobs, key=cost, reverse=True)


def run_reid_jobs(cfg: BenchConfig, jobs: list[tuple], on_done=None) -> dict[str, dict]:
    """Train the jobs without a finished run (`cfg.reid_workers` at a time); {key: report} of all.
    `on_done(job, report)` is called in this process as each trained run finishes."""
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
    log(f"ReID: {len(todo)} runs to do ({len(reports)} reused), {cfg.reid_workers} in parallel, longest first")
    bar = tqdm(total=len(todo), desc="reid runs")
    if cfg.reid_workers <= 1:
        for job in todo:
            key, rep = _reid_job(job)
            reports[key] = rep
            if on_done is not None:
                on_done(job, rep)
            bar.update()
    else:
        with ProcessPoolExecutor(cfg.reid_workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(_reid_job, job): job for job in todo}
            for fut in as_completed(futures):
                key, rep = fut.result()
                reports[key] = rep
                if on_done is not None:
                    on_done(futures[fut], rep)
                bar.update()
    bar.close()
    return reports
