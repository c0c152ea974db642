"""What the studio does, without the UI: the same stage functions the CLI calls, plus caching,
the sandbox and background runs. `app.py` only lays out components and wires them to this."""

from __future__ import annotations

import json
import threading
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from dive import defaults
from dive.checkpoint import (META_FILE, TOKENS_FILE, CheckpointError, TokenTable, check_checkpoint_dir,
                             reference_path, trained_base)
from dive.generate.pipeline import GenerationRequest, Generator, load_generator
from dive.studio import pngmeta
from dive.studio.datasets import ExportBrowser
from dive.studio.real import RealImages, RealIndex, real_images
from dive.studio.runs import RunManager
from dive.studio.sandbox import Sandbox, StudioError
from dive.utils.device import dtype_name, resolve
from dive.utils.io import as_rgb

REPO_ROOT = defaults.REPO_ROOT
SHIPPED_DIR = REPO_ROOT / defaults.CHECKPOINTS
SHIPPED_BASE = defaults.shipped(defaults.BASE_NAME)  # the demo's base; studio training runs start from it
DEMO_NAME = defaults.DEMO_NAME  # the shipped checkpoint the studio opens on: the bench's default generator

#: training presets offered by the studio's form
TRAIN_PRESETS = {
    "quick smoke test": {"steps": 60, "batch_size": 8, "rank": 8, "save_every": 20, "preview_every": 20, "world": "quick"},
    "full": {"steps": 4000, "batch_size": 32, "rank": 32, "save_every": 500, "preview_every": 500, "world": "default"},
}
QUICK_WORLD = dict(vi_train_ids=12, vi_val_ids=2, vi_test_ids=4, vi_images_per_camera=(2, 3), ext_ids=24,
                   ext_test_ids=2, web_images=16, workers=1)


@dataclass
class CheckpointChoice:
    label: str
    path: Path
    base: Path
    description: str = ""

    @property
    def display(self) -> str:
        """What the picker shows: the label and a one-line description."""
        return f"{self.label} — {self.description}" if self.description else self.label


class GeneratedImage(NamedTuple):
    image: np.ndarray
    caption: str  # in words: "SYSU #0012 · cam3 · infrared · seed 42"
    settings: dict  # what `pngmeta.save_png` writes into the image


def caption_words(table: TokenTable, identity: str, camera: str) -> str:
    """ "SYSU #0012 · cam3 · infrared": an image's identity and camera in words."""
    try:
        t, c = table.get(identity), table.get(camera)
        return f"{t.dataset} #{t.pid:04d} · cam{c.camid} · {c.modality}"
    except (KeyError, AttributeError):
        return f"{identity} · {camera}"


def describe_checkpoint(ckpt: Path, *, demo: bool = False) -> str:
    """One line from a checkpoint's dive.json: its own "description", else its recipe."""
    try:
        meta = json.loads((Path(ckpt) / META_FILE).read_text())
    except (OSError, ValueError):
        return ""
    if meta.get("description"):
        return str(meta["description"]).splitlines()[0]
    cfg = meta.get("config", {}) or {}
    parts = ["the default demo" if demo else "", f"{meta.get('step', cfg.get('steps', '?'))} steps",
             f"rank {cfg['rank']}" if "rank" in cfg else "",
             f"camera tokens: {cfg['camera_mode']}" if "camera_mode" in cfg else "",
             "infrared adapter" if cfg.get("infrared_adapter") else "",
             f"data {Path(str(cfg['data'])).name}" if cfg.get("data") else ""]
    return ", ".join(x for x in parts if x)


