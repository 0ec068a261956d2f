"""Routers: how many tokens each chunk keeps, and which latent positions keep them.

`elbo` is InfoTok's router: the tokenizer's own full-rate reconstruction error (a proxy for
−log p(x)) sets each chunk's rate, r_i = clip(budget · e_i / mean(e), r_min, 1), re-balanced so the
whole video keeps `budget` of its positions, and each chunk keeps its highest-error positions.
`fixed` gives every chunk the budget and picks positions by error (InfoTok's per-clip strategy);
`uniform` gives every chunk the budget and picks positions in a fixed, data-agnostic order (the
tail-drop family). Everything here is integer or float64 numpy on small arrays: cheap, and the
same on every machine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from infotok_codec.errors import InfotokError

ROUTERS = ("elbo", "fixed", "uniform")
MIN_RATE = 1 / 16
_BISECTION_STEPS = 80


def check_budget(budget: float) -> None:
    if not (0.0 < budget <= 1.0) or math.isnan(budget):
        raise InfotokError(f"budget {budget} outside (0, 1]")


def check_router(router: str) -> None:
    if router not in ROUTERS:
        raise InfotokError(f"unknown router {router!r}: choose one of {', '.join(ROUTERS)}")


def needs_error_map(router: str, budget: float) -> bool:
    """Whether routing at `budget` reads the full-rate error map (pass 1 of an encode)."""
    return router in ("elbo", "fixed") and budget < 1.0


def keep_count(rate: float, positions: int) -> int:
    """⌈r·N⌉ positions, at least one."""
    return max(1, min(positions, math.ceil(rate * positions - 1e-9)))


def allocate_counts(
    router: str, budget: float, positions: Sequence[int], chunk_errors: Sequence[float] | None
) -> list[int]:
    """Kept positions per chunk. `chunk_errors` (mean error per chunk) is needed for `elbo` only.

    For `elbo` the scale s in r_i = clip(s · e_i / mean(e), r_min, 1) is found by bisection so the
    realised share Σk_i / ΣN_i is as close to the budget as integers allow (s = budget before
    re-balancing; clipping is what moves it). r_min is 1/16, or the budget when that is lower.
    """
    check_router(router)
    check_budget(budget)
    n = np.asarray(positions, dtype=np.int64)
    if budget >= 1.0:
        return [int(v) for v in n]
    if router != "elbo":
        return [keep_count(budget, int(v)) for v in n]
    if chunk_errors is None or len(chunk_errors) != len(n):
        raise InfotokError("the elbo router needs one error per chunk")
    e = np.asarray(chunk_errors, dtype=np.float64)
    # Weight by positions so a short last chunk counts for what it is.
    mean = float((e * n).sum() / n.sum())
    if not math.isfinite(mean) or mean <= 0:
        return [keep_count(budget, int(v)) for v in n]
    floor = min(MIN_RATE, budget)
    target = budget * n.sum()

    def counts(scale: float) -> np.ndarray:
        rates = np.clip(scale * e / mean, floor, 1.0)
        return np.maximum(1, np.minimum(n, np.ceil(rates * n - 1e-9))).astype(np.int64)

    lo, hi = 0.0, 1.0
    while counts(hi).sum() < target and hi < 1e12:
        hi *= 2
    best = counts(budget)
    for _ in range(_BISECTION_STEPS):
        mid = (lo + hi) / 2
        c = counts(mid)
        if abs(c.sum() - target) < abs(best.sum() - target):
            best = c
        if c.sum() < target:
            lo = mid
        else:
            hi = mid
    return [int(v) for v in best]


def select_positions(
    router: str, error: np.ndarray | None, shape: tuple[int, ...], count: int
) -> np.ndarray:
    """Keep-mask `shape` (T', h, w) bool with `count` True positions.

    `elbo`/`fixed`: the `count` largest errors (ties to the earlier position, so the result does
    not depend on the sort implementation). `uniform`: the first `count` of `spread_order`.
    """
    total = int(np.prod(shape))
    if count >= total:
        return np.ones(shape, dtype=bool)
    keep = np.zeros(total, dtype=bool)
    if router == "uniform":
        keep[spread_order(shape)[:count]] = True
    else:
        if error is None or error.shape != tuple(shape):
            raise InfotokError(f"router {router} needs an error map of shape {shape}")
        order = np.argsort(-error.astype(np.float64).ravel(), kind="stable")
        keep[order[:count]] = True
    return keep.reshape(shape)


def spread_order(shape: tuple[int, ...]) -> np.ndarray:
    """A fixed order of positions whose every prefix covers the grid evenly.

    Positions are sorted by the bit-reversed Morton (Z-order) code of their prefix-XORed
    coordinates (t, y^t, x^y^t): the first half of the order is a 3-D checkerboard, the first
    quarter a lattice staggered from one latent frame to the next, and so on. A plain raster
    prefix would drop whole latent frames, which no sensible tail-drop tokenizer does; this is the
    strongest data-agnostic baseline we know.
    """
    coords = np.indices(shape).reshape(len(shape), -1)
    coords = np.bitwise_xor.accumulate(coords, axis=0)
    bits = max(1, max(int(s - 1).bit_length() for s in shape))
    code = np.zeros(coords.shape[1], dtype=np.int64)
    for bit in range(bits):
        for axis in range(len(shape)):
            code = (code << 1) | ((coords[axis] >> (bits - 1 - bit)) & 1)
    width = bits * len(shape)
    reversed_code = np.zeros_like(code)
    for i in range(width):
        reversed_code |= ((code >> i) & 1) << (width - 1 - i)
    return np.argsort(reversed_code, kind="stable")


def raster_order(shape: tuple[int, ...]) -> np.ndarray:
    """Positions in plain C order: the naive tail-drop, for comparison only."""
    return np.arange(int(np.prod(shape)))
