"""Where and how a ReID network runs: device, mixed precision, batch loading with workers.

* ``--device auto|cpu|cuda|mps``: ``auto`` is cuda when torch sees a GPU, else cpu (mps only when
  named). The network keeps the channels-last layout it is built with (cuDNN's and oneDNN's fast
  path), inputs are copied to the device with ``non_blocking`` from pinned memory on cuda.
* ``--precision fp32|bf16|fp16``: the forward pass runs under ``torch.autocast`` on the device
  with that dtype; the losses are computed in fp32 from its outputs; fp16 on cuda scales the loss
  (``torch.amp.GradScaler``) so small gradients do not underflow. fp32 uses no autocast at all.
* ``--workers N``: N DataLoader processes assemble and augment the batches. With 0 (the default)
  the batches are made in the training process from one seeded generator, so a CPU fp32 run with
  the default options is bit-identical for the same seed and thread count. With
  N > 0 each batch draws its augmentation from its own generator seeded by (seed, epoch, batch), so
  the result does not depend on N or on the order workers finish in.
* several processes (dive.reid.distributed): each makes the whole global batch as above and keeps
  its share of the identities (``share=(rank, world)``), so the global batch is the
  single-process one; on CUDA process ``r`` runs on ``cuda:LOCAL_RANK`` (``Runtime(index=...)``).
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from typing import Iterator, Sequence

import torch

from dive.reid.transforms import AugmentConfig, augment_batch
from dive.utils.device import DEVICES
from dive.utils.device import resolve_device as _resolve_device

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_options(device: str, precision: str, workers: int) -> None:
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}; got {device!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0; got {workers}")


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device for a ReID --device value (one of DEVICES; the shared resolver of every
    command names a device that is not there in one line)."""
    if name not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}; got {name!r}")
    return _resolve_device(name)


class Runtime:
    """Device + precision of one run: `autocast()` around the forward, `step(loss, opt)` for the update."""

    def __init__(self, device: str = "auto", precision: str = "fp32", index: int | None = None):
        check_options(device, precision, 0)
        self.device = resolve_device(device)
        if index is not None and self.device.type == "cuda":
            self.device = torch.device("cuda", index)
        self.precision = precision
        self.dtype = _DTYPES.get(precision)
        if self.device.type == "cuda":  # cuBLAS is deterministic only with a fixed workspace (set before first use)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        self.scaler = (torch.amp.GradScaler("cuda") if precision == "fp16" and self.device.type == "cuda"
                       else None)

    @property
    def pin_memory(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self):
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def to_device(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.device.type == "cpu":
            return tensors
        return tuple(t.to(self.device, non_blocking=True) for t in tensors)

    def step(self, loss: torch.Tensor, opt: torch.optim.Optimizer) -> None:
        opt.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            opt.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(opt)
        self.scaler.update()


def make_optimizer(model: torch.nn.Module, kind: str, lr: float, momentum: float, weight_decay: float,
                   base_lr_mult: float) -> torch.optim.Optimizer:
    """AGW's two parameter groups: the backbone at `base_lr_mult` x lr, the BN neck and classifier at
    lr (each group's ``lr_mult`` scales the scheduled lr). SGD is Nesterov SGD."""
    head = list(model.bnneck.parameters()) + list(model.classifier.parameters())
    head_ids = {id(p) for p in head}
    base = [p for p in model.parameters() if id(p) not in head_ids]
    groups = [{"params": [p for p in base if p.requires_grad], "lr_mult": base_lr_mult},
              {"params": [p for p in head if p.requires_grad], "lr_mult": 1.0}]
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)
    return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)


def assemble_batch(images: torch.Tensor, labels: torch.Tensor, batch, gen: torch.Generator,
                   aug: AugmentConfig, channel_aug: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One training batch: augmented visible images (+ their channel-augmented copies for CAJ),
    then augmented infrared images; returns (x, infrared mask, labels). The generator is drawn in
    this fixed order."""
    parts, masks, labs = [], [], []
    if batch.visible.size:
        idx = torch.from_numpy(batch.visible)
        v = images[idx]
        parts.append(augment_batch(v, gen, aug))
        masks.append(torch.zeros(len(v), dtype=torch.bool))
        labs.append(labels[idx])
        if channel_aug:
            parts.append(augment_batch(v, gen, aug, channel=True))
            masks.append(torch.zeros(len(v), dtype=torch.bool))
            labs.append(labs[-1])
    if batch.infrared.size:
        idx = torch.from_numpy(batch.infrared)
        r = images[idx]
        parts.append(augment_batch(r, gen, aug))
        masks.append(torch.ones(len(r), dtype=torch.bool))
        labs.append(labels[idx])
    return torch.cat(parts), torch.cat(masks), torch.cat(labs)


def keep_identities(out: tuple[torch.Tensor, ...], ids: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """The rows of an assembled batch ``(x, mask, labels)`` whose label is one of `ids` (same order)."""
    keep = torch.isin(out[2], torch.as_tensor(list(ids), dtype=out[2].dtype))
    return tuple(t[keep] for t in out)


def _share(batch, share: tuple[int, int]) -> list[int] | None:
    rank, world = share
    if world <= 1:
        return None
    if batch.ids is None:
        raise ValueError("a batch shared between processes needs its identities (Batch.ids)")
    return [int(i) for i in batch.ids[rank::world]]


def batch_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of one batch when workers make the batches."""
    return (int(seed) * 1_000_003 + int(epoch)) * 1_000_033 + int(index)


class _EpochBatches(torch.utils.data.Dataset):
    def __init__(self, batches: Sequence, images, labels, aug, channel_aug, seed, epoch, share=(0, 1)):
        self.batches, self.images, self.labels = batches, images, labels
        self.aug, self.channel_aug, self.seed, self.epoch, self.share = aug, channel_aug, seed, epoch, share

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int):
        gen = torch.Generator().manual_seed(batch_seed(self.seed, self.epoch, i))
        out = assemble_batch(self.images, self.labels, self.batches[i], gen, self.aug, self.channel_aug)
        ids = _share(self.batches[i], self.share)
        return out if ids is None else keep_identities(out, ids)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


class BatchLoader:
    """Yields ``(x, infrared_mask, labels)`` for every batch of an epoch of `sampler`; with
    ``share=(rank, world)``, world > 1, only the rows of this process's identities of each batch."""

    def __init__(self, sampler, images: torch.Tensor, labels: torch.Tensor, gen: torch.Generator,
                 aug: AugmentConfig, channel_aug: bool, *, workers: int = 0, seed: int = 0,
                 pin_memory: bool = False, share: tuple[int, int] = (0, 1)):
        self.sampler, self.images, self.labels, self.gen = sampler, images, labels, gen
        self.aug, self.channel_aug = aug, channel_aug
        self.workers, self.seed, self.pin_memory = int(workers), int(seed), bool(pin_memory)
        self.share = (int(share[0]), int(share[1]))

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        if self.workers == 0:
            for batch in self.sampler.epoch(epoch):
                out = assemble_batch(self.images, self.labels, batch, self.gen, self.aug, self.channel_aug)
                ids = _share(batch, self.share)
                if ids is not None:
                    out = keep_identities(out, ids)
                yield tuple(t.pin_memory() for t in out) if self.pin_memory else out
            return
        ds = _EpochBatches(list(self.sampler.epoch(epoch)), self.images, self.labels, self.aug,
                           self.channel_aug, self.seed, epoch, self.share)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=self.workers,
                                             pin_memory=self.pin_memory, worker_init_fn=_worker_init)
        yield from loader
