"""Exponential moving average of a model's weights (used for validation and export when enabled)."""

from __future__ import annotations

import copy
from typing import TypeVar

import torch
from torch import nn

ModuleT = TypeVar("ModuleT", bound=nn.Module)


class WeightAverage:
    """Keeps `shadow = decay * shadow + (1 - decay) * weights` for every floating-point tensor.

    Non-float buffers (none in DIC) are copied. The shadow lives on the model's device in float32.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.shadow = {name: value.detach().clone().float() for name, value in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend the current weights into the average (call after each optimiser step)."""
        for name, value in model.state_dict().items():
            average = self.shadow[name]
            if average.is_floating_point():
                average.lerp_(value.detach().float(), 1.0 - self.decay)
            else:
                average.copy_(value)

    def averaged_copy(self, model: ModuleT) -> ModuleT:
        """A frozen copy of `model` holding the averaged weights (the model itself is unchanged)."""
        averaged = copy.deepcopy(model)
        averaged.load_state_dict(self.shadow)
        return averaged.eval().requires_grad_(False)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) ^ set(state)
        if missing:
            raise ValueError(f"EMA state does not match the model: {sorted(missing)[:5]}")
        for name, value in state.items():
            self.shadow[name].copy_(value)
