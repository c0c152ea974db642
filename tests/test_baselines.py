"""Comparison baselines (`dive baseline grayscale`, `dive baseline cyclegan train|apply`): folders
`dive export` reads, grey pixels, deterministic seeded training, bitwise resume, clear errors."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from dive import defaults
from dive.generate.sources import SETTINGS_FILE, assign_sources, load_baseline_inputs, select_external_ids
from dive.baselines.cyclegan import (GENERATOR_CONFIG, GENERATOR_WEIGHTS, CycleGANApplyConfig, CycleGANTrainConfig,
                                     apply_cyclegan, train_cyclegan)
from dive.baselines.grayscale import GrayscaleConfig, run_grayscale
from dive.baselines.oracle import OracleConfig, run_oracle
from dive.cli import main
from dive.data.registry import load_dataset
from dive.export.sources import read_synthetic_source

N = 3
#: a translator of a few thousand parameters on 32x16 images: seconds, not minutes
TINY_GAN = dict(height=32, width=16, g_width=4, g_blocks=1, d_width=4, d_layers=1, batch_size=2, pool_size=3,
                steps=4, save_every=2, log_every=1)


def tree_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def ext_ids(tiny_world_dir) -> list[int]:
    ds = load_dataset("synthvi", tiny_world_dir)
    counts = Counter(r.pid for r in ds.records if r.dataset == "synthvi_ext" and r.split == "train" and r.pid > 0)
    return sorted(pid for pid, n in counts.items() if n >= 12)


def check_source(folder: Path, ids: list[int], n: int, size: tuple[int, int], baseline: str):
    src = read_synthetic_source(folder, 0)
    assert len(src.rows) == len(ids) * 2 * n
    assert Counter(r.camid for r in src.rows) == {3: len(ids) * n, 6: len(ids) * n}
    assert {r.modality for r in src.rows} == {"infrared"}
    assert {r.dataset for r in src.rows} == {"synthvi_ext"}
    assert sorted({r.pid for r in src.rows}) == ids
    assert src.settings["baseline"] == baseline and src.settings["cameras_selected"] == [3, 6]
    for r in src.rows:
        assert r.meta["identity_token"] == f"<synthvi_ext-{r.pid:04d}>"
        with Image.open(r.path) as im:
            assert im.mode == "RGB" and im.size == (size[1], size[0])
    return src


# ---------------------------------------------------------------------------------------------
# grayscale
# ---------------------------------------------------------------------------------------------


def test_grayscale_folder_is_an_export_source(tiny_world_dir, ext_ids, tmp_path):
    assert ext_ids, "the tiny world should have external ids with 12+ images"
    before = tree_hashes(tiny_world_dir / "external")
    out = run_grayscale(GrayscaleConfig(data=tiny_world_dir, out=tmp_path / "gray", n=N), progress=False)
    src = check_source(out, ext_ids, N, (128, 64), "grayscale")
    for r in src.rows:
        px = np.asarray(Image.open(r.path))
        assert (px[..., 0] == px[..., 1]).all() and (px[..., 1] == px[..., 2]).all()
        assert px.std() > 0  # a real image, not a flat fill
    # each output is the luminance of its source image (the one the row names)
    r = src.rows[0]
    source = tiny_world_dir / "external" / json.loads((out / "manifest.jsonl").read_text().splitlines()[0])["source_path"]
    with Image.open(source) as im:
        expect = np.asarray(im.convert("RGB").resize((64, 128), Image.Resampling.BICUBIC).convert("L"))
    assert np.array_equal(np.asarray(Image.open(r.path))[..., 0], expect)
    assert tree_hashes(tiny_world_dir / "external") == before  # inputs untouched

    # deterministic: a second folder has the same bytes; the same command again is allowed
    again = run_grayscale(GrayscaleConfig(data=tiny_world_dir, out=tmp_path / "gray2", n=N), progress=False)
    assert tree_hashes(again) == tree_hashes(out)
    run_grayscale(GrayscaleConfig(data=tiny_world_dir, out=out, n=N), progress=False)
    assert tree_hashes(out) == tree_hashes(again)
    # another seed chooses other source images; a smaller n rewrites the folder without stale images
    other = run_grayscale(GrayscaleConfig(data=tiny_world_dir, out=tmp_path / "gray3", n=N, seed=1), progress=False)
    assert tree_hashes(other) != tree_hashes(out)
    with pytest.raises(FileExistsError, match="other settings"):
        run_grayscale(GrayscaleConfig(data=tiny_world_dir, out=out, n=2), progress=False)
    run_grayscale(GrayscaleConfig(data=tiny_world_dir, out=out, n=2, force=True), progress=False)
    check_source(out, ext_ids, 2, (128, 64), "grayscale")
    assert len(list((out / "images").rglob("*.png"))) == len(ext_ids) * 2 * 2


def test_source_assignment_and_selection(tiny_world_dir, ext_ids):
    inputs = load_baseline_inputs(tiny_world_dir)
    assert inputs.infrared_cameras == (3, 6) and inputs.external_dataset == "synthvi_ext"
    assert [pid for _, pid in select_external_ids(inputs.external_records, min_images=12)] == ext_ids
    assert len(select_external_ids(inputs.external_records, min_images=0, top_k=2)) == 2
    recs = [r for r in inputs.external_records if r.pid == ext_ids[0]]
    a = assign_sources(recs, (3, 6), 5, seed=0)
    assert a == assign_sources(list(reversed(recs)), (3, 6), 5, seed=0)  # order of the input does not matter
    assert [(c, i) for c, i, _ in a] == [(c, i) for c in (3, 6) for i in range(5)]
    assert len({r.path for _, _, r in a}) == min(10, len(recs))  # no repeat before every image is used


def test_errors_name_the_path(tiny_world_dir, tmp_path, capsys):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        run_grayscale(GrayscaleConfig(data=missing, out=tmp_path / "o"), progress=False)
    with pytest.raises(ValueError, match="overlaps"):
        run_grayscale(GrayscaleConfig(data=tiny_world_dir, out=tiny_world_dir / "gray"), progress=False)
    assert not (tiny_world_dir / "gray").exists()
    with pytest.raises(ValueError, match="no external training id has at least 1000"):
        run_grayscale(GrayscaleConfig(data=tiny_world_dir, out=tmp_path / "o", min_images=1000), progress=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        run_grayscale(GrayscaleConfig(data=tiny_world_dir, out=tmp_path / "busy"), progress=False)
    with pytest.raises(FileNotFoundError, match=r"generator\.json: missing"):
        apply_cyclegan(CycleGANApplyConfig(generator=tmp_path / "busy", data=tiny_world_dir, out=tmp_path / "o2"),
                       progress=False)
    # the command line: one line naming the path, exit status 2
    assert main(["baseline", "grayscale", "--data", str(missing), "--out", str(tmp_path / "o3")]) == 2
    assert str(missing) in capsys.readouterr().err


def test_cli_grayscale(tiny_world_dir, ext_ids, tmp_path, capsys):
    out = tmp_path / "cli-gray"
    assert main(["baseline", "grayscale", "--data", str(tiny_world_dir), "--out", str(out), "--n", "1",
                 "--cameras", "6", "--top-k", "1"]) == 0
    assert "dive export" in capsys.readouterr().out
    src = read_synthetic_source(out, 0)
    assert len(src.rows) == 1 and src.rows[0].camid == 6


# ---------------------------------------------------------------------------------------------
# oracle (the world's own infrared renders: the ceiling of the identity metrics)
# ---------------------------------------------------------------------------------------------


def _mean_image(paths) -> np.ndarray:
    return np.mean([np.asarray(Image.open(p).convert("L").resize((64, 128)), dtype=np.float64) for p in paths], axis=0)


def test_oracle_renders_the_ids_in_the_infrared_cameras(tiny_world_dir, ext_ids, tmp_path):
    out = run_oracle(OracleConfig(data=tiny_world_dir, out=tmp_path / "oracle", n=N), progress=False)
    src = check_source(out, ext_ids, N, (128, 64), "oracle")
    for r in src.rows:
        px = np.asarray(Image.open(r.path))
        assert (px[..., 0] == px[..., 1]).all() and (px[..., 1] == px[..., 2]).all()  # infrared: no colour
    # each camera's images sit on that camera's own background: their mean image is nearer the
    # mean of the world's real infrared images of the same camera than of the other one
    real = {c: _mean_image(sorted((tiny_world_dir / "vi" / f"cam{c}").rglob("*.jpg"))) for c in (3, 6)}
    for c, other in ((3, 6), (6, 3)):
        ours = _mean_image([r.path for r in src.rows if r.camid == c])
        assert np.abs(ours - real[c]).mean() < np.abs(ours - real[other]).mean()
    # people differ: two ids' images are not the same picture
    a, b = ({r.pid: r.path for r in src.rows if r.camid == 3 and r.meta["index"] == 0}[p] for p in ext_ids[:2])
    assert not np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    again = run_oracle(OracleConfig(data=tiny_world_dir, out=tmp_path / "oracle2", n=N), progress=False)
    assert tree_hashes(again) == tree_hashes(out)  # seeded: same bytes
    other = run_oracle(OracleConfig(data=tiny_world_dir, out=tmp_path / "oracle3", n=N, seed=1), progress=False)
    assert tree_hashes(other) != tree_hashes(out)
    # only a SynthVI world has a renderer: a Market-layout folder is refused, naming it
    with pytest.raises(ValueError, match="SynthVI identities only"):
        run_oracle(OracleConfig(data=tiny_world_dir / "external", out=tmp_path / "o4"), progress=False)
    # --material: every garment in one material (what a visible image cannot tell); ids whose garments
    # were all of that material already are unchanged, the others change
    people = json.loads((tiny_world_dir / "identities.json").read_text())["external"]
    denim = run_oracle(OracleConfig(data=tiny_world_dir, out=tmp_path / "o5", n=N, material="denim"), progress=False)
    changed = 0
    for r in src.rows:
        p = people[str(r.pid)]
        rel = Path(r.path).relative_to(out)
        same = np.array_equal(np.asarray(Image.open(r.path)), np.asarray(Image.open(denim / rel)))
        assert same == (p["upper"]["material"] == p["lower"]["material"] == "denim"), rel
        changed += not same
    assert changed > 0
    with pytest.raises(ValueError, match="not a SynthVI material"):
        run_oracle(OracleConfig(data=tiny_world_dir, out=tmp_path / "o6", material="silk"), progress=False)


def test_oracle_at_infrared_word_tones(tiny_world_dir, tmp_path):
    """--nir-words: every dyed part (garments, shoes, accessories: captions name all their colours)
    at its word group's mean NIR, whatever its material; seeded like the true oracle."""
    from dive.baselines.oracle import word_nir_table
    from dive.data.synthvi.render import Tones
    from dive.data.synthvi.world import COLOR_NIR

    three = tmp_path / "three.json"
    groups = {"black": ("gray", "pink", "green"), "gray": ("black", "yellow", "blue")}
    three.write_text(json.dumps({"words": {c: next((w for w, g in groups.items() if c in g), "white")
                                           for c in COLOR_NIR}}))
    table = word_nir_table(three)
    assert table["pink"] == table["green"] == pytest.approx(np.mean([COLOR_NIR[c] for c in groups["black"]]))
    assert table["red"] == table["white"] != table["pink"]
    tones = Tones(True, table)
    assert (tones.garment("red", "leather") == table["red"]).all() and (tones.accessory("pink") == table["pink"]).all()
    assert not (Tones(False, table).garment("red", "cotton") == table["red"]).all()  # visible light: the dye's colour
    cfg = dict(data=tiny_world_dir, n=1)
    true = run_oracle(OracleConfig(out=tmp_path / "true", **cfg), progress=False)
    by_words = run_oracle(OracleConfig(out=tmp_path / "three", nir_words=three, **cfg), progress=False)
    again = run_oracle(OracleConfig(out=tmp_path / "three2", nir_words=three, **cfg), progress=False)
    images = lambda root: {k: v for k, v in tree_hashes(root).items() if k.startswith("images/")}
    assert images(by_words) == images(again) and images(by_words).keys() == images(true).keys()
    assert images(by_words) != images(true)
    settings = json.loads((by_words / SETTINGS_FILE).read_text())
    assert "infrared word" in settings["transform"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"words": {"red": "white"}}))
    with pytest.raises(ValueError, match="no infrared word for the colours"):
        run_oracle(OracleConfig(out=tmp_path / "bad", nir_words=bad, **cfg), progress=False)


