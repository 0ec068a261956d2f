"""The causal convolutional encoder and decoder (Cosmos DV4x8x8 geometry, CPU-sized).

Video `(B, 3, T, H, W)` in [-1, 1] with T % 4 == 0 and H, W % 8 == 0 maps to features
`(B, C, T/4, H/8, W/8)` and back. Cost is kept low by a pixel-unshuffle patch in front (2× time,
4× space, lossless) and by factorised convolutions: a 3×3 spatial conv applied to each frame
(as a 1×3×3 Conv3d on channels-last activations, or frame by frame; `conv_layout`) and a
kernel-3 temporal conv padded on the past side only.
The convolutions are causal in time, as Cosmos's; the GroupNorm statistics are not: they span the
whole chunk. A codec that decodes whole chunks loses nothing by it, so the shipped model keeps it;
a streaming decoder would need per-frame normalisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def space_time_unshuffle(x: torch.Tensor, t: int, s: int) -> torch.Tensor:
    """`(B, C, T, H, W)` → `(B, C·t·s·s, T/t, H/s, W/s)`, lossless, in the conv layout."""
    b, c, tt, h, w = x.shape
    x = x.reshape(b, c, tt // t, t, h // s, s, w // s, s)
    if by_frame(x):
        x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)
        return x.reshape(b, c * t * s * s, tt // t, h // s, w // s)
    x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)
    return x.reshape(b, tt // t, h // s, w // s, c * t * s * s).permute(0, 4, 1, 2, 3)


def space_time_shuffle(x: torch.Tensor, t: int, s: int) -> torch.Tensor:
    """Inverse of `space_time_unshuffle`, in the conv layout."""
    b, c, tt, h, w = x.shape
    c0 = c // (t * s * s)
    x = x.reshape(b, c0, t, s, s, tt, h, w)
    if by_frame(x):
        x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)
        return x.reshape(b, c0, tt * t, h * s, w * s)
    x = x.permute(0, 5, 2, 6, 3, 7, 4, 1)
    return x.reshape(b, tt * t, h * s, w * s, c0).permute(0, 4, 1, 2, 3)


def conv_layout(x: torch.Tensor) -> torch.Tensor:
    """`x` `(B, C, T, H, W)` in the memory layout the conv stacks run in (a copy unless it is).

    Batched activations are channels-last ((B, T, H, W, C) in memory): oneDNN's convolutions
    read it without reordering, the 3×3 spatial conv runs as one 1×3×3 Conv3d with no
    transposes, and a frame's pixels come out contiguous. Measured on 2 threads, bf16, 256×256
    chunks (`benchmarks/tokenizer_quality.py`, three interleaved runs against frames-first
    Conv2d with transposes): decode 48.7–55.7 → 58.9–66.5 frames/s, `elbo` encode 20.3–23.0 →
    24.7–26.3. Activations that run a frame at a time (`by_frame`) stay frames-first: there,
    frame slices of the channels-last layout fell to PyTorch's slow Conv3d and strided norm
    statistics (1.5–2× slower at 512×512 tiles). Each conv stage's input is put in its own
    layout, since a stage can fall on the other side of `BY_FRAME_ABOVE` than the one before
    (the encoder's second stage at a 512×384 tile)."""
    if by_frame(x):
        return x.contiguous()
    return x.contiguous(memory_format=torch.channels_last_3d)


BY_FRAME_ABOVE = 1 << 22
"""Activations of at least this many values per clip (16 MB; a 512×512 tile's, not a 256×256
chunk's) run a frame at a time when there is no autograd: the per-frame working set stays in
cache and two whole activations are held instead of five. Measured on 2 cores at 1080p
(`benchmarks/speed_large.py`): decode 1.16× and encode 1.10× faster, peak memory 1.35 → 1.09 GB;
256×256 chunks ran 17% slower that way, so they stay batched."""


def by_frame(x: torch.Tensor) -> bool:
    return not torch.is_grad_enabled() and x[0].numel() >= BY_FRAME_ABOVE


class SpatialConv(nn.Module):
    """3×3 conv applied to every frame independently: a Conv2d's weights, run as a 1×3×3
    Conv3d on batched (channels-last) activations and as the Conv2d frame by frame."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        # The padding mode serves the frame-by-frame path; the batched path pads alike by hand.
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, padding_mode="replicate")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not by_frame(x):
            padded = F.pad(x, (1, 1, 1, 1, 0, 0), mode="replicate")
            return F.conv3d(padded, self.conv.weight.unsqueeze(2), self.conv.bias)
        b, _, t, h, w = x.shape
        # Straight into a (B, C, T, H, W) tensor: no copy into frame order and back.
        y = x.new_empty(b, self.conv.out_channels, t, h, w)
        for i in range(t):
            y[:, :, i] = self.conv(x[:, :, i])
        return y


class CausalTemporalConv(nn.Module):
    """Kernel-3 conv along time, padded with the first frame on the past side only."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, (3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 0, 0, 0, 2, 0), mode="replicate"))


def group_norm_affine(norm: nn.GroupNorm, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`norm(x)` as a per-channel `x * scale + shift` (each `(B, C, 1, 1)`), so that it can be
    applied to one frame of `x` `(B, C, T, H, W)` at a time."""
    b, c = x.shape[:2]
    groups = norm.num_groups
    var, mean = torch.var_mean(x.reshape(b, groups, -1), dim=2, correction=0)
    rstd = torch.rsqrt(var + norm.eps).repeat_interleave(c // groups, dim=1)
    scale = rstd * norm.weight
    shift = norm.bias - mean.repeat_interleave(c // groups, dim=1) * scale
    return scale[:, :, None, None], shift[:, :, None, None]


class ResBlock(nn.Module):
    """Pre-norm residual block: GroupNorm, SiLU, spatial conv, GroupNorm, SiLU, temporal conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(8, channels)
        self.spatial = SpatialConv(channels, channels)
        self.norm2 = nn.GroupNorm(8, channels)
        self.temporal = CausalTemporalConv(channels)
        # Zero-initialised last layer: every block starts as the identity, which trains faster.
        nn.init.zeros_(self.temporal.conv.weight)
        if self.temporal.conv.bias is not None:
            nn.init.zeros_(self.temporal.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if by_frame(x):
            return self._forward_by_frame(x)
        h = self.spatial(F.silu(self.norm1(x)))
        h = self.temporal(F.silu(self.norm2(h)))
        return x + h

    def _forward_by_frame(self, x: torch.Tensor) -> torch.Tensor:
        """The same block without autograd, a frame at a time from the norms' whole-chunk
        statistics, adding into `x` in place (which it returns): it holds `x` and the spatial
        conv's output where the batched form holds five activations (`BY_FRAME_ABOVE`)."""
        scale, shift = group_norm_affine(self.norm1, x)
        h = torch.empty_like(x)
        for i in range(x.shape[2]):
            h[:, :, i] = self.spatial.conv(F.silu(x[:, :, i] * scale + shift, inplace=True))
        scale, shift = group_norm_affine(self.norm2, h)
        normed: dict[int, torch.Tensor] = {}
        for i in range(x.shape[2]):
            normed[i] = F.silu(h[:, :, i] * scale + shift, inplace=True)
            normed.pop(i - 3, None)
            past = torch.stack([normed[max(i - 2, 0)], normed[max(i - 1, 0)], normed[i]], dim=2)
            x[:, :, i : i + 1] += self.temporal.conv(past)
        return x


class ConvEncoder(nn.Module):
    """`(B, 3, T, H, W)` in [-1, 1] → `(B, out_channels, T/4, H/8, W/8)`."""

    def __init__(self, c1: int, c2: int, blocks1: int, blocks2: int, out_channels: int) -> None:
        super().__init__()
        self.conv_in = SpatialConv(3 * 2 * 4 * 4, c1)
        self.stage1 = nn.Sequential(*[ResBlock(c1) for _ in range(blocks1)])
        self.down = nn.Conv3d(c1 * 8, c2, 1)
        self.stage2 = nn.Sequential(*[ResBlock(c2) for _ in range(blocks2)])
        self.norm_out = nn.GroupNorm(8, c2)
        self.conv_out = nn.Conv3d(c2, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stage1(conv_layout(self.conv_in(space_time_unshuffle(x, 2, 4))))
        h = self.stage2(conv_layout(self.down(space_time_unshuffle(h, 2, 2))))
        return self.conv_out(F.silu(self.norm_out(h)))


class ConvDecoder(nn.Module):
    """`(B, in_channels, T/4, H/8, W/8)` → `(B, 3, T, H, W)`, roughly in [-1, 1]."""

    def __init__(self, c1: int, c2: int, blocks1: int, blocks2: int, in_channels: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv3d(in_channels, c2, 1)
        self.stage2 = nn.Sequential(*[ResBlock(c2) for _ in range(blocks2)])
        self.up = nn.Conv3d(c2, c1 * 8, 1)
        self.stage1 = nn.Sequential(*[ResBlock(c1) for _ in range(blocks1)])
        self.norm_out = nn.GroupNorm(8, c1)
        self.conv_out = SpatialConv(c1, 3 * 2 * 4 * 4)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.stage2(conv_layout(self.conv_in(conv_layout(z))))
        h = self.stage1(conv_layout(space_time_shuffle(self.up(h), 2, 2)))
        return space_time_shuffle(self.conv_out(F.silu(self.norm_out(h))), 2, 4)
