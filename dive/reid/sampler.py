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

Synthetic share (``synthetic_share=F``, off by default): with a per-image ``synthetic`` flag (which
images an export generated), the identities split into *expanded* ids (at least one synthetic
image) and *real* ids (none). Each batch then draws ``round(F * P)`` (Python's round: half to
even) distinct expanded ids and ``P - round(F * P)`` distinct real ids, both uniformly, the
expanded ones first in ``Batch.ids``. Left off, the draw is exactly the one above (same numbers
from the same generator), whether or not flags are given. The epoch's generator and the
distributed split are the same in both modes.
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
    ``synthetic``: bool per image (True: generated), needed by ``synthetic_share`` (None: off), the
    share of each batch's identities drawn from the expanded ids (see the module docstring).
    """

    def __init__(self, labels: Sequence[int], is_infrared: Sequence[bool], num_ids: int = 8,
                 num_per_modality: int = 4, batches_per_epoch: int = 0, seed: int = 0, *,
                 synthetic: Sequence[bool] | None = None, synthetic_share: float | None = None):
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
        self.expanded_ids = self.real_ids = None
        if synthetic is not None:
            syn = np.asarray(synthetic, dtype=bool)
            if syn.shape != labels.shape:
                raise ValueError(f"synthetic flags: {syn.size} for {labels.size} images; expected one per image")
            self.expanded_ids = np.unique(labels[syn])
            self.real_ids = np.setdiff1d(self.ids, self.expanded_ids)
        self.synthetic_share = None if synthetic_share is None else float(synthetic_share)
        self.num_expanded = 0 if self.synthetic_share is None else self._check_share()

    def _check_share(self) -> int:
        """Expanded ids per batch, round(F * P); refuses a share the identities cannot fill."""
        f, opt = self.synthetic_share, f"--synthetic-share {self.synthetic_share:g}"
        if not 0.0 <= f <= 1.0:
            raise ValueError(f"{opt}: expected a share in [0, 1]")
        if self.expanded_ids is None:
            raise ValueError(f"{opt}: needs a synthetic flag per training image (which images are generated)")
        n_exp = int(round(f * self.P))
        n_real = self.P - n_exp
        if f > 0 and self.expanded_ids.size == 0:
            raise ValueError(f"{opt}: the training set has no synthetic images, so no expanded ids to draw "
                             f"{n_exp} of the P={self.P} ids of a batch from; train on an export with synthetic "
                             "images, or leave the option off")
        if f < 1 and self.real_ids.size == 0:
            raise ValueError(f"{opt}: the training set has no real ids (identities without synthetic images) "
                             f"to draw {n_real} of the P={self.P} ids of a batch from; use --synthetic-share 1 "
                             "or train on a set with real VI ids")
        for n, pool, what in ((n_exp, self.expanded_ids, "expanded ids (with synthetic images)"),
                              (n_real, self.real_ids, "real ids (without synthetic images)")):
            if n > pool.size:
                raise ValueError(f"{opt}: a batch of P={self.P} ids needs {n} distinct {what} but the training "
                                 f"set has {pool.size}; lower --num-ids or change the share")
        return n_exp

    def __len__(self) -> int:
        return self.batches_per_epoch

    def _take(self, pool: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if pool.size == 0:
            return pool
        return rng.choice(pool, size=self.K, replace=pool.size < self.K)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        rng = np.random.default_rng([self.seed, int(epoch)])
        for _ in range(self.batches_per_epoch):
            if self.synthetic_share is None:
                chosen = rng.choice(self.ids, size=self.P, replace=False)
            else:
                chosen = np.concatenate([rng.choice(self.expanded_ids, size=self.num_expanded, replace=False),
                                         rng.choice(self.real_ids, size=self.P - self.num_expanded, replace=False)])
            vis = [self._take(self._vis[int(c)], rng) for c in chosen]
            ir = [self._take(self._ir[int(c)], rng) for c in chosen]
            yield Batch(np.concatenate(vis).astype(np.int64), np.concatenate(ir).astype(np.int64),
                        np.asarray(chosen, dtype=np.int64))
