"""`dive export` of LLCM and RegDB trees in their own layouts: the output is detected and read as
the same format, with the added ids in the training lists and the test split unchanged; inputs
untouched, manifest rows, byte-identical reruns, stop-and-resume and one-line refusals."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from dive.cli import main
from dive.data.registry import detect_format, load_dataset
from dive.export import ExportConfig, export_dataset
from dive.export.files import DONE_FILE, PARTIAL_FILE
from dive.export.llcm import export_camera
from fake_layouts import make_llcm_tree, make_market_tree, make_regdb_tree
from test_export import N_PER_CAM, write_synthetic

MARKET_TRAIN = (2, 7)  # Market-1501 training ids; one image per camera 1..3
LLCM_NAME = re.compile(r"(\d{4})_c(\d{2})_s\d{6}_f\d+_([vn])\.jpg")


def tree_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def rel_rows(ds, root: Path, split: str) -> Counter:
    """(relative path, pid, camera, modality) of a reader's records of one split."""
    return Counter((Path(r.path).relative_to(root).as_posix(), r.pid, r.camid, r.modality.value)
                   for r in ds.records if r.split == split)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("layouts") / "in"  # outputs go beside it
    make_llcm_tree(root / "LLCM", train_ids=(1, 2), test_ids=(3, 4))
    make_regdb_tree(root / "RegDB", n_ids=4, images_per_id=2, trials=(1, 2))
    make_market_tree(root / "Market", train_ids=MARKET_TRAIN)
    write_synthetic(root / "gen", list(MARKET_TRAIN), (3, 6), dataset="market1501")
    write_synthetic(root / "gen_llcm", [1], (5,), dataset="llcm")  # an LLCM training id
    return {"root": root, "before": tree_hashes(root)}


@pytest.fixture(scope="module")
def llcm_export(inputs) -> dict:
    root = inputs["root"]
    cfg = ExportConfig(data=root / "LLCM", external=root / "Market", out=root.parent / "out_llcm",
                       synthetic=(root / "gen", root / "gen_llcm"))
    return {"cfg": cfg, "summary": export_dataset(cfg, progress=False)}


@pytest.fixture(scope="module")
def regdb_export(inputs) -> dict:
    root = inputs["root"]
    cfg = ExportConfig(data=root / "RegDB", external=root / "Market", out=root.parent / "out_regdb", synthetic=(root / "gen",))
    return {"cfg": cfg, "summary": export_dataset(cfg, progress=False)}


def test_llcm_export_reads_back_as_llcm_with_new_training_ids(inputs, llcm_export):
    root, out, summary = inputs["root"], llcm_export["cfg"].out, llcm_export["summary"]
    assert summary["complete"] and summary["layout"] == "llcm"
    assert (out / DONE_FILE).is_file() and not (out / PARTIAL_FILE).exists()
    assert detect_format(out) == "llcm"
    src, back = load_dataset("llcm", root / "LLCM"), load_dataset("llcm", out)
    assert rel_rows(back, out, "test") == rel_rows(src, root / "LLCM", "test")  # the test split as it was
    new = {d["pid"]: d["id"] for d in summary["new_ids"]}
    assert new == {2: 5, 7: 6}  # after the largest LLCM id (4), in external id order
    added = rel_rows(back, out, "train") - rel_rows(src, root / "LLCM", "train")
    assert not rel_rows(src, root / "LLCM", "train") - rel_rows(back, out, "train")  # every input image kept
    per = Counter((pid, cam, mod) for (_, pid, cam, mod), n in added.items() for _ in range(n))
    expected = Counter()
    for pid in MARKET_TRAIN:
        for cam in (1, 2, 3):  # Market cameras 1..3 keep their number in LLCM's 1..9
            expected[(new[pid], cam, "visible")] += 1
        for cam in (3, 6):
            expected[(new[pid], cam, "infrared")] += N_PER_CAM
    expected[(1, 5, "infrared")] += N_PER_CAM  # synthetic images of LLCM id 1 join it
    assert per == expected
    for rel, pid, cam, mod in added:
        folder, name = rel.rsplit("/", 1)
        assert folder == f"{'train_vis' if mod == 'visible' else 'train_nir'}/cam{cam}/{pid:04d}"
        m = LLCM_NAME.fullmatch(name)
        assert m and (int(m[1]), int(m[2]), m[3]) == (pid, cam, mod[0] if mod == "visible" else "n")
    # labels: the lists' own, then the new ids after the largest (two training ids: 0, 1)
    assert {back.labels[str(out / rel)] for rel, pid, *_ in added if pid in new.values()} == {2, 3}
    assert {back.labels[str(out / rel)] for rel, pid, *_ in added if pid == 1} == {0}
    assert [d["labels"] for d in summary["new_ids"]] == [{"label": 2}, {"label": 3}]
    assert summary["counts"]["ids_per_split"] == {"train": 4, "test": 2}


