"""`dive filter`: identity scores and margins, the kept fraction and its tie-breaking, relabelled
images dropped, an output folder that `dive export` reads, clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dive.cli import main
from dive.data.registry import load_dataset
from dive.metrics.filter import FilterConfig, filter_synthetic, identity_similarities, margins_of, select

TINY_TRAIN = dict(base_width=4, height=64, width=32, num_ids=2, num_per_modality=2, epochs=1,
                  batches_per_epoch=2, warmup_epochs=0.0, lr_steps=(), progress=False, threads=1)


# ------------------------------------------------------------------------------------- scores


def test_similarities_centroid_and_mean_and_margins():
    g = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [-1.0, 0.0]])
    g_ids = np.array([0, 0, 1, 1])
    q = np.array([[1.0, 1.0], [3.0, 0.0]])
    cen = identity_similarities(q, g, g_ids, 2, "centroid")
    s = np.sqrt(0.5)
    # centroid of id 0 points along (1, 1); of id 1 along (s - 1, s) (unit rows averaged)
    c1 = np.array([s - 1.0, s]) / np.linalg.norm([s - 1.0, s])
    np.testing.assert_allclose(cen, [[1.0, s * c1.sum()], [s, c1[0]]], atol=1e-12)
    mean = identity_similarities(q, g, g_ids, 2, "mean")
    np.testing.assert_allclose(mean, [[s, (1.0 - s) / 2], [0.5, (s - 1.0) / 2]], atol=1e-12)
    own, other, best = margins_of(cen, np.array([0, 1]))
    np.testing.assert_allclose(own, [1.0, c1[0]])
    np.testing.assert_allclose(other, [s * c1.sum(), s])
    assert best.tolist() == [1, 0]
    own1, other1, best1 = margins_of(cen[:, :1], np.array([0, 0]))  # one identity: no other to compare
    assert np.isnan(other1).all() and best1.tolist() == [-1, -1]
    with pytest.raises(ValueError, match="no gallery image"):
        identity_similarities(q, g, g_ids, 3)


def test_select_fraction_ties_min_per_id_and_threshold():
    margins = np.array([0.9, 0.1, 0.5, 0.5, 0.5, -0.2, 0.3, 0.0])
    ids = np.array([0, 0, 0, 1, 1, 2, 1, 1])
    names = ["h", "g", "f", "e", "d", "c", "b", "a"]
    # half of 8 = 4: 0.9, then the three 0.5s; id 2 (one image, margin -0.2) keeps its only image
    kept = select(margins, ids, names, keep=0.5, min_per_id=0)
    assert kept.sum() == 4 and set(np.flatnonzero(kept)) == {0, 2, 3, 4}
    kept = select(margins, ids, names, keep=0.5, min_per_id=1)
    assert kept.sum() == 4 and set(np.flatnonzero(kept)) == {0, 5, 4, 3}  # ties at 0.5: d, e before f
    kept = select(margins, ids, names, keep=0.25, min_per_id=1)  # guarantees exceed the fraction
    assert set(np.flatnonzero(kept)) == {0, 4, 5}
    kept = select(margins, ids, names, threshold=0.3, min_per_id=0)
    assert set(np.flatnonzero(kept)) == {0, 2, 3, 4, 6}
    assert select(margins, ids, names, threshold=5.0, min_per_id=2).sum() == 5  # 2 + 2 + the only one
    assert select(margins, ids, names, keep=1.0).all()
    with pytest.raises(ValueError, match="not both"):
        FilterConfig(synthetic="a", data="b", reid_run="c", out="d", keep=0.5, threshold=0.1)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        FilterConfig(synthetic="a", data="b", reid_run="c", out="d", keep=1.5)


# ------------------------------------------------------------------------------------- end to end


def _train(world: Path, out: Path, **over) -> Path:
    from dive.reid.run import ReIDDataConfig, load_reid_data
    from dive.reid.train import ReIDTrainConfig, train_reid

    data = load_reid_data(ReIDDataConfig(data=world))
    return train_reid(ReIDTrainConfig(out=out, **{"seed": 0, **TINY_TRAIN, **over}), data.train)


@pytest.fixture(scope="module")
def reid_run(tiny_world_dir, tmp_path_factory) -> Path:
    """A barely trained run: enough for the folder's shape, not for telling identities apart."""
    return _train(tiny_world_dir, tmp_path_factory.mktemp("flt") / "reid")


