"""Recording cross-attention: which layers and sampling steps, the processor that computes each
layer's attention probabilities beside the original forward pass, and the store that keeps and
aggregates them (`record_attention`). See `dive.generate.attention` for the whole picture."""

from __future__ import annotations

import math
import re
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

LAYER_GROUPS = {"down": "down_blocks.", "mid": "mid_block.", "up": "up_blocks."}


def layer_factor(name: str, levels: int) -> int:
    """Downsampling factor of a UNet attention layer relative to the latent (SD UNet layout):
    down_blocks.i -> 2^i, mid_block -> 2^(levels-1), up_blocks.j -> 2^(levels-1-j)."""
    m = re.match(r"(down_blocks|up_blocks)\.(\d+)\.", name)
    if m:
        i = int(m.group(2))
        return 2 ** (i if m.group(1) == "down_blocks" else levels - 1 - i)
    if name.startswith("mid_block."):
        return 2 ** (levels - 1)
    return 1


def select_layers(names: Sequence[str], spec=None, *, levels: int | None = None) -> list[str]:
    """Cross-attention layer names chosen by `spec`, in UNet order.

    spec: None or "all"; or selectors (a comma-separated string or a list), a layer is kept when
    any selector matches it: a group "down" / "mid" / "up"; a resolution "1/k" (layers at 1/k of
    the latent size: "1/1" is the full latent grid, "1/2" half of it ...); an exact layer name; or
    any other string, matched as a substring of the name (e.g. "up_blocks.1").
    """
    names = list(names)
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "all")):
        return names
    selectors = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    selectors = [s for s in selectors if s]
    if levels is None:
        # the last up block (full resolution) has attention in SD layouts; the last down block does not
        levels = 1 + max((int(m.group(1)) for n in names if (m := re.match(r"(?:down|up)_blocks\.(\d+)\.", n))), default=0)
    keep = set()
    for sel in selectors:
        low = sel.lower()
        if low in ("all",):
            hit = set(names)
        elif low in LAYER_GROUPS:
            hit = {n for n in names if n.startswith(LAYER_GROUPS[low])}
        elif re.fullmatch(r"1/\d+", low):
            k = int(low.split("/")[1])
            hit = {n for n in names if layer_factor(n, levels) == k}
        else:
            hit = {n for n in names if n == sel or sel in n}
        if not hit:
            factors = sorted({layer_factor(n, levels) for n in names})
            raise ValueError(f"--layers {sel!r} matches no cross-attention layer; use all, down, mid, up, "
                             f"{', '.join(f'1/{f}' for f in factors)} or a name such as {names[0]!r}")
        keep |= hit
    return [n for n in names if n in keep]


def _number(text: str) -> int | float:
    text = text.strip()
    return float(text) if any(c in text for c in ".eE") else int(text)


def select_steps(spec, total: int | None) -> list[int]:
    """Sampling-step indices (0-based, in sampling order) chosen by `spec`.

    spec: None or "all"; a `range`, `slice` or a set of ints (explicit indices); a pair
    (start, stop) of ints (step indices, stop exclusive) or of floats (fractions of the run:
    (0.0, 0.5) = the first half); a string "a:b" with ints or fractions ("5:25", "0:0.5",
    ":10", "0.5:") or a single step "k". Needs `total` for fractions, open ends and negatives.
    """
    def need_total() -> int:
        if total is None:
            raise ValueError(f"step selection {spec!r} needs the number of sampling steps")
        return int(total)

    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "all")):
        return list(range(need_total()))
    if isinstance(spec, range):
        return sorted(set(spec))
    if isinstance(spec, slice):
        return list(range(need_total()))[spec]
    if isinstance(spec, (set, frozenset)):
        return sorted(int(s) for s in spec)
    if isinstance(spec, str):
        if ":" not in spec:
            k = int(spec)
            return [k % need_total() if k < 0 else k]
        a, b = spec.split(":", 1)
        start = _number(a) if a.strip() else None
        stop = _number(b) if b.strip() else None
    elif isinstance(spec, (tuple, list)) and len(spec) == 2:
        start, stop = spec
    else:
        raise ValueError(f"step selection {spec!r}: expected all, 'a:b', (start, stop), a range or a set of steps")
    if isinstance(start, float) or isinstance(stop, float):
        n = need_total()
        lo = 0 if start is None else int(round(float(start) * n))
        hi = n if stop is None else int(round(float(stop) * n))
        lo = min(max(lo, 0), n - 1)
        return list(range(lo, max(hi, lo + 1)))  # at least one step
    if start is None or stop is None or start < 0 or stop < 0:
        return list(range(need_total()))[slice(start, stop)]
    return list(range(int(start), int(stop)))


