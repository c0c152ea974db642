"""`dive bench --plan`: the projection lists every stage, counts the bench's own ReID jobs at its
budget, adds up, reuses what the folder holds, and runs nothing."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from dive.bench.config import BenchConfig, quick_config

#: the quick bench's training sets besides the VI baseline, with the img2img row and its diagnostics
QUICK_SETS = ("dive-camera", "dive-modality", "dive-ir-only", "dive-translate", "grayscale", "cyclegan",
              "dive-camera-k3", "oracle", "oracle-vae", "external-rgb")
OPTIONS = ("--translate-strength", "0.6", "--reid-converge-epochs", "3")


@pytest.fixture
def fixed_costs(monkeypatch):
    """The probes replaced by fixed unit costs; what was asked of them is recorded."""
    from dive.bench import probe

    asked: list[set] = []

    def fake(cfg, needs, **kwargs):
        asked.append(set(needs))
        costs = {k: probe.cost(0.5, "batch" if k.startswith("reid:") else "image", "fixed") for k in needs}
        if "generate" in needs:
            costs["generate"] = probe.cost(0.2, "image", "fixed", per_image_seconds=0.05, per_step_seconds=0.02)
        return costs

    monkeypatch.setattr(probe, "probe_costs", fake)
    return asked


def _bench(tmp_path: Path, world: Path | None) -> tuple[Path, BenchConfig]:
    out = tmp_path / "bench"
    out.mkdir()
    if world is not None:
        shutil.copytree(world, out / "world")  # the quick bench's world, already built
    cfg = quick_config(BenchConfig(out=out, quick=True, translate_strength=0.6, reid_converge_epochs=3))
    return out, cfg


def _plan(out: Path, capsys, *extra: str) -> tuple[dict, str]:
    from dive.cli import main

    assert main(["bench", "--quick", "--out", str(out), *OPTIONS, *extra, "--plan"]) == 0
    return json.loads((out / "plan.json").read_text()), capsys.readouterr().out


def test_plan_lists_every_stage_counts_the_benchs_jobs_and_runs_nothing(tmp_path, tiny_world_dir, fixed_costs,
                                                                         capsys):
    """Every stage is listed; the ReID jobs are the bench's job list for the config (one seed of each
    Table 1 row, the ablations, Table 5, the diagnostics, and each Table 1 row again to
    convergence), each at the equal budget; the total is the sum of the parts; only plan.json is
    written."""
    from dive.bench.jobs import epoch_batches_of, reid_jobs
    from dive.bench.plan import STAGES

    out, cfg = _bench(tmp_path, tiny_world_dir)
    before = {p.relative_to(out) for p in out.rglob("*")}
    p, printed = _plan(out, capsys)
    assert {p.relative_to(out) for p in out.rglob("*")} - before == {Path("plan.json")}

    assert [s for s in STAGES if s in {r["stage"] for r in p["rows"]}] == list(STAGES)
    world = next(r for r in p["rows"] if r["stage"] == "world")
    assert world["done"] and world["seconds"] == 0
    # the job list itself, whatever each set's epoch
    theirs = reid_jobs(cfg, {n: out / "exports" / n for n in QUICK_SETS}, batches_of=lambda data, fmt: 5)
    runs = p["reid"]["runs"]
    assert [r["key"] for r in runs] == [j[0] for j in theirs] and p["reid"]["jobs"] == len(runs) == 6 + 2 + 1 + 2 + 6
    assert not any(r["done"] for r in runs)
    # equal budget: every run the largest set's AGW epochs, at least the VI baseline's own epoch
    equal = p["reid"]["equal_batches_per_epoch"]
    assert equal >= epoch_batches_of(cfg.data, "synthvi")
    assert {r["batches"] for r in runs if not r["key"].split("|")[0].endswith("-converged")} == {equal * 2}
    assert {r["batches"] for r in runs if r["key"].split("|")[0].endswith("-converged")} == {equal * 3}
    reid = [r for r in p["rows"] if r["stage"] == "reid"]
    assert sum(r["runs"] for r in reid) == len(runs)
    assert sum(r["units"] for r in reid) == sum(r["batches"] for r in runs)

    # the LLCM/RegDB stage: every Tables 1/2 model scores the LLCM test images and RegDB's 10 per
    # test id and modality, each image loaded and passed forward
    census = p["census"]
    assert census["vi_test_ids"] > 0 and census["vi_test"] >= census["vi_test_ids"]
    layouts, scoring = [r for r in p["rows"] if r["stage"] == "protocols"]
    models = 6  # the quick bench: AGW, seed 0, every Table 1 row (with img2img)
    assert scoring["part"] == f"scoring {models} Tables 1/2 models" and scoring["cost"] == "metric"
    assert scoring["units"] == models * (census["vi_test"] + 2 * 10 * census["vi_test_ids"])
    assert layouts["units"] == 2 * census["vi_images"] and not layouts["done"]
    assert scoring["seconds"] == pytest.approx(scoring["units"] * 1.0, abs=0.1)  # forward + image, 0.5 s each

    assert p["total_seconds"] > 0
    assert p["total_seconds"] == pytest.approx(sum(r["seconds"] for r in p["rows"]), abs=0.05)
    assert all(r["seconds"] > 0 for r in reid)
    # the probes were asked only for costs the folder does not record; DiVE and CycleGAN training have no probe
    assert fixed_costs == [{"reid:agw", "forward", "image", "generate"}]
    assert {u.split(": ")[1] for u in p["unmeasured"]} == {"DiVE camera training", "DiVE modality training",
                                                           "DiVE ir-only training", "CycleGAN training"}
    assert "| **total** |" in printed and f"ReID jobs: {len(runs)} (0 done)" in printed
    assert f"equal budget: {equal} batches per epoch x 2 epochs = {equal * 2} batches per run" in printed


def test_finished_runs_and_stages_are_done_and_give_their_costs(tmp_path, tiny_world_dir, fixed_costs, capsys):
    """A ReID run the bench finished (its config.json and report.json, same recipe) is counted as
    done and its seconds per batch replace the probe; a finished baseline folder is done; a run of
    another recipe in a run's folder is not."""
    from dive.bench.jobs import _job_train_config, reid_jobs
    from dive.utils.config import config_to_dict

    out, cfg = _bench(tmp_path, tiny_world_dir)
    p, _ = _plan(out, capsys)
    equal = p["reid"]["equal_batches_per_epoch"]
    jobs = reid_jobs(cfg, {n: out / "exports" / n for n in QUICK_SETS}, batches_of=lambda data, fmt: equal)
    for job, batches in ((jobs[0], equal), (jobs[1], equal + 1)):  # the second: another budget
        run = Path(job[3])
        run.mkdir(parents=True)
        train = config_to_dict(dataclasses.replace(_job_train_config(job), batches_per_epoch=batches))
        (run / "config.json").write_text(json.dumps({"train": train}))
        (run / "report.json").write_text(json.dumps({"train": {"timing": {"seconds_per_batch": 0.25,
                                                                          "iterations": 2 * batches}}}))
    (out / "synthetic" / "grayscale").mkdir(parents=True)
    (out / "synthetic" / "grayscale" / "manifest.jsonl").write_text("")

    p, printed = _plan(out, capsys)
    done = {r["key"] for r in p["reid"]["runs"] if r["done"]}
    assert done == {jobs[0][0]} and p["reid"]["done"] == 1
    table1 = next(r for r in p["rows"] if r["part"] == "Table 1 (agw)")
    assert table1["runs_done"] == 1 and table1["units"] == (table1["runs"] - 1) * 2 * equal
    assert p["costs"]["reid:agw"]["seconds"] == 0.25 and p["costs"]["reid:agw"]["source"] == "this bench's runs (2)"
    assert "reid:agw" not in fixed_costs[-1]
    gray = next(r for r in p["rows"] if r["part"] == "grayscale" and r["stage"] == "comparison baselines")
    assert gray["done"] and gray["seconds"] == 0
    assert f"ReID jobs: {len(jobs)} (1 done)" in printed


