"""Cross-attention maps of the DiVE generator: where in the image each prompt token looks.

The paper's observation to check: the camera token attends globally (person and background:
it sets the modality), the identity token attends to the person. Common attention-map tools
break on non-square images, on guidance <= 1 and on added (textual-inversion) tokens; this
module avoids all three with one small processor that

- is installed only on the UNet's cross-attention layers, and only inside
  `with record_attention(pipe, ...) as rec:` (the original processors are put back on exit, so
  outside the block the pipeline is untouched and nothing is paid);
- leaves the forward pass alone: the layer output is the original processor's own output
  (images are bitwise identical with and without recording), and the attention probabilities are
  computed beside it, for the conditional branch only (with classifier-free guidance the UNet
  batch is [uncond, cond]; with guidance <= 1 it is [cond]);
- averages the probabilities over heads and reshapes them to the layer's real latent grid
  (h, w), found from the layer's sequence length and the latent (H, W) the UNet was called with
  (128x64 images: 16x8, 8x4, 4x2 latents);
- keeps one record per (UNet call = sampling step, layer), optionally only for some token
  positions (`tokens=`), some layers and some steps.

Aggregation (`AttentionStore.heatmaps`) upsamples each chosen record bilinearly to the image size
and averages them. Token location (`locate_tokens`) works on token ids: the identity token is one
added id; the camera string is all its BPE pieces (the 8-character random strings split into
several); each ordinary word is its pieces. A token's heat map is the SUM of its pieces' maps
(the attention mass the word receives as a whole, comparable with a one-piece token; summing and
averaging give the same normalised picture, only the raw mass differs).

`attention_maps(generator, identity, camera)` renders one image (the same image `dive generate`
makes for that identity, camera, seed and index) and returns an `AttentionResult`; the numeric
summary measures, per token, how much of its attention mass falls on the person (a person mask
estimated from the image itself, see `person_mask`) and how spread out the attention is
(`area50`: the smallest fraction of the image holding half the mass; 0.5 = uniform).
`attention_figure` draws it; `dive attention` is the command line.
"""

from __future__ import annotations

import math
import re
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dive.checkpoint import CheckpointError
from dive.generate import DEFAULT_GUIDANCE

LAYER_GROUPS = {"down": "down_blocks.", "mid": "mid_block.", "up": "up_blocks."}
MASK_METHODS = ("border", "center", "identity")


# -------------------------------------------------------------------------------------------------
# Layer and step selection
# -------------------------------------------------------------------------------------------------


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