def latent_grid(n: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of a layer with `n` query positions in a UNet called on a latent of `latent_hw`.

    SD's downsamplers (3x3 convs, stride 2, padding 1) map a size s to ceil(s / 2): the grid is the
    latent size halved (rounding up) until it has n cells. Other layouts fall back to the factor
    pair of n closest to the latent aspect ratio.
    """
    h, w = int(latent_hw[0]), int(latent_hw[1])
    while h * w > n and (h > 1 or w > 1):
        h, w = -(-h // 2), -(-w // 2)
    if h * w == n:
        return h, w
    target = math.log(latent_hw[0] / latent_hw[1])
    pairs = [(d, n // d) for d in range(1, n + 1) if n % d == 0]
    return min(pairs, key=lambda p: abs(math.log(p[0] / p[1]) - target))


# -------------------------------------------------------------------------------------------------
# The recorder: processor + store + context manager
# -------------------------------------------------------------------------------------------------


class CrossAttentionRecorder:
    """Attention processor for one cross-attention layer: returns exactly what the layer's original
    processor returns, and, when its store is recording this step, adds the conditional branch's
    attention probabilities (mean over heads) to the store."""

    def __init__(self, store: "AttentionStore", name: str, original) -> None:
        self.store = store
        self.name = name
        self.original = original

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        out = self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        if encoder_hidden_states is not None and self.store.recording_now:
            with torch.no_grad():
                probs = self.probabilities(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
            self.store.add(self.name, probs)
        return out

    def probabilities(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, temb=None) -> torch.Tensor:
        """softmax(q k^T * scale) of the conditional half of the batch, mean over heads: (B, N, T),
        computed in float32 from the layer's own projections (LoRA included)."""
        total = hidden_states.shape[0]
        start = total // 2 if self.store.cfg_now and total % 2 == 0 else 0
        hs, enc = hidden_states[start:], encoder_hidden_states[start:]
        if attn.spatial_norm is not None:
            hs = attn.spatial_norm(hs, temb[start:] if temb is not None and temb.shape[0] == total else temb)
        if hs.ndim == 4:
            b, c, h, w = hs.shape
            hs = hs.view(b, c, h * w).transpose(1, 2)
        if attn.group_norm is not None:
            hs = attn.group_norm(hs.transpose(1, 2)).transpose(1, 2)
        if attn.norm_cross:
            enc = attn.norm_encoder_hidden_states(enc)
        q, k = attn.to_q(hs), attn.to_k(enc)
        b, n, _ = q.shape
        heads = attn.heads
        head_dim = k.shape[-1] // heads
        q = q.view(b, n, heads, head_dim).transpose(1, 2)
        k = k.view(b, -1, heads, head_dim).transpose(1, 2)
        if getattr(attn, "norm_q", None) is not None:
            q = attn.norm_q(q)
        if getattr(attn, "norm_k", None) is not None:
            k = attn.norm_k(k)
        scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * attn.scale
        if attention_mask is not None:
            mask = attn.prepare_attention_mask(attention_mask, k.shape[2], total)
            scores = scores + mask.view(total, heads, -1, mask.shape[-1])[start:].float()
        return scores.softmax(dim=-1).mean(dim=1)


class AttentionStore:
    """What `record_attention` yields: the records and how to aggregate them.

    records: {(step, layer): tensor (B, T, h, w)}, float32 on the UNet's device, B = conditional
    images, T = all text positions or the positions given as `tokens` (in that order), (h, w) the
    layer's real latent grid. step = index of the UNet call since the block began (one per
    sampling step with DPM-Solver++); one pipeline call per block (or `reset()` between calls).
    """

    def __init__(self, layer_names: Sequence[str], *, steps=None, tokens: Sequence[int] | None = None,
                 cfg: bool | None = None, levels: int = 1) -> None:
        self.layer_names = list(layer_names)
        self.levels = levels
        self.steps_spec = steps
        self.tokens = list(tokens) if tokens is not None else None
        self.cfg = cfg
        self.records: dict[tuple[int, str], torch.Tensor] = {}
        self.layer_shapes: dict[str, tuple[int, int]] = {}
        self.latent_hw: tuple[int, int] | None = None
        self.num_steps: int | None = None
        self.step = -1
        self.cfg_now = bool(cfg)
        self.recording_now = False
        self._token_index: torch.Tensor | None = None
        self._selected: set[int] | None = None

    def reset(self) -> None:
        self.records.clear()
        self.step = -1
        self.recording_now = False
        self._selected = None

    # called by the UNet pre-hook, once per UNet call
    def begin_step(self, latent_hw: tuple[int, int], num_steps: int | None, cfg_now: bool) -> None:
        self.step += 1
        self.latent_hw = (int(latent_hw[0]), int(latent_hw[1]))
        if num_steps:
            self.num_steps = int(num_steps)
        self.cfg_now = cfg_now if self.cfg is None else bool(self.cfg)
        if self._selected is None:
            self._selected = set(select_steps(self.steps_spec, self.num_steps))
        self.recording_now = self.step in self._selected

    def add(self, layer: str, probs: torch.Tensor) -> None:
        b, n, _ = probs.shape
        if self.tokens is not None:
            if self._token_index is None or self._token_index.device != probs.device:
                self._token_index = torch.tensor(self.tokens, dtype=torch.long, device=probs.device)
            probs = probs.index_select(2, self._token_index)
        h, w = latent_grid(n, self.latent_hw or (n, 1))
        self.layer_shapes[layer] = (h, w)
        self.records[(self.step, layer)] = probs.transpose(1, 2).reshape(b, probs.shape[2], h, w).float()

    # -- aggregation ------------------------------------------------------------------------------
    @property
    def recorded_steps(self) -> list[int]:
        return sorted({s for s, _ in self.records})

    @property
    def recorded_layers(self) -> list[str]:
        have = {name for _, name in self.records}
        return [n for n in self.layer_names if n in have]

    def select(self, layers=None, steps=None) -> list[tuple[int, str]]:
        """Record keys for a layer and step selection (see `select_layers`, `select_steps`)."""
        names = set(select_layers(self.recorded_layers, layers, levels=self.levels))
        total = self.num_steps or (max(self.recorded_steps) + 1 if self.records else None)
        wanted = set(select_steps(steps, total))
        keys = [k for k in self.records if k[1] in names and k[0] in wanted]
        if not keys:
            raise ValueError(f"no attention recorded for layers {layers!r} and steps {steps!r} "
                             f"(recorded steps {self.recorded_steps}, layers {self.recorded_layers})")
        return sorted(keys, key=lambda k: (k[0], self.layer_names.index(k[1])))

    def heatmaps(self, size: tuple[int, int], layers=None, steps=None) -> torch.Tensor:
        """(B, T, H, W) float32 on the CPU: each chosen (step, layer) record upsampled bilinearly to
        `size` (H, W), then the plain mean over records (every layer and step weighs the same)."""
        keys = self.select(layers, steps)
        per_layer: dict[str, torch.Tensor] = {}
        for key in keys:  # bilinear upsampling is linear: sum a layer's steps first, upsample once
            per_layer[key[1]] = per_layer[key[1]] + self.records[key] if key[1] in per_layer else self.records[key].clone()
        acc = None
        for layer_sum in per_layer.values():
            up = F.interpolate(layer_sum, size=tuple(size), mode="bilinear", align_corners=False)
            acc = up if acc is None else acc + up
        return (acc / len(keys)).cpu()

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.records.values())


