"""Rows beside a finished bench: `dive bench-row` trains one Table 1 row with the bench's own export
and ReID recipe (or at an explicit budget), and `dive bench-progress` prints the rows of the ReID
runs finished so far in one or more bench folders, with the paper's claim check.

A row's runs are written where the bench writes its own, out/reid/<name>-<method>-seed<s>, so
`dive bench-progress` reads the bench's rows and the added ones together. The bench's settings are
read from the folder's bench.json (BenchConfig's defaults when the bench has not finished).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from dive import defaults
from dive.bench.config import BenchConfig
from dive.bench.jobs import finished_report, parse_reid_run_name, reid_recipe, reid_run_dir, run_reid_jobs
from dive.bench.stages import export_source, generate_source, log, variant_recipe
from dive.bench.tables import _cell, claim_check

#: SRC values that name a reference row rather than a folder
REFERENCE_ROWS = ("baseline", "external-rgb")


@dataclass
class BenchRowConfig:
    """One Table 1 row beside a finished bench, with the bench's export and ReID recipe."""

    source: str = field(metadata={
        "help": "the row's images: a synthetic folder (images + manifest.jsonl: any generator, a baseline, a "
                "control), a DiVE checkpoint folder (generated at the bench's settings into OUT/synthetic/NAME), "
                "a diffusers base folder (a DiVE checkpoint trained on it first, in OUT/dive/NAME, with the recipe "
                "of the bench's per-camera checkpoint), "
                "`baseline` (the VI set alone) or `external-rgb` (the external ids' visible images only)"})
    out: Path = field(default=defaults.RUNS / "bench", metadata={
        "help": "the bench folder the row goes beside (its bench.json gives the settings)"})
    name: str = field(default="", metadata={
        "help": "row name: names the export and the ReID runs (reid/NAME-METHOD-seedS); default: SRC for "
                "`baseline` / `external-rgb`, required otherwise"})
    method: str = field(default="agw", metadata={"help": "ReID recipe (caj: Table 2's rows)", "choices": ("agw", "caj")})
    seeds: tuple[int, ...] = field(default=(), metadata={"help": "ReID seeds; none: the bench's Table 1 seeds"})
    epochs: int | None = field(default=None, metadata={
        "help": "ReID epochs of AGW's length, its LR steps and warm-up scaled as the bench scales them "
                "(None: the bench's)"})
    batches_per_epoch: int | None = field(default=None, metadata={
        "help": "ReID batches per epoch (0: AGW's epoch, grows with the data; e.g. the + DiVE row's count trains "
                "at equal batches; None: the bench's)"})
    guidance: float | None = field(default=None, metadata={
        "help": "DiVE checkpoint SRC only: guidance scale (None: the bench's)"})
    gen_seed: int | None = field(default=None, metadata={
        "help": "DiVE checkpoint SRC only: generation seed (None: the bench's)"})
    train_seed: int = field(default=0, metadata={
        "help": "base-model SRC only: DiVE training seed (0: the demo's)"})
    workers: int = field(default=2, metadata={"help": "ReID runs in parallel (one thread each)"})

    def __post_init__(self) -> None:
        self.out, self.seeds = Path(self.out), tuple(self.seeds)
        if not self.name:
            if self.source not in REFERENCE_ROWS:
                raise ValueError(f"{self.source}: give --name for a folder's row (it names reid/NAME-{self.method}-seedS)")
            self.name = self.source
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name) or \
                parse_reid_run_name(f"{self.name}-{self.method}-seed0") != (self.name, self.method, 0):
            raise ValueError(f"--name {self.name!r}: expected a row name such as dive-g7.5 (letters, digits, '-', '.')")


def bench_settings(out: Path) -> BenchConfig:
    """The settings a bench folder was run with (its bench.json), else BenchConfig's defaults."""
    path = Path(out) / "bench.json"
    if not path.exists():
        return BenchConfig(out=Path(out))
    try:
        saved = json.loads(path.read_text())["config"]
    except (ValueError, KeyError) as err:
        raise ValueError(f"{path}: expected the bench's bench.json with a 'config' object ({err})") from None
    names = {f.name for f in dataclasses.fields(BenchConfig)}
    saved.setdefault("reid_budget", "own")  # a bench from before the equal budget trained each set its own epochs
    return BenchConfig(**{k: v for k, v in saved.items() if k in names} | {"out": Path(out)})