def test_given_dive_images_are_counted_not_generated(tmp_path, tiny_world_dir, fixed_costs, capsys):
    out, _ = _bench(tmp_path, tiny_world_dir)
    given = tmp_path / "filtered"
    given.mkdir()
    (given / "manifest.jsonl").write_text("{}\n" * 3)
    p, _ = _plan(out, capsys, "--dive-images", str(given))
    gen = next(r for r in p["rows"] if r["stage"] == "generation" and r["part"] == "dive-camera")
    assert gen["done"] and gen["units"] == 3 and gen["seconds"] == 0
    other = next(r for r in p["rows"] if r["stage"] == "generation" and r["part"] == "dive-modality")
    assert not other["done"]


def test_no_ablations_plans_tables_1_and_2_only(tmp_path, tiny_world_dir, fixed_costs, capsys):
    out, _ = _bench(tmp_path, tiny_world_dir)
    p, printed = _plan(out, capsys, "--no-ablations")
    parts = {(r["stage"], r["part"]) for r in p["rows"]}
    assert ("generation", "dive-camera") in parts and ("generation", "dive-modality") not in parts
    assert ("dive checkpoints", "DiVE ir-only training") not in parts
    assert not any(r["stage"] == "reid" and r["part"].startswith(("Table 3", "Table 5")) for r in p["rows"])
    assert {r["key"].split("|")[0] for r in p["reid"]["runs"]} & {"dive-modality", "dive-ir-only", "dive-camera-k3"} == set()
    exports = {r["part"] for r in p["rows"] if r["stage"] == "exports"}
    assert "dive-camera" in exports and not any(n.startswith(("dive-modality", "dive-ir-only", "dive-camera-k"))
                                                for n in exports)