def _unet_and_pipe(obj):
    if hasattr(obj, "pipe") and not hasattr(obj, "unet"):  # a dive Generator
        obj = obj.pipe
    return (obj.unet, obj) if hasattr(obj, "unet") else (obj, None)


def _unet_order(name: str) -> tuple:
    rank = next((i for i, prefix in enumerate(LAYER_GROUPS.values()) if name.startswith(prefix)), len(LAYER_GROUPS))
    return (rank, [int(x) for x in re.findall(r"\d+", name)], name)


def cross_attention_layers(unet) -> list[str]:
    """Names of the UNet's cross-attention modules in the order the UNet runs them: down, mid, up
    (e.g. 'down_blocks.0.attentions.0.transformer_blocks.0.attn2')."""
    out = []
    for key in unet.attn_processors:
        name = key[: -len(".processor")] if key.endswith(".processor") else key
        if getattr(unet.get_submodule(name), "is_cross_attention", False):
            out.append(name)
    return sorted(out, key=_unet_order)


@contextmanager
def record_attention(pipe, layers=None, steps=None, *, tokens: Sequence[int] | None = None,
                     cfg: bool | None = None) -> Iterator[AttentionStore]:
    """Record cross-attention while the block runs; restore the original processors afterwards.

    pipe: a diffusers SD pipeline (or a dive Generator, or a bare UNet). layers / steps: see `select_layers` /
    `select_steps` (unselected layers keep their processor; unselected steps only pay a Python
    call per layer). tokens: keep only these text positions (saves memory on large models).
    cfg: whether the UNet batch is [uncond, cond]; None reads the pipeline's
    `do_classifier_free_guidance` at every step (guidance <= 1: no uncond half).
    """
    unet, owner = _unet_and_pipe(pipe)
    names = cross_attention_layers(unet)
    levels = len(getattr(unet.config, "block_out_channels", (0,)))
    chosen = select_layers(names, layers, levels=levels)
    store = AttentionStore(chosen, steps=steps, tokens=tokens, cfg=cfg, levels=levels)

    def pre_hook(module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        scheduler = getattr(owner, "scheduler", None)
        timesteps = getattr(scheduler, "timesteps", None)
        cfg_now = bool(getattr(owner, "do_classifier_free_guidance", False)) if owner is not None else False
        store.begin_step(tuple(sample.shape[-2:]), len(timesteps) if timesteps is not None else None, cfg_now)

    modules = {name: unet.get_submodule(name) for name in chosen}
    originals = {name: m.processor for name, m in modules.items()}
    handle = unet.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        for name, m in modules.items():
            m.set_processor(CrossAttentionRecorder(store, name, originals[name]))
        yield store
    finally:
        handle.remove()
        for name, m in modules.items():
            m.set_processor(originals[name])
        store.recording_now = False
