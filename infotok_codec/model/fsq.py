"""Finite scalar quantization (FSQ, Mentzer et al. 2023) with symmetric code/index maps.

A code is a vector of `len(levels)` digits, each on a uniform grid in [-1, 1]; every level set
used here contains 0, so the all-zero code is a real code: the tokenizer uses it (plus a learned
"dropped" flag) for positions the router did not keep.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

DEFAULT_LEVELS = (8, 8, 8, 5, 5, 5)


class FSQ(nn.Module):
    """Quantizes `(..., D)` floats to codes on a per-digit grid; D = len(levels)."""

    basis: torch.Tensor
    half_width: torch.Tensor

    def __init__(self, levels: Sequence[int] = DEFAULT_LEVELS) -> None:
        super().__init__()
        self.levels = tuple(int(v) for v in levels)
        levels_t = torch.tensor(self.levels, dtype=torch.int64)
        basis = torch.cumprod(torch.tensor((1, *self.levels[:-1]), dtype=torch.int64), dim=0)
        # Buffers are not persistent: they follow from `levels`, which travels in the config.
        self.register_buffer("basis", basis, persistent=False)
        self.register_buffer("half_width", (levels_t // 2).to(torch.float32), persistent=False)

    @property
    def dim(self) -> int:
        return len(self.levels)

    @property
    def codebook_size(self) -> int:
        return int(torch.tensor(self.levels).prod().item())

    @property
    def zero_index(self) -> int:
        """Index of the all-zero code."""
        return int(self.codes_to_indices(torch.zeros(self.dim)).item())

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """Squash `z` so rounding lands on the grid: (L-1)/2 steps each side, shifted for even L."""
        levels = torch.tensor(self.levels, dtype=z.dtype, device=z.device)
        eps = 1e-3
        half_l = (levels - 1) * (1 + eps) / 2
        offset = torch.where(levels % 2 == 0, 0.5, 0.0).to(z.dtype)
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """`(..., D)` float → `(..., D)` codes in [-1, 1], straight-through gradient."""
        bounded = self.bound(z)
        quantized = bounded + (torch.round(bounded) - bounded).detach()
        return quantized / self.half_width.to(z.dtype)

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """`(..., D)` codes → `(...)` int64 indices in [0, K)."""
        digits = torch.round(codes.float() * self.half_width + self.half_width).long()
        return (digits * self.basis).sum(dim=-1)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """`(...)` int64 indices in [0, K) → `(..., D)` float codes in [-1, 1]."""
        levels = torch.tensor(self.levels, dtype=torch.int64, device=indices.device)
        digits = (indices.long().unsqueeze(-1) // self.basis) % levels
        return (digits.float() - self.half_width) / self.half_width
