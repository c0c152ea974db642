"""LLCM and RegDB as ReID training sources, their default protocols, and RegDB's raw-ranking CMC."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fake_layouts import make_llcm_tree, make_regdb_tree

from dive.cli import main
from dive.data.records import Modality
from dive.reid.protocols import evaluate
from dive.reid.run import ReIDDataConfig, ReIDEvalConfig, load_reid_data, resolve_protocols, run_reid
from dive.reid.train import ReIDTrainConfig
from dive.utils.ranking import evaluate_ranking

TINY_CLI = ["--base-width", "4", "--height", "64", "--width", "32", "--num-ids", "2", "--num-per-modality", "2",
            "--epochs", "1", "--batches-per-epoch", "2", "--threads", "1", "--no-progress"]


def agw_regdb_cmc(dist, q_pids, g_pids, max_rank):
    """AGW's eval_regdb CMC, written out: cumulative hits along each query's raw sorted ranking."""
    curves = []
    for i in range(dist.shape[0]):
        matches = (g_pids[np.argsort(dist[i], kind="stable")] == q_pids[i]).astype(int)
        if matches.any():
            curves.append(np.minimum(matches.cumsum(), 1)[:max_rank])
    return np.mean(curves, axis=0)


def test_regdb_cmc_is_the_raw_ranking():
    # query 0's match sits behind two images of identity 1 and one of identity 2:
    # raw rank 4 (positions 1..3 are wrong images), de-duplicated rank 3 (identities 1, 2, then 0)
    dist = np.array([[0.1, 0.2, 0.3, 0.4, 0.5],
                     [0.5, 0.1, 0.4, 0.2, 0.3]])
    gp = np.array([1, 1, 2, 0, 2])
    qp = np.array([0, 1])
    qc, gc = np.ones(2, int), np.full(5, 2)
    raw = evaluate_ranking(dist, qp, qc, gp, gc, max_rank=5, cmc="raw")
    dedup = evaluate_ranking(dist, qp, qc, gp, gc, max_rank=5)
    np.testing.assert_allclose(raw["cmc"], [0.5, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(dedup["cmc"], [0.5, 0.5, 1, 1, 1])
    np.testing.assert_allclose(raw["cmc"], agw_regdb_cmc(dist, qp, gp, 5))
    assert raw["mAP"] == dedup["mAP"] and raw["mINP"] == dedup["mINP"]  # only the CMC differs
    for name in ("regdb-v2t", "regdb-t2v"):
        res = evaluate(name, query_pid=qp, query_cam=qc, gallery_pid=gp, gallery_cam=gc, distance=dist, max_rank=5)
        np.testing.assert_allclose(res["cmc"], 100 * raw["cmc"])
        assert res["rank5"] == pytest.approx(100.0) and res["trials"] == 1
    # SYSU / LLCM protocols keep the de-duplicated identity ranking
    res = evaluate("llcm-v2i", query_pid=qp, query_cam=qc, gallery_pid=gp, gallery_cam=gc, distance=dist,
                   gallery="as-given", max_rank=5)
    np.testing.assert_allclose(res["cmc"], 100 * dedup["cmc"])
    with pytest.raises(ValueError, match="cmc must be one of"):
        evaluate_ranking(dist, qp, qc, gp, gc, cmc="first")


def test_regdb_raw_cmc_matches_the_loop_on_random_data():
    rng = np.random.default_rng(1)
    qp, gp = rng.integers(0, 6, 40), np.repeat(np.arange(6), 5)
    dist = rng.random((40, 30))
    got = evaluate_ranking(dist, qp, np.ones(40, int), gp, np.full(30, 2), max_rank=20, cmc="raw")
    np.testing.assert_allclose(got["cmc"], agw_regdb_cmc(dist, qp, gp, 20))


@pytest.fixture(scope="module")
def llcm(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("llcm") / "LLCM"
    make_llcm_tree(root, train_ids=(1, 2, 3), test_ids=(4, 5, 6), images_per_cam=2)
    return root


@pytest.fixture(scope="module")
def regdb(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("regdb") / "RegDB"
    make_regdb_tree(root, n_ids=6, images_per_id=2, trials=(1, 2))
    return root


def test_llcm_and_regdb_are_training_sources(llcm, regdb):
    data = load_reid_data(ReIDDataConfig(data=llcm))
    assert data.format == "llcm" and not data.val
    assert {r.pid for r in data.train} == {1, 2, 3} and {r.pid for r in data.test} == {4, 5, 6}
    assert {r.modality for r in data.train} == {Modality.VISIBLE, Modality.INFRARED}
    assert resolve_protocols("llcm") == ["llcm-v2i", "llcm-i2v"]
    assert resolve_protocols("sysu_mm01") == ["sysu-all", "sysu-indoor"]
    assert resolve_protocols("regdb", ("regdb-t2v",)) == ["regdb-t2v"]
    with pytest.raises(ValueError, match="do not fit llcm"):
        resolve_protocols("llcm", ("sysu-all",))
    one, two = (load_reid_data(ReIDDataConfig(data=regdb, regdb_trial=t)) for t in (1, 2))
    assert one.format == "regdb" and one.summary["regdb_trial"] == 1
    assert {r.split for r in one.train} == {"train"} and {r.split for r in one.test} == {"test"}
    # the trial picks the split: trial 2's training images are another set of people
    assert {r.path for r in one.train} != {r.path for r in two.train}


def test_wrong_protocol_fails_before_training(llcm, tmp_path):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match="do not fit llcm"):
        run_reid(ReIDDataConfig(data=llcm), ReIDTrainConfig(out=out), ReIDEvalConfig(protocols=("sysu-all",)))
    assert not out.exists()


@pytest.mark.slow
def test_cli_reid_run_on_llcm_then_test_on_regdb(llcm, regdb, tmp_path, capsys):
    out = tmp_path / "deen-llcm"
    rc = main(["reid", "run", "--data", str(llcm), "--out", str(out), "--method", "deen", "--trials", "2",
               "--gallery-sampling", "agw", *TINY_CLI])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "LLCM VIS->IR: R1" in printed and "LLCM IR->VIS: R1" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["eval"]["protocols"] == ["llcm-v2i", "llcm-i2v"] and report["eval"]["gallery_sampling"] == "agw"
    assert report["train"]["num_classes"] == 3 and report["test_data"]["format"] == "llcm"
    assert report["train"]["timing"]["iterations"] == 2
    # 3 test ids x 3 cameras x 2 images per modality; the direction decides which are queries
    v2i, i2v = report["results"]["llcm-v2i"], report["results"]["llcm-i2v"]
    assert v2i["num_queries"] == i2v["num_queries"] == 18
    assert len(v2i["per_trial"]) == 2 and v2i["per_trial"][0]["gallery_size"] == 9  # one per id and camera
    assert "LLCM VIS->IR R1" in (out / "report.md").read_text()

    rc = main(["reid", "test", str(out), "--data", str(regdb), "--regdb-trial", "2", "--trials", "5"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    report = json.loads((out / "report.json").read_text())
    assert set(report["results"]) == {"regdb-v2t", "regdb-t2v"}
    assert report["test_data"]["regdb_trial"] == 2 and report["results"]["regdb-v2t"]["trials"] == 1
    assert report["results"]["regdb-v2t"]["per_trial"][0]["gallery_size"] == 6  # 3 test ids x 2 images
    assert report["data"]["format"] in ("auto", "llcm")  # what the network was trained on stays recorded
