"""Cross-attention recording, aggregation, token location, figure and CLI (dive/generate/attention/)."""

import copy
import json

import numpy as np
import pytest
import torch

from dive.generate.attention import (
    AttentionStore,
    CrossAttentionRecorder,
    attention_figure,
    attention_maps,
    attention_overhead,
    attention_stats,
    build_figure,
    cross_attention_layers,
    default_tokens,
    latent_grid,
    layer_factor,
    locate_tokens,
    person_mask,
    prompt_ids,
    record_attention,
    select_layers,
    select_steps,
)
from dive.generate.pipeline import GenerationRequest, image_seed

LAYERS = [
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2",
    "down_blocks.1.attentions.0.transformer_blocks.0.attn2",
    "mid_block.attentions.0.transformer_blocks.0.attn2",
    "up_blocks.1.attentions.0.transformer_blocks.0.attn2",
    "up_blocks.1.attentions.1.transformer_blocks.0.attn2",
    "up_blocks.2.attentions.0.transformer_blocks.0.attn2",
    "up_blocks.2.attentions.1.transformer_blocks.0.attn2",
]


@pytest.fixture(scope="module")
def gen(micro_base, micro_dive_run):
    from dive.generate.pipeline import load_generator

    return load_generator(micro_base, micro_dive_run / "final")


def _jobs(gen, n=2):
    idt, cam = default_tokens(gen.table)
    return GenerationRequest([idt], [cam], n=n, seed=3).jobs(gen.table)


# -- pure helpers ---------------------------------------------------------------------------------


def test_latent_grid_any_aspect_ratio():
    assert latent_grid(128, (16, 8)) == (16, 8)
    assert latent_grid(32, (16, 8)) == (8, 4)
    assert latent_grid(8, (16, 8)) == (4, 2)
    assert latent_grid(4096, (64, 64)) == (64, 64)
    assert latent_grid(40, (15, 9)) == (8, 5)  # odd sizes: stride-2 convs round up
    assert latent_grid(12, (15, 9)) == (4, 3)
    assert latent_grid(50, (16, 8)) == (10, 5)  # not a halving of the latent: closest factor pair


def test_layer_and_step_selection():
    assert layer_factor(LAYERS[0], 3) == 1 and layer_factor(LAYERS[2], 3) == 4 and layer_factor(LAYERS[3], 3) == 2
    assert select_layers(LAYERS, None) == LAYERS and select_layers(LAYERS, "all") == LAYERS
    assert select_layers(LAYERS, "down") == LAYERS[:2]
    assert select_layers(LAYERS, "mid,up") == LAYERS[2:]
    assert select_layers(LAYERS, "1/1") == [LAYERS[0], LAYERS[5], LAYERS[6]]
    assert select_layers(LAYERS, ["1/4"]) == [LAYERS[2]]
    assert select_layers(LAYERS, "up_blocks.1") == LAYERS[3:5]
    with pytest.raises(ValueError, match="matches no cross-attention layer"):
        select_layers(LAYERS, "1/16")
    assert select_steps(None, 5) == [0, 1, 2, 3, 4]
    assert select_steps("all", 3) == [0, 1, 2]
    assert select_steps("5:10", 25) == [5, 6, 7, 8, 9]
    assert select_steps("0:0.2", 25) == [0, 1, 2, 3, 4]
    assert select_steps((0.5, 1.0), 10) == [5, 6, 7, 8, 9]
    assert select_steps(":3", 25) == [0, 1, 2] and select_steps("-2:", 25) == [23, 24]
    assert select_steps(range(2, 4), None) == [2, 3] and select_steps({7, 1}, None) == [1, 7]
    assert select_steps("0.9:1.0", 4) == [3]  # at least one step
    with pytest.raises(ValueError, match="needs the number"):
        select_steps("0:0.5", None)


