"""Routers: how many tokens each chunk keeps, and which latent positions keep them.

`elbo` is InfoTok's router: the tokenizer's own full-rate reconstruction error (a proxy for
−log p(x)) sets each chunk's rate, r_i = clip(budget · e_i / mean(e), r_min, 1), re-balanced so the
whole video keeps `budget` of its positions, and each chunk spends its tokens where its error is
highest, after a coarse lattice that keeps every region in reach of a token (`select_positions`).
`fixed` gives every chunk the budget and picks positions the same way (InfoTok's per-clip
strategy); `uniform` gives every chunk the budget and picks positions in a fixed, data-agnostic
order (the tail-drop family). `light` routes as `elbo` does, on an error map predicted from the
conv encoder's features by a small head (`model/light_router.py`), so it needs no decode. Everything
here is integer or float64 numpy on small arrays: cheap, and the same on every machine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from infotok_codec.bitstream.lattice import SHARE_DENOMINATOR, lattice_mask
from infotok_codec.errors import InfotokError

ROUTERS = ("elbo", "fixed", "uniform", "light")
_RATE_BY_ERROR = ("elbo", "light")  # routers whose chunk rates follow the chunks' mean errors
MIN_RATE = 1 / 16
ERROR_LATTICE_SHARE = 192
"""Share (in 256ths) of an `elbo`/`fixed` chunk's kept positions taken first from the lattice.

Keeping only the highest-error positions (share 0, the paper's rule) leaves flat regions with no
token in reach of the compressor's window, and the decoder has nothing to fill them from; the
lattice costs no mask bits (the decoder knows it from the kept count).
`benchmarks/lattice_share.py` (shipped model, dev clips, 32 frames), PSNR over the `uniform`
curve at equal bits, mean ± standard error over the clips in range: at rate 0.5, share 0
−2.21 ± 0.92 dB, 64 −0.02 ± 0.18, 128 +0.05 ± 0.15, 192 +0.07 ± 0.06, 224 −0.01 ± 0.03. 192
is the best share; with the `adaptive` token coder its lead over `uniform` at equal bits is
small (with static token tables it led by 0.18 ± 0.04).
"""
_BISECTION_STEPS = 80


def check_budget(budget: float) -> None:
    if not (0.0 < budget <= 1.0) or math.isnan(budget):
        raise InfotokError(f"budget {budget} outside (0, 1]")


def check_router(router: str) -> None:
    if router not in ROUTERS:
        raise InfotokError(f"unknown router {router!r}: choose one of {', '.join(ROUTERS)}")


def needs_error_map(router: str, budget: float) -> bool:
    """Whether routing at `budget` reads an error map (pass 1 of an encode): the full-rate one
    for `elbo` and `fixed`, the predicted one for `light`."""
    return router != "uniform" and budget < 1.0


def keep_count(rate: float, positions: int) -> int:
    """⌈r·N⌉ positions, at least one."""
    return int(_keep_counts(np.float64(rate), np.int64(positions)))


def allocate_counts(
    router: str, budget: float, positions: Sequence[int], chunk_errors: Sequence[float] | None
) -> list[int]:
    """Kept positions per chunk. `chunk_errors` (mean error per chunk) is needed for `elbo` and
    `light` only.

    For `elbo` (and `light`) the scale s in r_i = clip(s · e_i / mean(e), r_min, 1) is found by
    bisection so the realised share Σk_i / ΣN_i is as close to the budget as integers allow
    (s = budget before re-balancing; clipping is what moves it). r_min is 1/16, or the budget
    when that is lower.
    """
    check_router(router)
    check_budget(budget)
    n = np.asarray(positions, dtype=np.int64)
    if (
        budget < 1.0
        and router in _RATE_BY_ERROR
        and (chunk_errors is None or len(chunk_errors) != len(n))
    ):
        raise InfotokError(f"the {router} router needs one error per chunk")
    e = None if chunk_errors is None else np.asarray(chunk_errors, dtype=np.float64)
    return [int(v) for v in allocate_array(router, budget, n, e)]


def allocate_array(router: str, budget: float, n: np.ndarray, e: np.ndarray | None) -> np.ndarray:
    """`allocate_counts` on arrays, unchecked: positions `n` int64, mean errors `e` float64
    (None for routers that need none). Rate control prices thousands of budgets with it."""
    if budget >= 1.0:
        return n.copy()
    if router not in _RATE_BY_ERROR or e is None:
        return _keep_counts(budget, n)
    # Weight by positions so a short last chunk counts for what it is.
    mean = float((e * n).sum() / n.sum())
    if not math.isfinite(mean) or mean <= 0:
        return _keep_counts(budget, n)
    floor = min(MIN_RATE, budget)
    target = budget * n.sum()

    def counts(scale: float) -> np.ndarray:
        return _keep_counts(np.clip(scale * e / mean, floor, 1.0), n)

    lo, hi = 0.0, 1.0
    while counts(hi).sum() < target and hi < 1e12:
        hi *= 2
    best = counts(budget)
    for _ in range(_BISECTION_STEPS):
        if abs(best.sum() - target) <= 0.5:
            break  # no integer total can come strictly nearer
        mid = (lo + hi) / 2
        c = counts(mid)
        if abs(c.sum() - target) < abs(best.sum() - target):
            best = c
        if c.sum() < target:
            lo = mid
        else:
            hi = mid
    return best


def _keep_counts(rates: float | np.ndarray, n: np.ndarray) -> np.ndarray:
    """⌈r·N⌉ positions of every chunk, at least one (the one formula `keep_count` and the
    allocations share)."""
    return np.maximum(1, np.minimum(n, np.ceil(rates * n - 1e-9))).astype(np.int64)


def lattice_share(router: str) -> int:
    """The lattice share (256ths, `infotok_codec.bitstream.lattice`) of the masks `router` makes."""
    check_router(router)
    return SHARE_DENOMINATOR if router == "uniform" else ERROR_LATTICE_SHARE


def select_positions(
    router: str, error: np.ndarray | None, shape: tuple[int, int, int], count: int
) -> np.ndarray:
    """Keep-mask `shape` (T', h, w) bool with `count` True positions: `lattice_then_error` at the
    router's `lattice_share` (all lattice for `uniform`, three quarters for the others)."""
    return lattice_then_error(error, shape, count, lattice_share(router))


def lattice_then_error(
    error: np.ndarray | None, shape: tuple[int, int, int], count: int, share: int
) -> np.ndarray:
    """The mask's lattice at `share` (256ths of `count`), then the largest errors among the other
    positions (ties to the earlier position, so the result does not depend on the sort
    implementation). `error` may be None only when the lattice is the whole count."""
    total = int(np.prod(shape))
    if count >= total:
        return np.ones(shape, dtype=bool)
    keep = lattice_mask(shape, count, share).ravel()
    rest = count - int(keep.sum())
    if rest:
        if error is None or error.shape != tuple(shape):
            raise InfotokError(f"choosing positions by error needs an error map of shape {shape}")
        # Rank only the positions outside the lattice; a NaN error ranks last, so the mask
        # always keeps exactly `count`.
        free = np.flatnonzero(~keep)
        score = np.nan_to_num(error.astype(np.float64).ravel()[free], nan=-np.inf)
        keep[free[np.argsort(-score, kind="stable")[:rest]]] = True
    return keep.reshape(shape)
