"""Token and keep-mask coders: round trips, table files, damaged payloads, and rate."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from infotok_codec.bitstream.entropy import CHUNK_CODERS, decode_indices, encode_indices
from infotok_codec.bitstream.lattice import lattice_mask, mask_is_implied
from infotok_codec.bitstream.mask_coder import decode_mask, encode_mask
from infotok_codec.bitstream.tables import (
    PRECISION_BITS,
    FrequencyTables,
    digits_to_indices,
    indices_to_digits,
)
from infotok_codec.errors import FormatError, InfotokError
from infotok_codec.routing.router import lattice_then_error

LEVELS = (8, 8, 8, 5, 5, 5)
K = 64000


def skewed_indices(n: int, seed: int = 0, levels: tuple[int, ...] = LEVELS) -> np.ndarray:
    """FSQ-like indices: correlated Gaussian latents squashed onto each digit's grid (one fixed
    correlation; ``seed`` draws the sample)."""
    mix = np.random.default_rng(99).normal(size=(len(levels), len(levels)))
    rng = np.random.default_rng(seed)
    z = np.tanh(0.5 * rng.normal(size=(n, len(levels))) @ (mix + 2 * np.eye(len(levels))).T)
    digits = np.clip(((z + 1) / 2 * np.array(levels)).astype(np.int64), 0, np.array(levels) - 1)
    return digits_to_indices(digits, levels)


FITTED = FrequencyTables.fit(skewed_indices(20000), LEVELS)


@st.composite
def levels_and_indices(draw: st.DrawFn) -> tuple[tuple[int, ...], np.ndarray]:
    levels = tuple(draw(st.lists(st.integers(2, 256), min_size=1, max_size=4)))
    size = math.prod(levels)
    kind = draw(st.sampled_from(["random", "zeros", "max", "one", "empty"]))
    n = {"one": 1, "empty": 0}.get(kind, draw(st.integers(1, 300)))
    if kind == "zeros":
        return levels, np.zeros(n, np.int64)
    if kind == "max":
        return levels, np.full(n, size - 1, np.int64)
    seed = draw(st.integers(0, 2**32 - 1))
    return levels, np.random.default_rng(seed).integers(0, size, n)


def scattered_mask(count: int, seed: int = 0) -> np.ndarray:
    """A `(3, 5, w)` keep-mask with `count` kept positions scattered at random."""
    width = max(1, math.ceil((2 * count + 1) / 15))
    flat = np.zeros(15 * width, bool)
    flat[np.random.default_rng(seed).permutation(flat.size)[:count]] = True
    return flat.reshape(3, 5, width)


@settings(max_examples=60, deadline=None)
@given(case=levels_and_indices(), coder=st.sampled_from(CHUNK_CODERS), fitted=st.booleans())
def test_indices_round_trip(
    case: tuple[tuple[int, ...], np.ndarray], coder: str, fitted: bool
) -> None:
    levels, indices = case
    tables = FrequencyTables.fit(indices, levels) if fitted else FrequencyTables.uniform(levels)
    mask = scattered_mask(len(indices))
    data = encode_indices(indices, coder, tables, mask)
    out = decode_indices(data, len(indices), coder, tables, mask)
    assert out.dtype == np.int64 and np.array_equal(out, indices)
    assert (data == b"") == (len(indices) == 0)


@settings(max_examples=40, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 5), st.integers(1, 12), st.integers(1, 12)),
    density=st.floats(0.05, 1.0),
    palette=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
)
def test_adaptive_round_trip_on_repetitive_grids(
    shape: tuple[int, int, int], density: float, palette: int, seed: int
) -> None:
    # Few distinct tokens, repeated across frames and rows: references and "matched so far"
    # contexts are exercised in every combination.
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) < density
    colours = rng.integers(0, K, palette)
    grid = colours[rng.integers(0, palette, shape[1:])][None].repeat(shape[0], axis=0)
    grid[rng.random(shape) < 0.2] = rng.integers(0, K)
    indices = grid[mask]
    data = encode_indices(indices, "adaptive", FITTED, mask)
    assert np.array_equal(decode_indices(data, len(indices), "adaptive", FITTED, mask), indices)


def test_adaptive_coder_learns_what_repeats() -> None:
    # A static scene: every latent frame repeats the first. After the first frame the tokens
    # cost a small fraction of what static tables charge.
    rng = np.random.default_rng(3)
    frame = rng.integers(0, K, (16, 16))
    mask = np.ones((4, 16, 16), bool)
    indices = np.stack([frame] * 4)[mask]
    adaptive = len(encode_indices(indices, "adaptive", FITTED, mask))
    static = len(encode_indices(indices, "range", FITTED))
    one_frame = len(encode_indices(frame.ravel(), "range", FITTED))
    assert adaptive < 0.5 * static and adaptive < 1.5 * one_frame


def test_adaptive_coder_needs_the_mask_it_was_given() -> None:
    indices = skewed_indices(200)
    with pytest.raises(ValueError, match="needs the keep-mask"):
        encode_indices(indices, "adaptive", FITTED)
    with pytest.raises(ValueError, match="200 kept positions"):
        encode_indices(indices, "adaptive", FITTED, scattered_mask(199))
    mask = scattered_mask(200)
    data = encode_indices(indices, "adaptive", FITTED, mask)
    other = scattered_mask(200, seed=1)
    try:
        out = decode_indices(data, 200, "adaptive", FITTED, other)
    except FormatError:
        return
    assert not np.array_equal(out, indices)  # another mask gives other contexts


def test_default_levels_round_trip_extremes() -> None:
    for indices in (
        np.zeros(1000, np.int64),
        np.full(1000, K - 1),
        np.array([K - 1]),
        np.arange(K),
    ):
        mask = scattered_mask(len(indices))
        for coder in CHUNK_CODERS:
            data = encode_indices(indices, coder, FITTED, mask)
            assert np.array_equal(decode_indices(data, len(indices), coder, FITTED, mask), indices)


def test_digits_follow_the_fsq_index_order() -> None:
    # digit 0 is the least significant, as FSQ.codes_to_indices (basis cumprod(1, levels[:-1]))
    digits = indices_to_digits(np.array([1, 8, 64, 512, K - 1]), LEVELS)
    assert digits.tolist()[:4] == [
        [1, 0, 0, 0, 0, 0],
        [0, 1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0],
        [0, 0, 0, 1, 0, 0],
    ]
    assert digits[4].tolist() == [7, 7, 7, 4, 4, 4]


masks = st.tuples(
    st.integers(1, 4),
    st.integers(1, 9),
    st.integers(1, 9),
    st.floats(0.0, 1.0),
    st.integers(0, 2**32 - 1),
)


@settings(max_examples=80, deadline=None)
@given(params=masks)
def test_mask_round_trip(params: tuple[int, int, int, float, int]) -> None:
    t, h, w, density, seed = params
    mask = np.random.default_rng(seed).random((t, h, w)) < density
    data = encode_mask(mask)
    out = decode_mask(data, (t, h, w), kept=int(mask.sum()))
    assert out.dtype == np.bool_ and np.array_equal(out, mask)
    assert (data == b"") == bool(mask.all() or not mask.any())  # share 0: the empty lattice


@settings(max_examples=80, deadline=None)
@given(params=masks, share=st.sampled_from([1, 128, 192, 255, 256]))
def test_mask_round_trip_with_a_lattice(
    params: tuple[int, int, int, float, int], share: int
) -> None:
    t, h, w, density, seed = params
    count = round(density * t * h * w)
    error = np.random.default_rng(seed).random((t, h, w))
    mask = lattice_then_error(error, (t, h, w), count, share)
    data = encode_mask(mask, share)
    assert len(data) <= len(encode_mask(mask)) + 4
    out = decode_mask(data, (t, h, w), kept=count, lattice_share=share)
    assert np.array_equal(out, mask)
    assert (data == b"") == mask_is_implied(count, t * h * w, share)


def test_damaged_lattice_masks_are_format_errors() -> None:
    # A flipped bit may decode to a mask of another count, whose own lattice the mask need not
    # hold: that must be a FormatError, like any other damage.
    shape = (4, 16, 16)
    for share in (128, 192):
        mask = lattice_then_error(np.random.default_rng(share).random(shape), shape, 500, share)
        good = encode_mask(mask, share)
        refused = 0
        for bit in range(8 * len(good)):
            bad = bytearray(good)
            bad[bit // 8] ^= 1 << (bit % 8)
            try:
                out = decode_mask(bytes(bad), shape, kept=500, lattice_share=share)
            except FormatError:
                refused += 1
                continue
            assert out.sum() == 500 and encode_mask(out, share) == bytes(bad)
        assert refused > 0.9 * 8 * len(good)


def test_all_kept_and_none_kept_masks_are_empty() -> None:
    assert encode_mask(np.ones((4, 32, 32), bool)) == b""
    assert decode_mask(b"", (4, 32, 32), kept=4096).all()
    with pytest.raises(FormatError, match="mask: 0-byte payload for kept 4095 of 4096"):
        decode_mask(b"", (4, 32, 32), kept=4095)
    assert encode_mask(np.zeros((4, 32, 32), bool)) == b""
    assert not decode_mask(b"", (4, 32, 32), kept=0).any()
    five = np.zeros((4, 32, 32), bool)
    five[0, 0, :5] = True
    with pytest.raises(FormatError, match="mask: keeps 5 positions, kept is 3"):
        decode_mask(encode_mask(five), (4, 32, 32), kept=3)


def test_lattice_only_mask_is_empty_and_only_empty() -> None:
    shape, kept = (4, 16, 16), 300
    lattice = lattice_mask(shape, kept, 256)
    assert encode_mask(lattice, 256) == b""
    assert np.array_equal(decode_mask(b"", shape, kept=kept, lattice_share=256), lattice)
    # The same mask at a share that leaves positions to code has a payload, and an empty
    # payload is refused where kept does not imply the mask (and a payload where it does).
    coded = encode_mask(lattice, 0)
    assert coded and np.array_equal(decode_mask(coded, shape, kept=kept), lattice)
    with pytest.raises(FormatError, match="mask: 0-byte payload for kept 300 of 1024"):
        decode_mask(b"", shape, kept=kept, lattice_share=192)
    with pytest.raises(FormatError, match="empty exactly when kept implies the mask"):
        decode_mask(coded, shape, kept=kept, lattice_share=256)


def test_smooth_mask_costs_well_under_a_bit_per_position() -> None:
    t, y, x = np.meshgrid(np.arange(4), np.arange(32), np.arange(32), indexing="ij")
    mask = np.sin(x / 5 + t / 3) + np.cos(y / 4 - t / 5) > 0.3  # 44% kept
    assert 8 * len(encode_mask(mask)) / mask.size < 0.25


def test_tables_survive_json() -> None:
    for tables in (
        FITTED,
        FrequencyTables.uniform((2, 256, 3)),
        FrequencyTables.fit(np.array([5]), (3, 4), conditional=False),
    ):
        assert FrequencyTables.from_json(tables.to_json()) == tables


def test_fitted_rows_sum_to_the_precision_and_keep_every_symbol_codable() -> None:
    tables = FrequencyTables.fit(np.zeros(1000, np.int64), LEVELS)
    for table in tables.weights:
        for row in table:
            assert sum(row) == 2**PRECISION_BITS and min(row) >= 1
    unseen = np.array([K - 1, 12345])
    data = encode_indices(unseen, "range", tables)
    assert np.array_equal(decode_indices(data, 2, "range", tables), unseen)


def test_independent_tables_repeat_the_marginal_in_every_context() -> None:
    tables = FrequencyTables.fit(skewed_indices(5000), LEVELS, conditional=False)
    for table in tables.weights[1:]:
        assert len(set(table)) == 1


def test_conditional_tables_code_correlated_digits_smaller() -> None:
    train, test = skewed_indices(50000, seed=1), skewed_indices(50000, seed=2)
    sizes = {
        c: len(encode_indices(test, "range", FrequencyTables.fit(train, LEVELS, conditional=c)))
        for c in (False, True)
    }
    assert sizes[True] < sizes[False]


def test_range_coding_is_within_one_percent_of_the_empirical_entropy() -> None:
    # Sample from the fitted model itself, digit by digit (digit i given digit i - 1), and
    # compare with the sample's plug-in entropy under the same factorization.
    rng = np.random.default_rng(7)
    n = 200_000
    digits = np.zeros((n, len(LEVELS)), np.int64)
    for i, table in enumerate(FITTED.weights):
        context = digits[:, i - 1] if i else np.zeros(n, np.int64)
        for c, row in enumerate(table):
            where = np.flatnonzero(context == c)
            p = np.array(row) / 2**PRECISION_BITS
            digits[where, i] = rng.choice(len(row), size=where.size, p=p)
    indices = digits_to_indices(digits, LEVELS)
    entropy_bits = 0.0
    for i, level in enumerate(LEVELS):
        context = digits[:, i - 1] if i else np.zeros(n, np.int64)
        joint = np.bincount(context * level + digits[:, i]).astype(float)
        ctx = np.bincount(context).astype(float)
        nz = joint > 0
        c_of = np.flatnonzero(nz) // level
        entropy_bits -= (joint[nz] * np.log2(joint[nz] / ctx[c_of])).sum()
    coded_bits = 8 * len(encode_indices(indices, "range", FITTED))
    assert entropy_bits <= coded_bits <= 1.01 * entropy_bits


def test_range_model_is_the_integer_table_exactly() -> None:
    # With w = (2**23, 2**22, 2**22) every symbol costs exactly 1 or 2 bits: if constriction
    # rescaled the table in floating point, the cost would drift from the integer ideal.
    tables = FrequencyTables((3,), (((2**23, 2**22, 2**22),),))
    symbols = np.random.default_rng(0).integers(0, 3, 100_000)
    ideal = np.where(symbols == 0, 1, 2).sum()
    coded = 8 * len(encode_indices(symbols, "range", tables))
    assert ideal <= coded <= ideal + 64


def test_range_bitstreams_are_pinned() -> None:
    # Same tables + same indices = same bytes on every machine and library build; inputs are
    # arithmetic (no random generator) so only the coders can move the hash.
    indices = (np.arange(3000) ** 2 * 31 + np.arange(3000) // 7) % K
    tables = FrequencyTables.fit(indices[::3], LEVELS)
    t, y, x = np.meshgrid(np.arange(2), np.arange(7), np.arange(9), indexing="ij")
    mask = (t + x * y + x // 3) % 4 == 0
    data = encode_indices(indices, "range", tables) + encode_mask(mask)
    assert hashlib.sha256(data).hexdigest()[:16] == "98c34a7ad692f5f6"
    grid = (np.arange(3 * 8 * 9).reshape(3, 8, 9) // 5 * 7919) % K
    grid[1:] = grid[0]  # repeated frames: references and matches matter
    grid[2, ::3] = (grid[2, ::3] + 13) % K
    keep = (np.indices(grid.shape).sum(axis=0) % 3) != 1
    adaptive = encode_indices(grid[keep], "adaptive", tables, keep)
    assert hashlib.sha256(adaptive).hexdigest()[:16] == "b0301fdc3dedda41"


def test_lattices_and_lattice_masks_are_pinned() -> None:
    # The spread order decides which positions a mask leaves uncoded: it is part of the format.
    from infotok_codec.bitstream.lattice import spread_order

    order = spread_order((3, 7, 9)).astype("<i8").tobytes()
    assert hashlib.sha256(order).hexdigest()[:16] == "f1a81fcff3fd55ec"
    t, y, x = np.meshgrid(np.arange(2), np.arange(7), np.arange(9), indexing="ij")
    mask = lattice_then_error(((t * 5 + x * y + x // 3) % 7).astype(float), (2, 7, 9), 60, 192)
    assert hashlib.sha256(encode_mask(mask, 192)).hexdigest()[:16] == "a0e485a183d89df0"


@pytest.mark.parametrize("coder", CHUNK_CODERS)
def test_garbage_payload_is_a_format_error(coder: str) -> None:
    rng = np.random.default_rng(0)
    indices = skewed_indices(500)
    mask = scattered_mask(500)
    good = encode_indices(indices, coder, FITTED, mask)
    bad_payloads = [
        rng.bytes(len(good)),
        good[:-4],
        good + b"\0\0\0\0",
        good[:-1],
        b"",
        bytes(len(good)),
    ]
    for bad in bad_payloads:
        with pytest.raises(FormatError, match=r"^tokens: "):
            decode_indices(bad, len(indices), coder, FITTED, mask)
    with pytest.raises(FormatError, match=r"^tokens: "):
        decode_indices(good, len(indices) + 1, coder, FITTED, scattered_mask(501))
    with pytest.raises(FormatError, match=r"^tokens: "):
        decode_indices(good, 0, coder, FITTED, scattered_mask(0))


def test_garbage_mask_is_a_format_error() -> None:
    rng = np.random.default_rng(0)
    shape = (4, 16, 16)
    mask = rng.random(shape) < 0.5
    good = encode_mask(mask)
    kept = int(mask.sum())
    for bad in (rng.bytes(len(good)), good[:-4], good + bytes(4), good[:-1]):
        with pytest.raises(FormatError, match=r"^mask: "):
            decode_mask(bad, shape, kept=kept)
    with pytest.raises(FormatError, match=r"^mask: "):
        decode_mask(good, (4, 16, 17), kept=kept)


@settings(max_examples=40, deadline=None)
@given(level=st.sampled_from([2, 3, 5, 256]), n=st.integers(1, 5000))
def test_size_bound_accepts_the_cheapest_possible_payloads(level: int, n: int) -> None:
    # The bound that refuses short payloads must never refuse a real one: the cheapest
    # message repeats the most likely symbol, here exactly at the bound's per-index cost.
    tables = FrequencyTables.uniform((level,))
    indices = np.zeros(n, np.int64)
    for coder in ("range", "adaptive"):
        mask = np.arange(16 * (1 + n // 16)).reshape(1, 16, -1) < n
        data = encode_indices(indices, coder, tables, mask)
        assert np.array_equal(decode_indices(data, n, coder, tables, mask), indices)
    mask = np.zeros((1, 16, 1 + n // 16), bool)
    assert not decode_mask(encode_mask(mask), mask.shape, kept=0).any()


def test_huge_claimed_count_is_refused_before_allocating() -> None:
    with pytest.raises(FormatError, match="tokens: 8 payload bytes cannot hold"):
        decode_indices(bytes(8), 10**12, "range", FITTED)
    with pytest.raises(FormatError, match="tokens: 8 payload bytes cannot hold"):
        decode_indices(bytes(8), 10**8, "adaptive", FITTED)
    with pytest.raises(FormatError, match="mask: 8 payload bytes cannot hold"):
        decode_mask(bytes(8), (256, 2048, 2048), kept=1)


def test_zstd_frame_declaring_another_size_is_refused() -> None:
    bomb = zstandard.ZstdCompressor(write_checksum=True).compress(bytes(10**6))
    with pytest.raises(FormatError, match="tokens: zstd frame declares 1000000 bytes"):
        decode_indices(bomb, 10, "zstd", FITTED)


def test_zstd_indices_outside_the_codebook_are_refused() -> None:
    raw = np.array([1, 65000], "<u2").tobytes()
    data = zstandard.ZstdCompressor(write_checksum=True).compress(raw)
    with pytest.raises(FormatError, match="tokens: index 65000 outside"):
        decode_indices(data, 2, "zstd", FITTED)


@pytest.mark.parametrize(
    ("junk", "message"),
    [
        ("{", "not JSON"),
        ("[]", "expected an object"),
        ('{"format": "x"}', "expected an object"),
    ],
)
def test_junk_tables_json_is_a_format_error(junk: str, message: str) -> None:
    with pytest.raises(FormatError, match=f"frequency tables: {message}"):
        FrequencyTables.from_json(junk)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda o: o.update(version=2), "unsupported version 2"),
        (lambda o: o.update(precision_bits=16), "precision_bits 16"),
        (lambda o: o.update(levels=[8, 8, 8, 5, 5, 1]), "fsq level 1 outside"),
        (lambda o: o["weights"][0][0].__setitem__(0, 0), "weights must be integers >= 1"),
        (lambda o: o["weights"][1][0].__setitem__(0, True), "weights must be integers >= 1"),
        (lambda o: o["weights"][2][3].__setitem__(1, 5), "digit 2 context 3: weights sum to"),
        (lambda o: o["weights"][3].pop(), "digit 3: 7 contexts, expected 8"),
        (lambda o: o["weights"][4][0].append(1), "digit 4 context 0: 6 weights, expected 5"),
        (lambda o: o.update(weights="no"), "weights a list of lists of lists"),
    ],
)
def test_invalid_tables_are_named(change, message: str) -> None:
    obj = json.loads(FITTED.to_json())
    change(obj)
    with pytest.raises(FormatError, match=f"frequency tables: .*{message}"):
        FrequencyTables.from_json(json.dumps(obj))


def test_encoder_refuses_indices_outside_the_codebook() -> None:
    with pytest.raises(ValueError, match="outside"):
        encode_indices(np.array([K]), "range", FITTED)
    with pytest.raises(InfotokError, match="unknown coder"):
        encode_indices(np.array([1]), "lzma", FITTED)
