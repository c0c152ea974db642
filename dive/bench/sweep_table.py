"""`dive bench-sweep`'s table: each row's runs read back (val ids at the last epoch, SYSU all-search
on the test ids), aggregated over seeds, the setting chosen by val Rank-1 alone, and the verdict
against the equal-budget baseline on test (sweep.md, sweep.json).

The choice (`choose`): among the + DiVE rows (the default and every knob setting; the baseline is
the reference, not a candidate), the highest mean val Rank-1; ties go to the higher mean val mAP,
then to the earlier row (the + DiVE default first). The test columns are never read by the choice.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dive.bench.jobs import reid_run_dir
from dive.utils.config import config_to_dict
from dive.utils.io import write_json, write_text

TEST_PROTOCOL = "sysu-all"
KNOB_TITLES = {"baseline": "baseline (VI only)", "dive": "+ DiVE (bench defaults)", "share": "batch share",
               "weight": "loss weight", "filter": "filter keep", "n": "images per id and camera",
               "guidance": "guidance", "deep_cache": "deep-cache interval"}


def run_val(run: Path) -> dict:
    """{rank1, mAP} on the val ids at the epoch whose weights the run kept (its model.json history)."""
    meta = json.loads((Path(run) / "model.json").read_text())
    rows = [r for r in meta.get("history", []) if r.get("type") == "epoch" and "val" in r
            and int(r["epoch"]) + 1 == int(meta["epoch"])]
    if not rows:
        raise ValueError(f"{run}: no val score at the kept epoch {meta.get('epoch')} (a world with val ids is needed, "
                         "and the runs are trained with val_every)")
    return {"rank1": float(rows[-1]["val"]["rank1"]), "mAP": float(rows[-1]["val"]["mAP"])}


def _stat(values: list[float]) -> dict:
    v = np.asarray(values, float)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "values": v.tolist()}


def row_result(runs: dict[int, dict]) -> dict:
    """Mean ± sample std over seeds of one row; `runs`: {seed: {"val": {...}, "report": report.json}}."""
    seeds = sorted(runs)
    test = [runs[s]["report"]["results"][TEST_PROTOCOL] for s in seeds]
    return {"seeds": seeds,
            "batches": sorted({int(runs[s]["report"]["train"]["timing"]["iterations"]) for s in seeds}),
            "val_rank1": _stat([runs[s]["val"]["rank1"] for s in seeds]),
            "val_mAP": _stat([runs[s]["val"]["mAP"] for s in seeds]),
            "test_rank1": _stat([t["rank1"] for t in test]), "test_mAP": _stat([t["mAP"] for t in test])}


def _val_key(row: dict) -> tuple[float, float]:
    return row["result"]["val_rank1"]["mean"], row["result"]["val_mAP"]["mean"]


def choose(rows: list[dict]) -> int | None:
    """Index of the val-chosen row among the + DiVE rows (see the module doc); None without one."""
    best = None
    for i, row in enumerate(rows):
        if row["knob"] != "baseline" and (best is None or _val_key(row) > _val_key(rows[best])):
            best = i
    return best


def knob_best(rows: list[dict]) -> dict[str, int]:
    """{knob: index of its val-best setting} for the knobs swept over more than one setting."""
    out: dict[str, int] = {}
    for i, row in enumerate(rows):
        k = row["knob"]
        if k not in ("baseline", "dive") and (k not in out or _val_key(row) > _val_key(rows[out[k]])):
            out[k] = i
    return {k: i for k, i in out.items() if sum(r["knob"] == k for r in rows) > 1}


def verdict(chosen: dict, baseline: dict) -> dict:
    """Whether the chosen row beats the baseline on test all-search R1 (mean over seeds; per seed
    where both ran), and whether the difference lies within the seed spread (the larger sample std
    of the two rows' test R1)."""
    c, b = chosen["result"], baseline["result"]
    diff = c["test_rank1"]["mean"] - b["test_rank1"]["mean"]
    by_seed = dict(zip(b["seeds"], b["test_rank1"]["values"]))
    common = [(v, by_seed[s]) for s, v in zip(c["seeds"], c["test_rank1"]["values"]) if s in by_seed]
    spread = max(c["test_rank1"]["std"], b["test_rank1"]["std"])  # 0 with one seed
    return {"beats_baseline": bool(diff > 0), "test_rank1_diff": float(diff), "seed_spread": float(spread),
            "within_seed_spread": bool(abs(diff) <= spread and spread > 0),
            "test_mAP_diff": float(c["test_mAP"]["mean"] - b["test_mAP"]["mean"]),
            "seeds_higher": sum(x > y for x, y in common), "seeds_compared": len(common),
            "val_rank1_diff": float(c["val_rank1"]["mean"] - b["val_rank1"]["mean"])}


def label(row: dict) -> str:
    value = "-" if row["value"] is None else f"{row['value']:g}"
    return KNOB_TITLES["dive"] if row["knob"] == "dive" else (
        KNOB_TITLES["baseline"] if row["knob"] == "baseline" else f"{KNOB_TITLES[row['knob']]} {value}")


def verdict_line(chosen: dict, baseline: dict, v: dict) -> str:
    if v.get("within_seed_spread"):
        word = "is level with"
    else:
        word = "beats" if v["beats_baseline"] else "does not beat"
    level = (f" A difference within the seed spread (sample std up to {v['seed_spread']:.2f}): not a win."
             if v.get("within_seed_spread") else "")
    return (f"The val-chosen setting, {label(chosen)}, {word} the equal-budget baseline on test: all-search R1 "
            f"{chosen['result']['test_rank1']['mean']:.2f} vs {baseline['result']['test_rank1']['mean']:.2f} "
            f"({v['test_rank1_diff']:+.2f}; mAP {v['test_mAP_diff']:+.2f}), higher on {v['seeds_higher']} of "
            f"{v['seeds_compared']} seeds.{level}")


def _cell(s: dict) -> str:
    return f"{s['mean']:.2f} ± {s['std']:.2f}" if len(s["values"]) > 1 else f"{s['mean']:.2f}"


def table_lines(rows: list[dict], chosen: int | None, best: dict[str, int], info: dict) -> list[str]:
    seeds = sorted({s for r in rows for s in r["result"]["seeds"]})
    epoch = "the bench's fixed epoch" if info.get("fixed_epoch") else "the largest training set's AGW epoch"
    lines = ["# Synthetic-data knobs at equal budget", "",
             f"ReID: {info['method'].upper()}, seeds {seeds}; every run trains {info['batches']} batches "
             f"({info['epochs']} epochs x {info['batches_per_epoch']}, {epoch}). "
             f"Val: the world's val ids at the last epoch (infrared queries, visible gallery); test: SYSU all-search "
             "on the test ids. Percent, mean ± sample std over seeds.", "",
             "Each row changes one thing from + DiVE. The choice is the + DiVE row with the best mean val R1 "
             "(ties: val mAP, then the earlier row); the test columns never choose.", "",
             "| knob | value | runs | batches | val R1 | val mAP | test R1 | test mAP | choice |",
             "|---|---|---|---|---|---|---|---|---|"]
    for i, row in enumerate(rows):
        r = row["result"]
        mark = "**chosen**" if i == chosen else ("best of its knob" if best.get(row["knob"]) == i else "")
        value = "-" if row["value"] is None else f"{row['value']:g}"
        if row["knob"] == "dive" and "defaults" in info:
            value = f"n {info['defaults']['n']}, guidance {info['defaults']['guidance']:g}"
        runs = row["name"] + ("" if row["name"] != "dive" or row["knob"] == "dive" else " (= + DiVE)")
        if r["seeds"] != seeds:  # a sweep part way: this row has fewer seeds than others
            runs += f" (seed{'s' if len(r['seeds']) > 1 else ''} {', '.join(map(str, r['seeds']))})"
        lines.append(f"| {KNOB_TITLES[row['knob']]} | {value} | {runs} | {'/'.join(map(str, r['batches']))} | "
                     f"{_cell(r['val_rank1'])} | {_cell(r['val_mAP'])} | {_cell(r['test_rank1'])} | "
                     f"{_cell(r['test_mAP'])} | {mark} |")
    return lines


def sweep_result(rows: list[dict]) -> dict:
    """Rows (each with its `result`) -> the choice, per-knob bests and the verdict."""
    chosen = choose(rows)
    base = next((r for r in rows if r["knob"] == "baseline"), None)
    v = verdict(rows[chosen], base) if chosen is not None and base is not None else None
    return {"chosen": chosen, "knob_best": knob_best(rows), "verdict": v}


def collect(work, rows: list[dict], reports: dict[str, dict]) -> list[dict]:
    """Each row with its runs' results (val from the run folder, test from the report): every seed
    of every row, which a finished sweep has."""
    done = collect_finished(work, rows, reports)
    short = [r["name"] for r in done if r["result"]["seeds"] != sorted(work.seeds)]
    if len(done) != len(rows) or short:
        missing = sorted({r["name"] for r in rows} - {r["name"] for r in done}) + short
        raise ValueError(f"the sweep's table needs every row's runs of seeds {list(work.seeds)}; missing for: "
                         f"{', '.join(missing)}")
    return done


def collect_finished(work, rows: list[dict], reports: dict[str, dict]) -> list[dict]:
    """Each row with the results of the seeds whose runs have finished (val from the run folder, test
    from the report); rows without a finished run are left out."""
    method = work.methods[0]
    out = []
    for row in rows:
        runs = {seed: {"report": reports[key], "val": run_val(reid_run_dir(work, row["name"], method, seed))}
                for seed in work.seeds if (key := f"{row['name']}|{method}|{seed}") in reports}
        if runs:
            out.append(dict(row, result=row_result(runs)))
    return out


def write_so_far(cfg, work, rows: list[dict], reports: dict[str, dict], info: dict) -> list[str]:
    """sweep-so-far.md: the table of the runs finished so far (`dive bench-sweep --so-far`); its lines."""
    done = collect_finished(work, rows, reports)
    total = len(work.seeds) * len({r["name"] for r in rows})
    head = [f"# Synthetic-data knobs at equal budget, so far: {len(reports)} of {total} ReID runs finished", "",
            "A sweep part way: rows list their seeds where they have fewer than others, rows without a finished "
            "run are left out, and the choice and verdict read only what has finished. The final table is sweep.md."]
    if not done:
        lines = head + ["", "No run has finished yet."]
    else:
        res = sweep_result(done)
        meta = info | {"method": work.methods[0], "defaults": {"n": work.n_per_camera, "guidance": work.guidance}}
        lines = head + table_lines(done, res["chosen"], res["knob_best"], meta)[1:]
        base = next((r for r in done if r["knob"] == "baseline"), None)
        if res["verdict"] is not None and base is not None:
            lines += ["", "So far: " + verdict_line(done[res["chosen"]], base, res["verdict"])]
    write_text(cfg.out / "sweep-so-far.md", "\n".join(lines) + "\n")
    return lines


def write_sweep(cfg, work, rows: list[dict], reports: dict[str, dict], info: dict) -> dict:
    """sweep.md and sweep.json in the sweep's folder; returns the JSON."""
    done = collect(work, rows, reports)
    res = sweep_result(done)
    batches = info["batches_per_epoch"] * info["epochs"]
    lines = table_lines(done, res["chosen"], res["knob_best"], info | {"method": work.methods[0], "batches": batches,
                                                                       "defaults": {"n": work.n_per_camera,
                                                                                    "guidance": work.guidance}})
    if res["verdict"] is not None:
        base = next(r for r in done if r["knob"] == "baseline")
        lines += ["", verdict_line(done[res["chosen"]], base, res["verdict"])]
    lines += ["", f"World: `{work.data}`; DiVE checkpoint: `{info['checkpoint']}`; + DiVE images: "
              f"`{info['dive_images']}` ({work.n_per_camera} per id and infrared camera, guidance {work.guidance:g}). "
              "Filter rows: `dive filter` of those images scored by the baseline run of the first seed."]
    result = {"config": config_to_dict(cfg), "world": str(work.data), "checkpoint": info["checkpoint"],
              "dive_images": info["dive_images"], "method": work.methods[0], "seeds": list(work.seeds),
              "budget": {"batches": batches, "epochs": info["epochs"], "batches_per_epoch": info["batches_per_epoch"]},
              "defaults": {"n": work.n_per_camera, "guidance": work.guidance, "deep_cache": work.gen_deep_cache},
              "projection": info["projection"], "rows": done, "chosen": res["chosen"], "knob_best": res["knob_best"],
              "chosen_label": None if res["chosen"] is None else label(done[res["chosen"]]), "verdict": res["verdict"]}
    write_text(cfg.out / "sweep.md", "\n".join(lines) + "\n")
    write_json(cfg.out / "sweep.json", result)
    return result