def test_plan_counts_a_world_not_built_yet_and_needs_no_probe_without_projection(tmp_path, monkeypatch, capsys):
    """Before the world exists the work is counted from its plan (the same images, not rendered);
    with --no-projection nothing is probed and the unmeasured parts say so."""
    from dive.bench import probe
    from dive.bench.world import world_config
    from dive.data.synthvi.build import plan_world

    def refuse(*args, **kwargs):
        raise AssertionError("probed with --no-projection")

    monkeypatch.setattr(probe, "probe_costs", refuse)
    out, cfg = _bench(tmp_path, None)
    p, printed = _plan(out, capsys, "--no-projection")
    world = next(r for r in p["rows"] if r["stage"] == "world")
    assert not world["done"] and world["units"] == len(plan_world(world_config(cfg)).jobs)
    assert not (out / "world").exists()
    # only the caption reader (this toy world is not the shipped one) has a cost without a probe:
    # the shipped reader's recorded seconds per step
    recorded = [r for r in p["rows"] if r["seconds"]]
    assert [r["cost"] for r in recorded] == ["caption"] and p["total_seconds"] == recorded[0]["seconds"]
    assert "world: SynthVI world" in p["unmeasured"] and "ReID jobs: 17 (0 done)" in printed


def test_tables_compare_the_projection_with_the_actual_time():
    """The projected total and each stage's projected seconds stand beside the actual ones."""
    from dive.bench.plan_text import timing_lines

    rows = [{"stage": "generation", "seconds": 100.0}, {"stage": "reid", "seconds": 3000.0},
            {"stage": "reid", "seconds": 600.0}]
    text = "\n".join(timing_lines({"rows": rows, "total_seconds": 3700.0, "unmeasured": []},
                                  {"generation": 90.0, "reid": 4000.0, "total": 4200.0}))
    assert "**62 min** projected" in text and "**70 min** actual" in text
    assert "generation 100 / 90" in text and "reid 3600 / 4000" in text


def test_the_bench_prints_its_projection_first_and_its_tables_compare_it(tmp_path, tiny_world_dir, fixed_costs,
                                                                          monkeypatch, capsys):
    """`dive bench` projects before its first stage (plan.json, printed first) and its tables.md
    and bench.json state the projected total beside the actual one (the stages here are stand-ins)."""
    from dive.bench import run

    out, cfg = _bench(tmp_path, tiny_world_dir)
    seen = []

    def stage(name, result=None):
        return lambda *a, **k: seen.append(name) or (result() if callable(result) else result)

    synthetic = {f"dive-{n}": out / "synthetic" / f"dive-{n}" for n in ("camera", "modality", "ir-only")}
    for name, result in (("ensure_world", cfg.data), ("ensure_checkpoints", {"camera": out}), ("check_inputs", None),
                         ("generate_variants", synthetic), ("translate_source", {}), ("comparison_baselines", {}),
                         ("subset_source", out), ("oracle_source", out), ("oracle_vae_source", out),
                         ("export_all", {}), ("reid_jobs", []), ("run_reid_jobs", {}), ("quality", {}),
                         ("count_ids", 3)):
        monkeypatch.setattr(run, name, stage(name, result))
    run.run_bench(dataclasses.replace(cfg, quick=False))  # already the quick settings
    printed = capsys.readouterr().out
    assert seen[0] == "ensure_world" and printed.index("Projected time of `dive bench`") < printed.index("# DiVE bench")
    p = json.loads((out / "plan.json").read_text())
    bench = json.loads((out / "bench.json").read_text())
    assert bench["projected_s"] == p["total_seconds"] > 0
    assert "Projected vs actual time:" in (out / "tables.md").read_text()


@pytest.mark.parametrize("interval,steps", [(0, [2, 4]), (5, [5, 10])])
def test_generation_probe_times_the_benchs_own_sampling(tmp_path, monkeypatch, interval, steps):
    """The generation probe loads the generator as the bench will generate (--gen-deep-cache N:
    fast and deep-cache on) and, with a cache, times N and 2N steps, so its per-step cost is the
    average of one whole step and N-1 shallow ones; the projection prices gen_steps of them."""
    import dive.generate.pipeline as pipeline
    from dive.bench import probe

    loaded, rendered = {}, []

    class FakeGenerator:
        table = None

        def render(self, jobs, *, steps, guidance):
            rendered.append(steps)

    def fake_load(base, checkpoint=None, **options):
        loaded.update(options)
        return FakeGenerator()

    monkeypatch.setattr(pipeline, "load_generator", fake_load)
    cfg = BenchConfig(out=tmp_path, base=tmp_path / "base", gen_deep_cache=interval)
    res = probe.probe_generation(cfg, None)
    assert loaded == {"fast": interval > 0, "deep_cache": interval}
    assert sorted(set(rendered[1:])) == steps and rendered.count(steps[0]) == rendered.count(steps[1]) == 2
    assert res["unit"] == "image" and res["seconds"] >= 0
