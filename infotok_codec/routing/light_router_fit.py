"""Fitting the `light` router's head (`model/light_router.py`) to a tokenizer, on training clips.

Cheap, and the network is left alone: the conv features and `elbo` error maps of a few hundred
training windows are computed once (one full-rate encode and decode each), then only the head is
fitted to them (Adam on the squared error of log-errors). Routing reads the ranking of positions
within a chunk and the chunks' mean errors, so the fit reports rank correlations on windows of
held-out clips rather than the loss. `refit_model_file` (`infotok fit-router`) fits one for an
existing model file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from infotok_codec.errors import ModelError
from infotok_codec.model.light_router import LOG_FLOOR, HeadInfo, LightRouterHead
from infotok_codec.model.tokenizer import Tokenizer, load_model, replace_light_head
from infotok_codec.outputs import check_output

FIT_WINDOWS = 400
FIT_STEPS = 600
"""Training windows and Adam steps of a head's fit, by default. 100 and 300 until run 15: on the
64-frame dev bench run 15's head fitted so came out 0.124 dB below `elbo` at equal bits at
budget 0.25, and fitted on 400 windows for 600 steps within 0.03 dB of it at every budget
(`benchmarks/README.md`, run 15's dev bench)."""


def sample_windows(
    clips: Sequence[np.ndarray], count: int, frames: int, size: int, seed: int = 0
) -> list[tuple[int, np.ndarray]]:
    """`count` windows `(frames, size, size, 3)` uint8 with the index of the clip each came from,
    spread evenly over the clips (at least `frames` × `size` × `size`), positions seeded."""
    usable = [k for k, c in enumerate(clips) if c.shape[0] >= frames and min(c.shape[1:3]) >= size]
    if not usable:
        raise ModelError(f"no clip holds a {frames}×{size}×{size} window to fit the head on")
    rng = np.random.default_rng(seed)
    windows = []
    for i in range(count):
        k = usable[i % len(usable)]
        clip = clips[k]
        t0 = int(rng.integers(clip.shape[0] - frames + 1))
        y = int(rng.integers(clip.shape[1] - size + 1))
        x = int(rng.integers(clip.shape[2] - size + 1))
        windows.append((k, clip[t0 : t0 + frames, y : y + size, x : x + size]))
    return windows


@torch.no_grad()
def features_and_targets(
    model: Tokenizer, windows: Sequence[np.ndarray], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv features `(N, dim, T', h, w)` and log `elbo` errors `(N, T', h, w)` of the windows."""
    feats, targets = [], []
    for window in windows:
        video = torch.from_numpy(np.ascontiguousarray(window)).to(device)
        video = video.permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0
        features = model.features(video)
        feats.append(features.cpu())
        targets.append(torch.log(model.error_map(video, features).cpu() + LOG_FLOOR))
    return torch.cat(feats), torch.cat(targets)


def fit_head(
    features: torch.Tensor,
    targets: torch.Tensor,
    *,
    channels: int = 64,
    steps: int = FIT_STEPS,
    batch: int = 16,
    lr: float = 3e-3,
    seed: int = 0,
) -> LightRouterHead:
    """A head fitted to map `features` `(N, dim, T', h, w)` to `targets` `(N, T', h, w)`."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        head = LightRouterHead(features.shape[1], channels)
    # Start the output at the mean log error, so the first steps learn the ranking, not the scale.
    bias = head.out.bias
    assert bias is not None  # a Conv3d with its default bias
    with torch.no_grad():
        bias.fill_(float(targets.mean()))
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    head.train()
    for step in range(steps):
        pick = torch.randint(len(features), (min(batch, len(features)),), generator=generator)
        for group in optimizer.param_groups:  # cosine decay: the last steps settle
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        loss = F.mse_loss(head(features[pick]), targets[pick])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return head.eval()


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Rank correlation of two flat arrays (None when either is constant or too short)."""
    if a.size < 3:
        return None
    ra = np.argsort(np.argsort(a, kind="stable"), kind="stable").astype(np.float64)
    rb = np.argsort(np.argsort(b, kind="stable"), kind="stable").astype(np.float64)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


@torch.no_grad()
def rank_agreement(
    head: LightRouterHead, features: torch.Tensor, targets: torch.Tensor
) -> tuple[float | None, float | None]:
    """(mean Spearman over windows of positions within each, Spearman of window means)."""
    predicted = head(features).numpy()
    actual = targets.numpy()
    within = [spearman(p.ravel(), t.ravel()) for p, t in zip(predicted, actual, strict=True)]
    finite = [v for v in within if v is not None]
    means = spearman(np.exp(predicted).mean(axis=(1, 2, 3)), np.exp(actual).mean(axis=(1, 2, 3)))
    return (float(np.mean(finite)) if finite else None), means


def fit_light_router(
    model: Tokenizer,
    clips: Sequence[np.ndarray],
    device: torch.device,
    *,
    windows: int = FIT_WINDOWS,
    frames: int = 16,
    size: int = 128,
    channels: int = 64,
    steps: int = FIT_STEPS,
    seed: int = 0,
) -> tuple[LightRouterHead, HeadInfo]:
    """Fit a head on `windows` training windows of `frames` × `size` × `size` (smaller where no
    clip is that large); a fifth of the clips (every fifth) is held out for the rank
    correlations in the returned `HeadInfo`, when there are at least two clips."""
    # Small clips (a test's, a tiny run's) get windows as large as the largest of them allows.
    if clips:
        size = min(size, max(min(c.shape[1:3]) for c in clips) // 8 * 8)
        frames = min(frames, max(c.shape[0] for c in clips) // 4 * 4)
    was_training = model.training
    model.eval()
    try:
        sampled = sample_windows(clips, windows, max(frames, 4), max(size, 8), seed)
        feats, targets = features_and_targets(model, [w for _, w in sampled], device)
    finally:
        model.train(was_training)
    held = torch.tensor([k % 5 == 4 and len(clips) > 1 for k, _ in sampled])
    if held.all() or not held.any():
        held = torch.zeros(len(sampled), dtype=torch.bool)
    fit = ~held
    head = fit_head(feats[fit], targets[fit], channels=channels, steps=steps, seed=seed)
    within, across = (
        rank_agreement(head, feats[held], targets[held]) if held.any() else (None, None)
    )
    info = HeadInfo(
        channels=channels,
        windows=int(fit.sum()),
        held_out_windows=int(held.sum()),
        steps=steps,
        spearman_positions=None if within is None else round(within, 4),
        spearman_windows=None if across is None else round(across, 4),
    )
    return head.cpu(), info


def refit_model_file(
    src: str | Path,
    dst: str | Path,
    data: Sequence[Path],
    *,
    windows: int = FIT_WINDOWS,
    steps: int = FIT_STEPS,
    short_side: int = 256,
    max_frames: int = 32,
    force: bool = False,
) -> HeadInfo:
    """Fit a head for the model file `src` on the clips under `data` (scaled to `short_side`, the
    first `max_frames` frames of each) and write `src` with it to `dst` (`replace_light_head`)."""
    from infotok_codec import media  # PyAV: only where files are decoded

    check_output(Path(dst), force)
    loaded = load_model(src)
    loaded.check_encodes()
    clips = media.read_clips(data, max_frames=max_frames, short_side=short_side)
    head, info = fit_light_router(
        loaded.tokenizer, clips, torch.device("cpu"), windows=windows, steps=steps
    )
    replace_light_head(src, dst, head, info, force=force)
    return info
