"""`dive export`: the expanded set as a new SYSU-MM01 tree that the project's own reader reads back,
inputs untouched, byte-identical re-runs, kill-and-resume, AGW arrays, LLCM lists, manifest."""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dive.data.readers.sysu_mm01 import read_id_file
from dive.data.registry import detect_format, load_dataset
from dive.export import ExportConfig, export_dataset, map_camera
from dive.export.sysu import DONE_FILE, MANIFEST_FIELDS, PARTIAL_FILE

N_PER_CAM = 2
AGW = dict(agw_arrays=True, agw_height=32, agw_width=16, llcm_idx=True)


def tree_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def write_synthetic(folder: Path, ids: list[int], cams: tuple[int, ...], *, full_rows: bool = True,
                    dataset: str = "synthvi_ext") -> list[dict]:
    """A folder in `dive generate`'s format (PNG images + manifest.jsonl), no diffusion involved."""
    rows = []
    for pid in ids:
        token = f"<{dataset}-{pid:04d}>"
        for cam in cams:
            for i in range(N_PER_CAM):
                rel = f"images/{dataset}-{pid:04d}/c{cam}tok/{i:04d}.png"
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                level = (37 * pid + 11 * cam + 5 * i) % 256
                Image.fromarray(np.full((16, 8, 3), level, np.uint8)).save(folder / rel)
                row = {"path": rel, "dataset": dataset, "pid": pid, "camid": cam, "modality": "infrared"}
                if full_rows:
                    row |= {"identity_token": token, "camera_token": f"c{cam}tok", "index": i,
                            "prompt": f"a c{cam}tok photo of {token} person", "seed": 1000 * pid + 10 * cam + i,
                            "steps": 2, "guidance": 1.0, "negative_prompt": "", "scheduler": "DPMSolverMultistep",
                            "checkpoint_hash": "0123abcd", "height": 16, "width": 8}
                rows.append(row)
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    return rows


@pytest.fixture(scope="module")
def world(tiny_world_dir):
    ds = load_dataset("synthvi", tiny_world_dir)
    vi = [r for r in ds.records if r.dataset == "synthvi_vi"]
    ext = [r for r in ds.records if r.dataset == "synthvi_ext" and r.split == "train"]
    return {"root": tiny_world_dir, "vi": vi, "ext": ext, "ext_ids": sorted({r.pid for r in ext})}


