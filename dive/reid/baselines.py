"""`dive reid baselines`: the VI-ReID baselines DiVE must beat, as mean and spread over seeds.

Variants: AGW and AGW+CAJ on the VI training set, and AGW with the external set's visible images
added ("+ external RGB only": do the new identities alone help, without infrared?). Each run is a
normal `dive reid run` folder; a finished run (its report.json exists) is reused, so the command is
resumable.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dive.reid.run import ReIDDataConfig, ReIDEvalConfig, run_reid
from dive.reid.train import ReIDTrainConfig
from dive.utils.io import write_json, write_text

#: (label, method, train set)
BASELINE_VARIANTS = (
    ("AGW", "agw", "vi"),
    ("AGW+CAJ", "caj", "vi"),
    ("AGW + external RGB", "agw", "vi+ext-rgb"),
)
METRICS = (("sysu-all", "rank1"), ("sysu-all", "mAP"), ("sysu-indoor", "rank1"), ("sysu-indoor", "mAP"))


@dataclass
class BaselinesConfig:
    data: Path = field(metadata={"help": "a SynthVI world or a SYSU-MM01 folder"})
    out: Path = field(default=Path("runs/reid-baselines"), metadata={"help": "folder of the runs and the table"})
    seeds: tuple[int, ...] = field(default=(0, 1, 2), metadata={"help": "ReID seeds"})
    variants: tuple[str, ...] = field(default=tuple(v[0] for v in BASELINE_VARIANTS), metadata={"help": "which variants (labels)"})


def aggregate(reports: list[dict]) -> dict:
    """mean and sample standard deviation of each headline metric over runs (percent)."""
    out = {}
    for proto, key in METRICS:
        vals = np.array([r["results"][proto][key] for r in reports], dtype=float)
        out[f"{proto}/{key}"] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
                                 "values": vals.tolist()}
    return out


def format_table(rows: dict[str, dict], seeds: tuple[int, ...]) -> str:
    lines = ["| method | All-search R1 | All-search mAP | Indoor R1 | Indoor mAP |",
             "|---|---|---|---|---|"]
    for label, agg in rows.items():
        cells = [f"{agg[f'{p}/{k}']['mean']:.2f} ± {agg[f'{p}/{k}']['std']:.2f}" for p, k in METRICS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append(f"\nmean ± sample standard deviation over ReID seeds {list(seeds)}; percent; SYSU-MM01 protocols, 10 trials.")
    return "\n".join(lines) + "\n"


def run_variant(label: str, method: str, train_set: str, cfg: BaselinesConfig, seed: int,
                train_overrides: dict | None = None) -> dict:
    slug = label.lower().replace(" ", "").replace("+", "-")
    run = Path(cfg.out) / f"{slug}-seed{seed}"
    if (run / "report.json").exists():
        return json.loads((run / "report.json").read_text())
    train_cfg = ReIDTrainConfig(out=run, method=method, seed=seed, force=True, **(train_overrides or {}))
    return run_reid(ReIDDataConfig(data=cfg.data, train_set=train_set), train_cfg, ReIDEvalConfig())


def run_baselines(cfg: BaselinesConfig, train_overrides: dict | None = None) -> dict:
    rows: dict[str, dict] = {}
    for label, method, train_set in BASELINE_VARIANTS:
        if label not in cfg.variants:
            continue
        reports = [run_variant(label, method, train_set, cfg, s, train_overrides) for s in cfg.seeds]
        rows[label] = aggregate(reports)
    result = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()},
              "rows": rows}
    write_json(Path(cfg.out) / "baselines.json", result)
    write_text(Path(cfg.out) / "baselines.md", format_table(rows, tuple(cfg.seeds)))
    return result
