"""The options of a ReID training run (``ReIDTrainConfig``): network, batches, optimisation, losses,
augmentation, selection and runtime. The command line's ``dive reid train|run`` options are generated
from these fields; options left at "auto" (or unset) follow ``method``. Training itself:
``dive.reid.train``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from dive.reid import deen
from dive.reid.device import DEVICES, PRECISIONS, check_options
from dive.reid.model import ARCHS, ModelSpec
from dive.reid.pretrained import PRESET_CHOICES
from dive.reid.transforms import AugmentConfig

METHODS = ("agw", "caj", "deen")
#: options of --method deen only (unset: the published value)
DEEN_OPTIONS = ("deen_branches", "cpm_weight", "cpm_margin", "ort_weight")


def _or(value: float | None, default: float) -> float:
    return default if value is None else float(value)


@dataclass
class ReIDTrainConfig:
    """Every option of a ReID training run (the CLI's options are generated from these fields)."""

    out: Path | None = field(default=None, metadata={
        "help": "run folder; default runs/reid/<method>-seed<seed>"})
    force: bool = field(default=False, metadata={"help": "overwrite a run folder that already holds a run"})
    method: str = field(default="agw", metadata={
        "help": "recipe: agw (CE + WRT); caj (+ channel-augmented visible copies, ADP triplet); deen "
                "(DEE module after layer3 with 2 generated embeddings per image, CE + batch-hard triplet "
                "margin 0.3 + 0.8 CPM (margin 0.2) + 0.01 ORT; test feature: the pooled and BN-neck "
                "features of all 3 embeddings, L2-normalised and concatenated; published schedule: dive.reid.deen)",
        "choices": list(METHODS)})
    seed: int = field(default=0, metadata={"help": "seed of weights, batch order and augmentation"})
    preset: str = field(default="none", metadata={
        "help": "paper: AGW's published recipe (ResNet-50, 288x144, 8x4, 81 epochs; explicit options win)",
        "choices": list(PRESET_CHOICES)})
    pretrained: Path | None = field(default=None, metadata={
        "help": "ImageNet ResNet weights (.safetensors; torchvision, timm or transformers layout) for both stems and layer1-4"})
    # network
    arch: str = field(default="resnet18", metadata={"help": "backbone depth", "choices": list(ARCHS)})
    base_width: int = field(default=16, metadata={
        "help": "channels of the stem and layer1 (64 = standard ResNet; CPU default 16)"})
    last_stride: int = field(default=1, metadata={"help": "stride of layer4 (1: ReID convention)"})
    pool: str = field(default="gem", metadata={"help": "pooling: gem (generalized mean) or avg", "choices": ["gem", "avg"]})
    gem_p: float = field(default=3.0, metadata={"help": "GeM exponent p"})
    gem_learnable: bool = field(default=False, metadata={"help": "learn the GeM exponent"})
    height: int = field(default=128, metadata={"help": "input height (paper: 288)"})
    width: int = field(default=64, metadata={"help": "input width (paper: 144)"})
    # batches
    num_ids: int = field(default=8, metadata={"help": "P: identities per batch"})
    num_per_modality: int = field(default=4, metadata={"help": "K: images per identity and modality in a batch"})
    batches_per_epoch: int = field(default=100, metadata={
        "help": "batches per epoch; 0 = visible training images // (P*K) (AGW's epoch)"})
    epochs: int = field(default=18, metadata={"help": "training epochs (paper: 60)"})
    synthetic_share: float | None = field(default=None, metadata={
        "help": "share F in [0, 1] of each batch's P ids drawn from the expanded ids (those with synthetic "
                "images of a `dive export` set): round(F*P) of them, the rest from the real ids; unset: every "
                "id drawn alike"})
    # optimisation
    optimizer: str = field(default="sgd", metadata={"help": "sgd (momentum, nesterov) or adam", "choices": ["sgd", "adam"]})
    lr: float = field(default=0.1, metadata={"help": "peak learning rate (paper SGD: 0.1; adam: use ~3.5e-4)"})
    base_lr_mult: float = field(default=1.0, metadata={
        "help": "lr multiplier of the backbone (AGW uses 0.1 with ImageNet weights; 1 from scratch)"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum"})
    weight_decay: float = field(default=5e-4, metadata={"help": "weight decay"})
    warmup_epochs: float = field(default=2.0, metadata={"help": "linear warm-up length in epochs (paper: 10)"})
    lr_steps: tuple[int, ...] = field(default=(12, 16), metadata={
        "help": "epochs at which the lr is multiplied by lr_gamma (paper: 20 50)"})
    lr_gamma: float = field(default=0.1, metadata={"help": "step decay factor"})
    # losses
    label_smoothing: float = field(default=0.0, metadata={"help": "label smoothing of the cross-entropy (0: off)"})
    synthetic_weight: float = field(default=1.0, metadata={
        "help": "weight >= 0 of the synthetic images' loss terms (of a `dive export` set): their identity "
                "loss per image and the triplet terms they anchor (1: as real images; 0: no such terms)"})
    triplet: str = field(default="auto", metadata={
        "help": "triplet loss: wrt (AGW), adp (CAJ), batch-hard (DEEN), none; auto follows --method",
        "choices": ["auto", "wrt", "adp", "batch-hard", "none"]})
    triplet_weight: float = field(default=1.0, metadata={"help": "weight of the triplet term"})
    adp_alpha: float = field(default=1.0, metadata={"help": "ADP: scale of the distances in the softmax weights"})
    adp_gamma: float = field(default=1.0, metadata={"help": "ADP: scale of the gap inside the soft margin"})
    adp_square: bool = field(default=True, metadata={"help": "ADP: soft margin on the signed squared gap"})
    triplet_margin: float | None = field(default=None, metadata={
        "help": f"batch-hard triplet margin (unset: {deen.TRIPLET_MARGIN}, DEEN's)"})
    deen_branches: int | None = field(default=None, metadata={
        "help": f"DEEN: embeddings the DEE module generates per image (unset: {deen.BRANCHES}, published)"})
    cpm_weight: float | None = field(default=None, metadata={
        "help": f"DEEN: weight of the center-guided pair mining loss (unset: {deen.CPM_WEIGHT}, published)"})
    cpm_margin: float | None = field(default=None, metadata={
        "help": f"DEEN: margin of the center-guided pair mining loss (unset: {deen.CPM_MARGIN}, published)"})
    ort_weight: float | None = field(default=None, metadata={
        "help": f"DEEN: weight of the orthogonal loss between branches (unset: {deen.ORT_WEIGHT}, published)"})
    # augmentation
    pad: int = field(default=10, metadata={"help": "zero padding before the random crop (pixels)"})
    flip_p: float = field(default=0.5, metadata={"help": "horizontal flip probability"})
    erasing_p: float = field(default=0.5, metadata={"help": "random erasing probability"})
    channel_aug: bool | None = field(default=None, metadata={
        "help": "add CAJ channel-augmented visible copies to each batch (unset: on for caj)"})
    channel_gray_p: float = field(default=0.5, metadata={"help": "CAJ: grayscale probability in the 'keep' case"})
    channel_erasing_p: float = field(default=0.5, metadata={"help": "CAJ: channel-level random erasing probability"})
    # selection, logging, runtime
    select: str = field(default="last", metadata={
        "help": "weights kept: last epoch or best val Rank-1 (never the test set)", "choices": ["last", "best-val"]})
    val_every: int = field(default=0, metadata={
        "help": "evaluate on val every N epochs (0: only when --select best-val, then every epoch)"})
    val_trials: int = field(default=3, metadata={"help": "gallery trials of the val evaluation"})
    log_every: int = field(default=10, metadata={"help": "iterations between loss-log lines"})
    threads: int = field(default=1, metadata={
        "help": "torch CPU threads (0: torch's default). 1 by default: on 2 cores shared with another "
                "job, 2 threads ran 16x slower than 1; results are bitwise-reproducible per thread count"})
    deterministic: bool = field(default=True, metadata={"help": "torch.use_deterministic_algorithms during the run"})
    onednn: bool = field(default=True, metadata={
        "help": "CPU convolutions by oneDNN (--no-onednn: torch's own kernels, about half as fast); either "
                "gives the same bytes for the same seed and thread count, and other bytes than the other"})
    identity_key: str = field(default="dataset-pid", metadata={
        "help": "what makes an identity: dataset-pid (ids of different datasets stay apart) or pid",
        "choices": ["dataset-pid", "pid"]})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})
    device: str = field(default="auto", metadata={"help": "auto (cuda when present), cpu, cuda or mps",
                                                  "choices": list(DEVICES)})
    precision: str = field(default="fp32", metadata={
        "help": "fp32, or autocast in bf16 / fp16 (fp16 on cuda scales the loss)", "choices": list(PRECISIONS)})
    workers: int = field(default=0, metadata={
        "help": "DataLoader processes making the batches (0: in this process, from one seeded generator)"})

    def __post_init__(self) -> None:
        if self.out is not None:
            self.out = Path(self.out)
        if self.pretrained is not None:
            self.pretrained = Path(self.pretrained)
        check_options(self.device, self.precision, self.workers)
        self.lr_steps = tuple(int(s) for s in self.lr_steps)
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}; got {self.method!r}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1; got {self.epochs}")
        if self.select == "best-val" and self.val_every < 0:
            raise ValueError("val_every must be >= 0")
        if self.method != "deen":
            given = [f"--{k.replace('_', '-')}" for k in DEEN_OPTIONS if getattr(self, k) is not None]
            if given:
                raise ValueError(f"{', '.join(given)}: DEEN options; they apply to --method deen only")
        if self.triplet_margin is not None and self.triplet_kind != "batch-hard":
            raise ValueError("--triplet-margin applies to the batch-hard triplet "
                             "(--triplet batch-hard, or --method deen)")
        if self.deen_branches is not None and self.deen_branches < 1:
            raise ValueError(f"--deen-branches must be >= 1; got {self.deen_branches}")
        if self.synthetic_share is not None and not 0.0 <= float(self.synthetic_share) <= 1.0:
            raise ValueError(f"--synthetic-share must be in [0, 1] (a share of the batch's ids); "
                             f"got {self.synthetic_share}")
        if not 0.0 <= float(self.synthetic_weight) < math.inf:
            raise ValueError(f"--synthetic-weight must be a finite number >= 0; got {self.synthetic_weight}")

    # resolved "auto" options -------------------------------------------------------------------
    @property
    def triplet_kind(self) -> str:
        if self.triplet != "auto":
            return self.triplet
        return {"caj": "adp", "deen": "batch-hard"}.get(self.method, "wrt")

    @property
    def triplet_margin_value(self) -> float:
        return _or(self.triplet_margin, deen.TRIPLET_MARGIN)

    @property
    def dee_branches(self) -> int:
        """DEE branches of the network: 0 (no DEE) unless --method deen."""
        if self.method != "deen":
            return 0
        return deen.BRANCHES if self.deen_branches is None else int(self.deen_branches)

    def deen_recipe(self) -> dict:
        """The DEEN values in force (published ones for the options left unset)."""
        return {"branches": self.dee_branches, "cpm_weight": _or(self.cpm_weight, deen.CPM_WEIGHT),
                "cpm_margin": _or(self.cpm_margin, deen.CPM_MARGIN),
                "ort_weight": _or(self.ort_weight, deen.ORT_WEIGHT), "triplet_margin": self.triplet_margin_value}

    def resolved(self) -> dict:
        """The "auto" / unset options as this run resolves them (stored in config.json)."""
        out = {"triplet": self.triplet_kind, "channel_aug": self.use_channel_aug}
        if self.triplet_kind == "batch-hard":
            out["triplet_margin"] = self.triplet_margin_value
        if self.method == "deen":
            out["deen"] = self.deen_recipe()
        return out

    @property
    def uses_synthetic(self) -> bool:
        """True when --synthetic-share or --synthetic-weight leave their defaults (the run then needs to
        know which training images are synthetic)."""
        return self.synthetic_share is not None or float(self.synthetic_weight) != 1.0

    @property
    def use_channel_aug(self) -> bool:
        return self.method == "caj" if self.channel_aug is None else bool(self.channel_aug)

    @property
    def run_dir(self) -> Path:
        return self.out if self.out is not None else Path("runs/reid") / f"{self.method}-seed{self.seed}"

    def model_spec(self, num_classes: int) -> ModelSpec:
        return ModelSpec(num_classes=num_classes, arch=self.arch, base_width=self.base_width,
                         last_stride=self.last_stride, pool=self.pool, gem_p=self.gem_p,
                         gem_learnable=self.gem_learnable, height=self.height, width=self.width,
                         dee_branches=self.dee_branches)

    def augment(self) -> AugmentConfig:
        return AugmentConfig(pad=self.pad, flip_p=self.flip_p, erasing_p=self.erasing_p,
                             channel_gray_p=self.channel_gray_p, channel_erasing_p=self.channel_erasing_p)
