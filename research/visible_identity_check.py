"""Does the generator draw an identity at all? Grayscale copies of its *visible* renders, scored
like the grayscale baseline (`dive metrics`: identity Rank-1 against the ids' real visible images).

Why: generated infrared can miss identity for two reasons, the drawing (the base cannot draw this
person) or the modality transfer (it draws them in visible but not in infrared). Grayscale copies of
generated visible images take the same road as `dive baseline grayscale` takes from real ones, so
the two rows differ only in who drew the image.

  python research/visible_identity_check.py GENERATED_VISIBLE_DIR OUT_DIR
  (GENERATED_VISIBLE_DIR: `dive generate ... --cameras <a visible camera token>`; OUT_DIR gets
  images/ + manifest.jsonl that `dive metrics --synthetic OUT_DIR` reads)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image

from dive.baselines.grayscale import to_grayscale
from dive.utils.io import write_text


def main(src: str, out: str) -> None:
    src_dir, out_dir = Path(src), Path(out)
    rows = [json.loads(line) for line in (src_dir / "manifest.jsonl").read_text().splitlines() if line.strip()]
    visible = [r for r in rows if r["modality"] == "visible"]
    if not visible:
        raise SystemExit(f"{src_dir / 'manifest.jsonl'}: no visible rows; generate with --cameras <a visible camera token>")
    lines = []
    for r in visible:
        target = out_dir / r["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(src_dir / r["path"]) as im:
            to_grayscale(im.convert("RGB")).save(target)
        lines.append(json.dumps(dict(r, modality="infrared", source_modality="visible", source_path=str(src_dir / r["path"]))))
    write_text(out_dir / "manifest.jsonl", "\n".join(lines) + "\n")
    print(f"{len(lines)} grayscale copies of generated visible images -> {out_dir}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
