"""Generation: the checkpoint through vanilla diffusers gives our images; seeds per image; resume."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from dive.generate.pipeline import GenerationRequest, image_seed, load_generator
from dive.generate.run import GenerateConfig, generate, select_identities


@pytest.fixture(scope="module")
def gen(micro_base, micro_dive_run):
    return load_generator(micro_base, micro_dive_run / "final", fuse=False)


def test_vanilla_diffusers_round_trip(micro_base, micro_dive_run, gen):
    """A plain StableDiffusionPipeline + load_textual_inversion + load_lora_weights draws our image."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
    from safetensors.torch import load_file

    table = gen.table
    idt, cam = table.identities[-1].token, table.infrared_cameras()[0].token
    job = GenerationRequest([idt], [cam], n=1, seed=7, steps=5).jobs(table)[0]
    ours = gen.render([job], steps=5)[0]

    ckpt = micro_dive_run / "final"
    pipe = StableDiffusionPipeline.from_pretrained(str(micro_base))
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++")
    emb = load_file(str(ckpt / "learned_embeds.safetensors"))
    pipe.load_textual_inversion(list(emb.values()), token=list(emb))
    pipe.load_lora_weights(str(ckpt), weight_name="pytorch_lora_weights.safetensors")
    pipe.set_progress_bar_config(disable=True)
    img = pipe(f"a {cam} photo of {idt} person", height=128, width=64, num_inference_steps=5, guidance_scale=1.0,
               generator=torch.Generator().manual_seed(image_seed(7, idt, cam, 0)), output_type="np").images[0]
    theirs = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    assert np.array_equal(ours, theirs)


def test_fused_lora_matches_unfused(micro_base, micro_dive_run, gen):
    fused = load_generator(micro_base, micro_dive_run / "final", fuse=True)
    jobs = GenerationRequest([gen.table.identities[0].token], [gen.table.cameras[0].token], n=2, seed=1, steps=4).jobs(gen.table)
    a, b = gen.render(jobs, steps=4), fused.render(jobs, steps=4)
    assert np.abs(a.astype(int) - b).max() <= 2  # merged weights differ only by float rounding


def test_each_image_regenerates_alone(gen):
    table = gen.table
    req = GenerationRequest([t.token for t in table.identities[:2]], [c.token for c in table.infrared_cameras()], n=2,
                            seed=3, steps=4)
    jobs = req.jobs(table)
    batch = gen.render(jobs, steps=4)
    alone = gen.render([jobs[5]], steps=4)[0]
    # batched float arithmetic may round differently: at most one grey level, on a handful of pixels
    diff = np.abs(batch[5].astype(int) - alone)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.001
    assert len({j.seed for j in jobs}) == len(jobs)
    assert not np.array_equal(batch[0], batch[1])


def test_negative_prompt_template_uses_each_images_camera(gen):
    """'{camera}' in the negative prompt becomes each image's own camera token (identity-only guidance)."""
    table = gen.table
    cams = [c.token for c in table.infrared_cameras()]
    jobs = GenerationRequest([table.identities[0].token], cams, n=1, seed=2, steps=4).jobs(table)
    templated = gen.render(jobs, steps=4, guidance=3.0, negative_prompt="a {camera} photo of person")
    for job, image in zip(jobs, templated):
        explicit = gen.render([job], steps=4, guidance=3.0, negative_prompt=f"a {job.camera} photo of person")[0]
        assert np.abs(image.astype(int) - explicit).max() <= 1
    plain = gen.render(jobs[:1], steps=4, guidance=3.0, negative_prompt="a photo of person")[0]
    assert np.abs(templated[0].astype(int) - plain).max() > 1  # the camera in the negative branch matters


def test_identity_selection(gen):
    table = gen.table
    ext = select_identities(table, which="external", min_images=1)
    assert ext and all(t.dataset == "synthvi_ext" for t in ext)
    assert len(select_identities(table, which="external", min_images=1, top_k=1)) == 1
    r1 = select_identities(table, which="all", min_images=1, random_k=2, seed=0)
    assert len(r1) == 2 and r1 == select_identities(table, which="all", min_images=1, random_k=2, seed=0)
    assert select_identities(table, ids=(ext[0].token,)) == [ext[0]]
    big = max(t.images for t in table.identities)
    assert select_identities(table, which="all", min_images=big + 1) == []


def tree(out):
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*.png"))}


