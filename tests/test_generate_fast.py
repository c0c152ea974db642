"""The fast generation mode (`load_generator(fast=True)`, `dive generate --fast`): its reuse happens
and follows in-place changes (a micro UNet); on the shipped demo its images stay within 2 grey
levels of the default path for the same seeds, across an adapter switch, and are deterministic; the
option is recorded in generate.json and the manifest, and a folder is not resumed in the other mode."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dive import defaults
from dive.checkpoint import trained_base
from dive.generate.fast import FastAttnProcessor, enable_fast, is_fast, step_cache
from dive.generate.pipeline import GenerationRequest, load_generator
from dive.generate.run import GenerateConfig, generate, select_cameras

DEMO = defaults.shipped(defaults.DEMO_NAME)
STEPS = 4
GUIDANCE = 3.0


@pytest.fixture(scope="module")
def generators():
    base = trained_base(DEMO)
    return load_generator(base, DEMO), load_generator(base, DEMO, fast=True)


def _jobs(gen, cameras: list[str], n: int = 2, seed: int = 7):
    ident = sorted(t.token for t in gen.table.identities)[0]
    return GenerationRequest([ident], cameras, n=n, seed=seed).jobs(gen.table)


def _both_modalities(gen) -> list[str]:
    return [select_cameras(gen.table, "infrared")[0], select_cameras(gen.table, "visible")[0]]


@pytest.mark.slow
def test_fast_images_within_two_grey_levels_of_default(generators):
    """Infrared and visible cameras in one batch (an adapter switch between the two parts): each image
    of the fast mode differs from the default path's image of the same seed by at most 2 grey levels."""
    plain, fast = generators
    assert is_fast(fast.pipe.unet) and not is_fast(plain.pipe.unet)
    jobs = _jobs(plain, _both_modalities(plain))
    hits = fast.pipe.unet._dive_fast_state.hits
    a = plain.render(jobs, steps=STEPS, guidance=GUIDANCE)
    b = fast.render(jobs, steps=STEPS, guidance=GUIDANCE)
    assert fast.pipe.unet._dive_fast_state.hits > hits  # the cached values were reused, not recomputed
    assert a.shape == b.shape == (len(jobs), fast.height, fast.width, 3)
    assert a.std() > 0
    assert np.abs(a.astype(np.int16) - b.astype(np.int16)).max() <= 2


@pytest.mark.slow
def test_fast_mode_is_deterministic(generators):
    """Same seeds in the fast mode: the same bytes, whether or not other batches ran in between."""
    _, fast = generators
    jobs = _jobs(fast, _both_modalities(fast))
    first = fast.render(jobs, steps=STEPS, guidance=GUIDANCE)
    fast.render(_jobs(fast, _both_modalities(fast), seed=99)[:1], steps=2, guidance=GUIDANCE)
    assert np.array_equal(first, fast.render(jobs, steps=STEPS, guidance=GUIDANCE))


def _micro_unets():
    """A micro SD UNet (random weights, cross-attention and a text-time embedding) and its fast twin."""
    import copy

    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=(8, 4), in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=8, addition_embed_type="text",
        addition_embed_type_num_heads=2).eval()
    twin = copy.deepcopy(unet)
    enable_fast(twin)
    return unet, twin