def test_llcm_cameras_fold_onto_its_nine():
    assert [export_camera(c) for c in (1, 6, 9, 10, 12, 18)] == [1, 6, 9, 1, 3, 9]


def test_llcm_lists_keep_their_lines_and_list_the_new_files(inputs, llcm_export):
    root, out = inputs["root"] / "LLCM", llcm_export["cfg"].out
    for name, tag in (("train_vis.txt", "v"), ("train_nir.txt", "n")):
        old = (root / "idx" / name).read_text().splitlines()
        lines = (out / "idx" / name).read_text().splitlines()
        assert lines[:len(old)] == old
        new = [line.split() for line in lines[len(old):]]
        assert new and all((out / rel).is_file() and LLCM_NAME.fullmatch(rel.rsplit("/", 1)[1])[3] == tag
                           for rel, _ in new)
        assert llcm_export["summary"]["lists"][f"idx/{name}"] == {"lines": len(lines), "added": len(new)}
    # the input's images are copies of the same bytes under the same paths, never links
    for p in (root / "test_nir").rglob("*.jpg"):
        q = out / p.relative_to(root)
        assert q.read_bytes() == p.read_bytes() and q.stat().st_ino != p.stat().st_ino


def test_manifest_rows_carry_the_generation_settings(inputs, llcm_export):
    out = llcm_export["cfg"].out
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    images = sorted(p.relative_to(out).as_posix() for p in out.glob("t*_*/cam*/*/*.*"))
    assert sorted(r["path"] for r in rows) == images
    assert (out / "manifest.csv").read_text().count("\n") == len(rows) + 1
    syn = [r for r in rows if r["origin"] == "synthetic"]
    assert len(syn) == (len(MARKET_TRAIN) * 2 + 1) * N_PER_CAM
    assert all(r["prompt"] and r["seed"] is not None and r["checkpoint_hash"] == "0123abcd" and r["split"] == "train"
               and r["modality"] == "infrared" and r["path"].startswith("train_nir/") for r in syn)
    assert {r["source"] for r in syn} == {"synthetic:0", "synthetic:1"}
    ext = [r for r in rows if r["source"] == "external"]
    assert len(ext) == len(MARKET_TRAIN) * 3 and all(r["source_dataset"] == "market1501" for r in ext)
    for r in rows:
        assert hashlib.sha256((out / r["path"]).read_bytes()).hexdigest() == r["sha256"]


def test_regdb_export_appends_new_ids_to_every_trial(inputs, regdb_export):
    root, out, summary = inputs["root"], regdb_export["cfg"].out, regdb_export["summary"]
    assert summary["complete"] and summary["layout"] == "regdb" and detect_format(out) == "regdb"
    new = sorted(d["id"] for d in summary["new_ids"])
    assert new == [5, 6]  # folder numbers after RegDB's largest (4)
    for trial in (1, 2):
        src, back = load_dataset("regdb", root / "RegDB", trial=trial), load_dataset("regdb", out, trial=trial)
        assert rel_rows(back, out, "test") == rel_rows(src, root / "RegDB", "test")
        added = rel_rows(back, out, "train") - rel_rows(src, root / "RegDB", "train")
        assert sum(rel_rows(back, out, "train").values()) == sum(rel_rows(src, root / "RegDB", "train").values()) + \
            sum(added.values())
        # two training ids labelled 0, 1 in each trial: the added ids are 2 and 3
        per = Counter((pid, mod) for (_, pid, _, mod), n in added.items() for _ in range(n))
        assert per == {(2, "visible"): 3, (3, "visible"): 3, (2, "infrared"): 2 * N_PER_CAM,
                       (3, "infrared"): 2 * N_PER_CAM}
        assert all(re.fullmatch(r"(Visible|Thermal)/External/\d+/external_[vt]_\d{5}_\d+\.jpg", rel)
                   for rel, *_ in added)
        assert all(rel.startswith("Visible/" if mod == "visible" else "Thermal/") and cam == (1 if mod == "visible"
                   else 2) for rel, _, cam, mod in added)
        for split in ("test",):  # test lists are the input's bytes
            for word in ("visible", "thermal"):
                name = f"idx/{split}_{word}_{trial}.txt"
                assert (out / name).read_bytes() == (root / "RegDB" / name).read_bytes()
    assert summary["new_ids"][0]["labels"] == {"trial 1": 2, "trial 2": 2}
    assert summary["counts"]["trials"] == [1, 2]


