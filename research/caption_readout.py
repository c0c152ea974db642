"""Can the base's own contrastive encoders describe a person? Zero-shot attribute reading, the
captioner that identities in composable words would need (checkpoints/README.md).

A base's contrastive stage trained the text encoder against a small encoder of VAE latents (CLIP's
objective) and kept only the text encoder; the image tower is in the run folder. For each external
id (its visible training images, embeddings averaged), every value of one attribute is scored by
the caption that differs from the id's true caption in that attribute only; the best-scoring value
is the reading. Accuracy per attribute against chance (1 / number of values).

    python research/caption_readout.py [RUN_TEXT_CHECKPOINT] [BASE] [IDS]
"""
import dataclasses
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from dive import defaults  # noqa: E402
from dive.base.pretrain import LatentImageEncoder  # noqa: E402
from dive.data.registry import load_dataset  # noqa: E402
from dive.data.synthvi.world import COLOR_NAMES, HAIR_COLORS, LOWER_PATTERNS, UPPER_PATTERNS, Identity  # noqa: E402
from dive.utils.diffusion import encode_latents  # noqa: E402
from dive.utils.io import load_rgb_tensor  # noqa: E402

state_path = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/base-clip/text/checkpoint-600") / "state.safetensors"
base = Path(sys.argv[2] if len(sys.argv) > 2 else str(defaults.BASE))
n_ids = int(sys.argv[3]) if len(sys.argv) > 3 else 128
torch.manual_seed(0)

from diffusers import AutoencoderKL  # noqa: E402
from transformers import CLIPTextModel, CLIPTokenizer  # noqa: E402

tok = CLIPTokenizer.from_pretrained(base / "tokenizer")
te = CLIPTextModel.from_pretrained(base / "text_encoder").eval()
vae = AutoencoderKL.from_pretrained(base / "vae").eval()
state = load_file(str(state_path))
dim = te.config.hidden_size
image_encoder = LatentImageEncoder(vae.config.latent_channels, dim).eval()
image_encoder.load_state_dict({k[len("image_encoder."):]: v for k, v in state.items() if k.startswith("image_encoder.")})
text_proj = torch.nn.Linear(dim, dim, bias=False).eval()
text_proj.load_state_dict({k[len("text_proj."):]: v for k, v in state.items() if k.startswith("text_proj.")})
stage2_te = {k[len("text_encoder."):]: v for k, v in state.items() if k.startswith("text_encoder.")}
if any(not torch.equal(v, te.state_dict()[k]) for k, v in stage2_te.items() if k in te.state_dict()):
    raise SystemExit(f"{state_path}: its text encoder is not {base}'s: give the run that trained this base")

people = json.loads(Path("data/synthvi/identities.json").read_text())["external"]
records = [r for r in load_dataset("synthvi", "data/synthvi").records if r.dataset == "synthvi_ext" and r.split == "train"]
by_id: dict[int, list] = {}
for r in records:
    by_id.setdefault(r.pid, []).append(r)
pids = sorted(by_id, key=lambda p: (-len(by_id[p]), p))[:n_ids]


@torch.no_grad()
def text_emb(captions: list[str]) -> torch.Tensor:
    ids = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
    return F.normalize(text_proj(te(ids).pooler_output), dim=-1)


def with_value(person: Identity, field: str, value: str) -> Identity:
    if "." in field:
        part, attr = field.split(".")
        return dataclasses.replace(person, **{part: dataclasses.replace(getattr(person, part), **{attr: value})})
    return dataclasses.replace(person, **{field: value})


FIELDS = {"upper.color": COLOR_NAMES, "lower.color": COLOR_NAMES, "upper.pattern": UPPER_PATTERNS,
          "lower.pattern": LOWER_PATTERNS, "lower_type": ("pants", "shorts", "skirt"), "sleeves": ("short", "long"),
          "hair_color": tuple(HAIR_COLORS)}
hits = {f: 0 for f in FIELDS}
for pid in pids:
    recs = by_id[pid][:8]
    with torch.no_grad():
        latents = encode_latents(vae, load_rgb_tensor([r.path for r in recs], 128, 64, resize=True, desc=""),
                                 flip=False, progress=False)[0]
        img = F.normalize(F.normalize(image_encoder(latents), dim=-1).mean(0), dim=-1)
    person = Identity.from_dict(people[str(pid)])
    for field, values in FIELDS.items():
        scores = text_emb([with_value(person, field, v).caption() for v in values]) @ img
        truth = getattr(getattr(person, field.split(".")[0]), field.split(".")[1]) if "." in field else getattr(person, field)
        hits[field] += values[int(scores.argmax())] == truth
print(f"{len(pids)} external ids, up to 8 visible images each; zero-shot reading with {state_path.parent}")
for field, values in FIELDS.items():
    print(f"{field}: accuracy {100 * hits[field] / len(pids):.1f}% (chance {100 / len(values):.1f}%, {len(values)} values)")