def test_person_mask_and_stats():
    h, w = 64, 32
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.linspace(40, 120, h, dtype=np.uint8)[:, None]  # background with a vertical gradient
    img[8:60, 10:22] = (230, 200, 30)  # the "person"
    mask, method = person_mask(img)
    truth = np.zeros((h, w), bool)
    truth[8:60, 10:22] = True
    assert method == "border" and (mask == truth).mean() > 0.95
    assert person_mask(np.full((h, w, 3), 90, np.uint8))[1].startswith("center")  # flat image: fallback
    uniform = attention_stats(np.ones((h, w)), truth)
    assert uniform["inside"] == pytest.approx(truth.mean()) and uniform["contrast"] == pytest.approx(1.0)
    assert uniform["area50"] == pytest.approx(0.5, abs=1 / (h * w))
    focused = attention_stats(truth.astype(float), truth)
    assert focused["inside"] == 1.0 and focused["area50"] < truth.mean()


# -- the recorder ---------------------------------------------------------------------------------


def test_recorder_leaves_images_unchanged_and_restores_processors(gen):
    unet = gen.pipe.unet
    before = dict(unet.attn_processors)
    jobs = _jobs(gen)
    for guidance in (1.0, 3.0):
        plain = gen.render(jobs, steps=4, guidance=guidance)
        with record_attention(gen.pipe) as rec:
            kinds = {type(p).__name__ for k, p in unet.attn_processors.items() if "attn2" in k}
            recorded = gen.render(jobs, steps=4, guidance=guidance)
        assert kinds == {"CrossAttentionRecorder"}
        assert np.array_equal(plain, recorded), f"guidance {guidance}: recording changed the image"
        assert len(rec.records) == 4 * len(LAYERS)
    after = dict(unet.attn_processors)
    assert list(after) == list(before) and all(after[k] is before[k] for k in before)
    # an exception inside the block restores too
    with pytest.raises(RuntimeError):
        with record_attention(gen.pipe, layers="up"):
            raise RuntimeError("boom")
    assert all(unet.attn_processors[k] is before[k] for k in before)
    assert not unet._forward_pre_hooks


@pytest.mark.parametrize("stock", ["AttnProcessor", "AttnProcessor2_0"])
def test_recorder_matches_the_stock_processor(gen, stock):
    """Output equal to the stock processor's; recorded probabilities = the ones AttnProcessor uses
    (conditional half of a [uncond, cond] batch, mean over heads)."""
    import diffusers.models.attention_processor as ap

    unet = gen.pipe.unet
    original = dict(unet.attn_processors)
    name = LAYERS[1]
    attn = unet.get_submodule(name)
    try:
        unet.set_attn_processor(getattr(ap, stock)())
        g = torch.Generator().manual_seed(0)
        b, n = 2, 32  # batch [uncond, cond], the 8x4 layer
        hs = torch.randn(2 * b, n, attn.query_dim, generator=g)
        enc = torch.randn(2 * b, 77, attn.cross_attention_dim, generator=g)
        store = AttentionStore([name], cfg=True)
        store.begin_step((16, 8), 1, True)
        with torch.no_grad():
            want = attn(hs, encoder_hidden_states=enc)
            attn.set_processor(CrossAttentionRecorder(store, name, attn.processor))
            got = attn(hs, encoder_hidden_states=enc)
            # the probabilities the stock (non-fused) processor computes, captured from inside it
            captured = []
            get_scores = attn.get_attention_scores

            def spy(q, k, mask=None):
                captured.append(get_scores(q, k, mask))
                return captured[-1]

            attn.set_processor(ap.AttnProcessor())
            attn.get_attention_scores = spy
            reference = attn(hs, encoder_hidden_states=enc)
            del attn.get_attention_scores
        assert torch.equal(got, want)  # the layer output is the stock processor's own output
        torch.testing.assert_close(reference, want, rtol=1e-5, atol=1e-6)
        rec = store.records[(0, name)]
        assert rec.shape == (b, 77, 8, 4)
        stock_probs = captured[0].view(2 * b, attn.heads, n, 77)[b:].mean(1)  # cond half, mean over heads
        torch.testing.assert_close(rec, stock_probs.transpose(1, 2).reshape(b, 77, 8, 4), rtol=1e-5, atol=1e-6)
    finally:
        unet.set_attn_processor(original)


