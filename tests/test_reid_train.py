"""ReID training end to end on a tiny SynthVI world: reproducibility, checkpoints, CLI, report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dive.cli import main
from dive.data.synthvi.build import SynthConfig, build_world
from dive.reid.evaluate import evaluate_model, extract_features
from dive.reid.run import ReIDDataConfig, load_reid_data
from dive.reid.train import ReIDTrainConfig, label_map, load_checkpoint, lr_at, train_reid

# a tiny, fast network and schedule: 2 batches of 2 ids x (2 visible + 2 infrared) at 64x32
TINY_TRAIN = dict(base_width=4, height=64, width=32, num_ids=2, num_per_modality=2, epochs=1,
                  batches_per_epoch=2, warmup_epochs=0.0, lr_steps=(), progress=False, threads=1)
TINY_CLI = ["--base-width", "4", "--height", "64", "--width", "32", "--num-ids", "2", "--num-per-modality", "2",
            "--epochs", "1", "--batches-per-epoch", "2", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reidw") / "world"
    build_world(SynthConfig(out=out, vi_train_ids=6, vi_val_ids=2, vi_test_ids=4, vi_images_per_camera=(2, 2),
                            ext_ids=4, ext_test_ids=1, web_images=2, workers=1), progress=False)
    return out


def test_same_seed_same_weights_and_checkpoint_loads(world, tmp_path):
    data = load_reid_data(ReIDDataConfig(data=world))
    runs = [train_reid(ReIDTrainConfig(out=tmp_path / f"r{i}", seed=s, method=m, **TINY_TRAIN), data.train)
            for i, (s, m) in enumerate([(5, "caj"), (5, "caj"), (6, "caj")])]
    w = [load_file(str(r / "model.safetensors")) for r in runs]
    assert w[0].keys() == w[1].keys()
    assert all(torch.equal(w[0][k], w[1][k]) for k in w[0])  # bitwise identical
    assert any(not torch.equal(w[0][k], w[2][k]) for k in w[0] if w[0][k].is_floating_point())
    model, meta = load_checkpoint(runs[0])
    assert meta["epoch"] == 1 and meta["selected_by"] == "last" and meta["num_classes"] == 6
    assert meta["labels"][0] == ["synthvi_vi", min(r.pid for r in data.train)]
    assert all(torch.equal(model.state_dict()[k], w[0][k]) for k in w[0])
    log = [json.loads(line) for line in (runs[0] / "log.jsonl").read_text().splitlines()]
    assert [r["type"] for r in log].count("epoch") == 1 and log[0]["batch_size"] == 12  # 4 vis + 4 aug + 4 IR
    assert json.loads((runs[0] / "config.json").read_text())["resolved"] == {"triplet": "adp", "channel_aug": True}
    # features: one row per record, deterministic
    test = [r for r in data.test][:10]
    f1, f2 = extract_features(model, test), extract_features(model, test, flip=True)
    assert f1.shape == (10, model.feat_dim) and f2.shape == f1.shape
    res = evaluate_model(model, data.test, ["sysu-all", "sysu-indoor"], trials=2)
    assert set(res) == {"sysu-all", "sysu-indoor"} and 0 <= res["sysu-all"]["rank1"] <= 100
    with pytest.raises(FileExistsError):  # a run folder is never silently overwritten
        train_reid(ReIDTrainConfig(out=runs[0], **TINY_TRAIN), data.train)


def test_best_val_selection_and_external_ids(world, tmp_path):
    data = load_reid_data(ReIDDataConfig(data=world, train_set="vi+ext-rgb"))
    labels = label_map(data.train)
    assert len(labels) == 6 + 4  # external ids get their own labels even where pids collide
    assert {d for d, _ in labels} == {"synthvi_vi", "synthvi_ext"}
    run = train_reid(ReIDTrainConfig(out=tmp_path / "bv", select="best-val", val_trials=1,
                                     **dict(TINY_TRAIN, epochs=2, batches_per_epoch=1)), data.train, data.val)
    meta = json.loads((run / "model.json").read_text())
    assert meta["visible_only_ids"] == 4 and meta["selected_by"] == "best-val"
    assert all("val" in h for h in meta["history"]) and meta["epoch"] in (1, 2)
    assert (run / "last.safetensors").is_file()


def test_lr_schedule():
    cfg = ReIDTrainConfig(lr=0.1, warmup_epochs=2, lr_steps=(4, 6), epochs=8)
    assert lr_at(cfg, 1.0) == pytest.approx(0.05) and lr_at(cfg, 2.0) == pytest.approx(0.1)
    assert lr_at(cfg, 5.0) == pytest.approx(0.01) and lr_at(cfg, 7.0) == pytest.approx(0.001)


def test_cli_reid_run_writes_report(world, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["reid", "run", "--data", str(world), "--out", str(out), "--trials", "2", *TINY_CLI])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "All-search: R1" in printed and "Indoor-search: R1" in printed
    for name in ("report.json", "report.md", "cmc.png", "model.safetensors", "model.json", "config.json",
                 "log.jsonl"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert set(report["results"]) == {"sysu-all", "sysu-indoor"}
    assert len(report["results"]["sysu-all"]["per_trial"]) == 2
    md = (out / "report.md").read_text()
    assert "All-search R1" in md and "Indoor-search mINP" in md
    assert (out / "cmc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rc = main(["reid", "run", "--data", str(world), "--out", str(out), "--trials", "2", *TINY_CLI])
    assert rc == 2 and "already holds a ReID run" in capsys.readouterr().err


def test_cli_reid_train_then_test(world, tmp_path, capsys):
    out = tmp_path / "tr"
    rc = main(["reid", "train", "--data", str(world), "--out", str(out), "--method", "caj",
               "--train-set", "vi+ext-rgb", *TINY_CLI])
    printed = capsys.readouterr().out
    assert rc == 0 and "trained CAJ" in printed and (out / "model.safetensors").is_file()
    rc = main(["reid", "test", str(out), "--data", str(world), "--trials", "1", "--protocols", "sysu-all"])
    printed = capsys.readouterr().out
    assert rc == 0 and "All-search: R1" in printed and "Indoor" not in printed
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["train_set"] == "vi+ext-rgb" and report["label"] == "CAJ (vi+ext-rgb)"  # from the run
