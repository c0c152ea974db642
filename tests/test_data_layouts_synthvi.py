"""`dive data layout`: a SynthVI world's VI set written in the LLCM and RegDB layouts is detected
and read by the real readers with the world's ids, images, cameras and splits; RegDB's fixed images
per modality and its 10 trials; byte-identical rewrites; refusals that write nothing. And the
bench's table of the Tables 1/2 models on the LLCM and RegDB protocols (stand-in runs)."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from dive.data.layouts import INFO_FILE, LayoutConfig, write_layout
from dive.data.readers.sysu_mm01 import SYSUMM01
from dive.data.registry import detect_format, load_dataset
from dive.utils.errors import InputError


def world_rows(world: Path):
    """The world's VI records and its split ids."""
    vi = SYSUMM01(world / "vi")
    return vi.records, {s: sorted(vi.ids(s)) for s in ("train", "val", "test")}


def listing(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def layouts(tiny_world_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("layouts")
    out = {}
    for name in ("llcm", "regdb"):
        write_layout(LayoutConfig(data=tiny_world_dir, to=name, out=root / name))
        out[name] = root / name
    return out


def test_llcm_layout_reads_back_with_the_worlds_ids_cameras_and_images(tiny_world_dir, layouts):
    out = layouts["llcm"]
    assert detect_format(out) == "llcm"
    ds = load_dataset("llcm", out)
    records, ids = world_rows(tiny_world_dir)
    train_ids = sorted(ids["train"] + ids["val"])  # LLCM has no val split: val ids train
    group = {p: "train" for p in train_ids} | {p: "test" for p in ids["test"]}
    want = Counter((group[r.pid], r.pid, r.camid, r.modality.value) for r in records)
    got = Counter((r.split, r.pid, r.camid, r.modality.value) for r in ds.records)
    assert got == want and sorted({r.pid for r in ds.split("test")}) == ids["test"]
    assert {r.camid for r in ds.records if r.modality.value == "visible"} <= {1, 2, 4, 5}
    assert {r.camid for r in ds.records if r.modality.value == "infrared"} == {3, 6}
    # training labels: 0-based in id order; every image is a world image of the same id and camera
    assert {ds.labels[r.path] for r in ds.split("train") if r.pid == train_ids[-1]} == {len(train_ids) - 1}
    sources = {(r.pid, r.camid): set() for r in records}
    for r in records:
        sources[(r.pid, r.camid)].add(Path(r.path).read_bytes())
    for r in ds.records:
        assert Path(r.path).read_bytes() in sources[(r.pid, r.camid)]
        assert Path(r.path).stat().st_nlink >= 2  # a hard link to the world's file
    info = json.loads((out / INFO_FILE).read_text())
    assert info["splits"] == {"train": train_ids, "test": ids["test"]} and info["val_ids_in_train"] == ids["val"]


def test_regdb_layout_has_ten_images_per_id_and_modality_and_ten_trials(tiny_world_dir, layouts):
    out = layouts["regdb"]
    assert detect_format(out) == "regdb"
    records, ids = world_rows(tiny_world_dir)
    info = json.loads((out / INFO_FILE).read_text())
    for trial in (1, 10):
        ds = load_dataset("regdb", out, trial=trial)
        # world rule: the world's train + val ids train, its test ids test, labels 0.. in id order
        per = Counter((r.split, r.pid, r.modality.value) for r in ds.records)
        n_train, n_test = len(ids["train"]) + len(ids["val"]), len(ids["test"])
        assert per == {(s, label, m): 10 for s, n in (("train", n_train), ("test", n_test))
                       for label in range(n) for m in ("visible", "infrared")}
        assert {(r.modality.value, r.camid) for r in ds.records} == {("visible", 1), ("infrared", 2)}
    folders: dict[tuple[int, str, int], list[Path]] = {}
    for r in records:
        folders.setdefault((r.pid, r.modality.value, r.camid), []).append(Path(r.path))
    ds = load_dataset("regdb", out, trial=1)
    for split, pids in (("train", sorted(ids["train"] + ids["val"])), ("test", ids["test"])):
        for label, pid in enumerate(pids):
            for m, word in (("visible", "visible"), ("infrared", "thermal")):
                cams = {c: sorted(v) for (p, mm, c), v in folders.items() if p == pid and mm == m}
                cam = max(cams, key=lambda c: (len(cams[c]), -c))  # the camera with the most images
                assert info["cameras"][word][str(pid)] == cam
                got = [Path(r.path).read_bytes() for r in sorted(ds.split(split), key=lambda r: r.path)
                       if r.pid == label and r.modality.value == m]
                src = cams[cam]
                assert got == [src[k % len(src)].read_bytes() for k in range(10)]  # repeated in order
                assert info["padding"]["repeated_images"][word].get(str(pid), 0) == max(0, 10 - len(src))


def test_regdb_half_rule_draws_ten_seeded_half_splits(tiny_world_dir, tmp_path):
    _, ids = world_rows(tiny_world_dir)
    everyone = sorted(ids["train"] + ids["val"] + ids["test"])
    infos = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        write_layout(LayoutConfig(data=tiny_world_dir, to="regdb", out=tmp_path / name, regdb_split="half", seed=seed))
        infos.append(json.loads((tmp_path / name / INFO_FILE).read_text())["splits"]["trials"])
    assert infos[0] == infos[1] and infos[0] != infos[2]
    splits = {tuple(v["test"]) for v in infos[0].values()}
    assert len(infos[0]) == 10 and len(splits) > 1
    for v in infos[0].values():
        assert sorted(v["train"] + v["test"]) == everyone and len(v["train"]) == len(everyone) // 2
    ds = load_dataset("regdb", tmp_path / "a", trial=7)
    assert len({r.pid for r in ds.split("test")}) == len(infos[0]["7"]["test"])


@pytest.mark.parametrize("name", ["llcm", "regdb"])
def test_rewrites_are_byte_identical(tiny_world_dir, layouts, tmp_path, name):
    write_layout(LayoutConfig(data=tiny_world_dir, to=name, out=tmp_path / "again", copy=True))
    assert listing(tmp_path / "again") == listing(layouts[name])
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_refusals_write_nothing(tiny_world_dir, tmp_path, capsys):
    from dive.cli import main

    with pytest.raises(InputError, match="not a SynthVI world"):
        write_layout(LayoutConfig(data=tiny_world_dir / "vi", to="llcm", out=tmp_path / "a"))
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        write_layout(LayoutConfig(data=tiny_world_dir, to="regdb", out=full))
    assert [p.name for p in full.iterdir()] == ["keep.txt"]
    with pytest.raises(InputError, match="inside the SynthVI world"):
        write_layout(LayoutConfig(data=tiny_world_dir, to="llcm", out=tiny_world_dir / "llcm"))
    assert not (tiny_world_dir / "llcm").exists()
    with pytest.raises(ValueError, match="regdb_images"):
        LayoutConfig(data=tiny_world_dir, to="regdb", out=tmp_path / "b", regdb_images=0)
    assert main(["data", "layout", "--data", str(tmp_path), "--to", "llcm", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "not a SynthVI world" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]  # no output, no temporary folder


def test_cli_writes_into_an_empty_folder(tiny_world_dir, tmp_path, capsys):
    from dive.cli import main

    out = tmp_path / "regdb"
    out.mkdir()
    assert main(["data", "layout", "--data", str(tiny_world_dir), "--to", "regdb", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "RegDB layout" in printed and "--regdb-trial 1" in printed
    assert detect_format(out) == "regdb" and (out / "idx" / "test_thermal_10.txt").is_file()


# ------------------------------------------------------------------------------------------------
# the bench's LLCM / RegDB table
# ------------------------------------------------------------------------------------------------


def _stand_in_runs(cfg, keys, seed: int = 0) -> None:
    """Run folders holding a tiny untrained network each (what the bench's ReID runs leave)."""
    from dive.bench.jobs import reid_run_dir
    from dive.reid.checkpoints import CHECKPOINT_FORMAT, save_checkpoint
    from dive.reid.model import ModelSpec, build_model

    spec = ModelSpec(num_classes=5, base_width=4, height=32, width=16)
    import torch

    for i, (t, m, s) in enumerate(keys):
        torch.manual_seed(seed + i)
        model = build_model(spec)
        save_checkpoint(reid_run_dir(cfg, t, m, s) / "model", model, {"format": CHECKPOINT_FORMAT,
                                                                       "model_spec": spec.to_dict()})


def test_bench_scores_tables_1_2_models_on_llcm_and_regdb_and_reuses_them(tiny_world_dir, tmp_path, monkeypatch):
    from dive.bench import protocols
    from dive.bench.config import BenchConfig

    cfg = BenchConfig(out=tmp_path / "bench", data=tiny_world_dir, seeds=(0, 1), methods=("agw",), threads=1)
    keys = [("baseline", "agw", 0), ("baseline", "agw", 1), ("dive-camera", "agw", 0)]
    _stand_in_runs(cfg, keys)
    reports = {f"{t}|{m}|{s}": {} for t, m, s in keys} | {"dive-modality|agw|0": {}}  # an ablation: not scored
    section = protocols.protocol_tables(cfg, reports)
    res = json.loads((cfg.out / "protocols" / "baseline-agw-seed1.json").read_text())["results"]
    assert set(res) == {"llcm-v2i", "llcm-i2v", "regdb-v2t", "regdb-t2v"}
    assert res["regdb-v2t"]["trials"] == 10 and res["regdb-v2t"]["distinct_splits"] == 1
    assert res["regdb-v2t"]["num_queries"] == 10 * 2  # 2 test ids x 10 visible images
    assert res["llcm-i2v"]["trials"] == 10 and all(0 <= res[p]["rank1"] <= 100 for p in res)
    assert sorted(p.name for p in (cfg.out / "protocols").iterdir()) == [
        "baseline-agw-seed0.json", "baseline-agw-seed1.json", "dive-camera-agw-seed0.json"]
    text = "\n".join(section["lines"])
    assert text.startswith("## Table 1 on the LLCM and RegDB protocols") and "LLCM VIS→IR R1" in text
    rows = section["table"]["methods"]["agw"]
    assert rows["baseline"]["seeds"] == [0, 1] and rows["dive-camera"]["seeds"] == [0]
    b = rows["baseline"]["regdb-t2v/mAP"]
    assert b["values"] == [json.loads((cfg.out / "protocols" / f"baseline-agw-seed{s}.json").read_text())
                           ["results"]["regdb-t2v"]["mAP"] for s in (0, 1)]
    assert "± " in next(line for line in section["lines"] if line.startswith("| baseline"))
    assert "repeats" in text  # the RegDB padding is stated

    # rerun: every score reused; new weights in one run: only that one is scored again
    scored = []
    real = protocols.score_model
    monkeypatch.setattr(protocols, "score_model", lambda run, *a, **k: scored.append(run.name) or real(run, *a, **k))
    assert protocols.protocol_tables(cfg, reports)["table"]["methods"] == section["table"]["methods"]
    assert scored == []
    _stand_in_runs(cfg, [("dive-camera", "agw", 0)], seed=100)  # other weights
    protocols.protocol_tables(cfg, reports)
    assert scored == ["dive-camera-agw-seed0"]


def test_bench_states_a_model_it_cannot_score(tiny_world_dir, tmp_path):
    from dive.bench import protocols
    from dive.bench.config import BenchConfig
    from dive.bench.tables import write_tables

    cfg = BenchConfig(out=tmp_path / "bench", data=tiny_world_dir, seeds=(0,), methods=("agw",), threads=1)
    assert protocols.protocol_tables(cfg, {}) is None  # no Tables 1/2 runs: no section, no layouts
    assert not (cfg.out / "layouts").exists()
    section = protocols.protocol_tables(cfg, {"baseline|agw|0": {}})  # its run folder has no model
    assert "Not scored:" in section["lines"] and "model.json missing" in section["table"]["skipped"][0]
    os.makedirs(cfg.out, exist_ok=True)
    result = write_tables(cfg, {}, {}, {}, {"total": 1.0}, None, section)
    assert result["tables"]["protocols"]["skipped"] and "on the LLCM and RegDB protocols" in (
        cfg.out / "tables.md").read_text()
