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
own, and the lowest error wins: a refined chunk never decodes further from the source than the
encoder's codes, in the arithmetic the encoder runs.

Chosen on 128×128 crops of three dev clips (10 steps): Adam in place of the normalised step
moved every code at once, and an L1 penalty in the objective in place of the threshold then
either blocked every step or let the bytes grow by up to 30%; a threshold of 0.01 or 0.02 in
place of 0.003 saves bytes at about the same dB per byte. On the dev bench (256×256, 32
frames, `benchmarks/README.md`) 10 steps add 0.44 dB at full rate for 12% more bytes, and
save 5–18% of the bytes at equal PSNR on five clips of eight against the unrefined curve.
"""

from __future__ import annotations

import torch

from infotok_codec.model.tokenizer import Tokenizer

STEP_SIZE = 0.01
"""Each step moves the FSQ input by this times the gradient over its root mean square."""
SHRINK = 0.003
"""The soft threshold towards the encoder's input after each step (FSQ input units)."""


def refine_indices(
    tokenizer: Tokenizer,
    video: torch.Tensor,
    steps: int,
    keep: torch.Tensor | None = None,
    features: torch.Tensor | None = None,
) -> torch.Tensor:
    """Indices `(B, T', h, w)` for `video` `(B, 3, T, H, W)` in [-1, 1], refined for `steps`
    (≥ 1) steps against the decoder. `keep` as in `Tokenizer.encode`: only kept codes are
    searched, and the decode drops the rest as the stream's decoder will. `features`: the conv
    encoder's output for `video`, when the caller has it."""
    if steps < 1:
        raise ValueError(f"{steps} refinement steps: give at least 1 (0 is `Tokenizer.encode`)")
    with torch.no_grad():
        start = tokenizer.code_inputs(
            tokenizer.features(video) if features is None else features, keep
        )
    fsq = tokenizer.fsq
    size = tuple(video.shape[2:])
    kept = None if keep is None else keep.unsqueeze(-1).to(start.dtype)
    target = video.float()
    inputs = start.clone().requires_grad_(True)
    best_error, best_codes = float("inf"), fsq(start)
    frozen = [p for p in tokenizer.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)  # gradients for the codes only
    try:
        with torch.enable_grad():
            for step in range(steps + 1):
                codes = fsq(inputs)
                if kept is not None:
                    codes = codes * kept
                recon = tokenizer.decode_codes(codes, keep, size)  # type: ignore[arg-type]
                error = (recon.float().clamp(-1, 1) - target).square().mean()
                if error.item() < best_error:
                    best_error, best_codes = error.item(), codes.detach()
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
