"""DiVE fine-tuning: tokens, only-new-rows, checkpoint formats, exact resume, 2 processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from dive.checkpoint import EMBEDS_FILE, LORA_FILE, TOKENS_FILE, TokenTable, check_checkpoint_dir
from dive.train.data import build_training_set, load_sources
from dive.train.trainer import DiVETrainConfig, DiVETrainer


def losses(run) -> list[float]:
    return [json.loads(x)["loss"] for x in (run / "loss.jsonl").read_text().splitlines()]


def test_token_table_selection(tiny_world_dir):
    vi, ext = load_sources(tiny_world_dir)
    ts = build_training_set(vi, ext, min_images=3, seed=0)
    vi_ids = {r.pid for r in vi}
    ext_counts = {}
    for r in ext:
        ext_counts[r.pid] = ext_counts.get(r.pid, 0) + 1
    want_ext = {p for p, n in ext_counts.items() if n >= 3}
    got = {(t.dataset, t.pid) for t in ts.table.identities}
    assert got == {("synthvi_vi", p) for p in vi_ids} | {("synthvi_ext", p) for p in want_ext}
    assert all(t.images == sum(1 for r in ts.records if (r.dataset, r.pid) == (t.dataset, t.pid)) for t in ts.table.identities)
    cams = {(c.dataset, c.camid, c.modality) for c in ts.table.cameras}
    assert ("synthvi_vi", 3, "infrared") in cams and ("synthvi_vi", 6, "infrared") in cams
    assert all(len(c.token) == 8 for c in ts.table.cameras)
    # camera strings are fixed by the seed
    assert [c.token for c in build_training_set(vi, ext, min_images=3, seed=0).table.cameras] == [c.token for c in ts.table.cameras]
    # one token per modality
    tm = build_training_set(vi, ext, min_images=3, granularity="modality")
    assert sorted(c.modality for c in tm.table.cameras) == ["infrared", "visible"]
    # ... whose cameras name no dataset: the table records which datasets had infrared, so the
    # external ids are still told apart (generation expands them, not the VI ids)
    from dive.checkpoint import CheckpointError
    from dive.generate.run import select_identities

    for table in (ts.table, tm.table):
        again = TokenTable.from_dict(table.to_dict())
        assert again.infrared_datasets == ["synthvi_vi"]
        assert {t.dataset for t in select_identities(again, which="external", min_images=0)} == {"synthvi_ext"}
        assert {t.dataset for t in select_identities(again, which="vi", min_images=0)} == {"synthvi_vi"}
    older = tm.table.to_dict()
    del older["infrared_datasets"]  # a per-modality table written before the field existed
    with pytest.raises(CheckpointError, match="infrared_datasets"):
        select_identities(TokenTable.from_dict(older), which="external", min_images=0)
    older_camera = ts.table.to_dict()
    del older_camera["infrared_datasets"]  # per-camera tables tell by their camera tokens
    assert {t.dataset for t in select_identities(TokenTable.from_dict(older_camera), min_images=0)} == {"synthvi_ext"}
    assert all(p.startswith("a ") and p.endswith(" person") for p in ts.prompts)
    # camera modes: learned rows (default) vs frozen strings that only the LoRA reads (the paper)
    frozen = build_training_set(vi, ext, min_images=3, seed=0, camera_mode="string").table
    assert ts.table.camera_mode == "embedding" and all(c.learned for c in ts.table.cameras)
    assert not any(c.learned for c in frozen.cameras)
    assert set(frozen.learned_tokens) == {t.token for t in frozen.identities}
    assert [c.token for c in frozen.cameras] == [c.token for c in ts.table.cameras]


def test_only_new_embedding_rows_change(micro_base, micro_dive_run):
    from transformers import CLIPTextModel

    before = CLIPTextModel.from_pretrained(micro_base / "text_encoder").get_input_embeddings().weight
    table = TokenTable.load(micro_dive_run / "final" / TOKENS_FILE)
    emb = load_file(str(micro_dive_run / "final" / EMBEDS_FILE))
    learned_cameras = [c for c in table.cameras if c.learned]
    assert table.camera_mode == "embedding" and len(learned_cameras) == len(table.cameras) > 0  # the default
    assert set(emb) == set(table.learned_tokens) and len(emb) == len(table.identities) + len(learned_cameras)
    # the trained text encoder's original rows are the base's rows exactly: rebuild from a checkpoint
    cfg = json.loads((micro_dive_run / "config.json").read_text())
    trainer = DiVETrainer(DiVETrainConfig(**{**cfg, "out": micro_dive_run, "steps": 6}), progress=False)
    trainer.resume()
    after = trainer.text_encoder.get_input_embeddings().weight
    assert torch.equal(after[: before.shape[0]], before)
    init = before[trainer.tokenizer("person", add_special_tokens=False).input_ids].mean(0)
    moved = (after[trainer.new_ids] - init).abs().amax(dim=1)
    assert (moved > 0).sum() >= len(moved) // 2  # identity rows drawn in the 6 batches were trained


def test_checkpoint_loads_with_vanilla_diffusers(micro_base, micro_dive_run):
    from diffusers import StableDiffusionPipeline

    final = check_checkpoint_dir(micro_dive_run / "final")
    pipe = StableDiffusionPipeline.from_pretrained(str(micro_base))
    emb = load_file(str(final / EMBEDS_FILE))
    pipe.load_textual_inversion(list(emb.values()), token=list(emb))
    pipe.load_lora_weights(str(final), weight_name=LORA_FILE)
    assert pipe.get_list_adapters()["unet"]
    table = TokenTable.load(final / TOKENS_FILE)
    tok_ids = pipe.tokenizer(table.prompt(table.identities[0], table.cameras[0])).input_ids
    assert pipe.tokenizer.convert_tokens_to_ids(table.identities[0].token) in tok_ids


def test_resume_continues_the_same_loss_curve(micro_base, tiny_world_dir, micro_dive_run, tmp_path):
    from dive.train.trainer import train_dive

    run = tmp_path / "resumed"
    common = dict(base=micro_base, data=tiny_world_dir, out=run, steps=6, batch_size=4, min_images=3, save_every=3,
                  preview_every=0, rank=4)
    train_dive(DiVETrainConfig(**common, stop_after=4), progress=False)  # "killed" after step 4
    assert len(losses(run)) == 4 and not (run / "final").exists()
    train_dive(DiVETrainConfig(**common), progress=False)  # resumes from checkpoint-3
    assert losses(run) == losses(micro_dive_run)
    a = load_file(str(run / "final" / LORA_FILE))
    b = load_file(str(micro_dive_run / "final" / LORA_FILE))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_written_before_infrared_datasets_still_packages(micro_dive_run, tmp_path):
    """Resume, --init-from and package compare token tables with describes_same_tokens: a table
    without infrared_datasets (written before the field) still matches, and packaging adds it."""
    import json
    import shutil

    from dive.train.trainer import package_checkpoint

    old = tmp_path / "old-final"
    shutil.copytree(micro_dive_run / "final", old)
    table = json.loads((old / "tokens.json").read_text())
    assert table.pop("infrared_datasets") == ["synthvi_vi"]
    (old / "tokens.json").write_text(json.dumps(table))
    packed = package_checkpoint(old, tmp_path / "packed")
    assert TokenTable.load(packed / "tokens.json").infrared_datasets == ["synthvi_vi"]
    # ... while a table with other tokens is still refused
    table["cameras"][0]["token"] = "zzzzzzzz"
    (old / "tokens.json").write_text(json.dumps(table))
    with pytest.raises(ValueError, match="does not match"):
        package_checkpoint(old, tmp_path / "packed2")
    other = TokenTable.load(packed / "tokens.json")
    assert other.describes_same_tokens(TokenTable.from_dict(other.to_dict() | {"infrared_datasets": []}))
    assert not other.describes_same_tokens(TokenTable.from_dict(other.to_dict() | {"infrared_datasets": ["x"]}))


@pytest.mark.slow
def test_two_cpu_processes(micro_base, tiny_world_dir, micro_dive_run, tmp_path):
    run = tmp_path / "ddp"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    cmd = [torchrun, "--nproc_per_node", "2", "--master_port", "29517", "-m", "dive", "train",
           "--base", str(micro_base), "--data", str(tiny_world_dir), "--out", str(run), "--steps", "6",
           "--batch-size", "4", "--min-images", "3", "--save-every", "3", "--preview-every", "0", "--rank", "4", "--cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    check_checkpoint_dir(run / "final")
    # two halves of the same global batch average to the single-process gradient
    assert losses(run) == pytest.approx(losses(micro_dive_run), rel=1e-4)


def test_package_checkpoint_adds_references(micro_dive_run, tmp_path):
    from dive.checkpoint import reference_path
    from dive.train.trainer import package_checkpoint

    out = package_checkpoint(micro_dive_run / "checkpoint-6", tmp_path / "pkg")
    assert not list(out.glob("state.*"))
    table = TokenTable.load(out / TOKENS_FILE)
    assert all(reference_path(out, t.token).exists() for t in table.identities)


def test_package_names_a_copy_of_its_base_and_refuses_another(micro_base, micro_dive_run, tmp_path):
    """Shipping a checkpoint beside a copy of its base: dive.json names the copy (found from any
    folder), and a folder whose weights differ from the trained base is refused by file name."""
    import json
    import shutil

    from dive.checkpoint import trained_base
    from dive.train.trainer import package_checkpoint

    copy = tmp_path / "bases" / "copy"
    shutil.copytree(micro_base, copy)
    out = package_checkpoint(micro_dive_run / "final", tmp_path / "pkg", base_name=copy)
    meta = json.loads((out / "dive.json").read_text())
    assert meta["base"] == str(copy) and trained_base(out) == copy.resolve()
    assert meta["config"]["base"] == json.loads((micro_dive_run / "final" / "dive.json").read_text())["config"]["base"]
    unet = next((copy / "unet").glob("*.safetensors"))
    unet.write_bytes(unet.read_bytes()[:-4] + b"\0\0\0\1")
    with pytest.raises(ValueError, match="unet/.*differ"):
        package_checkpoint(micro_dive_run / "final", tmp_path / "pkg2", base_name=copy)
    with pytest.raises(ValueError, match="not a diffusers base"):
        package_checkpoint(micro_dive_run / "final", tmp_path / "pkg3", base_name=tmp_path / "nowhere")
    assert not (tmp_path / "pkg2").exists() and not (tmp_path / "pkg3").exists()


def test_checkpoint_hash_reads_tensors_not_header_order(micro_dive_run, tmp_path):
    """safetensors writes its metadata map in no fixed order: two files with the same tensors and
    metadata, headers ordered differently, hash alike; a changed tensor does not."""
    import json
    import shutil

    from dive.checkpoint import checkpoint_hash

    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(micro_dive_run / "final", a)
    shutil.copytree(micro_dive_run / "final", b)
    raw = (b / LORA_FILE).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    flipped = json.dumps(dict(reversed(list(header.items()))), separators=(",", ":")).encode()
    flipped += b" " * (n - len(flipped))
    assert len(flipped) == n
    (b / LORA_FILE).write_bytes(raw[:8] + flipped + raw[8 + n :])
    assert (a / LORA_FILE).read_bytes() != (b / LORA_FILE).read_bytes()
    assert load_file(str(b / LORA_FILE)).keys() == load_file(str(a / LORA_FILE)).keys()
    assert checkpoint_hash(a) == checkpoint_hash(b)
    tensors = load_file(str(b / EMBEDS_FILE))
    key = next(iter(tensors))
    tensors[key] = tensors[key] + 1e-3
    save_file(tensors, str(b / EMBEDS_FILE))
    assert checkpoint_hash(a) != checkpoint_hash(b)


def test_packaged_lora_is_float16_and_renders_the_same(micro_base, micro_dive_run, tmp_path):
    """Shipped checkpoints store the LoRA in float16 (half the size, keeping diffusers' adapter
    metadata); loaded back into the float32 UNet it renders what the float32 run does."""
    from safetensors import safe_open

    from dive.generate.pipeline import GenerationRequest, load_generator
    from dive.train.trainer import package_checkpoint

    src = micro_dive_run / "final"
    out = package_checkpoint(src, tmp_path / "pkg")
    with safe_open(str(src / LORA_FILE), framework="pt") as f32, safe_open(str(out / LORA_FILE), framework="pt") as f16:
        assert f16.metadata() == f32.metadata() and set(f16.keys()) == set(f32.keys())
        assert {f16.get_tensor(k).dtype for k in f16.keys()} == {torch.float16}
    images = []
    for ckpt in (src, out):
        gen = load_generator(micro_base, ckpt)
        jobs = GenerationRequest([gen.table.identities[0].token], [gen.table.infrared_cameras()[0].token], n=2).jobs(gen.table)
        images.append(gen.render(jobs, steps=4).astype(int))
    assert np.abs(images[0] - images[1]).max() <= 2
    kept = package_checkpoint(src, tmp_path / "pkg32", lora_dtype=None)
    assert (kept / LORA_FILE).read_bytes() == (src / LORA_FILE).read_bytes()


def test_embedding_max_norm_bounds_learned_rows(micro_base, tiny_world_dir, tmp_path):
    from dive.train.trainer import train_dive

    cfg = DiVETrainConfig(base=micro_base, data=tiny_world_dir, out=tmp_path / "run", steps=2, batch_size=4,
                          min_images=3, save_every=2, preview_every=0, rank=4, embedding_lr=0.5,
                          embedding_max_norm=0.05)
    final = train_dive(cfg, progress=False)
    emb = load_file(str(final / EMBEDS_FILE))
    norms = torch.stack([v.norm() for v in emb.values()])
    assert norms.max() <= 0.05 + 1e-6 and norms.min() > 0


def test_a_lora_on_every_layer_loads_whole_with_diffusers(micro_base, tiny_world_dir, tmp_path):
    """--lora-targets all: convolutions and attention in one file, and diffusers' own loader puts
    every trained tensor back (a mixed old/new key format once lost the attention layers)."""
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    from dive.checkpoint import load_into_pipeline
    from dive.train.trainer import LORA_TARGET_SETS, train_dive
    from dive.utils.state import read_training_state

    cfg = DiVETrainConfig(base=micro_base, data=tiny_world_dir, out=tmp_path / "run", steps=2, batch_size=4,
                          min_images=3, save_every=2, preview_every=0, rank=4, lora_targets="all")
    final = train_dive(cfg, progress=False)
    state, _ = read_training_state(tmp_path / "run" / "checkpoint-2")  # what the trainer held at the end
    trained = {k[len("lora."):]: v for k, v in state.items() if k.startswith("lora.")}
    assert any(".conv1." in k for k in trained) and any(".to_q." in k for k in trained)
    pipe = StableDiffusionPipeline.from_pretrained(str(micro_base))
    load_into_pipeline(pipe, final)
    loaded = get_peft_model_state_dict(pipe.unet, adapter_name="dive")
    assert loaded.keys() == trained.keys()
    assert all(torch.equal(loaded[k], trained[k]) for k in trained)
    with pytest.raises(ValueError, match="lora_targets"):
        DiVETrainer(DiVETrainConfig(base=micro_base, data=tiny_world_dir, out=tmp_path / "bad", lora_targets="convs"),
                    progress=False)
    assert set(LORA_TARGET_SETS["attention"]) < set(LORA_TARGET_SETS["transformer"]) < set(LORA_TARGET_SETS["all"])


def test_threads_option_is_scoped_to_the_run(micro_base, tiny_world_dir, tmp_path):
    """--threads sets torch's thread count while the run builds and trains, then gives the caller's back
    (in-process users such as research/identity_probe.py keep their own setting)."""
    before = torch.get_num_threads()
    seen = []
    cfg = DiVETrainConfig(base=micro_base, data=tiny_world_dir, out=tmp_path / "run", steps=1, batch_size=4,
                          min_images=3, save_every=1, preview_every=0, rank=4, threads=before + 1)
    trainer = DiVETrainer(cfg, progress=False)
    assert torch.get_num_threads() == before
    loss = trainer.training_loss
    trainer.training_loss = lambda step, micro: (seen.append(torch.get_num_threads()), loss(step, micro))[1]
    trainer.train()
    assert seen == [before + 1] and torch.get_num_threads() == before


@pytest.mark.parametrize("identity_modalities", ["both", "visible"])
def test_identity_modalities_visible_keeps_infrared_out_of_identity_tokens(micro_base, tiny_world_dir, tmp_path,
                                                                          identity_modalities):
    """With visible, infrared samples train the LoRA and the camera tokens but not the identity tokens:
    VI ids seen only in infrared get no gradient; with both (the paper) they do."""
    vi, ext = load_sources(tiny_world_dir)
    ts = build_training_set(vi, ext, min_images=3, vi_modalities="infrared")
    cfg = DiVETrainConfig(base=micro_base, data=tiny_world_dir, out=tmp_path / "run", batch_size=16, rank=4,
                          infrared_share=0.5, identity_modalities=identity_modalities)
    trainer = DiVETrainer(cfg, training_set=ts, progress=False)
    trainer.training_loss(0, 0).backward()
    grad = trainer.text_encoder.get_input_embeddings().weight.grad
    rows = dict(zip(ts.table.learned_tokens, trainer.new_ids.tolist()))
    moved = {t: bool(grad[i].abs().max() > 0) for t, i in rows.items()}
    vi_ids = [t.token for t in ts.table.identities if t.dataset == "synthvi_vi"]
    ext_ids = [t.token for t in ts.table.identities if t.dataset != "synthvi_vi"]
    ir_cams = [c.token for c in ts.table.infrared_cameras()]
    assert any(moved[t] for t in ext_ids) and any(moved[t] for t in ir_cams)
    assert any(moved[t] for t in vi_ids) == (identity_modalities == "both")
    with pytest.raises(ValueError, match="never train the VI identity tokens"):
        DiVETrainer(DiVETrainConfig(base=micro_base, data=tiny_world_dir, out=tmp_path / "bad", vi_modalities="infrared",
                                    identity_modalities="visible"), progress=False)


def test_infrared_share_sets_the_infrared_fraction_of_batches():
    from dive.train.trainer import draw_indices

    N, infrared = 100, torch.arange(80, 100)  # 20% infrared, like SynthVI
    g = torch.Generator().manual_seed(0)
    plain = torch.cat([draw_indices(g, 32, N, hflip=True) for _ in range(200)])
    assert plain.min() >= 0 and plain.max() < 2 * N
    assert abs(((plain % N) >= 80).float().mean().item() - 0.2) < 0.03
    g = torch.Generator().manual_seed(0)
    half = torch.cat([draw_indices(g, 32, N, hflip=True, infrared=infrared, infrared_share=0.5) for _ in range(200)])
    assert abs(((half % N) >= 80).float().mean().item() - 0.5) < 0.03
    assert abs((half >= N).float().mean().item() - 0.5) < 0.03  # mirrors still half the time
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(draw_indices(g1, 32, N, hflip=False, infrared=infrared, infrared_share=0.5),
                       draw_indices(g2, 32, N, hflip=False, infrared=infrared, infrared_share=0.5))
    with pytest.raises(ValueError, match="infrared"):
        draw_indices(g1, 32, N, hflip=False, infrared=torch.arange(0), infrared_share=0.5)


def test_infrared_share_is_refused_without_infrared_images(micro_base, tiny_world_dir, tmp_path):
    vi, ext = load_sources(tiny_world_dir)
    ts = build_training_set([r for r in vi if r.modality.value == "visible"], ext, min_images=1)
    cfg = DiVETrainConfig(base=micro_base, data=tiny_world_dir, out=tmp_path / "run", infrared_share=0.5)
    with pytest.raises(ValueError, match="0 infrared images"):
        DiVETrainer(cfg, training_set=ts, progress=False)


# ---------------------------------------------------------------------------------------------
# the text-encoder LoRA experiment (--text-rank): its own file, merged at load, resumed exactly
# ---------------------------------------------------------------------------------------------

TEXT_LORA = dict(steps=6, batch_size=4, min_images=3, save_every=3, preview_every=0, rank=4, text_rank=2)


@pytest.fixture(scope="module")
def text_lora_run(micro_base, tiny_world_dir, tmp_path_factory):
    from dive.train.trainer import train_dive

    run = tmp_path_factory.mktemp("textlora") / "run"
    train_dive(DiVETrainConfig(base=micro_base, data=tiny_world_dir, out=run, **TEXT_LORA), progress=False)
    return run


@pytest.mark.slow
def test_text_lora_resumes_exactly_and_is_refused_by_other_settings(micro_base, tiny_world_dir, text_lora_run, tmp_path):
    from dive.checkpoint import TEXT_LORA_FILE
    from dive.train.trainer import train_dive

    run = tmp_path / "resumed"
    common = dict(base=micro_base, data=tiny_world_dir, out=run, **TEXT_LORA)
    train_dive(DiVETrainConfig(**common, stop_after=4), progress=False)
    train_dive(DiVETrainConfig(**common), progress=False)  # resumes from checkpoint-3, text LoRA included
    assert losses(run) == losses(text_lora_run)
    a = load_file(str(run / "final" / TEXT_LORA_FILE))
    b = load_file(str(text_lora_run / "final" / TEXT_LORA_FILE))
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(a[k].abs().max() > 0 for k in a if k.endswith("lora_B"))  # zero at init: it trained
    # the UNet LoRA file stays what vanilla diffusers reads: no text-encoder keys in it
    assert not any(k.startswith("text_encoder") for k in load_file(str(text_lora_run / "final" / LORA_FILE)))
    with pytest.raises(ValueError, match="text_rank"):
        train_dive(DiVETrainConfig(**{**common, "text_rank": 0, "steps": 9}), progress=False)


def test_text_lora_merged_at_load_matches_the_training_encoder(micro_base, text_lora_run):
    from dive.generate.pipeline import load_generator

    cfg = json.loads((text_lora_run / "config.json").read_text())
    trainer = DiVETrainer(DiVETrainConfig(**{**cfg, "out": text_lora_run}), progress=False)
    trainer.resume()  # the last checkpoint (step 6) = final
    gen = load_generator(micro_base, text_lora_run / "final")
    table = gen.table
    prompt = table.prompt(table.identities[0].token, table.infrared_cameras()[0].token)
    ids = gen.pipe.tokenizer([prompt], padding="max_length", max_length=gen.pipe.tokenizer.model_max_length,
                             return_tensors="pt").input_ids
    with torch.no_grad():
        trained = trainer.text_encoder(ids)[0]
        loaded = gen.pipe.text_encoder(ids)[0]
    assert torch.allclose(trained, loaded, atol=1e-5)
    # and without the merge the same tokens would encode differently (the LoRA is not a no-op)
    trainer_plain = trainer.accelerator.unwrap_model(trainer.text_encoder)
    for mod in trainer_plain.modules():
        if hasattr(mod, "disable_adapters") and hasattr(mod, "lora_A"):
            mod.enable_adapters(False)
    with torch.no_grad():
        unmerged = trainer_plain(ids)[0]
    assert not torch.allclose(unmerged, loaded, atol=1e-5)


def test_a_foreign_text_lora_file_is_refused_naming_it(micro_base, text_lora_run, tmp_path):
    import shutil

    from safetensors.torch import save_file

    from dive.checkpoint import TEXT_LORA_FILE, CheckpointError
    from dive.generate.pipeline import load_generator

    ckpt = tmp_path / "ckpt"
    shutil.copytree(text_lora_run / "final", ckpt)
    tensors = load_file(str(ckpt / TEXT_LORA_FILE))
    save_file(tensors, str(ckpt / TEXT_LORA_FILE))  # no "dive-text-lora" format tag: someone else's file
    with pytest.raises(CheckpointError, match=f"{TEXT_LORA_FILE}: not a DiVE text-encoder LoRA"):
        load_generator(micro_base, ckpt)
    name = next(k for k in tensors if k.endswith("lora_A"))
    tensors[name] = torch.zeros(tensors[name].shape[0], 3)  # wrong input width
    save_file(tensors, str(ckpt / TEXT_LORA_FILE), metadata={"format": "dive-text-lora", "lora_alpha": "2"})
    with pytest.raises(CheckpointError, match="do not fit"):
        load_generator(micro_base, ckpt)


@pytest.fixture(scope="module")
def infrared_adapter_run(micro_base, tiny_world_dir, tmp_path_factory):
    from dive.train.trainer import train_dive

    out = tmp_path_factory.mktemp("ir-adapter") / "run"
    cfg = DiVETrainConfig(base=micro_base, data=tiny_world_dir, out=out, steps=4, batch_size=8, min_images=3,
                          save_every=2, preview_every=4, rank=4, lora_targets="all", infrared_share=0.5, lr=3e-2,
                          infrared_adapter=True)
    train_dive(cfg, progress=False)
    return out, cfg


@pytest.mark.slow
def test_infrared_adapter_trains_on_infrared_images_only(micro_base, tiny_world_dir, infrared_adapter_run, tmp_path):
    """The infrared adapter gets gradient from infrared images only, leaves visible images' outputs
    untouched, trains, resumes exactly, and is refused by a run without it."""
    from dive.checkpoint import INFRARED_ADAPTER, INFRARED_LORA_FILE
    from dive.train.trainer import train_dive

    run, cfg = infrared_adapter_run
    final = check_checkpoint_dir(run / "final")
    ir = load_file(str(final / INFRARED_LORA_FILE))
    shared = load_file(str(final / LORA_FILE))
    assert ir.keys() == shared.keys()
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in ir.items())  # B starts at zero
    assert (run / "previews" / "step-000004.png").exists()

    trainer = DiVETrainer(DiVETrainConfig(**{**cfg.__dict__, "out": tmp_path / "probe"}), progress=False)
    ir_params = [p for n, p in trainer.unet.named_parameters() if f".{INFRARED_ADAPTER}." in n]
    assert ir_params and all(p.requires_grad for p in ir_params)
    with torch.no_grad():
        for p in ir_params:
            p.normal_(0, 0.5)  # a strong adapter, so that leaking into visible images would show
    # a visible-only batch: the adapter changes nothing and receives no gradient
    visible = (~trainer.is_infrared).nonzero().flatten()[:4]
    lat = trainer.mean[visible]
    t = torch.full((4,), 500)
    hidden = trainer.text_encoder(trainer.ids[visible])[0]
    with trainer.gate.images(torch.zeros(4, dtype=torch.bool)):
        gated = trainer.unet(lat, t, encoder_hidden_states=hidden).sample
    trainer.unet.set_adapters(["default"])
    plain = trainer.unet(lat, t, encoder_hidden_states=hidden).sample
    trainer.unet.set_adapters(["default", INFRARED_ADAPTER])
    assert torch.equal(gated, plain)
    gated.pow(2).mean().backward(retain_graph=True)
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in ir_params)
    with trainer.gate.images(torch.ones(4, dtype=torch.bool)):
        opened = trainer.unet(lat, t, encoder_hidden_states=hidden).sample
    assert (opened - plain).abs().max() > 1e-3
    with pytest.raises(RuntimeError, match="gate was not set"):
        trainer.unet(lat, t, encoder_hidden_states=hidden)

    resumed = tmp_path / "resumed"
    train_dive(DiVETrainConfig(**{**cfg.__dict__, "out": resumed, "stop_after": 3}), progress=False)
    train_dive(DiVETrainConfig(**{**cfg.__dict__, "out": resumed}), progress=False)
    assert losses(resumed) == losses(run)
    again = load_file(str(resumed / "final" / INFRARED_LORA_FILE))
    assert all(torch.equal(again[k], ir[k]) for k in ir)
    with pytest.raises(ValueError, match="infrared adapter"):
        DiVETrainer(DiVETrainConfig(**{**cfg.__dict__, "out": resumed, "infrared_adapter": False, "steps": 6}),
                    progress=False).train()


def test_infrared_adapter_generation_matches_vanilla_diffusers(micro_base, infrared_adapter_run):
    """Our generator merges the infrared adapter for infrared cameras only; a plain diffusers
    pipeline with the two LoRA files and `set_adapters` renders the same images."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    from dive.checkpoint import INFRARED_LORA_FILE
    from dive.generate.pipeline import ImageJob, image_seed, load_generator

    final = infrared_adapter_run[0] / "final"
    gen = load_generator(micro_base, final)
    table = gen.table
    idt = table.identities[0].token
    ir_cam = table.infrared_cameras()[0].token
    vis_cam = next(c.token for c in table.cameras if c.modality == "visible")
    jobs = [ImageJob(idt, cam, 0, image_seed(0, idt, cam, 0), table.prompt(idt, cam)) for cam in (ir_cam, vis_cam)]
    mixed = gen.render(jobs, steps=4)
    alone = np.stack([gen.render([j], steps=4)[0] for j in jobs])
    assert np.abs(mixed.astype(int) - alone.astype(int)).max() <= 1
    again = gen.render(jobs[:1], steps=4)  # after switching back and forth: the same weights, bit for bit
    assert np.array_equal(again[0], alone[0])

    pipe = StableDiffusionPipeline.from_pretrained(str(micro_base), safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++")
    emb = load_file(str(final / EMBEDS_FILE))
    pipe.load_textual_inversion(list(emb.values()), token=list(emb))
    pipe.load_lora_weights(str(final), weight_name=LORA_FILE, adapter_name="dive")
    pipe.load_lora_weights(str(final), weight_name=INFRARED_LORA_FILE, adapter_name="infrared")
    vanilla = []
    for job, names in zip(jobs, (["dive", "infrared"], ["dive"])):
        pipe.set_adapters(names)
        lat = torch.randn((pipe.unet.config.in_channels, gen.height // gen.vae_scale, gen.width // gen.vae_scale),
                          generator=torch.Generator().manual_seed(job.seed))[None]
        img = pipe(job.prompt, height=gen.height, width=gen.width, num_inference_steps=4, guidance_scale=1.0,
                   latents=lat, output_type="np").images[0]
        vanilla.append((np.clip(img, 0, 1) * 255).round().astype(np.uint8))
    assert np.abs(np.stack(vanilla).astype(int) - alone.astype(int)).max() <= 2
    pipe.set_adapters(["dive"])  # the infrared adapter matters: without it the infrared image differs
    lat = torch.randn((pipe.unet.config.in_channels, gen.height // gen.vae_scale, gen.width // gen.vae_scale),
                      generator=torch.Generator().manual_seed(jobs[0].seed))[None]
    without = pipe(jobs[0].prompt, height=gen.height, width=gen.width, num_inference_steps=4, guidance_scale=1.0,
                   latents=lat, output_type="np").images[0]
    assert np.abs((np.clip(without, 0, 1) * 255).round() - alone[0]).max() > 10


def test_second_stage_trains_only_the_infrared_adapter(micro_base, tiny_world_dir, infrared_adapter_run, tmp_path):
    """--init-from a checkpoint + --train-parts infrared-adapter: tokens and the shared LoRA stay
    bit for bit, the infrared adapter moves, and every drawn image is infrared."""
    from dive.checkpoint import INFRARED_LORA_FILE

    first, cfg = infrared_adapter_run
    init = first / "final"
    stage2 = DiVETrainConfig(**{**cfg.__dict__, "out": tmp_path / "stage2", "steps": 2, "save_every": 2,
                                "preview_every": 0, "init_from": init, "train_parts": "infrared-adapter"})
    trainer = DiVETrainer(stage2, progress=False)
    drawn = []
    loss = trainer.training_loss

    def spy(step, micro):
        from dive.utils.state import step_generator
        from dive.train.trainer import draw_indices

        g = step_generator(stage2.seed, 3, step)
        drawn.append(draw_indices(g, stage2.batch_size, trainer.num_images, hflip=stage2.hflip,
                                  infrared=trainer.infrared_index, infrared_share=1.0) % trainer.num_images)
        return loss(step, micro)

    trainer.training_loss = spy
    final = trainer.train()
    assert all(bool(trainer.is_infrared[d].all()) for d in drawn)
    for name, same in ((EMBEDS_FILE, True), (LORA_FILE, True), (INFRARED_LORA_FILE, False)):
        a, b = load_file(str(init / name)), load_file(str(final / name))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a) == same, name
    with pytest.raises(ValueError, match="needs infrared_adapter"):
        DiVETrainer(DiVETrainConfig(**{**stage2.__dict__, "infrared_adapter": False, "init_from": None}), progress=False)
    with pytest.raises(ValueError, match="token table"):
        DiVETrainer(DiVETrainConfig(**{**stage2.__dict__, "seed": 1}), progress=False)  # other camera strings


def test_loading_a_checkpoint_drops_only_the_expected_lora_notices(micro_base, infrared_adapter_run):
    """Every checkpoint load used to print diffusers' "No LoRA keys associated to CLIPTextModel" and
    peft's "Already found a `peft_config`" (UNet-only LoRA files, a second adapter: both by design).
    load_into_pipeline drops those two and nothing else; a plain diffusers load right after still
    prints the first, so the filter does not outlive the call."""
    import logging
    import warnings

    from diffusers import StableDiffusionPipeline

    from dive.checkpoint import load_into_pipeline

    final = infrared_adapter_run[0] / "final"
    messages = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    root = logging.getLogger("diffusers")
    root.addHandler(handler)
    try:
        pipe = StableDiffusionPipeline.from_pretrained(str(micro_base), safety_checker=None,
                                                       requires_safety_checker=False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            load_into_pipeline(pipe, final)
        assert not [m for m in messages if m.startswith("No LoRA keys associated to")]
        assert not [w for w in caught if "peft_config" in str(w.message)]
        assert pipe.get_list_adapters()["unet"] == ["dive", "infrared"]  # both adapters still loaded
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipe.load_lora_weights(str(final), weight_name=LORA_FILE, adapter_name="again")
        assert [m for m in messages if m.startswith("No LoRA keys associated to CLIPTextModel")]
        assert [w for w in caught if "peft_config" in str(w.message)]
    finally:
        root.removeHandler(handler)