@pytest.fixture(scope="module")
def syn_dir(world, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("syn") / "generated"
    write_synthetic(folder, world["ext_ids"][:2], (3, 6))
    return folder


@pytest.fixture(scope="module")
def exported(world, syn_dir, tmp_path_factory):
    before = tree_hashes(world["root"]) | {f"syn/{k}": v for k, v in tree_hashes(syn_dir).items()}
    out = tmp_path_factory.mktemp("export") / "sysu_plus"
    cfg = ExportConfig(data=world["root"], out=out, synthetic=(syn_dir,), **AGW)
    seen = []
    summary = export_dataset(cfg, progress=False, on_progress=lambda d, t: seen.append((d, t)))
    return {"cfg": cfg, "out": out, "summary": summary, "before": before, "progress": seen}


def test_export_reads_back_with_the_sysu_reader(world, exported):
    out, summary = exported["out"], exported["summary"]
    assert summary["complete"] and (out / DONE_FILE).exists() and not (out / PARTIAL_FILE).exists()
    assert detect_format(out) == "sysu_mm01"
    ds = load_dataset("sysu_mm01", out)
    max_vi = max(r.pid for r in world["vi"])
    chosen = world["ext_ids"][:2]
    new_ids = {chosen[0]: max_vi + 1, chosen[1]: max_vi + 2}  # sorted external ids, after the largest VI id

    expected = Counter((r.split, r.pid, r.camid, r.modality.value) for r in world["vi"])
    for r in world["ext"]:
        if r.pid in new_ids:
            expected[("train", new_ids[r.pid], map_camera("visible", r.camid, keep_sysu=False), "visible")] += 1
    for pid in chosen:
        for cam in (3, 6):
            expected[("train", new_ids[pid], cam, "infrared")] += N_PER_CAM
    got = Counter((r.split, r.pid, r.camid, r.modality.value) for r in ds.records)
    assert got == expected
    assert {r.pid for r in ds.records if r.pid > max_vi} == set(new_ids.values())
    # VI images are byte-identical copies under their own names (SynthVI writes JPEGs)
    for r in world["vi"][:5]:
        rel = Path(r.path).relative_to(world["root"] / "vi")
        assert (out / rel).read_bytes() == Path(r.path).read_bytes()
    # every image is a real file (no links); synthetic PNGs became RGB JPEGs with 3 equal-ish channels
    files = [p for p in out.rglob("*.jpg")]
    assert files and not any(p.is_symlink() for p in files)
    ir = Image.open(out / f"cam3/{new_ids[chosen[0]]:04d}/0001.jpg")
    assert ir.format == "JPEG" and ir.mode == "RGB"
    assert exported["progress"][-1][0] == exported["progress"][-1][1]
    cams = exported["summary"]["camera_mapping"]
    assert cams["synthetic"] == {"cam3 (infrared)": "cam3", "cam6 (infrared)": "cam6"}
    assert all(v in ("cam1", "cam2", "cam4", "cam5") for v in cams["external"].values())


def test_id_files_updated_in_the_copy_only(world, exported):
    out, root = exported["out"], world["root"] / "vi"
    max_vi = max(r.pid for r in world["vi"])
    train_in = read_id_file(root / "exp" / "train_id.txt")
    train_out = read_id_file(out / "exp" / "train_id.txt")
    assert train_out == train_in + [max_vi + 1, max_vi + 2]
    for split in ("val", "test"):
        assert read_id_file(out / "exp" / f"{split}_id.txt") == read_id_file(root / "exp" / f"{split}_id.txt")
    assert read_id_file(root / "exp" / "train_id.txt") == train_in


def test_inputs_unmodified(world, syn_dir, exported):
    after = tree_hashes(world["root"]) | {f"syn/{k}": v for k, v in tree_hashes(syn_dir).items()}
    assert after == exported["before"]


def test_manifest_rows_and_fields(exported):
    out = exported["out"]
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    with open(out / "manifest.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    images = sorted(p.relative_to(out).as_posix() for p in out.glob("cam*/*/*.*"))
    assert [r["path"] for r in rows] == images == [r["path"] for r in csv_rows]
    assert list(rows[0]) == list(MANIFEST_FIELDS) == list(csv_rows[0])
    for r, c in zip(rows, csv_rows):
        assert c["path"] == r["path"] and c["camera_token"] == (r["camera_token"] or "")
        assert hashlib.sha256((out / r["path"]).read_bytes()).hexdigest() == r["sha256"]
        assert Image.open(out / r["path"]).size == (r["width"], r["height"])
        assert r["path"].startswith(f"cam{r['camera']}/{r['pid']:04d}/")
    syn = [r for r in rows if r["origin"] == "synthetic"]
    real = [r for r in rows if r["origin"] == "real"]
    assert len(syn) == 2 * 2 * N_PER_CAM and all(r["modality"] == "infrared" for r in syn)
    assert all(r["camera_token"] and r["prompt"] and r["checkpoint_hash"] == "0123abcd" and r["seed"] is not None
               and r["steps"] == 2 and r["scheduler"] and r["identity_token"] for r in syn)
    assert all(r["camera_token"] is None and r["prompt"] is None for r in real)
    # real images of the new ids carry the identity token the synthetic source gave them
    new_real = [r for r in real if r["source"] == "external"]
    assert new_real and all(r["identity_token"] == f"<synthvi_ext-{r['source_pid']:04d}>" for r in new_real)
    assert {r["source"] for r in rows} == {"vi", "external", "synthetic:0"}


def test_agw_arrays_and_llcm_lists(exported):
    out = exported["out"]
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    train_val = sorted({r["pid"] for r in rows if r["split"] in ("train", "val")})
    label_of = {pid: i for i, pid in enumerate(train_val)}
    for mod, (img_name, lab_name), idx in (("visible", ("train_rgb_resized_img.npy", "train_rgb_resized_label.npy"), "idx/train_vis.txt"),
                                          ("infrared", ("train_ir_resized_img.npy", "train_ir_resized_label.npy"), "idx/train_nir.txt")):
        img, lab = np.load(out / img_name), np.load(out / lab_name)
        mine = [r for r in rows if r["modality"] == mod and r["split"] in ("train", "val")]
        assert img.dtype == np.uint8 and img.shape == (len(mine), 32, 16, 3)
        assert lab.dtype == np.int64 and lab.shape == (len(mine),)
        assert list(lab) == sorted(lab)  # ascending id order
        lines = [line.split(" ") for line in (out / idx).read_text().splitlines()]
        assert [int(b) for _, b in lines] == lab.tolist()
        for rel, label in lines:
            pid = int(rel.split("/")[1])
            assert label_of[pid] == int(label)
            assert (out / rel).is_file()
        assert sorted(a for a, _ in lines) == sorted(r["path"] for r in mine)
        if mod == "infrared":  # IR stored as 3 channels with (near) equal values
            assert np.abs(img[..., 0].astype(int) - img[..., 2]).max() <= 8
    assert set(np.load(out / "train_rgb_resized_label.npy").tolist()) == set(range(len(train_val)))
    assert exported["summary"]["counts"]["labels"] == len(train_val)


def test_rerun_is_idempotent(exported):
    out = exported["out"]
    before = tree_hashes(out)
    again = export_dataset(exported["cfg"], progress=False)
    assert again["complete"] and again["written"] == 0 and again["removed"] == 0
    assert tree_hashes(out) == before
    train = read_id_file(out / "exp" / "train_id.txt")
    assert len(train) == len(set(train))


@pytest.mark.parametrize("stop_at", ["images", "arrays"])
def test_kill_and_resume_matches_uninterrupted(exported, tmp_path, stop_at):
    n_images = exported["summary"]["counts"]["images"]
    k = 7 if stop_at == "images" else n_images + 3
    out = tmp_path / "resumed"
    cfg = ExportConfig(**{**exported["cfg"].__dict__, "out": out})
    state = {"done": 0}

    def on_progress(done, total):
        state["done"] = done

    res = export_dataset(cfg, progress=False, should_stop=lambda: state["done"] >= k, on_progress=on_progress)
    assert not res["complete"] and res["done"] == k
    assert not (out / DONE_FILE).exists() and (out / PARTIAL_FILE).exists()
    if stop_at == "images":
        assert len(list(out.glob("cam*/*/*.jpg"))) == k
    else:
        assert not (out / "train_ir_resized_img.npy").exists() and not list(out.glob(".*.tmp"))
    # debris a real kill can leave: an atomic write's temporary file
    (out / "cam3").mkdir(exist_ok=True)
    (out / "cam3" / ".0001.jpg.x1y2.tmp").write_bytes(b"half")
    done = export_dataset(cfg, progress=False)
    assert done["complete"]
    assert tree_hashes(out) == tree_hashes(exported["out"])


def test_refuses_to_write_into_or_around_an_input(world, syn_dir, tmp_path):
    root = world["root"]
    for bad in (root, root / "vi", root / "exports" / "x", syn_dir, syn_dir / "out", root.parent):
        with pytest.raises(ValueError, match="outside every input"):
            export_dataset(ExportConfig(data=root, out=bad, synthetic=(syn_dir,)), progress=False)
    assert not (root / "exports").exists() and not (syn_dir / "out").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a `dive export` folder"):
        export_dataset(ExportConfig(data=root, out=foreign, synthetic=(syn_dir,)), progress=False)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_other_settings_need_force_and_leave_no_stale_files(world, syn_dir, tmp_path):
    out = tmp_path / "exp"
    first = export_dataset(ExportConfig(data=world["root"], out=out, synthetic=(syn_dir,), external_ids="all",
                                        allow_single_modality=True),
                           progress=False)
    assert first["counts"]["new_ids"] == len(world["ext_ids"])
    cfg = ExportConfig(data=world["root"], out=out, synthetic=(syn_dir,))
    with pytest.raises(FileExistsError, match="other settings"):
        export_dataset(cfg, progress=False)
    cfg.force = True
    second = export_dataset(cfg, progress=False)
    assert second["counts"]["new_ids"] == 2 and second["removed"] > 0
    fresh = tmp_path / "fresh"
    export_dataset(ExportConfig(data=world["root"], out=fresh, synthetic=(syn_dir,)), progress=False)
    assert tree_hashes(out) == tree_hashes(fresh)


def test_camera_mapping_is_documented_rule():
    # external visible cameras round-robin onto SYSU's visible cameras
    assert [map_camera("visible", c, keep_sysu=False) for c in range(1, 7)] == [1, 2, 4, 5, 1, 2]
    # a synthetic image keeps a SYSU camera of its modality, other cameras are folded in
    assert [map_camera("infrared", c, keep_sysu=True) for c in (3, 6, 1, 2, 9)] == [3, 6, 3, 6, 3]
    assert [map_camera("visible", c, keep_sysu=True) for c in (1, 2, 4, 5, 3, 6)] == [1, 2, 4, 5, 4, 2]


def test_cli_repeated_synthetic_sources_and_minimal_rows(world, syn_dir, tmp_path, capsys):
    """A baseline folder with only the five required keys exports through the same code."""
    from dive.cli import main

    base = tmp_path / "gray"
    write_synthetic(base, world["ext_ids"][2:3], (1,), full_rows=False)  # camera 1 (not SYSU IR) -> cam3
    out = tmp_path / "exp"
    rc = main(["export", "--data", str(world["root"]), "--out", str(out), "--synthetic", str(syn_dir),
               "--synthetic", str(base), "--image-format", "keep", "--manifest", "csv"])
    assert rc == 0 and "exported" in capsys.readouterr().out
    meta = json.loads((out / DONE_FILE).read_text())
    assert [s["source"] for s in meta["inputs"]["synthetic"]] == ["synthetic:0", "synthetic:1"]
    assert meta["counts"]["new_ids"] == 3 and meta["camera_mapping"]["synthetic"]["cam1 (infrared)"] == "cam3"
    assert (out / "manifest.csv").exists() and not (out / "manifest.jsonl").exists()
    pngs = sorted(out.glob("cam*/*/*.png"))
    assert len(pngs) == 2 * 2 * N_PER_CAM + N_PER_CAM  # keep: the PNG bytes are copied under .png
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    # a synthetic row naming a dataset that is no input is a clear error
    bad = tmp_path / "bad"
    write_synthetic(bad, [1], (3,), full_rows=False)
    (bad / "manifest.jsonl").write_text((bad / "manifest.jsonl").read_text().replace("synthvi_ext", "market1501"))
    rc = main(["export", "--data", str(world["root"]), "--out", str(tmp_path / "e2"), "--synthetic", str(bad)])
    err = capsys.readouterr().err
    assert rc == 2 and "market1501" in err and "Traceback" not in err


def test_sysu_folder_with_external_market_and_vi_synthetics(world, tmp_path):
    """A SYSU-MM01 folder + --external Market folder (the real-data path); synthetic images of a VI
    training id join that id after its own files; a VI test id is refused."""
    root = world["root"]
    syn = tmp_path / "syn"
    write_synthetic(syn, world["ext_ids"][:1], (3,), dataset="market1501")
    vi_train = read_id_file(root / "vi" / "exp" / "train_id.txt")[0]
    vi_rows = write_synthetic(tmp_path / "vi_syn", [vi_train], (6,), dataset="sysu_mm01")
    out = tmp_path / "exp"
    cfg = ExportConfig(data=root / "vi", external=root / "external", out=out, synthetic=(syn, tmp_path / "vi_syn"))
    summary = export_dataset(cfg, progress=False)
    max_vi = max(r.pid for r in world["vi"])
    assert summary["inputs"]["external"]["format"] == "market1501"
    assert [d["id"] for d in summary["new_ids"]] == [max_vi + 1]
    own = sorted(p.name for p in (root / "vi" / "cam6" / f"{vi_train:04d}").iterdir())
    exported = sorted(p.name for p in (out / "cam6" / f"{vi_train:04d}").iterdir())
    n = len(own)
    assert exported == own + [f"{i:04d}.jpg" for i in range(n + 1, n + 1 + len(vi_rows))]
    ds = load_dataset("sysu_mm01", out)
    assert sum(r.pid == max_vi + 1 and r.camid == 3 for r in ds.records) == N_PER_CAM
    assert sum(r.pid == max_vi + 1 and r.modality.value == "visible" for r in ds.records) == \
        sum(r.pid == world["ext_ids"][0] for r in world["ext"])
    test_id = read_id_file(root / "vi" / "exp" / "test_id.txt")[0]
    write_synthetic(tmp_path / "leak", [test_id], (3,), dataset="sysu_mm01")
    with pytest.raises(ValueError, match="test id"):
        export_dataset(ExportConfig(data=root / "vi", out=tmp_path / "e2", synthetic=(tmp_path / "leak",)),
                       progress=False)
    assert not (tmp_path / "e2").exists()


def test_exported_tree_is_a_reid_training_source(exported):
    from dive.reid.run import ReIDDataConfig, load_reid_data

    data = load_reid_data(ReIDDataConfig(data=exported["out"], train_splits=("train", "val")))
    ids = {r.pid for r in data.train}
    new = {d["id"] for d in exported["summary"]["new_ids"]}
    assert new <= ids and {r.modality.value for r in data.train if r.pid in new} == {"visible", "infrared"}
    assert len({r.pid for r in data.test}) == exported["summary"]["counts"]["ids_per_split"]["test"]


@pytest.mark.slow  # only through the test suite's shared micro DiVE checkpoint (shared with test_generate)
def test_real_generate_output_exports(micro_base, micro_dive_run, tiny_world_dir, tmp_path):
    from dive.generate.run import GenerateConfig, generate

    gen_out = tmp_path / "gen"
    generate(GenerateConfig(base=micro_base, checkpoint=micro_dive_run / "final", out=gen_out, n=1, steps=2,
                            min_images=0, top_k=1, batch_size=4), progress=False)
    rows = [json.loads(line) for line in (gen_out / "manifest.jsonl").read_text().splitlines()]
    out = tmp_path / "exp"
    summary = export_dataset(ExportConfig(data=tiny_world_dir, out=out, synthetic=(gen_out,)), progress=False)
    assert summary["counts"]["per_origin"]["synthetic"] == len(rows) and summary["counts"]["new_ids"] == 1
    assert summary["inputs"]["synthetic"][0]["generate"]["checkpoint_hash"] == rows[0]["checkpoint_hash"]
    ds = load_dataset("sysu_mm01", out)
    new_id = summary["new_ids"][0]["id"]
    syn_cams = sorted(r.camid for r in ds.records if r.pid == new_id and r.modality.value == "infrared")
    assert syn_cams == sorted(r["camid"] for r in rows)
    man = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert {r["seed"] for r in man if r["origin"] == "synthetic"} == {r["seed"] for r in rows}
