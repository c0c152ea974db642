"""The fast sampling mode: the same arithmetic as diffusers' UNet, minus the work that repeats.

Within one pipeline call the text embeddings never change, yet diffusers' UNet recomputes from
them, at every step, the keys and values of every cross-attention layer and the text-time
embedding (`addition_embed_type="text"`). `enable_fast(unet)` installs:

* `FastAttnProcessor` on every attention layer: cross-attention keys/values are computed once per
  pipeline call and reused by the later steps; self-attention projects q, k and v with one matmul
  of the three weights side by side (rebuilt whenever a weight changes, e.g. an adapter switch);
  the product then goes to the same `scaled_dot_product_attention` kernel as diffusers'.
* a cached text-time embedding, reused while its input is the same tensor.

`step_cache(unet)` opens the scope in which cached values may be reused (one pipeline call): it
is cleared on exit, so weights changed between calls (an adapter switch) are always seen. Outside
that scope everything is computed as usual. Layers this processor does not cover (masks, group or
spatial norms, q/k norms, residual connections) run diffusers' own processor unchanged.

The images differ from diffusers' processors by float rounding only (one fused matmul instead of
three gives other sums in the last bits); `dive generate --fast` keeps them within 2 grey levels
of the default path (tested).
"""

from __future__ import annotations

import types
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F

#: attribute set on a UNet by `enable_fast`
_STATE = "_dive_fast_state"


class _State:
    def __init__(self) -> None:
        self.active = False
        self.hits = 0


def _params_key(*mods) -> tuple:
    """Identifies the current values of the modules' parameters (in-place changes bump `_version`)."""
    return tuple((p.data_ptr(), p._version) for m in mods for p in m.parameters())


def _plain_linear(mod) -> bool:
    """A bare nn.Linear, or a peft LoRA wrapper whose adapters are all merged into its weight (its
    forward then is exactly the base layer's)."""
    if type(mod) is torch.nn.Linear:
        return True
    base = getattr(mod, "base_layer", None)
    if type(base) is not torch.nn.Linear:
        return False
    active = set(getattr(mod, "active_adapters", []) or [])
    merged = set(getattr(mod, "merged_adapters", []) or [])
    return getattr(mod, "disable_adapters", False) or active <= merged


def _linear(mod) -> torch.nn.Linear:
    return mod if type(mod) is torch.nn.Linear else mod.base_layer


class FastAttnProcessor:
    """diffusers' `AttnProcessor2_0` for the plain SD attention layer, with cross-attention
    keys/values reused within a `step_cache` scope and self-attention q/k/v in one matmul."""

    def __init__(self, state: _State) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.state = state
        self.fallback = AttnProcessor2_0()
        self._enc = None  # the encoder states the cached keys/values were computed from
        self._enc_key: tuple | None = None  # their version and the projections' parameters'
        self._kv: tuple[torch.Tensor, torch.Tensor] | None = None
        self._qkv_key: tuple | None = None
        self._qkv_w: torch.Tensor | None = None
        self._qkv_b: torch.Tensor | None = None

    def clear(self) -> None:
        self._enc, self._kv, self._enc_key = None, None, None

    @staticmethod
    def covers(attn, hidden_states, attention_mask, args, kwargs) -> bool:
        return (attention_mask is None and not args and not kwargs and hidden_states.ndim == 3
                and attn.spatial_norm is None and attn.group_norm is None and not attn.norm_cross
                and getattr(attn, "norm_q", None) is None and getattr(attn, "norm_k", None) is None
                and not attn.residual_connection)

    def _fused_qkv(self, attn, hidden_states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        mods = [_linear(m) for m in (attn.to_q, attn.to_k, attn.to_v)]
        key = _params_key(*mods)
        if key != self._qkv_key:
            self._qkv_w = torch.cat([m.weight for m in mods]).detach()
            biases = [m.bias for m in mods]
            self._qkv_b = None if all(b is None for b in biases) else torch.cat(
                [b if b is not None else torch.zeros(m.out_features, dtype=m.weight.dtype, device=m.weight.device)
                 for b, m in zip(biases, mods)]).detach()
            self._qkv_key = key
        qkv = F.linear(hidden_states, self._qkv_w, self._qkv_b)
        return qkv.split([m.out_features for m in mods], dim=-1)

    def _cross_kv(self, attn, enc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.state.active:
            return attn.to_k(enc), attn.to_v(enc)
        key = (enc._version, _params_key(attn.to_k, attn.to_v))
        if self._kv is not None and enc is self._enc and key == self._enc_key:
            self.state.hits += 1
            return self._kv
        self._kv = (attn.to_k(enc), attn.to_v(enc))
        self._enc, self._enc_key = enc, key
        return self._kv

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        if not self.covers(attn, hidden_states, attention_mask, args, kwargs):
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        b = hidden_states.shape[0]
        if encoder_hidden_states is None:
            if all(_plain_linear(m) for m in (attn.to_q, attn.to_k, attn.to_v)):
                query, key, value = self._fused_qkv(attn, hidden_states)
            else:
                query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        else:
            query = attn.to_q(hidden_states)
            key, value = self._cross_kv(attn, encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(b, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(b, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(b, -1, attn.heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(b, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.rescale_output_factor != 1.0:
            out = out / attn.rescale_output_factor
        return out


def _cache_module_output(module: torch.nn.Module, state: _State) -> None:
    """Reuse `module`'s last output while its (single tensor) input is the same tensor and neither
    it nor the module's parameters changed, inside a `step_cache` scope."""
    forward = module.forward
    memo: dict = {}

    def cached(self, x, *args, **kwargs):
        if args or kwargs or not torch.is_tensor(x):
            return forward(x, *args, **kwargs)
        if not state.active:
            return forward(x)
        key = (x._version, _params_key(self))
        if memo.get("x") is x and memo.get("key") == key:
            state.hits += 1
            return memo["y"]
        y = forward(x)
        memo.update(x=x, key=key, y=y)
        return y

    def clear():
        memo.clear()

    module.forward = types.MethodType(cached, module)
    module._dive_fast_clear = clear


def enable_fast(unet) -> None:
    """Install the fast processors and caches on `unet` (idempotent)."""
    if getattr(unet, _STATE, None) is not None:
        return
    state = _State()
    unet.set_attn_processor({k: FastAttnProcessor(state) for k in unet.attn_processors})
    emb = getattr(unet, "add_embedding", None)
    if emb is not None and getattr(unet.config, "addition_embed_type", None) == "text":
        _cache_module_output(emb, state)
    setattr(unet, _STATE, state)


def is_fast(unet) -> bool:
    return getattr(unet, _STATE, None) is not None


def _clear(unet) -> None:
    for p in unet.attn_processors.values():
        inner = getattr(p, "original", p)  # a recording wrapper keeps the fast processor as its original
        if isinstance(inner, FastAttnProcessor):
            inner.clear()
    emb = getattr(unet, "add_embedding", None)
    if emb is not None and hasattr(emb, "_dive_fast_clear"):
        emb._dive_fast_clear()


@contextmanager
def step_cache(unet) -> Iterator[None]:
    """Within this block, text-derived values are computed once and reused by later UNet calls
    with the same encoder states (one pipeline call); a no-op on a UNet without `enable_fast`."""
    state = getattr(unet, _STATE, None)
    if state is None:
        yield
        return
    _clear(unet)
    state.active = True
    try:
        yield
    finally:
        state.active = False
        _clear(unet)
