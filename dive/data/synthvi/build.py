"""Write a SynthVI world to disk in real dataset layouts.

Output (`SynthConfig.out`)::

    vi/            the VI dataset, SYSU-MM01 layout (cams 1,2,4,5 visible; 3,6 infrared; exp/*_id.txt)
    external/      the external visible-only dataset, Market-1501 layout (6 cameras, own id space)
    web/           the captioned visible pool: images/NNNNNN.jpg + captions.jsonl (no ids, no infrared)
    identities.json  every identity's attributes (vi and external), for checks and captions
    synthvi.json   the config, camera specs and counts; written LAST, so its presence marks a
                   complete world

Every image's random state comes from (seed, dataset, person, camera, index) alone, so the
result does not depend on the number of worker processes or their scheduling: the same seed gives
byte-identical files.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from dive.data.synthvi.render import render_image, scene_strip
from dive.data.synthvi.world import (
    EXTERNAL_CAMERAS,
    VI_CAMERAS,
    WEB_SCENES,
    Identity,
    sample_identities,
    sample_identity,
    web_camera,
)
from dive.utils.config import config_to_dict
from dive.utils.io import save_image, write_json, write_text

SYNTHVI_VERSION = 1
_DATASET_CODES = {"vi": 1, "external": 2, "web": 3, "bg": 4, "junk": 5, "distractor": 6}


@dataclass
class SynthConfig:
    """Sizes of a SynthVI world. Defaults: a small SYSU-MM01 (300 train+val ids, 100 test ids)."""

    out: Path = field(metadata={"help": "output directory (must be new or empty unless --force)"})
    seed: int = field(default=0, metadata={"help": "world seed: same seed, byte-identical files"})
    height: int = field(default=128, metadata={"help": "image height in pixels"})
    width: int = field(default=64, metadata={"help": "image width in pixels"})
    vi_train_ids: int = field(default=240, metadata={"help": "VI training identities"})
    vi_val_ids: int = field(default=60, metadata={"help": "VI validation identities"})
    vi_test_ids: int = field(default=100, metadata={"help": "VI test identities"})
    vi_images_per_camera: tuple[int, int] = field(
        default=(4, 8), metadata={"help": "images per (identity, camera), inclusive range"})
    vi_visible_camera_presence: float = field(
        default=0.85, metadata={"help": "chance an identity appears in each visible camera (>= 2 always)"})
    ext_ids: int = field(default=600, metadata={"help": "external (visible-only) training identities"})
    ext_median_images: float = field(default=10.0, metadata={"help": "median images per external identity"})
    ext_spread: float = field(default=0.6, metadata={"help": "log-normal sigma of images per external identity"})
    ext_image_range: tuple[int, int] = field(default=(2, 60), metadata={"help": "min/max images per external identity"})
    ext_test_ids: int = field(default=50, metadata={"help": "external test identities (query + gallery folders)"})
    web_images: int = field(default=16000, metadata={"help": "captioned visible web-pool images (base pretraining)"})
    workers: int = field(default=2, metadata={"help": "rendering processes"})
    jpeg_quality: int = field(default=95, metadata={"help": "JPEG quality of written images"})
    force: bool = field(default=False, metadata={"help": "write into a non-empty output directory"})

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.vi_images_per_camera = tuple(self.vi_images_per_camera)  # type: ignore[assignment]
        self.ext_image_range = tuple(self.ext_image_range)  # type: ignore[assignment]
        lo, hi = self.vi_images_per_camera
        if not 1 <= lo <= hi:
            raise ValueError(f"vi_images_per_camera must be 1 <= lo <= hi, got {self.vi_images_per_camera}")
        if min(self.vi_train_ids, self.vi_test_ids, self.ext_ids) < 1 or min(self.vi_val_ids, self.ext_test_ids, self.web_images) < 0:
            raise ValueError("identity and image counts must be positive")
        if self.height % 8 or self.width % 8:
            raise ValueError(f"height and width must be multiples of 8, got {self.height}x{self.width}")


def image_rng(seed: int, dataset: str, pid: int, cam: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _DATASET_CODES[dataset], pid + 2, cam, index]))


# -------------------------------------------------------------------------------------------------
# Planning: every file of the world as a job, decided up front in the parent process
# -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    rel_path: str
    dataset: str  # vi / external / web / junk / distractor
    identity: int  # index into the dataset's identity list (web: into the web list; -1: none)
    pid: int
    cam: int
    index: int


@dataclass
class WorldPlan:
    vi_identities: list[Identity]
    ext_identities: list[Identity]
    web_identities: list[Identity]
    vi_splits: dict[str, list[int]]
    jobs: list[Job]
    captions: list[dict]


def plan_world(cfg: SynthConfig) -> WorldPlan:
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0]))
    n_vi = cfg.vi_train_ids + cfg.vi_val_ids + cfg.vi_test_ids
    n_ext = cfg.ext_ids + cfg.ext_test_ids
    people = sample_identities(n_vi + n_ext, rng)
    vi_ids, ext_ids = people[:n_vi], people[n_vi:]
    # web people: new random identities, never one of the above (distance >= 1 from all)
    web_ids = []
    taken = {p.key() for p in people}
    while len(web_ids) < cfg.web_images:
        cand = sample_identity(rng)
        if cand.key() not in taken:
            web_ids.append(cand)

    # VI: pids 1..n_vi; splits drawn by a permutation so they interleave like SYSU's
    perm = rng.permutation(n_vi) + 1
    vi_splits = {
        "train": sorted(int(p) for p in perm[: cfg.vi_train_ids]),
        "val": sorted(int(p) for p in perm[cfg.vi_train_ids : cfg.vi_train_ids + cfg.vi_val_ids]),
        "test": sorted(int(p) for p in perm[cfg.vi_train_ids + cfg.vi_val_ids :]),
    }
    jobs: list[Job] = []
    lo, hi = cfg.vi_images_per_camera
    vis_cams = [c for c, spec in VI_CAMERAS.items() if not spec.infrared]
    for pid in range(1, n_vi + 1):
        present = [c for c in vis_cams if rng.random() < cfg.vi_visible_camera_presence]
        if len(present) < 2:
            present = sorted(rng.choice(vis_cams, size=2, replace=False).tolist())
        cams = sorted(present + [c for c, spec in VI_CAMERAS.items() if spec.infrared])
        for cam in cams:
            for k in range(int(rng.integers(lo, hi + 1))):
                jobs.append(Job(f"vi/cam{cam}/{pid:04d}/{k + 1:04d}.jpg", "vi", pid - 1, pid, cam, k))

    # external: long-tailed images per id; each image from a random camera, >= 2 cameras per id
    emin, emax = cfg.ext_image_range
    counts = np.clip(np.round(rng.lognormal(np.log(cfg.ext_median_images), cfg.ext_spread, size=cfg.ext_ids)), emin, emax)
    ext_cams = sorted(EXTERNAL_CAMERAS)
    for i in range(n_ext):
        pid = i + 1
        if i < cfg.ext_ids:
            n, folder = int(counts[i]), "bounding_box_train"
        else:
            n, folder = int(rng.integers(4, 9)), "bounding_box_test"
        cams = rng.choice(ext_cams, size=n).tolist()
        if n >= 2 and len(set(cams)) < 2:
            cams[-1] = ext_cams[(ext_cams.index(cams[0]) + 1) % len(ext_cams)]
        frame_of_cam: dict[int, int] = {}
        query_cams_done: set[int] = set()
        for k, cam in enumerate(cams):
            frame_of_cam[cam] = frame_of_cam.get(cam, 0) + 1
            sub = folder
            if folder == "bounding_box_test" and cam not in query_cams_done and len(query_cams_done) < 2:
                sub = "query"
                query_cams_done.add(cam)
            name = f"{pid:04d}_c{cam}s1_{frame_of_cam[cam] * 25:06d}_00.jpg"
            jobs.append(Job(f"external/{sub}/{name}", "external", i, pid, cam, k))
    # Market's gallery also has junk boxes (-1, partial crops) and distractors (0000, no person)
    if cfg.ext_test_ids:
        for k in range(max(2, cfg.ext_test_ids // 5)):
            cam = ext_cams[k % len(ext_cams)]
            jobs.append(Job(f"external/bounding_box_test/-1_c{cam}s1_{(k + 1) * 25:06d}_00.jpg", "junk", -1, -1, cam, k))
            jobs.append(Job(f"external/bounding_box_test/0000_c{cam}s1_{(k + 1) * 25:06d}_00.jpg", "distractor", -1, 0, cam, k))

    captions = []
    for i in range(cfg.web_images):
        rel = f"web/images/{i:06d}.jpg"
        jobs.append(Job(rel, "web", i, -1, 0, i))
        captions.append({"file": rel[len("web/"):]})
    return WorldPlan(vi_ids, ext_ids, web_ids, vi_splits, jobs, captions)


# -------------------------------------------------------------------------------------------------
# Rendering workers
# -------------------------------------------------------------------------------------------------

_WORKER: dict = {}
_N_WEB_STRIPS_PER_SCENE = 4


def background_strip(seed: int, kind: str, scene: str, n: int, height: int, width: int) -> np.ndarray:
    """The world's background strip `n` of `scene` for `kind` (vi: n is the camera): the same
    array the world's images of that camera were cut from."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, _DATASET_CODES["bg"], hash_str(kind), hash_str(scene), n]))
    return scene_strip(scene, height, width, rng)


