"""ReID training speed against the machine's limit: seconds per batch, FLOPs per batch, FLOP/s and
its share of the matmul peak (`dive speed --only reid`).

The batch is a training batch of `dive reid run` as configured (AGW by default: a width-16
ResNet-18 two-stream network at 128x64, P=8 identities x (K=4 visible + 4 infrared) = 64 images,
cross-entropy + WRT triplet, Nesterov SGD), assembled and augmented by the training loop's own
sampler and batch loader, and stepped under the training run's own runtime (threads, deterministic
algorithms, oneDNN's convolutions or torch's own as `onednn` says). Only the pixels differ: seeded
random images of `num_classes` identities (the default SynthVI world's training ids), since neither
the FLOPs nor the time of a batch depend on what the images show. The FLOPs of one batch (forward,
backward; the augmentation and optimizer are element-wise and not counted) are counted on the first
warm-up batch by torch's FLOP counter; the seconds per batch are those of the timed batches, batch
assembly included, as `dive reid train` reports them.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from dive.data.synthvi.build import SynthConfig
from dive.reid.config import METHODS, ReIDTrainConfig
from dive.reid.device import BatchLoader, Runtime, make_optimizer
from dive.reid.model import build_model
from dive.reid.sampler import IdentitySampler
from dive.reid.train import _runtime, build_losses
from dive.utils.flops import count_flops, measure_peaks, workload_record

#: identities of the default SynthVI world's ReID training split
DEFAULT_CLASSES = next(f.default for f in dataclasses.fields(SynthConfig) if f.name == "vi_train_ids")


@dataclass
class ReIDSpeedConfig:
    method: str = field(default="agw", metadata={"help": "ReID recipe timed (its default network and batch)",
                                                 "choices": list(METHODS)})
    batches: int = field(default=20, metadata={"help": "timed training batches"})
    warmup: int = field(default=3, metadata={"help": "untimed batches first (the first one is counted)"})
    num_classes: int = field(default=DEFAULT_CLASSES, metadata={"help": "training identities (classifier width)"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads (dive reid's default: 1)"})
    seed: int = field(default=0, metadata={"help": "seed of the weights, images and batches"})
    onednn: bool = field(default=True, metadata={
        "help": "oneDNN's CPU convolutions (dive reid's default) or torch's own"})

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}; got {self.method!r}")
        if self.batches < 1 or self.warmup < 1:
            raise ValueError(f"batches and warmup must be >= 1; got batches={self.batches}, warmup={self.warmup}")

    def train_config(self) -> ReIDTrainConfig:
        return ReIDTrainConfig(method=self.method, seed=self.seed, threads=self.threads, progress=False, device="cpu",
                               onednn=self.onednn)


def _synthetic_set(tcfg: ReIDTrainConfig, num_classes: int, seed: int):
    """2K visible + 2K infrared seeded random images per identity (every pick without replacement)."""
    if num_classes < tcfg.num_ids:
        raise ValueError(f"num_classes {num_classes}: a batch draws P={tcfg.num_ids} identities; give at least that many")
    per = 2 * tcfg.num_per_modality
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (num_classes * 2 * per, 3, tcfg.height, tcfg.width), generator=g, dtype=torch.uint8)
    labels = torch.arange(num_classes).repeat_interleave(2 * per)
    is_ir = np.tile(np.repeat([False, True], per), num_classes)
    return images, labels, is_ir


def reid_speed(cfg: ReIDSpeedConfig, peaks: dict | None = None) -> dict:
    """One workload record (unit: a training batch) for `cfg.method`'s default network and batch; the
    peak is measured on `cfg.threads` unless given."""
    tcfg = cfg.train_config()
    images, labels, is_ir = _synthetic_set(tcfg, cfg.num_classes, cfg.seed)
    with _runtime(tcfg):
        torch.manual_seed(cfg.seed)
        model = build_model(tcfg.model_spec(cfg.num_classes))
        rt = Runtime("cpu", tcfg.precision)
        model.train()
        opt = make_optimizer(model, tcfg.optimizer, tcfg.lr, tcfg.momentum, tcfg.weight_decay, tcfg.base_lr_mult)
        ce, tri, objective = build_losses(tcfg)
        sampler = IdentitySampler(labels.numpy(), is_ir, tcfg.num_ids, tcfg.num_per_modality,
                                  cfg.warmup + cfg.batches, cfg.seed)
        loader = BatchLoader(sampler, images, labels, torch.Generator().manual_seed(cfg.seed), tcfg.augment(),
                             tcfg.use_channel_aug)

        def step(x: torch.Tensor, mask: torch.Tensor, y: torch.Tensor) -> None:
            with rt.autocast():
                feat, logits = model(x, mask)
            feat, logits = feat.float(), logits.float()
            if objective is not None:
                loss = objective(feat, logits, y, mask).loss
            else:
                loss = ce(logits, y)
                if tri is not None:
                    loss = loss + tcfg.triplet_weight * tri(feat, y)[0]
            rt.step(loss, opt)

        flops, sizes, t0 = 0, [], 0.0
        for b, (x, mask, y) in enumerate(loader.epoch(0)):
            if b == 0:
                flops = count_flops(lambda: step(x, mask, y))[0]
            else:
                step(x, mask, y)
            if b == cfg.warmup - 1:
                t0 = time.perf_counter()  # the timed batches start with the next one's assembly
            elif b >= cfg.warmup:
                sizes.append(len(x))
        seconds = (time.perf_counter() - t0) / cfg.batches
        peaks = peaks or measure_peaks(cfg.threads)
    return workload_record("reid", "batch", flops, seconds, peaks, method=tcfg.method, batch_size=int(np.mean(sizes)),
                           arch=tcfg.arch, base_width=tcfg.base_width, image_size=[tcfg.height, tcfg.width],
                           num_classes=cfg.num_classes, batches=cfg.batches, deterministic=tcfg.deterministic,
                           onednn=tcfg.onednn)
