"""Stack images (e.g. two base models' fixed-seed preview grids) into one labelled column, so runs
that share prompts and seeds can be compared at a glance.

    python scripts/stack_images.py OUT.png "LABEL=IMAGE" ["LABEL=IMAGE" ...]
"""

from __future__ import annotations

import sys

from PIL import Image, ImageDraw

HEAD = 14


def main(out: str, items: list[str]) -> None:
    pairs = []
    for item in items:
        label, sep, path = item.partition("=")
        if not sep:
            sys.exit(f"expected LABEL=IMAGE, got {item!r}")
        pairs.append((label, Image.open(path).convert("RGB")))
    width = max(im.width for _, im in pairs)
    sheet = Image.new("RGB", (width, sum(HEAD + im.height for _, im in pairs)), "white")
    draw = ImageDraw.Draw(sheet)
    y = 0
    for label, im in pairs:
        draw.text((2, y + 1), label, fill="black")
        sheet.paste(im, (0, y + HEAD))
        y += HEAD + im.height
    sheet.save(out)
    print(f"wrote {out} ({sheet.width}x{sheet.height})")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