# -------------------------------------------------------------------------------------------------
# Token location
# -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenSpan:
    label: str  # "[identity] <tok>", "[camera] b8zbxkoh" or the word itself (made unique: "a (2)")
    kind: str  # identity / camera / word
    text: str  # the token or word as written in the prompt
    positions: tuple[int, ...]  # indices into the tokenized prompt (0 is BOS)
    pieces: tuple[str, ...]  # the tokenizer's pieces at those positions


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The ids the pipeline feeds the text encoder (padded and truncated to the model length)."""
    return list(tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length,
                          truncation=True).input_ids)


def _piece_ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def _find(seq: Sequence[int], sub: Sequence[int], lo: int, hi: int) -> list[int]:
    """Start indices of non-overlapping occurrences of `sub` in seq[lo:hi]."""
    out, i, m = [], lo, len(sub)
    while m and i + m <= hi:
        if list(seq[i : i + m]) == list(sub):
            out.append(i)
            i += m
        else:
            i += 1
    return out


def locate_tokens(tokenizer, prompt: str, identity: str | None = None, camera: str | None = None) -> list[TokenSpan]:
    """Prompt tokens grouped per word, in prompt order, from token ids; BOS, EOS and padding skipped.

    The identity token must be one added id (a loaded textual-inversion token); the camera string
    is the run of its BPE pieces (or one id when it is a learned token). Both are found by
    searching the prompt's ids for their own ids. The other words are matched piece by piece
    (each whitespace-separated word tokenized alone); pieces that cannot be matched that way
    become one entry each. Words cut off by the 77-token limit are left out.
    """
    ids = prompt_ids(tokenizer, prompt)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    lo = 1 if ids and ids[0] == bos else 0
    hi = ids.index(eos, lo) if eos in ids[lo:] else len(ids)
    owner: dict[int, tuple[str, str]] = {}  # position -> (kind, text)
    for kind, text in (("identity", identity), ("camera", camera)):
        if not text:
            continue
        sub = _piece_ids(tokenizer, text)
        if kind == "identity":
            tid = tokenizer.convert_tokens_to_ids(text)
            unk = getattr(tokenizer, "unk_token_id", None)
            if len(sub) != 1 or tid is None or tid == unk or sub != [tid]:
                raise ValueError(f"identity token {text!r} is not one token of the tokenizer "
                                 f"(pieces {tokenizer.convert_ids_to_tokens(sub)}); load the DiVE checkpoint first")
        starts = _find(ids, sub, lo, hi)
        if not starts:
            raise ValueError(f"{kind} token {text!r} does not occur in the tokenized prompt {prompt!r}")
        for s in starts:
            for p in range(s, s + len(sub)):
                owner[p] = (kind, text)
    # ordinary words: walk the prompt word by word
    word_of: dict[int, tuple[int, str]] = {}  # position -> (word number, word)
    cursor = lo
    for k, word in enumerate(prompt.split()):
        if cursor >= hi:
            break
        sub = _piece_ids(tokenizer, word)
        if not sub or list(ids[cursor : cursor + len(sub)]) != sub:
            break  # unexpected tokenization: the rest become one entry per piece
        for p in range(cursor, min(cursor + len(sub), hi)):
            word_of[p] = (k, word)
        cursor += len(sub)
    groups: dict[tuple, list[int]] = {}  # insertion order = prompt order
    for p in range(lo, hi):
        if p in owner:
            key = owner[p]
        elif p in word_of:
            key = ("word", word_of[p][1], word_of[p][0])
        else:
            key = ("word", tokenizer.convert_ids_to_tokens(ids[p]), -p - 1)
        groups.setdefault(key, []).append(p)
    spans, seen = [], {}
    for (kind, text, *_), positions in groups.items():
        base = {"identity": f"[identity] {text}", "camera": f"[camera] {text}"}.get(kind, text)
        seen[base] = seen.get(base, 0) + 1
        label = base if seen[base] == 1 else f"{base} ({seen[base]})"
        spans.append(TokenSpan(label, kind, text, tuple(positions),
                               tuple(tokenizer.convert_ids_to_tokens([ids[p] for p in positions]))))
    return spans


# -------------------------------------------------------------------------------------------------
# Person mask and numeric summary
# -------------------------------------------------------------------------------------------------


def _box_blur(x: np.ndarray, r: int) -> np.ndarray:
    if r <= 0:
        return x
    k = 2 * r + 1
    pad = np.pad(x, r, mode="edge")
    c = pad.cumsum(0).cumsum(1)
    c = np.pad(c, ((1, 0), (1, 0)))
    return (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) / (k * k)


def _otsu(x: np.ndarray) -> float:
    hist, edges = np.histogram(x, bins=64)
    p = hist / max(hist.sum(), 1)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * centers)
    mt = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mt * w0 - m0) ** 2 / (w0 * (1 - w0))
    between = np.nan_to_num(between[:-1])
    return float(centers[int(np.argmax(between))]) if between.size else float(np.median(x))


def _central_components(mask: np.ndarray) -> np.ndarray:
    """Keep the connected parts that reach the central vertical band (the middle quarter of the
    width, where a centred person stands), holes filled; side objects (poles, signs) drop out."""
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    w = mask.shape[1]
    band = labels[:, 3 * w // 8 : max(5 * w // 8, 3 * w // 8 + 1)]
    keep = np.setdiff1d(np.unique(band), [0])
    if keep.size == 0:
        return mask
    return ndimage.binary_fill_holes(np.isin(labels, keep))


def center_mask(h: int, w: int) -> np.ndarray:
    """An upright ellipse over the middle of the crop (ReID crops are person-centred)."""
    yy, xx = np.mgrid[0:h, 0:w]
    return ((yy + 0.5 - h / 2) / (0.45 * h)) ** 2 + ((xx + 0.5 - w / 2) / (0.3 * w)) ** 2 <= 1.0


def person_mask(image: np.ndarray, method: str = "border", identity_map: np.ndarray | None = None,
                quantile: float = 0.8) -> tuple[np.ndarray, str]:
    """An approximate person mask (bool H x W) and the method actually used.

    border (default): the background colour of each row is the median of the left and right
    eighths of the crop (person crops are centred; the per-row model follows floor/wall/sky
    gradients); a pixel is person when its colour distance to its row's background, box-blurred,
    is above the Otsu threshold; only the parts reaching the middle quarter of the width are kept
    (holes filled). When that gives under 3% or over 85% of the image (a flat or
    busy picture) it falls back to `center`.
    center: an upright ellipse, 90% of the height and 60% of the width.
    identity: the top (1 - quantile) of the identity token's own map: circular when testing the
    identity token itself, useful as a reference for the other tokens.
    """
    h, w = image.shape[:2]
    if method == "center":
        return center_mask(h, w), "center"
    if method == "identity":
        if identity_map is None:
            raise ValueError("person mask 'identity' needs the identity map")
        return identity_map >= np.quantile(identity_map, quantile), "identity"
    if method != "border":
        raise ValueError(f"person mask {method!r}: expected one of {', '.join(MASK_METHODS)}")
    img = image.astype(np.float32) / 255.0
    if img.ndim == 2:
        img = img[..., None]
    sw = max(1, w // 8)
    side = np.concatenate([img[:, :sw], img[:, -sw:]], axis=1)
    bg = np.median(side, axis=1)  # (H, C)
    r = max(1, h // 32)
    bg = np.stack([np.convolve(np.pad(bg[:, c], r, mode="edge"), np.ones(2 * r + 1) / (2 * r + 1), "valid")
                   for c in range(bg.shape[1])], axis=1)
    dist = np.sqrt(((img - bg[:, None, :]) ** 2).sum(-1))
    dist = _box_blur(dist, max(1, min(h, w) // 32))
    mask = dist > _otsu(dist)
    mask = _central_components(mask)
    if not 0.03 <= mask.mean() <= 0.85:
        return center_mask(h, w), "center (border fallback)"
    return mask, "border"


def attention_stats(raw: np.ndarray, mask: np.ndarray) -> dict:
    """inside: share of the map's mass on the mask; area: the mask's share of the image; contrast:
    mean attention per person pixel / per background pixel (1 = no preference); area50: smallest
    share of the image that holds half of the mass (0.5 = uniform, small = focused)."""
    m = np.clip(raw.astype(np.float64), 0, None)
    total = m.sum()
    area = float(mask.mean())
    inside = float(m[mask].sum() / total) if total > 0 else float("nan")
    if 0 < area < 1 and 0 <= inside < 1:
        contrast = (inside / area) / ((1 - inside) / (1 - area))
    else:
        contrast = float("inf") if inside == 1 else float("nan")
    srt = np.sort(m.ravel())[::-1]
    area50 = float((np.searchsorted(np.cumsum(srt), 0.5 * total) + 1) / srt.size) if total > 0 else float("nan")
    return {"inside": inside, "area": area, "contrast": float(contrast), "area50": area50, "mass": float(m.mean())}


# -------------------------------------------------------------------------------------------------
# One image's attention maps
# -------------------------------------------------------------------------------------------------


@dataclass
class AttentionResult:
    image: np.ndarray  # uint8 H x W x 3
    maps: "OrderedDict[str, np.ndarray]"  # label -> H x W float32 in [0, 1] (the token's map / its max)
    raw: "OrderedDict[str, np.ndarray]"  # label -> H x W mean attention probability, summed over pieces
    spans: list[TokenSpan]
    mask: np.ndarray  # bool H x W, the estimated person mask
    mask_method: str
    summary: "OrderedDict[str, dict]"  # label -> attention_stats + kind
    prompt: str
    identity: str
    camera: str
    seed: int
    index: int
    image_seed: int
    steps: int
    guidance: float
    layers: list[str]
    steps_used: list[int]
    seconds: float = 0.0
    settings: dict = field(default_factory=dict)

    @property
    def identity_label(self) -> str:
        return f"[identity] {self.identity}"

    @property
    def camera_label(self) -> str:
        return f"[camera] {self.camera}"

    def to_dict(self) -> dict:
        """JSON-ready: everything except the arrays."""
        return {
            "prompt": self.prompt, "identity": self.identity, "camera": self.camera, "seed": self.seed,
            "index": self.index, "image_seed": self.image_seed, "steps": self.steps, "guidance": self.guidance,
            "layers": self.layers, "steps_used": self.steps_used, "mask_method": self.mask_method,
            "image_size": list(self.image.shape[:2]), "seconds": round(self.seconds, 3),
            "tokens": [{"label": s.label, "kind": s.kind, "positions": list(s.positions), "pieces": list(s.pieces)}
                       for s in self.spans],
            "summary": self.summary, **self.settings,
        }

    def format_summary(self) -> str:
        lines = [f"{self.prompt!r}: seed {self.seed} index {self.index}, {self.steps} steps, guidance {self.guidance}, "
                 f"{len(self.layers)} layers x {len(self.steps_used)} steps; person mask: {self.mask_method} "
                 f"({100 * float(self.mask.mean()):.0f}% of the image)",
                 f"  {'token':<34} {'on person':>9} {'contrast':>8} {'area50':>7}"]
        for label, s in self.summary.items():
            lines.append(f"  {label:<34} {100 * s['inside']:8.1f}% {s['contrast']:8.2f} {s['area50']:7.3f}")
        idt, cam = self.summary.get(self.identity_label), self.summary.get(self.camera_label)
        if idt and cam:
            lines.append(f"  identity vs camera: on-person {100 * idt['inside']:.1f}% vs {100 * cam['inside']:.1f}%, "
                         f"area50 {idt['area50']:.3f} vs {cam['area50']:.3f} "
                         f"({'camera more global' if cam['area50'] > idt['area50'] else 'camera not more global'})")
        return "\n".join(lines)


def default_tokens(table, identity: str | None = None, camera: str | None = None) -> tuple[str, str]:
    """The given tokens (checked against the table), else the first external identity (a
    visible-only dataset) and the first infrared camera."""
    if identity:
        table.get(identity)
    else:
        try:
            pool = [t for t in table.identities if table.is_external(t.dataset)] or table.identities
        except CheckpointError:  # an older per-modality table cannot tell: any identity will do
            pool = table.identities
        if not pool:
            raise ValueError("the checkpoint's token table has no identity tokens")
        identity = pool[0].token
    if camera:
        table.get(camera)
    else:
        pool = table.infrared_cameras() or table.cameras
        if not pool:
            raise ValueError("the checkpoint's token table has no camera tokens")
        camera = pool[0].token
    return identity, camera


def attention_maps(generator, identity_token: str | None = None, camera_token: str | None = None, *, seed: int = 0,
                   index: int = 0, steps: int = 25, guidance: float = 1.0, negative_prompt: str = "", layers=None,
                   step_range=None, mask="border") -> AttentionResult:
    """Render one image of (identity, camera) and its per-token cross-attention heat maps.

    The image is the one `dive generate` makes for this identity, camera, seed and index (same
    per-image seed, same `Generator.render`). layers / step_range: `select_layers` /
    `select_steps`. mask: a person-mask method (`person_mask`) or a bool H x W array.
    """
    from dive.generate.pipeline import ImageJob, image_seed

    t0 = time.perf_counter()
    pipe = generator.pipe
    identity, camera = default_tokens(generator.table, identity_token, camera_token)
    prompt = generator.table.prompt(identity, camera)
    text = pipe.maybe_convert_prompt(prompt, pipe.tokenizer) if hasattr(pipe, "maybe_convert_prompt") else prompt
    spans = locate_tokens(pipe.tokenizer, text, identity=identity, camera=camera)
    positions = sorted({p for s in spans for p in s.positions})
    job = ImageJob(identity, camera, index, image_seed(seed, identity, camera, index), prompt)
    with record_attention(pipe, layers=layers, steps=step_range, tokens=positions) as rec:
        image = generator.render([job], steps=steps, guidance=guidance, negative_prompt=negative_prompt)[0]
    h, w = image.shape[:2]
    heat = rec.heatmaps((h, w)).numpy()[0]  # (len(positions), H, W)
    col = {p: i for i, p in enumerate(positions)}
    raw: OrderedDict[str, np.ndarray] = OrderedDict()
    maps: OrderedDict[str, np.ndarray] = OrderedDict()
    for s in spans:
        r = heat[[col[p] for p in s.positions]].sum(0).astype(np.float32)
        raw[s.label] = r
        peak = float(r.max())
        maps[s.label] = (r / peak if peak > 0 else r).astype(np.float32)
    id_label = f"[identity] {identity}"
    if isinstance(mask, np.ndarray):
        if mask.shape != (h, w):
            raise ValueError(f"person mask of shape {mask.shape}; the image is {h}x{w}")
        pmask, method = mask.astype(bool), "given"
    else:
        pmask, method = person_mask(image, mask, identity_map=raw.get(id_label))
    summary: OrderedDict[str, dict] = OrderedDict(
        (s.label, {"kind": s.kind, **attention_stats(raw[s.label], pmask)}) for s in spans)
    return AttentionResult(
        image=image, maps=maps, raw=raw, spans=spans, mask=pmask, mask_method=method, summary=summary,
        prompt=prompt, identity=identity, camera=camera, seed=seed, index=index, image_seed=job.seed, steps=steps,
        guidance=guidance, layers=rec.recorded_layers, steps_used=rec.recorded_steps,
        seconds=time.perf_counter() - t0,
        settings={"layer_selection": str(layers or "all"), "step_selection": str(step_range or "all"),
                  "checkpoint_hash": getattr(generator, "checkpoint_hash", "")},
    )


# -------------------------------------------------------------------------------------------------
# Figure
# -------------------------------------------------------------------------------------------------


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """uint8 H x W x 3: a [0, 1] heat map (fixed scale) blended over the image (for galleries)."""
    import matplotlib

    colours = matplotlib.colormaps[cmap](np.clip(heat, 0, 1))[..., :3]
    mixed = (1 - alpha) * image.astype(np.float32) / 255 + alpha * colours
    return (np.clip(mixed, 0, 1) * 255).round().astype(np.uint8)


def _wrap(label: str, width: int = 14) -> str:
    if label.startswith("[") and "] " in label:
        head, tail = label.split("] ", 1)
        label = head + "]\n" + tail
    return "\n".join(line if len(line) <= width + 4 else line[: width + 2] + "\u2026" for line in label.split("\n"))


def build_figure(result: AttentionResult, *, cols: int = 8, panel_width: float = 1.5, alpha: float = 0.5,
                 cmap: str = "jet"):
    """The matplotlib figure of `attention_figure` (for callers that embed it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize

    h, w = result.image.shape[:2]
    labels = list(result.maps)
    n = 1 + len(labels)
    cols = max(1, min(cols, n))
    rows = -(-n // cols)
    panel_h = panel_width * h / w
    fig, grid = plt.subplots(rows, cols, squeeze=False, dpi=110, layout="constrained",
                             figsize=(cols * panel_width + 0.9, rows * (panel_h + 0.6) + 0.35))
    norm = Normalize(0.0, 1.0)
    axes = []
    for i, ax in enumerate(grid.ravel()):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.axis("off")
            continue
        ax.imshow(result.image, aspect="equal", interpolation="nearest")
        if i == 0:
            if result.mask.any() and not result.mask.all():
                ax.contour(result.mask.astype(float), levels=[0.5], colors="white", linewidths=0.8, linestyles="--")
            ax.set_title(f"image\n(mask: {result.mask_method.split()[0]})", fontsize=7)
        else:
            label = labels[i - 1]
            st = result.summary[label]
            ax.imshow(result.maps[label], cmap=cmap, norm=norm, alpha=alpha, aspect="equal", interpolation="bilinear")
            ax.set_title(f"{_wrap(label)}\nperson {100 * st['inside']:.0f}%  a50 {st['area50']:.2f}", fontsize=7)
        axes.append(ax)
    bar = fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=grid, fraction=0.03, pad=0.01,
                       shrink=0.9)
    bar.ax.tick_params(labelsize=6)
    bar.set_label("attention / token max", fontsize=7)
    fig.suptitle(f"{result.prompt}  |  seed {result.seed}:{result.index}, {result.steps} steps, guidance "
                 f"{result.guidance:g}, {len(result.layers)} layers, steps {_ranges(result.steps_used)}", fontsize=7)
    return fig, axes


def _ranges(steps: Sequence[int]) -> str:
    if not steps:
        return "-"
    s = sorted(steps)
    return f"{s[0]}-{s[-1]}" if s == list(range(s[0], s[-1] + 1)) else ",".join(map(str, s))


def attention_figure(result: AttentionResult, path: str | Path, **kwargs) -> Path:
    """PNG: the image (with the person-mask outline), then one heat-map overlay per token, all on
    one [0, 1] colour scale with one colour bar; panels keep the image's aspect ratio."""
    import matplotlib.pyplot as plt

    from dive.utils.io import atomic_path

    path = Path(path)
    fig, _ = build_figure(result, **kwargs)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


# -------------------------------------------------------------------------------------------------
# Overhead benchmark and the `dive attention` command
# -------------------------------------------------------------------------------------------------


def attention_overhead(generator, n: int = 4, steps: int = 25, *, guidance: float = 1.0, seed: int = 0,
                       layers=None, tokens: Sequence[int] | None = None, repeats: int = 1) -> dict:
    """Time `n` images x `steps` without and with recording (all cross-attention layers and
    steps, all 77 positions unless `tokens`), best of `repeats` alternating runs after a warm-up."""
    from dive.generate.pipeline import GenerationRequest

    identity, camera = default_tokens(generator.table)
    jobs = GenerationRequest([identity], [camera], n=n, seed=seed).jobs(generator.table)
    generator.render(jobs[:1], steps=2, guidance=guidance)  # warm-up
    plain, recorded, stats = [], [], {}
    img_plain = img_rec = None
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        img_plain = generator.render(jobs, steps=steps, guidance=guidance)
        plain.append(time.perf_counter() - t)
        t = time.perf_counter()
        with record_attention(generator.pipe, layers=layers, tokens=tokens) as rec:
            img_rec = generator.render(jobs, steps=steps, guidance=guidance)
        recorded.append(time.perf_counter() - t)
        t = time.perf_counter()
        rec.heatmaps((generator.height, generator.width))
        stats = {"records": len(rec.records), "record_mb": round(rec.nbytes() / 2**20, 2),
                 "layers": len(rec.recorded_layers), "aggregate_s": round(time.perf_counter() - t, 4)}
    p, r = min(plain), min(recorded)
    return {"n": n, "steps": steps, "guidance": guidance, "image_size": [generator.height, generator.width],
            "device": str(generator.device), "plain_s": round(p, 4), "recorded_s": round(r, 4),
            "overhead_pct": round(100 * (r - p) / p, 2),
            # back-to-back pairs cancel the machine's drift between repeats: the robust figure
            "overhead_pct_median_of_pairs": round(100 * (float(np.median(np.array(recorded) / np.array(plain))) - 1), 2),
            "identical": bool(np.array_equal(img_plain, img_rec)),
            **stats}


@dataclass
class AttentionConfig:
    """`dive attention`: one generated image and its per-token cross-attention maps."""

    checkpoint: Path = field(metadata={"help": "DiVE checkpoint folder (LoRA + embeddings + tokens.json)"})
    out: Path = field(metadata={"help": "figure (PNG); the summary is written beside it as <out>.json"})
    base: Path | None = field(default=None, metadata={
        "help": "diffusers SD-1.x folder the checkpoint was trained on; None: the one its dive.json names"})
    identity: str | None = field(default=None, metadata={"help": "identity token; when omitted, the table's first external identity"})
    camera: str | None = field(default=None, metadata={"help": "camera token; when omitted, the table's first infrared camera"})
    seed: int = field(default=0, metadata={"help": "global seed, as in `dive generate`"})
    index: int = field(default=0, metadata={"help": "image index, as in `dive generate` (same seed -> same image)"})
    steps: int = field(default=25, metadata={"help": "DPM-Solver++ steps"})
    guidance: float = field(default=DEFAULT_GUIDANCE, metadata={"help": "classifier-free guidance scale (1: off)"})
    negative_prompt: str = field(default="", metadata={
        "help": "negative prompt (used when guidance > 1); {camera} / {identity} become each image's tokens: "
                "'a {camera} photo of person' guides along the identity only"})
    layers: str = field(default="all", metadata={"help": "cross-attention layers: all, or comma-separated down, mid, up, 1/k (resolution), names"})
    step_range: str = field(default="all", metadata={"help": "sampling steps averaged: all, 'a:b' (indices, b exclusive) or fractions '0:0.5'"})
    mask: str = field(default="border", metadata={"help": "person mask for the summary", "choices": list(MASK_METHODS)})
    device: str = field(default="cpu", metadata={"help": "torch device"})


def run_attention(cfg: AttentionConfig) -> tuple[AttentionResult, Path, Path]:
    from dive.checkpoint import resolve_base
    from dive.generate.pipeline import load_generator
    from dive.utils.io import write_json

    if cfg.out.suffix.lower() != ".png":
        raise ValueError(f"--out {cfg.out}: the figure is a PNG; give a path ending in .png")
    gen = load_generator(resolve_base(cfg.checkpoint, cfg.base), cfg.checkpoint, device=cfg.device)
    res = attention_maps(gen, cfg.identity, cfg.camera, seed=cfg.seed, index=cfg.index, steps=cfg.steps,
                         guidance=cfg.guidance, negative_prompt=cfg.negative_prompt, layers=cfg.layers,
                         step_range=cfg.step_range, mask=cfg.mask)
    fig = attention_figure(res, cfg.out)
    js = cfg.out.with_suffix(".json")
    write_json(js, res.to_dict())
    return res, fig, js
