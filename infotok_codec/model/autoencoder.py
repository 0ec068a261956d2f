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

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def depth_first_unshuffle(x: torch.Tensor, t: int, s: int) -> torch.Tensor:
    """`(B, C, T, H, W)` → `(B, t·s·s·C, T/t, H/s, W/s)`, lossless, channels-last, each
    t×s×s cell's values in (t, s, s, C) order.

    The weights were trained with the channels in (C, t, s, s) order; the conv on either side
    of a shuffle takes or makes its channels in this order by indexing its weights
    (`depth_first_order`). On channels-last activations each output pixel is then t·s·s runs
    of C contiguous values, where (C, t, s, s) gathers every value alone. bf16, 2 threads, a
    512×512 tile: the encoder's stage-2 unshuffle 98–192 → 8 ms and its input's 67 → 39 ms
    (float32), the decoder's two shuffles 18–26 → 6 ms and 44 → 10 ms."""
    b, c, tt, h, w = x.shape
    x = x.permute(0, 2, 3, 4, 1).reshape(b, tt // t, t, h // s, s, w // s, s, c)
    x = x.permute(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(b, tt // t, h // s, w // s, t * s * s * c).permute(0, 4, 1, 2, 3)


def depth_first_shuffle(x: torch.Tensor, t: int, s: int) -> torch.Tensor:
    """Inverse of `depth_first_unshuffle`, channels-last."""
    b, c, tt, h, w = x.shape
    c0 = c // (t * s * s)
    x = x.permute(0, 2, 3, 4, 1).reshape(b, tt, h, w, t, s, s, c0)
    x = x.permute(0, 1, 4, 2, 5, 3, 6, 7)
    return x.reshape(b, tt * t, h * s, w * s, c0).permute(0, 4, 1, 2, 3)


@functools.cache
def depth_first_order(channels: int, t: int, s: int) -> torch.Tensor:
    """Index of each depth-first channel (t, s, s, C) in the (C, t, s, s) order the weights
    were trained in."""
    return torch.arange(channels * t * s * s).reshape(channels, t * s * s).t().reshape(-1)


def conv_layout(x: torch.Tensor) -> torch.Tensor:
    """`x` `(B, C, T, H, W)` channels-last ((B, T, H, W, C) in memory; a copy unless it is).

    oneDNN's convolutions read this layout without reordering: batched, the 3×3 spatial conv
    runs as one 1×3×3 Conv3d with no transposes; a frame at a time (`by_frame`), each frame
    `x[:, :, i]` is a channels-last `(B, C, H, W)` image for a Conv2d, and the temporal conv is
    one matrix product over the pixels. Measured on 2 threads, bf16: at 256×256 chunks
    (`benchmarks/tokenizer_quality.py`, three interleaved runs against frames-first Conv2d with
    transposes) decode 48.7–55.7 → 58.9–66.5 frames/s, `elbo` encode 20.3–23.0 → 24.7–26.3; on
    one 128×128 frame of 96 channels, a 3×3 Conv2d ran 11.3 ms frames-first and 4.8 ms
    channels-last, and the temporal conv 11.0 ms as a Conv3d and 3.0 ms as a matrix product."""
    return x.contiguous(memory_format=torch.channels_last_3d)


BY_FRAME_ABOVE = 1 << 22
"""Activations of at least this many values per clip (16 MB; a 512×512 tile's, not a 256×256
chunk's) run a frame at a time when there is no autograd: the per-frame working set stays in
cache and two whole activations are held instead of five. Measured on 2 cores at 1080p
(`benchmarks/speed_large.py`): decode 1.16× and encode 1.10× faster, peak memory 1.35 → 1.09 GB;
256×256 chunks ran 17% slower that way, so they stay batched."""


def by_frame(x: torch.Tensor) -> bool:
    return not torch.is_grad_enabled() and x[0].numel() >= BY_FRAME_ABOVE


def by_products(x: torch.Tensor) -> bool:
    """Whether the temporal conv runs as matrix products (`CausalTemporalConv`): on the CPU in
    float32 without autograd. oneDNN's kernel-(3, 1, 1) Conv3d ran at a third to a half of the
    matrix-product rate there (one thread, AVX2: a 96-channel 8×64×64 activation, a 256×256
    chunk's first stage, 118–142 → 50–64 ms; a 256-channel 4×32×32 one 54–73 → 38–66 ms; the
    two agree within 4e-6). Under bf16 autocast the three products would each round to bf16
    (17% more error than the conv's one rounding), so bf16 keeps the conv."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
    )


def map_frames(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """`fn` applied to each frame `(B, C, H, W)` of `x` `(B, C, T, H, W)`, stacked back along T
    into a channels-last tensor of `fn`'s dtype (bf16 under autocast)."""
    first = fn(x[:, :, 0])
    b, c, h, w = first.shape
    shape = (b, c, x.shape[2], h, w)
    out = torch.empty(
        shape, dtype=first.dtype, device=first.device, memory_format=torch.channels_last_3d
    )
    out[:, :, 0] = first
    for i in range(1, x.shape[2]):
        out[:, :, i] = fn(x[:, :, i])
    return out


def per_frame(conv: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """A 1×1 Conv3d or a SpatialConv as a function of one frame `(B, C, H, W)`, its weights
    (reordered, for a SpatialConv) taken once for all the frames."""
    if isinstance(conv, SpatialConv):
        weight, bias = conv.weights()
        return lambda f: F.conv2d(F.pad(f, (1, 1, 1, 1), mode="replicate"), weight, bias)
    assert isinstance(conv, nn.Conv3d) and conv.kernel_size == (1, 1, 1)
    weight = conv.weight[:, :, 0]  # (C_out, C_in, 1, 1)
    return lambda f: F.conv2d(f, weight, conv.bias)


def ordered_weights(
    conv: nn.Conv2d | nn.Conv3d,
    in_order: torch.Tensor | None = None,
    out_order: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`conv`'s weight and bias with input channel k its `in_order[k]` and output channel k
    its `out_order[k]`: how a conv beside a depth-first shuffle reads or makes its channels
    while its weights stay stored in their trained order."""
    weight, bias = conv.weight, conv.bias
    if in_order is not None:
        weight = weight[:, in_order]
    if out_order is not None:
        weight = weight[out_order]
        bias = None if bias is None else bias[out_order]
    return weight, bias


def group_norm_affine(norm: nn.GroupNorm, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`norm(x)` as a per-channel float32 `x * scale + shift` (each `(B, C, 1, 1)`), so that it
    can be applied to one frame of `x` `(B, C, T, H, W)` at a time.

    The statistics are summed a frame at a time, per channel, as a sum and a sum of squares
    (float64 across frames): `torch.var_mean` over a group took 7 ms a 128×128×96 frame where
    the two sums take 1.8 ms. The mean of squares less the squared mean would lose digits only
    where a group's mean were far larger than its spread: on a 512×512×16 tile the shipped
    network's conv encoder and decoder run this way within 2e-5 of the batched float32 form."""
    b, c, t = x.shape[:3]
    sums = torch.zeros(b, c, dtype=torch.float64, device=x.device)
    squares = torch.zeros_like(sums)
    for i in range(t):
        pixels = x[:, :, i].permute(0, 2, 3, 1).reshape(b, -1, c).float()
        sums += pixels.sum(1)
        squares += (pixels * pixels).sum(1)
    groups = norm.num_groups
    count = x[0].numel() // groups
    mean = sums.view(b, groups, -1).sum(2) / count
    var = (squares.view(b, groups, -1).sum(2) / count - mean.square()).clamp_(min=0)
    rstd = torch.rsqrt(var + norm.eps).float().repeat_interleave(c // groups, dim=1)
    scale = rstd * norm.weight
    shift = norm.bias - mean.float().repeat_interleave(c // groups, dim=1) * scale
    return scale[:, :, None, None], shift[:, :, None, None]


def norm_silu_conv_by_frame(norm: nn.GroupNorm, conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`conv(silu(norm(x)))` a frame at a time: no whole normalised copy of `x` is held."""
    scale, shift = group_norm_affine(norm, x)
    conv_frame = per_frame(conv)
    return map_frames(lambda f: conv_frame(normed_frame(f, scale, shift)), x)


def normed_frame(frame: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """`silu(frame * scale + shift)` in float32, in two passes over the frame."""
    return F.silu(torch.addcmul(shift, frame, scale), inplace=True)


class SpatialConv(nn.Module):
    """3×3 conv applied to every frame independently: a Conv2d's weights, run as a 1×3×3
    Conv3d on batched activations and as the Conv2d frame by frame. With `in_order`, input
    channel k is the Conv2d's channel `in_order[k]`, and with `out_order` output channel k is
    its `out_order[k]` (the weights are stored in their trained order)."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        in_order: torch.Tensor | None = None,
        out_order: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        # What the module computes: this replicate-padded Conv2d on every frame. Both paths
        # apply its (reordered) weights functionally and pad by hand.
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, padding_mode="replicate")
        self.in_order, self.out_order = in_order, out_order

    def weights(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return ordered_weights(self.conv, self.in_order, self.out_order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if by_frame(x):
            return map_frames(per_frame(self), x)
        weight, bias = self.weights()
        padded = F.pad(x, (1, 1, 1, 1, 0, 0), mode="replicate")
        return F.conv3d(padded, weight.unsqueeze(2), bias)


class CausalTemporalConv(nn.Module):
    """Kernel-3 conv along time, padded with the first frame on the past side only."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, (3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if by_products(x):
            return self._forward_by_products(x)
        return self.conv(F.pad(x, (0, 0, 0, 0, 2, 0), mode="replicate"))

    def _forward_by_products(self, x: torch.Tensor) -> torch.Tensor:
        """The same conv as three matrix products over the pixels of channels-last frames:
        output frame i is W2·x_i + W1·x_(i−1) + W0·x_(i−2) + bias, with the first frame
        standing in for the frames before it (the replicate padding), and no padded copy of
        `x` is made (`by_products` says when)."""
        b, c, t, h, w = x.shape
        taps = [self.conv.weight[:, :, k, 0, 0].t() for k in range(3)]  # (C_in, C_out)
        c_out = taps[0].shape[1]
        pixels = x.permute(0, 2, 3, 4, 1).contiguous()  # a view if channels-last
        out = torch.empty((b, t, h, w, c_out), dtype=x.dtype, device=x.device)
        for frames, result in zip(pixels.view(b, t, -1, c), out.view(b, t, -1, c_out), strict=True):
            flat, bias = result.view(-1, c_out), self.conv.bias
            if bias is None:
                torch.mm(frames.view(-1, c), taps[2], out=flat)
            else:
                torch.addmm(bias, frames.view(-1, c), taps[2], out=flat)
            for lag in (1, 2):
                tap = taps[2 - lag]
                if t > lag:
                    result[lag:].view(-1, c_out).addmm_(frames[:-lag].reshape(-1, c), tap)
                result[: min(lag, t)] += frames[0] @ tap
        return out.permute(0, 4, 1, 2, 3)

    def add_by_frame(self, out: torch.Tensor, frames: Callable[[int], torch.Tensor]) -> None:
        """`out += self(x)` a frame at a time, where `frames(i)` makes frame i of `x` as a
        channels-last `(B, C, H, W)` and `out` `(B, C, T, H, W)` is channels-last.

        The padded sequence is p = (x0, x0, x0, x1, …); output frame i is one matrix product of
        the pixels' [p_i, p_i+1, p_i+2] channels with the three taps. The three frames live in a
        ring of three column blocks, each frame written once; which tap meets which block turns
        with i, so the weight matrix is laid out once for each of the three turns."""
        b, c, t, h, w = out.shape
        dtype = out.dtype  # bf16 under autocast, as the batched conv would compute
        taps = self.conv.weight[:, :, :, 0, 0]  # (C_out, C_in, 3)
        # Block s holds p_j for j % 3 == s; at turn r, block s meets tap (s - r) % 3.
        turns = [
            torch.cat([taps[:, :, (s - r) % 3] for s in range(3)], dim=1).t().to(dtype)
            for r in range(3)
        ]
        bias = self.conv.bias
        bias = bias.to(dtype) if bias is not None else out.new_zeros(c)
        ring = out.new_empty(b * h * w, 3 * c)
        for i in range(t):
            pixels = frames(i).permute(0, 2, 3, 1).reshape(b * h * w, c)
            if i == 0:
                ring[:, : 2 * c] = pixels.repeat(1, 2)  # p0 and p1
            slot = (i + 2) % 3
            ring[:, slot * c : (slot + 1) * c] = pixels
            result = torch.addmm(bias, ring, turns[i % 3])
            out[:, :, i] += result.view(b, h, w, c).permute(0, 3, 1, 2)


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
        h = norm_silu_conv_by_frame(self.norm1, self.spatial, x)
        scale, shift = group_norm_affine(self.norm2, h)
        self.temporal.add_by_frame(x, lambda i: normed_frame(h[:, :, i], scale, shift))
        return x


def run_blocks(blocks: nn.Sequential, x: torch.Tensor, recompute: bool) -> torch.Tensor:
    """`blocks(x)`; with `recompute`, each block is checkpointed: its input is held and its
    inner activations are recomputed in the backward pass."""
    if not recompute:
        return blocks(x)
    for block in blocks:
        x = checkpoint(block, x, use_reentrant=False)
    return x


class ConvEncoder(nn.Module):
    """`(B, 3, T, H, W)` in [-1, 1] → `(B, out_channels, T/4, H/8, W/8)`."""

    def __init__(self, c1: int, c2: int, blocks1: int, blocks2: int, out_channels: int) -> None:
        super().__init__()
        self.conv_in = SpatialConv(3 * 2 * 4 * 4, c1, in_order=depth_first_order(3, 2, 4))
        self.stage1 = nn.Sequential(*[ResBlock(c1) for _ in range(blocks1)])
        self.down = nn.Conv3d(c1 * 8, c2, 1)
        self.stage2 = nn.Sequential(*[ResBlock(c2) for _ in range(blocks2)])
        self.norm_out = nn.GroupNorm(8, c2)
        self.conv_out = nn.Conv3d(c2, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stage1(conv_layout(self.conv_in(depth_first_unshuffle(x, 2, 4))))
        weight, bias = ordered_weights(self.down, in_order=depth_first_order(h.shape[1], 2, 2))
        h = F.conv3d(depth_first_unshuffle(h, 2, 2), weight, bias)
        h = self.stage2(conv_layout(h))
        if by_frame(h):
            return norm_silu_conv_by_frame(self.norm_out, self.conv_out, h)
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
        self.conv_out = SpatialConv(c1, 3 * 2 * 4 * 4, out_order=depth_first_order(3, 2, 4))

    def forward(self, z: torch.Tensor, recompute: bool = False) -> torch.Tensor:
        """With `recompute` (under autograd), each residual block's activations are recomputed
        in the backward pass rather than held (`torch.utils.checkpoint`)."""
        h = run_blocks(self.stage2, conv_layout(self.conv_in(conv_layout(z))), recompute)
        order = depth_first_order(self.up.out_channels // 8, 2, 2)
        h = F.conv3d(h, *ordered_weights(self.up, out_order=order))
        h = run_blocks(self.stage1, conv_layout(depth_first_shuffle(h, 2, 2)), recompute)
        if by_frame(h):
            out = norm_silu_conv_by_frame(self.norm_out, self.conv_out, h)
        else:
            out = self.conv_out(F.silu(self.norm_out(h)))
        return depth_first_shuffle(out, 2, 4)
