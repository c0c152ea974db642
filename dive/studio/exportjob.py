"""The studio's batch export job: `dive generate` then `dive export` into one job folder, with
progress and a true ETA, a Stop that keeps what was written, and a Resume that finishes the same
folder (both stages resume: finished images are kept, so the result has the same bytes as an
uninterrupted export)."""

from __future__ import annotations

import json
import time
import zipfile
from collections import Counter
from pathlib import Path

from dive.checkpoint import CheckpointError, TokenTable
from dive.studio.sandbox import StudioError

REQUEST_FILE = "request.json"  # the export's settings, written first: what Resume runs again


class ExportStopped(StudioError):
    """Stop was pressed: the job folder keeps every finished image; Resume finishes it."""


class Eta:
    """Time left from the pace of the work done in this call (resumed work skipped at once does not
    count as pace)."""

    def __init__(self):
        self.t0, self.first = time.monotonic(), None

    def __call__(self, done: int, total: int) -> str:
        now = time.monotonic()
        if self.first is None:
            self.first = (now, done)
            return "ETA: measuring"
        t1, d1 = self.first
        if done <= d1 or now <= t1:
            return "ETA: measuring"
        left = (total - done) * (now - t1) / (done - d1)
        return f"ETA {int(left) // 60}:{int(left) % 60:02d}"


def check_identities(studio, label: str, table: TokenTable, data_dir: Path) -> None:
    """Refuse, before any work, a checkpoint whose external identities are not the dataset's:
    each external identity token must name an identity of the dataset with as many training
    images as the checkpoint was trained on."""
    from dive.export.sources import load_inputs

    where = studio.sandbox.relative(data_dir)
    try:
        inp = load_inputs(data_dir)
    except (ValueError, OSError) as e:
        raise StudioError(f"{where}: not an exportable dataset ({studio.sandbox.scrub(str(e))})") from None
    have = Counter((r.dataset, r.pid) for r in inp.external_records if r.split == "train" and r.pid > 0)

    def external(t) -> bool:
        try:
            return table.is_external(t.dataset)
        except CheckpointError:  # an older table: anything but the VI set's own ids
            return t.dataset != inp.vi_dataset

    ext = [t for t in table.identities if external(t)]
    bad = [t for t in ext if have.get((t.dataset, t.pid), 0) != t.images]
    if bad:
        t = bad[0]
        raise StudioError(
            f"{label} was trained on other identities than {where}: {len(bad)} of its {len(ext)} external "
            f"identity tokens do not match (e.g. {t.dataset} #{t.pid:04d}: {t.images} training images in the "
            f"checkpoint, {have.get((t.dataset, t.pid), 0)} in {where}); choose the dataset it was trained on")


def run_export(studio, choice: str, data: str, *, which: str, min_images: int, top_k: int, ids: list[str],
               cameras: list[str], n: int, seed: int, steps: int, guidance: float, owner: str | None = None,
               job: Path | None = None, progress=None, should_stop=None):
    """Generate + export into `job` (a fresh folder when None); returns (export dir, zip, summary).
    Raises ExportStopped when `should_stop` turns true: the folder is kept for `pending_export`."""
    from dive.export import ExportConfig, export_dataset
    from dive.generate.run import GenerateConfig, generate

    if progress:
        progress(0, 1, "checking the checkpoint's identities against the dataset")
    if not data:
        raise StudioError("choose a dataset folder (a SynthVI world inside the studio's data folder)")
    c = studio.resolve_checkpoint(choice, owner)
    data_dir = studio.resolve(data, owner, must_exist=True)
    gen, lock = studio.generator(choice, owner)
    check_identities(studio, c.label, gen.table, data_dir)
    request = {"choice": c.label, "data": data, "which": which, "min_images": min_images, "top_k": top_k,
               "ids": list(ids), "cameras": list(cameras), "n": n, "seed": seed, "steps": steps, "guidance": guidance}
    if job is None:
        job = studio.sandbox.new_job_dir("exports", owner)
    (job / REQUEST_FILE).write_text(json.dumps(request, indent=1))
    gcfg = GenerateConfig(base=c.base, checkpoint=c.path, out=job / "generated", identities=which,
                          min_images=min_images, top_k=top_k, ids=tuple(ids), cameras=",".join(cameras) or "infrared",
                          n=n, seed=seed, steps=steps, guidance=guidance)
    where = studio.sandbox.relative(job)
    eta = Eta()

    def on_batch(done, total, rows):
        if progress:
            progress(done, total, f"step 1 of 2: generating images {done}/{total} · {eta(done, total)}")

    with lock:
        generate(gcfg, generator=gen, progress=False, on_batch=on_batch, should_stop=should_stop)
    if should_stop is not None and should_stop():
        raise ExportStopped(f"stopped during generation; the finished images are kept in {where}: "
                            "press Resume export to finish it")
    eta2 = Eta()
    ecfg = ExportConfig(data=data_dir, synthetic=[job / "generated"], out=job / "export")
    summary = export_dataset(ecfg, progress=False, should_stop=should_stop,
                             on_progress=(lambda d, t: progress(d, t, f"step 2 of 2: writing the dataset {d}/{t} · "
                                                                      f"{eta2(d, t)}")) if progress else None)
    if not summary.get("complete", True):
        raise ExportStopped(f"stopped while writing the dataset ({summary.get('done')} of {summary.get('total')} "
                            f"files); they are kept in {where}: press Resume export to finish it")
    zpath = job / "export.zip"
    with zipfile.ZipFile(zpath, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for p in sorted((job / "export").rglob("*")):
            if p.is_file():
                z.write(p, arcname=str(p.relative_to(job)))
    return job / "export", zpath, summary


def pending_export(studio, owner: str | None = None) -> tuple[Path, dict]:
    """This visitor's newest export that was stopped before its dataset was complete."""
    root = studio.sandbox.owner_root(owner) / "exports"
    jobs = sorted(root.glob(f"*/{REQUEST_FILE}"), reverse=True) if root.is_dir() else []
    for req in jobs:
        if not (req.parent / "export.zip").exists():
            try:
                return req.parent, json.loads(req.read_text())
            except ValueError:
                continue
    raise StudioError("no stopped export to resume")