def test_vae_round_trip_is_an_export_source_close_to_its_input(tiny_world_dir, ext_ids, tmp_path):
    """The oracle through the base's VAE (the bench's "perfect UNet on this base" row): same rows,
    reconstructed pixels near but not equal to the source's, kept as they are on a rerun."""
    from dive.baselines.vae_roundtrip import vae_round_trip

    base = defaults.shipped(defaults.BASE_NAME)
    src = run_oracle(OracleConfig(data=tiny_world_dir, out=tmp_path / "oracle", n=1), progress=False)
    info = vae_round_trip(src, base, tmp_path / "rt", progress=False)
    rt = check_source(tmp_path / "rt", ext_ids, 1, (128, 64), "oracle")
    assert info["images"] == len(rt.rows) and rt.settings["vae_round_trip"] == info
    errors = []
    for r in rt.rows:
        a = np.asarray(Image.open(r.path), np.float32)
        b = np.asarray(Image.open(src / Path(r.path).relative_to(tmp_path / "rt")), np.float32)
        errors.append(np.abs(a - b).mean())
    assert 0 < np.mean(errors) < 40  # a reconstruction: changed, but the same picture
    assert abs(np.mean(errors) - info["mean_abs_error"]) < 0.01
    assert vae_round_trip(src, base, tmp_path / "rt", progress=False) == info  # finished: reused
    with pytest.raises(FileNotFoundError, match="manifest.jsonl"):
        vae_round_trip(tmp_path / "nothing", base, tmp_path / "rt2", progress=False)
    with pytest.raises(FileNotFoundError, match="vae/config.json"):
        vae_round_trip(src, tmp_path, tmp_path / "rt3", progress=False)


