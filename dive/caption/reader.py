"""The attribute reader: a small CNN that reads caption slots off one visible person image.

Why a reader and not free text: a captioner only has to give DiVE words the base model already
composes (colours, garments, patterns). SynthVI's web captions all follow one grammar, so reading
them is a classification per slot (`CAPTION_SLOTS`: upper colour, pattern, sleeves, ...), learnt
from the web pool the base model was trained on: the reader knows no more than the base's "web".

Model: four stride-2 3x3 convs (widths w, 2w, 4w, 4w; batch norm, ReLU) keep a 4x2 grid of the
image (where a colour is tells upper from lower garment), then a width-256 layer and one linear
head per slot. w = 32: 0.6 M parameters.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file

from dive.utils.io import save_safetensors, write_json

READER_WEIGHTS = "reader.safetensors"
READER_CONFIG = "reader.json"
#: (height, width) the reader reads: images of any size are resized to it
INPUT_SIZE = (128, 64)


class AttributeReader(nn.Module):
    def __init__(self, slots: dict[str, list[str]], width: int = 32, hidden: int = 256):
        super().__init__()
        self.slots = {k: list(v) for k, v in slots.items()}
        self.width, self.hidden = width, hidden
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(chans, chans[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d((4, 2)), nn.Flatten(),
                                      nn.Linear(chans[-1] * 8, hidden), nn.ReLU(inplace=True), nn.Dropout(0.2))
        self.heads = nn.ModuleDict({k: nn.Linear(hidden, len(v)) for k, v in self.slots.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images: (B, 3, H, W) in [-1, 1] -> {slot: logits (B, n_values)}."""
        h = self.features(images)
        return {k: head(h) for k, head in self.heads.items()}

    def save(self, folder: Path, **meta) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        save_safetensors({k: v.detach().contiguous() for k, v in self.state_dict().items()}, folder / READER_WEIGHTS)
        write_json(folder / READER_CONFIG, {"slots": self.slots, "width": self.width, "hidden": self.hidden, **meta})

    @classmethod
    def load(cls, folder: str | Path) -> "AttributeReader":
        folder = Path(folder)
        for name in (READER_CONFIG, READER_WEIGHTS):
            if not (folder / name).exists():
                raise FileNotFoundError(f"{folder / name}: missing; expected an attribute reader saved by `dive caption`")
        cfg = json.loads((folder / READER_CONFIG).read_text())
        model = cls(cfg["slots"], width=cfg["width"], hidden=cfg["hidden"])
        model.load_state_dict(load_file(str(folder / READER_WEIGHTS)))
        return model.eval()
