"""`dive bench-row` and `dive bench-progress`: rows beside a finished bench, with its own recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dive.bench.config import BenchConfig
from dive.utils.config import config_to_dict


def _finished_bench(tmp_path: Path, **settings) -> BenchConfig:
    """A bench folder as a finished bench leaves it: bench.json with its settings, and its world
    (each set at its own AGW epochs unless the test asks for the equal budget)."""
    settings.setdefault("reid_budget", "own")
    bench = BenchConfig(out=tmp_path / "bench", data=tmp_path / "world", **settings)
    bench.out.mkdir(parents=True)
    bench.data.mkdir()
    (bench.out / "bench.json").write_text(json.dumps({"config": config_to_dict(bench)}))
    return bench


def _report(r1: float) -> dict:
    return {"results": {p: {"rank1": r1, "mAP": r1 + 5} for p in ("sysu-all", "sysu-indoor")}}


def test_a_rows_jobs_are_the_benchs_own_jobs_for_that_row(tmp_path):
    """Same training set, folders and ReID recipe as the bench's job of that row, read from the
    folder's bench.json (not BenchConfig's defaults); an explicit budget scales as the bench's does."""
    from dive.bench.jobs import reid_jobs, reid_recipe
    from dive.bench.rows import BenchRowConfig, row_jobs, row_settings

    bench = _finished_bench(tmp_path, seeds=(3, 4), reid_epochs=4, diagnostics=False, reid_budget="own")
    names = ("external-rgb", "grayscale", "cyclegan", "dive-camera", "dive-modality", "dive-ir-only")
    # (the bench also trains the baseline at its ablation seed 0 for Tables 3/5; a row takes the Table 1 seeds)
    theirs = [j for j in reid_jobs(bench, {n: tmp_path / n for n in names}) if j[0] in ("baseline|agw|3", "baseline|agw|4")]
    cfg = BenchRowConfig(source="baseline", out=bench.out)
    ours = row_jobs(cfg, row_settings(cfg), bench.data, "synthvi")
    assert ours == theirs and len(ours) == 2
    assert ours[0][6] == {"batches_per_epoch": 0, "epochs": 4, "lr_steps": (2, 3), "warmup_epochs": 1.0, "val_every": 4}

    cfg = BenchRowConfig(source="baseline", out=bench.out, name="baseline-equal", epochs=9, batches_per_epoch=302,
                         seeds=(0,), method="caj")
    (job,) = row_jobs(cfg, row_settings(cfg), bench.data, "synthvi")
    assert job[6] == reid_recipe(BenchConfig(reid_epochs=9, reid_batches_per_epoch=302))
    assert job[6] == {"batches_per_epoch": 302, "epochs": 9, "lr_steps": (6, 8), "warmup_epochs": 2.0, "val_every": 9}
    assert Path(job[3]) == bench.out / "reid" / "baseline-equal-caj-seed0" and job[4] == "caj"


def test_a_row_of_an_equal_budget_bench_trains_the_benchs_batches(tmp_path):
    """At the bench's equal budget a row trains the batches per epoch the bench's own runs trained;
    a bench folder from before the equal budget is read as the per-set recipe it ran."""
    from dive.bench.rows import BenchRowConfig, bench_settings, row_jobs, row_settings

    bench = _finished_bench(tmp_path, seeds=(0,), reid_epochs=4, diagnostics=False, reid_budget="equal")
    cfg = BenchRowConfig(source="baseline", out=bench.out, name="extra")
    with pytest.raises(ValueError, match="equal ReID budget"):
        row_jobs(cfg, row_settings(cfg), bench.data, "synthvi")
    run = bench.out / "reid" / "baseline-agw-seed0"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"train": {"batches_per_epoch": 302}}))
    (job,) = row_jobs(cfg, row_settings(cfg), bench.data, "synthvi")
    assert job[6]["batches_per_epoch"] == 302 and job[6]["epochs"] == 4
    saved = json.loads((bench.out / "bench.json").read_text())
    del saved["config"]["reid_budget"]
    (bench.out / "bench.json").write_text(json.dumps(saved))
    assert bench_settings(bench.out).reid_budget == "own"


def test_bench_row_reuses_the_benchs_finished_run_and_never_overwrites_another_recipe(tmp_path):
    from dive.bench.jobs import _job_train_config
    from dive.bench.rows import BenchRowConfig, bench_row, row_jobs, row_settings

    bench = _finished_bench(tmp_path, seeds=(0,))
    cfg = BenchRowConfig(source="baseline", out=bench.out)
    (job,) = row_jobs(cfg, row_settings(cfg), bench.data, "synthvi")
    run = Path(job[3])
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"train": config_to_dict(_job_train_config(job))}))
    (run / "report.json").write_text(json.dumps(_report(12.5)))
    # the bench trained this row with this recipe: reused (the fake world could not train anything)
    assert bench_row(cfg) == {"baseline|agw|0": _report(12.5)}
    longer = BenchRowConfig(source="baseline", out=bench.out, batches_per_epoch=300)
    with pytest.raises(ValueError, match="another ReID recipe .* another --name"):
        bench_row(longer)
    assert json.loads((run / "report.json").read_text()) == _report(12.5)