def test_records_shapes_sums_and_heatmaps(gen):
    jobs = _jobs(gen, n=3)
    with record_attention(gen.pipe) as rec:
        gen.render(jobs, steps=3, guidance=2.0)
    assert rec.recorded_layers == LAYERS == cross_attention_layers(gen.pipe.unet)
    assert rec.recorded_steps == [0, 1, 2] and rec.num_steps == 3 and rec.latent_hw == (16, 8)
    shapes = {1: (16, 8), 2: (8, 4), 4: (4, 2)}
    for (step, layer), r in rec.records.items():
        assert r.shape == (3, 77, *shapes[layer_factor(layer, 3)]), (layer, r.shape)  # conditional images only
        torch.testing.assert_close(r.sum(1), torch.ones(3, *r.shape[2:]), rtol=0, atol=1e-5)
    heat = rec.heatmaps((128, 64))
    assert heat.shape == (3, 77, 128, 64)
    torch.testing.assert_close(heat.sum(1), torch.ones(3, 128, 64), rtol=0, atol=1e-4)
    # averaging: one layer and one step gives back that record, upsampled
    one = rec.heatmaps((16, 8), layers=LAYERS[0], steps="1:2")
    torch.testing.assert_close(one, rec.records[(1, LAYERS[0])])
    assert rec.heatmaps((128, 64), layers="down", steps="0:0.5").shape == (3, 77, 128, 64)


def test_only_the_conditional_branch_is_recorded(gen):
    """At step 0 the conditional branch sees the same input with or without guidance."""
    jobs = _jobs(gen, n=2)
    maps = {}
    for guidance in (1.0, 4.0):
        with record_attention(gen.pipe, layers="up", steps="0:1", tokens=[4, 5, 12]) as rec:
            gen.render(jobs, steps=3, guidance=guidance)
        assert rec.recorded_steps == [0] and all(r.shape[:2] == (2, 3) for r in rec.records.values())
        maps[guidance] = rec.records
    for key in maps[1.0]:
        torch.testing.assert_close(maps[1.0][key], maps[4.0][key], rtol=1e-4, atol=1e-6)


# -- token location -------------------------------------------------------------------------------


def test_token_positions_from_ids(gen):
    tok = gen.pipe.tokenizer
    idt, learned = default_tokens(gen.table)
    assert gen.table.get(learned).modality == "infrared"
    cam = "q7zvkx3p"  # a frozen camera string (--camera-mode string): the BPE splits it into pieces
    prompt = gen.table.prompt(idt, learned).replace(learned, cam)
    ids = prompt_ids(tok, prompt)
    spans = locate_tokens(tok, prompt, identity=idt, camera=cam)
    by_kind = {s.kind: s for s in spans if s.kind != "word"}
    assert by_kind["identity"].label == f"[identity] {idt}"
    assert [ids[p] for p in by_kind["identity"].positions] == [tok.convert_tokens_to_ids(idt)]
    cam_ids = tok(cam, add_special_tokens=False).input_ids
    assert len(cam_ids) > 1 and [ids[p] for p in by_kind["camera"].positions] == cam_ids
    assert by_kind["camera"].label == f"[camera] {cam}"
    words = [s.label for s in spans if s.kind == "word"]
    assert words == [w for w in prompt.split() if w not in (idt, cam)]
    positions = [p for s in spans for p in s.positions]
    eos = ids.index(tok.eos_token_id, 1)
    assert sorted(positions) == list(range(1, eos))  # everything but BOS, EOS and padding, once
    # prompt order; repeated words stay separate entries
    spans2 = locate_tokens(tok, f"a {cam} photo of {idt} person a person", identity=idt, camera=cam)
    assert [s.label for s in spans2][-2:] == ["a (2)", "person (2)"]
    with pytest.raises(ValueError, match="not one token"):
        locate_tokens(tok, "a photo of <nobody-0000> person", identity="<nobody-0000>")


