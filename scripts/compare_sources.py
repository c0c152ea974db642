"""Side by side: the source visible image of each output, then the same output path in several
baseline-style folders (`dive baseline grayscale|oracle|cyclegan apply`, `dive translate`), which
choose the same source per path for the same seed.

    python scripts/compare_sources.py OUT.png DATA_ROOT FOLDER [FOLDER ...] [--rows 12] [--every 4]

DATA_ROOT is the world (or external dataset) root the first folder's manifest `source_path` is
relative to: `data/synthvi` (its `external/` is used) or a Market-1501 folder.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image, ImageDraw


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("data", type=Path)
    p.add_argument("folders", type=Path, nargs="+")
    p.add_argument("--rows", type=int, default=12)
    p.add_argument("--every", type=int, default=4, help="take every k-th manifest row (spreads over ids)")
    args = p.parse_args()
    root = args.data / "external" if (args.data / "external").is_dir() else args.data
    rows = [json.loads(x) for x in (args.folders[0] / "manifest.jsonl").read_text().splitlines() if x.strip()]
    rows = rows[:: args.every][: args.rows]
    with Image.open(args.folders[0] / rows[0]["path"]) as im:
        w, h = im.size
    head = 14
    sheet = Image.new("RGB", (w * (len(args.folders) + 1), head + h * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, name in enumerate(["source", *[f.name for f in args.folders]]):
        draw.text((k * w + 2, 1), name.replace("translate-", "img2img ")[:11], fill="black")
    for i, r in enumerate(rows):
        with Image.open(root / r["source_path"]) as im:
            sheet.paste(im.convert("RGB").resize((w, h), Image.Resampling.BICUBIC), (0, head + i * h))
        for k, folder in enumerate(args.folders, start=1):
            path = folder / r["path"]
            if not path.exists():
                raise FileNotFoundError(f"{path}: missing; the folders must share output paths (same selection and seed)")
            with Image.open(path) as im:
                sheet.paste(im.convert("RGB"), (k * w, head + i * h))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(f"written: {args.out} ({len(rows)} rows x {len(args.folders) + 1} columns)")


if __name__ == "__main__":
    main()
