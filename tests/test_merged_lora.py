"""The merged LoRA training forward (`DiVETrainConfig.merged_lora`): the same function and
gradients as peft's three-matmul forward, the gated infrared adapter and merged layers left to
peft, and a DiVE loss curve that follows peft's for the first 200 steps."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model

from dive.utils.adapters import AdapterGate, MergedLoRAForward


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.GELU(), torch.nn.Linear(16, 8))
    for p in model.parameters():
        p.requires_grad_(False)
    for name in ("default", "ir"):
        inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=["0", "2"], init_lora_weights="gaussian"),
                                model, adapter_name=name)
    for layer in (model[0], model[2]):
        layer.set_adapter(["default", "ir"])
        for b in layer.lora_B.values():  # peft starts B at zero: make both adapters matter
            torch.nn.init.normal_(b.weight, std=0.5)
    return model


def _run(model, x):
    params = [p for p in model.parameters() if p.requires_grad]
    x = x.clone().requires_grad_(True)
    out = model(x)
    (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    grads = [p.grad.clone() for p in params] + [x.grad.clone()]
    for p in params:
        p.grad = None
    return out.detach(), grads


def test_merged_forward_is_peft_forward_with_the_same_gradients():
    model = _model()
    x = torch.randn(5, 7, 12)
    ref_out, ref_grads = _run(model, x)
    merged = MergedLoRAForward(model)
    assert len(merged.layers) == 2
    out, grads = _run(model, x)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    assert len(grads) == len(ref_grads) == 9  # A and B of two adapters on two layers, and the input
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)
    with merged.off():  # peft's own forward, bit for bit
        off_out, _ = _run(model, x)
    assert torch.equal(off_out, ref_out)
    merged.remove()
    assert torch.equal(_run(model, x)[0], ref_out)


def test_a_gated_adapter_stays_on_peft_and_merged_layers_are_not_added_twice():
    model = _model(1)
    gate = AdapterGate(model, "ir")
    x = torch.randn(4, 12)
    mask = [True, False, True, False]
    with gate.images(mask):
        ref_out, ref_grads = _run(model, x)
    MergedLoRAForward(model, skip=("ir",))
    with gate.images(mask):
        out, grads = _run(model, x)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)
    # without the gate's mask the infrared adapter's own hook refuses: it really ran peft's path
    with pytest.raises(RuntimeError, match="adapter gate"):
        model(x)
    # a layer peft merged (previews, generation) is its base layer alone: nothing folded in again
    with gate.images([True] * 4):
        on = model(x)
        for layer in (model[0], model[2]):
            layer.merge(adapter_names=["default", "ir"])
        torch.testing.assert_close(model(x), on, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_dive_loss_curve_follows_peft_for_200_steps(micro_base, tiny_world_dir, tmp_path):
    from dive.train.trainer import DiVETrainConfig, train_dive

    curves = {}
    for merged in (True, False):
        cfg = DiVETrainConfig(base=micro_base, data=tiny_world_dir, out=tmp_path / f"merged-{merged}", steps=200,
                              batch_size=2, min_images=3, save_every=200, preview_every=0, rank=4, warmup=20,
                              merged_lora=merged)
        train_dive(cfg, progress=False)
        rows = [json.loads(x) for x in (cfg.out / "loss.jsonl").read_text().splitlines()]
        curves[merged] = torch.tensor([r["loss"] for r in rows])
    assert len(curves[True]) == len(curves[False]) == 200
    # the same function rounded differently: after 200 updates the curves still agree to ~1e-6 here
    # (losses ~4); a tenth of a percent would already be a different training
    assert (curves[True] - curves[False]).abs().max() < 4e-3