def test_inputs_are_never_modified(inputs, llcm_export, regdb_export):
    assert llcm_export["summary"]["complete"] and regdb_export["summary"]["complete"]
    assert tree_hashes(inputs["root"]) == inputs["before"]


@pytest.mark.parametrize("which", ["llcm", "regdb"])
def test_rerun_is_idempotent(llcm_export, regdb_export, which):
    exp = {"llcm": llcm_export, "regdb": regdb_export}[which]
    out = exp["cfg"].out
    before = tree_hashes(out)
    again = export_dataset(exp["cfg"], progress=False)
    assert again["complete"] and again["written"] == 0 and again["removed"] == 0
    assert again["skipped"] == exp["summary"]["counts"]["images"]
    assert tree_hashes(out) == before


def test_stopped_llcm_export_resumes_to_the_same_tree(inputs, llcm_export):
    out = inputs["root"].parent / "resumed"
    cfg = ExportConfig(**{**llcm_export["cfg"].__dict__, "out": out})
    state = {"done": 0}
    res = export_dataset(cfg, progress=False, should_stop=lambda: state["done"] >= 9,
                         on_progress=lambda done, total: state.update(done=done))
    assert not res["complete"] and res["done"] == 9
    assert not (out / DONE_FILE).exists() and (out / PARTIAL_FILE).exists()
    (out / "train_nir").mkdir(exist_ok=True)
    (out / "train_nir" / ".x.jpg.a1b2.tmp").write_bytes(b"half")  # debris of a killed atomic write
    assert export_dataset(cfg, progress=False)["complete"]
    assert tree_hashes(out) == tree_hashes(llcm_export["cfg"].out)


def test_cli_prints_the_layout(inputs, capsys):
    root = inputs["root"]
    rc = main(["export", "--data", str(root / "RegDB"), "--external", str(root / "Market"), "--synthetic",
               str(root / "gen"), "--out", str(root.parent / "cli_regdb"), "--manifest", "csv"])
    assert rc == 0 and "in RegDB layout" in capsys.readouterr().out
    out = root.parent / "cli_regdb"
    assert (out / "manifest.csv").is_file() and not (out / "manifest.jsonl").exists()


def test_refusals_name_the_file_and_write_nothing(inputs, tmp_path, capsys):
    root = inputs["root"]

    def run(*args) -> str:
        assert main(["export", *map(str, args), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert not (tmp_path / "out").exists()
        return err

    # an LLCM tree missing a list (read as LLCM) names the missing file
    broken = tmp_path / "broken"
    make_llcm_tree(broken)
    (broken / "idx" / "train_nir.txt").unlink()
    assert str(broken / "idx" / "train_nir.txt") in run("--data", broken, "--format", "llcm")
    # a RegDB trial with a list missing
    regdb = tmp_path / "regdb"
    make_regdb_tree(regdb, trials=(1, 2))
    (regdb / "idx" / "test_thermal_2.txt").unlink()
    assert str(regdb / "idx" / "test_thermal_2.txt") in run("--data", regdb, "--synthetic", root / "gen",
                                                            "--external", root / "Market")
    # synthetic images of a test id, of RegDB's own ids, of an external set not given
    write_synthetic(tmp_path / "test_id", [3], (5,), dataset="llcm")
    assert "VI test id" in run("--data", root / "LLCM", "--synthetic", tmp_path / "test_id")
    write_synthetic(tmp_path / "regdb_ids", [1], (2,), dataset="regdb")
    assert "RegDB's own ids" in run("--data", root / "RegDB", "--synthetic", tmp_path / "regdb_ids")
    assert "--external" in run("--data", root / "LLCM", "--synthetic", root / "gen")
    assert "SYSU-MM01 exports" in run("--data", root / "LLCM", "--synthetic", root / "gen_llcm", "--agw-arrays")
    # ids that would end with infrared images only
    assert "infrared only" in run("--data", root / "LLCM", "--external", root / "Market", "--synthetic", root / "gen",
                                  "--no-external-images")
