"""`dive metrics`: Fréchet distance, intra/inter identity distances, plots, extractors, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dive.cli import main
from dive.data.registry import load_dataset
from dive.metrics.features import FIDInceptionV3, ReIDFeatures, load_fid_inception
from dive.metrics.frechet import frechet_distance, frechet_distance_features
from dive.metrics.identity import distance_stats, retrieval_metrics
from dive.metrics.plots import plot_distance_histograms, plot_tsne, tsne_embedding
from dive.metrics.quality import MetricsConfig, quality_report
from dive.reid.run import ReIDDataConfig, load_reid_data
from dive.reid.train import ReIDTrainConfig, train_reid

PNG = b"\x89PNG\r\n\x1a\n"
TINY_TRAIN = dict(base_width=4, height=64, width=32, num_ids=2, num_per_modality=2, epochs=1,
                  batches_per_epoch=2, warmup_epochs=0.0, lr_steps=(), progress=False, threads=1)


# ------------------------------------------------------------------------------------- Fréchet


def test_frechet_distance_closed_form_diagonal():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    a, b = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    for method in ("eig", "sqrtm"):
        assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b), method=method) == pytest.approx(expected, rel=1e-9)
    # a full (non-diagonal) case: both routes agree; rotating both covariances changes nothing
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
    x, y = rng.normal(size=(40, 6)), rng.normal(size=(50, 6)) @ rng.normal(size=(6, 6))
    sx, sy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    assert frechet_distance(x.mean(0), sx, y.mean(0), sy) == pytest.approx(
        frechet_distance(x.mean(0), sx, y.mean(0), sy, method="sqrtm"), rel=1e-6)


def test_frechet_identical_sets_zero_and_rank_deficient():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(30, 8)).astype(np.float32)
    assert frechet_distance_features(f, f) == pytest.approx(0.0, abs=1e-8)
    # fewer samples than dimensions: singular covariances still give a finite, ~0 value for equal sets
    g = rng.normal(size=(5, 64))
    assert 0.0 <= frechet_distance_features(g, g) < 1e-8
    assert frechet_distance_features(g, g + 1.0) == pytest.approx(64.0, rel=1e-8)  # mean shift only
    with pytest.raises(ValueError):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ------------------------------------------------------------------------------------- identity


def _clustered(rng, ids: int, per_id: int, dim: int = 16, noise: float = 0.3):
    centres = rng.normal(size=(ids, dim))
    labels = np.repeat(np.arange(ids), per_id)
    return centres[labels] + noise * rng.normal(size=(len(labels), dim)), labels


def test_intra_smaller_than_inter_and_retrieval():
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(6, 16))
    q_ids, g_ids = np.repeat(np.arange(6), 3), np.repeat(np.arange(6), 4)
    q = centres[q_ids] + 0.2 * rng.normal(size=(18, 16))
    g = centres[g_ids] + 0.2 * rng.normal(size=(24, 16))
    from dive.utils.ranking import cosine_distance

    dist = cosine_distance(q, g)
    s = distance_stats(dist, q_ids[:, None] == g_ids[None, :], bins=20)
    assert s["intra"]["n"] == 18 * 4 and s["inter"]["n"] == 18 * 20
    assert s["intra"]["mean"] < s["inter"]["mean"] and s["gap"] > 0.3 and s["auc"] > 0.95 and s["d_prime"] > 1
    assert sum(s["histogram"]["intra"]) == 72 and len(s["histogram"]["edges"]) == 21
    r = retrieval_metrics(q, q_ids, np.zeros(18), g, g_ids, np.ones(24))
    assert r["rank1"] == 100.0 and r["mAP"] == 100.0 and r["chance_rank1"] == pytest.approx(100 / 6, abs=1e-3)
    # random features: no identity signal
    s0 = distance_stats(cosine_distance(rng.normal(size=(18, 16)), g), q_ids[:, None] == g_ids[None, :])
    assert abs(s0["auc"] - 0.5) < 0.15


def test_plots_are_written(tmp_path):
    rng = np.random.default_rng(3)
    s = distance_stats(rng.uniform(0, 1, (10, 12)), rng.uniform(size=(10, 12)) < 0.2, bins=10)
    p = plot_distance_histograms(s, tmp_path / "d.png", "test")
    assert p.read_bytes()[:8] == PNG
    f, labels = _clustered(rng, 4, 6)
    pts, perplexity = tsne_embedding(f, seed=0)
    assert pts.shape == (24, 2) and 1 <= perplexity < 24
    assert np.array_equal(pts, tsne_embedding(f, seed=0)[0])  # fixed seed
    kinds = np.where(np.arange(24) % 2 == 0, "synthetic IR", "real visible").astype(object)
    kinds[:3] = "real IR"
    labels = labels.copy()
    labels[:2] = -1
    p = plot_tsne(pts, labels, kinds, tmp_path / "t.png", id_names={0: "a", 1: "b"}, title="t")
    assert p.read_bytes()[:8] == PNG
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary file


# ------------------------------------------------------------------------------------- Inception


def test_inception_weights_load_by_name_and_clear_errors(tmp_path):
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = FIDInceptionV3()
    state = {k: v.clone() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    state["fc.weight"] = torch.zeros(1008, 2048)  # a classifier head is ignored
    save_file(state, str(tmp_path / "inc.safetensors"))
    loaded = load_fid_inception(tmp_path / "inc.safetensors")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items() if not k.startswith("fc."))
    # pytorch-fid's wrapper names map onto the same modules
    wrapped = {k.replace("Mixed_7c.", "blocks.3.2.").replace("Conv2d_1a_3x3.", "blocks.0.0."): v
               for k, v in state.items()}
    save_file(wrapped, str(tmp_path / "wrapped.safetensors"))
    assert torch.equal(load_fid_inception(tmp_path / "wrapped.safetensors").Mixed_7c.branch_pool.conv.weight,
                       state["Mixed_7c.branch_pool.conv.weight"])
    with torch.no_grad():
        out = loaded(torch.rand(1, 3, 64, 32))
    assert out.shape == (1, 2048) and torch.isfinite(out).all()
    # wrong files: one clear error that names the ReID alternative
    del state["Mixed_5b.branch1x1.conv.weight"]
    save_file(state, str(tmp_path / "partial.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    for name in ("partial", "junk"):
        with pytest.raises(ValueError, match="--reid-run"):
            load_fid_inception(tmp_path / f"{name}.safetensors")


# ------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_reid_run(tiny_world_dir, tmp_path_factory) -> Path:
    data = load_reid_data(ReIDDataConfig(data=tiny_world_dir))
    return train_reid(ReIDTrainConfig(out=tmp_path_factory.mktemp("mq") / "reid", seed=0, **TINY_TRAIN), data.train)


def write_gray_copies(world: Path, folder: Path, ids: int = 3) -> list[dict]:
    """A 'synthetic' folder: grayscale copies of external visible training images, as infrared rows."""
    recs = [r for r in load_dataset("synthvi", world).records if r.dataset == "synthvi_ext" and r.split == "train"]
    pids = sorted({r.pid for r in recs})[:ids]
    rows = []
    for pid in pids:
        for i, r in enumerate([r for r in recs if r.pid == pid][:4]):
            rel = f"images/{pid:04d}/{i:04d}.png"
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            with Image.open(r.path) as im:
                im.convert("L").convert("RGB").save(folder / rel)
            rows.append({"path": rel, "dataset": "synthvi_ext", "pid": pid, "camid": 3 + 3 * (i % 2),
                         "modality": "infrared", "source_path": f"bounding_box_train/{Path(r.path).name}"})
    rows.append({**rows[0], "path": "images/visible.png", "modality": "visible"})  # not scored
    Image.open(folder / rows[0]["path"]).save(folder / "images/visible.png")
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_reid_extractor_uses_each_modality_stream(tiny_reid_run, tiny_world_dir):
    ex = ReIDFeatures(tiny_reid_run)
    d = ex.describe()
    assert d["kind"] == "reid" and d["feature"] == "pooled" and len(d["weights_sha256"]) == 64
    assert d["run"] == str(tiny_reid_run.resolve())
    path = next(r.path for r in load_dataset("synthvi", tiny_world_dir).records if r.is_infrared)
    f = ex([path, path], [True, False])
    assert f.shape == (2, ex.dim) and not np.allclose(f[0], f[1])  # two stems, two features
    bn = ReIDFeatures(tiny_reid_run, "bnneck")([path], [True])
    from dive.reid.evaluate import extract_features
    from dive.reid.transforms import load_images

    spec = ex.model.spec
    ref = extract_features(ex.model, images=load_images([path], spec.height, spec.width), modality=[True])
    np.testing.assert_allclose(bn, ref, rtol=1e-5, atol=1e-6)


def test_end_to_end_cli_and_report(tiny_world_dir, tiny_reid_run, tmp_path, capsys):
    syn = tmp_path / "gray"
    rows = write_gray_copies(tiny_world_dir, syn)
    syn2 = tmp_path / "noise"
    syn2.mkdir()
    noise_rows = []
    rng = np.random.default_rng(0)
    for i, r in enumerate(rows[:-1]):
        Image.fromarray(rng.integers(0, 256, (40, 20, 3), dtype=np.uint8)).save(syn2 / f"{i}.png")
        noise_rows.append({k: v for k, v in r.items() if k != "source_path"} | {"path": f"{i}.png"})
    (syn2 / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in noise_rows))
    out = tmp_path / "metrics"
    rc = main(["metrics", "--synthetic", str(syn), str(syn2), "--real-ir", str(tiny_world_dir),
               "--reid-run", str(tiny_reid_run), "--out", str(out), "--no-progress", "--tsne-per-id", "3"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "gray: FD" in captured.out and "noise: FD" in captured.out
    report = json.loads((out / "metrics.json").read_text())
    assert report["extractors"]["fd"] == report["extractors"]["identity"]
    ex = report["extractors"]["fd"]
    assert ex["name"] == "reid-agw-pooled" and ex["run"] == str(tiny_reid_run.resolve()) and ex["weights_sha256"]
    assert report["data"]["real_ir"]["images"] == 14 and report["data"]["real_ir"]["format"] == "synthvi"
    assert set(report["sources"]) == {"gray", "noise"}
    s = report["sources"]["gray"]
    assert s["used_images"] == 12 and s["visible_rows_skipped"] == 1 and s["ids_with_visible"] == 3
    assert s["fd"]["value"] >= 0 and s["fd"]["real_ir_images"] == 14
    assert s["distances"]["intra"]["n"] > 0 and s["distances"]["inter"]["n"] > 0
    assert s["retrieval"]["num_queries"] == 12 and 0 <= s["retrieval"]["rank1"] <= 100
    assert s["tsne"]["ids"] == 3 and s["tsne"]["per_kind"]["real IR"] == 14
    # each copy's own source picture is in the gallery once: left out of its ranking and intra pairs
    gallery_per_id = s["retrieval"]["gallery_images"] // 3
    assert s["sources_left_out"] == 12 and gallery_per_id > 4
    w = s["retrieval_without_source"]
    assert w["num_valid_queries"] == 12 and w["gallery_images"] == s["retrieval"]["gallery_images"]
    assert w["mAP"] < s["retrieval"]["mAP"]  # the exact source is the easiest match a copy has
    assert s["auc_without_source"] <= s["distances"]["auc"]
    n = report["sources"]["noise"]  # rows without a source: nothing to leave out
    assert n["sources_left_out"] == 0 and n["retrieval_without_source"] == n["retrieval"]
    assert "without source: AUC" in captured.out
    assert report["reference"]["fd_real_ir_split_half"]["sizes"] == [7, 7]
    for name in ("gray", "noise"):
        for kind in ("distances", "tsne"):
            assert (out / f"{name}-{kind}.png").read_bytes()[:8] == PNG
    md = (out / "metrics.md").read_text()
    assert "reid-agw-pooled" in md and "| gray |" in md and "| noise |" in md and "gray-tsne.png" in md
    assert not list(out.glob(".*.tmp"))
    # the Python entry point returns the same numbers (no files without out); reuse an extractor
    rep2 = quality_report(real_ir=tiny_world_dir, synthetic=(syn,), reid_run=tiny_reid_run, progress=False,
                          tsne=False)
    assert rep2["sources"]["gray"]["fd"]["value"] == pytest.approx(s["fd"]["value"], rel=1e-6)
    assert rep2["sources"]["gray"]["retrieval"]["rank1"] == s["retrieval"]["rank1"]
    # errors are one clear line: no extractor; ids unknown to the data
    rc = main(["metrics", "--synthetic", str(syn), "--real-ir", str(tiny_world_dir), "--out", str(tmp_path / "x")])
    assert rc == 2 and "--reid-run" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes((syn / rows[0]["path"]).read_bytes())
    (bad / "manifest.jsonl").write_text(json.dumps({**rows[0], "path": "a.png", "dataset": "market1501"}) + "\n")
    rc = main(["metrics", "--synthetic", str(bad), "--real-ir", str(tiny_world_dir), "--reid-run",
               str(tiny_reid_run), "--out", str(tmp_path / "y"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "market1501:" in err and "Traceback" not in err


@pytest.mark.slow
def test_inception_for_fd_reid_for_identity(tiny_world_dir, tiny_reid_run, tmp_path):
    import torch
    from safetensors.torch import save_file

    from dive.metrics.features import InceptionFeatures

    torch.manual_seed(0)
    state = {k: v for k, v in FIDInceptionV3().state_dict().items() if not k.endswith("num_batches_tracked")}
    save_file(state, str(tmp_path / "inc.safetensors"))
    syn = tmp_path / "gray"
    write_gray_copies(tiny_world_dir, syn, ids=2)
    inc = InceptionFeatures(tmp_path / "inc.safetensors")
    rep = quality_report(real_ir=tiny_world_dir, synthetic=(syn,), reid_run=tiny_reid_run, progress=False,
                         tsne=False, max_synthetic=2, max_real_ir=2, fid_extractor=inc)
    ex = rep["extractors"]
    assert ex["fd"]["name"] == "inception-v3-fid-pool3" and ex["fd"]["feature_dim"] == 2048
    assert ex["fd"]["weights_sha256"] == inc.sha256 and ex["identity"]["kind"] == "reid"
    s = rep["sources"]["gray"]
    assert s["fd"]["feature_dim"] == 2048 and s["fd"]["rank_deficient"] and s["fd"]["value"] >= 0
    assert s["retrieval"]["num_queries"] == 2 and rep["reference"]["fd_real_ir_split_half"] is None


def test_config_validation():
    with pytest.raises(ValueError):
        MetricsConfig(real_ir=Path("."), feature="logits")
    cfg = MetricsConfig(real_ir=".", synthetic=["a", "b"])
    assert cfg.synthetic == (Path("a"), Path("b")) and cfg.real_ir_splits == ("train",)
