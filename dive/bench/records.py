"""Records of finished ReID runs, kept apart from their run folders.

A sweep or bench on a machine that does not last (a spot instance, a notebook, a CI runner) loses
its run folders with it, and a full one can take longer than such a machine lives. A run's record,
its ``config.json``, ``report.json`` and ``model.json`` (the recipe check, the test scores and the
val scores at the kept epoch: all that the sweep's table reads), is a few kilobytes: kept in a
folder that lasts (a git repository, a mounted disk), the records are given back to a rerun in a
fresh ``--out``, which then counts those runs as finished (the same recipe, checked as for any
finished run) and trains only the others.

Layout: ``RECORDS/reid/<run name>/{config.json, report.json, report.md, model.json}``; the run
whose weights a later stage still needs (the sweep's filter scorer, the bench's Table 6 feature
model) also keeps ``model.safetensors``. The bench also keeps ``RECORDS/protocols/<run name>.json``:
each Tables 1/2 model's LLCM and RegDB scores, made as the run finishes (they are keyed by the
weights' sha256 in model.json, so they are reused without the weights). A record without weights
is never taken where weights are read (``dive bench --from-sweep`` adopts only whole runs).
"""

from __future__ import annotations

import filecmp
import os
import shutil
from pathlib import Path

from dive.bench.jobs import adopt_runs, finished_report, reid_run_name
from dive.bench.stages import log

#: what a record keeps of every finished run
RECORD_FILES = ("config.json", "report.json", "report.md", "model.json")
#: kept too for the runs named by `with_weights`
WEIGHT_FILES = ("model.safetensors",)


def record_dir(records: Path, run: Path) -> Path:
    return Path(records) / "reid" / Path(run).name


def _copy(src: Path, dst: Path) -> bool:
    """Copy src onto dst through a temporary name (dst is the old file or the new one, never half
    of one); False when dst already holds the same bytes."""
    if dst.is_file() and filecmp.cmp(src, dst, shallow=False):
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return True


def save_records(jobs: list[tuple], records: Path, with_weights: frozenset[str] = frozenset()) -> list[str]:
    """Copy the record of each finished job's run into `records` (its weights too when the run's
    folder name is in `with_weights`); unfinished runs are left out. Reads the run folders only, so
    it is safe beside a running sweep. Returns the run names whose record changed."""
    changed = []
    for job in jobs:
        if finished_report(job) is None:
            continue
        run = Path(job[3])
        names = RECORD_FILES + (WEIGHT_FILES if run.name in with_weights else ())
        wrote = [_copy(run / n, record_dir(records, run) / n) for n in names if (run / n).is_file()]
        if any(wrote):
            changed.append(run.name)
    return changed


def restore_records(jobs: list[tuple], records: Path) -> list[str]:
    """For each job whose run folder holds no finished run, the record of exactly its recipe and
    seed from `records`, copied into that folder (an unfinished run there is replaced). Returns the
    job keys restored. Not beside a running sweep: it replaces run folders."""
    return adopt_runs(jobs, records_map(records, jobs), weights=False)


def records_map(records: Path, jobs: list[tuple]) -> dict[str, Path]:
    """Train set -> its runs' record folders in `records` (`{method}`, `{seed}` to fill in), the
    `elsewhere` of `adoptable` / `adopt_runs` (with weights=False)."""
    names = {job[0].split("|")[0] for job in jobs}
    return {n: Path(records) / "reid" / reid_run_name(n, "{method}", "{seed}") for n in names}


# ------------------------------------------------------------------------------------------------
# the bench: its runs' records, their LLCM / RegDB scores, Table 6's feature model
# ------------------------------------------------------------------------------------------------


def _table6_run(cfg) -> str:
    from dive.bench.jobs import reid_run_dir

    return reid_run_dir(cfg, "baseline", "agw", cfg.seeds[0]).name


def bench_restore(cfg, jobs: list[tuple]) -> list[str]:
    """`dive bench --records`: the records of this bench's recipe back into cfg.out (runs without a
    finished run there; their LLCM / RegDB scores where cfg.out has none). Returns the job keys."""
    back = restore_records(jobs, cfg.records)
    _copy_json(Path(cfg.records) / "protocols", cfg.out / "protocols", missing_only=True)
    return back


def bench_keep(cfg, jobs: list[tuple], finished: tuple | None = None, report: dict | None = None) -> None:
    """`dive bench --records`: keep the finished runs' records (Table 6's feature model with its
    weights). With `finished` (a run that has just finished, and its report), a Tables 1/2 model is
    scored on the LLCM and RegDB layouts now, while its weights are at hand (one thread, beside the
    other runs), and its scores are kept too."""
    import dataclasses

    from dive.bench.protocols import protocol_results

    if finished is not None and report is not None:
        protocol_results(dataclasses.replace(cfg, threads=1), {finished[0]: report})
    save_records(jobs, cfg.records, with_weights=frozenset({_table6_run(cfg)}))
    _copy_json(cfg.out / "protocols", Path(cfg.records) / "protocols")


def _copy_json(src: Path, dst: Path, missing_only: bool = False) -> None:
    """Every *.json of folder src into folder dst (with `missing_only`, those dst lacks)."""
    for path in sorted(src.glob("*.json")) if src.is_dir() else ():
        if not (missing_only and (dst / path.name).exists()):
            _copy(path, dst / path.name)


def keep_as_it_finishes(keep):
    """`keep(job, report)` as a `run_reid_jobs` callback that never stops the training: a failure is
    logged (the stage keeps every record again at its end, where a failure is raised)."""
    def callback(job, report):
        try:
            keep(job, report)
        except Exception as err:  # noqa: BLE001 - the runs go on; the final keep raises
            log(f"records: could not keep {job[0]} as it finished ({type(err).__name__}: {err}); kept at the end")
    return callback
