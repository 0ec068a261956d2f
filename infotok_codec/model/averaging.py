"""An exponential moving average of a model's weights (Polyak averaging) for long training runs.

A run whose learning rate is still high carries the noise of its last steps in its weights; the
average of the recent weights sits nearer the basin's floor. So a long schedule, resumed across
sessions, can be checkpointed and shipped at any point from its average instead of waiting for
the rate to decay (the campaign's runs are spread over sessions of a few hours each).
"""

from __future__ import annotations

import copy
from typing import Generic, TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


class WeightAverage(Generic[M]):
    """`average ← decay · average + (1 − decay) · weights` after every step, on a copy of the
    model (float tensors; other buffers are copied as they are)."""

    def __init__(self, model: M, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"weight-average decay {decay} is not in (0, 1)")
        self.decay = decay
        self.model: M = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        pairs = zip(self.model.state_dict().values(), model.state_dict().values(), strict=True)
        for average, current in pairs:
            if average.is_floating_point():
                average.lerp_(current.detach(), 1 - self.decay)
            else:
                average.copy_(current)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)
