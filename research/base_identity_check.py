"""How well does a *base* model draw a described person? The ceiling of caption-driven generation.

For every external id with >= 12 images, the base draws N images from that id's full true caption
(`Identity.caption()`: build, garments and their patterns, shoes, hair, accessories); grayscale copies
of the drawings are scored like `dive baseline grayscale` (identity Rank-1 / AUC against the ids'
real visible images, `dive metrics` with the VI-only AGW model). Real images' grayscale copies score
Rank-1 1.66 there; a base that cannot beat chance (0.39) from a full description cannot give DiVE's
tokens an identity to draw either.

    python research/base_identity_check.py BASE OUT [N] [GUIDANCE]
    (defaults N=4, GUIDANCE=3; writes OUT/visible/ (the drawings), OUT/gray/ (+ manifest.jsonl),
    OUT/metrics/ and OUT/grid.png: real images | drawings, 8 ids)
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from dive.baselines.grayscale import to_grayscale
from dive.data.synthvi.world import Identity
from dive.generate.pipeline import load_generator
from dive.metrics.quality import MetricsConfig, quality_report, summary_lines
from dive.train.data import load_sources
from dive.utils.io import write_text

DATA, REID = Path("data/synthvi"), Path("runs/reid-baselines/agw-seed0")


def main(base: str, out: str, n: int = 4, guidance: float = 3.0, batch: int = 32) -> None:
    out_dir = Path(out)
    _, ext = load_sources(DATA)
    counts = Counter(r.pid for r in ext)
    pids = sorted(p for p, c in counts.items() if c >= 12)
    people = json.loads((DATA / "identities.json").read_text())["external"]
    jobs = [(pid, i, Identity.from_dict(people[str(pid)]).caption()) for pid in pids for i in range(n)]
    gen = load_generator(base)
    rows = []
    for b in tqdm(range(0, len(jobs), batch), desc="drawing", unit="batch"):
        chunk = jobs[b:b + batch]
        seeds = [torch.Generator().manual_seed(1000 * pid + i) for pid, i, _ in chunk]
        with torch.no_grad():
            images = gen.pipe([c for _, _, c in chunk], height=gen.height, width=gen.width, num_inference_steps=25,
                              guidance_scale=guidance, generator=seeds).images
        for (pid, i, caption), im in zip(chunk, images):
            rel = f"images/{pid:04d}/{i:04d}.png"
            for folder, picture in (("visible", im), ("gray", to_grayscale(im))):
                (out_dir / folder / rel).parent.mkdir(parents=True, exist_ok=True)
                picture.save(out_dir / folder / rel)
            rows.append(json.dumps({"path": rel, "dataset": "synthvi_ext", "pid": pid, "camid": 3, "modality": "infrared",
                                    "prompt": caption, "seed": 1000 * pid + i, "guidance": guidance, "base": str(base),
                                    "source": "grayscale copy of the base's drawing"}))
    write_text(out_dir / "gray" / "manifest.jsonl", "\n".join(rows) + "\n")
    grid = Image.new("RGB", (64 * 8, 128 * 8), "white")
    for r, pid in enumerate(pids[:8]):
        reals = sorted((DATA / "external" / "bounding_box_train").glob(f"{pid:04d}_*"))[:4]
        for c, p in enumerate(reals):
            grid.paste(Image.open(p).convert("RGB").resize((64, 128)), (64 * c, 128 * r))
        for c in range(min(n, 4)):
            grid.paste(Image.open(out_dir / "visible" / f"images/{pid:04d}/{c:04d}.png").convert("RGB"), (64 * (4 + c), 128 * r))
    grid.save(out_dir / "grid.png")
    report = quality_report(MetricsConfig(synthetic=(out_dir / "gray",), real_ir=DATA, reid_run=REID, out=out_dir / "metrics",
                                          tsne=False))
    print("\n".join(summary_lines(report)))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2], *(int(sys.argv[3]),) if len(sys.argv) > 3 else (),
         **({"guidance": float(sys.argv[4])} if len(sys.argv) > 4 else {}))
