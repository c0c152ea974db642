"""ReID losses: identity cross-entropy and the weighted regularised triplet (WRT) with CAJ's ADP option.

WRT (AGW): over the batch's Euclidean distance matrix D, each anchor i gets

    d_pos(i) = sum_j w_ij D_ij over positives j (same label, j != i counts too: D_ii = 0),
               w_ij = softmax over positives of ( alpha * D_ij)   (harder positives weigh more)
    d_neg(i) = sum_k v_ik D_ik over negatives k,
               v_ik = softmax over negatives of (-alpha * D_ik)   (harder negatives weigh more)

and the soft-margin ranking loss  softplus(gamma * (d_pos - d_neg))  averaged over anchors (no
margin to tune). AGW's WRT is alpha = gamma = 1.

ADP (CAJ's "--method adp"): the same weighted distances with the scale ``alpha`` inside the
softmax weights, and either the soft margin on ``gamma * (d_pos - d_neg)`` (``square=False``) or,
with ``square=True``, on the *signed squared* gap ``gamma * (d_pos - d_neg) * |d_pos - d_neg|``
(clamped at 88 before the softplus, as exp overflows beyond): a violated anchor (d_pos > d_neg)
costs softplus(gamma * gap^2), a satisfied one softplus(-gamma * gap^2), which keeps pushing the
gap wider. The published CAJ command is ``--method adp --alpha 1 --square 1 --gamma 1``.

Batch-hard triplet (Hermans et al. 2017; DEEN's triplet term): per anchor the furthest positive and
the nearest negative, ``relu(d_pos - d_neg + margin)`` (margin 0.3 in DEEN).

Per-image weights (``weights=``, e.g. ``--synthetic-weight`` on generated images): the
cross-entropy becomes ``sum_i w_i * ce_i / n`` (divided by the batch size, not by the weights, so
the other images' terms keep their scale), and every triplet loss weighs each *anchor's* term,
``sum_a w_a * l_a / #anchors`` over the anchors counted today: a weighted image still serves as a
positive or negative of the other anchors, only the term it anchors is scaled. ``weights=None``
runs the unweighted code unchanged.

DEEN (Zhang & Wang, CVPR 2023) adds two terms, both on pooled features (``dive.reid.deen``):

* center-guided pair mining (CPM, ``center_pair_mining_loss``): over identity centers of the
  original and of one generated embedding, a generated visible center must lie closer to its
  identity's original *infrared* center than to its own original visible center (by a margin),
  and closer than the nearest other identity's center; the same with the modalities swapped;
* orthogonality between branches (ORT, ``orthogonal_loss``): the inner products between the
  generated embeddings of the same image, pushed to 0 so the branches learn different things.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def euclidean_distance(x: torch.Tensor, y: torch.Tensor | None = None, eps: float = 1e-12) -> torch.Tensor:
    """Pairwise Euclidean distances (n x m), sqrt of the clamped squared distance (finite gradient)."""
    y = x if y is None else y
    sq = x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1).unsqueeze(0) - 2.0 * x @ y.t()
    return sq.clamp(min=eps).sqrt()


def masked_softmax(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Row-wise softmax of `values` restricted to `mask` (weights are 0 outside the mask).

    Stabilised with the row maximum over the masked entries only (so the largest masked entry has
    exp(0) = 1 and `eps` is negligible); `eps` in the normaliser keeps a row with an empty mask at
    all-zero weights instead of NaN.
    """
    m = mask.to(values.dtype)
    masked = values.masked_fill(~mask, float("-inf"))
    row_max = masked.max(dim=1, keepdim=True).values
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max)).detach()
    e = torch.exp((values - row_max).masked_fill(~mask, 0.0)) * m
    return e / (e.sum(dim=1, keepdim=True) + eps)


