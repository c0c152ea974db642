"""Deep-feature caching across sampling steps (DeepCache, Ma et al., CVPR 2024): fewer FLOPs per
image, images that differ from the full loop.

Adjacent sampling steps change the UNet's deep features little. With `interval` N, the first of
every N steps of a pipeline call runs the whole UNet and keeps the input of its last (shallowest)
up block: the deep part's output, upsampled. The N-1 steps after it run only the shallow path:
`conv_in`, the first down block (its skip features), the last up block on the kept deep features,
and the output convolution. On the shipped tiny base (3 resolutions) the shallow path is about a
third of the UNet's FLOPs; on SD 1.5 (4 resolutions) less.

Unlike `fast` (the same arithmetic), this changes the images: it is a quality/speed choice, off by
default, recorded with the images, and its effect on ReID is a bench question (docs/generation-
speed.md). `enable_deep_cache(unet, n)` installs it; `deep_cache_scope(unet)` opens one pipeline
call (the step count restarts, the kept features are dropped on exit). Outside a scope, and for
calls it does not cover (attention masks, ControlNet/T2I residuals, class labels), the UNet runs
whole.
"""

from __future__ import annotations

import types
from contextlib import contextmanager
from typing import Iterator

import torch

#: attribute set on a UNet by `enable_deep_cache`
_STATE = "_dive_deep_cache"

#: keyword arguments of UNet2DConditionModel.forward the shallow path handles
_COVERED = {"timestep_cond", "cross_attention_kwargs", "added_cond_kwargs", "return_dict"}
#: arguments the shallow path cannot honour: a call passing any of them runs whole
_UNUSED = {"class_labels", "attention_mask", "encoder_attention_mask", "down_block_additional_residuals",
           "mid_block_additional_residual", "down_intrablock_additional_residuals"}


class _State:
    def __init__(self, interval: int) -> None:
        self.interval = interval
        self.active = False
        self.calls = 0  # UNet calls in the open scope
        self.deep: torch.Tensor | None = None  # input of the last up block at the last full step
        self.full_steps = 0
        self.shallow_steps = 0

    def reset(self) -> None:
        self.calls, self.deep = 0, None


def check_supported(unet) -> None:
    """Refuse a UNet whose layout the shallow path does not reproduce."""
    cfg = unet.config
    if getattr(cfg, "addition_embed_type", None) == "image_hint" or getattr(cfg, "class_embeddings_concat", False):
        raise ValueError("deep cache: UNets with addition_embed_type='image_hint' or class_embeddings_concat "
                         "are not supported")
    first, last = unet.down_blocks[0], unet.up_blocks[-1]
    skips = 1 + len(first.resnets) + (0 if first.downsamplers is None else len(first.downsamplers))
    if len(last.resnets) > skips:
        raise ValueError(f"deep cache: the last up block takes {len(last.resnets)} skip features, but conv_in and "
                         f"the first down block give {skips}")


def enable_deep_cache(unet, interval: int) -> None:
    """Install deep-feature caching with `interval` (N >= 2: one full UNet step in every N; idempotent
    for the same N)."""
    if interval < 2:
        raise ValueError(f"deep cache interval must be >= 2 (1 = every step whole = off); got {interval}")
    state = getattr(unet, _STATE, None)
    if state is not None:
        if state.interval != interval:
            raise ValueError(f"deep cache already on with interval {state.interval}; "
                             f"load the UNet again for {interval}")
        return
    check_supported(unet)
    state = _State(interval)
    forward = unet.forward

    def keep_deep(module, args, kwargs):
        if state.active:
            state.deep = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

    unet.up_blocks[-1].register_forward_pre_hook(keep_deep, with_kwargs=True)

    def cached_forward(self, sample, timestep, encoder_hidden_states=None, *args, **kwargs):
        covered = (state.active and not args and set(kwargs) <= _COVERED | _UNUSED
                   and all(kwargs.get(k) is None for k in _UNUSED))
        step = state.calls
        if state.active:
            state.calls += 1
        if (covered and step % state.interval and state.deep is not None
                and state.deep.shape[0] == sample.shape[0]):
            state.shallow_steps += 1
            out = _shallow(self, state.deep, sample, timestep, encoder_hidden_states,
                           timestep_cond=kwargs.get("timestep_cond"),
                           cross_attention_kwargs=kwargs.get("cross_attention_kwargs"),
                           added_cond_kwargs=kwargs.get("added_cond_kwargs"))
            if kwargs.get("return_dict", True):
                from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

                return UNet2DConditionOutput(sample=out)
            return (out,)
        if state.active:
            state.full_steps += 1
            state.deep = None
        if not covered:  # this call's features must not feed a later shallow step
            with _paused(state):
                return forward(sample, timestep, encoder_hidden_states, *args, **kwargs)
        return forward(sample, timestep, encoder_hidden_states, *args, **kwargs)

    unet.forward = types.MethodType(cached_forward, unet)
    setattr(unet, _STATE, state)


@contextmanager
def _paused(state: _State) -> Iterator[None]:
    active, state.active = state.active, False
    try:
        yield
    finally:
        state.active = active


def _shallow(unet, deep: torch.Tensor, sample, timestep, encoder_hidden_states, *, timestep_cond=None,
             cross_attention_kwargs=None, added_cond_kwargs=None) -> torch.Tensor:
    """The UNet's output with the deep part's result given: diffusers' forward, restricted to
    conv_in, the first down block, the last up block and the output layers."""
    if unet.config.center_input_sample:
        sample = 2 * sample - 1.0
    emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), timestep_cond)
    aug = unet.get_aug_embed(emb=emb, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs)
    if aug is not None:
        emb = emb + aug
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    enc = unet.process_encoder_hidden_states(encoder_hidden_states=encoder_hidden_states,
                                             added_cond_kwargs=added_cond_kwargs)
    h = unet.conv_in(sample)
    first, last = unet.down_blocks[0], unet.up_blocks[-1]
    if getattr(first, "has_cross_attention", False):
        _, res = first(hidden_states=h, temb=emb, encoder_hidden_states=enc,
                       cross_attention_kwargs=cross_attention_kwargs)
    else:
        _, res = first(hidden_states=h, temb=emb)
    # the last up block takes the first skip features of the whole list: conv_in's, then the first block's
    skips = ((h,) + tuple(res))[: len(last.resnets)]
    if getattr(last, "has_cross_attention", False):
        h = last(hidden_states=deep, temb=emb, res_hidden_states_tuple=skips, encoder_hidden_states=enc,
                 cross_attention_kwargs=cross_attention_kwargs)
    else:
        h = last(hidden_states=deep, temb=emb, res_hidden_states_tuple=skips)
    if unet.conv_norm_out is not None:
        h = unet.conv_act(unet.conv_norm_out(h))
    return unet.conv_out(h)


def deep_cache_interval(unet) -> int:
    """The interval installed on `unet` (0: off)."""
    state = getattr(unet, _STATE, None)
    return 0 if state is None else state.interval


def deep_cache_counts(unet) -> dict:
    """Full and shallow UNet steps run since `enable_deep_cache` (for tests and reports)."""
    state = getattr(unet, _STATE, None)
    return {} if state is None else {"full": state.full_steps, "shallow": state.shallow_steps}


@contextmanager
def deep_cache_scope(unet) -> Iterator[None]:
    """One pipeline call: its first UNet step runs whole, then one in every N; a no-op on a UNet
    without `enable_deep_cache`."""
    state = getattr(unet, _STATE, None)
    if state is None:
        yield
        return
    state.reset()
    state.active = True
    try:
        yield
    finally:
        state.active = False
        state.reset()