class Studio:
    def __init__(self, data_root: str | Path, shipped_dir: Path = SHIPPED_DIR, max_cached: int = 2,
                 default_base: Path = SHIPPED_BASE, *, public: bool = False, max_trainings: int = 1,
                 max_exports: int = 1, device: str | None = None, dtype: str = "fp32"):
        """public: every visitor (an `owner` id) sees only their own runs, exports and files, and
        trainings / exports are capped (`max_trainings`, `max_exports` at a time). Local mode (the
        default) is one user who sees every run. device / dtype: the generators' (`dive.utils.device`;
        None: "auto", cuda when a GPU is present, else cpu)."""
        self.device, self.dtype = resolve(device or "auto", dtype)  # checked before any folder is made
        self.sandbox = Sandbox(data_root)
        self.public = public
        self.max_trainings, self.max_exports = max_trainings, max_exports
        self._exports_running = 0
        self._exports_lock = threading.Lock()
        self.shipped_dir = Path(shipped_dir)
        self.default_base = Path(default_base)
        self.runs = RunManager(self.sandbox.root / "runs.sqlite", self.sandbox.root / "runs")
        self._gens: OrderedDict[str, tuple[Generator, threading.Lock]] = OrderedDict()
        self._gens_lock = threading.Lock()
        self._base_hashes: dict[str, str] = {}
        self.max_cached = max_cached
        self._real = RealIndex()
        self.exports = ExportBrowser(self)  # the exported datasets a visitor may browse

    # -- checkpoints ------------------------------------------------------------------------------
    def checkpoints(self, owner: str | None = None) -> list[CheckpointChoice]:
        """Shipped checkpoints, then every complete checkpoint of the runs this visitor sees."""
        out = []
        if self.shipped_dir.is_dir():
            for d in sorted(self.shipped_dir.iterdir(), key=lambda d: (d.name != DEMO_NAME, d.name)):
                try:
                    check_checkpoint_dir(d)
                except CheckpointError:
                    continue
                out.append(CheckpointChoice(f"shipped: {d.name}", d, self.base_of(d),
                                            describe_checkpoint(d, demo=d.name == DEMO_NAME)))
        for rec in self.visible_runs(owner):
            if rec.kind != "train":
                continue
            for ck in self.runs.checkpoints(rec):
                out.append(CheckpointChoice(f"run {rec.id}: {ck.name}", ck, self.base_of(ck),
                                            f"your run ({rec.status}), preset {rec.config.get('preset', '?')}"))
        return out

    @staticmethod
    def default_choice(labels: list[str]) -> str | None:
        """The checkpoint the studio opens on: the shipped demo by its exact name (other shipped
        folders such as dive-demo-v2 share the prefix), else the first one."""
        return next((c for c in labels if c == f"shipped: {DEMO_NAME}"), labels[0] if labels else None)

    def base_of(self, ckpt: Path) -> Path:
        """The base a checkpoint was trained on, if at hand; else the shipped tiny base."""
        return trained_base(ckpt, search=[self.sandbox.root]) or self.default_base

    def resolve_checkpoint(self, choice: str, owner: str | None = None) -> CheckpointChoice:
        """A picker label, or a folder typed by the user (inside the studio's data folder)."""
        for c in self.checkpoints(owner):
            if choice in (c.label, c.display, str(c.path)):
                return c
        path = self.resolve(choice, owner, must_exist=True)
        try:
            check_checkpoint_dir(path)
        except CheckpointError as err:
            raise StudioError(f"not a DiVE checkpoint: {err}") from None
        return CheckpointChoice(f"folder: {self.sandbox.relative(path)}", path, self.base_of(path))

    def resolve(self, text: str, owner: str | None = None, *, must_exist: bool = False) -> Path:
        """A user-typed path inside the data folder; in public mode never inside another visitor's
        folder (refused as if it did not exist)."""
        p = self.sandbox.resolve(text, must_exist=must_exist)
        others = self.sandbox.root / "visitors"
        if self.public and (p == others or others in p.parents):
            mine = self.sandbox.owner_root(owner)
            if not owner or not (p == mine or mine in p.parents):
                raise StudioError(f"{text}: does not exist in the studio's data folder")
        return p

    # -- visitors and their runs ------------------------------------------------------------------
    def visible_runs(self, owner: str | None = None):
        """Every run (local mode), or this visitor's own (public mode)."""
        runs = self.runs.list()
        return [r for r in runs if r.config.get("owner") == owner] if self.public else runs

    def run_of(self, run_id, owner: str | None = None):
        """A run this visitor may watch, stop or resume (another visitor's reads as missing)."""
        try:
            rec = self.runs.get(int(run_id))
        except (KeyError, ValueError, TypeError):
            rec = None
        if rec is None or (self.public and rec.config.get("owner") != owner):
            raise StudioError(f"no run {run_id}")
        return rec

    def stop_run(self, run_id, owner: str | None = None):
        return self.runs.stop(self.run_of(run_id, owner).id)

    def export_slot(self):
        """A context holding one of the `max_exports` export slots (public mode), or refusing."""
        studio = self

        class Slot:
            def __enter__(self):
                with studio._exports_lock:
                    if studio.public and studio._exports_running >= studio.max_exports:
                        raise StudioError(f"the studio runs {studio.max_exports} export(s) at a time and one is "
                                          "running; try again when it ends")
                    studio._exports_running += 1

            def __exit__(self, *exc):
                with studio._exports_lock:
                    studio._exports_running -= 1

        return Slot()

    def generator(self, choice: str, owner: str | None = None) -> tuple[Generator, threading.Lock]:
        c = self.resolve_checkpoint(choice, owner)
        key = str(c.path)
        with self._gens_lock:
            if key in self._gens:
                self._gens.move_to_end(key)
                return self._gens[key]
        gen = load_generator(c.base, c.path, device=self.device, dtype=self.dtype)  # outside the lock: loading takes a moment
        self.base_hash(c.base)  # once per base, with the load: images record it
        with self._gens_lock:
            self._gens[key] = (gen, threading.Lock())
            while len(self._gens) > self.max_cached:
                self._gens.popitem(last=False)
            return self._gens[key]

    def base_hash(self, base: Path) -> str:
        key = str(Path(base).resolve())
        if key not in self._base_hashes:
            self._base_hashes[key] = pngmeta.folder_hash(base)
        return self._base_hashes[key]

    def table(self, choice: str, owner: str | None = None) -> TokenTable:
        return self.generator(choice, owner)[0].table

    # -- tokens for the pickers ---------------------------------------------------------------------
    @staticmethod
    def identity_choices(table: TokenTable) -> list[tuple[str, str]]:
        def label(t):
            try:
                kind = "external" if table.is_external(t.dataset) else "VI"
            except CheckpointError:  # an older per-modality table cannot tell
                kind = "identity"
            return f"{t.dataset} #{t.pid:04d} · {kind} · {t.images} imgs · {t.token}"

        ids = sorted(table.identities, key=lambda t: (label(t).split(" · ")[1] != "external", t.dataset, t.pid))
        return [(label(t), t.token) for t in ids]

    @staticmethod
    def camera_choices(table: TokenTable) -> list[tuple[str, str]]:
        cams = sorted(table.cameras, key=lambda c: (c.modality != "infrared", c.dataset, c.camid))
        return [(f"{c.label} · {c.token}", c.token) for c in cams]

    def reference_image(self, choice: str, token: str, owner: str | None = None) -> Path | None:
        p = reference_path(self.resolve_checkpoint(choice, owner).path, token)
        return p if p.exists() else None

    def real_images(self, choice: str, token: str, owner: str | None = None) -> RealImages:
        """One real visible and (where the dataset has them) infrared image per camera of `token`'s
        identity, from the dataset the checkpoint was trained on when it lies inside the data folder;
        else the checkpoint's reference strip (`dive.studio.real`)."""
        c = self.resolve_checkpoint(choice, owner)
        return real_images(c.path, TokenTable.load(c.path / TOKENS_FILE), token, self.sandbox, self._real)

    # -- generation ---------------------------------------------------------------------------------
    def generate(self, choice: str, identities: list[str], cameras: list[str], *, n: int, seed: int, steps: int,
                 guidance: float, negative_prompt: str = "", init_image: Image.Image | None = None,
                 strength: float = 0.6, action: str = "generate", owner: str | None = None) -> list[GeneratedImage]:
        """Images with captions in words (identity, camera number and modality, seed) and the settings each PNG carries; the same call
        always gives the same images. With `init_image`, every image starts from that picture noised
        to `strength` (`dive translate`'s img2img) instead of pure noise."""
        if not identities or not cameras or not all(identities) or not all(cameras):
            raise StudioError("pick an identity token and a camera token")
        if init_image is not None and not 0.0 < strength <= 1.0:
            raise StudioError(f"strength must be in (0, 1], got {strength}")
        if not 1 <= n <= 64:
            raise StudioError(f"number of images must be 1..64, got {n}")
        if not 1 <= steps <= 200:
            raise StudioError(f"steps must be 1..200, got {steps}")
        if not 0 <= seed < 2**63:
            raise StudioError(f"seed must be 0 .. 2^63-1, got {seed}")
        c = self.resolve_checkpoint(choice, owner)
        gen, lock = self.generator(choice, owner)
        for t in [*identities, *cameras]:
            try:
                gen.table.get(t)
            except KeyError:
                raise StudioError(f"{t!r} is not a token of this checkpoint") from None
        req = GenerationRequest(identities, cameras, n=n, seed=seed, steps=steps, guidance=guidance,
                                negative_prompt=negative_prompt)
        jobs = req.jobs(gen.table)
        source = None
        if init_image is not None:
            source = init_image.convert("RGB").resize((gen.width, gen.height), Image.Resampling.BICUBIC)
        note = f" · from your image, strength {strength:g}" if source is not None else ""
        common = {"steps": steps, "sampler": pngmeta.SAMPLER, "guidance": guidance, "size": f"{gen.width}x{gen.height}",
                  "checkpoint": c.label, "checkpoint_hash": gen.checkpoint_hash, "base": c.base.name,
                  "base_hash": self.base_hash(c.base), "dtype": dtype_name(self.dtype), "version": pngmeta.version(), "request_seed": str(seed),
                  "n": n, "action": action, "identities": list(identities), "cameras": list(cameras),
                  "negative_prompt": negative_prompt, "strength": strength if source is not None else None}
        out = []
        with lock:  # one pipeline, one sampling at a time (its scheduler holds state)
            for i in range(0, len(jobs), 16):
                batch = jobs[i : i + 16]
                imgs = gen.render(batch, steps=steps, guidance=guidance, negative_prompt=negative_prompt,
                                  init_images=None if source is None else [source] * len(batch), strength=strength)
                for j, img in zip(batch, imgs):
                    settings = {**common, "prompt": j.prompt, "seed": str(j.seed), "index": j.index,
                                "identity": j.identity, "camera": j.camera}
                    out.append(GeneratedImage(img, f"{caption_words(gen.table, j.identity, j.camera)} · seed {j.seed}{note}",
                                              settings))
        return out

    def save_images(self, images: list[GeneratedImage], kind: str = "generations",
                    owner: str | None = None) -> tuple[Path, Path, list[Path]]:
        """Write PNGs carrying their settings (`pngmeta`) + captions.json into a fresh job folder
        (the visitor's own in public mode) and zip them; returns (folder, zip, the PNGs in order)."""
        d = self.sandbox.new_job_dir(kind, owner)
        captions, paths = {}, []
        for k, (img, cap, settings) in enumerate(images):
            name = f"{k:03d}.png"
            paths.append(pngmeta.save_png(d / name, img, settings))
            captions[name] = cap
        (d / "captions.json").write_text(json.dumps(captions, indent=2))
        zpath = d.with_suffix(".zip")
        with zipfile.ZipFile(zpath, "w") as z:
            for p in sorted(d.iterdir()):
                z.write(p, arcname=f"{d.name}/{p.name}")
        return d, zpath, paths

    def reuse_settings(self, image_path: str | Path, owner: str | None = None) -> dict:
        """The settings a studio PNG carries, with its checkpoint found here (by picker name, else by
        content hash): what the Generate form takes back."""
        try:
            s = pngmeta.read_settings(image_path)
        except ValueError as e:
            raise StudioError(str(e)) from None
        want = s.get("checkpoint_hash", "")
        choices = self.checkpoints(owner)
        found = next((c for c in choices if c.label == s["checkpoint"]), None)
        if found is not None and want and self.hash_of(found) != want:
            found = None
        if found is None and want:
            found = next((c for c in choices if self.hash_of(c) == want), None)
        if found is None:
            raise StudioError(f"{Path(image_path).name}: its checkpoint {s['checkpoint']!r} (hash {want}) "
                              "is not available in this studio")
        return {**s, "checkpoint": found.label}

    def hash_of(self, c: CheckpointChoice) -> str:
        from dive.checkpoint import checkpoint_hash

        key = f"hash:{c.path}"
        if key not in self._base_hashes:
            self._base_hashes[key] = checkpoint_hash(c.path)
        return self._base_hashes[key]

    # -- attention --------------------------------------------------------------------------------
    def attention(self, choice: str, identity: str, camera: str, *, seed: int, steps: int, guidance: float,
                  layers: str = "all", step_range: str = "all", scale: str = "shared", others: str = "folded",
                  owner: str | None = None):
        """The attention result and the studio's figure (`attention_view`): identity and camera
        tokens first, the other words folded into one map unless `others` is "each"; one shared
        colour scale (`scale="shared"`) or each map to its own maximum ("per token")."""
        from dive.generate.attention import attention_maps
        from dive.studio.attention_view import studio_figure

        gen, lock = self.generator(choice, owner)
        steps_spec = {"all": "all", "first half": "0:0.5", "second half": "0.5:"}.get(step_range, step_range)
        with lock:
            res = attention_maps(gen, identity or None, camera or None, seed=seed, steps=steps, guidance=guidance,
                                 layers=layers, step_range=steps_spec)
        fig = self.sandbox.new_job_dir("attention", owner) / "attention.png"
        studio_figure(res, fig, scale=scale, others=others)
        return res, fig

    # -- export -----------------------------------------------------------------------------------
    def export(self, choice: str, data: str, *, owner: str | None = None, job: Path | None = None, **kw):
        """`dive generate` + `dive export` into a per-job folder (`exportjob.run_export`); returns
        (export dir, zip, summary). A stopped export keeps its folder; `resume_export` finishes it."""
        from dive.studio.exportjob import run_export

        with self.export_slot():
            return run_export(self, choice, data, owner=owner, job=job, **kw)

    def resume_export(self, owner: str | None = None, *, progress=None, should_stop=None):
        """Finish this visitor's latest stopped export with its own settings, in its own folder."""
        from dive.studio.exportjob import pending_export

        job, req = pending_export(self, owner)
        return self.export(req.pop("choice"), req.pop("data"), owner=owner, job=job, progress=progress,
                           should_stop=should_stop, **req)

    # -- training runs ------------------------------------------------------------------------------
    def worlds(self) -> list[str]:
        """SynthVI worlds inside the data folder (relative paths)."""
        root = self.sandbox.root / "worlds"
        return sorted(self.sandbox.relative(p.parent) for p in root.glob("*/synthvi.json")) if root.exists() else []

    def ensure_quick_world(self) -> Path:
        """A small SynthVI world for the quick preset (built once, in seconds)."""
        from dive.data.synthvi.build import SynthConfig, build_world

        out = self.sandbox.root / "worlds" / "quick"
        if not (out / "synthvi.json").exists():
            build_world(SynthConfig(out=out, seed=0, force=True, **QUICK_WORLD), progress=False)
        return out

    def resume_run(self, run_id: int, owner: str | None = None):
        from dive.studio.runs import RunStateError

        rec = self.run_of(run_id, owner)
        if self.public:
            self.check_training_slot(owner)
        try:
            return self.runs.resume(rec.id)
        except (RunStateError, KeyError) as e:
            raise StudioError(str(e).strip("'\"")) from None

    def check_training_slot(self, owner: str | None = None) -> None:
        """Public mode: refuse a training while `max_trainings` are running."""
        if not self.public:
            return
        running = [r for r in self.runs.list() if r.status == "running"]
        if len(running) >= self.max_trainings:
            raise StudioError(f"the studio runs {self.max_trainings} training(s) at a time and one is running; "
                              "try again when it ends")

    def launch_training(self, *, preset: str, data: str | None, base: str | None, steps: int | None,
                        seed: int = 0, rank: int | None = None, lr: float | None = None, owner: str | None = None):
        if preset not in TRAIN_PRESETS:
            raise StudioError(f"unknown preset {preset!r}")
        self.check_training_slot(owner)
        p = dict(TRAIN_PRESETS[preset])
        world = self.resolve(data, owner, must_exist=True) if data else (
            self.ensure_quick_world() if p["world"] == "quick" else None)
        if world is None:
            raise StudioError("choose a dataset folder (a SynthVI world inside the studio's data folder)")
        base_dir = self.resolve(base, owner, must_exist=True) if base else self.default_base
        if not (base_dir / "model_index.json").exists():
            raise StudioError(f"{base}: not a diffusers base model folder")
        out = self.sandbox.new_job_dir("runs", owner)
        args = ["--base", str(base_dir), "--data", str(world), "--out", str(out), "--seed", str(seed),
                "--steps", str(steps or p["steps"]), "--batch-size", str(p["batch_size"]), "--rank", str(rank or p["rank"]),
                "--save-every", str(p["save_every"]), "--preview-every", str(p["preview_every"]), "--threads", "1"]
        if lr:
            args += ["--lr", str(lr)]
        config = {"preset": preset, "data": str(world), "base": str(base_dir), "steps": steps or p["steps"],
                  "seed": seed, "rank": rank or p["rank"], "owner": owner}
        return self.runs.launch("train", args, config, out)