def write_relabelled(world: Path, folder: Path) -> tuple[list[dict], set[str]]:
    """A synthetic folder of VI training ids: half of each id's rows are its own real infrared
    images, the other half the next id's real infrared images under this id's label."""
    recs = [r for r in load_dataset("synthvi", world).records
            if r.dataset == "synthvi_vi" and r.split == "train" and r.is_infrared]
    by_id: dict[int, list[str]] = {}
    for r in sorted(recs, key=lambda r: r.path):
        by_id.setdefault(r.pid, []).append(r.path)
    pids = sorted(by_id)
    rows, wrong = [], set()
    for j, pid in enumerate(pids):
        other = pids[(j + 1) % len(pids)]
        n = min(len(by_id[pid]), len(by_id[other]), 2)
        for kind, paths in (("own", by_id[pid][:n]), ("wrong", by_id[other][:n])):
            for i, src in enumerate(paths):
                rel = f"images/synthvi_vi-{pid:04d}/{kind}{i}{Path(src).suffix}"
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, folder / rel)
                rows.append({"path": rel, "dataset": "synthvi_vi", "pid": pid, "camid": 3 + 3 * (i % 2),
                             "modality": "infrared", "seed": 7 * i})
                if kind == "wrong":
                    wrong.add(rel)
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "generate.json").write_text(json.dumps({"steps": 2}))
    return rows, wrong


