"""The tiny base: the project's own CLIP-BPE vocabulary and a diffusers folder SD loads unchanged."""

from __future__ import annotations

import json

import numpy as np
import torch

from dive.base.tokenizer import caption_corpus, load_tokenizer, write_tokenizer_files


def test_tokenizer_every_caption_word_is_one_token(tmp_path):
    tok = load_tokenizer(write_tokenizer_files(tmp_path / "tok"))
    words = caption_corpus(n_identities=300)
    assert all(len(tok.tokenize(w)) == 1 for w in words)
    ids = tok("a photo of a tall slim person").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and len(ids) == 9
    # unknown words (DiVE's random camera strings) still tokenize, into known pieces
    pieces = tok.tokenize("a b8zbxkoh photo")
    assert len(pieces) > 3 and tok.unk_token_id not in tok.convert_tokens_to_ids(pieces)


def test_tokenizer_is_deterministic(tmp_path):
    a = write_tokenizer_files(tmp_path / "a")
    b = write_tokenizer_files(tmp_path / "b")
    assert (a / "merges.txt").read_text() == (b / "merges.txt").read_text()
    assert json.loads((a / "vocab.json").read_text()) == json.loads((b / "vocab.json").read_text())


def test_pretrained_base_loads_in_plain_diffusers(micro_base):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(micro_base))
    pipe.set_progress_bar_config(disable=True)
    img = pipe(["a photo of a person"], height=128, width=64, num_inference_steps=3,
               generator=torch.Generator().manual_seed(0), output_type="np").images
    assert img.shape == (1, 128, 64, 3) and np.isfinite(img).all()
    assert pipe.vae.config.scaling_factor != 0.18215  # measured on the web pool's latents
    meta = json.loads((micro_base / "dive_base.json").read_text())
    assert meta["trained_by"] == "dive base pretrain" and meta["parameters"]["unet"] > 0
    assert (micro_base / "tokenizer" / "merges.txt").exists()
    # the UNet is stored in float16 (half the shipped size) and plain diffusers loads it as float32
    from safetensors import safe_open

    with safe_open(str(micro_base / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    assert pipe.unet.dtype == torch.float32 and pipe.text_encoder.dtype == torch.float32


def test_v_prediction_loss_targets_velocity_and_recovers_x0():
    from dive.base.models import training_scheduler
    from dive.utils.diffusion import diffusion_loss, diffusion_target, min_snr_weights

    sched = training_scheduler("v_prediction")
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 8, 16, 8, generator=g), torch.randn(4, 8, 16, 8, generator=g)
    t = torch.tensor([0, 250, 700, 999])
    v = diffusion_target(sched, x0, noise, t)
    a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    xt = sched.add_noise(x0, noise, t)
    # a perfect v prediction gives x0 back without the 1/sqrt(alpha_bar) blow-up of epsilon
    assert torch.allclose(a.sqrt() * xt - (1 - a).sqrt() * v, x0, atol=1e-4)
    assert diffusion_loss(sched, v, x0, noise, t, snr_gamma=5.0).item() < 1e-10
    w = min_snr_weights(sched, t, 5.0)
    assert w[0] < w[-1] <= 1.0  # low-noise steps are down-weighted
    eps_sched = training_scheduler("epsilon")
    assert torch.equal(diffusion_target(eps_sched, x0, noise, t), noise)


def test_standardized_latents_keep_reconstructions_and_are_unit_normal():
    from dive.base.models import TinySDConfig, build_vae
    from dive.base.pretrain import standardize_latents

    torch.manual_seed(0)
    vae = build_vae(TinySDConfig()).eval()
    x = torch.rand(6, 3, 128, 64) * 2 - 1
    with torch.no_grad():
        post = vae.encode(x).latent_dist
        before = vae.decode(post.mean).sample
        mean, std = standardize_latents(vae, post.mean, post.std)
        after_post = vae.encode(x).latent_dist
        after = vae.decode(after_post.mean).sample
    assert vae.config.scaling_factor == 1.0
    assert torch.allclose(after_post.mean, mean, atol=1e-4)
    assert torch.allclose(after_post.std, std, atol=1e-5)
    assert torch.allclose(mean.mean(dim=(0, 2, 3)), torch.zeros(8), atol=1e-4)
    assert torch.allclose(mean.std(dim=(0, 2, 3)), torch.ones(8), atol=1e-4)
    assert (after - before).abs().max() < 1e-3


def test_text_time_embedding_feeds_a_pooled_caption_to_every_block():
    """The option adds diffusers' own `addition_embed_type="text"`: computed from
    encoder_hidden_states inside the UNet, so a change of text alone changes the timestep
    embedding (with cross-attention removed from the picture)."""
    from dive.base.models import TinySDConfig, build_unet

    torch.manual_seed(0)
    unet = build_unet(TinySDConfig(unet_channels=(16, 16, 32), unet_head_dim=4, text_width=32, norm_groups=8))
    assert unet.config.addition_embed_type == "text"
    a, b = torch.randn(1, 77, 32), torch.randn(1, 77, 32)
    assert not torch.allclose(unet.add_embedding(a), unet.add_embedding(b))
    plain = build_unet(TinySDConfig(unet_channels=(16, 16, 32), unet_head_dim=4, text_width=32, norm_groups=8,
                                    text_time_embedding=False))
    assert plain.config.addition_embed_type is None and getattr(plain, "add_embedding", None) is None


def test_contrastive_loss_prefers_matching_pairs():
    from dive.base.pretrain import contrastive_loss

    g = torch.Generator().manual_seed(0)
    img = torch.randn(16, 32, generator=g)
    scale = torch.tensor(float(np.log(1 / 0.07)))
    matched = contrastive_loss(img, img + 0.1 * torch.randn(16, 32, generator=g), scale)
    shuffled = contrastive_loss(img, img.roll(1, 0), scale)
    assert matched < 0.1 < np.log(16) < shuffled


def test_text_stage_trains_the_text_encoder_then_the_unet_stage_keeps_it_frozen(micro_base):
    """Stage 2 (contrastive) changes the text encoder; stage 3 leaves it exactly as stage 2 saved it."""
    from transformers import CLIPTextModel

    from dive.utils.state import latest_checkpoint, read_training_state

    run = micro_base.parent / "run"
    tensors, meta = read_training_state(latest_checkpoint(run / "text"))
    assert meta["step"] == 3
    shipped = CLIPTextModel.from_pretrained(micro_base / "text_encoder").state_dict()
    stage2 = {k[len("text_encoder."):]: v for k, v in tensors.items() if k.startswith("text_encoder.")}
    assert stage2.keys() == shipped.keys()
    assert all(torch.equal(shipped[k], stage2[k]) for k in shipped)
    # ... and stage 2 did train it: the same seeded initialisation differs from what was shipped
    from dive.base.models import TinySDConfig, build_text_encoder
    from dive.base.tokenizer import load_tokenizer

    run_cfg = json.loads((run / "config.json").read_text())
    model = TinySDConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in run_cfg["model"].items()})
    torch.manual_seed(run_cfg["seed"] + 1)
    init = build_text_encoder(model, load_tokenizer(micro_base / "tokenizer")).state_dict()
    assert init.keys() == shipped.keys()
    assert not all(torch.equal(init[k], shipped[k]) for k in init)
    losses = [json.loads(line) for line in (run / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in losses if r["stage"] == "text"] == [1, 2, 3]
    assert any(r["stage"] == "unet" for r in losses)


def test_without_a_text_stage_the_text_encoder_trains_with_the_unet(tiny_world_dir, tmp_path):
    """`--text-steps 0` (base v1's recipe): no contrastive stage, the UNet's loss trains the text encoder."""
    from transformers import CLIPTextModel

    from dive.base.models import TinySDConfig, build_text_encoder
    from dive.base.pretrain import BasePretrainConfig, pretrain
    from dive.base.tokenizer import load_tokenizer
    from conftest import MICRO_MODEL

    cfg = BasePretrainConfig(data=tiny_world_dir, out=tmp_path / "base", run_dir=tmp_path / "run", vae_steps=2, vae_batch=4,
                             text_steps=0, steps=3, batch_size=4, warmup=1, save_every=3, preview_every=0,
                             model=TinySDConfig(**MICRO_MODEL))
    out = pretrain(cfg, progress=False)
    assert not (tmp_path / "run" / "text").exists()
    torch.manual_seed(cfg.seed + 1)
    init = build_text_encoder(cfg.model, load_tokenizer(out / "tokenizer")).state_dict()
    trained = CLIPTextModel.from_pretrained(out / "text_encoder").state_dict()
    assert not all(torch.equal(init[k], trained[k]) for k in init)
    losses = [json.loads(line) for line in (tmp_path / "run" / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in losses if r["stage"] == "unet"] == [1, 2, 3]


def test_a_base_continues_its_unet_keeping_vae_tokenizer_and_text_encoder(micro_base, tiny_world_dir, tmp_path):
    """`--continue-from DIR`: only the UNet trains on (a user can extend a shipped base without
    redoing its VAE and text stages); the result loads in plain diffusers and records where it came from."""
    import pytest
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    from dive.base.pretrain import BasePretrainConfig, pretrain

    cfg = BasePretrainConfig(data=tiny_world_dir, out=tmp_path / "more", run_dir=tmp_path / "run", steps=2, batch_size=4,
                             warmup=1, save_every=2, preview_every=0, continue_from=micro_base)
    out = pretrain(cfg, progress=False)
    for part in ("vae", "text_encoder"):
        name = "diffusion_pytorch_model.safetensors" if part == "vae" else "model.safetensors"
        before, after = load_file(str(micro_base / part / name)), load_file(str(out / part / name))
        assert all(torch.equal(before[k], after[k]) for k in before), part
    unet_before = load_file(str(micro_base / "unet" / "diffusion_pytorch_model.safetensors"))
    unet_after = load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    assert unet_before.keys() == unet_after.keys() and not all(torch.equal(unet_before[k], unet_after[k]) for k in unet_before)
    assert (out / "tokenizer" / "vocab.json").read_text() == (micro_base / "tokenizer" / "vocab.json").read_text()
    meta = json.loads((out / "dive_base.json").read_text())
    assert meta["continued_from"]["path"] == str(micro_base) and meta["config"]["model"]["unet_channels"] == [16, 16, 32]
    StableDiffusionPipeline.from_pretrained(str(out), safety_checker=None, requires_safety_checker=False)
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "loss.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    with pytest.raises(ValueError, match="new folder"):
        pretrain(BasePretrainConfig(data=tiny_world_dir, out=micro_base, run_dir=tmp_path / "run2", steps=1,
                                    continue_from=micro_base), progress=False)
