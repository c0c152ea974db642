"""Loading a checkpoint into a diffusers pipeline with diffusers' own loaders, after checking that
its files fit the base (layer shapes, ranks, embedding width) and hold finite numbers."""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

from dive.checkpoint.format import (EMBEDS_FILE, INFRARED_ADAPTER, INFRARED_LORA_FILE, LORA_FILE, SHARED_ADAPTER,
                                    TEXT_LORA_FILE, TOKENS_FILE, CheckpointError, _named_base, check_checkpoint_dir,
                                    has_infrared_adapter, read_safetensors)
from dive.checkpoint.tokens import TokenTable

_LORA_SUFFIXES = {".lora.down.weight": "in", ".lora_A.weight": "in", ".lora.up.weight": "out", ".lora_B.weight": "out"}


def check_checkpoint(directory: str | Path) -> TokenTable:
    """Everything that can be checked without a base, before loading one: the files are there and
    are safetensors, hold finite numbers, the embeddings match the token table, and each LoRA
    layer's down (A) and up (B) ranks agree. Its token table on success; a CheckpointError naming
    the file otherwise."""
    directory = check_checkpoint_dir(directory)
    table = TokenTable.load(directory / TOKENS_FILE)
    emb, _ = read_safetensors(directory / EMBEDS_FILE)
    if set(emb) != set(table.learned_tokens):
        raise CheckpointError(f"{directory / EMBEDS_FILE}: holds {len(emb)} tokens, {TOKENS_FILE} lists "
                              f"{len(table.learned_tokens)} learned tokens; the files do not belong together")
    for name in (LORA_FILE, INFRARED_LORA_FILE):
        if (directory / name).exists():
            _check_lora_ranks(directory / name, read_safetensors(directory / name)[0])
    if (directory / TEXT_LORA_FILE).exists():
        read_safetensors(directory / TEXT_LORA_FILE)
    return table


def _lora_layers(tensors: dict):
    """(key, layer name, "in" | "out", tensor) of each UNet LoRA weight in a file."""
    for key, t in tensors.items():
        if not key.startswith("unet."):
            continue
        suffix = next((k for k in _LORA_SUFFIXES if key.endswith(k)), None)
        if suffix is not None:
            yield key, key[len("unet."):-len(suffix)], _LORA_SUFFIXES[suffix], t


def _check_lora_ranks(path: Path, tensors: dict) -> None:
    ranks: dict[str, dict[str, int]] = {}
    for key, name, side, t in _lora_layers(tensors):
        if t.dim() < 2:
            raise CheckpointError(f"{path}: LoRA weight {key!r} has shape {tuple(t.shape)}; expected a matrix or a "
                                  "conv kernel")
        ranks.setdefault(name, {})[side] = t.shape[0] if side == "in" else t.shape[1]
    for name, r in sorted(ranks.items()):
        if len(r) != 2:
            part = "up (B)" if "in" in r else "down (A)"
            raise CheckpointError(f"{path}: LoRA layer {name!r} has no {part} weight; expected both halves of each layer")
        if r["in"] != r["out"]:
            raise CheckpointError(f"{path}: LoRA layer {name!r} has rank {r['in']} in its down (A) weight and "
                                  f"{r['out']} in its up (B) weight; expected one rank")


def check_lora_fits(unet, path: str | Path, *, trained_on: str = "") -> None:
    """Refuse, with the file and layer named, a UNet LoRA file that cannot load: not safetensors or
    damaged, NaN or Inf in a weight, a layer whose down (A) and up (B) ranks disagree, or one made
    for another base (e.g. a checkpoint of the 32/64/128 base loaded onto a wider one); diffusers
    would fail deep inside peft, or render black images."""
    tensors, _ = read_safetensors(path)
    _check_lora_ranks(Path(path), tensors)
    modules = dict(unet.named_modules())
    hint = f"; it was trained on {trained_on}: pass that base" if trained_on else "; pass the base it was trained on"
    for key, name, side, t in _lora_layers(tensors):
        module = modules.get(name)
        if module is None:
            raise CheckpointError(f"{path}: LoRA layer {name!r} is not in this base's UNet{hint}")
        if side == "in":
            want, got = getattr(module, "in_features", getattr(module, "in_channels", None)), t.shape[1]
        else:
            want, got = getattr(module, "out_features", getattr(module, "out_channels", None)), t.shape[0]
        if want is not None and want != got:
            raise CheckpointError(f"{path}: LoRA layer {name!r} expects {got} {side}put features, this base's UNet "
                                  f"has {want}{hint}")