def test_learned_camera_token_is_one_id(gen):
    tok = copy.deepcopy(gen.pipe.tokenizer)
    tok.add_tokens(["<cam-ir>"])
    idt, _ = default_tokens(gen.table)
    spans = locate_tokens(tok, f"a <cam-ir> photo of {idt} person", identity=idt, camera="<cam-ir>")
    cam = next(s for s in spans if s.kind == "camera")
    assert cam.pieces == ("<cam-ir>",) and len(cam.positions) == 1


# -- one image's maps, the figure, the CLI, the overhead ---------------------------------------------


def test_attention_maps_and_figure(gen, tmp_path):
    idt, cam = default_tokens(gen.table)
    res = attention_maps(gen, seed=3, index=1, steps=4, guidance=1.0, layers="down,up", step_range="0:0.5")
    assert (res.identity, res.camera) == (idt, cam)
    assert res.image.shape == (128, 64, 3) and res.image.dtype == np.uint8
    # the same image `dive generate` makes for (seed, identity, camera, index)
    job = GenerationRequest([idt], [cam], n=2, seed=3).jobs(gen.table)[1]
    assert job.seed == res.image_seed == image_seed(3, idt, cam, 1)
    assert np.array_equal(res.image, gen.render([job], steps=4, guidance=1.0)[0])
    assert list(res.maps) == ["a", f"[camera] {cam}", "photo", "of", f"[identity] {idt}", "person"]
    for label, m in res.maps.items():
        assert m.shape == (128, 64) and m.min() >= 0 and m.max() == pytest.approx(1.0)
        assert set(res.summary[label]) >= {"inside", "area", "contrast", "area50", "kind"}
    assert res.steps_used == [0, 1] and len(res.layers) == 6 and "mid_block" not in " ".join(res.layers)
    json.dumps(res.to_dict())
    assert "identity vs camera" in res.format_summary()
    res_cfg = attention_maps(gen, idt, cam, seed=3, steps=2, guidance=3.0, mask="center")
    assert res_cfg.mask_method == "center" and res_cfg.steps_used == [0, 1]

    path = attention_figure(res, tmp_path / "fig.png")
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > im.height
    fig, axes = build_figure(res)
    fig.canvas.draw()
    for ax in axes:  # every panel keeps the 128x64 (2:1) aspect ratio
        box = ax.get_window_extent()
        assert box.height / box.width == pytest.approx(2.0, rel=0.03)
    assert len(axes) == 1 + len(res.maps)
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_cli_attention(micro_base, micro_dive_run, tmp_path, capsys):
    from dive.cli import main

    out = tmp_path / "att" / "fig.png"
    rc = main(["attention", "--base", str(micro_base), "--checkpoint", str(micro_dive_run / "final"), "--out", str(out),
               "--steps", "2", "--layers", "up", "--step-range", "1:2"])
    assert rc == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "[identity]" in text and "[camera]" in text and out.exists()
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["steps_used"] == [1] and meta["layer_selection"] == "up" and "summary" in meta
    rc = main(["attention", "--base", str(micro_base), "--checkpoint", str(micro_dive_run / "final"), "--out", str(out),
               "--steps", "2", "--identity", "<nobody-0000>"])
    assert rc == 2 and "unknown token" in capsys.readouterr().err


def test_attention_overhead_micro(gen):
    res = attention_overhead(gen, n=4, steps=25, repeats=2)
    print(f"\nattention recording overhead (micro_base, 4 images x 25 steps, CPU): {res}")
    assert res["identical"] and res["records"] == 25 * len(LAYERS) and res["plain_s"] > 0
    # the reported overhead is the one the two timings give (a wrong sign or scale would show here)
    assert res["recorded_s"] > 0
    assert abs(res["overhead_pct"] - 100 * (res["recorded_s"] - res["plain_s"]) / res["plain_s"]) < 0.5
