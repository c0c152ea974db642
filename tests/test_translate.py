"""`dive translate` (img2img from the ids' own visible images): same sources as the baselines,
per-image seeds, resume, and the strength's meaning."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from dive.baselines.grayscale import GrayscaleConfig, run_grayscale
from dive.checkpoint import TokenTable
from dive.export.sources import read_synthetic_source
from dive.generate.pipeline import ImageJob, load_generator
from dive.generate.translate import TranslateConfig, translate

MIN = 3  # the micro DiVE run learned every external id with at least 3 images


@pytest.fixture(scope="module")
def gen(micro_base, micro_dive_run):
    return load_generator(micro_base, micro_dive_run / "final")


def hashes(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.png"))}


def config(world, ckpt, out, **kw):
    return TranslateConfig(data=world, checkpoint=ckpt, out=out, min_images=MIN, top_k=2, n=2, steps=4,
                           batch_size=3, **kw)


def test_translate_writes_a_source_with_the_baselines_sources(tiny_world_dir, micro_dive_run, gen, tmp_path):
    ckpt = micro_dive_run / "final"
    out = translate(config(tiny_world_dir, ckpt, tmp_path / "tr"), generator=gen, progress=False)
    src = read_synthetic_source(out, 0)
    assert len(src.rows) == 2 * 2 * 2 and {r.modality for r in src.rows} == {"infrared"}
    assert src.settings["baseline"] == "dive-translate" and src.settings["strength"] == 0.6
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    for r in rows:
        assert r["prompt"] == gen.table.prompt(r["identity_token"], r["camera_token"])
        assert gen.table.get(r["camera_token"]).camid == r["camid"]
        assert gen.table.get(r["camera_token"]).modality == "infrared"
        with Image.open(out / r["path"]) as im:
            assert im.size == (gen.width, gen.height) and np.asarray(im).std() > 0
    # image for image, the same source as the grayscale baseline given the same seed and selection
    gray = run_grayscale(GrayscaleConfig(data=tiny_world_dir, out=tmp_path / "gray", min_images=MIN, top_k=2, n=2),
                         progress=False)
    gray_rows = {json.loads(x)["path"]: json.loads(x) for x in (gray / "manifest.jsonl").read_text().splitlines()}
    assert {r["path"]: r["source_path"] for r in rows} == {p: g["source_path"] for p, g in gray_rows.items()}


def test_translate_kill_and_resume_gives_the_same_bytes(tiny_world_dir, micro_dive_run, gen, tmp_path):
    ckpt = micro_dive_run / "final"
    whole = translate(config(tiny_world_dir, ckpt, tmp_path / "whole"), generator=gen, progress=False)
    cut = translate(config(tiny_world_dir, ckpt, tmp_path / "cut", stop_after=3), generator=gen, progress=False)
    assert not (cut / "manifest.jsonl").exists() and 0 < len(hashes(cut)) < len(hashes(whole))
    translate(config(tiny_world_dir, ckpt, tmp_path / "cut"), generator=gen, progress=False)
    assert (cut / "manifest.jsonl").exists() and hashes(cut) == hashes(whole)
    with pytest.raises(FileExistsError, match="other settings"):
        translate(config(tiny_world_dir, ckpt, tmp_path / "cut", strength=0.3), generator=gen, progress=False)
    # forced to other settings, no earlier image is reused: the folder is what a fresh run writes
    translate(config(tiny_world_dir, ckpt, tmp_path / "cut", strength=0.3, force=True), generator=gen, progress=False)
    fresh = translate(config(tiny_world_dir, ckpt, tmp_path / "fresh", strength=0.3), generator=gen, progress=False)
    assert hashes(cut) == hashes(fresh) != hashes(whole)


def test_strength_decides_how_much_of_the_source_is_kept(gen, tiny_world_dir):
    ident = gen.table.identities[0].token
    cam = gen.table.infrared_cameras()[0].token
    jobs = [ImageJob(ident, cam, 0, 1234, gen.table.prompt(ident, cam))] * 2
    rng = np.random.default_rng(0)
    a, b = (Image.fromarray(rng.integers(0, 255, (gen.height, gen.width, 3), dtype=np.uint8)) for _ in range(2))
    # same job and seed, two sources: at low strength the outputs differ as the sources do
    low = gen.render(jobs, steps=10, init_images=[a, b], strength=0.2)
    assert not np.array_equal(low[0], low[1])
    # the start latents: strength 1 begins at the schedule's first step, a lower one later, nearer the source
    gens = [torch.Generator().manual_seed(7) for _ in range(2)]
    lat_hi, ts_hi = gen._noised_sources([a, a], gens, steps=10, strength=1.0)
    gens = [torch.Generator().manual_seed(7) for _ in range(2)]
    lat_lo, ts_lo = gen._noised_sources([a, a], gens, steps=10, strength=0.3)
    assert len(ts_hi) == 10 and len(ts_lo) == 3 and ts_lo == ts_hi[-3:]
    x0 = gen.pipe.vae.encode(torch.from_numpy(np.asarray(a, np.float32)).permute(2, 0, 1)[None].div(127.5).sub(1)
                             ).latent_dist.mean
    assert (lat_lo[0] - x0[0]).abs().mean() < (lat_hi[0] - x0[0]).abs().mean()
    # the same inputs twice: the same bytes
    assert np.array_equal(gen.render(jobs, steps=10, init_images=[a, b], strength=0.2), low)
    with pytest.raises(ValueError, match="strength"):
        gen.render(jobs, steps=10, init_images=[a, b], strength=0.0)
    with pytest.raises(ValueError, match="resize it first"):
        gen.render(jobs, steps=10, init_images=[a.resize((32, 32)), b], strength=0.5)


def test_translate_refuses_ids_the_checkpoint_never_learned(tiny_world_dir, micro_dive_run, gen, tmp_path):
    t = gen.table
    ext = [i for i in t.identities if i.dataset == "synthvi_ext"]
    fewer = replace(gen, table=TokenTable([i for i in t.identities if i is not ext[0]], t.cameras, t.template,
                                          t.camera_mode))
    with pytest.raises(ValueError, match=f"no identity token for synthvi_ext id {ext[0].pid}"):
        translate(TranslateConfig(data=tiny_world_dir, checkpoint=micro_dive_run / "final", out=tmp_path / "x",
                                  min_images=MIN, n=1, steps=2), generator=fewer, progress=False)
