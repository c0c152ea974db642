"""Two-stream ResNet for visible-infrared ReID (the AGW / CAJ backbone), in plain torch modules.

Layout (AGW, Ye et al. 2021; CAJ, Ye et al. 2021, use the same network)::

    visible image  -> stem_visible  (conv 7x7/2 + BN + ReLU + max-pool) --\
                                                                        +-> layer1..layer4 (shared)
    infrared image -> stem_infrared (same shape, its own weights)     --/
        -> generalized-mean pooling (p = 3)  -> feature f          (triplet loss on f)
        -> BatchNorm1d "BN neck" (bias frozen at 0) -> feature g    (test feature)
        -> Linear without bias -> logits                            (cross-entropy)

DEEN (``dee_branches > 0``, ``dive.reid.deen.DEENReID``) inserts its embedding expansion between
layer3 and layer4 (``after_layer3``); everything else is this network.

Depth: ``resnet18`` / ``resnet34`` (basic blocks) or ``resnet50`` / ``resnet101`` (bottlenecks).
Width: ``base_width`` channels in the stem and layer1, doubled per stage (64 = torchvision's
ResNet; the CPU default of ``dive reid`` is 16). ``last_stride=1`` keeps layer4 at 1/16 of the input (the ReID
convention). The paper setting is ``arch="resnet50", base_width=64`` at 288x144.

Initialisation: Kaiming, with the last BN of each residual branch at zero (which trains better from
scratch). Published AGW / CAJ numbers start from ImageNet weights: ``dive.reid.pretrained`` copies a
ResNet's ImageNet weights (a .safetensors file the user supplies; nothing is downloaded) into both
stems and layer1..layer4 of a width-64 network; expect lower numbers from scratch on real data.
The stem and layer names follow torchvision's (``conv1``/``bn1`` -> ``stem_*.conv``/``stem_*.bn``,
``downsample`` -> ``shortcut``), so the mapping is one rename per tensor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

ARCHS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
}
MODALITIES = ("visible", "infrared")


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the network (stored with every checkpoint)."""

    num_classes: int
    arch: str = "resnet18"
    base_width: int = 16
    last_stride: int = 1
    pool: str = "gem"  # gem | avg
    gem_p: float = 3.0
    gem_learnable: bool = False
    height: int = 128  # input size the network is trained and tested at
    width: int = 64
    dee_branches: int = 0  # > 0: DEEN's embedding expansion after layer3 (dive.reid.deen)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; expected one of {', '.join(ARCHS)}")
        if self.pool not in ("gem", "avg"):
            raise ValueError(f"pool must be 'gem' or 'avg'; got {self.pool!r}")
        if self.base_width < 1 or self.num_classes < 1 or self.last_stride not in (1, 2):
            raise ValueError("base_width and num_classes must be >= 1 and last_stride 1 or 2")
        if self.height < 32 or self.width < 16:
            raise ValueError(f"input size {self.height}x{self.width} is too small (at least 32x16)")
        if self.dee_branches < 0:
            raise ValueError(f"dee_branches must be >= 0; got {self.dee_branches}")

    def to_dict(self) -> dict:
        d = asdict(self)
        if not self.dee_branches:  # the plain network's spec reads as it always has
            d.pop("dee_branches")
        return d


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class PointwiseConv(nn.Conv2d):
    """A 1x1 convolution (no padding). With a stride, while oneDNN runs the CPU convolutions, it
    convolves the subsampled input ``x[..., ::s, ::s]`` at stride 1: the same function (the weight
    gradient differs from the strided kernel's in rounding only), and it avoids oneDNN's strided
    1x1 backward, which writes out of bounds below 8 input channels on AVX2 (torch 2.13 with oneDNN
    3.12: "double free or corruption"). torch's own kernels (oneDNN off) and other devices take the
    ordinary strided path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sh, sw = self.stride
        if (sh, sw) != (1, 1) and x.device.type == "cpu" and torch.backends.mkldnn.enabled:
            return F.conv2d(x[:, :, ::sh, ::sw], self.weight, self.bias)
        return super().forward(x)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return PointwiseConv(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = conv3x3(cin, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (
            nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout else nn.Identity()
        )

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = conv1x1(cin, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride)  # stride on the 3x3 (the "ResNet v1.5" choice)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, cout)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = (
            nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout else nn.Identity()
        )

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + self.shortcut(x))


class Stem(nn.Module):
    """conv 7x7 stride 2 + BN + ReLU + max-pool 3x3 stride 2 (one copy per modality)."""

    def __init__(self, width: int):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn = nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu(self.bn(self.conv(x))), 3, stride=2, padding=1)


class GeneralizedMeanPool(nn.Module):
    """GeM: (mean over H, W of x^p)^(1/p), x clamped at eps; p = 1 is average pooling, p -> inf max."""

    def __init__(self, p: float = 3.0, learnable: bool = False, eps: float = 1e-6):
        super().__init__()
        p_t = torch.tensor(float(p))
        if learnable:
            self.p = nn.Parameter(p_t)
        else:
            self.register_buffer("p", p_t)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p
        return x.clamp(min=self.eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


def modality_mask(modality, n: int, device=None) -> torch.Tensor:
    """Bool (n,) mask, True = infrared, from a name ('visible' / 'infrared'), bools or 0/1 codes."""
    if isinstance(modality, str):
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}; got {modality!r}")
        return torch.full((n,), modality == "infrared", dtype=torch.bool, device=device)
    mask = torch.as_tensor(modality, device=device).to(torch.bool).reshape(-1)
    if mask.numel() != n:
        raise ValueError(f"modality mask has {mask.numel()} entries for a batch of {n}")
    return mask


class TwoStreamReID(nn.Module):
    """The two-stream network. ``forward(x, modality)``:

    * training mode: returns ``(feat, logits)``: ``feat`` = pooled feature before the BN neck
      (triplet loss), ``logits`` = classifier on the BN-neck feature (cross-entropy);
    * eval mode: returns the BN-neck feature (the test feature).

    ``modality``: ``"visible"`` / ``"infrared"`` for a one-modality batch, or a per-image bool
    mask (True = infrared) for a mixed batch; each image goes through its own modality's stem.
    """

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        kind, layers = ARCHS[spec.arch]
        block = BasicBlock if kind == "basic" else Bottleneck
        w = spec.base_width
        self.stem_visible = Stem(w)
        self.stem_infrared = Stem(w)
        cin = w
        stages = []
        for i, n in enumerate(layers):
            width = w * 2**i
            stride = 1 if i == 0 else (spec.last_stride if i == 3 else 2)
            blocks = []
            for j in range(n):
                blocks.append(block(cin, width, stride if j == 0 else 1))
                cin = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.feat_dim = cin
        self.pool = GeneralizedMeanPool(spec.gem_p, spec.gem_learnable) if spec.pool == "gem" else None
        self.bnneck = nn.BatchNorm1d(cin)
        self.bnneck.bias.requires_grad_(False)  # BN neck without shift (BoT / AGW)
        self.classifier = nn.Linear(cin, spec.num_classes, bias=False)
        self._init_weights()
        # channels-last convolutions take oneDNN's faster path on the CPU (~14% per training batch
        # here); only the memory layout changes, not the weights (checkpoints are saved contiguous)
        self.to(memory_format=torch.channels_last)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, (BasicBlock, Bottleneck)):
                nn.init.zeros_(m.last_bn.weight)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def stem(self, x: torch.Tensor, modality) -> torch.Tensor:
        mask = modality_mask(modality, x.shape[0], x.device)
        if bool(mask.all()):
            return self.stem_infrared(x)
        if not bool(mask.any()):
            return self.stem_visible(x)
        vis = self.stem_visible(x[~mask])
        ir = self.stem_infrared(x[mask])
        out = vis.new_empty((x.shape[0],) + vis.shape[1:])
        out[~mask] = vis
        out[mask] = ir
        return out

    def pooled(self, x: torch.Tensor, modality) -> torch.Tensor:
        y = self.stem(x.contiguous(memory_format=torch.channels_last), modality)
        y = y.contiguous(memory_format=torch.channels_last)  # a mixed batch's stem output is re-assembled
        y = self.layer4(self.after_layer3(self.layer3(self.layer2(self.layer1(y)))))
        return self.pool(y) if self.pool is not None else y.mean(dim=(2, 3))

    def after_layer3(self, y: torch.Tensor) -> torch.Tensor:
        """Hook between layer3 and layer4 (the plain network passes the maps on unchanged)."""
        return y

    def forward(self, x: torch.Tensor, modality="visible"):
        feat = self.pooled(x, modality)
        bn = self.bnneck(feat)
        if self.training:
            return feat, self.classifier(bn)
        return bn


def build_model(spec: ModelSpec) -> TwoStreamReID:
    """The network of `spec`: the two-stream ResNet, with DEEN's DEE module when ``dee_branches > 0``."""
    if spec.dee_branches > 0:
        from dive.reid.deen import DEENReID

        return DEENReID(spec)
    return TwoStreamReID(spec)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
