"""LoRA helpers: the infrared adapter's switches and the merged training forward.

The infrared adapter: a second UNet LoRA that is on for images of infrared cameras only.

Why: the paper's single LoRA must learn "draw this identity token in infrared" as an interaction
between the camera token and the identity token. SD 1.5 is deep enough to compose the two; the
tiny base's one-layer blocks are not, and a LoRA shared with visible images learned one infrared
figure for everyone (docs/infrared-identity.md). A LoRA switched on by the camera's
modality has no interaction to learn: it only turns what the base draws from a visible-learned
token into infrared.

Two ways to switch it, both exact:
- training and previews mix modalities in one batch: `AdapterGate` multiplies the adapter's
  `lora_B` outputs by a per-image 0/1 mask (one forward, so DDP and gradient accumulation see a
  normal step);
- generation renders one modality at a time: `MergedAdapters` writes base + the wanted LoRAs into
  the weights (sampling then costs what the base costs), restoring the base weights from a
  snapshot before each switch so the weights of a modality are always the same bits.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch


def _lora_layers(model: torch.nn.Module, adapter: str) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(getattr(m, "lora_B", None), torch.nn.ModuleDict) and adapter in m.lora_B]


class AdapterGate:
    """Per-image on/off switch of one peft adapter inside mixed batches (see the module docstring).

    The mask has one entry per image; a batch that classifier-free guidance doubled
    ([unconditional, conditional]) gets the mask tiled, so an image's two branches agree.
    `adapter` names the peft adapter to switch (DiVE's: `dive.checkpoint.INFRARED_ADAPTER`).
    """

    def __init__(self, model: torch.nn.Module, adapter: str):
        self.mask: torch.Tensor | None = None
        layers = _lora_layers(model, adapter)
        if not layers:
            raise ValueError(f"the model has no LoRA adapter named {adapter!r}")
        for m in layers:
            m.lora_B[adapter].register_forward_hook(self._hook)

    def _hook(self, module, inputs, output: torch.Tensor) -> torch.Tensor:
        if self.mask is None:
            raise RuntimeError("the adapter gate was not set for this forward pass; wrap it in `gate.images(mask)`")
        mask = self.mask.to(output.device, output.dtype)
        if output.shape[0] != mask.shape[0]:
            if output.shape[0] % mask.shape[0]:
                raise RuntimeError(f"adapter gate: a batch of {output.shape[0]} for a mask of {mask.shape[0]} images")
            mask = mask.repeat(output.shape[0] // mask.shape[0])
        return output * mask.view(-1, *([1] * (output.ndim - 1)))

    @contextmanager
    def images(self, mask: Sequence[bool] | torch.Tensor) -> Iterator[None]:
        """The adapter is on for the images where `mask` is true, inside this block only."""
        self.mask = torch.as_tensor(mask, dtype=torch.float32).flatten()
        try:
            yield
        finally:
            self.mask = None


class MergedAdapters:
    """Merge a chosen set of a model's peft adapters into its weights, switchable exactly.

    `use(names)` restores the base weights from a snapshot (taken at the first call) and merges
    `names` in that order, so the weights for a given set are bitwise the same however often one
    switches (merging and unmerging by subtraction would drift by float rounding)."""

    def __init__(self, model: torch.nn.Module, adapters: Sequence[str]):
        self.layers = _lora_layers(model, adapters[0])
        for name in adapters[1:]:
            if _lora_layers(model, name) != self.layers:
                raise ValueError(f"adapters {list(adapters)} do not sit on the same layers")
        self._snapshot: list[torch.Tensor] | None = None
        self.current: tuple[str, ...] | None = None

    def use(self, names: Sequence[str]) -> None:
        names = tuple(names)
        if not names:
            raise ValueError("merge at least one adapter (peft applies unmerged active adapters on the fly)")
        if names == self.current:
            return
        if self._snapshot is None:
            self._snapshot = [m.get_base_layer().weight.detach().to("cpu", copy=True) for m in self.layers]
        with torch.no_grad():
            for m, w in zip(self.layers, self._snapshot):
                m.get_base_layer().weight.copy_(w)
                m.merged_adapters.clear()
                m.merge(adapter_names=list(names))
        self.current = names


class MergedLoRAForward:
    """Each peft LoRA `Linear` of a model computed as one matmul with the adapters folded in.

    peft computes ``x W^T + s (x A^T) B^T``: three matmuls over every token, and at the tiny base's
    widths (64-192 channels, rank 32) the two thin ones cost about as much as the base one. This
    computes ``x (W + s B A)^T`` instead, the sum formed each call with autograd through A and B, so
    the same function and the same trainable parameters (checkpoints unchanged), in one matmul per
    token plus a weight-sized product. Floats round differently, nothing else (tested).

    Adapters named in `skip` (the infrared adapter, switched per image by `AdapterGate`), adapters
    with dropout or a peft variant (DoRA...), and layers that peft has merged (`merge()`, as
    previews do) or disabled keep peft's own forward. `off()` restores peft's forward for a block
    (`dive train-bench`'s reference loop); `remove()` for good."""

    def __init__(self, model: torch.nn.Module, skip: Sequence[str] = ()):
        from peft.tuners.lora.layer import Linear as LoraLinear

        self.skip = frozenset(skip)
        self.layers = [m for m in model.modules() if isinstance(m, LoraLinear)]
        self.enabled = True
        for m in self.layers:
            m.forward = self._bind(m)

    def _bind(self, layer):
        def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            return self._forward(layer, x, *args, **kwargs)
        return forward

    def _forward(self, layer, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        peft_forward = type(layer).forward
        if not self.enabled or layer.merged or layer.disable_adapters or args or kwargs:
            return peft_forward(layer, x, *args, **kwargs)
        base = layer.base_layer
        weight, unmerged = base.weight, []
        for name in layer.active_adapters:
            if name not in layer.lora_A:
                continue
            if (name in self.skip or name in layer.lora_variant
                    or not isinstance(layer.lora_dropout[name], torch.nn.Identity)):
                unmerged.append(name)
                continue
            delta = (layer.lora_B[name].weight @ layer.lora_A[name].weight) * layer.scaling[name]
            weight = weight + delta.to(weight.dtype)
        out = torch.nn.functional.linear(x, weight, base.bias)
        dtype = out.dtype
        for name in unmerged:  # peft's own term, hooks (the gate) included
            a = layer.lora_A[name]
            out = out + layer.lora_B[name](a(layer.lora_dropout[name](x.to(a.weight.dtype)))) * layer.scaling[name]
        return out.to(dtype)

    @contextmanager
    def off(self) -> Iterator[None]:
        prev, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = prev

    def remove(self) -> None:
        for m in self.layers:
            if "forward" in m.__dict__:
                del m.forward
        self.layers = []
