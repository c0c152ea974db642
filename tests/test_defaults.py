"""One module names the shipped defaults, and every consumer reads it; nothing writes into the
shipped checkpoints/ folder by accident."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dive import defaults


def _default(cls, name):
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def test_every_named_default_is_shipped():
    for role, name in defaults.SHIPPED.items():
        assert defaults.shipped(name).is_dir(), f"{role}: checkpoints/{name} is missing"
    assert defaults.shipped(defaults.BASE_NAME) == defaults.REPO_ROOT / defaults.BASE


def test_consumers_read_the_defaults_module():
    from dive.bench.config import BenchConfig
    from dive.generate.bench import GenerateBenchConfig
    from dive.generate.translate import TranslateConfig
    from dive.studio import service

    cfg = BenchConfig()
    assert (cfg.base, cfg.checkpoint, cfg.data) == (defaults.BASE, defaults.DEMO, defaults.DATA)
    assert (cfg.modality_checkpoint, cfg.ir_only_checkpoint, cfg.cyclegan) == (
        defaults.ABLATION_MODALITY, defaults.ABLATION_IR_ONLY, defaults.CYCLEGAN)
    assert _default(GenerateBenchConfig, "checkpoint") == defaults.DEMO
    assert _default(TranslateConfig, "checkpoint") == defaults.DEMO
    assert service.DEMO_NAME == defaults.DEMO_NAME
    assert service.SHIPPED_BASE == defaults.shipped(defaults.BASE_NAME)


def test_the_demo_names_the_shipped_base():
    from dive.checkpoint import trained_base

    assert trained_base(defaults.shipped(defaults.DEMO_NAME)).resolve() == defaults.shipped(defaults.BASE_NAME).resolve()


def test_base_pretrain_writes_under_runs_and_refuses_checkpoints_without_force(tmp_path):
    from dive.base.pretrain import BasePretrainConfig

    cfg = BasePretrainConfig(data=tmp_path)
    assert Path(cfg.out).parts[0] == "runs"
    for out in (defaults.REPO_ROOT / "checkpoints", defaults.shipped(defaults.BASE_NAME), defaults.shipped("new-base")):
        with pytest.raises(ValueError, match="--force"):
            BasePretrainConfig(data=tmp_path, out=out)
        assert BasePretrainConfig(data=tmp_path, out=out, force=True).force
    assert BasePretrainConfig(data=tmp_path, out=tmp_path / "base").out == tmp_path / "base"


def test_checkpoints_hold_the_named_set_under_role_names():
    """checkpoints/ holds exactly the folders the defaults name, each named for its role (no version
    suffix), and every shipped DiVE checkpoint's dive.json names a base that is there."""
    import re

    from dive.checkpoint import trained_base

    folders = {p.name for p in (defaults.REPO_ROOT / defaults.CHECKPOINTS).iterdir() if p.is_dir()}
    assert folders == set(defaults.SHIPPED.values())
    assert not [f for f in folders if re.search(r"-v\d", f)]
    for role in ("demo", "ablation-modality", "ablation-ir-only"):
        base = trained_base(defaults.shipped(defaults.SHIPPED[role]))
        assert base is not None and base.is_dir() and base.resolve() == defaults.shipped(defaults.BASE_NAME).resolve(), role