def _strip(key: tuple) -> np.ndarray:
    cache = _WORKER["strips"]
    if key not in cache:
        cfg: SynthConfig = _WORKER["cfg"]
        cache[key] = background_strip(cfg.seed, *key, cfg.height, cfg.width)
    return cache[key]


def hash_str(s: str) -> int:
    """A stable (process-independent) small hash; Python's hash() is salted per process."""
    h = 0
    for ch in s.encode():
        h = (h * 131 + ch) % 1_000_003
    return h


def _init_worker(cfg: SynthConfig, plan: WorldPlan) -> None:
    _WORKER.update(cfg=cfg, plan=plan, strips={})


def _render_job(job: Job) -> dict | None:
    cfg: SynthConfig = _WORKER["cfg"]
    plan: WorldPlan = _WORKER["plan"]
    rng = image_rng(cfg.seed, job.dataset, job.pid, job.cam, job.index)
    H, W = cfg.height, cfg.width
    extra = None
    if job.dataset == "vi":
        cam = VI_CAMERAS[job.cam]
        img = render_image(plan.vi_identities[job.identity], cam, _strip(("vi", cam.scene, job.cam)), rng, height=H, width=W)
    elif job.dataset == "external":
        cam = EXTERNAL_CAMERAS[job.cam]
        img = render_image(plan.ext_identities[job.identity], cam, _strip(("ext", cam.scene, job.cam)), rng, height=H, width=W)
    elif job.dataset == "web":
        cam = web_camera(rng)
        strip = _strip(("web", cam.scene, int(rng.integers(_N_WEB_STRIPS_PER_SCENE))))
        from dive.data.synthvi.render import sample_pose

        pose = sample_pose(cam, rng)
        ident = plan.web_identities[job.identity]
        img = render_image(ident, cam, strip, rng, height=H, width=W, pose=pose)
        extra = {"file": job.rel_path[len("web/"):], "caption": ident.caption(pose.view), "view": pose.view, "scene": cam.scene}
    elif job.dataset == "junk":  # a partial crop of some external person, scaled up
        cam = EXTERNAL_CAMERAS[job.cam]
        ident = plan.ext_identities[int(rng.integers(len(plan.ext_identities)))]
        big = render_image(ident, cam, _strip(("ext", cam.scene, job.cam)), rng, height=H, width=W)
        y = int(rng.integers(0, H // 2))
        img = np.asarray(Image.fromarray(big[y : y + H // 2]).resize((W, H), Image.Resampling.BILINEAR))
    elif job.dataset == "distractor":  # background only
        cam = EXTERNAL_CAMERAS[job.cam]
        strip = _strip(("ext", cam.scene, job.cam))
        off = int(rng.integers(0, strip.shape[1] - W + 1))
        img = (np.clip(strip[:, off : off + W], 0, 1) * 255 + 0.5).astype(np.uint8)
    else:  # pragma: no cover
        raise ValueError(job.dataset)
    save_image(Path(cfg.out) / job.rel_path, Image.fromarray(img), quality=cfg.jpeg_quality, subsampling=0)
    return extra


# -------------------------------------------------------------------------------------------------
# Entry point
# -------------------------------------------------------------------------------------------------


def camera_table() -> dict:
    return {
        "vi": {str(c): dataclasses.asdict(s) for c, s in VI_CAMERAS.items()},
        "external": {str(c): dataclasses.asdict(s) for c, s in EXTERNAL_CAMERAS.items()},
        "web_scenes": list(WEB_SCENES),
    }


def build_world(cfg: SynthConfig, *, progress: bool = True) -> dict:
    """Render the whole world into `cfg.out`; returns the summary also saved as synthvi.json."""
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()) and not cfg.force:
        raise FileExistsError(f"{out}: output directory is not empty; choose a new one or pass --force")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    plan = plan_world(cfg)
    captions: list[dict] = []
    if cfg.workers > 1:
        ctx = mp.get_context("fork")
        with ctx.Pool(cfg.workers, initializer=_init_worker, initargs=(cfg, plan)) as pool:
            it = pool.imap(_render_job, plan.jobs, chunksize=64)
            for extra in tqdm(it, total=len(plan.jobs), desc="synthvi", unit="img", disable=not progress):
                if extra:
                    captions.append(extra)
    else:
        _init_worker(cfg, plan)
        for job in tqdm(plan.jobs, desc="synthvi", unit="img", disable=not progress):
            extra = _render_job(job)
            if extra:
                captions.append(extra)
    _WORKER.clear()

    from dive.data.readers.sysu_mm01 import format_id_file

    for split, ids in plan.vi_splits.items():
        write_text(out / "vi" / "exp" / f"{split}_id.txt", format_id_file(ids))
    (out / "external" / "query").mkdir(parents=True, exist_ok=True)
    (out / "external" / "bounding_box_test").mkdir(parents=True, exist_ok=True)
    write_text(out / "web" / "captions.jsonl", "".join(json.dumps(c, sort_keys=True) + "\n" for c in captions))
    write_json(out / "identities.json", {
        "vi": {str(i + 1): p.to_dict() for i, p in enumerate(plan.vi_identities)},
        "external": {str(i + 1): p.to_dict() for i, p in enumerate(plan.ext_identities)},
    })
    counts: dict[str, int] = {}
    for job in plan.jobs:
        counts[job.dataset] = counts.get(job.dataset, 0) + 1
    summary = {
        "version": SYNTHVI_VERSION,
        "config": {k: v for k, v in config_to_dict(cfg).items() if k not in ("out", "workers", "force")},
        "cameras": camera_table(),
        "vi_splits": {k: len(v) for k, v in plan.vi_splits.items()},
        "images": counts,
    }
    write_json(out / "synthvi.json", summary)  # last: marks the world complete
    summary["seconds"] = round(time.time() - t0, 1)
    return summary
