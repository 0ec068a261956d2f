"""The `context` token coder: round trips, what its contexts buy, pinned bytes, and chains of
chunks that break when a reference is wrong."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re
import zlib

import numpy as np
import pytest

from infotok_codec.bitstream import Header, decode_chunk, encode_chunk
from infotok_codec.bitstream.context_coder import (
    Chain,
    ContextState,
    decode_tokens,
    encode_tokens,
    fit_key_prior,
)
from infotok_codec.bitstream.context_state import KeyPrior
from infotok_codec.bitstream.entropy import encode_indices
from infotok_codec.bitstream.tables import FrequencyTables
from infotok_codec.errors import FormatError, ModelError
from infotok_codec.routing.router import lattice_then_error

LEVELS = (8, 8, 8, 5, 5, 5)
TABLES = FrequencyTables.fit(np.random.default_rng(1).integers(0, 64000, 5000) // 7, LEVELS)


def moving_grids(chunks: int, seed: int = 0) -> list[np.ndarray]:
    """Chunks ``(4, 6, 10)`` of a token field that drifts right one position per latent frame,
    with 10% of tokens replaced at random: what the contexts are made for."""
    rng = np.random.default_rng(seed)
    field = rng.integers(0, 64000, size=(6, 40))
    out = []
    for k in range(chunks):
        frames = [np.roll(field, 4 * k + t, axis=1)[:, :10] for t in range(4)]
        grid = np.stack(frames)
        noise = rng.random(grid.shape) < 0.1
        grid[noise] = rng.integers(0, 64000, int(noise.sum()))
        out.append(grid)
    return out


def header(coder: str = "context", key_interval: int = 3, chunks: int = 4) -> Header:
    return Header(
        width=80,
        height=48,
        frames=16 * chunks,
        fps_num=25,
        fps_den=1,
        chunk_frames=16,
        latent_height=6,
        latent_width=10,
        model_name="test",
        model_hash=bytes(32),
        fsq_levels=LEVELS,
        coder=coder,
        router="fixed",
        budget=0.6,
        lattice_share=192,
        key_interval=key_interval,
    )


def masks(chunks: int, rate: float, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (4, 6, 10)
    count = int(rate * np.prod(shape))
    return [lattice_then_error(rng.random(shape), shape, count, 192) for _ in range(chunks)]


def code_stream(h: Header, grids: list[np.ndarray], keeps: list[np.ndarray]) -> list:
    chain = Chain()
    return [
        encode_chunk(h, k, keep, grid[keep], TABLES, chain)
        for k, (grid, keep) in enumerate(zip(grids, keeps, strict=True))
    ]


@pytest.mark.parametrize("rate", [1.0, 0.6, 0.05])
def test_chunks_round_trip_through_a_chain(rate: float) -> None:
    h = header()
    grids, keeps = moving_grids(4), masks(4, rate)
    records = code_stream(h, grids, keeps)
    chain = Chain()
    for grid, keep, rec in zip(grids, keeps, records, strict=True):
        got_keep, got = decode_chunk(h, rec, TABLES, chain)
        assert np.array_equal(got_keep, keep)
        assert np.array_equal(got, grid[keep])


def test_a_chunk_that_keeps_nothing_passes_the_chain_on() -> None:
    h = header(chunks=3)
    grids = moving_grids(3)
    keeps = [np.ones((4, 6, 10), bool), np.zeros((4, 6, 10), bool), np.ones((4, 6, 10), bool)]
    records = code_stream(h, grids, keeps)
    assert records[1].tokens == b"" and records[1].mask == b""
    chain = Chain()
    for grid, keep, rec in zip(grids, keeps, records, strict=True):
        assert np.array_equal(decode_chunk(h, rec, TABLES, chain)[1], grid[keep])


def test_chained_chunks_cost_less_than_key_chunks() -> None:
    grids, keeps = moving_grids(4), masks(4, 1.0)
    chained = code_stream(header(key_interval=4), grids, keeps)
    alone = code_stream(header(key_interval=1), grids, keeps)
    assert chained[0].tokens == alone[0].tokens  # chunk 0 is a key either way
    assert sum(len(r.tokens) for r in chained[1:]) < 0.8 * sum(len(r.tokens) for r in alone[1:])


def test_context_beats_adaptive_on_moving_tokens() -> None:
    grid, keep = moving_grids(1)[0], np.ones((4, 6, 10), bool)
    context, _ = encode_tokens(grid[keep], keep, TABLES, None)
    assert len(context) < 0.9 * len(encode_indices(grid[keep], "adaptive", TABLES, keep))


def test_context_bitstream_is_pinned() -> None:
    """The bytes of a fixed token array, a key chunk and two chained ones with their masks:
    any change to the model or its arithmetic changes them (and needs a format version)."""
    grids, keeps = moving_grids(3), masks(3, 0.6)
    records = code_stream(header(chunks=3), grids, keeps)
    digest = hashlib.sha256(b"".join(r.mask + r.tokens for r in records)).hexdigest()
    assert digest == "d3b1f10879a321b32a63e58d1f0f7aa8667d268cad47ed5e0a0506a44ae42030"


def test_a_non_key_chunk_needs_the_chain_of_the_chunk_before() -> None:
    h = header()
    grids, keeps = moving_grids(4), masks(4, 0.6)
    records = code_stream(h, grids, keeps)
    with pytest.raises(ValueError, match="chunk 1 is not a key chunk"):
        decode_chunk(h, records[1], TABLES)
    chain = Chain()
    decode_chunk(h, records[0], TABLES, chain)
    with pytest.raises(ValueError, match="chunk 2 is not a key chunk"):
        decode_chunk(h, records[2], TABLES, chain)
    # A key chunk needs no chain.
    assert np.array_equal(decode_chunk(h, records[3], TABLES)[1], grids[3][keeps[3]])


def test_a_chunk_decoded_after_another_reference_is_a_format_error() -> None:
    """Spliced streams: chunk 1 of one stream after chunk 0 of another."""
    h = header()
    keeps = masks(4, 1.0)
    first = code_stream(h, moving_grids(4, seed=0), keeps)
    second = code_stream(h, moving_grids(4, seed=5), keeps)
    chain = Chain()
    decode_chunk(h, second[0], TABLES, chain)
    with pytest.raises(FormatError, match=r"chunk 1: tokens: .*broken reference chain"):
        decode_chunk(h, first[1], TABLES, chain)


def test_a_state_from_other_tokens_is_refused_by_its_check() -> None:
    grids, keep = moving_grids(2), np.ones((4, 6, 10), bool)
    _, state = encode_tokens(grids[0][keep], keep, TABLES, None)
    data, _ = encode_tokens(grids[1][keep], keep, TABLES, state)
    other = ContextState.initial((6, 10), TABLES)
    with pytest.raises(FormatError, match="broken reference chain"):
        decode_tokens(data, keep, TABLES, other)
    assert np.array_equal(decode_tokens(data, keep, TABLES, state)[0], grids[1][keep])


def test_damaged_context_payloads_are_format_errors() -> None:
    grids, keep = moving_grids(2), np.ones((4, 6, 10), bool)
    data, _ = encode_tokens(grids[0][keep], keep, TABLES, None)
    rng = np.random.default_rng(3)
    refused = 0
    for _ in range(50):
        damaged = bytearray(data)
        damaged[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
        try:
            decoded, _ = decode_tokens(bytes(damaged), keep, TABLES, None)
        except FormatError:
            refused += 1
        else:  # a flip can turn one canonical payload into another: other tokens, no error
            assert not np.array_equal(decoded, grids[0][keep])
    assert refused >= 40
    with pytest.raises(FormatError):
        decode_tokens(data + b"\0\0\0\0", keep, TABLES, None)
    with pytest.raises(FormatError):
        decode_tokens(data[:-4], keep, TABLES, None)


def test_other_coders_refuse_a_key_interval() -> None:
    with pytest.raises(FormatError, match="key_interval 3 with coder 'adaptive'"):
        header(coder="adaptive", key_interval=3)


def test_extreme_indices_round_trip() -> None:
    k = TABLES.codebook_size
    keep = np.ones((4, 6, 10), bool)
    for grid in (np.zeros(keep.shape, np.int64), np.full(keep.shape, k - 1)):
        data, _ = encode_tokens(grid[keep], keep, TABLES, None)
        assert np.array_equal(decode_tokens(data, keep, TABLES, None)[0], grid[keep])
    spread = np.arange(0, k, k // 240)[:240].reshape(keep.shape)
    data, _ = encode_tokens(spread[keep], keep, TABLES, None)
    assert np.array_equal(decode_tokens(data, keep, TABLES, None)[0], spread[keep])


# -- the key prior (format version 5) --------------------------------------------------------
def prior_tables(seeds: range = range(1, 9)) -> FrequencyTables:
    """TABLES with a key prior fitted on chains of moving grids unlike the tests' own (seed 0)."""
    chains = [
        list(zip(moving_grids(2, seed), masks(2, rate, seed), strict=True))
        for seed in seeds
        for rate in (1.0, 0.6)
    ]
    return TABLES.with_context_prior(fit_key_prior(chains, TABLES).to_json())


