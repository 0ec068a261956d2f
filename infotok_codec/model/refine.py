"""Encoder-side refinement: search the codes against the decoder the stream will meet.

The encoder is amortised inference: one forward pass guesses codes for any video, and for a
given clip they are not the codes this decoder reconstructs best. The decoder is fixed and runs
at the other end exactly as it does here, so the encoder is free to search, as learned image
codecs do (Campos et al. 2019, "Content adaptive optimization for neural image compression").
The stream format and the decoder do not change: a refined stream decodes like any other.

Each step takes the gradient of the chunk's squared error after the real (rounded) decode with
respect to the FSQ's input, through the straight-through FSQ, and moves that input by
`STEP_SIZE` times the gradient over its root mean square: codes move in proportion to what
they do for the error. A soft threshold (`SHRINK`) then pulls every input back towards the
encoder's own, so codes that matter little stay exactly where the encoder put them. That is
the rate's brake: a code moved off the encoder's prediction is harder for the context coder to
predict. Every step's forward pass measures the codes it starts from, the first the encoder's
own, and the best of them wins: the lowest error, or, given a way to count bits, the most dB
for the bits (`PRICE_DB_PER_PERCENT`) among those no further from the source than the
encoder's codes. Either way a refined chunk never decodes further from the source than the
encoder's codes, in the arithmetic the encoder runs.

Chosen on 128×128 crops of dev clips (10 steps): Adam in place of the normalised step moved
every code at once, and an L1 penalty in the objective in place of the threshold then either
blocked every step or let the bytes grow by up to 30%. The threshold alone still let them grow
by up to 43% (`intel_car-detection`, full rate, on the dev bench); pricing the bits
(`PRICE_DB_PER_PERCENT`) holds that to 11%. On the dev bench (256×256, 32 frames,
`benchmarks/README.md`) 10 priced steps add 0.34 dB at full rate (median 0.27) for 4.9% more
bytes, and at equal PSNR save 2–17% of the bytes on six clips of eight against the unrefined
curve.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from infotok_codec.model.tokenizer import Tokenizer

STEP_SIZE = 0.01
"""Each step moves the FSQ input by this times the gradient over its root mean square."""
SHRINK = 0.003
"""The soft threshold towards the encoder's input after each step (FSQ input units)."""
RECOMPUTE_ABOVE = 1 << 23
"""Clips of at least this many values (3 × T × H × W: a 512×512×16 tile has 12.6M, a 256×256
chunk of 16 frames 3.1M) recompute the decoder's activations in the backward pass rather than
hold them. On a 512×512×16 tile, bf16, 2 threads, two steps (`benchmarks/refine_memory.py`):
peak memory 3,344 → 1,670 MiB, the same indices, 24.6 → 28.4 s on a loaded machine. On
256×256 chunks, where memory is no concern, it cost 30–75% a step, so they hold theirs."""
PRICE_DB_PER_PERCENT = 0.03
"""With a way to count bits, a step's codes are chosen only if they buy at least this many dB
for each 1% of bits they add over the encoder's codes: about the slope of the budget curve
between 0.75 and 1.0 on the dev clips (0.018–0.036 dB per 1% of bytes), so refining buys
quality at least as cheaply as keeping more tokens would."""


def refine_indices(
    tokenizer: Tokenizer,
    video: torch.Tensor,
    steps: int,
    keep: torch.Tensor | None = None,
    features: torch.Tensor | None = None,
    bits: Callable[[torch.Tensor], float] | None = None,
) -> torch.Tensor:
    """Indices `(B, T', h, w)` for `video` `(B, 3, T, H, W)` in [-1, 1], refined for `steps`
    (≥ 1) steps against the decoder. `keep` as in `Tokenizer.encode`: only kept codes are
    searched, and the decode drops the rest as the stream's decoder will. `features`: the conv
    encoder's output for `video`, when the caller has it. `bits`: what indices `(B, T', h, w)`
    cost to code (the caller's coder; the model knows none): with it, the codes chosen are
    those whose PSNR gain less `PRICE_DB_PER_PERCENT` times their extra bits is highest."""
    if steps < 1:
        raise ValueError(f"{steps} refinement steps: give at least 1 (0 is `Tokenizer.encode`)")
    with torch.no_grad():
        start = tokenizer.code_inputs(
            tokenizer.features(video) if features is None else features, keep
        )
    fsq = tokenizer.fsq
    size = tuple(video.shape[2:])
    recompute = video[0].numel() >= RECOMPUTE_ABOVE
    kept = None if keep is None else keep.unsqueeze(-1).to(start.dtype)
    target = video.float()
    inputs = start.clone().requires_grad_(True)
    best_cost, best_codes = float("inf"), fsq(start)
    first_error = first_bits = 0.0
    frozen = [p for p in tokenizer.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)  # gradients for the codes only
    try:
        with torch.enable_grad():
            for step in range(steps + 1):
                codes = fsq(inputs)
                if kept is not None:
                    codes = codes * kept
                recon = tokenizer.decode_codes(codes, keep, size, recompute)  # type: ignore[arg-type]
                error = (recon.float().clamp(-1, 1) - target).square().mean()
                cost = 10 * math.log10(max(error.item(), 1e-12))  # −PSNR, up to a constant
                if bits is not None:
                    spent = bits(fsq.codes_to_indices(codes.detach()))
                    if step == 0:
                        first_error, first_bits = error.item(), max(spent, 1.0)
                    cost += PRICE_DB_PER_PERCENT * 100 * (spent / first_bits - 1)
                    if error.item() > first_error:
                        cost = math.inf  # fewer bits, but further from the source: not ours
                if cost < best_cost:
                    best_cost, best_codes = cost, codes.detach()
                if step == steps:
                    break
                (grad,) = torch.autograd.grad(error, inputs)
                with torch.no_grad():
                    grad /= grad.square().mean().sqrt().clamp_min(1e-30)
                    moved = inputs - STEP_SIZE * grad - start
                    inputs.copy_(start + moved.sign() * (moved.abs() - SHRINK).clamp_min(0.0))
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return fsq.codes_to_indices(best_codes)
