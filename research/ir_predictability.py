"""Is an identity's infrared look predictable, and from what? Ridge regressions fitted on some VI ids
and scored on held-out ids (5 folds over ids), each predicting an id's mean infrared latent (the
base VAE's posterior mean, averaged over the id's infrared training images) from:

  visible-latent  the id's mean visible latent: how far a visible -> infrared mapper could get
                  at all at this latent size (the world's NIR values are per dye and material)
  token           the id's learned identity-token row of a DiVE checkpoint: what a generator that
                  reads only the token could know about the infrared look
  token->visible  (sanity) the same token predicting the id's mean *visible* latent
  attributes      the world's true attributes of the id (`identities.json`, one-hot per field:
                  colours, patterns, materials, garments, accessories, body): what a generator that
                  knew the person exactly could know; "seen" drops the materials (invisible in
                  visible light but part of each dye's NIR value)

R2 is 1 - SSE / SSE of predicting the training ids' mean (0: no better than one figure for everyone).

    python research/ir_predictability.py CHECKPOINT [BASE]
"""
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np
import torch
from safetensors.torch import load_file

from dive import defaults
from dive.checkpoint import EMBEDS_FILE, TOKENS_FILE, TokenTable
from dive.data.records import Modality
from dive.data.registry import load_dataset
from dive.utils.diffusion import encode_latents
from dive.utils.io import load_rgb_tensor

ckpt = Path(sys.argv[1])
base = Path(sys.argv[2]) if len(sys.argv) > 2 else defaults.BASE
torch.manual_seed(0)

from diffusers import AutoencoderKL  # noqa: E402

vae = AutoencoderKL.from_pretrained(base / "vae").eval()
table = TokenTable.load(ckpt / TOKENS_FILE)
emb = load_file(str(ckpt / EMBEDS_FILE))
vi_tokens = {t.pid for t in table.identities if t.dataset == "synthvi_vi"}
records = [r for r in load_dataset("synthvi", "data/synthvi").records if r.dataset == "synthvi_vi" and r.pid in vi_tokens]
pids = sorted({r.pid for r in records})


@torch.no_grad()
def mean_latent(recs) -> np.ndarray:
    images = load_rgb_tensor([r.path for r in recs], 128, 64, resize=True, desc="")
    return encode_latents(vae, images, flip=False, progress=False)[0].mean(0).flatten().numpy()


rows = {"vis": [], "ir": [], "tok": []}
kept = []
for p in pids:
    vis = [r for r in records if r.pid == p and r.modality is Modality.VISIBLE]
    ir = [r for r in records if r.pid == p and r.modality is Modality.INFRARED]
    try:
        tok = table.identity("synthvi_vi", p).token
    except KeyError:
        continue
    if not vis or not ir:
        continue
    rows["vis"].append(mean_latent(vis))
    rows["ir"].append(mean_latent(ir))
    rows["tok"].append(emb[tok].numpy())
    kept.append(p)
X = {k: np.stack(v).astype(np.float64) for k, v in rows.items()}


def flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": str(v)})
    return out


people = json.loads(Path("data/synthvi/identities.json").read_text())
vi_key = next(k for k in people if k != "external")
attrs = [flat(people[vi_key][str(p)]) for p in kept]
fields = sorted({k for a in attrs for k in a})


def one_hot(keys) -> np.ndarray:
    cols = sorted({(k, a[k]) for a in attrs for k in keys if k in a})
    return np.array([[float(a.get(k) == v) for k, v in cols] for a in attrs])


X["attr"] = one_hot(fields)
X["seen"] = one_hot([f for f in fields if not f.endswith("material")])
print(f"{len(kept)} VI ids; latent dims {X['ir'].shape[1]}, token dims {X['tok'].shape[1]}")


def cv_r2(inp: np.ndarray, out: np.ndarray, alpha: float, folds: int = 5) -> float:
    n = len(inp)
    order = np.random.default_rng(0).permutation(n)
    sse = sse0 = 0.0
    for f in range(folds):
        test = order[f::folds]
        train = np.setdiff1d(order, test)
        mu_x, mu_y = inp[train].mean(0), out[train].mean(0)
        sd_x = inp[train].std(0) + 1e-8
        a = (inp[train] - mu_x) / sd_x
        w = np.linalg.solve(a.T @ a + alpha * np.eye(a.shape[1]), a.T @ (out[train] - mu_y))
        pred = ((inp[test] - mu_x) / sd_x) @ w + mu_y
        sse += ((pred - out[test]) ** 2).sum()
        sse0 += ((mu_y - out[test]) ** 2).sum()
    return 1 - sse / sse0


for name, inp, out in (("visible-latent -> infrared", X["vis"], X["ir"]), ("token -> infrared", X["tok"], X["ir"]),
                       ("token -> visible (sanity)", X["tok"], X["vis"]),
                       ("attributes -> infrared", X["attr"], X["ir"]), ("attributes seen in visible light -> infrared", X["seen"], X["ir"]),
                       ("attributes -> visible", X["attr"], X["vis"])):
    scores = {a: cv_r2(inp, out, a) for a in (0.1, 1.0, 10.0, 100.0, 1000.0)}
    best = max(scores, key=scores.get)
    print(f"{name}: held-out R2 {scores[best]:.3f} (ridge alpha {best:g}; all: "
          + ", ".join(f"{a:g}: {s:.3f}" for a, s in scores.items()) + ")")