def test_bench_row_refuses_a_source_it_cannot_read(tmp_path):
    from dive.bench.rows import BenchRowConfig, bench_row

    bench = _finished_bench(tmp_path)
    with pytest.raises(ValueError, match="give --name"):
        BenchRowConfig(source=str(tmp_path), out=bench.out)
    with pytest.raises(ValueError, match="expected a row name"):
        BenchRowConfig(source="baseline", out=bench.out, name="a b")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=f"{empty}: expected a synthetic folder"):
        bench_row(BenchRowConfig(source=str(empty), out=bench.out, name="empty"))
    base = tmp_path / "base"
    base.mkdir()
    (base / "model_index.json").write_text("{}")
    _finished_bench(tmp_path / "no-camera", checkpoint=None)  # a quick bench, its camera checkpoint deleted
    with pytest.raises(ValueError, match="recipe of the bench's per-camera DiVE checkpoint"):
        bench_row(BenchRowConfig(source=str(base), out=tmp_path / "no-camera" / "bench", name="other-base"))
    (bench.out / "bench.json").write_text("{}")
    with pytest.raises(ValueError, match="bench.json: expected the bench's bench.json"):
        bench_row(BenchRowConfig(source="baseline", out=bench.out))


def test_bench_progress_prints_the_finished_rows_and_the_claim_check(tmp_path, capsys):
    from dive.cli import main

    first, second = tmp_path / "bench", tmp_path / "rows"
    r1 = {(first, "baseline", 0): 10.0, (first, "baseline", 1): 12.0, (first, "dive-camera", 0): 11.0,
          (first, "dive-camera", 1): 11.4, (second, "oracle", 0): 20.0, (second, "oracle", 1): 22.0,
          (second, "baseline", 0): 99.0}  # a seed already read keeps the first folder's run
    for (folder, train_set, seed), value in r1.items():
        run = folder / "reid" / f"{train_set}-agw-seed{seed}"
        run.mkdir(parents=True)
        (run / "report.json").write_text(json.dumps(_report(value)))
    (first / "reid" / "baseline-agw-seed2").mkdir()  # still training: no report yet
    (first / "reid" / "notes").mkdir()

    assert main(["bench-progress", "--folders", str(first), str(second), "--as-dive", "oracle"]) == 0
    out = capsys.readouterr().out
    assert "| baseline | 0,1 | 11.00 ± 1.41 | 16.00 ± 1.41 |" in out
    assert "| dive-camera | 0,1 | 11.20 ± 0.28 |" in out and "| oracle | 0,1 | 21.00 ± 1.41 |" in out
    claim = json.loads(out.split("claim check on these rows: ")[1].splitlines()[0])
    assert claim == {"holds": False, "checks": {"beats the strongest baseline (baseline) rank1 by > spread": False,
                                                 "beats the strongest baseline (baseline) mAP by > spread": False}}
    with_oracle = json.loads(out.split("claim check with oracle in DiVE's place: ")[1].splitlines()[0])
    assert with_oracle["holds"] is True

    assert main(["bench-progress", "--folders", str(tmp_path)]) == 2
    assert "expected a bench folder with a reid/ folder" in capsys.readouterr().err


@pytest.mark.slow
def test_a_base_row_trains_with_the_benchs_recipe_then_generates_and_exports(micro_base, micro_dive_run,
                                                                            tiny_world_dir, tmp_path):
    """A base SRC: DiVE trained on it with the per-camera checkpoint's recipe (at the row's training
    seed), drawn at the bench's generation settings, exported as the bench exports; a rerun reuses all."""
    from dive.bench.rows import BenchRowConfig, row_settings, row_training_set
    from dive.bench.stages import variant_recipe
    from dive.checkpoint import training_config

    camera = micro_dive_run / "final"
    bench = BenchConfig(out=tmp_path / "bench", data=tiny_world_dir, checkpoint=camera, min_images=3, n_per_camera=1,
                        gen_steps=2, threads=1, quick=True)
    bench.out.mkdir()
    (bench.out / "bench.json").write_text(json.dumps({"config": config_to_dict(bench)}))
    cfg = BenchRowConfig(source=str(micro_base), out=bench.out, name="dive-other-base", train_seed=1)
    data, fmt = row_training_set(cfg, row_settings(cfg))
    assert (data, fmt) == (bench.out / "exports" / "dive-other-base", "sysu_mm01")
    trained = training_config(bench.out / "dive" / "dive-other-base" / "final")
    assert trained["seed"] == 1 and Path(trained["base"]) == micro_base
    assert {k: trained[k] for k in variant_recipe(camera)} == config_to_dict_values(variant_recipe(camera))
    manifest = bench.out / "synthetic" / "dive-other-base" / "manifest.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert rows and {r["pid"] for r in rows} and (data / "export.json").is_file()
    image, trained_file = manifest.parent / rows[0]["path"], bench.out / "dive" / "dive-other-base" / "final" / "dive.json"
    before = (manifest.read_text(), image.stat().st_mtime_ns, trained_file.stat().st_mtime_ns)
    row_training_set(cfg, row_settings(cfg))  # nothing retrained or redrawn
    assert (manifest.read_text(), image.stat().st_mtime_ns, trained_file.stat().st_mtime_ns) == before
    # another checkpoint under a name already drawn: refused, not mixed into that row's images
    other = BenchRowConfig(source=str(camera), out=bench.out, name="dive-other-base")
    with pytest.raises(ValueError, match="generated with other settings"):
        row_training_set(other, row_settings(other))


def config_to_dict_values(recipe: dict) -> dict:
    return {k: str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v for k, v in recipe.items()}
