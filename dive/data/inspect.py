"""`dive data inspect`: what is in a dataset, what it looks like, and how wide its modality gap is.

The modality gap is measured on raw pixels (no learning): nearest-neighbour retrieval over the test
ids with images downsampled to 32x16 and standardised per image, cosine distance. Three numbers:
visible->visible (other cameras), infrared->visible, infrared->grayscale(visible). A world with a
real gap has infrared->visible far below visible->visible; the grayscale row shows how much a naive
"infrared = grey copy" assumption recovers. Later stages are judged against this table.

Every image is opened and fully decoded first (`--sample N`: N of them, drawn with `--seed`, for a
quick look); broken files are listed with a count, and the command exits 2 when there is any.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from dive.data.records import Modality, Record, filter_records
from dive.data.registry import Dataset, detect_format, load_dataset
from dive.utils.errors import InputError
from dive.utils.io import load_rgb, save_image, write_json
from dive.utils.ranking import cosine_distance, evaluate_ranking

FEATURE_SIZE = (16, 32)  # (W, H) of the raw-pixel descriptor


@dataclass
class InspectConfig:
    root: Path = field(metadata={"help": "a `dive data synth` output or one dataset in a supported layout"})
    format: str | None = field(default=None, metadata={"help": "layout name (auto-detected when omitted)"})
    out: Path | None = field(default=None, metadata={"help": "folder for the contact sheets and report.json (default: runs/inspect/<ROOT name>; the dataset itself is never written)"})
    sheet_ids: int = field(default=10, metadata={"help": "identities (rows) on each contact sheet"})
    seed: int = field(default=0, metadata={"help": "which identities the contact sheet shows (and which images --sample opens)"})
    sample: int | None = field(default=None, metadata={"help": "open only N images, drawn at random with --seed, for a quick look (default: open every image)"})

    def __post_init__(self) -> None:
        if self.sample is not None and self.sample < 1:
            raise ValueError(f"--sample must be at least 1; got {self.sample}")


def _read(path: str, broken: dict[str, str]) -> Image.Image | None:
    """The image as RGB, or None (and its error noted in `broken`) when it cannot be decoded."""
    if path in broken:
        return None
    try:
        return load_rgb(path)
    except InputError as err:
        broken[path] = str(err)
        return None


def check_images(paths: list[str], *, progress: bool = True, desc: str = "opening images") -> dict[str, str]:
    """Open and fully decode every image; {path: one-line error} of those that fail."""
    broken: dict[str, str] = {}
    for p in tqdm(paths, desc=desc, unit="img", disable=not progress, leave=False):
        _read(p, broken)
    return broken


def raw_pixel_features(paths: list[str], *, gray: bool = False, broken: dict[str, str] | None = None) -> np.ndarray:
    """Standardised 32x16 pixels per image; a broken image (noted in `broken`) gets zeros."""
    broken = {} if broken is None else broken
    feats = np.zeros((len(paths), FEATURE_SIZE[0] * FEATURE_SIZE[1] * 3), dtype=np.float32)
    for i, p in enumerate(paths):
        im = _read(p, broken)
        if im is None:
            continue
        im = im.convert("L").convert("RGB") if gray else im
        arr = np.asarray(im.resize(FEATURE_SIZE, Image.Resampling.BILINEAR), dtype=np.float32).ravel()
        feats[i] = (arr - arr.mean()) / (arr.std() + 1e-6)
    return feats


def _retrieval(query: list[Record], gallery: list[Record], qf: np.ndarray, gf: np.ndarray, exclude_same_cam: bool) -> dict:
    qp = np.array([r.pid for r in query])
    qc = np.array([r.camid for r in query])
    gp = np.array([r.pid for r in gallery])
    gc = np.array([r.camid for r in gallery])
    mask = (qc[:, None] == gc[None, :]) if exclude_same_cam else None
    res = evaluate_ranking(cosine_distance(qf, gf), qp, qc, gp, gc, exclude=mask, max_rank=10)
    return {
        "rank1": round(100 * float(res["cmc"][0]), 2),
        "rank10": round(100 * float(res["cmc"][9]), 2),
        "mAP": round(100 * float(res["mAP"]), 2),
        "queries": int(res["num_valid_queries"]),
        "gallery": len(gallery),
    }


def modality_gap(records: list[Record], broken: dict[str, str] | None = None) -> dict | None:
    """Raw-pixel NN retrieval over the test ids (or all ids when the dataset has no test split)."""
    test = filter_records(records, split="test") or records
    vis = filter_records(test, modality=Modality.VISIBLE)
    ir = filter_records(test, modality=Modality.INFRARED)
    if not vis or not ir:
        return None
    vf = raw_pixel_features([r.path for r in vis], broken=broken)
    vgf = raw_pixel_features([r.path for r in vis], gray=True, broken=broken)
    irf = raw_pixel_features([r.path for r in ir], broken=broken)
    ids = len({r.pid for r in test})
    return {
        "ids": ids,
        "chance_rank1": round(100.0 / ids, 2),
        "visible->visible (other cameras)": _retrieval(vis, vis, vf, vf, exclude_same_cam=True),
        "infrared->visible": _retrieval(ir, vis, irf, vf, exclude_same_cam=False),
        "infrared->grayscale(visible)": _retrieval(ir, vis, irf, vgf, exclude_same_cam=False),
    }


def histogram(counts: list[int], bins: tuple[int, ...] = (1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64)) -> list[tuple[str, int]]:
    edges = list(bins) + [10**9]
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        n = sum(lo <= c < hi for c in counts)
        label = f"{lo}-{hi - 1}" if hi < 10**9 else f"{lo}+"
        out.append((label, n))
    return out


def contact_sheet(records: list[Record], n_ids: int, seed: int, broken: dict[str, str] | None = None) -> Image.Image:
    """Identities (rows) x cameras (columns), the first image of each; grey where absent, red
    where broken."""
    broken = {} if broken is None else broken
    cams = sorted({(r.modality is Modality.INFRARED, r.camid) for r in records})
    by_key: dict[tuple[int, int], Record] = {}
    for r in sorted(records, key=lambda r: r.path):
        by_key.setdefault((r.pid, r.camid), r)
    pids = sorted({r.pid for r in records if r.pid > 0})
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(pids, size=min(n_ids, len(pids)), replace=False).tolist())
    first = next((im for r in by_key.values() if (im := _read(r.path, broken)) is not None), None)
    cw, ch = first.size if first is not None else (64, 128)
    cw, ch = min(cw, 96), min(ch, 192)
    label_h, label_w = 14, 40
    sheet = Image.new("RGB", (label_w + cw * len(cams), label_h + ch * len(pick)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for j, (is_ir, cam) in enumerate(cams):
        draw.text((label_w + j * cw + 2, 1), f"{'IR' if is_ir else 'V'}{cam}", fill=(0, 0, 0))
    for i, pid in enumerate(pick):
        draw.text((2, label_h + i * ch + ch // 2 - 5), str(pid), fill=(0, 0, 0))
        for j, (_, cam) in enumerate(cams):
            rec = by_key.get((pid, cam))
            box = (label_w + j * cw, label_h + i * ch)
            if rec is None:
                draw.rectangle([box, (box[0] + cw - 1, box[1] + ch - 1)], fill=(200, 200, 200))
                continue
            im = _read(rec.path, broken)
            if im is None:
                draw.rectangle([box, (box[0] + cw - 1, box[1] + ch - 1)], fill=(220, 40, 40))
                continue
            sheet.paste(im.resize((cw, ch)), box)
    return sheet


def describe(name: str, records: list[Record]) -> dict:
    per_id = Counter(r.pid for r in records)
    per_cam = Counter((r.modality.value, r.camid) for r in records)
    return {
        "name": name,
        "images": len(records),
        "ids": len(per_id),
        "splits": {s: {"ids": len({r.pid for r in recs}), "images": len(recs)}
                   for s in sorted({r.split for r in records}) for recs in [filter_records(records, split=s)]},
        "per_camera": [{"modality": m, "camera": c, "images": n, "ids": len({r.pid for r in records if r.camid == c and r.modality.value == m})}
                       for (m, c), n in sorted(per_cam.items())],
        "images_per_id": {
            "min": min(per_id.values()), "median": float(np.median(list(per_id.values()))), "max": max(per_id.values()),
            "histogram": histogram(list(per_id.values())),
            "more_than_11": sum(v > 11 for v in per_id.values()),
        },
    }


def _parts(root: Path, fmt: str | None) -> list[tuple[str, Dataset]]:
    fmt = fmt or detect_format(root)
    ds = load_dataset(fmt, root)
    if fmt == "synthvi":
        return [("vi (SYSU-MM01 layout)", ds.vi), ("external (Market-1501 layout)", ds.external)]  # type: ignore[attr-defined]
    return [(fmt, ds)]


def _to_open(records: list[Record], sample: int | None, seed: int) -> list[str]:
    paths = sorted({r.path for r in records})
    if sample is None or sample >= len(paths):
        return paths
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1501]))
    return sorted(rng.choice(paths, size=sample, replace=False).tolist())


def inspect(cfg: InspectConfig, *, progress: bool = True) -> dict:
    """Summary, contact sheet and modality gap of each part of a dataset, after opening its images;
    `report["broken"]` lists every image that failed to decode (with --sample: among those opened)."""
    root = Path(cfg.root)
    out = Path(cfg.out) if cfg.out else Path("runs") / "inspect" / root.resolve().name
    parts = _parts(root, cfg.format)
    paths = sorted({p for _, ds in parts for p in _to_open(ds.records, cfg.sample, cfg.seed)})
    broken = check_images(paths, progress=progress)
    report = {"root": str(root), "datasets": [], "images_opened": len(paths),
              "images": len({r.path for _, ds in parts for r in ds.records}), "sample": cfg.sample}
    for i, (name, ds) in enumerate(parts):
        part = describe(name, ds.records)
        sheet_path = out / f"contact_sheet_{i}_{ds.name}.png"
        save_image(sheet_path, contact_sheet(ds.records, cfg.sheet_ids, cfg.seed, broken))
        part["contact_sheet"] = str(sheet_path)
        part["modality_gap"] = modality_gap(ds.records, broken)
        report["datasets"].append(part)
    report["broken"] = [{"path": p, "error": broken[p]} for p in sorted(broken)]
    write_json(out / "report.json", report)
    report["report"] = str(out / "report.json")
    return report


def format_report(report: dict) -> str:
    lines = [f"# {report['root']}"]
    for part in report["datasets"]:
        lines.append(f"\n## {part['name']}: {part['ids']} ids, {part['images']} images")
        for s, v in part["splits"].items():
            lines.append(f"  split {s:<8} {v['ids']:>5} ids {v['images']:>7} images")
        lines.append("  modality  camera   ids  images")
        for row in part["per_camera"]:
            lines.append(f"  {row['modality']:<9} cam{row['camera']:<5} {row['ids']:>4} {row['images']:>7}")
        ipi = part["images_per_id"]
        lines.append(f"  images per id: min {ipi['min']}, median {ipi['median']:g}, max {ipi['max']}; "
                     f"ids with more than 11 images: {ipi['more_than_11']}")
        peak = max(n for _, n in ipi["histogram"]) or 1
        for label, n in ipi["histogram"]:
            if n:
                lines.append(f"    {label:>6} | {'#' * max(1, round(30 * n / peak)):<30} {n}")
        lines.append(f"  contact sheet: {part['contact_sheet']}")
        gap = part["modality_gap"]
        if gap:
            lines.append(f"  modality gap on raw pixels ({gap['ids']} test ids, chance Rank-1 {gap['chance_rank1']}%):")
            lines.append(f"    {'retrieval':<34} {'Rank-1':>7} {'Rank-10':>8} {'mAP':>7} {'queries':>8}")
            for k, v in gap.items():
                if isinstance(v, dict):
                    lines.append(f"    {k:<34} {v['rank1']:>7.2f} {v['rank10']:>8.2f} {v['mAP']:>7.2f} {v['queries']:>8}")
    opened, total = report.get("images_opened", 0), report.get("images", 0)
    how = f"a sample of {opened} of {total}" if opened < total else f"all {total}"
    broken = report.get("broken", [])
    lines.append(f"\nimages opened: {how}; broken: {len(broken)}")
    for b in broken[:50]:
        lines.append(f"  {b['error']}")
    if len(broken) > 50:
        lines.append(f"  ... and {len(broken) - 50} more (all in report.json)")
    lines.append(f"\nreport: {report.get('report', '')}")
    return "\n".join(lines)
