"""`dive bench-sweep`: knob rows one at a time at one equal ReID budget, the setting chosen by val
Rank-1 alone, the verdict against the baseline on test, and a resumable quick sweep end to end."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dive.bench.config import BenchConfig
from dive.bench.sweep import (DIVE_SET, SweepConfig, bench_of, knob_rows, scorer_phase, sweep_jobs,
                             sweep_recipe)
from dive.bench.sweep_table import choose, run_val, sweep_result, table_lines, verdict_line

REPO = Path(__file__).resolve().parents[1]


def stand_in(knob, value, val_r1, test_r1, val_map=10.0, seeds=(0, 1)):
    """A row with a result as `row_result` makes it, every seed scoring the same."""
    def stat(v):
        return {"mean": v, "std": 0.0, "values": [v] * len(seeds)}

    name = knob if value is None else f"{knob}-{value:g}"
    return {"knob": knob, "value": value, "name": name, "set": name, "overrides": {},
            "result": {"seeds": list(seeds), "batches": [40], "val_rank1": stat(val_r1), "val_mAP": stat(val_map),
                       "test_rank1": stat(test_r1), "test_mAP": stat(test_r1 / 2)}}


def test_the_choice_reads_val_only_and_the_verdict_reads_test():
    rows = [stand_in("baseline", None, 90.0, 30.0),  # best val of all, but a reference, never a candidate
            stand_in("dive", None, 40.0, 35.0),
            stand_in("share", 0.5, 60.0, 20.0),  # val-best candidate, test-worst
            stand_in("n", 12, 50.0, 70.0),  # test-best, not chosen
            stand_in("n", 3, 55.0, 40.0)]
    res = sweep_result(rows)
    assert res["chosen"] == 2 and res["knob_best"] == {"n": 4}  # a knob of one setting has no best of its own
    v = res["verdict"]
    assert v["beats_baseline"] is False and v["test_rank1_diff"] == pytest.approx(-10.0)
    assert v["seeds_higher"] == 0 and v["seeds_compared"] == 2
    line = verdict_line(rows[2], rows[0], v)
    assert "does not beat" in line and "20.00 vs 30.00" in line and "(-10.00" in line
    # the other way round: the chosen row above the baseline on test is said so
    rows[2]["result"]["test_rank1"] = {"mean": 31.0, "std": 0.0, "values": [31.0, 31.0]}
    res = sweep_result(rows)
    assert res["verdict"]["beats_baseline"] is True and res["verdict"]["seeds_higher"] == 2
    assert " beats the equal-budget baseline" in verdict_line(rows[2], rows[0], res["verdict"])
    lines = table_lines(rows, res["chosen"], res["knob_best"], {"method": "agw", "batches": 40, "epochs": 2,
                                                                 "batches_per_epoch": 20})
    marked = [x for x in lines if "**chosen**" in x]
    assert len(marked) == 1 and marked[0].startswith("| batch share | 0.5 |")
    assert [x for x in lines if "best of its knob" in x][0].startswith("| images per id and camera | 3 |")


def test_ties_on_val_rank1_go_to_val_map_then_to_the_earlier_row():
    rows = [stand_in("baseline", None, 10.0, 1.0), stand_in("dive", None, 50.0, 1.0),
            stand_in("weight", 0.5, 50.0, 99.0), stand_in("guidance", 2.0, 50.0, 1.0, val_map=11.0)]
    assert choose(rows) == 3
    rows[3]["result"]["val_mAP"]["mean"] = 10.0
    assert choose(rows) == 1  # a full tie: the + DiVE default, whatever the test column says
    assert choose([rows[0]]) is None


def test_rows_change_one_thing_and_settings_equal_to_the_bench_are_its_dive_row(tmp_path):
    cfg = SweepConfig(out=tmp_path, share=(0.25,), weight=(0.5, 1.0), filter_keep=(0.5,), n=(6, 12),
                      guidance=(3.0, 5.0), deep_cache=(0, 5))
    bench = BenchConfig(out=tmp_path)  # n 6, guidance 3, no deep cache
    rows = {(r["knob"], r["value"]): r for r in knob_rows(cfg, bench)}
    assert list(rows)[:2] == [("baseline", None), ("dive", None)]
    assert rows[("share", 0.25)]["overrides"] == {"synthetic_share": 0.25} and rows[("share", 0.25)]["set"] == DIVE_SET
    assert rows[("weight", 0.5)]["overrides"] == {"synthetic_weight": 0.5}
    for same in (("weight", 1.0), ("n", 6), ("guidance", 3.0), ("deep_cache", 0)):
        assert rows[same]["name"] == DIVE_SET and rows[same]["set"] == DIVE_SET and "generate" not in rows[same]
    assert rows[("n", 12)]["generate"] == {"n_per_camera": 12} and rows[("n", 12)]["overrides"] == {}
    assert rows[("guidance", 5.0)]["generate"] == {"guidance": 5.0}
    assert rows[("deep_cache", 5)]["generate"] == {"gen_deep_cache": 5} and rows[("deep_cache", 5)]["name"] == "deep-cache-5"
    with pytest.raises(ValueError, match="deep-cache"):
        SweepConfig(out=tmp_path, deep_cache=(1,))
    assert rows[("filter", 0.5)]["keep"] == 0.5 and rows[("filter", 0.5)]["set"] == "filter-0.5"
    only = knob_rows(SweepConfig(out=tmp_path, knobs=("n",), n=(12,)), bench)
    assert [r["knob"] for r in only] == ["baseline", "dive", "n"]
    # every job trains the same batches, scores val at its last epoch, and differs only by its row
    bench = BenchConfig(out=tmp_path, seeds=(0, 1), methods=("agw",))
    all_rows = knob_rows(cfg, bench)
    sets = {r["set"]: (tmp_path / r["set"], "sysu_mm01") for r in all_rows}
    jobs = sweep_jobs(bench, all_rows, sets, 17)
    recipe = sweep_recipe(bench, 17)
    assert recipe["batches_per_epoch"] == 17 and recipe["val_every"] == recipe["epochs"] == bench.reid_epochs
    names = list(dict.fromkeys(r["name"] for r in all_rows))
    assert len(jobs) == 2 * len(names)
    # seed by seed: a sweep stopped part way has whole one-seed columns
    assert [(j[0].split("|")[0], j[5]) for j in jobs] == [(n, s) for s in (0, 1) for n in names]
    # the scorer (first seed's baseline) trains beside runs that need no filtered set, one per worker
    first = scorer_phase(dataclasses.replace(bench, reid_workers=3), all_rows, sets, 17)
    assert [j[0] for j in first] == ["baseline|agw|0", f"{DIVE_SET}|agw|0", "share-0.25|agw|0"]
    assert [j[0] for j in scorer_phase(dataclasses.replace(bench, reid_workers=1), all_rows, sets, 17)] == ["baseline|agw|0"]
    only_filter = [r for r in all_rows if r["knob"] in ("baseline", "filter")]
    assert [j[0] for j in scorer_phase(dataclasses.replace(bench, reid_workers=2), only_filter, sets, 17)] == [
        "baseline|agw|0", "baseline|agw|1"]
    for job in jobs:
        extra = {k: v for k, v in job[6].items() if k not in recipe}
        assert {k: job[6][k] for k in recipe} == recipe and set(extra) <= {"synthetic_share", "synthetic_weight"}


def test_settings_come_from_the_bench_folder(tmp_path):
    bench_dir = tmp_path / "bench"
    bench_dir.mkdir()
    (bench_dir / "plan.json").write_text(json.dumps({"quick": True}))  # a quick bench that has not finished
    b = bench_of(SweepConfig(out=tmp_path / "sweep", bench=bench_dir, seeds=(4,)))
    assert b.out == bench_dir and b.data == bench_dir / "world" and b.quick and b.seeds == (4,)
    assert b.n_per_camera == 2 and b.reid_epochs == 2
    saved = {"config": {"data": str(tmp_path / "w"), "n_per_camera": 9, "guidance": 4.5, "reid_epochs": 3}}
    (bench_dir / "bench.json").write_text(json.dumps(saved))
    b = bench_of(SweepConfig(out=tmp_path / "sweep", bench=bench_dir))
    assert (b.data, b.n_per_camera, b.guidance, b.reid_epochs, b.reid_budget) == (tmp_path / "w", 9, 4.5, 3, "equal")
    mine = bench_of(SweepConfig(out=tmp_path / "sweep", quick=True))
    assert mine.out == tmp_path / "sweep" and mine.data == tmp_path / "sweep" / "world"


def test_val_is_read_at_the_kept_epoch(tmp_path):
    history = [{"type": "epoch", "epoch": 0, "val": {"rank1": 10.0, "mAP": 5.0}},
               {"type": "epoch", "epoch": 1, "val": {"rank1": 20.0, "mAP": 7.5}}]
    (tmp_path / "model.json").write_text(json.dumps({"epoch": 2, "history": history}))
    assert run_val(tmp_path) == {"rank1": 20.0, "mAP": 7.5}
    (tmp_path / "model.json").write_text(json.dumps({"epoch": 2, "history": history[:1]}))
    with pytest.raises(ValueError, match="no val score"):
        run_val(tmp_path)


@pytest.mark.slow
def test_quick_sweep_end_to_end_and_resumed(tmp_path, micro_base):
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "dive.cli", "bench-sweep", "--quick", "--out", str(out), "--base", str(micro_base),
           "--seeds", "0", "--knobs", "share", "filter", "n", "guidance", "--share", "0.5", "--filter-keep", "0.5",
           "--n", "2", "--guidance", "2", "--reid-workers", "1", "--threads", "1"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.index("projected: 6 rows, 5 ReID runs") < res.stdout.index("# Synthetic-data knobs")
    result = json.loads((out / "sweep.json").read_text())
    rows = result["rows"]
    assert [(r["knob"], r["value"]) for r in rows] == [("baseline", None), ("dive", None), ("share", 0.5),
                                                       ("filter", 0.5), ("n", 2), ("guidance", 2.0)]
    assert rows[4]["name"] == "dive"  # the quick bench's own n: the + DiVE runs themselves
    # one equal budget: every run of every row trained the same batches
    batches = {b for r in rows for b in r["result"]["batches"]}
    assert batches == {result["budget"]["batches"]}
    reports = list((out / "reid").glob("*/report.json"))
    assert len(reports) == 5
    assert {json.loads(p.read_text())["train"]["timing"]["iterations"] for p in reports} == batches
    # the choice is the val-best + DiVE row, whatever the test column says
    cands = [i for i, r in enumerate(rows) if r["knob"] != "baseline"]
    best = max(r["result"]["val_rank1"]["mean"] for r in rows[1:])
    assert result["chosen"] in cands and rows[result["chosen"]]["result"]["val_rank1"]["mean"] == best
    md = (out / "sweep.md").read_text()
    assert md.count("**chosen**") == 1 and "the equal-budget baseline on test" in md
    # the knobs reached the runs: share in the config, the filter kept half the + DiVE images
    share = json.loads((out / "reid" / "share-0.5-agw-seed0" / "config.json").read_text())["train"]
    assert share["synthetic_share"] == 0.5 and share["val_every"] == share["epochs"]
    kept = json.loads((out / "synthetic" / "filter-0.5" / "filter.json").read_text())
    assert kept["counts"]["kept_fraction"] == pytest.approx(0.5, abs=0.1)
    assert Path(kept["config"]["reid_run"]) == out / "reid" / "baseline-agw-seed0"
    gen = json.loads((out / "synthetic" / "guidance-2" / "generate.json").read_text())
    assert gen["guidance"] == 2.0
    # resumable: a rerun trains and generates nothing; with --records it keeps the runs' records
    before = {p: p.stat().st_mtime_ns for p in reports + [out / "synthetic" / "filter-0.5" / "filter.json"]}
    records = tmp_path / "records"
    res = subprocess.run(cmd + ["--records", str(records)], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "(5 already finished)" in res.stdout
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert sorted(p.name for p in (records / "reid").iterdir()) == sorted(p.parent.name for p in reports)
    assert (records / "reid" / "baseline-agw-seed0" / "model.safetensors").is_file()  # the filter's scorer
    assert len(list(records.rglob("model.safetensors"))) == 1
    assert all((records / "reid" / p.parent.name / "report.json").read_bytes() == p.read_bytes() for p in reports)
    # another sweep standing on this folder as a (partial, quick) bench uses its world, checkpoint and images
    from dive.bench.sweep import camera_checkpoint, dive_folder

    bench = bench_of(SweepConfig(out=tmp_path / "other", bench=out, quick=True, base=micro_base))
    work = dataclasses.replace(bench, out=tmp_path / "other")
    assert bench.data == out / "world"
    checkpoint = camera_checkpoint(bench, work)
    assert checkpoint == out / "dive" / "camera" / "final"
    assert dive_folder(bench, work, checkpoint) == out / "synthetic" / "dive-camera"
    assert not (tmp_path / "other").exists()


def _fake_finished_run(job, val_r1, test_r1, batches):
    """A run folder that `finished_report` and `run_val` accept for this job."""
    from dive.bench.jobs import _job_train_config
    from dive.utils.config import config_to_dict

    run = Path(job[3])
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"train": config_to_dict(_job_train_config(job))}))
    (run / "report.json").write_text(json.dumps({"results": {"sysu-all": {"rank1": test_r1, "mAP": test_r1 / 2}},
                                                 "train": {"timing": {"iterations": batches}}}))
    (run / "model.json").write_text(json.dumps({"epoch": 2, "history": [
        {"type": "epoch", "epoch": 1, "val": {"rank1": val_r1, "mAP": val_r1 / 2}}]}))


def test_so_far_reads_the_finished_runs_of_this_recipe_only(tmp_path):
    from dive.bench.sweep import sweep_so_far

    cfg = SweepConfig(out=tmp_path, knobs=("share",), share=(0.5,), seeds=(0, 1))
    work = BenchConfig(out=tmp_path, seeds=(0, 1), methods=("agw",), reid_epochs=2)
    rows = knob_rows(cfg, work)
    jobs = {j[0]: j for j in sweep_jobs(work, rows, {r["set"]: ("", "") for r in rows}, 20)}
    assert sweep_so_far(cfg, work, rows, 20)[-1] == "No run has finished yet."
    _fake_finished_run(jobs["baseline|agw|0"], 40.0, 30.0, 40)
    _fake_finished_run(jobs["baseline|agw|1"], 42.0, 32.0, 40)
    _fake_finished_run(jobs[f"{DIVE_SET}|agw|0"], 30.0, 20.0, 40)
    lines = sweep_so_far(cfg, work, rows, 20)
    assert lines[0].endswith("so far: 3 of 6 ReID runs finished")
    body = [x for x in lines if x.startswith("| ")][1:]  # under the header
    assert len(body) == 2  # the share row has no finished run: left out
    assert body[0].startswith("| baseline (VI only) | - | baseline |") and "41.00 ± 1.41" in body[0]
    assert f"| {DIVE_SET} (seed 0) |" in body[1] and "**chosen**" in body[1]
    assert lines[-1].startswith("So far: The val-chosen setting") and "does not beat" in lines[-1]
    assert (tmp_path / "sweep-so-far.md").read_text().splitlines() == lines
    # the final table takes a finished sweep only, naming the rows it lacks
    from dive.bench.jobs import finished_report
    from dive.bench.sweep_table import collect

    reports = {k: finished_report(j) for k, j in jobs.items() if finished_report(j) is not None}
    with pytest.raises(ValueError, match=f"missing for: share-0.5, {DIVE_SET}"):
        collect(work, rows, reports)
    # a run of another budget is not this recipe's: never mixed in
    assert sweep_so_far(cfg, work, rows, 21)[-1] == "No run has finished yet."


def test_records_outlive_the_run_folders_and_come_back_for_the_same_recipe_only(tmp_path):
    """--records keeps each finished run's record (the scorer's weights too) in a lasting folder;
    a sweep in a fresh folder takes back those of its recipe and tables them as finished; the
    bench never adopts a record without weights."""
    from dive.bench.jobs import adoptable, finished_report
    from dive.bench.records import restore_records, save_records
    from dive.bench.sweep import keep_records, sweep_so_far

    records = tmp_path / "records"
    cfg = SweepConfig(out=tmp_path / "a", knobs=("filter",), filter_keep=(0.5,), seeds=(0, 1), records=records)
    work = BenchConfig(out=cfg.out, seeds=(0, 1), methods=("agw",), reid_epochs=2)
    rows = knob_rows(cfg, work)
    jobs = {j[0]: j for j in sweep_jobs(work, rows, {r["set"]: ("", "") for r in rows}, 20)}
    _fake_finished_run(jobs["baseline|agw|0"], 40.0, 30.0, 40)
    _fake_finished_run(jobs[f"{DIVE_SET}|agw|0"], 30.0, 20.0, 40)
    for job in (jobs["baseline|agw|0"], jobs[f"{DIVE_SET}|agw|0"]):
        (Path(job[3]) / "model.safetensors").write_bytes(b"weights " + job[0].encode())
    unfinished = Path(jobs["baseline|agw|1"][3])
    unfinished.mkdir(parents=True)
    (unfinished / "config.json").write_text("{}")  # started, no report: not kept
    keep_records(cfg, work, rows, 20)
    kept = sorted(p.relative_to(records).as_posix() for p in records.rglob("*") if p.is_file())
    assert kept == ["reid/baseline-agw-seed0/config.json", "reid/baseline-agw-seed0/model.json",
                    "reid/baseline-agw-seed0/model.safetensors", "reid/baseline-agw-seed0/report.json",
                    f"reid/{DIVE_SET}-agw-seed0/config.json", f"reid/{DIVE_SET}-agw-seed0/model.json",
                    f"reid/{DIVE_SET}-agw-seed0/report.json"]  # weights: the filter's scorer only
    assert save_records(list(jobs.values()), records) == []  # the same bytes: nothing rewritten
    # a fresh folder: the records come back, tabled as finished runs
    work_b = dataclasses.replace(work, out=tmp_path / "b")
    cfg_b = dataclasses.replace(cfg, out=work_b.out)
    jobs_b = sweep_jobs(work_b, rows, {r["set"]: ("", "") for r in rows}, 20)
    assert sorted(restore_records(jobs_b, records)) == ["baseline|agw|0", f"{DIVE_SET}|agw|0"]
    assert [j[0] for j in jobs_b if finished_report(j) is not None] == ["baseline|agw|0", f"{DIVE_SET}|agw|0"]
    assert sweep_so_far(cfg_b, work_b, rows, 20)[0].endswith("so far: 2 of 6 ReID runs finished")
    assert restore_records(jobs_b, records) == []  # finished now
    # another budget is another recipe: nothing comes back
    work_c = dataclasses.replace(work, out=tmp_path / "c")
    assert restore_records(sweep_jobs(work_c, rows, {r["set"]: ("", "") for r in rows}, 21), records) == []
    # the bench reads adopted runs' weights: a record without them is never adopted, a whole run is
    dive_job = next(j for j in jobs_b if j[0] == f"{DIVE_SET}|agw|0")
    assert adoptable(dive_job, {DIVE_SET: records / "reid" / f"{DIVE_SET}-{{method}}-seed{{seed}}"}) is None
    base_job = next(j for j in jobs_b if j[0] == "baseline|agw|0")
    assert adoptable(base_job, {"baseline": records / "reid" / "baseline-{method}-seed{seed}"}) is not None


def test_a_record_that_cannot_be_kept_as_its_run_finishes_does_not_stop_the_runs(capsys):
    from dive.bench.records import keep_as_it_finishes

    def broken(job, report):
        raise OSError("disk full")

    keep_as_it_finishes(broken)(("baseline|agw|0",), {})
    assert "could not keep baseline|agw|0 as it finished (OSError: disk full)" in capsys.readouterr().out


def test_a_difference_within_the_seed_spread_is_called_level_not_a_win():
    from dive.bench.sweep_table import verdict

    def row(knob, test_r1, std):
        r = stand_in(knob, None, 10.0, test_r1)
        r["result"]["test_rank1"] = {"mean": test_r1, "std": std, "values": [test_r1 - std, test_r1 + std]}
        return r

    base = row("baseline", 13.18, 1.60)
    level = verdict(row("dive", 13.24, 0.21), base)
    assert level["beats_baseline"] and level["within_seed_spread"] and level["seed_spread"] == 1.60
    line = verdict_line(row("dive", 13.24, 0.21), base, level)
    assert " is level with the equal-budget baseline" in line and "not a win" in line
    clear = verdict(row("dive", 16.0, 0.5), base)
    assert not clear["within_seed_spread"] and " beats " in verdict_line(row("dive", 16.0, 0.5), base, clear)
    below = verdict(row("dive", 9.0, 0.2), base)
    assert "does not beat" in verdict_line(row("dive", 9.0, 0.2), base, below)