def test_reuse_happens_and_follows_in_place_changes():
    """Within one cache scope the fast UNet reuses its text-derived values, yet sees encoder states
    changed in place and projection weights changed in place (a self-attention query, a
    cross-attention key, the text-time embedding's projection): it always gives what diffusers'
    UNet gives. Outside a scope nothing is reused."""
    unet_p, unet_f = _micro_unets()
    state = unet_f._dive_fast_state
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 4, generator=g)
    enc = torch.randn(2, 7, 16, generator=g)

    def same():
        out = unet_f(x, 10, encoder_hidden_states=enc).sample
        torch.testing.assert_close(out, unet_p(x, 10, encoder_hidden_states=enc).sample, rtol=1e-5, atol=1e-6)
        return out

    with torch.no_grad():
        same()
        assert state.hits == 0
        with step_cache(unet_f):
            first = same()
            same()
            assert state.hits > 0
            enc.mul_(0.5)
            halved = same()
            assert not torch.allclose(halved, first)
            names = [k[: -len(".processor")] for k, p in unet_f.attn_processors.items()
                     if isinstance(p, FastAttnProcessor)]
            changes = [(next(n for n in names if n.endswith("attn1")), "to_q"),
                       (next(n for n in names if n.endswith("attn2")), "to_k"), ("add_embedding", "proj")]
            for module, proj in changes:
                weights = [getattr(u.get_submodule(module), proj).weight for u in (unet_f, unet_p)]
                saved = [w.detach().clone() for w in weights]
                try:
                    for w in weights:
                        w.mul_(1.5)
                    assert not torch.allclose(same(), halved)
                finally:
                    for w, s in zip(weights, saved):
                        w.copy_(s)
            torch.testing.assert_close(same(), halved)
        hits = state.hits
        same()
        same()
        assert state.hits == hits


@pytest.mark.slow
def test_fast_option_recorded_and_resume_refused_in_other_mode(generators, tmp_path):
    """generate.json and every manifest row record `fast: true`; the default mode has no such key
    (earlier folders resume as they were); resuming a fast folder without --fast is refused."""
    plain, fast = generators
    ident = sorted(t.token for t in fast.table.identities)[0]
    cam = select_cameras(fast.table, "infrared")[0]
    cfg = GenerateConfig(checkpoint=DEMO, out=tmp_path / "fast", ids=(ident,), cameras=cam, n=1, steps=2,
                         batch_size=1, fast=True)
    out = generate(cfg, generator=fast, progress=False)
    settings = json.loads((out / "generate.json").read_text())
    rows = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert settings["fast"] is True
    assert rows and all(r["fast"] is True for r in rows)
    with pytest.raises(ValueError, match="fast True -> False"):
        generate(GenerateConfig(checkpoint=DEMO, out=out, ids=(ident,), cameras=cam, n=1, steps=2, batch_size=1),
                 generator=plain, progress=False)
    out2 = generate(GenerateConfig(checkpoint=DEMO, out=tmp_path / "plain", ids=(ident,), cameras=cam, n=1, steps=2,
                                   batch_size=1), generator=plain, progress=False)
    assert "fast" not in json.loads((out2 / "generate.json").read_text())
    assert "fast" not in json.loads((out2 / "manifest.jsonl").read_text().splitlines()[0])


@pytest.mark.slow
def test_generate_bench_has_a_fast_column():
    """`dive generate-bench` times the fast mode beside ours and plain diffusers: its rate, its ratios
    (wall and CPU time), how far its images are from ours, and recording's cost on it; likewise the
    deep-cache column, whose images differ, with its FLOPs per image below ours."""
    from dive.generate.bench import GenerateBenchConfig, generate_bench

    res = generate_bench(GenerateBenchConfig(checkpoint=DEMO, n=4, batch_size=2, steps=3, repeats=1, threads=1,
                                             flops=False, deep_cache=2))
    assert res["fast_images_per_s"] > 0 and res["ratio_cpu_median_of_pairs"] > 0
    assert res["fast_ratio"] == round(res["fast_images_per_s"] / res["plain_diffusers_images_per_s"], 4)
    assert res["fast_ratio_median_of_pairs"] == pytest.approx(res["fast_ratio"], rel=5e-3)  # one repeat
    assert res["fast_ratio_cpu_median_of_pairs"] > 0
    assert 0 <= res["fast_max_grey_diff"] <= 2
    assert res["fast_attention"]["identical"] and res["fast_attention"]["records"] > 0
    assert res["fast_warmup_s"] > 0
    assert res["deep_cache_images_per_s"] > 0 and res["deep_cache_ratio_median_of_pairs"] > 0
    assert res["deep_cache_max_grey_diff"] > 2 and 0 < res["deep_cache_mean_grey_diff"] < 20
    assert "deep_cache_flops_per_image" not in res  # counted only with flops on
    # recording sees only the layers a shallow step runs, and changes no image
    assert res["deep_cache_attention"]["identical"] and res["deep_cache_attention"]["records"] > 0
