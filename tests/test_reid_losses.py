"""ReID losses against values computed by hand on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from dive.reid.losses import (
    CrossEntropyLabelSmooth, WeightedRegularizedTriplet, build_triplet, euclidean_distance, masked_softmax,
)

# three 1-D features: ids 0, 0, 1 at positions 0, 1, 3 -> distances [[0,1,3],[1,0,2],[3,2,0]]
FEAT = torch.tensor([[0.0], [1.0], [3.0]])
LABELS = torch.tensor([0, 0, 1])


def softplus(z: float) -> float:
    return math.log1p(math.exp(z))


def hand_weighted(alpha: float) -> tuple[list[float], list[float]]:
    """d_pos, d_neg per anchor, written out for FEAT / LABELS."""
    def wmean(ds, scale):
        ws = [math.exp(scale * d) for d in ds]
        return sum(w * d for w, d in zip(ws, ds)) / sum(ws)

    d_pos = [wmean([0, 1], alpha), wmean([1, 0], alpha), 0.0]
    d_neg = [3.0, 2.0, wmean([3, 2], -alpha)]
    return d_pos, d_neg


def test_euclidean_distance_and_masked_softmax():
    d = euclidean_distance(FEAT)
    assert torch.allclose(d, torch.tensor([[0.0, 1, 3], [1, 0, 2], [3, 2, 0]]), atol=1e-5)
    w = masked_softmax(torch.tensor([[0.0, 1.0, 5.0]]), torch.tensor([[True, True, False]]))
    e = math.e
    assert torch.allclose(w, torch.tensor([[1 / (1 + e), e / (1 + e), 0.0]]), atol=1e-5)


def test_wrt_matches_hand_computation():
    loss, correct = WeightedRegularizedTriplet()(FEAT, LABELS)
    d_pos, d_neg = hand_weighted(1.0)
    # anchor 0: d_pos = e/(1+e) = 0.7311, d_neg = 3 -> softplus(-2.2689) = 0.0985
    assert d_pos[0] == pytest.approx(math.e / (1 + math.e))
    expected = sum(softplus(p - n) for p, n in zip(d_pos, d_neg)) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-4)
    assert correct == 3


def test_adp_alpha_gamma_and_square():
    alpha, gamma = 2.0, 0.5
    d_pos, d_neg = hand_weighted(alpha)
    loss, _ = WeightedRegularizedTriplet(alpha=alpha, gamma=gamma, square=False)(FEAT, LABELS)
    assert loss.item() == pytest.approx(sum(softplus(gamma * (p - n)) for p, n in zip(d_pos, d_neg)) / 3, abs=1e-4)
    loss, _ = WeightedRegularizedTriplet(alpha=alpha, gamma=gamma, square=True)(FEAT, LABELS)
    sq = [softplus(gamma * (p - n) * abs(p - n)) for p, n in zip(d_pos, d_neg)]
    assert loss.item() == pytest.approx(sum(sq) / 3, abs=1e-4)
    # a violated anchor (positive further than negative) costs more than softplus(0) = ln 2
    bad = torch.tensor([[0.0], [3.0], [1.0]])
    loss_bad, correct = WeightedRegularizedTriplet(square=True)(bad, LABELS)
    assert loss_bad.item() > math.log(2) and correct < 3


def test_triplet_gradient_is_finite_on_duplicates():
    feat = torch.zeros(4, 3, requires_grad=True)  # identical features: sqrt at 0 must not give NaN
    loss, _ = build_triplet("adp")(feat, torch.tensor([0, 0, 1, 1]))
    loss.backward()
    assert torch.isfinite(feat.grad).all()
    with pytest.raises(ValueError):
        build_triplet("hard")


def test_cross_entropy_with_label_smoothing():
    logits = torch.log(torch.tensor([[1.0, 3.0]]))  # p = (1/4, 3/4)
    y = torch.tensor([1])
    assert CrossEntropyLabelSmooth(0.0)(logits, y).item() == pytest.approx(-math.log(0.75), abs=1e-6)
    eps = 0.1
    expected = (1 - eps) * -math.log(0.75) + eps * -(math.log(0.25) + math.log(0.75)) / 2
    assert CrossEntropyLabelSmooth(eps)(logits, y).item() == pytest.approx(expected, abs=1e-6)