# ---------------------------------------------------------------------------------------------
# CycleGAN
# ---------------------------------------------------------------------------------------------


def final_state(run: Path) -> dict:
    return load_file(str(run / f"checkpoint-{TINY_GAN['steps']}" / "state.safetensors"))


def assert_same_state(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].equal(b[k]), k


@pytest.fixture(scope="module")
def gan_run(tiny_world_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cyclegan") / "run"
    return train_cyclegan(CycleGANTrainConfig(data=tiny_world_dir, out=out, **TINY_GAN), progress=False)


def test_cyclegan_trains_deterministically(gan_run, tiny_world_dir, tmp_path):
    assert (gan_run / GENERATOR_WEIGHTS).is_file() and (gan_run / GENERATOR_CONFIG).is_file()
    meta = json.loads((gan_run / GENERATOR_CONFIG).read_text())
    assert meta["generator"] == {"width": 4, "blocks": 1, "downsamples": 2}
    assert (meta["height"], meta["width"], meta["steps"]) == (32, 16, 4)
    log = [json.loads(x) for x in (gan_run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert all(np.isfinite(r[k]) for r in log for k in ("loss_g", "loss_d", "loss_cycle", "loss_identity"))
    assert log[-1]["lr"] < log[0]["lr"]  # linear decay over the second half
    # whole state (4 networks, 2 Adam states, 2 pools) is a function of the seed
    again = train_cyclegan(CycleGANTrainConfig(data=tiny_world_dir, out=tmp_path / "again", **TINY_GAN), progress=False)
    assert_same_state(final_state(gan_run), final_state(again))
    assert (again / GENERATOR_WEIGHTS).read_bytes() == (gan_run / GENERATOR_WEIGHTS).read_bytes()
    other = train_cyclegan(CycleGANTrainConfig(data=tiny_world_dir, out=tmp_path / "other", **(TINY_GAN | {"seed": 1})),
                           progress=False)
    assert (other / GENERATOR_WEIGHTS).read_bytes() != (gan_run / GENERATOR_WEIGHTS).read_bytes()


def test_cyclegan_resume_is_bitwise(gan_run, tiny_world_dir, tmp_path):
    cfg = CycleGANTrainConfig(data=tiny_world_dir, out=tmp_path / "resumed", **(TINY_GAN | {"stop_after": 3}))
    run = train_cyclegan(cfg, progress=False)  # killed after step 3: checkpoint-2 is the last complete state
    assert not (run / GENERATOR_CONFIG).exists()
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2"]
    cfg.stop_after = 0
    train_cyclegan(cfg, progress=False)
    assert_same_state(final_state(gan_run), final_state(run))
    assert (run / GENERATOR_WEIGHTS).read_bytes() == (gan_run / GENERATOR_WEIGHTS).read_bytes()
    strip = lambda p: [{k: v for k, v in json.loads(x).items() if k != "seconds"}  # noqa: E731
                       for x in (p / "log.jsonl").read_text().splitlines()]
    assert strip(run) == strip(gan_run)  # the loss curve continues exactly, no duplicate rows
    with pytest.raises(ValueError, match="other settings"):
        train_cyclegan(CycleGANTrainConfig(data=tiny_world_dir, out=run, **(TINY_GAN | {"lr": 1e-3})), progress=False)


def test_cyclegan_apply_writes_a_source(gan_run, tiny_world_dir, ext_ids, tmp_path):
    cfg = CycleGANApplyConfig(generator=gan_run, data=tiny_world_dir, out=tmp_path / "cg", n=N)
    out = apply_cyclegan(cfg, progress=False)
    src = check_source(out, ext_ids, N, (32, 16), "cyclegan")
    weights_hash = hashlib.sha256((gan_run / GENERATOR_WEIGHTS).read_bytes()).hexdigest()
    assert {r.meta["checkpoint_hash"] for r in src.rows} == {weights_hash}
    assert json.loads((out / SETTINGS_FILE).read_text())["checkpoint_hash"] == weights_hash
    # same generator, same seed: the same bytes; same source images as the grayscale baseline
    again = apply_cyclegan(CycleGANApplyConfig(generator=gan_run, data=tiny_world_dir, out=tmp_path / "cg2", n=N),
                           progress=False)
    assert tree_hashes(again) == tree_hashes(out)
    gray = run_grayscale(GrayscaleConfig(data=tiny_world_dir, out=tmp_path / "gray", n=N), progress=False)
    rows = lambda p: {json.loads(x)["path"]: json.loads(x)["source_path"]  # noqa: E731
                      for x in (p / "manifest.jsonl").read_text().splitlines()}
    assert rows(gray) == rows(out)


def test_a_finished_cyclegan_is_reused_only_on_its_own_data(gan_run, tiny_world_dir, ext_ids, tmp_path):
    """The bench takes a shipped translator instead of training one, after checking that it was
    trained on the same VI images; one from another world is refused by name."""
    from dive.baselines.cyclegan import check_trained_on
    from dive.bench.config import BenchConfig
    from dive.bench.run import comparison_baselines

    assert check_trained_on(gan_run, tiny_world_dir)["steps"] == TINY_GAN["steps"]
    cfg = BenchConfig(out=tmp_path / "bench", data=tiny_world_dir, cyclegan=gan_run, n_per_camera=N, quick=True)
    folders = comparison_baselines(cfg)
    assert not (cfg.out / "cyclegan").exists()  # nothing trained
    check_source(folders["cyclegan"], ext_ids, N, (32, 16), "cyclegan")
    other = tmp_path / "other-world-gan"
    other.mkdir()
    (other / GENERATOR_WEIGHTS).write_bytes((gan_run / GENERATOR_WEIGHTS).read_bytes())
    meta = json.loads((gan_run / GENERATOR_CONFIG).read_text())
    meta["data"]["ids"] += 1
    (other / GENERATOR_CONFIG).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="other-world-gan"):
        check_trained_on(other, tiny_world_dir)
    with pytest.raises(ValueError, match="other-world-gan"):
        comparison_baselines(BenchConfig(out=tmp_path / "bench2", data=tiny_world_dir, cyclegan=other, n_per_camera=N,
                                         quick=True))
