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
