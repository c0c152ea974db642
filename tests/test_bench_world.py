"""`dive bench --world-seed`: a world other than the shipped one gets its own folder and its own
models (captions, infrared words, DiVE checkpoints, CycleGAN); the shipped world keeps the shipped
models; a folder holding another seed's world is refused. The whole run on a second seed is the
quick bench's (tests/test_bench.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dive import defaults
from dive.bench.config import BenchConfig, quick_config
from dive.bench.world import SHIPPED_MODEL_FIELDS, is_shipped_world, resolve_world


def test_the_default_world_keeps_the_shipped_models(tmp_path):
    cfg = resolve_world(BenchConfig(out=tmp_path / "bench", data=tmp_path / "not-built-yet"))
    assert is_shipped_world(cfg)  # to be built at seed 0 and the default sizes
    assert cfg.checkpoint == defaults.DEMO and cfg.cyclegan == defaults.CYCLEGAN
    assert resolve_world(BenchConfig(out=tmp_path / "b", world_seed=0)).data == defaults.DATA


def test_another_seed_builds_its_own_world_and_trains_its_own_models(tmp_path):
    out = tmp_path / "bench"
    cfg = resolve_world(BenchConfig(out=out, world_seed=7))
    assert cfg.data == out / "world" and not is_shipped_world(cfg)
    assert all(getattr(cfg, name) is None for name in SHIPPED_MODEL_FIELDS)
    # a model the user names that is not a shipped one is theirs to give
    mine = tmp_path / "my-dive"
    cfg = resolve_world(BenchConfig(out=out, world_seed=7, checkpoint=mine, data=tmp_path / "w7"))
    assert cfg.checkpoint == mine and cfg.data == tmp_path / "w7" and cfg.modality_checkpoint is None


def test_a_folder_holding_another_seeds_world_is_refused(tmp_path, tiny_world_dir):
    seed = json.loads((tiny_world_dir / "synthvi.json").read_text())["config"]["seed"]
    cfg = resolve_world(BenchConfig(out=tmp_path / "b", data=tiny_world_dir, world_seed=seed))
    assert cfg.data == tiny_world_dir and cfg.checkpoint is None  # a tiny world is not the shipped one
    with pytest.raises(ValueError, match=f"seed {seed}, but --world-seed is {seed + 1}"):
        resolve_world(BenchConfig(out=tmp_path / "b", data=tiny_world_dir, world_seed=seed + 1))


def test_the_plan_of_a_new_world_prices_its_captions_from_the_shipped_readers_run(tmp_path, monkeypatch, capsys):
    """The projection of a world the shipped models were not made from lists the caption reader's
    training, priced by the shipped reader's own recorded seconds per step."""
    from dive.bench import probe
    from dive.bench.plan import project

    monkeypatch.setattr(probe, "probe_costs", lambda *a, **k: {})
    cfg = resolve_world(quick_config(BenchConfig(out=tmp_path / "bench", quick=True, world_seed=3)))
    rows = [r for r in project(cfg, probing=False)["rows"] if r["part"] == "captions: reader training"]
    report = json.loads((defaults.shipped(defaults.CAPTION_READER_NAME) / "report.json").read_text())
    per_step = report["seconds"] / report["config"]["steps"]
    assert len(rows) == 1 and rows[0]["units"] == cfg.caption_steps == 10 and not rows[0]["done"]
    assert rows[0]["seconds"] == pytest.approx(10 * per_step, abs=0.05)
    assert not (tmp_path / "bench" / "world").exists()  # planning builds nothing
    shipped = project(resolve_world(BenchConfig(out=tmp_path / "b2", data=Path("no-world"))), probing=False)
    assert not any(r["part"] == "captions: reader training" for r in shipped["rows"])
