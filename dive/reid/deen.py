"""DEEN as ``--method deen``: the Diverse Embedding Expansion network of Zhang & Wang, "Diverse
Embedding Expansion Network and Low-Light Cross-Modality Benchmark for Visible-Infrared Person
Re-identification" (CVPR 2023), the method published with the LLCM benchmark.

Network: our two-stream ResNet (``dive.reid.model``: modality-specific stems, shared layer1..4,
GeM or average pooling, BN neck, classifier) with the DEE module between layer3 and layer4, where
the published code puts it (after stage 3, for LLCM and SYSU-MM01). DEE has N branches (published
N = 2). Branch b takes the layer3 maps x (C channels) through three 3x3 convolutions with dilation
1, 2 and 3 (C -> C/4 channels each, no bias), averages them, applies ReLU and a 1x1 convolution
back to C channels (with bias). The module returns [x, branch_1(x), ..., branch_N(x)] stacked
along the batch axis (N + 1 times the batch) after dropout with p = 0.01, so layer4, the pooling,
the BN neck and the classifier run on the original and every generated embedding with the same
weights. Any ``--arch`` / ``--base-width`` works: C is layer3's width (1024 for ResNet-50 at width
64, as published; C/4 is at least 1). The DEE convolutions start from Kaiming-normal weights
(fan-in) and zero biases; ``--pretrained`` fills the stems and layer1-4 only.

Loss (published weights, ``dive.reid.losses``)::

    L = L_id + L_tri + 0.8 * sum_b CPM(original, generated_b) + 0.01 * ORT

* L_id: cross-entropy on the logits of all (N + 1) x batch embeddings, each labelled with its
  image's identity; L_tri: the batch-hard triplet (margin 0.3) on all their pooled features;
* CPM (center-guided pair mining, margin 0.2): per identity centers of the original and of each
  generated embedding, per modality; a generated center of one modality is pulled towards the
  original center of the other modality past its own modality's original center, and inside the
  nearest other identity (``center_pair_mining_loss``);
* ORT (orthogonality): the per-image inner products between the generated embeddings' pooled
  features, summed and divided by the expanded batch size (``orthogonal_loss``).

The log's ``loss_cpm`` / ``loss_ort`` are the unweighted terms; ``--cpm-weight``, ``--cpm-margin``,
``--ort-weight``, ``--deen-branches`` and ``--triplet-margin`` change the published values.

Testing: the published test sums, over the N + 1 embeddings, the cosine similarities of the
L2-normalised pooled feature and of the L2-normalised BN-neck feature. The eval-mode network
returns the concatenation of those 2 (N + 1) unit vectors (``feat_dim`` = 2 (N + 1) C values per
image): its cosine similarity is that sum divided by 2 (N + 1), so the ranking is the published one.

Published schedule (LLCM and SYSU-MM01): ImageNet ResNet-50, 384x144 inputs, 6 identities x 4
images per modality, SGD lr 0.1 (backbone 0.01), 10 warm-up epochs, x0.1 at epochs 20 and 80,
epochs 0..150, average pooling. Here::

    dive reid train --method deen --pretrained resnet50.safetensors --arch resnet50 --base-width 64 \\
        --height 384 --width 144 --num-ids 6 --num-per-modality 4 --batches-per-epoch 0 --epochs 151 \\
        --warmup-epochs 10 --lr-steps 20 80 --base-lr-mult 0.1 --pool avg

Not included: the published network's MFA (multistage feature aggregation) blocks after layers
1-3, and its RegDB variant (DEE after layer2, no layer4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from dive.reid.losses import center_pair_mining_loss, orthogonal_loss
from dive.reid.model import ModelSpec, TwoStreamReID

#: the published recipe
BRANCHES = 2
CPM_WEIGHT = 0.8
CPM_MARGIN = 0.2
ORT_WEIGHT = 0.01
TRIPLET_MARGIN = 0.3
DEE_DROPOUT = 0.01
DILATIONS = (1, 2, 3)


class DEEBranch(nn.Module):
    """One generated embedding: mean of three dilated 3x3 convs (C -> C/4), ReLU, 1x1 conv back to C."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.dilated = nn.ModuleList(
            nn.Conv2d(channels, hidden, 3, padding=d, dilation=d, bias=False) for d in DILATIONS)
        self.project = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dilated[0](x)
        for conv in self.dilated[1:]:
            h = h + conv(x)
        return self.project(F.relu(h / len(self.dilated)))


