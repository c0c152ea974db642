"""`dive bench`'s projection as text: the Markdown table of the work left and its time
(`projection_lines`), the ReID job list (`job_lines`), plan.json (`write_plan`), and projected
against actual time after a run (`timing_lines`, in tables.md)."""

from __future__ import annotations

from pathlib import Path

from dive.bench.config import BenchConfig
from dive.bench.plan import PLAN_FILE, STAGES


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _unit_cost(row: dict) -> str:
    s = row["unit_seconds"]
    if s is None:
        return ""
    return f"{s:.3g} s/{row['unit']}" if s >= 0.01 else f"{s * 1000:.3g} ms/{row['unit']}"


def _work_text(row: dict) -> str:
    if row["stage"] == "reid":
        left = row["runs"] - row["runs_done"]
        text = f"{left} of {row['runs']} runs x {' / '.join(f'{b:,}' for b in row['batches_per_run'])} batches"
        if row["method_cost"] != 1.0:
            text += f" (batch cost x{row['method_cost']:g} of AGW's)"
        text += ", + loading and scoring"
        return text if left else f"done ({row['runs']} runs)"
    if row["done"]:
        return "done"
    return f"{row['units']:,} {row['unit']}s" + (f", {row['note']}" if row.get("note") else "")


def projection_lines(p: dict) -> list[str]:
    """The projection as a Markdown table with its total (and what is not measured)."""
    load = f", load average {p['load']:.1f} on {p['cpus']} cores" if p.get("load") is not None else ""
    lines = [f"Projected time of `dive bench` in {p['out']} (unit costs measured now: probes took "
             f"{p['probe_seconds']:.0f} s{load}; parts already done in the folder are reused):", "",
             "| stage | part | work left | unit cost | measured by | in parallel | projected |",
             "|---|---|---|---|---|---|---|"]
    for r in p["rows"]:
        par = f"{r['parallel']}" if r["parallel"] > 1 and not r["done"] else ""
        when = "" if r["done"] else ("?" if r["source"] == "not measured" else duration(r["seconds"]))
        lines.append(f"| {r['stage']} | {r['part']} | {_work_text(r)} | {_unit_cost(r)} | {r['source']} | {par} | "
                     f"{when} |")
    lines.append(f"| **total** | | | | | | **{duration(p['total_seconds'])}** |")
    if p["unmeasured"]:
        lines += ["", "Not measured, so not in the total: " + "; ".join(p["unmeasured"])
                  + " (no log of it in this folder yet)."]
    return lines


def job_lines(p: dict) -> list[str]:
    """The ReID job list in short: per table, its training sets, seeds and batches."""
    r = p["reid"]
    budget = (f"equal budget: {r['equal_batches_per_epoch']:,} batches per epoch x {r['epochs']} epochs = "
              f"{r['equal_batches_per_epoch'] * r['epochs']:,} batches per run" if r["equal_batches_per_epoch"]
              else f"{r['budget']} budget, {r['epochs']} epochs")
    lines = [f"ReID jobs: {r['jobs']} ({r['done']} done), {r['workers']} in parallel; {budget}"]
    groups: dict[str, list[dict]] = {}
    for run in r["runs"]:
        groups.setdefault(run["group"], []).append(run)
    for group, runs in groups.items():
        sets = list(dict.fromkeys(x["key"].split("|")[0] for x in runs))
        seeds = sorted({int(x["key"].split("|")[2]) for x in runs})
        batches = " / ".join(f"{b:,}" for b in sorted({x["batches"] for x in runs}))
        lines.append(f"- {group}: {', '.join(sets)}; seeds {', '.join(map(str, seeds))}; {batches} batches per run; "
                     f"{sum(x['done'] for x in runs)} of {len(runs)} done")
    return lines


def write_plan(cfg: BenchConfig, p: dict) -> Path:
    from dive.utils.io import write_json

    path = cfg.out / PLAN_FILE
    write_json(path, p)
    return path


def timing_lines(p: dict, timings: dict) -> list[str]:
    """Projected (before the stages ran) against actual seconds, per stage and in total."""
    projected = {stage: sum(r["seconds"] for r in p["rows"] if r["stage"] == stage) for stage in STAGES}
    parts = [f"{k} {projected[k]:.0f} / {v:.0f}" for k, v in timings.items() if k in projected]
    lines = [f"Projected vs actual time: **{duration(p['total_seconds'])}** projected ({PLAN_FILE}, made before the "
             f"stages ran), **{duration(timings.get('total', 0.0))}** actual.",
             "", "Per stage, projected / actual (s): " + ", ".join(parts) + "."]
    if p["unmeasured"]:
        lines[-1] += " Not in the projection (not measured): " + "; ".join(p["unmeasured"]) + "."
    return lines
