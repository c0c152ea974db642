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
"""

from __future__ import annotations

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

    def forward(self, feat: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
        d_pos, d_neg, has_neg = self.weighted_distances(feat, labels)
        gap = d_pos - d_neg
        if self.square:
            z = (self.gamma * gap * gap.abs()).clamp(max=88.0)
        else:
            z = self.gamma * gap
        per_anchor = F.softplus(z)
        if not bool(has_neg.any()):
            return feat.sum() * 0.0, 0
        loss = per_anchor[has_neg].mean()
        correct = int((d_neg >= d_pos)[has_neg].sum().item())
        return loss, correct


class CrossEntropyLabelSmooth(nn.Module):
    """Cross-entropy with optional label smoothing eps: target = (1 - eps) one-hot + eps / classes."""

    def __init__(self, epsilon: float = 0.0):
        super().__init__()
        if not 0.0 <= epsilon < 1.0:
            raise ValueError(f"label smoothing must be in [0, 1); got {epsilon}")
        self.epsilon = float(epsilon)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits, dim=1)
        nll = -logp.gather(1, labels.view(-1, 1)).squeeze(1)
        if self.epsilon == 0.0:
            return nll.mean()
        smooth = -logp.mean(dim=1)
        return ((1.0 - self.epsilon) * nll + self.epsilon * smooth).mean()


def build_triplet(kind: str, alpha: float = 1.0, gamma: float = 1.0, square: bool = False) -> WeightedRegularizedTriplet:
    """``"wrt"``: AGW's WRT (alpha, gamma = 1, no square); ``"adp"``: CAJ's ADP with the given values."""
    if kind == "wrt":
        return WeightedRegularizedTriplet(1.0, 1.0, False)
    if kind == "adp":
        return WeightedRegularizedTriplet(alpha, gamma, square)
    raise ValueError(f"unknown triplet loss {kind!r}; expected 'wrt' or 'adp'")