def test_a_key_prior_makes_key_chunks_smaller_and_round_trips() -> None:
    fitted = prior_tables()
    grids, keeps = moving_grids(3), masks(3, 0.6)
    h = header(chunks=3)
    for tables in (TABLES, fitted):
        chain = Chain()
        records = [
            encode_chunk(h, k, keep, grid[keep], tables, chain)
            for k, (grid, keep) in enumerate(zip(grids, keeps, strict=True))
        ]
        chain = Chain()
        for grid, keep, rec in zip(grids, keeps, records, strict=True):
            mask, indices = decode_chunk(h, rec, tables, chain)
            assert np.array_equal(mask, keep) and np.array_equal(indices, grid[keep])
        if tables is TABLES:
            plain = len(records[0].tokens)
    assert len(records[0].tokens) < 0.97 * plain


def test_version_4_headers_and_tables_without_a_prior_code_as_version_4() -> None:
    # A key prior changes version-5 key chunks only: a version-4 header ignores it, and tables
    # without one give version 5 exactly version 4's bytes.
    grids, keeps = moving_grids(2), masks(2, 0.6)
    v5, v4 = header(chunks=2), dataclasses.replace(header(chunks=2), version=4)
    fitted = prior_tables()
    plain = [r.tokens for r in code_stream(v5, grids, keeps)]

    def tokens(h: Header, tables: FrequencyTables) -> list[bytes]:
        chain = Chain()
        return [
            encode_chunk(h, k, keep, grid[keep], tables, chain).tokens
            for k, (grid, keep) in enumerate(zip(grids, keeps, strict=True))
        ]

    assert tokens(v4, fitted) == tokens(v4, TABLES) == plain
    assert tokens(v5, fitted)[0] != plain[0]


