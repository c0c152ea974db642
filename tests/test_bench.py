"""`dive bench --quick`: the whole benchmark pipeline at toy size, on the shipped tiny base."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "quick"
    cmd = [sys.executable, "-m", "dive.cli", "bench", "--quick", "--out", str(out), "--threads", "1",
           "--reid-workers", "1", "--base", str(REPO / "checkpoints" / "tiny-sd-base")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res.stdout, cmd


def test_quick_bench_writes_every_table_and_file(quick_bench):
    from dive.data.registry import load_dataset

    out, stdout, _ = quick_bench
    for name in ("tables.md", "tables.json", "bench.json", "table5-ids.png", "metrics/metrics.json"):
        assert (out / name).is_file(), name
    tables = json.loads((out / "tables.json").read_text())["tables"]
    main = tables["main-agw"]["rows"]
    assert set(main) == {"baseline", "external-rgb", "grayscale", "cyclegan", "dive-camera"}
    assert 0 <= main["dive-camera"]["sysu-all/rank1"]["mean"] <= 100
    assert set(tables["ablations"]) == {"dive-camera", "dive-modality", "dive-ir-only"}
    assert tables["ids"]["counts"]["baseline"] == 0 and tables["ids"]["counts"]["dive-camera-k3"] == 3
    assert set(tables["quality"]) == {"dive-camera", "dive-modality", "dive-ir-only", "grayscale", "cyclegan", "oracle"}
    assert not (out / "exports" / "oracle").exists()  # the ceiling is measured, never trained on
    assert "Table 1: AGW" in stdout and "Table 6" in (out / "tables.md").read_text()
    # every export is a SYSU-MM01 tree our own reader accepts, with a manifest row per synthetic image
    syn = [json.loads(x) for x in (out / "synthetic" / "dive-camera" / "manifest.jsonl").read_text().splitlines()]
    ds = load_dataset("sysu_mm01", out / "exports" / "dive-camera")
    rows = [json.loads(x) for x in (out / "exports" / "dive-camera" / "manifest.jsonl").read_text().splitlines()]
    assert sum(1 for r in rows if r["origin"] == "synthetic") == len(syn) > 0
    assert len(ds.records) == len(rows)


def test_quick_bench_rerun_reuses_finished_stages(quick_bench):
    out, _, cmd = quick_bench
    before = {p: p.stat().st_mtime_ns for p in (out / "reid").glob("*/report.json")}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    assert before and {p: p.stat().st_mtime_ns for p in before} == before
    timings = json.loads((out / "bench.json").read_text())["timings_s"]
    assert timings["reid"] < 5 and timings["dive checkpoints"] < 5


def test_quick_bench_refuses_a_folder_made_with_other_checkpoints(quick_bench):
    out, _, cmd = quick_bench
    inputs = json.loads((out / "inputs.json").read_text())
    assert set(inputs["checkpoints"]) == {"camera", "modality", "ir-only"}
    inputs["checkpoints"]["camera"] = "0" * 16  # as if the DiVE checkpoint had been retrained
    (out / "inputs.json").write_text(json.dumps(inputs))
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert res.returncode != 0 and "use a new --out" in res.stderr