def row_recipe(bench: BenchConfig) -> dict:
    """The bench's ReID recipe for a row; at the equal budget, the batches per epoch its own runs trained."""
    recipe = reid_recipe(bench)
    if bench.reid_budget == "equal" and not bench.reid_batches_per_epoch:
        for seed in bench.seeds:
            saved = reid_run_dir(bench, "baseline", "agw", seed) / "config.json"
            if saved.exists():
                return recipe | {"batches_per_epoch": int(json.loads(saved.read_text())["train"]["batches_per_epoch"])}
        raise ValueError(f"{bench.out}: the bench's equal ReID budget is read from its baseline runs and none has "
                         "started; run the bench first, or give --batches-per-epoch")
    return recipe


def row_settings(cfg: BenchRowConfig) -> BenchConfig:
    """The bench's settings with the row's overrides (budget, generation)."""
    bench = bench_settings(cfg.out)
    changes: dict = {"reid_workers": cfg.workers}
    for ours, theirs in (("epochs", "reid_epochs"), ("batches_per_epoch", "reid_batches_per_epoch"),
                         ("guidance", "guidance"), ("gen_seed", "gen_seed")):
        if getattr(cfg, ours) is not None:
            changes[theirs] = getattr(cfg, ours)
    return dataclasses.replace(bench, **changes)


def train_on_base(bench: BenchConfig, base: Path, run: Path, seed: int) -> Path:
    """A DiVE checkpoint trained on `base` with the recipe of the bench's per-camera checkpoint (its
    dive.json, as the bench trains its ablations), in `run`; resumes a stopped run, reuses a finished one."""
    from dive.checkpoint import check_checkpoint_dir
    from dive.train.trainer import DiVETrainConfig, train_dive

    # the per-camera checkpoint the bench was given, else the one it trained itself
    camera = next((c for c in (bench.checkpoint, bench.out / "dive" / "camera" / "final")
                   if c is not None and (c / "dive.json").exists()), None)
    if camera is None:
        raise ValueError(f"{bench.out}: a base SRC trains with the recipe of the bench's per-camera DiVE checkpoint; "
                         f"expected one at {bench.checkpoint} or {bench.out / 'dive' / 'camera' / 'final'}")
    if not (run / "final" / "dive.json").exists():
        recipe = variant_recipe(camera)
        steps = recipe.get("steps", bench.dive_steps)
        log(f"training DiVE on {base} with {camera}'s recipe ({steps} steps, seed {seed}) in {run}")
        train_dive(DiVETrainConfig(**recipe, base=base, data=bench.data, out=run, min_images=bench.min_images,
                                   seed=seed, threads=bench.threads, save_every=max(1, min(500, steps)),
                                   preview_every=0), progress=not bench.quick)
    return check_checkpoint_dir(run / "final")


def row_training_set(cfg: BenchRowConfig, bench: BenchConfig) -> tuple[Path, str]:
    """(training data, format) of the row: the VI set, or an export made as the bench makes its own."""
    if cfg.source == "baseline":
        return bench.data, "synthvi"
    if cfg.source == "external-rgb":
        return export_source(bench, cfg.name, None), "sysu_mm01"
    src = Path(cfg.source)
    if (src / "dive.json").exists():
        from dive.checkpoint import check_checkpoint_dir

        # a folder already drawn under this name by another checkpoint is refused by `dive generate`
        folder = generate_source(bench, check_checkpoint_dir(src), bench.out / "synthetic" / cfg.name, check_done=True)
    elif (src / "model_index.json").exists():
        checkpoint = train_on_base(bench, src, bench.out / "dive" / cfg.name, cfg.train_seed)
        folder = generate_source(bench, checkpoint, bench.out / "synthetic" / cfg.name, check_done=True)
    elif (src / "manifest.jsonl").exists():
        folder = src
    else:
        raise ValueError(f"{src}: expected a synthetic folder (manifest.jsonl), a DiVE checkpoint (dive.json), "
                         f"a diffusers base (model_index.json), or one of {', '.join(REFERENCE_ROWS)}")
    return export_source(bench, cfg.name, folder), "sysu_mm01"


def row_jobs(cfg: BenchRowConfig, bench: BenchConfig, data: Path, fmt: str) -> list[tuple]:
    """The row's ReID jobs, in the bench's job format and folders, with the bench's recipe."""
    recipe = row_recipe(bench)
    return [(f"{cfg.name}|{cfg.method}|{seed}", str(data), fmt, str(reid_run_dir(bench, cfg.name, cfg.method, seed)),
             cfg.method, seed, recipe) for seed in (cfg.seeds or bench.seeds)]