def test_output_folder_is_a_synthetic_source(tiny_world_dir, reid_run, tmp_path, capsys):
    from dive.export import ExportConfig, export_dataset

    syn = tmp_path / "gen"
    rows, _ = write_relabelled(tiny_world_dir, syn)
    n_ids = len({r["pid"] for r in rows})
    assert len(rows) >= 8 and n_ids >= 3
    out = tmp_path / "kept"
    rc = main(["filter", "--synthetic", str(syn), "--data", str(tiny_world_dir), "--reid-run", str(reid_run),
               "--out", str(out), "--keep", "0.25", "--no-progress"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    n_kept = round(0.25 * len(rows))
    assert f"kept {n_kept} of {len(rows)} images" in printed.out and "dive export" in printed.out
    scores = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert [s["path"] for s in scores] == sorted(r["path"] for r in rows)
    assert sorted(s["rank"] for s in scores) == list(range(1, len(rows) + 1))
    by_rank = sorted(scores, key=lambda s: s["rank"])
    assert all(a["margin"] >= b["margin"] for a, b in zip(by_rank, by_rank[1:]))
    for s in scores:
        assert s["margin"] == pytest.approx(s["own"] - s["best_other"], abs=1e-12)
        assert s["best_other_id"] != f"synthvi_vi:{s['pid']}"
    # each id keeps its best image (min-per-id 1), the rest of the 25% go by rank
    kept = [s for s in scores if s["kept"]]
    assert len(kept) == n_kept and {s["pid"] for s in kept} == {r["pid"] for r in rows}
    best_per_id = {min((s for s in scores if s["pid"] == p), key=lambda s: s["rank"])["path"] for p in
                   {s["pid"] for s in scores}}
    assert best_per_id <= {s["path"] for s in kept}
    rest = [s["path"] for s in by_rank if s["path"] not in best_per_id]
    assert {s["path"] for s in kept} - best_per_id == set(rest[:n_kept - len(best_per_id)])
    # the folder: kept rows verbatim, in the input's order; the images hard-linked; nothing else
    kept_paths = {s["path"] for s in kept}
    kept_rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert kept_rows == [r for r in rows if r["path"] in kept_paths]
    for r in kept_rows:
        assert (out / r["path"]).stat().st_ino == (syn / r["path"]).stat().st_ino
    images = {p.relative_to(out).as_posix() for p in (out / "images").rglob("*") if p.is_file()}
    assert images == kept_paths
    gen = json.loads((out / "generate.json").read_text())
    assert gen["steps"] == 2 and gen["filters"][0]["keep"] == 0.25 and gen["filters"][0]["kept"] == n_kept
    rep = json.loads((out / "filter.json").read_text())
    c = rep["counts"]
    assert c["kept"] == n_kept and c["kept_fraction"] == pytest.approx(n_kept / len(rows)) and c["ids_kept"] == n_ids
    assert sum(v["kept"] for v in c["per_id"].values()) == n_kept
    assert rep["identity"]["all"]["images"] == len(rows) and rep["identity"]["kept"]["images"] == n_kept
    assert rep["extractor"]["run"] == str(reid_run.resolve()) and rep["placed"] == {"link": n_kept, "copy": 0}
    assert "| kept |" in (out / "report.md").read_text()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left
    # dive export takes the output as a synthetic source
    s = export_dataset(ExportConfig(data=tiny_world_dir, out=tmp_path / "exp", synthetic=(out,)), progress=False)
    assert s["complete"] and s["counts"]["per_origin"]["synthetic"] == n_kept
    # deterministic: a second run (copies, replacing the output with --force) gives the same scores and rows
    again = filter_synthetic(FilterConfig(synthetic=syn, data=tiny_world_dir, reid_run=reid_run, out=out, keep=0.25,
                                          copy=True, force=True, progress=False))
    assert again["placed"] == {"link": 0, "copy": n_kept}
    assert [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()] == scores
    assert not (out / kept_rows[0]["path"]).samefile(syn / kept_rows[0]["path"])
    # filtering the filtered folder appends its note; a threshold above every margin keeps one per id
    t = filter_synthetic(FilterConfig(synthetic=out, data=tiny_world_dir, reid_run=reid_run, out=tmp_path / "t",
                                      threshold=1e6, progress=False))
    assert t["counts"]["kept"] == n_ids and t["selection"]["threshold"] == 1e6
    assert [f["kept"] for f in json.loads((tmp_path / "t" / "generate.json").read_text())["filters"]] == [n_kept, n_ids]


@pytest.mark.slow
def test_relabelled_images_are_the_dropped_ones(tiny_world_dir, tmp_path):
    """Half of each identity's rows show another identity: a trained ReID network gives them the
    lowest margins, so --keep 0.5 drops exactly them (an untrained one drops about half of them)."""
    run = _train(tiny_world_dir, tmp_path / "reid", epochs=80, batches_per_epoch=4, base_width=8, num_ids=4, lr=0.05)
    syn = tmp_path / "gen"
    rows, wrong = write_relabelled(tiny_world_dir, syn)
    assert len(wrong) * 2 == len(rows)
    rep = filter_synthetic(FilterConfig(synthetic=syn, data=tiny_world_dir, reid_run=run, out=tmp_path / "kept",
                                        keep=0.5, progress=False))
    scores = [json.loads(line) for line in (tmp_path / "kept" / "scores.jsonl").read_text().splitlines()]
    right = [s["margin"] for s in scores if s["path"] not in wrong]
    bad = [s["margin"] for s in scores if s["path"] in wrong]
    assert max(bad) < min(right)
    assert {s["path"] for s in scores if not s["kept"]} == wrong
    assert all(v["kept"] * 2 == v["images"] for v in rep["counts"]["per_id"].values())
    ident = rep["identity"]
    assert ident["kept"]["rank1"] > ident["all"]["rank1"] > ident["dropped"]["rank1"]
    assert ident["kept"]["auc"] > ident["dropped"]["auc"]


def test_errors_name_what_is_wrong(tiny_world_dir, tmp_path, capsys):
    syn = tmp_path / "gen"
    rows, _ = write_relabelled(tiny_world_dir, syn)

    def run(synthetic: Path, *extra: str, run_dir: Path = tmp_path / "no-run", out: Path = tmp_path / "out") -> str:
        rc = main(["filter", "--synthetic", str(synthetic), "--data", str(tiny_world_dir), "--reid-run", str(run_dir),
                   "--out", str(out), "--no-progress", *extra])
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err and not out.exists()
        return err

    (tmp_path / "empty").mkdir()
    assert "manifest.jsonl: missing" in run(tmp_path / "empty")
    gone = tmp_path / "gone"
    shutil.copytree(syn, gone)
    (gone / rows[1]["path"]).unlink()
    assert str(gone / rows[1]["path"]) in run(gone)
    unknown = tmp_path / "unknown"
    shutil.copytree(syn, unknown)
    (unknown / "manifest.jsonl").write_text(json.dumps({**rows[0], "pid": 9999}) + "\n")
    assert "synthvi_vi:9999" in run(unknown)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text(json.dumps({"train": {}}))
    assert "unfinished ReID run" in run(syn, run_dir=unfinished)
    assert "not a finished ReID run" in run(syn, run_dir=tmp_path / "gone")
    assert "ReID run not found" in run(syn)
    assert "not both" in run(syn, "--keep", "0.5", "--threshold", "0")
    taken = tmp_path / "taken"
    taken.mkdir()
    rc = main(["filter", "--synthetic", str(syn), "--data", str(tiny_world_dir), "--reid-run", str(tmp_path),
               "--out", str(taken), "--no-progress"])
    assert rc == 2 and "--force" in capsys.readouterr().err and not any(taken.iterdir())
    assert "outside" in run(syn, out=syn / "sub")