class WeightedRegularizedTriplet(nn.Module):
    """WRT (``alpha=1, gamma=1, square=False``) and CAJ's ADP variant; see the module docstring.

    ``forward(feat, labels)`` returns ``(loss, correct)`` where ``correct`` counts anchors with
    d_neg >= d_pos (a training accuracy). Anchors without a positive other than themselves still
    count (their d_pos is 0); anchors without any negative are left out of the mean.
    """

    def __init__(self, alpha: float = 1.0, gamma: float = 1.0, square: bool = False, normalize: bool = False):
        super().__init__()
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.square = bool(square)
        self.normalize = bool(normalize)

    def weighted_distances(self, feat: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.normalize:
            feat = F.normalize(feat, dim=1)
        dist = euclidean_distance(feat)
        same = labels.view(-1, 1) == labels.view(1, -1)
        pos, neg = same, ~same
        d_ap = dist * pos
        d_an = dist * neg
        w_ap = masked_softmax(self.alpha * d_ap, pos)
        w_an = masked_softmax(-self.alpha * d_an, neg)
        d_pos = (d_ap * w_ap).sum(1)
        d_neg = (d_an * w_an).sum(1)
        return d_pos, d_neg, neg.any(dim=1)

    def forward(self, feat: torch.Tensor, labels: torch.Tensor,
                weights: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
        d_pos, d_neg, has_neg = self.weighted_distances(feat, labels)
        gap = d_pos - d_neg
        if self.square:
            z = (self.gamma * gap * gap.abs()).clamp(max=88.0)
        else:
            z = self.gamma * gap
        per_anchor = F.softplus(z)
        if not bool(has_neg.any()):
            return feat.sum() * 0.0, 0
        loss = _anchor_mean(per_anchor, has_neg, weights)
        correct = int((d_neg >= d_pos)[has_neg].sum().item())
        return loss, correct


def _anchor_mean(per_anchor: torch.Tensor, counted: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Mean of the counted anchors' terms; with `weights`, each term scaled by its anchor's weight."""
    if weights is None:
        return per_anchor[counted].mean()
    return (per_anchor * weights)[counted].mean()


class CrossEntropyLabelSmooth(nn.Module):
    """Cross-entropy with optional label smoothing eps: target = (1 - eps) one-hot + eps / classes;
    optional per-image `weights` (see the module docstring)."""

    def __init__(self, epsilon: float = 0.0):
        super().__init__()
        if not 0.0 <= epsilon < 1.0:
            raise ValueError(f"label smoothing must be in [0, 1); got {epsilon}")
        self.epsilon = float(epsilon)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor,
                weights: torch.Tensor | None = None) -> torch.Tensor:
        logp = F.log_softmax(logits, dim=1)
        nll = -logp.gather(1, labels.view(-1, 1)).squeeze(1)
        if self.epsilon == 0.0:
            return nll.mean() if weights is None else (nll * weights).sum() / nll.shape[0]
        smooth = -logp.mean(dim=1)
        per_image = (1.0 - self.epsilon) * nll + self.epsilon * smooth
        return per_image.mean() if weights is None else (per_image * weights).sum() / per_image.shape[0]


class BatchHardTriplet(nn.Module):
    """Batch-hard triplet: per anchor the furthest positive (itself included, at distance 0) and the
    nearest negative, ``relu(d_pos - d_neg + margin)`` averaged over the anchors that have a
    negative. ``forward(feat, labels)`` returns ``(loss, correct)`` (anchors with d_neg >= d_pos)."""

    def __init__(self, margin: float = 0.3):
        super().__init__()
        self.margin = float(margin)

    def forward(self, feat: torch.Tensor, labels: torch.Tensor,
                weights: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
        dist = euclidean_distance(feat)
        same = labels.view(-1, 1) == labels.view(1, -1)
        has_neg = (~same).any(dim=1)
        if not bool(has_neg.any()):
            return feat.sum() * 0.0, 0
        d_pos = dist.masked_fill(~same, float("-inf")).max(dim=1).values
        d_neg = dist.masked_fill(same, float("inf")).min(dim=1).values
        loss = _anchor_mean(F.relu(d_pos - d_neg + self.margin), has_neg, weights)
        correct = int((d_neg >= d_pos)[has_neg].sum().item())
        return loss, correct


TRIPLETS = ("wrt", "adp", "batch-hard")


def build_triplet(kind: str, alpha: float = 1.0, gamma: float = 1.0, square: bool = False,
                  margin: float = 0.3) -> nn.Module:
    """``"wrt"``: AGW's WRT (alpha, gamma = 1, no square); ``"adp"``: CAJ's ADP with the given values;
    ``"batch-hard"``: the batch-hard triplet with `margin` (DEEN's)."""
    if kind == "wrt":
        return WeightedRegularizedTriplet(1.0, 1.0, False)
    if kind == "adp":
        return WeightedRegularizedTriplet(alpha, gamma, square)
    if kind == "batch-hard":
        return BatchHardTriplet(margin)
    raise ValueError(f"unknown triplet loss {kind!r}; expected one of {', '.join(TRIPLETS)}")


# ------------------------------------------------------------------------------------------------
# DEEN: center-guided pair mining and orthogonality between branches
# ------------------------------------------------------------------------------------------------


def identity_centers(feat: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean feature of each identity in `ids` (len(ids), dim); every id must occur in `labels`."""
    member = (labels.view(1, -1) == ids.view(-1, 1)).to(feat.dtype)
    return (member @ feat) / member.sum(dim=1, keepdim=True)


def _paired_distance(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    return (a - b).pow(2).sum(dim=1).clamp(min=eps).sqrt()


def _nearest_other(centers: torch.Tensor) -> torch.Tensor:
    """Distance from each center to the nearest *other* center."""
    eye = torch.eye(centers.shape[0], dtype=torch.bool, device=centers.device)
    return euclidean_distance(centers).masked_fill(eye, float("inf")).min(dim=1).values


def center_pair_mining_loss(original: torch.Tensor, generated: torch.Tensor, labels: torch.Tensor,
                            infrared: torch.Tensor, margin: float = 0.2) -> torch.Tensor:
    """DEEN's CPM between the original embeddings and one generated embedding of the same images.

    `original`, `generated`: (n, dim) features of the same n images (row i = image i); `labels`
    (n,) identities; `infrared` (n,) bool modality. Only identities with images of both modalities
    count. With identity centers ``v``/``r`` (original visible / infrared) and ``gv``/``gr``
    (generated visible / infrared) and ``h(x) = max(0, x + margin)``, per identity k::

        A_k = h(d(r_k, gv_k) - sg[d(v_k, gv_k)])
              + 0.5 * (h(d(r_k, gv_k) - min_{j!=k} d(gv_k, gv_j)) + h(d(r_k, gv_k) - min_{j!=k} d(v_k, v_j)))
        B_k = the same with visible and infrared swapped (d(v_k, gr_k) against d(r_k, gr_k), ...)

    (``sg``: no gradient) and the loss is ``(mean_k A_k + mean_k B_k) / 2``: a generated embedding
    is pulled towards the other modality's center of its identity, past its own modality's center
    and inside the nearest other identity. The nearest-other terms need two identities; with one
    they are left out, with none the loss is 0.
    """
    infrared = infrared.to(torch.bool)
    vis_ids, ir_ids = labels[~infrared].unique(), labels[infrared].unique()
    ids = vis_ids[torch.isin(vis_ids, ir_ids)]
    if ids.numel() == 0:
        return (original.sum() + generated.sum()) * 0.0
    vis, ir = ~infrared, infrared
    v = identity_centers(original[vis], labels[vis], ids)
    r = identity_centers(original[ir], labels[ir], ids)
    gv = identity_centers(generated[vis], labels[vis], ids)
    gr = identity_centers(generated[ir], labels[ir], ids)

    def side(gen_c: torch.Tensor, own_c: torch.Tensor, other_c: torch.Tensor) -> torch.Tensor:
        d_pos = _paired_distance(other_c, gen_c)
        loss = F.relu(d_pos - _paired_distance(own_c, gen_c).detach() + margin).mean()
        if ids.numel() > 1:
            loss = loss + 0.5 * (F.relu(d_pos - _nearest_other(gen_c) + margin).mean()
                                 + F.relu(d_pos - _nearest_other(own_c) + margin).mean())
        return loss

    return (side(gv, v, r) + side(gr, r, v)) / 2.0


def orthogonal_loss(generated: Sequence[torch.Tensor], normalizer: int | None = None) -> torch.Tensor:
    """DEEN's ORT: ``sum_i sum_{a<b} <g_a[i], g_b[i]>`` over the generated embeddings g_1..g_N
    (each (n, dim), row i = image i) divided by `normalizer` (default (N + 1) * n, the expanded
    batch with the original embedding, as published). 0 when the branches are orthogonal per image;
    the pooled features are non-negative (ReLU before pooling), so it is never below 0 there."""
    if len(generated) < 2:
        return generated[0].sum() * 0.0 if generated else torch.zeros(())
    n = generated[0].shape[0]
    total = generated[0].new_zeros(())
    for a in range(len(generated)):
        for b in range(a + 1, len(generated)):
            total = total + (generated[a] * generated[b]).sum()
    return total / float(normalizer if normalizer is not None else (len(generated) + 1) * n)
