"""`dive export` refuses, before writing anything, synthetic rows of ids the external dataset
lacks and ids that would end with one modality; a damaged image stops it with one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dive.cli import main
from dive.data.registry import load_dataset
from dive.export import ExportConfig, export_dataset
from dive.export.files import DONE_FILE
from test_export import write_synthetic


@pytest.fixture(scope="module")
def ext_ids(tiny_world_dir) -> list[int]:
    ds = load_dataset("synthvi", tiny_world_dir)
    return sorted({r.pid for r in ds.records if r.dataset == "synthvi_ext" and r.split == "train"})


def _export(world, out, *syn, extra=()):
    return main(["export", "--data", str(world), "--out", str(out), "--synthetic", *map(str, syn), *extra])


def test_ids_missing_from_the_external_set_are_refused_before_writing(tiny_world_dir, ext_ids, tmp_path, capsys):
    syn = tmp_path / "syn"
    write_synthetic(syn, [ext_ids[0], 599, 777], (3,))
    out = tmp_path / "out"
    assert _export(tiny_world_dir, out, syn) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(syn / "manifest.jsonl") in err and "2 ids: 599, 777" in err
    assert not out.exists()  # nothing written, not even the folder


def test_single_modality_ids_are_refused_unless_allowed(tiny_world_dir, ext_ids, tmp_path, capsys):
    syn = tmp_path / "syn"
    write_synthetic(syn, ext_ids[:1], (3, 6))
    out = tmp_path / "out"
    # --external-ids all: the ids without synthetic images would be visible only
    assert _export(tiny_world_dir, out, syn, extra=["--external-ids", "all"]) == 2
    err = capsys.readouterr().err
    rest = ", ".join(str(p) for p in ext_ids[1:])
    assert err.count("\n") == 1 and f"visible only: synthvi_ext {len(ext_ids) - 1} ids: {rest}" in err
    assert "--allow-single-modality" in err and not out.exists()
    # without their real images, the synthetic ids would be infrared only
    assert _export(tiny_world_dir, out, syn, extra=["--no-external-images"]) == 2
    assert f"infrared only: synthvi_ext 1 id: {ext_ids[0]}" in capsys.readouterr().err and not out.exists()
    assert _export(tiny_world_dir, out, syn, extra=["--external-ids", "all", "--allow-single-modality"]) == 0
    done = json.loads((out / DONE_FILE).read_text())
    assert "allow_single_modality" not in done["settings"]  # it lets a plan through; the files do not depend on it
    ds = load_dataset("sysu_mm01", out)
    new = {r.pid for r in ds.records} - {r.pid for r in load_dataset("synthvi", tiny_world_dir).records
                                          if r.dataset == "synthvi_vi"}
    assert len(new) == len(ext_ids)


def test_an_undecodable_synthetic_image_stops_with_one_line(tiny_world_dir, ext_ids, tmp_path, capsys):
    syn = tmp_path / "syn"
    rows = write_synthetic(syn, ext_ids[:1], (3, 6))
    bad = syn / rows[-1]["path"]
    buf = bad.read_bytes()
    bad.write_bytes(buf[: len(buf) // 2])  # a truncated PNG
    out = tmp_path / "out"
    assert _export(tiny_world_dir, out, syn) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and "Traceback" not in err
    assert not (out / DONE_FILE).exists() and not (out / "manifest.jsonl").exists()
    written = [p for p in out.rglob("*") if p.is_file() and p.suffix in (".jpg", ".png")]
    for p in written:  # whatever was written before it is whole
        with Image.open(p) as im:
            np.asarray(im.convert("RGB"))
    Image.fromarray(np.full((16, 8, 3), 9, np.uint8)).save(bad)  # repaired: the same command finishes
    assert _export(tiny_world_dir, out, syn) == 0 and (out / DONE_FILE).exists()