def test_the_key_prior_bitstream_is_pinned() -> None:
    """A prior fitted on fixed chains, and the bytes of a fixed stream coded from it: a change to
    the fit or to how a key chunk starts from a prior changes them."""
    fitted = prior_tables()
    assert fitted.context_prior is not None
    prior = KeyPrior.from_json(fitted.context_prior, LEVELS)
    assert KeyPrior.from_json(prior.to_json(), LEVELS).to_json() == fitted.context_prior
    chain = Chain()
    h = header(chunks=3)
    records = [
        encode_chunk(h, k, keep, grid[keep], fitted, chain)
        for k, (grid, keep) in enumerate(zip(moving_grids(3), masks(3, 0.6), strict=True))
    ]
    digest = hashlib.sha256(fitted.context_prior.encode())
    digest.update(b"".join(r.mask + r.tokens for r in records))
    assert digest.hexdigest() == "39d573238c4e2de1abbd1d93fdab04f63fbdd9874543811618071bd9d65208d7"


@pytest.mark.parametrize(
    ("change", "fault"),
    [
        (lambda obj: obj | {"extra": 1}, "keys digits and select"),
        (lambda obj: obj | {"digits": obj["digits"][:5]}, "expected 6 digit arrays"),
        (lambda obj: obj | {"select": "not base64!"}, "context prior"),
        (lambda obj: obj | {"select": pack(np.full(36, 4))[:-4]}, "context prior"),
        (lambda obj: obj | {"select": pack(np.full(35, 4))}, "35 counts, expected 36"),
        (lambda obj: obj | {"select": pack(np.full(36, 3))}, "outside [4, 4096]"),
        (lambda obj: obj | {"select": pack(np.full(36, 500))}, "rows above 4096"),
        (lambda obj: [obj], "keys digits and select"),
    ],
)
def test_a_damaged_key_prior_is_one_model_error(change, fault: str) -> None:
    text = prior_tables(range(1, 3)).context_prior
    assert text is not None
    damaged = TABLES.with_context_prior(json.dumps(change(json.loads(text))))
    grids, keeps = moving_grids(1), masks(1, 0.6)
    with pytest.raises(ModelError, match=re.escape(fault)):
        encode_chunk(header(chunks=1), 0, keeps[0], grids[0][keeps[0]], damaged, Chain())


def pack(counts: np.ndarray) -> str:
    return base64.b64encode(zlib.compress(counts.astype("<u2").tobytes())).decode()
