"""How much does the text steer the image? Mean absolute pixel difference (grey levels, 0-255)
between images of the same seed with different text, against images of the same text with
different seeds. Two probes:
  1. the base: two colour captions ("red shirt, blue pants" vs "green shirt, yellow pants");
  2. a DiVE checkpoint: five external identity tokens with one IR camera token.
If text-differences are far below seed-differences, the model is nearly unconditional.

    python research/conditioning_check.py [BASE] [CHECKPOINT]   # ~1 minute
"""
import sys

import numpy as np
import torch

from dive import defaults
from dive.generate.pipeline import ImageJob, load_generator
from dive.generate.run import select_cameras

torch.set_num_threads(2)
base = sys.argv[1] if len(sys.argv) > 1 else str(defaults.BASE)
ckpt = sys.argv[2] if len(sys.argv) > 2 else str(defaults.DEMO)


def diffs(gen, prompts, guidance):
    same_seed = gen.render([ImageJob("", "", 0, 123, p) for p in prompts], steps=25, guidance=guidance).astype(float)
    same_text = gen.render([ImageJob("", "", 0, s, prompts[0]) for s in (1, 2, 3)], steps=25, guidance=guidance).astype(float)
    text = np.mean([np.abs(same_seed[0] - x).mean() for x in same_seed[1:]])
    seed = np.mean([np.abs(same_text[0] - x).mean() for x in same_text[1:]])
    return text, seed


caption = "a photo of a average medium person, seen from the front, wearing a {} shirt and {} pants and black shoes"
gen = load_generator(base)
for g in (1.0, 3.0, 6.0):
    t, s = diffs(gen, [caption.format("red", "blue"), caption.format("green", "yellow")], g)
    print(f"base, colour captions, guidance {g}: text changes pixels by {t:.2f}, seed by {s:.2f}")
gen = load_generator(base, ckpt)
cam = select_cameras(gen.table, "infrared")[0]
ids = [t.token for t in gen.table.identities if t.dataset == gen.table.identities[-1].dataset][:5]
for g in (1.0, 3.0, 6.0):
    t, s = diffs(gen, [gen.table.prompt(i, cam) for i in ids], g)
    print(f"DiVE, 5 identities x camera {cam}, guidance {g}: identity changes pixels by {t:.2f}, seed by {s:.2f}")
