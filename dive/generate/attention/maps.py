"""One image's per-token attention maps: the person mask estimated from the image, the numeric
summary per token, and `attention_maps`, which renders the image and records its attention."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from dive.checkpoint import CheckpointError
from dive.generate.attention.record import record_attention
from dive.generate.attention.tokens import TokenSpan, locate_tokens

MASK_METHODS = ("border", "center", "identity")


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