def test_generate_kill_and_resume(micro_base, micro_dive_run, gen, tmp_path):
    common = dict(base=micro_base, checkpoint=micro_dive_run / "final", identities="all", min_images=1, n=2, steps=3,
                  batch_size=3)
    full = generate(GenerateConfig(out=tmp_path / "full", **common), generator=gen, progress=False)
    part = tmp_path / "part"
    generate(GenerateConfig(out=part, stop_after=4, **common), generator=gen, progress=False)  # "killed"
    assert len(tree(part)) == 4 and not (part / "manifest.jsonl").exists()
    (part / "manifest-0.jsonl").open("a").write('{"path": "cut')  # a row cut mid-write by the kill
    generate(GenerateConfig(out=part, **common), generator=gen, progress=False)
    assert tree(part) == tree(full)
    rows = [json.loads(x) for x in (part / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == len(tree(full)) == len(gen.table.identities) * len(gen.table.infrared_cameras()) * 2
    assert {"prompt", "seed", "steps", "guidance", "scheduler", "checkpoint_hash"} <= set(rows[0])
    assert (part / "manifest.jsonl").read_text() == (full / "manifest.jsonl").read_text()


def test_generate_refuses_other_settings(micro_base, micro_dive_run, gen, tmp_path):
    common = dict(base=micro_base, checkpoint=micro_dive_run / "final", identities="all", min_images=1, n=1, steps=2)
    generate(GenerateConfig(out=tmp_path / "g", **common), generator=gen, progress=False)
    with pytest.raises(ValueError, match="other settings"):
        generate(GenerateConfig(out=tmp_path / "g", seed=9, **common), generator=gen, progress=False)


def test_sharded_generation_covers_every_job_once(micro_base, micro_dive_run, gen, tmp_path):
    common = dict(base=micro_base, checkpoint=micro_dive_run / "final", identities="all", min_images=1, n=2, steps=2)
    out = tmp_path / "sh"
    generate(GenerateConfig(out=out, **common), generator=gen, progress=False, rank=1, world=2)
    generate(GenerateConfig(out=out, **common), generator=gen, progress=False, rank=0, world=2)
    ref = generate(GenerateConfig(out=tmp_path / "one", **common), generator=gen, progress=False)
    assert tree(out).keys() == tree(ref).keys()
    from PIL import Image

    for rel in tree(ref):  # other batch compositions: equal up to float rounding
        a, b = np.asarray(Image.open(out / rel), dtype=int), np.asarray(Image.open(ref / rel), dtype=int)
        assert np.abs(a - b).max() <= 1


def test_generate_bench_times_ours_and_plain_diffusers(micro_base, micro_dive_run):
    from dive.generate.bench import GenerateBenchConfig, generate_bench

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        res = generate_bench(GenerateBenchConfig(base=micro_base, checkpoint=micro_dive_run / "final", n=6,
                                                 batch_size=4, steps=3, repeats=1, threads=1))
        # its thread count is scoped: later work in the same process (tests, the studio) keeps its own
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert res["images"] == 6
    assert res["ours_images_per_s"] > 0 and res["plain_diffusers_images_per_s"] > 0
    assert res["ratio"] == round(res["ours_images_per_s"] / res["plain_diffusers_images_per_s"], 4)
    # one repeat: its only pair is the best of each (the two differ only by rounding)
    assert res["ratio_median_of_pairs"] == pytest.approx(res["ratio"], rel=5e-3)
    assert res["attention"]["identical"] and res["attention"]["records"] > 0


def test_identity_grid_columns_follow_the_chosen_cameras(micro_base, micro_dive_run, gen, tmp_path):
    """Default: real images, then N per infrared camera; `cameras="all"` adds every visible camera,
    `which="vi"` takes rows from the VI set's identities."""
    from PIL import Image

    from dive.generate.grid import GridConfig, identity_grid

    ckpt = micro_dive_run / "final"
    H, W, table = gen.height, gen.width, gen.table
    n_ir, n_all = len(table.infrared_cameras()), len(table.cameras)
    assert 0 < n_ir < n_all
    ir = Image.open(identity_grid(GridConfig(base=micro_base, checkpoint=ckpt, out=tmp_path / "ir.png", identities=2,
                                             n=1, steps=2)))
    assert ir.size == (3 * W + 6 + n_ir * W, 16 + 2 * H)
    every = Image.open(identity_grid(GridConfig(base=micro_base, checkpoint=ckpt, out=tmp_path / "all.png", identities=2,
                                                n=1, steps=2, cameras="all", which="vi")))
    assert every.size == (3 * W + 6 + n_all * W, 16 + 2 * H)
    ext_rows = np.asarray(ir)[16:, :3 * W]
    vi_rows = np.asarray(every)[16:, :3 * W]
    assert not np.array_equal(ext_rows, vi_rows)  # other identities' real images


def test_a_checkpoint_for_another_base_is_refused_by_name(micro_base, micro_dive_run, tmp_path):
    """A LoRA trained on one base does not fit a UNet of other widths: the error names the layer,
    both widths and the base the checkpoint was trained on, before diffusers touches the pipeline."""
    import shutil

    from conftest import MICRO_MODEL

    from dive.base.models import TinySDConfig, build_unet
    from dive.checkpoint import CheckpointError

    other = tmp_path / "wider-base"
    shutil.copytree(micro_base, other)
    shutil.rmtree(other / "unet")
    build_unet(TinySDConfig(**(MICRO_MODEL | {"unet_channels": (32, 32, 64)}))).save_pretrained(str(other / "unet"))
    with pytest.raises(CheckpointError, match=r"expects 16 input features, this base's UNet has 32; it was trained on"):
        load_generator(other, micro_dive_run / "final")
    load_generator(micro_base, micro_dive_run / "final")  # its own base still loads


def test_a_checkpoint_finds_its_own_base(micro_base, micro_dive_run, tmp_path):
    """Without --base, generation uses the base the checkpoint's dive.json names; a named base that
    is not at hand is an error that says to pass --base."""
    import shutil

    from dive.checkpoint import CheckpointError, resolve_base

    ckpt = micro_dive_run / "final"
    assert resolve_base(ckpt) == micro_base.resolve()
    assert resolve_base(ckpt, tmp_path / "explicit") == tmp_path / "explicit"
    out = generate(GenerateConfig(checkpoint=ckpt, out=tmp_path / "g", min_images=1, n=1, steps=2), progress=False)
    assert json.loads((out / "generate.json").read_text())["base"] == str(micro_base.resolve())
    moved = tmp_path / "moved"
    shutil.copytree(ckpt, moved)
    meta = json.loads((moved / "dive.json").read_text())
    (moved / "dive.json").write_text(json.dumps(meta | {"base": str(tmp_path / "gone")}))
    with pytest.raises(CheckpointError, match="pass --base"):
        generate(GenerateConfig(checkpoint=moved, out=tmp_path / "g2", n=1, steps=2), progress=False)
