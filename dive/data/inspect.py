"""`dive data inspect`: what is in a dataset, what it looks like, and how wide its modality gap is.

The modality gap is measured on raw pixels (no learning): nearest-neighbour retrieval over the test
ids with images downsampled to 32x16 and standardised per image, cosine distance. Three numbers:
visible->visible (other cameras), infrared->visible, infrared->grayscale(visible). A world with a
real gap has infrared->visible far below visible->visible; the grayscale row shows how much a naive
"infrared = grey copy" assumption recovers. Later stages are judged against this table.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from dive.data.records import Modality, Record, filter_records
from dive.data.registry import Dataset, detect_format, load_dataset
from dive.utils.io import save_image, write_json
from dive.utils.ranking import cosine_distance, evaluate_ranking

FEATURE_SIZE = (16, 32)  # (W, H) of the raw-pixel descriptor


@dataclass
class InspectConfig:
    root: Path = field(metadata={"help": "a `dive data synth` output or one dataset in a supported layout"})
    format: str | None = field(default=None, metadata={"help": "layout name (auto-detected when omitted)"})
    out: Path | None = field(default=None, metadata={"help": "folder for the contact sheets and report.json (default: runs/inspect/<ROOT name>; the dataset itself is never written)"})
    sheet_ids: int = field(default=10, metadata={"help": "identities (rows) on each contact sheet"})
    seed: int = field(default=0, metadata={"help": "which identities the contact sheet shows"})


def raw_pixel_features(paths: list[str], *, gray: bool = False) -> np.ndarray:
    feats = np.empty((len(paths), FEATURE_SIZE[0] * FEATURE_SIZE[1] * 3), dtype=np.float32)
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            im = im.convert("L").convert("RGB") if gray else im.convert("RGB")
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


def modality_gap(records: list[Record]) -> dict | None:
    """Raw-pixel NN retrieval over the test ids (or all ids when the dataset has no test split)."""
    test = filter_records(records, split="test") or records
    vis = filter_records(test, modality=Modality.VISIBLE)
    ir = filter_records(test, modality=Modality.INFRARED)
    if not vis or not ir:
        return None
    vf = raw_pixel_features([r.path for r in vis])
    vgf = raw_pixel_features([r.path for r in vis], gray=True)
    irf = raw_pixel_features([r.path for r in ir])
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


def contact_sheet(records: list[Record], n_ids: int, seed: int) -> Image.Image:
    """Identities (rows) x cameras (columns), the first image of each; blank where absent."""
    cams = sorted({(r.modality is Modality.INFRARED, r.camid) for r in records})
    by_key: dict[tuple[int, int], Record] = {}
    for r in sorted(records, key=lambda r: r.path):
        by_key.setdefault((r.pid, r.camid), r)
    pids = sorted({r.pid for r in records if r.pid > 0})
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(pids, size=min(n_ids, len(pids)), replace=False).tolist())
    first = next(iter(by_key.values()))
    with Image.open(first.path) as im:
        cw, ch = im.size
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
            with Image.open(rec.path) as im:
                sheet.paste(im.convert("RGB").resize((cw, ch)), box)
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


def inspect(cfg: InspectConfig) -> dict:
    root = Path(cfg.root)
    out = Path(cfg.out) if cfg.out else Path("runs") / "inspect" / root.resolve().name
    report = {"root": str(root), "datasets": []}
    for i, (name, ds) in enumerate(_parts(root, cfg.format)):
        part = describe(name, ds.records)
        sheet_path = out / f"contact_sheet_{i}_{ds.name}.png"
        save_image(sheet_path, contact_sheet(ds.records, cfg.sheet_ids, cfg.seed))
        part["contact_sheet"] = str(sheet_path)
        part["modality_gap"] = modality_gap(ds.records)
        report["datasets"].append(part)
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
    lines.append(f"\nreport: {report.get('report', '')}")
    return "\n".join(lines)
