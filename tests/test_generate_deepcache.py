"""The deep-feature cache (`load_generator(deep_cache=N)`, `dive generate --deep-cache N`): its
shallow path is diffusers' UNet given the deep features (exactly, on a micro UNet of each block
layout), one step in N runs whole within a pipeline call, calls it does not cover run whole; on the
shipped demo the images differ from the full loop yet are deterministic; the option is recorded and
a folder is not resumed with another interval."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dive import defaults
from dive.checkpoint import trained_base
from dive.generate.deepcache import (deep_cache_counts, deep_cache_interval, deep_cache_scope, enable_deep_cache)
from dive.generate.pipeline import GenerationRequest, load_generator
from dive.generate.run import GenerateConfig, generate, select_cameras

DEMO = defaults.shipped(defaults.DEMO_NAME)


def _micro_unet(layers: int = 1, text_embed: bool = True):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    extra = dict(addition_embed_type="text", addition_embed_type_num_heads=2) if text_embed else {}
    return UNet2DConditionModel(
        sample_size=(8, 4), in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=layers,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=8, **extra).eval()


@pytest.mark.parametrize("layers,text_embed", [(1, True), (2, False)])
def test_shallow_step_is_the_unet_given_its_deep_features(layers, text_embed):
    """The step after a full one, on the same inputs, gives the full UNet's output bit for bit: the
    shallow path takes the right skip features (1 or 2 layers per block, as the tiny base and SD 1.5)
    and the right embeddings. On other inputs it differs (the deep part is not recomputed)."""
    unet = _micro_unet(layers, text_embed)
    g = torch.Generator().manual_seed(1)
    x, enc = torch.randn(2, 4, 8, 4, generator=g), torch.randn(2, 7, 16, generator=g)
    with torch.no_grad():
        full = unet(x, 10, encoder_hidden_states=enc).sample
        enable_deep_cache(unet, 2)
        with deep_cache_scope(unet):
            first = unet(x, 10, encoder_hidden_states=enc).sample
            second = unet(x, 10, encoder_hidden_states=enc, return_dict=False)[0]
            assert deep_cache_counts(unet) == {"full": 1, "shallow": 1}
            moved = unet(x * 0.5, 500, encoder_hidden_states=enc).sample  # step 2: whole again
            cached = unet(x * 0.5 + 0.1, 400, encoder_hidden_states=enc).sample  # step 3: shallow
        with torch.no_grad():
            unet_ref = _micro_unet(layers, text_embed)
            ref_moved = unet_ref(x * 0.5 + 0.1, 400, encoder_hidden_states=enc).sample
    assert torch.equal(first, full) and torch.equal(second, full)
    assert deep_cache_counts(unet) == {"full": 2, "shallow": 2}
    assert not torch.allclose(cached, ref_moved, atol=1e-4)  # the reused deep part shows
    assert moved.shape == cached.shape


def test_one_step_in_n_is_whole_and_uncovered_calls_run_whole():
    """Interval 3 over 7 calls in a scope: steps 0, 3, 6 whole. Outside a scope, or a call with an
    attention mask, the UNet runs whole and keeps nothing for later steps. Intervals below 2 are refused."""
    unet = _micro_unet()
    g = torch.Generator().manual_seed(2)
    x, enc = torch.randn(2, 4, 8, 4, generator=g), torch.randn(2, 7, 16, generator=g)
    with pytest.raises(ValueError, match=">= 2"):
        enable_deep_cache(unet, 1)
    enable_deep_cache(unet, 3)
    assert deep_cache_interval(unet) == 3
    with pytest.raises(ValueError, match="interval 3"):
        enable_deep_cache(unet, 4)
    with torch.no_grad():
        unet(x, 10, encoder_hidden_states=enc)
        unet(x, 10, encoder_hidden_states=enc)
        assert deep_cache_counts(unet) == {"full": 0, "shallow": 0}  # outside a scope: plain diffusers
        with deep_cache_scope(unet):
            for t in range(7):
                unet(x, 900 - 100 * t, encoder_hidden_states=enc)
        assert deep_cache_counts(unet) == {"full": 3, "shallow": 4}
        with deep_cache_scope(unet):
            unet(x, 10, encoder_hidden_states=enc, encoder_attention_mask=torch.ones(2, 7))  # not covered
            unet(x, 10, encoder_hidden_states=enc)  # nothing kept from the uncovered call: whole
        assert deep_cache_counts(unet) == {"full": 5, "shallow": 4}


@pytest.fixture(scope="module")
def generators():
    base = trained_base(DEMO)
    return load_generator(base, DEMO), load_generator(base, DEMO, fast=True, deep_cache=3)


def _jobs(gen, seed: int = 7):
    ident = sorted(t.token for t in gen.table.identities)[0]
    cams = [select_cameras(gen.table, "infrared")[0], select_cameras(gen.table, "visible")[0]]
    return GenerationRequest([ident], cams, n=2, seed=seed).jobs(gen.table)


@pytest.mark.slow
def test_deep_cache_images_differ_but_are_deterministic(generators):
    """On the shipped demo (both modalities, an adapter switch): the images are not the full loop's,
    stay close to them on average, and the same seeds give the same bytes."""
    plain, cached = generators
    jobs = _jobs(plain)
    a = plain.render(jobs, steps=6, guidance=3.0)
    counts = deep_cache_counts(cached.pipe.unet)
    b = cached.render(jobs, steps=6, guidance=3.0)
    after = deep_cache_counts(cached.pipe.unet)
    # two parts (infrared, visible), each a pipeline call of 6 steps: steps 0 and 3 whole
    assert after["full"] - counts["full"] == 4 and after["shallow"] - counts["shallow"] == 8
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff.max() > 2 and diff.mean() < 20
    cached.render(_jobs(cached, seed=99)[:1], steps=2, guidance=3.0)
    assert np.array_equal(b, cached.render(jobs, steps=6, guidance=3.0))


@pytest.mark.slow
def test_deep_cache_recorded_and_resume_refused_with_another_interval(generators, tmp_path):
    plain, cached = generators
    ident = sorted(t.token for t in cached.table.identities)[0]
    cam = select_cameras(cached.table, "infrared")[0]
    common = dict(checkpoint=DEMO, ids=(ident,), cameras=cam, n=1, steps=3, batch_size=1)
    out = generate(GenerateConfig(out=tmp_path / "dc", fast=True, deep_cache=3, **common), generator=cached,
                   progress=False)
    settings = json.loads((out / "generate.json").read_text())
    row = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    assert settings["deep_cache"] == 3 and row["deep_cache"] == 3
    with pytest.raises(ValueError, match="deep_cache 3 -> 0"):
        generate(GenerateConfig(out=out, **common), generator=plain, progress=False)