def bench_row(cfg: BenchRowConfig) -> dict[str, dict]:
    """Train (or reuse) the row's ReID runs; their reports by job key. A finished run of another
    recipe in the row's folder is refused, never overwritten (it may be the bench's own row)."""
    bench = row_settings(cfg)
    if not bench.data.exists():
        raise ValueError(f"{bench.data}: the bench's world is missing (run `dive bench --out {bench.out}` first)")
    for seed in cfg.seeds or bench.seeds:
        run = reid_run_dir(bench, cfg.name, cfg.method, seed)
        job = (f"{cfg.name}|{cfg.method}|{seed}", "", "", str(run), cfg.method, seed, row_recipe(bench))
        if (run / "report.json").exists() and finished_report(job) is None:
            raise ValueError(f"{run}: a finished run of another ReID recipe is there; give another --name "
                             "(a row at another budget needs its own name)")
    data, fmt = row_training_set(cfg, bench)
    jobs = row_jobs(cfg, bench, data, fmt)
    log(f"row {cfg.name}: {len(jobs)} {cfg.method.upper()} runs on {data}")
    return run_reid_jobs(bench, jobs)


# ------------------------------------------------------------------------------------------------
# progress
# ------------------------------------------------------------------------------------------------


@dataclass
class BenchProgressConfig:
    """The bench's ReID rows from the runs finished so far; reads the folders without touching them."""

    folders: tuple[Path, ...] = field(default=(defaults.RUNS / "bench",), metadata={
        "help": "bench folders; later folders add their runs (rows made by `dive bench-row`), a seed already "
                "read is kept from the first folder"})
    as_dive: tuple[str, ...] = field(default=(), metadata={
        "help": "also check the claim with each named row in + DiVE's place: would it hold with those images?"})

    def __post_init__(self) -> None:
        self.folders, self.as_dive = tuple(Path(f) for f in self.folders), tuple(self.as_dive)
        for folder in self.folders:
            if not (folder / "reid").is_dir():
                raise ValueError(f"{folder}: expected a bench folder with a reid/ folder of ReID runs")


def finished_runs(folders) -> dict[tuple[str, str], dict[int, dict]]:
    """{(method, train set): {seed: report}} of the finished ReID runs of the bench folders."""
    runs: dict[tuple[str, str], dict[int, dict]] = {}
    for out in folders:
        for report in sorted(Path(out).glob("reid/*/report.json")):
            parsed = parse_reid_run_name(report.parent.name)
            if parsed:
                train_set, method, seed = parsed
                runs.setdefault((method, train_set), {}).setdefault(seed, json.loads(report.read_text()))
    return runs


def bench_progress(cfg: BenchProgressConfig) -> dict[str, dict]:
    """Per ReID method: its rows (mean ± sample std over the finished seeds), the seeds of each row,
    the claim check, and the claim check with each `as_dive` row in + DiVE's place."""
    from dive.reid.baselines import aggregate

    runs = finished_runs(cfg.folders)
    result: dict[str, dict] = {}
    for (method, train_set), reps in sorted(runs.items()):
        entry = result.setdefault(method, {"rows": {}, "seeds": {}})
        entry["rows"][train_set] = aggregate([reps[s] for s in sorted(reps)])
        entry["seeds"][train_set] = sorted(reps)
    for entry in result.values():
        rows = entry["rows"]
        entry["claim"] = claim_check(rows)
        entry["as_dive"] = {name: claim_check(rows | {"dive-camera": rows[name]}) for name in cfg.as_dive if name in rows}
    return result


def progress_lines(result: dict[str, dict]) -> list[str]:
    """Markdown tables (all-search / indoor R1 and mAP) and the claim checks of `bench_progress`."""
    lines = []
    for method, entry in result.items():
        lines += ["", f"{method.upper()} (percent; mean ± sample std over the seeds listed)",
                  "| train set | seeds | all R1 | all mAP | indoor R1 | indoor mAP |", "|---|---|---|---|---|---|"]
        for train_set, agg in entry["rows"].items():
            cells = " | ".join(_cell(agg, proto, key) for proto in ("sysu-all", "sysu-indoor") for key in ("rank1", "mAP"))
            lines.append(f"| {train_set} | {','.join(map(str, entry['seeds'][train_set]))} | {cells} |")
        lines.append(f"claim check on these rows: {json.dumps(entry['claim'])}")
        lines += [f"claim check with {name} in DiVE's place: {json.dumps(c)}" for name, c in entry["as_dive"].items()]
    return lines or ["no finished ReID runs yet"]
