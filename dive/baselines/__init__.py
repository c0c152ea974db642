"""Comparison baselines for DiVE: other ways to give the external (visible-only) identities
"infrared" images, written as synthetic-source folders that `dive export --synthetic` reads.

- `dive baseline grayscale` (`dive.baselines.grayscale`): luminance copies of each identity's
  visible images (3 channels, R = G = B).
- `dive baseline cyclegan train` / `apply` (`dive.baselines.cyclegan`): a small unpaired
  visible->infrared CycleGAN trained on the VI set's training images, then applied to the
  external identities' visible images.
- `dive baseline oracle` (`dive.baselines.oracle`, SynthVI worlds only): the external identities'
  true infrared images from the world's own renderer: not a method but the ceiling of the identity
  metrics (what a perfect generator would score).

All select the same identities (external training ids with at least `--min-images` images, as
`dive generate` selects identity tokens) and the same source image for every output
(`dive.generate.sources.assign_sources`), so they differ only in the translation. Output folder::

    images/<dataset>-<pid>/cam<c>/<index>.png   one image per (identity, infrared camera, index)
    manifest.jsonl                               one row per image (written last: marks completion)
    generate.json                                the settings (what `dive export` records per source)

Usage::

    dive baseline grayscale --data data/synthvi --out runs/baselines/gray            # --n 18 --min-images 12
    dive baseline cyclegan train --data data/synthvi --out runs/baselines/cyclegan   # ~10 min, resumable
    dive baseline cyclegan apply --generator runs/baselines/cyclegan --data data/synthvi --out runs/baselines/cg
    dive export --data data/synthvi --synthetic runs/baselines/gray --out data/synthvi_gray

With a real VI set, `--data /data/SYSU-MM01 --external /data/Market-1501` (grayscale, apply);
`cyclegan train` needs only the VI set. Training and apply are two commands so one trained
translator serves any selection (`--min-images`, `--top-k`, `--n`, `--cameras`, `--seed`).
"""

from dive.generate.sources import BaselineInputs, assign_sources, load_baseline_inputs, select_external_ids

__all__ = ["BaselineInputs", "assign_sources", "load_baseline_inputs", "select_external_ids"]
