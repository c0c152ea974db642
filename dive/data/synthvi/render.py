"""Render one person image of SynthVI with numpy: a painter over masks, then the camera.

The person is painted back-to-front from simple shapes (capsules, trapezoids, ellipses) on a
float canvas. The same painting code serves both modalities: a `Tones` object turns an attribute
(dye colour + material, skin, hair) into an RGB triple in visible light or an NIR grey level in
infrared, so shape, pose and pattern are shared and only the physics differs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
from scipy.ndimage import gaussian_filter

from dive.data.synthvi.world import (
    BUILDS,
    COLORS,
    HAIR_COLORS,
    HAIR_NIR,
    HEIGHTS,
    SKIN_NIR,
    SKIN_TONES,
    VIEWS,
    CameraSpec,
    Identity,
    nir_of,
)

# ---------------------------------------------------------------------------------------------
# Tones: attribute -> pixel value in one modality
# ---------------------------------------------------------------------------------------------


class Tones:
    """`garment_nir` (infrared only): a dye -> NIR table that replaces dye x material, for controls
    such as "what a generator that knows only each colour's infrared word would draw"."""

    def __init__(self, infrared: bool, garment_nir: Mapping[str, float] | None = None):
        self.infrared = infrared
        self.garment_nir = garment_nir

    def garment(self, color: str, material: str) -> np.ndarray:
        if self.infrared:
            nir = self.garment_nir[color] if self.garment_nir is not None else nir_of(color, material)
            return np.full(3, nir, dtype=np.float32)
        return np.asarray(COLORS[color], dtype=np.float32)

    def accessory(self, color: str) -> np.ndarray:
        # bags and caps are synthetic fabric / leather-like
        return self.garment(color, "synthetic")

    def skin(self, tone: str) -> np.ndarray:
        if self.infrared:
            return np.full(3, SKIN_NIR[tone], dtype=np.float32)
        return np.asarray(SKIN_TONES[tone], dtype=np.float32)

    def hair(self, color: str) -> np.ndarray:
        if self.infrared:
            return np.full(3, HAIR_NIR[color], dtype=np.float32)
        return np.asarray(HAIR_COLORS[color], dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Scenes (backgrounds): one wide strip per camera, each image sees a window of it
# ---------------------------------------------------------------------------------------------

# scene -> (wall colour, floor colour, palette of objects); infrared scenes are grey levels
_SCENES_VISIBLE = {
    "hall": ((0.78, 0.76, 0.70), (0.55, 0.50, 0.45), [(0.35, 0.30, 0.25), (0.85, 0.85, 0.90), (0.40, 0.45, 0.55)]),
    "corridor": ((0.70, 0.62, 0.50), (0.40, 0.34, 0.28), [(0.25, 0.20, 0.15), (0.90, 0.80, 0.55), (0.55, 0.40, 0.30)]),
    "street": ((0.60, 0.62, 0.66), (0.38, 0.38, 0.40), [(0.30, 0.32, 0.36), (0.75, 0.72, 0.65), (0.55, 0.25, 0.20)]),
    "park": ((0.45, 0.60, 0.40), (0.40, 0.50, 0.30), [(0.20, 0.35, 0.18), (0.50, 0.40, 0.28), (0.65, 0.75, 0.55)]),
    "plaza": ((0.72, 0.70, 0.66), (0.60, 0.58, 0.52), [(0.45, 0.42, 0.40), (0.80, 0.60, 0.45), (0.35, 0.40, 0.50)]),
    "shop": ((0.82, 0.78, 0.72), (0.50, 0.46, 0.44), [(0.75, 0.20, 0.20), (0.20, 0.40, 0.70), (0.90, 0.85, 0.40)]),
}
_SCENES_INFRARED = {
    # dark indoor room, cool walls, warm lamps / radiators
    "ir_indoor": (0.16, 0.22, [0.10, 0.85, 0.30]),
    # outdoor: low-contrast, mid-grey ground, cool sky, foliage
    "ir_outdoor": (0.38, 0.48, [0.30, 0.55, 0.25]),
}


def scene_strip(scene: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A (height, 4*width, 3) float background for a scene family; `rng` fixes its layout."""
    W = 4 * width
    yy = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    if scene in _SCENES_INFRARED:
        wall_v, floor_v, objects_v = _SCENES_INFRARED[scene]
        wall = np.full(3, wall_v, np.float32)
        floor = np.full(3, floor_v, np.float32)
        objects = [np.full(3, v, np.float32) for v in objects_v]
    else:
        wall_c, floor_c, objects_c = _SCENES_VISIBLE[scene]
        wall, floor = np.asarray(wall_c, np.float32), np.asarray(floor_c, np.float32)
        objects = [np.asarray(c, np.float32) for c in objects_c]
    horizon = rng.uniform(0.6, 0.75)
    img = np.where(yy < horizon, wall * (0.9 + 0.15 * yy / horizon), floor * (0.85 + 0.2 * (yy - horizon)))
    img = np.broadcast_to(img, (height, W, 3)).copy()
    xx = np.arange(W)
    # vertical structures (doors, pillars, windows, trees, lamps), then a few horizontal bands
    for _ in range(int(rng.integers(6, 11))):
        x0 = int(rng.integers(0, W))
        w = int(rng.integers(max(2, width // 16), max(3, width // 3)))
        y0 = int(rng.uniform(0.0, 0.5) * height)
        y1 = int(rng.uniform(horizon, 1.0) * height)
        col = objects[int(rng.integers(len(objects)))] * rng.uniform(0.85, 1.15)
        cols = (xx >= x0) & (xx < x0 + w)
        img[y0:y1, cols] = col
    for _ in range(int(rng.integers(1, 4))):
        y = int(rng.uniform(0.05, 0.95) * height)
        h = int(rng.integers(1, max(2, height // 24)))
        img[y : y + h] *= rng.uniform(0.75, 1.2)
    # low-frequency texture
    tex = gaussian_filter(rng.standard_normal((height, W)).astype(np.float32), sigma=3.0)
    img *= (1.0 + 0.25 * tex)[:, :, None]
    return np.clip(img, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Pose
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pose:
    view: str  # front / back / left / right
    phase: float  # walking phase, radians
    scale: float  # person height as a fraction of the image height
    cx: float  # centre x as a fraction of the width
    top: float  # head top y as a fraction of the height
    occluder: str | None  # None, "pole" or "box"
    occluder_pos: float  # 0..1 where the occluder stands


def sample_pose(camera: CameraSpec, rng: np.random.Generator) -> Pose:
    view = VIEWS[rng.choice(4, p=np.asarray(camera.view_probs) / sum(camera.view_probs))]
    scale = float(rng.uniform(*camera.scale))
    cx = float(0.5 + rng.uniform(-0.08, 0.08))
    top = float(rng.uniform(0.02, max(0.03, 0.98 - scale)))
    if rng.random() < 0.08:  # partial crop: the person runs off the bottom of the frame
        top = float(1.0 - scale + rng.uniform(0.08, 0.18))
    occ = None
    if rng.random() < camera.occlusion:
        occ = "pole" if rng.random() < 0.5 else "box"
    return Pose(view, float(rng.uniform(0, 2 * math.pi)), scale, cx, top, occ, float(rng.uniform(0.15, 0.85)))


# ---------------------------------------------------------------------------------------------
# Painter
# ---------------------------------------------------------------------------------------------


class _Canvas:
    def __init__(self, background: np.ndarray):
        self.img = background.copy()
        H, W = background.shape[:2]
        self.yy, self.xx = np.mgrid[0:H, 0:W].astype(np.float32) + 0.5
        self.person = np.zeros((H, W), dtype=bool)

    def paint(self, mask: np.ndarray, color: np.ndarray, shade: np.ndarray | None = None) -> None:
        if shade is None:
            self.img[mask] = color
        else:
            self.img[mask] = color[None, :] * shade[mask][:, None]
        self.person |= mask

    def paint2(self, mask, second, c1, c2, shade) -> None:
        """Two-colour fill (pattern): `second` selects c2 inside `mask`."""
        col = np.where(second[..., None], c2[None, None, :], c1[None, None, :])
        self.img[mask] = col[mask] * shade[mask][:, None]
        self.person |= mask

    # -- shapes ------------------------------------------------------------------------------
    def capsule(self, x0, y0, x1, y1, r) -> np.ndarray:
        dx, dy = x1 - x0, y1 - y0
        L2 = dx * dx + dy * dy + 1e-9
        t = np.clip(((self.xx - x0) * dx + (self.yy - y0) * dy) / L2, 0.0, 1.0)
        px, py = self.xx - (x0 + t * dx), self.yy - (y0 + t * dy)
        return px * px + py * py <= r * r

    def ellipse(self, cx, cy, rx, ry) -> np.ndarray:
        return ((self.xx - cx) / rx) ** 2 + ((self.yy - cy) / ry) ** 2 <= 1.0

    def trapezoid(self, cx, y0, y1, hw0, hw1) -> np.ndarray:
        t = np.clip((self.yy - y0) / max(y1 - y0, 1e-6), 0.0, 1.0)
        hw = hw0 + (hw1 - hw0) * t
        return (self.yy >= y0) & (self.yy < y1) & (np.abs(self.xx - cx) <= hw)

    def rect(self, x0, y0, x1, y1) -> np.ndarray:
        return (self.xx >= x0) & (self.xx < x1) & (self.yy >= y0) & (self.yy < y1)


def _pattern(canvas: _Canvas, pattern: str, cx: float, y0: float, P: float, view: str, split_y: float) -> np.ndarray:
    """Boolean map: where the garment shows its second colour."""
    xx, yy = canvas.xx, canvas.yy
    if pattern == "plain":
        return np.zeros_like(xx, dtype=bool)
    if pattern == "hstripes":
        return (np.floor((yy - y0) / (0.045 * P)) % 2).astype(bool)
    if pattern == "vstripes":
        return (np.floor((xx - cx) / (0.045 * P) + 0.5) % 2).astype(bool)
    if pattern == "checks":
        a = np.floor((yy - y0) / (0.05 * P)) % 2
        b = np.floor((xx - cx) / (0.05 * P) + 0.5) % 2
        return (a != b)
    if pattern == "twotone":
        return yy >= split_y
    if pattern == "logo":
        if view == "back":
            return np.zeros_like(xx, dtype=bool)
        w = 0.06 * P if view == "front" else 0.035 * P
        return (np.abs(xx - cx) < w) & (yy > y0 + 0.06 * P) & (yy < y0 + 0.16 * P)
    raise ValueError(f"unknown pattern {pattern!r}")


def paint_person(canvas: _Canvas, ident: Identity, pose: Pose, tones: Tones, rng: np.random.Generator) -> None:
    H, W = canvas.img.shape[:2]
    P = pose.scale * HEIGHTS[ident.height] * H  # person height in pixels
    y0 = pose.top * H + (1.0 - HEIGHTS[ident.height]) * pose.scale * H
    cx = pose.cx * W
    wf = BUILDS[ident.build]
    side = pose.view in ("left", "right")
    facing = -1.0 if pose.view == "left" else 1.0  # direction the person faces (side views)

    def Y(f: float) -> float:
        return y0 + f * P

    tw = (0.085 if side else 0.13) * P * wf  # torso half-width at the shoulders
    # cylindrical shading across the body; infrared is flatter (heat, not light)
    depth = 0.15 if tones.infrared else 0.35
    shade = np.clip(1.0 - depth * ((canvas.xx - cx) / (1.6 * tw)) ** 2, 0.5, 1.0).astype(np.float32)
    if not tones.infrared:
        shade = shade * (1.05 - 0.12 * np.clip((canvas.yy - y0) / P, 0, 1))

    skin = tones.skin(ident.skin)
    hair = tones.hair(ident.hair_color)
    up_c1 = tones.garment(ident.upper.color, ident.upper.material)
    up_c2 = tones.garment(ident.upper.color2, ident.upper.material)
    lo_c1 = tones.garment(ident.lower.color, ident.lower.material)
    lo_c2 = tones.garment(ident.lower.color2, ident.lower.material)
    shoes = tones.garment(ident.shoes, "leather")
    swing = math.sin(pose.phase)

    # --- behind the body: backpack seen from the side, long hair seen from the front ----------
    if ident.backpack and side:
        bx0 = cx - facing * tw * 0.6
        bx1 = bx0 - facing * (0.10 * P)
        canvas.paint(canvas.rect(min(bx0, bx1), Y(0.17), max(bx0, bx1), Y(0.43)), tones.accessory(ident.backpack), shade)
    if ident.hair_style == "long" and pose.view == "front":
        canvas.paint(canvas.rect(cx - 0.062 * P, Y(0.05), cx + 0.062 * P, Y(0.24)), hair, shade)

    # --- legs ----------------------------------------------------------------------------------
    hem = {"pants": 0.90, "shorts": 0.68, "skirt": 0.70}[ident.lower_type]
    leg_r = 0.045 * P * (0.9 + 0.1 * wf)
    hip_y, foot_y = Y(0.50), Y(0.93)
    for s in (-1.0, 1.0):
        if side:
            hx = cx
            fx = cx + s * swing * 0.16 * P
        else:
            hx = cx + s * 0.45 * tw
            fx = hx + s * (0.02 * P + 0.015 * P * swing * s)
        fy = foot_y - (0.015 * P * max(0.0, s * swing) if not side else 0.0)
        leg = canvas.capsule(hx, hip_y, fx, fy, leg_r)
        clothed = leg & (canvas.yy < Y(hem))
        canvas.paint(leg & ~clothed, skin, shade)
        pat = _pattern(canvas, ident.lower.pattern, cx, hip_y, P, pose.view, Y(0.72))
        canvas.paint2(clothed, pat, lo_c1, lo_c2, shade)
        foot_dx = (facing * 0.05 * P) if side else 0.0
        canvas.paint(canvas.ellipse(fx + foot_dx, fy + 0.015 * P, 0.055 * P if side else 0.04 * P, 0.025 * P), shoes, shade)
    if ident.lower_type == "skirt":
        sk = canvas.trapezoid(cx, Y(0.48), Y(hem), tw * 0.9, tw * 1.35)
        pat = _pattern(canvas, ident.lower.pattern, cx, Y(0.48), P, pose.view, Y(0.60))
        canvas.paint2(sk, pat, lo_c1, lo_c2, shade)

    # --- arms behind the torso (side view: the far arm) -----------------------------------------
    def arm(sign: float, far: bool) -> None:
        sx = cx + (0.0 if side else sign * (tw - 0.02 * P))
        sy = Y(0.18)
        if side:
            hx = cx + (-1 if far else 1) * swing * 0.13 * P
            hy = Y(0.47)
        else:
            hx = sx + sign * 0.035 * P
            hy = Y(0.47) - 0.02 * P * swing * sign
        r = 0.032 * P * (0.9 + 0.1 * wf)
        a = canvas.capsule(sx, sy, hx, hy, r)
        elbow_y = sy + 0.45 * (hy - sy) if ident.sleeves == "short" else hy - 0.03 * P
        sleeve = a & (canvas.yy < elbow_y)
        pat = _pattern(canvas, ident.upper.pattern, cx, Y(0.155), P, pose.view, Y(0.34))
        canvas.paint(a & ~sleeve, skin, shade * (0.85 if far else 1.0))
        canvas.paint2(sleeve, pat, up_c1, up_c2, shade * (0.85 if far else 1.0))

    if side:
        arm(1.0, far=True)

    # --- torso -------------------------------------------------------------------------------------
    torso = canvas.trapezoid(cx, Y(0.155), Y(0.52), tw, tw * 0.88)
    pat = _pattern(canvas, ident.upper.pattern, cx, Y(0.155), P, pose.view, Y(0.34))
    canvas.paint2(torso, pat, up_c1, up_c2, shade)
    if ident.backpack and pose.view == "back":
        canvas.paint(canvas.rect(cx - 0.75 * tw, Y(0.18), cx + 0.75 * tw, Y(0.44)), tones.accessory(ident.backpack), shade)
    if ident.backpack and pose.view == "front":
        for s in (-1.0, 1.0):
            canvas.paint(canvas.rect(cx + s * 0.6 * tw - 0.012 * P, Y(0.155), cx + s * 0.6 * tw + 0.012 * P, Y(0.36)),
                         tones.accessory(ident.backpack), shade)

    # --- arms in front ------------------------------------------------------------------------------
    if side:
        arm(1.0, far=False)
    else:
        arm(-1.0, far=False)
        arm(1.0, far=False)

    # --- shoulder bag: the strap across the torso and the bag at the hip -------------------------------
    if ident.bag:
        bag_c = tones.accessory(ident.bag)
        s = 1.0 if ident.bag_side == "right" else -1.0
        if pose.view == "back":
            s = -s
        if side:
            bx = cx - 0.04 * P
            canvas.paint(canvas.rect(bx - 0.05 * P, Y(0.40), bx + 0.05 * P, Y(0.52)), bag_c, shade)
        else:
            canvas.paint(canvas.capsule(cx - s * tw * 0.8, Y(0.17), cx + s * tw * 0.9, Y(0.42), 0.010 * P), bag_c, shade)
            bx = cx + s * (tw + 0.05 * P)
            canvas.paint(canvas.rect(bx - 0.05 * P, Y(0.39), bx + 0.05 * P, Y(0.51)), bag_c, shade)

    # --- neck and head ---------------------------------------------------------------------------------
    canvas.paint(canvas.rect(cx - 0.025 * P, Y(0.12), cx + 0.025 * P, Y(0.165)), skin, shade)
    hcx, hcy = cx + (facing * 0.01 * P if side else 0.0), Y(0.075)
    rx, ry = (0.048 if side else 0.045) * P, 0.065 * P
    head = canvas.ellipse(hcx, hcy, rx, ry)
    if ident.hair_style == "bald":
        hair_mask = np.zeros_like(head)
    elif pose.view == "back":
        hair_mask = head.copy()
    elif side:
        hair_mask = head & ((canvas.yy < hcy - 0.25 * ry) | ((canvas.xx - hcx) * facing < -0.2 * rx))
    else:
        hair_mask = head & (canvas.yy < hcy - 0.3 * ry)
    canvas.paint(head & ~hair_mask, skin, shade)
    canvas.paint(hair_mask, hair, shade)
    if ident.hair_style == "long" and pose.view != "front":
        canvas.paint(canvas.rect(hcx - 0.055 * P, hcy, hcx + 0.055 * P, Y(0.26)), hair, shade)
    if ident.hair_style == "ponytail" and pose.view != "front":
        off = -facing * rx * 1.1 if side else 0.0
        canvas.paint(canvas.capsule(hcx + off, hcy, hcx + off * 1.2, Y(0.21), 0.02 * P), hair, shade)
    if ident.hat:
        hat_c = tones.accessory(ident.hat)
        canvas.paint(head & (canvas.yy < hcy - 0.2 * ry), hat_c, shade)
        if pose.view != "back":
            bx0 = hcx + (facing * rx * 0.3 if side else -rx * 1.1)
            bx1 = hcx + (facing * rx * 1.6 if side else rx * 1.1)
            canvas.paint(canvas.rect(min(bx0, bx1), hcy - 0.3 * ry, max(bx0, bx1), hcy - 0.12 * ry), hat_c, shade)


def _occluder_tone(camera: CameraSpec, rng: np.random.Generator) -> np.ndarray:
    if camera.infrared:
        return np.full(3, 0.25 if camera.scene == "ir_indoor" else 0.45, np.float32) * rng.uniform(0.85, 1.15)
    base = _SCENES_VISIBLE[camera.scene][2][0]
    return np.asarray(base, np.float32) * rng.uniform(0.8, 1.2)


def render_image(
    ident: Identity,
    camera: CameraSpec,
    background_strip: np.ndarray,
    rng: np.random.Generator,
    *,
    height: int,
    width: int,
    pose: Pose | None = None,
    garment_nir: Mapping[str, float] | None = None,
) -> np.ndarray:
    """One uint8 (height, width, 3) image of `ident` seen by `camera` (infrared as 3 equal channels;
    `garment_nir`: see `Tones`)."""
    pose = pose or sample_pose(camera, rng)
    offset = int(rng.integers(0, background_strip.shape[1] - width + 1))
    bg = background_strip[:, offset : offset + width]
    if rng.random() < 0.5:
        bg = bg[:, ::-1]
    canvas = _Canvas(bg)
    tones = Tones(camera.infrared, garment_nir)
    paint_person(canvas, ident, pose, tones, rng)
    img = canvas.img
    if camera.infrared:
        # thermal contrast of the person against the scene, then a soft halo (heat bleeds)
        person = canvas.person
        mean_bg = float(bg[..., 0].mean())
        img[person] = mean_bg + camera.contrast * (img[person] - mean_bg)
    if pose.occluder == "pole":
        x = pose.occluder_pos * width
        canvas_mask = canvas.rect(x - 0.06 * width, 0, x + 0.06 * width, height)
        img[canvas_mask] = _occluder_tone(camera, rng)
    elif pose.occluder == "box":
        y = (0.62 + 0.2 * pose.occluder_pos) * height
        canvas_mask = canvas.rect(-1, y, width + 1, height + 1)
        img[canvas_mask] = _occluder_tone(camera, rng)
    # camera response: gain (per-image jitter), cast, gamma, blur, noise
    gain = camera.gain * rng.uniform(0.9, 1.1)
    img = img * gain
    if not camera.infrared:
        img = img * np.asarray(camera.cast, np.float32)
    img = np.clip(img + camera.offset, 0.0, 1.0) ** camera.gamma
    if camera.blur > 0:
        img = gaussian_filter(img, sigma=(camera.blur * height / 128, camera.blur * width / 64, 0))
    if camera.infrared:
        img = img[..., :1]
        img = img + rng.normal(0.0, camera.noise, img.shape).astype(np.float32)
        img = np.repeat(img, 3, axis=2)
    else:
        img = img + rng.normal(0.0, camera.noise, img.shape).astype(np.float32)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
