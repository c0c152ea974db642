"""Side by side: a few external ids' real visible images, then the first images of each synthetic
folder (same ids), one row per id, one block of columns per folder. For looking at what a
generator draws next to the truth (`dive baseline oracle`) and its VAE round trip. Rows are matched
by identity, not by output path: a text-to-image folder (`dive generate`) names its images by token
and has no source image, so `scripts/compare_sources.py` (same path, same source) cannot pair it.

    python scripts/compare_ids.py OUT.png DIR [DIR ...]      (env IDS=8 PER=3 VISIBLE=2)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from PIL import Image, ImageDraw

from dive.data.registry import load_dataset

H, W = 128, 64


def main(out: str, folders: list[str]) -> None:
    n_ids, per, n_vis = (int(os.environ.get(k, d)) for k, d in (("IDS", 8), ("PER", 3), ("VISIBLE", 2)))
    manifests = [[json.loads(x) for x in (Path(f) / "manifest.jsonl").read_text().splitlines() if x.strip()]
                 for f in folders]
    pids = sorted({r["pid"] for r in manifests[0]})[:n_ids]
    ext = load_dataset("synthvi", Path(os.environ.get("DATA", "data/synthvi")))
    visible = {}
    for r in sorted(ext.records, key=lambda r: str(r.path)):
        if r.dataset == "synthvi_ext" and r.pid in pids:
            visible.setdefault(r.pid, []).append(r.path)
    cols = n_vis + per * len(folders)
    head = 14
    sheet = Image.new("RGB", (cols * W, head + len(pids) * H), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((2, 1), "visible", fill="black")
    for k, f in enumerate(folders):
        draw.text(((n_vis + k * per) * W + 2, 1), Path(f).name[: per * 10], fill="black")
    for i, pid in enumerate(pids):
        ims = [Image.open(p).convert("RGB") for p in visible.get(pid, [])[:n_vis]]
        ims += [None] * (n_vis - len(ims))
        for f, rows in zip(folders, manifests):
            mine = [r for r in rows if r["pid"] == pid][:per]
            ims += [Image.open(Path(f) / r["path"]).convert("RGB") for r in mine] + [None] * (per - len(mine))
        for j, im in enumerate(ims):
            if im is not None:
                sheet.paste(im.resize((W, H)), (j * W, head + i * H))
    sheet.save(out)
    print(f"{out}: {len(pids)} ids x ({n_vis} visible + {per} per folder x {len(folders)} folders)")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