def load_into_pipeline(pipe, directory: str | Path, *, adapter_name: str = SHARED_ADAPTER) -> TokenTable:
    """Load a DiVE checkpoint into a diffusers SD pipeline with diffusers' own loaders. A checkpoint
    with an infrared adapter loads it as adapter "infrared", inactive: the caller switches it on for
    infrared cameras (see `dive.generate.pipeline.Generator`)."""
    directory = check_checkpoint_dir(directory)
    table = check_checkpoint(directory)
    emb, _ = read_safetensors(directory / EMBEDS_FILE)
    trained_on = _named_base(directory)
    for name in (LORA_FILE, INFRARED_LORA_FILE):
        if (directory / name).exists():
            check_lora_fits(pipe.unet, directory / name, trained_on=trained_on)
    width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    got = {v.shape[-1] for v in emb.values()}
    if got and got != {width}:
        raise CheckpointError(f"{directory / EMBEDS_FILE}: token embeddings of width {sorted(got)}, this base's text "
                              f"encoder has width {width}; it was trained on {trained_on or 'another base'}")
    tokens = table.learned_tokens
    pipe.load_textual_inversion([emb[t] for t in tokens], token=tokens)
    with _quiet_expected_lora_notices(pipe):
        pipe.load_lora_weights(str(directory), weight_name=LORA_FILE, adapter_name=adapter_name)
        if has_infrared_adapter(directory):
            pipe.load_lora_weights(str(directory), weight_name=INFRARED_LORA_FILE, adapter_name=INFRARED_ADAPTER)
            pipe.set_adapters([adapter_name])
    if (directory / TEXT_LORA_FILE).exists():
        merge_text_lora(pipe.text_encoder, directory / TEXT_LORA_FILE)
    return table


# the diffusers modules that log "No LoRA keys associated to <text encoder>" while loading a UNet-only LoRA
_LORA_LOGGERS = ("diffusers.loaders.lora_base", "diffusers.loaders.lora_pipeline", "diffusers.loaders.peft")


@contextlib.contextmanager
def _quiet_expected_lora_notices(pipe):
    """Drop the two notices every DiVE checkpoint load used to print, and only those: diffusers'
    "No LoRA keys associated to <text encoder>" (DiVE's LoRA files are UNet-only by design; a text
    LoRA has its own file) and peft's "Already found a `peft_config`" (the infrared adapter is a
    second adapter on purpose). Anything else, such as a UNet with no matching keys, still shows."""
    text_notice = f"No LoRA keys associated to {type(pipe.text_encoder).__name__} "

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(text_notice)

    loggers = [logging.getLogger(name) for name in _LORA_LOGGERS]
    for lg in loggers:
        lg.addFilter(keep)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute", category=UserWarning)
            yield
    finally:
        for lg in loggers:
            lg.removeFilter(keep)


def merge_text_lora(text_encoder, path: str | Path) -> None:
    """Add a `text_encoder_lora.safetensors` into the text encoder's linear weights in place:
    W += (alpha / r) * B @ A for each listed module (what a fused LoRA computes)."""
    import torch

    path = Path(path)
    tensors, meta = read_safetensors(path)
    if meta.get("format") != "dive-text-lora":
        raise CheckpointError(f"{path}: not a DiVE text-encoder LoRA (format {meta.get('format')!r})")
    alpha = float(meta.get("lora_alpha", 0))
    modules = dict(text_encoder.named_modules())
    names = sorted({k.rsplit(".", 1)[0] for k in tensors})
    for name in names:
        a, b = tensors.get(f"{name}.lora_A"), tensors.get(f"{name}.lora_B")
        mod = modules.get(name)
        if a is None or b is None or mod is None or not isinstance(mod, torch.nn.Linear):
            raise CheckpointError(f"{path}: {name} is not a linear layer of this text encoder with lora_A and lora_B")
        if tuple(b.shape) != (mod.out_features, a.shape[0]) or a.shape[1] != mod.in_features:
            raise CheckpointError(f"{path}: {name}: LoRA shapes {tuple(a.shape)}, {tuple(b.shape)} do not fit "
                                  f"a {mod.in_features}->{mod.out_features} layer")
        with torch.no_grad():
            mod.weight += (alpha / a.shape[0]) * (b @ a).to(device=mod.weight.device, dtype=mod.weight.dtype)
