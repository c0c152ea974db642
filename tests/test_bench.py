"""`dive bench`: the whole benchmark pipeline at toy size (`--quick`), its ReID jobs, budgets and tables."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dive.bench.tables import MAIN_ROWS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_bench(tmp_path_factory, micro_base):
    """The quick bench on the test suite's micro base (every real class, a few thousand parameters:
    the pipeline is what is tested here, not the images), with the rows trained to convergence, on a
    world of a second seed that no shipped model was made from."""
    out = tmp_path_factory.mktemp("bench") / "quick"
    cmd = [sys.executable, "-m", "dive.cli", "bench", "--quick", "--out", str(out), "--threads", "1",
           "--reid-workers", "1", "--base", str(micro_base), "--translate-strength", "0.6",
           "--reid-converge-epochs", "3", "--methods", "agw", "caj", "deen", "--no-projection", "--world-seed", "1",
           "--records", str(out.parent / "records")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res.stdout, cmd


@pytest.mark.slow
def test_quick_bench_writes_every_table_and_file(quick_bench):
    from dive.data.registry import load_dataset

    out, stdout, _ = quick_bench
    for name in ("tables.md", "tables.json", "bench.json", "table5-ids.png", "identity-vs-reid.png",
                 "metrics/metrics.json"):
        assert (out / name).is_file(), name
    tables = json.loads((out / "tables.json").read_text())["tables"]
    main = tables["main-agw"]["rows"]
    assert set(main) == {"baseline", "external-rgb", "grayscale", "cyclegan", "dive-camera", "dive-translate"}
    assert 0 <= main["dive-camera"]["sysu-all/rank1"]["mean"] <= 100
    # Table 2: AGW + CAJ and DEEN, each with and without DiVE (the paper's Table 1 has all three)
    for method, name in (("caj", "AGW+CAJ"), ("deen", "DEEN")):
        assert set(tables[f"main-{method}"]["rows"]) == {"baseline", "dive-camera"}, method
        assert f"## Table 2: {name}" in (out / "tables.md").read_text()
    assert set(tables["ablations"]) == {"dive-camera", "dive-modality", "dive-ir-only"}
    # a world of its own seed, with its own captions, infrared words and all three DiVE checkpoints
    assert json.loads((out / "world" / "synthvi.json").read_text())["config"]["seed"] == 1
    captions = json.loads((out / "captions" / "captions.json").read_text())["captions"]
    assert {k.split("/")[0] for k in captions} == {"synthvi_vi", "synthvi_ext"}
    assert (out / "captions" / "infrared_words.json").is_file()
    demo = json.loads((REPO / "checkpoints" / "dive-demo" / "dive.json").read_text())["config"]
    for variant in ("camera", "modality", "ir-only"):
        recipe = json.loads((out / "dive" / variant / "final" / "dive.json").read_text())["config"]
        assert Path(recipe["captions"]) == out / "captions" / "captions.json", variant
        assert Path(recipe["infrared_words"]) == out / "captions" / "infrared_words.json", variant
        assert Path(recipe["data"]) == out / "world" and recipe["steps"] == 12, variant
        # the demo's recipe, one thing changed per ablation
        same = ("batch_size", "rank", "lora_targets", "infrared_adapter", "infrared_share", "camera_mode")
        assert {k: recipe[k] for k in same} == {k: demo[k] for k in same}, variant
    assert (out / "cyclegan").is_dir()
    # the same models scored on the world's test ids in the LLCM and RegDB layouts, both ways each
    protocols = tables["protocols"]["methods"]
    assert set(protocols) == {"agw", "caj", "deen"} and set(protocols["agw"]) == set(main)
    assert {k.split("/")[0] for k in protocols["agw"]["dive-camera"] if "/" in k} == {
        "llcm-v2i", "llcm-i2v", "regdb-v2t", "regdb-t2v"}
    assert "## Table 1 on the LLCM and RegDB protocols" in (out / "tables.md").read_text()
    assert tables["ids"]["counts"]["baseline"] == 0 and tables["ids"]["counts"]["dive-camera-k3"] == 3
    assert set(tables["quality"]) == {"dive-camera", "dive-translate", "dive-modality", "dive-ir-only", "grayscale",
                                      "cyclegan", "oracle", "oracle-vae"}
    # the img2img row starts from the very images the grayscale baseline copies
    def sources(name):
        lines = (out / "synthetic" / name / "manifest.jsonl").read_text().splitlines()
        return {json.loads(x)["path"]: json.loads(x)["source_path"] for x in lines}

    assert sources("dive-translate") == sources("grayscale")
    diag = tables["diagnostics"]  # one-seed rows outside the claim: a perfect generator
    assert set(diag) == {"baseline", "dive-camera", "oracle", "oracle-vae"}
    # the perfect-UNet row: the oracle's very images, each through the base's VAE
    vae_rows = (out / "synthetic" / "oracle-vae" / "manifest.jsonl").read_text()
    assert vae_rows == (out / "synthetic" / "oracle" / "manifest.jsonl").read_text()
    first = json.loads(vae_rows.splitlines()[0])["path"]
    assert (out / "synthetic" / "oracle-vae" / first).read_bytes() != (out / "synthetic" / "oracle" / first).read_bytes()
    assert "oracle" not in main and not any("oracle" in what for what in tables["main-agw"]["claim"].get("checks", {}))
    # equal budget: the baseline trains as many batches as the largest expanded set, whose AGW epoch it takes
    reps = {name: json.loads((out / "reid" / f"{name}-agw-seed0" / "report.json").read_text())["train"]
            for name in ("baseline", "external-rgb", "dive-camera", "oracle")}
    assert len({r["timing"]["iterations"] for r in reps.values()}) == 1
    from dive.bench.jobs import epoch_batches_of

    assert reps["baseline"]["batches_per_epoch"] > epoch_batches_of(out / "world", "synthvi")
    assert "Budget: every run trains the same number of batches" in (out / "tables.md").read_text()
    # every Tables 1/2 row also trained to convergence: weights of the best val epoch, its curve plotted
    conv = tables["main-agw"]["converged"]
    assert set(conv["rows"]) == set(main) and set(conv["curves"]) and (out / "convergence-agw.png").is_file()
    for name in ("baseline", "dive-camera"):
        run = json.loads((out / "reid" / f"{name}-converged-agw-seed0" / "report.json").read_text())["train"]
        assert run["selected_by"] == "best-val" and 1 <= run["epoch"] <= 3
        curve = conv["curves"][dict(MAIN_ROWS)[name]]  # {epoch (a JSON key): mean val Rank-1}
        assert curve[str(run["epoch"])] == max(curve.values())  # (ties on Rank-1 are broken by mAP)
    assert any("(converged)" in what for what in tables["main-agw"]["claim"]["checks"])
    assert "Table 1: AGW" in stdout and "Table 6" in (out / "tables.md").read_text()
    # every export is a SYSU-MM01 tree our own reader accepts, with a manifest row per synthetic image
    syn = [json.loads(x) for x in (out / "synthetic" / "dive-camera" / "manifest.jsonl").read_text().splitlines()]
    ds = load_dataset("sysu_mm01", out / "exports" / "dive-camera")
    rows = [json.loads(x) for x in (out / "exports" / "dive-camera" / "manifest.jsonl").read_text().splitlines()]
    assert sum(1 for r in rows if r["origin"] == "synthetic") == len(syn) > 0
    assert len(ds.records) == len(rows)


@pytest.mark.slow
def test_quick_bench_rerun_reuses_finished_stages(quick_bench):
    out, _, cmd = quick_bench
    before = {p: p.stat().st_mtime_ns for p in (out / "reid").glob("*/report.json")}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    assert before and {p: p.stat().st_mtime_ns for p in before} == before
    timings = json.loads((out / "bench.json").read_text())["timings_s"]
    assert timings["reid"] < 5 and timings["dive checkpoints"] < 5


@pytest.mark.slow
def test_quick_bench_refuses_a_folder_made_with_other_checkpoints(quick_bench):
    out, _, cmd = quick_bench
    inputs = json.loads((out / "inputs.json").read_text())
    assert set(inputs["checkpoints"]) == {"camera", "modality", "ir-only"}
    inputs["checkpoints"]["camera"] = "0" * 16  # as if the DiVE checkpoint had been retrained
    (out / "inputs.json").write_text(json.dumps(inputs))
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert res.returncode != 0 and "use a new --out" in res.stderr


def test_identity_payoff_pairs_each_generators_identity_with_its_reid_row_at_the_same_seeds():
    """Table 6's identity Rank-1 beside the ReID row of the same generator, at the ablation seeds
    only (a 3-seed mean would mix with the 1-seed oracle), with the rank correlation."""
    from dive.bench.tables import identity_payoff

    def rep(r1):
        return {"results": {p: {"rank1": r1, "mAP": r1 + 5} for p in ("sysu-all", "sysu-indoor")}}

    reid = {"baseline": {0: 10.0, 1: 30.0}, "grayscale": {0: 8.0, 1: 50.0}, "dive-camera": {0: 9.0},
            "oracle": {0: 20.0}}
    reports = {f"{t}|agw|{s}": rep(v) for t, vs in reid.items() for s, v in vs.items()}
    reports["oracle|caj|0"] = rep(99.0)  # another method must not leak in
    quality = {"grayscale": {"rank1": 1.0}, "dive-camera": {"rank1": 1.5}, "oracle": {"rank1": 7.0},
               "cyclegan": {"rank1": 0.8}}  # no ReID run: no point
    pay = identity_payoff(reports, quality, seeds=(0,))
    assert set(pay["points"]) == {"grayscale", "dive-camera", "oracle"}
    assert pay["points"]["grayscale"] == {"identity_rank1": 1.0, "reid_rank1": 8.0, "reid_mAP": 13.0}
    assert pay["baseline_rank1"] == 10.0 and pay["spearman"] == pytest.approx(1.0)
    assert pay["baseline_long_rank1"] is None  # (no diagnostics run)
    long = identity_payoff({**reports, "baseline-long|agw|0": rep(12.0)}, quality, seeds=(0,))
    assert long["baseline_long_rank1"] == 12.0 and "baseline-long" not in long["points"]
    reid_flipped = {**reports, "grayscale|agw|0": rep(30.0)}  # the least identity gives the most ReID
    assert identity_payoff(reid_flipped, quality, seeds=(0,))["spearman"] == pytest.approx(-0.5)
    assert "spearman" not in identity_payoff(reports, {"grayscale": {"rank1": 1.0}}, seeds=(0,))


def test_bench_reid_jobs_budget_and_tables(tmp_path):
    """With --reid-budget own, the budget is AGW's epoch (0: grows with the training set); CAJ trains
    on baseline and + DiVE only; every job of the main table runs 3 seeds."""
    from dive.bench.config import BenchConfig
    from dive.bench.jobs import reid_jobs

    cfg = BenchConfig(out=tmp_path, diagnostics=False, reid_budget="own")  # (the quick bench covers the diagnostics)
    names = ("external-rgb", "grayscale", "cyclegan", "dive-camera", "dive-modality", "dive-ir-only",
             "dive-camera-k64")
    jobs = reid_jobs(cfg, {n: tmp_path / n for n in names})
    keys = [j[0] for j in jobs]
    assert len(keys) == len(set(keys))
    assert {j[6]["batches_per_epoch"] for j in jobs} == {0}
    caj = {k.split("|")[0] for k in keys if "|caj|" in k}
    agw = {k.split("|")[0] for k in keys if "|agw|" in k}
    assert caj == {"baseline", "dive-camera"}
    assert {"baseline", "external-rgb", "grayscale", "cyclegan", "dive-camera", "dive-modality"} <= agw
    assert sum(1 for k in keys if k.startswith("grayscale|agw|")) == 3


def test_bench_default_budget_is_equal_and_converged_rows_select_on_val(tmp_path, monkeypatch):
    """By default every ReID run trains the largest set's AGW epochs (the baseline as long as + DiVE);
    with --reid-converge-epochs each Tables 1/2 row also trains to convergence, selected on val ids."""
    from dive.bench import jobs
    from dive.bench.config import BenchConfig

    sizes = {"baseline": 90, "external-rgb": 150, "grayscale": 170, "cyclegan": 170, "dive-camera": 181,
             "dive-modality": 181, "dive-ir-only": 181, "oracle": 181, "oracle-vae": 181}
    monkeypatch.setattr(jobs, "epoch_batches_of", lambda data, fmt: sizes[Path(data).name])
    exports = {n: tmp_path / n for n in sizes if n != "baseline"}
    cfg = BenchConfig(out=tmp_path, data=tmp_path / "baseline", diagnostics=True)
    plain = jobs.reid_jobs(cfg, exports)
    assert {j[6]["batches_per_epoch"] for j in plain} == {181}
    assert not any(j[0].startswith("baseline-long") for j in plain)  # equal budget: nothing to make up for
    assert {j[6].get("select", "last") for j in plain} == {"last"}
    conv = jobs.reid_jobs(BenchConfig(out=tmp_path, data=tmp_path / "baseline", reid_converge_epochs=12), exports)
    extra = [j for j in conv if jobs.CONVERGED in j[0]]
    assert {j[0].split("|")[0] for j in extra} == {t + jobs.CONVERGED for t in
                                                    ("baseline", "external-rgb", "grayscale", "cyclegan", "dive-camera")}
    assert len(extra) == 5 * 3 + 2 * 3  # AGW on every main set, CAJ on baseline and + DiVE, 3 seeds each
    recipe = extra[0][6]
    assert (recipe["epochs"], recipe["batches_per_epoch"], recipe["select"], recipe["val_every"]) == (12, 181, "best-val", 1)
    assert recipe["lr_steps"] == (8, 10)
    # a converged run has its own folder, which the bench's run names read back
    run = Path(extra[0][3]).name
    assert jobs.parse_reid_run_name(run)[0].endswith(jobs.CONVERGED)
    own = jobs.reid_jobs(BenchConfig(out=tmp_path, data=tmp_path / "baseline", reid_budget="own", diagnostics=True), exports)
    long = next(j for j in own if j[0].startswith("baseline-long|"))
    assert long[6]["batches_per_epoch"] == 181 and {j[6]["batches_per_epoch"] for j in own if j is not long} == {0}


def test_synthetic_options_reach_the_rows_with_synthetic_images_only(tmp_path, monkeypatch):
    from dive.bench import jobs
    from dive.bench.config import BenchConfig

    monkeypatch.setattr(jobs, "epoch_batches_of", lambda data, fmt: 90 if Path(data).name == "baseline" else 181)
    exports = {n: tmp_path / n for n in ("external-rgb", "grayscale", "cyclegan", "dive-camera", "dive-modality",
                                          "dive-ir-only", "oracle", "oracle-vae")}
    base = dict(out=tmp_path, data=tmp_path / "baseline", diagnostics=True, reid_converge_epochs=4)
    plain = jobs.reid_jobs(BenchConfig(**base), exports)
    assert not any("synthetic_share" in j[6] or "synthetic_weight" in j[6] for j in plain)  # defaults: unchanged recipe
    tuned = jobs.reid_jobs(BenchConfig(**base, synthetic_share=0.25, synthetic_weight=0.5), exports)
    assert [j[0] for j in tuned] == [j[0] for j in plain]
    for job in tuned:
        added = {k: job[6][k] for k in ("synthetic_share", "synthetic_weight") if k in job[6]}
        if job[0].split("|")[0] in ("baseline", "baseline" + jobs.CONVERGED, "external-rgb",
                                    "external-rgb" + jobs.CONVERGED):  # no synthetic image to act on
            assert added == {}
        else:
            assert added == {"synthetic_share": 0.25, "synthetic_weight": 0.5}, job[0]
    assert jobs.reid_jobs(BenchConfig(**base, synthetic_weight=0.5), exports)[-1][6].get("synthetic_share") is None
    with pytest.raises(ValueError, match="synthetic_share must be in"):
        BenchConfig(out=tmp_path, synthetic_share=1.5)


def test_from_sweep_applies_the_val_chosen_setting(tmp_path):
    from dive.bench.config import BenchConfig, with_sweep_choice

    world = tmp_path / "world"
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    cfg = BenchConfig(out=tmp_path / "bench", data=world, from_sweep=sweep)
    with pytest.raises(ValueError, match="sweep.json: not found"):
        with_sweep_choice(cfg)

    def chose(knob, value, on=world, checkpoint=cfg.checkpoint, n=cfg.n_per_camera, images=None):
        rows = [{"knob": "baseline", "value": None}, {"knob": "dive", "value": None},
                {"knob": knob, "value": value, "set": f"{knob}-{value}"}]
        (sweep / "sweep.json").write_text(json.dumps({"world": str(on), "rows": rows, "chosen": 2, "checkpoint":
                                                      str(checkpoint), "defaults": {"n": n, "guidance": cfg.guidance},
                                                      "dive_images": images}))
        return with_sweep_choice(cfg)

    assert chose("share", 0.25).synthetic_share == 0.25
    assert chose("weight", 0.5).synthetic_weight == 0.5
    got = chose("n", 3.0)
    assert got.n_per_camera == 3 and isinstance(got.n_per_camera, int) and got.synthetic_share is None
    assert chose("guidance", 5.0).guidance == 5.0
    got = chose("deep_cache", 5)
    assert got.gen_deep_cache == 5 and isinstance(got.gen_deep_cache, int)
    assert chose("dive", None) == cfg  # the bench's own settings won
    # the sweep's generated images of the chosen setting are reused when the bench's checkpoint made them
    made = sweep / "synthetic" / "n-3"
    made.mkdir(parents=True)
    (made / "generate.json").write_text("{}")
    assert chose("n", 3).dive_images == made
    assert chose("n", 3, checkpoint=tmp_path / "another").dive_images is None  # then the bench generates
    assert chose("share", 0.25, images=str(made)).dive_images == made
    cached = sweep / "synthetic" / "deep_cache-5"
    cached.mkdir(parents=True)
    (cached / "generate.json").write_text("{}")
    assert chose("deep_cache", 5).dive_images == cached  # a generation of its own, as n and guidance
    # a chosen filter: the sweep's filtered images become the + DiVE images, if they are the bench's own
    with pytest.raises(ValueError, match="filter-0.5/manifest.jsonl: not found"):
        chose("filter", 0.5)
    (sweep / "synthetic" / "filter-0.5").mkdir(parents=True)
    (sweep / "synthetic" / "filter-0.5" / "manifest.jsonl").write_text("{}\n")
    assert chose("filter", 0.5).dive_images == sweep / "synthetic" / "filter-0.5"
    with pytest.raises(ValueError, match="the sweep filtered the images of"):
        chose("filter", 0.5, checkpoint=tmp_path / "another-checkpoint")
    with pytest.raises(ValueError, match="filtered images made with n 3"):
        chose("filter", 0.5, n=3)
    with pytest.raises(ValueError, match="chosen setting is lora 2, which the bench cannot apply"):
        chose("lora", 2)
    with pytest.raises(ValueError, match="chose on the world"):
        chose("share", 0.25, on=tmp_path / "other")
    assert with_sweep_choice(BenchConfig(out=tmp_path)) == BenchConfig(out=tmp_path)


def test_claim_is_checked_against_the_strongest_baseline(tmp_path):
    from dive.bench.tables import claim_check, val_curves

    def row(r1, std=0.5):
        return {f"sysu-all/{k}": {"mean": r1 + (5 if k == "mAP" else 0), "std": std, "values": [r1] * 3}
                for k in ("rank1", "mAP")}

    rows = {"baseline": row(10.0), "dive-camera": row(12.0), "grayscale": row(11.0)}
    assert claim_check(rows)["holds"]
    check = claim_check(rows | {"baseline-long": row(13.0)})
    assert not check["holds"] and "beats the strongest baseline (baseline-long) rank1 by > spread" in check["checks"]
    run = tmp_path / "r"
    run.mkdir()
    (run / "log.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"type": "iter", "iter": 1}, {"type": "epoch", "epoch": 0, "val": {"rank1": 10.0}},
        {"type": "epoch", "epoch": 1, "val": {"rank1": 20.0}}, {"type": "epoch", "epoch": 2}]) + "\n")
    assert val_curves({"row": [run, tmp_path / "missing"]}) == {"row": {1: 10.0, 2: 20.0}}


def test_bench_runs_longest_first_and_names_its_run_folders_reversibly(tmp_path):
    """Parallel workers finish together only if the long runs start first (an expanded set before
    the baseline, CAJ's 1.5x images per batch before AGW); progress scripts read the run folders
    back by their names."""
    from dive.bench.config import BenchConfig
    from dive.bench.jobs import longest_first, parse_reid_run_name, reid_jobs

    def job(key, method, batches):
        return (key, "unused", "sysu_mm01", str(tmp_path / key), method, 0, {"batches_per_epoch": batches, "epochs": 8})

    jobs = [job("baseline|agw|0", "agw", 150), job("dive|agw|0", "agw", 300), job("baseline|caj|0", "caj", 150),
            job("dive|caj|0", "caj", 300), job("small|agw|0", "agw", 180)]
    assert [j[0] for j in longest_first(jobs)] == [
        "dive|caj|0", "dive|agw|0", "baseline|caj|0", "small|agw|0", "baseline|agw|0"]

    cfg = BenchConfig(out=tmp_path, diagnostics=False, reid_budget="own")
    names = ("external-rgb", "grayscale", "cyclegan", "dive-camera", "dive-modality", "dive-ir-only", "dive-camera-k64")
    for j in reid_jobs(cfg, {n: tmp_path / n for n in names}):
        train_set, method, seed = j[0].split("|")
        assert parse_reid_run_name(Path(j[3]).name) == (train_set, method, int(seed))
    assert parse_reid_run_name("dive-camera-k64-agw-seed0") == ("dive-camera-k64", "agw", 0)
    for foreign in ("notes", "baseline-agw-seedx", "baseline-sgd-seed0", "-agw-seed0"):
        assert parse_reid_run_name(foreign) is None


def test_bench_inputs_check_names_the_base_only_when_the_bench_trained_on_it(tmp_path):
    """A rerun with other checkpoints is refused; a different --base is refused only when a
    checkpoint was trained by the bench on it (given checkpoints render on their own base)."""
    from dive.bench.config import BenchConfig
    from dive.bench.stages import check_inputs
    from dive.checkpoint import EMBEDS_FILE, LORA_FILE, TOKENS_FILE

    def fake(folder, content):
        folder.mkdir(parents=True)
        for name in (LORA_FILE, EMBEDS_FILE, TOKENS_FILE):
            (folder / name).write_text(content + name)
        return folder

    bases = [tmp_path / "base-a", tmp_path / "base-b"]
    for i, base in enumerate(bases):
        (base / "unet").mkdir(parents=True)
        (base / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(bytes([i]) * 8)
    given = {"camera": fake(tmp_path / "shipped", "a")}
    out = tmp_path / "bench"
    out.mkdir()
    check_inputs(BenchConfig(out=out, base=bases[0]), given)
    check_inputs(BenchConfig(out=out, base=bases[1]), given)  # the base is not what renders them
    with pytest.raises(ValueError, match="use a new --out"):
        check_inputs(BenchConfig(out=out, base=bases[0]), {"camera": fake(tmp_path / "retrained", "b")})

    trained_out = tmp_path / "bench-trained"
    trained = {"camera": fake(trained_out / "dive" / "camera", "c")}
    check_inputs(BenchConfig(out=trained_out, base=bases[0]), trained)
    check_inputs(BenchConfig(out=trained_out, base=bases[0]), trained)
    with pytest.raises(ValueError, match="use a new --out"):
        check_inputs(BenchConfig(out=trained_out, base=bases[1]), trained)


def test_bench_reuses_a_reid_run_only_with_the_same_recipe(tmp_path):
    """A finished run is reused only if its saved config is this job's recipe: after a budget change
    the stale report must not reach the tables."""
    from dive.bench.config import BenchConfig
    from dive.bench.jobs import _job_train_config, finished_report, reid_jobs
    from dive.utils.config import config_to_dict

    cfg = BenchConfig(out=tmp_path, methods=("agw",), seeds=(0,), id_counts=(), diagnostics=False, reid_budget="own")
    names = ("external-rgb", "grayscale", "cyclegan", "dive-camera", "dive-modality", "dive-ir-only")
    job = next(j for j in reid_jobs(cfg, {n: tmp_path / n for n in names}) if j[0] == "baseline|agw|0")
    run = Path(job[3])
    run.mkdir(parents=True)
    assert finished_report(job) is None
    (run / "report.json").write_text(json.dumps({"run": str(run), "ok": 1}))
    saved = config_to_dict(_job_train_config(job)) | {"threads": 4, "progress": True}  # not part of the recipe
    (run / "config.json").write_text(json.dumps({"train": saved}))
    assert finished_report(job) == {"run": str(run), "ok": 1}
    saved["batches_per_epoch"] = 100  # the old fixed budget
    (run / "config.json").write_text(json.dumps({"train": saved}))
    assert finished_report(job) is None


def test_table6_reads_its_feature_model_from_this_bench_folder(tmp_path, monkeypatch):
    """Runs brought in from another bench folder (or a moved folder) keep the path they were trained
    at in report.json; Table 6 must read the model in this bench's own reid/ folder."""
    import dive.metrics.quality as quality_mod
    from dive.bench.config import BenchConfig
    from dive.bench.run import quality

    seen = {}
    monkeypatch.setattr(quality_mod, "quality_report", lambda **kw: seen.update(kw) or {"sources": {}})
    cfg = BenchConfig(out=tmp_path / "bench", seeds=(1, 0))
    reports = {"baseline|agw|1": {"run": str(tmp_path / "elsewhere" / "reid" / "baseline-agw-seed1")}}
    quality(cfg, {"dive-camera": tmp_path / "gen"}, reports)
    assert seen["reid_run"] == cfg.out / "reid" / "baseline-agw-seed1"
    with pytest.raises(ValueError, match="seed 1"):
        quality(cfg, {"dive-camera": tmp_path / "gen"}, {})


def test_ablations_copy_the_camera_checkpoints_recipe_and_share_its_base(micro_base, micro_dive_run, tmp_path):
    """Table 3 changes one thing at a time: an ablation the bench trains takes the per-camera
    checkpoint's recipe, and a given ablation made on another base is refused by name."""
    import shutil

    from dive.bench.config import BenchConfig
    from dive.bench.stages import ensure_checkpoints, variant_recipe

    camera = micro_dive_run / "final"
    recipe = variant_recipe(camera)
    assert recipe["rank"] == 4 and recipe["steps"] == 6 and recipe["batch_size"] == 4
    assert not {"out", "data", "base", "threads", "seed"} & set(recipe)
    other_base = tmp_path / "other-base"
    shutil.copytree(micro_base, other_base)
    ablation = tmp_path / "modality"
    shutil.copytree(camera, ablation)
    meta = json.loads((ablation / "dive.json").read_text())
    (ablation / "dive.json").write_text(json.dumps(meta | {"base": str(other_base)}))
    cfg = BenchConfig(out=tmp_path / "bench", data=tmp_path / "unused", checkpoint=camera,
                      modality_checkpoint=ablation, ir_only_checkpoint=camera)
    with pytest.raises(ValueError, match="Table 3 must compare one base") as err:
        ensure_checkpoints(cfg)
    assert str(ablation) in str(err.value) and "--modality-checkpoint" in str(err.value)
    (ablation / "dive.json").write_text(json.dumps(meta))  # the same base: accepted as given
    assert ensure_checkpoints(cfg) == {"camera": camera, "modality": ablation, "ir-only": camera}
    # the same base but another recipe (beyond the variant's own change): refused, naming the fields
    meta["config"] |= {"granularity": "modality", "rank": 8}
    (ablation / "dive.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="differs from the per-camera checkpoint .* in rank;"):
        ensure_checkpoints(cfg)
    meta["config"]["rank"] = recipe["rank"]  # only the variant's own change: accepted
    (ablation / "dive.json").write_text(json.dumps(meta))
    assert ensure_checkpoints(cfg)["modality"] == ablation


def test_ir_only_ablation_trains_from_a_visible_identity_recipe(micro_base, micro_dive_run, tiny_world_dir, tmp_path):
    """The shipped demo learns identity tokens from visible images only; the infrared-only
    ablation has no visible VI images, so the bench must switch its identity tokens to learn from
    infrared (else the trainer refuses the recipe and the bench stops at Table 3)."""
    import shutil

    from dive.bench.config import BenchConfig
    from dive.bench.stages import ensure_checkpoints, variant_recipe
    from dive.checkpoint import training_config

    camera = tmp_path / "camera"
    shutil.copytree(micro_dive_run / "final", camera)
    meta = json.loads((camera / "dive.json").read_text())
    meta["config"] |= {"identity_modalities": "visible", "infrared_share": 0.5, "steps": 2}
    (camera / "dive.json").write_text(json.dumps(meta))
    assert variant_recipe(camera)["identity_modalities"] == "visible"
    cfg = BenchConfig(out=tmp_path / "bench", data=tiny_world_dir, checkpoint=camera, modality_checkpoint=camera,
                      ir_only_checkpoint=tmp_path / "absent", min_images=3, quick=True, threads=1)
    found = ensure_checkpoints(cfg)
    trained = training_config(found["ir-only"])
    assert found["ir-only"] == tmp_path / "bench" / "dive" / "ir-only" / "final"
    assert trained["vi_modalities"] == "infrared" and trained["identity_modalities"] == "both"
    assert trained["infrared_share"] == 0.5 and trained["steps"] == 2  # the rest of the recipe is kept


def test_given_dive_images_are_used_not_generated(tmp_path, monkeypatch):
    from dive.bench.config import BenchConfig
    from dive.bench.stages import generate_variants

    given = tmp_path / "filtered"
    cfg = BenchConfig(out=tmp_path / "bench", dive_images=given)
    with pytest.raises(ValueError, match="filtered/manifest.jsonl: not found"):
        generate_variants(cfg, {"camera": tmp_path / "ckpt"})
    given.mkdir()
    (given / "manifest.jsonl").write_text("{}\n")
    assert generate_variants(cfg, {"camera": tmp_path / "ckpt"}) == {"dive-camera": given}
    assert not (tmp_path / "bench" / "synthetic").exists()
    # a `dive generate` folder must have been made as the bench would make it; it is only read
    from dive import checkpoint

    monkeypatch.setattr(checkpoint, "checkpoint_hash", lambda p: "h-" + Path(p).name)
    made = {"checkpoint_hash": "h-ckpt", "seed": cfg.gen_seed, "steps": cfg.gen_steps, "guidance": cfg.guidance,
            "n": cfg.n_per_camera, "min_images": cfg.min_images}
    (given / "generate.json").write_text(json.dumps(made))
    assert generate_variants(cfg, {"camera": tmp_path / "ckpt"}) == {"dive-camera": given}
    for key, other in (("checkpoint_hash", "h-other"), ("n", 3), ("guidance", 9.0)):
        (given / "generate.json").write_text(json.dumps(made | {key: other}))
        with pytest.raises(ValueError, match=f"other settings than the bench's \\({key} {other}"):
            generate_variants(cfg, {"camera": tmp_path / "ckpt"})
    assert json.loads((given / "generate.json").read_text())["guidance"] == 9.0  # untouched


def test_no_ablations_leaves_out_tables_3_and_5(tmp_path, monkeypatch):
    from dive.bench import jobs
    from dive.bench.config import BenchConfig
    from dive.bench.stages import dive_variants

    monkeypatch.setattr(jobs, "epoch_batches_of", lambda data, fmt: 90 if Path(data).name == "baseline" else 181)
    exports = {n: tmp_path / n for n in ("external-rgb", "grayscale", "cyclegan", "dive-camera")}
    cfg = BenchConfig(out=tmp_path, data=tmp_path / "baseline", ablations=False, ablation_seeds=(5,))
    keys = [j[0] for j in jobs.reid_jobs(cfg, exports)]
    assert {k.split("|")[0] for k in keys} == {"baseline", "external-rgb", "grayscale", "cyclegan", "dive-camera"}
    assert not any(k.endswith("|5") for k in keys)  # no ablation seed to compare at
    assert [v[0] for v in dive_variants(cfg)] == ["camera"]
    assert [v[0] for v in dive_variants(BenchConfig(out=tmp_path))] == ["camera", "modality", "ir-only"]


def test_a_rerun_with_fewer_checkpoints_is_checked_on_those_it_shares(tmp_path, monkeypatch):
    from dive import checkpoint
    from dive.bench.config import BenchConfig
    from dive.bench.stages import check_inputs

    monkeypatch.setattr(checkpoint, "checkpoint_hash", lambda p: Path(p).name)
    cfg = BenchConfig(out=tmp_path / "bench", base=tmp_path / "base")
    cfg.out.mkdir()
    check_inputs(cfg, {"camera": tmp_path / "c1"})
    check_inputs(cfg, {"camera": tmp_path / "c1", "modality": tmp_path / "m1"})  # more: recorded
    assert json.loads((cfg.out / "inputs.json").read_text())["checkpoints"] == {"camera": "c1", "modality": "m1"}
    check_inputs(cfg, {"camera": tmp_path / "c1"})  # fewer (--no-ablations): fine
    with pytest.raises(ValueError, match="another base or DiVE checkpoint"):
        check_inputs(cfg, {"camera": tmp_path / "c1", "modality": tmp_path / "m2"})
    with pytest.raises(ValueError, match="another base or DiVE checkpoint"):
        check_inputs(cfg, {"camera": tmp_path / "c2"})


def test_the_bench_adopts_a_sweeps_finished_runs_of_the_same_recipe(tmp_path, monkeypatch):
    """Bench runs score val at their last epoch like the sweep's, so a sweep's finished baseline and
    chosen-row runs (same world, same images) are copied in instead of trained again."""
    from dive.bench import jobs
    from dive.bench.config import BenchConfig, sweep_runs, with_sweep_choice
    from dive.bench.sweep import SweepConfig, knob_rows, sweep_jobs
    from dive.utils.config import config_to_dict

    world, sweep_dir = tmp_path / "world", tmp_path / "sweep"
    images = sweep_dir / "synthetic" / "dive-camera"
    images.mkdir(parents=True)
    (images / "generate.json").write_text("{}")
    bench = BenchConfig(out=tmp_path / "bench", data=world, seeds=(0, 1), methods=("agw",), from_sweep=sweep_dir,
                        ablations=False)
    # the sweep: rows at the bench's settings, its share-0.25 row chosen
    sw_bench = dataclasses.replace(bench, out=sweep_dir, from_sweep=None)
    rows = knob_rows(SweepConfig(out=sweep_dir, knobs=("share",), share=(0.25,), seeds=(0, 1)), sw_bench)
    from dive.bench.sweep import sweep_recipe

    assert sweep_recipe(sw_bench, 181) == jobs.reid_recipe(sw_bench) | {"batches_per_epoch": 181}  # one recipe
    for job in sweep_jobs(sw_bench, rows, {r["set"]: ("", "") for r in rows}, 181):
        if job[5] == 1 and job[0].startswith("share"):
            continue  # the chosen row's second seed has not finished
        run = Path(job[3])
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({"train": config_to_dict(jobs._job_train_config(job))}))
        (run / "report.json").write_text(json.dumps({"results": {}, "run": str(run)}))
        (run / "model.safetensors").write_bytes(b"weights")  # a whole run: its weights are read by the bench
    (sweep_dir / "sweep.json").write_text(json.dumps({
        "world": str(world), "checkpoint": str(bench.checkpoint), "dive_images": str(images), "chosen": 2,
        "defaults": {"n": bench.n_per_camera, "guidance": bench.guidance},
        "rows": [dict(r, result={}) for r in rows]}))
    cfg = with_sweep_choice(bench)
    assert cfg.synthetic_share == 0.25 and cfg.dive_images == images
    assert sweep_runs(cfg) == {"baseline": sweep_dir / "reid" / "baseline-{method}-seed{seed}",
                               "dive-camera": sweep_dir / "reid" / "share-0.25-{method}-seed{seed}"}
    monkeypatch.setattr(jobs, "epoch_batches_of", lambda data, fmt: 90 if Path(data) == world else 181)
    exports = {n: tmp_path / "bench" / "exports" / n for n in ("external-rgb", "grayscale", "cyclegan", "dive-camera")}
    todo = [j for j in jobs.reid_jobs(cfg, exports) if j[0].startswith(("baseline|", "dive-camera|"))]
    assert jobs.adopt_runs(todo, sweep_runs(cfg)) == ["baseline|agw|0", "baseline|agw|1", "dive-camera|agw|0"]
    assert jobs.finished_report(todo[2])["run"] == str(sweep_dir / "reid" / "share-0.25-agw-seed0")
    assert jobs.finished_report(todo[3]) is None  # seed 1 of the chosen row: left to train
    assert jobs.adopt_runs(todo, sweep_runs(cfg)) == []  # finished now: nothing copied twice
    # without the chosen share the bench's + DiVE recipe is not the sweep's run: never adopted
    plain = [j for j in jobs.reid_jobs(dataclasses.replace(cfg, synthetic_share=None, out=tmp_path / "b2"), exports)
             if j[0].startswith("dive-camera|")]
    assert jobs.adopt_runs(plain, sweep_runs(cfg)) == []


@pytest.mark.slow
def test_quick_bench_keeps_records_that_a_fresh_folder_takes_back(quick_bench, tmp_path):
    """--records: every finished run's record, the Tables 1/2 models' LLCM / RegDB scores (made as
    each run finished) and Table 6's feature model with its weights; a fresh folder takes them
    back as finished runs, and their protocol scores are reused without the weights."""
    from dive.bench.jobs import finished_report, reid_jobs
    from dive.bench.protocols import protocol_results
    from dive.bench.records import bench_restore
    from dive.bench.rows import bench_settings

    out, _, cmd = quick_bench
    records = Path(cmd[cmd.index("--records") + 1])
    runs = sorted(p.parent.name for p in (out / "reid").glob("*/report.json"))
    assert runs and sorted(p.name for p in (records / "reid").iterdir()) == runs
    assert [p.parent.name for p in records.rglob("model.safetensors")] == ["baseline-agw-seed0"]
    scored = sorted(p.name for p in (out / "protocols").glob("*.json"))
    assert scored and sorted(p.name for p in (records / "protocols").glob("*.json")) == scored
    cfg = dataclasses.replace(bench_settings(out), out=tmp_path / "fresh", records=records)
    exports = {p.name: p for p in (out / "exports").iterdir() if p.is_dir()}
    jobs = reid_jobs(cfg, exports)
    assert len(bench_restore(cfg, jobs)) == len(jobs) == len(runs)
    reports = {j[0]: finished_report(j) for j in jobs}
    assert None not in reports.values()
    assert not (tmp_path / "fresh" / "reid" / "dive-camera-agw-seed0" / "model.safetensors").exists()
    fresh = protocol_results(cfg, reports)["models"]
    before = protocol_results(bench_settings(out), reports)["models"]
    assert fresh == before and all("skipped" not in r for r in fresh.values())