class DEEModule(nn.Module):
    """Diverse embedding expansion: ``(B, C, H, W) -> ((N + 1) B, C, H, W)``, the input first."""

    def __init__(self, channels: int, branches: int = BRANCHES, dropout: float = DEE_DROPOUT):
        super().__init__()
        if channels < 1 or branches < 1:
            raise ValueError(f"DEE needs channels >= 1 and branches >= 1; got {channels} and {branches}")
        hidden = max(1, channels // 4)
        self.branches = nn.ModuleList(DEEBranch(channels, hidden) for _ in range(branches))
        self.dropout = nn.Dropout(dropout)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(torch.cat([x] + [b(x) for b in self.branches], dim=0))


class DEENReID(TwoStreamReID):
    """The two-stream network with DEE after layer3 (``spec.dee_branches`` = N branches).

    * training mode: ``forward`` returns ``(feat, logits)`` for the (N + 1) B embeddings, the
      original batch first, then each branch's (row ``e * B + i`` is image i's embedding e);
    * eval mode: the test feature, (B, ``feat_dim``) = the concatenation over the embeddings of
      the L2-normalised pooled and BN-neck features (see the module docstring).

    ``pooled`` returns the (N + 1) B pooled features in both modes; ``embed_dim`` is one
    embedding's length (the BN neck's width).
    """

    def __init__(self, spec: ModelSpec):
        if spec.dee_branches < 1:
            raise ValueError(f"DEEN needs dee_branches >= 1; got {spec.dee_branches}")
        super().__init__(spec)
        channels = self.layer4[0].conv1.in_channels  # layer3's output width
        self.dee = DEEModule(channels, spec.dee_branches)
        self.dee.to(memory_format=torch.channels_last)
        self.num_embeddings = spec.dee_branches + 1
        self.embed_dim = self.feat_dim
        self.feat_dim = 2 * self.num_embeddings * self.embed_dim

    def after_layer3(self, y: torch.Tensor) -> torch.Tensor:
        return self.dee(y)

    def test_feature(self, feat: torch.Tensor, bn: torch.Tensor) -> torch.Tensor:
        n = feat.shape[0] // self.num_embeddings
        parts = []
        for e in range(self.num_embeddings):
            rows = slice(e * n, (e + 1) * n)
            parts += [F.normalize(feat[rows], dim=1), F.normalize(bn[rows], dim=1)]
        return torch.cat(parts, dim=1)

    def forward(self, x: torch.Tensor, modality="visible"):
        feat = self.pooled(x, modality)
        bn = self.bnneck(feat)
        if self.training:
            return feat, self.classifier(bn)
        return self.test_feature(feat, bn)


@dataclass
class DEENStep:
    """The losses of one batch (unweighted terms) and the labels of the expanded batch."""

    loss: torch.Tensor
    loss_id: torch.Tensor
    loss_tri: torch.Tensor
    loss_cpm: torch.Tensor
    loss_ort: torch.Tensor
    correct: int
    labels: torch.Tensor


class DEENObjective:
    """``L_id + triplet_weight * L_tri + cpm_weight * sum_b CPM_b + ort_weight * ORT`` on one batch.

    `ce` maps (logits, labels) to a loss; `triplet` maps (feat, labels) to (loss, correct), or is
    None (no triplet term)."""

    def __init__(self, branches: int, ce: Callable, triplet: Callable | None, triplet_weight: float = 1.0,
                 cpm_weight: float = CPM_WEIGHT, cpm_margin: float = CPM_MARGIN, ort_weight: float = ORT_WEIGHT):
        self.branches, self.ce, self.triplet = int(branches), ce, triplet
        self.triplet_weight, self.cpm_weight = float(triplet_weight), float(cpm_weight)
        self.cpm_margin, self.ort_weight = float(cpm_margin), float(ort_weight)

    def __call__(self, feat: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
                 infrared: torch.Tensor) -> DEENStep:
        n, k = labels.shape[0], self.branches + 1
        if feat.shape[0] != k * n or logits.shape[0] != k * n:
            raise ValueError(f"DEEN expects {k} x {n} embeddings for a batch of {n} images; "
                             f"got {feat.shape[0]} features and {logits.shape[0]} logits")
        y = labels.repeat(k)
        loss_id = self.ce(logits, y)
        if self.triplet is not None:
            loss_tri, correct = self.triplet(feat, y)
        else:
            loss_tri, correct = logits.sum() * 0.0, 0
        original, *generated = feat.split(n)
        loss_cpm = center_pair_mining_loss(original, generated[0], labels, infrared, self.cpm_margin)
        for g in generated[1:]:
            loss_cpm = loss_cpm + center_pair_mining_loss(original, g, labels, infrared, self.cpm_margin)
        loss_ort = orthogonal_loss(generated)
        loss = (loss_id + self.triplet_weight * loss_tri + self.cpm_weight * loss_cpm
                + self.ort_weight * loss_ort)
        return DEENStep(loss, loss_id, loss_tri, loss_cpm, loss_ort, correct, y)
