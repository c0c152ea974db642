"""Identity sampler for VI-ReID batches: P identities x (K visible + K infrared) images.

Rule for identities seen in one modality only (e.g. the visible-only ids of an external RGB set
before expansion): every identity with at least one image is drawn uniformly, whatever modalities
it has; a drawn identity contributes K images from *each modality it has*. So a batch of P paired
identities holds P*K visible + P*K infrared images, and each visible-only identity in it shrinks
the infrared half by K (a batch can therefore be smaller than 2*P*K). Once an expanded set gives
those identities synthetic infrared images they are ordinary paired identities and the batch is
full again. Within an identity and modality, K images are drawn without replacement when it has at
least K of them, with replacement otherwise (as AGW pads rare identities).

Determinism: epoch ``e`` uses ``numpy.random.default_rng([seed, e])`` only, so the batches of an
epoch do not depend on earlier epochs or on how many were run. Several training processes
(dive.reid.distributed) all draw this same sequence; process ``r`` of ``n`` keeps the identities
``ids[r::n]`` of each batch, so the global batch is the single-process one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np


def agw_epoch_batches(num_visible: int, num_ids: int, num_per_modality: int) -> int:
    """AGW's epoch length: the visible training images once, P*K of them per batch (at least 1)."""
    return max(1, int(num_visible) // (int(num_ids) * int(num_per_modality)))


@dataclass(frozen=True)
class Batch:
    """Indices into the training arrays: visible and infrared images, identity-major order; `ids`:
    the batch's identities (training labels) in the order they were drawn."""

    visible: np.ndarray
    infrared: np.ndarray
    ids: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.visible.size + self.infrared.size)


class IdentitySampler:
    """Draws epochs of P x (K visible + K infrared) batches.

    ``labels``: training label per image; ``is_infrared``: bool per image. ``batches_per_epoch``:
    a fixed count, or 0 for "visible images // (P * K)" (AGW's epoch length on the visible side).
    """

    def __init__(self, labels: Sequence[int], is_infrared: Sequence[bool], num_ids: int = 8,
                 num_per_modality: int = 4, batches_per_epoch: int = 0, seed: int = 0):
        labels = np.asarray(labels, dtype=np.int64)
        ir = np.asarray(is_infrared, dtype=bool)
        if labels.shape != ir.shape or labels.ndim != 1:
            raise ValueError("labels and is_infrared must be 1-D arrays of equal length")
        if num_ids < 1 or num_per_modality < 1:
            raise ValueError("num_ids (P) and num_per_modality (K) must be >= 1")
        self.P, self.K, self.seed = int(num_ids), int(num_per_modality), int(seed)
        self.ids = np.unique(labels)
        if self.ids.size == 0:
            raise ValueError("no training images")
        if self.ids.size < self.P:
            raise ValueError(f"a batch needs P={self.P} identities but the training set has {self.ids.size}")
        order = np.argsort(labels, kind="stable")
        self._vis: dict[int, np.ndarray] = {}
        self._ir: dict[int, np.ndarray] = {}
        for lab in self.ids:
            idx = order[labels[order] == lab]
            self._vis[int(lab)] = idx[~ir[idx]]
            self._ir[int(lab)] = idx[ir[idx]]
        self.num_visible = int((~ir).sum())
        self.num_infrared = int(ir.sum())
        self.visible_only_ids = int(sum(1 for v in self._ir.values() if v.size == 0))
        self.infrared_only_ids = int(sum(1 for v in self._vis.values() if v.size == 0))
        auto = agw_epoch_batches(self.num_visible, self.P, self.K)
        self.batches_per_epoch = int(batches_per_epoch) if batches_per_epoch > 0 else auto

    def __len__(self) -> int:
        return self.batches_per_epoch

    def _take(self, pool: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if pool.size == 0:
            return pool
        return rng.choice(pool, size=self.K, replace=pool.size < self.K)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        rng = np.random.default_rng([self.seed, int(epoch)])
        for _ in range(self.batches_per_epoch):
            chosen = rng.choice(self.ids, size=self.P, replace=False)
            vis = [self._take(self._vis[int(c)], rng) for c in chosen]
            ir = [self._take(self._ir[int(c)], rng) for c in chosen]
            yield Batch(np.concatenate(vis).astype(np.int64), np.concatenate(ir).astype(np.int64),
                        np.asarray(chosen, dtype=np.int64))
