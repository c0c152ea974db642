"""The infrared adapter: a second UNet LoRA that is on for images of infrared cameras only.

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
