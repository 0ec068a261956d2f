"""Routers: kept counts per chunk and the positions that keep them."""

from __future__ import annotations

import numpy as np
import pytest

from infotok_codec.bitstream import lattice
from infotok_codec.routing import router as routing

SHAPE = (4, 8, 8)


def test_spread_half_and_quarter_prefixes_cover_every_latent_frame_evenly() -> None:
    order = lattice.spread_order(SHAPE)
    assert sorted(order) == list(range(int(np.prod(SHAPE))))
    for count in (64, 128):
        keep = np.zeros(int(np.prod(SHAPE)), dtype=bool)
        keep[order[:count]] = True
        per_frame = keep.reshape(SHAPE).sum(axis=(1, 2))
        assert (per_frame == count // SHAPE[0]).all()


@pytest.mark.parametrize("router", ["elbo", "fixed"])
@pytest.mark.parametrize("count", [1, 2, 37, 128, 255])
def test_error_routed_masks_are_a_lattice_then_the_largest_errors(router: str, count: int) -> None:
    error = np.random.default_rng(count).random(SHAPE).astype(np.float32)
    keep = routing.select_positions(router, error, SHAPE, count)
    assert keep.shape == SHAPE and keep.sum() == count
    covered = lattice.lattice_count(count, routing.ERROR_LATTICE_SHARE)
    grid = lattice.spread_order(SHAPE)[:covered]
    assert keep.ravel()[grid].all()
    rest = np.ones(int(np.prod(SHAPE)), dtype=bool)
    rest[grid] = False
    picked = keep.ravel() & rest
    if picked.any() and (rest & ~picked).any():
        assert error.ravel()[picked].min() >= error.ravel()[rest & ~picked].max()


def test_error_routing_ties_go_to_the_earlier_position() -> None:
    error = np.zeros(SHAPE, dtype=np.float32)
    keep = routing.select_positions("fixed", error, SHAPE, 10)
    covered = lattice.lattice_count(10, routing.ERROR_LATTICE_SHARE)
    grid = set(lattice.spread_order(SHAPE)[:covered].tolist())
    others = [int(p) for p in np.flatnonzero(keep) if p not in grid]
    assert others == [p for p in range(int(np.prod(SHAPE))) if p not in grid][: 10 - covered]


def test_error_routing_needs_a_matching_error_map() -> None:
    with pytest.raises(routing.InfotokError, match="error map"):
        routing.select_positions("fixed", np.zeros((4, 8, 7)), SHAPE, 10)


def test_elbo_allocation_meets_the_budget_and_follows_the_error() -> None:
    errors = [0.01, 0.02, 0.05, 0.2, 0.04, 0.03]
    positions = [256] * 5 + [64]  # a short last chunk
    counts = routing.allocate_counts("elbo", 0.5, positions, errors)
    assert sum(counts) / sum(positions) == pytest.approx(0.5, abs=0.005)
    rates = [c / n for c, n in zip(counts, positions, strict=True)]
    assert rates[3] == 1.0 and min(rates) >= routing.MIN_RATE
    assert rates[0] < rates[1] < rates[4] < rates[2]
    assert routing.allocate_counts("fixed", 0.5, positions, None) == [128] * 5 + [32]


@pytest.mark.parametrize("share", [0, 192, 256])
def test_any_share_keeps_exactly_the_count_even_with_nan_errors(share: int) -> None:
    shape = (2, 5, 7)  # not a power of two
    total = 70
    error = np.random.default_rng(share).random(shape)
    error.flat[::2] = np.nan
    for count in (0, 1, 13, 35, 69, 70, 80):
        keep = routing.lattice_then_error(error, shape, count, share)
        assert keep.sum() == min(count, total)
        assert keep.ravel()[
            lattice.spread_order(shape)[: lattice.lattice_count(count, share)]
        ].all()
    # NaN ranks below every number.
    keep = routing.lattice_then_error(error, shape, 20, 0)
    assert not keep.ravel()[::2].any()


def test_a_whole_lattice_needs_no_error_map_and_a_partial_one_does() -> None:
    assert routing.lattice_then_error(None, SHAPE, 50, 256).sum() == 50
    with pytest.raises(routing.InfotokError, match="error map"):
        routing.lattice_then_error(None, SHAPE, 1, routing.ERROR_LATTICE_SHARE)
