"""The ``context`` token coder: FSQ indices predicted from their neighbours in space, in time
and across chunks, with adaptive integer counts on a range coder.

A chunk's kept tokens are coded latent frame by latent frame, row by row; the kept tokens of a
row go to the range coder together (vectorised), so every context is built from tokens of
earlier rows, earlier latent frames and earlier chunks only. For each token:

1. A *selection* symbol says which of six candidates it equals, or none: its *reference* (the
   latest token kept at its position, in this chunk or the chunks before it back to the key
   chunk, else the nearest kept token above it in its latent frame), the token right above it,
   the latest tokens at its left and right neighbours' positions (motion), and the tokens above
   left and above right. Candidates that are missing or repeat an earlier one are excluded.
2. For *none*, the token's FSQ digits follow, each in the context of its reference's digit,
   whether the digits so far match the reference's (and how many do not), the token's previous
   digit, and whether the kept token above changed that digit from its own reference.

The counts adapt as rows are coded and carry over from chunk to chunk: a non-key chunk starts
from the state the chunk before it ended with (`ContextState`), a key chunk from the shipped
frequency tables. All arithmetic is in integers, so every machine codes the same bytes;
docs/FORMAT.md specifies the model precisely.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import constriction
import numpy as np

from infotok_codec.entropy import (
    PRECISION_BITS,
    FrequencyTables,
    check_payload_bits,
    coder_errors,
    digits_to_indices,
    indices_to_digits,
    range_words,
)
from infotok_codec.errors import FormatError

# Model constants (part of the bitstream: changing any needs a new format version).
LIMIT = 4096
"""A context's counts are halved once their total passes this (units of 1/16 observation)."""
FLOOR = 4
"""The least count of any symbol in a context."""
STEP = 16
"""What one coded symbol adds to its count."""
SLOTS = 6
"""Candidates per token; selection symbol ``SLOTS`` means none of them."""
SELECT_CONTEXTS = 4
FEATURES = 9
"""Digit-context feature: ``3 * min(mismatches so far, 2) + change of the token above``."""

_TOTAL = 1 << PRECISION_BITS
_CHECK_BYTES = 4
"""A non-key chunk's payload starts with the CRC32 of the state it was coded from."""
MIN_BITS_PER_TOKEN = -float(np.log2(1 - FLOOR / LIMIT + (SLOTS + 2) / _TOTAL))
"""The fewest bits a token can cost: its selection symbol's least cost when a candidate is
available, which is below any digit's (digits keep ``FLOOR`` per symbol the same way)."""


@dataclass
class ContextState:
    """What one chunk leaves to the next: the model's counts and the tokens it references.

    Attributes:
        latest: ``(h, w)`` int64, the latest token kept at each position since the key chunk,
            -1 where none was.
        last_mask: ``(h, w)`` bool, the keep-mask of the last latent frame (the mask coder's
            context for the next chunk's first latent frame).
        select: ``(SELECT_CONTEXTS, SLOTS + 1)`` int64 selection counts.
        digits: per FSQ digit ``i``, ``(C_i, levels[i] + 1, 2, FEATURES, levels[i])`` int64
            counts, ``C_i = 1`` for digit 0 and ``levels[i - 1]`` otherwise.
    """

    latest: np.ndarray
    last_mask: np.ndarray
    select: np.ndarray
    digits: tuple[np.ndarray, ...]

    @classmethod
    def initial(cls, shape: tuple[int, int], tables: FrequencyTables) -> ContextState:
        """A key chunk's start: nothing referenced, counts from the tables (docs/FORMAT.md)."""
        select = np.full((SELECT_CONTEXTS, SLOTS + 1), FLOOR + STEP, dtype=np.int64)
        select[:, 0] += 64  # the reference, and no candidate at all, are the likely choices
        select[:, SLOTS] += 64
        digits = []
        for i, level in enumerate(tables.levels):
            rows = np.asarray(tables.weights[i], dtype=np.int64)  # (contexts, level)
            counts = np.empty((len(rows), level + 1, 2, FEATURES, level), dtype=np.int64)
            counts[:, level] = (FLOOR + ((rows * 64) >> PRECISION_BITS))[:, None, None, :]
            counts[:, :level] = (FLOOR + ((rows * 32) >> PRECISION_BITS))[:, None, None, None, :]
            s = np.arange(level)
            counts[:, s, 0, :, s] += 32
            counts[:, s, 1, :, s] += 96  # a token that matched so far tends to go on
            for d in (-1, 1):  # a digit that left its reference's value moved by one, mostly
                ok = (s + d >= 0) & (s + d < level)
                counts[:, s[ok], 0, :, s[ok] + d] += 16
            digits.append(counts)
        return cls(
            latest=np.full(shape, -1, dtype=np.int64),
            last_mask=np.zeros(shape, dtype=bool),
            select=select,
            digits=tuple(digits),
        )

    def copy(self) -> ContextState:
        return ContextState(
            self.latest.copy(),
            self.last_mask.copy(),
            self.select.copy(),
            tuple(d.copy() for d in self.digits),
        )

    def check_value(self) -> int:
        """CRC32 of the state (docs/FORMAT.md): a non-key payload names the state it needs."""
        crc = zlib.crc32(self.latest.astype("<i8").tobytes())
        crc = zlib.crc32(np.packbits(self.last_mask).tobytes(), crc)
        crc = zlib.crc32(self.select.astype("<i8").tobytes(), crc)
        for counts in self.digits:
            crc = zlib.crc32(counts.astype("<i8").tobytes(), crc)
        return crc & 0xFFFFFFFF


@dataclass
class Chain:
    """The coder's memory along one stream, for `container.encode_chunk` / `decode_chunk`.

    Hand the same chain the chunks of a stream in order, starting at a key chunk; each call
    leaves in it the state the next chunk needs. Coders that code every chunk alone leave
    `state` None.
    """

    next_chunk: int | None = None
    state: ContextState | None = None


def _weights(counts: np.ndarray) -> np.ndarray:
    """Integer weights ``(n, L)``, each >= 1, summing to ``2**24`` per row, from ``(n, L)``
    counts (>= 0, each row's sum > 0): ``1 + n * free // sum`` with ``free = 2**24 - L``, and
    what rounding leaves over added to the first largest count. As float64 ``w - 1``, exact
    for constriction (see `FrequencyTables._models`)."""
    level = counts.shape[1]
    free = _TOTAL - level
    weights = 1 + counts * free // counts.sum(axis=1, keepdims=True)
    rows = np.arange(len(counts))
    weights[rows, counts.argmax(axis=1)] += _TOTAL - weights.sum(axis=1)
    return (weights - 1).astype(np.float64)


def _adapt(counts: np.ndarray, ctx: tuple[np.ndarray, ...], symbols: np.ndarray) -> None:
    """Add `STEP` per coded symbol to its context, then halve every touched context whose total
    passed `LIMIT` (``max((n + 1) >> 1, FLOOR)``) until it no longer does."""
    level = counts.shape[-1]
    rows = counts.reshape(-1, level)
    flat = np.ravel_multi_index(ctx, counts.shape[:-1])
    rows.reshape(-1)[:] += STEP * np.bincount(flat * level + symbols, minlength=rows.size)
    touched = np.unique(flat)
    for context in touched[rows[touched].sum(axis=1) > LIMIT]:
        while rows[context].sum() > LIMIT:
            rows[context] = np.maximum((rows[context] + 1) >> 1, FLOOR)


def _shift(row: np.ndarray, xs: np.ndarray, dx: int) -> np.ndarray:
    """``row[xs + dx]``, -1 outside the row."""
    at = xs + dx
    inside = (at >= 0) & (at < row.size)
    return np.where(inside, row[np.clip(at, 0, row.size - 1)], -1)


class _Rows:
    """The coding order and the candidates of each row; encoder and decoder share it."""

    def __init__(self, mask: np.ndarray, state: ContextState) -> None:
        self.mask, self.state = mask, state
        self.grid = np.full(mask.shape, -1, dtype=np.int64)

    def __iter__(self) -> Iterator[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]]:
        """``(t, y, xs, candidates (n, SLOTS), above (n, 2))`` per row with kept positions;
        ``above`` holds the nearest kept token above and its reference. The caller fills
        ``grid[t, y, xs]`` before resuming."""
        frames, height, width = self.mask.shape
        latest = self.state.latest
        for t in range(frames):
            above = np.full(width, -1, dtype=np.int64)
            above_ref = np.full(width, -1, dtype=np.int64)
            previous_row = np.full(width, -1, dtype=np.int64)
            for y in range(height):
                xs = np.flatnonzero(self.mask[t, y])
                if not xs.size:
                    previous_row = np.full(width, -1, dtype=np.int64)
                    continue
                earlier = latest[y, xs]
                reference = np.where(earlier >= 0, earlier, above[xs])
                candidates = np.stack(
                    [
                        reference,
                        previous_row[xs],
                        _shift(latest[y], xs, -1),
                        _shift(latest[y], xs, 1),
                        _shift(previous_row, xs, -1),
                        _shift(previous_row, xs, 1),
                    ],
                    axis=1,
                )
                yield t, y, xs, candidates, np.stack([above[xs], above_ref[xs]], axis=1)
                row = self.grid[t, y, xs]
                previous_row = np.full(width, -1, dtype=np.int64)
                previous_row[xs] = row
                above[xs], above_ref[xs] = row, reference
            latest = np.where(self.mask[t], self.grid[t], latest)
        self.latest = latest


def _available(candidates: np.ndarray) -> np.ndarray:
    """``(n, SLOTS + 1)`` bool: present candidates that repeat no earlier one, and *none*."""
    available = candidates >= 0
    for j in range(1, SLOTS):
        available[:, j] &= ~(candidates[:, :j] == candidates[:, j : j + 1]).any(axis=1)
    return np.concatenate([available, np.ones((len(candidates), 1), dtype=bool)], axis=1)


def _digit_digits(values: np.ndarray, levels: tuple[int, ...]) -> np.ndarray:
    """FSQ digits ``(n, D)`` of `values`, -1 rows where a value is -1."""
    digits = indices_to_digits(np.maximum(values, 0), levels)
    digits[values < 0] = -1
    return digits


def _code(
    mask: np.ndarray,
    tables: FrequencyTables,
    start: ContextState,
    *,
    indices: np.ndarray | None = None,
    decoder: Any = None,
) -> tuple[np.ndarray, bytes, ContextState]:
    """Walk the coding order once, range-encoding every symbol: the encoder's pass (`indices`
    given, C order of `mask`) or the decoder's (symbols read from `decoder`), whose
    re-encoding is the canonical check. Returns the kept indices, the encoded words and the
    end state. `start` is not modified."""
    levels = tables.levels
    state = start.copy()
    rows = _Rows(mask, state)
    if indices is not None:
        rows.grid[mask] = indices  # candidates read only earlier tokens
    family = constriction.stream.model.Categorical(perfect=False)
    encoder = constriction.stream.queue.RangeEncoder()
    for t, y, xs, candidates, above in rows:
        n = xs.size
        available = _available(candidates)
        reference, above_token = candidates[:, 0], above[:, 0]
        select_ctx = np.where(
            reference < 0, 0, np.where(above_token < 0, 3, 1 + (above_token == reference))
        )
        probabilities = _weights(state.select[select_ctx] * available)
        if decoder is None:
            tokens = rows.grid[t, y, xs]
            hit = (candidates == tokens[:, None]) & available[:, :SLOTS]
            choice = np.where(hit.any(axis=1), hit.argmax(axis=1), SLOTS)
        else:
            choice = decoder.decode(family, probabilities).astype(np.int64)
            if choice.min() < 0 or choice.max() > SLOTS:
                raise FormatError(f"tokens: selection outside [0, {SLOTS}]")
            if not available[np.arange(n), choice].all():
                raise FormatError("tokens: selects a candidate that is not there")
            tokens = np.where(
                choice < SLOTS, candidates[np.arange(n), np.minimum(choice, SLOTS - 1)], -1
            )
        encoder.encode(choice.astype(np.int32), family, probabilities)
        _adapt(state.select, (select_ctx,), choice)
        rest = np.flatnonzero(choice == SLOTS)
        if rest.size:
            tokens[rest] = _code_digits(
                tables,
                state,
                None if decoder is None else decoder,
                encoder,
                family,
                tokens[rest],
                _digit_digits(reference[rest], levels),
                _digit_digits(above[rest, 0], levels),
                _digit_digits(np.where(above[rest, 0] >= 0, above[rest, 1], -1), levels),
            )
        rows.grid[t, y, xs] = tokens
    state.latest = rows.latest
    state.last_mask = mask[-1].copy()
    return rows.grid[mask], encoder.get_compressed().astype("<u4").tobytes(), state


def _code_digits(
    tables: FrequencyTables,
    state: ContextState,
    decoder: Any,
    encoder: Any,
    family: Any,
    tokens: np.ndarray,
    reference: np.ndarray,
    above: np.ndarray,
    above_reference: np.ndarray,
) -> np.ndarray:
    """Code the digits of a row's tokens that no candidate gave; returns the tokens.

    `tokens` ``(n,)`` (ignored when decoding); `reference`, `above`, `above_reference`
    ``(n, D)`` digits, -1 rows where absent."""
    levels = tables.levels
    n = len(tokens)
    if decoder is None:
        digits = indices_to_digits(tokens, levels)
    else:
        digits = np.zeros((n, len(levels)), dtype=np.int64)
    has_reference = reference[:, 0] >= 0
    matched = has_reference.copy()
    misses = np.zeros(n, dtype=np.int64)
    for i, level in enumerate(levels):
        c = np.where(matched, 0, digits[:, i - 1]) if i else np.zeros(n, np.int64)
        r = np.where(has_reference, reference[:, i], level)
        change = np.where(
            above_reference[:, 0] < 0, 0, np.where(above[:, i] == above_reference[:, i], 1, 2)
        )
        ctx = (c, r, matched.astype(np.int64), 3 * np.minimum(misses, 2) + change)
        counts = state.digits[i]
        probabilities = _weights(counts[ctx])
        if decoder is not None:
            values = decoder.decode(family, probabilities).astype(np.int64)
            if values.min() < 0 or values.max() >= level:
                raise FormatError(f"tokens: digit {i} value outside [0, {level})")
            digits[:, i] = values
        encoder.encode(digits[:, i].astype(np.int32), family, probabilities)
        _adapt(counts, ctx, digits[:, i])
        missed = has_reference & (digits[:, i] != reference[:, i])
        misses += missed
        matched &= ~missed
    return digits_to_indices(digits, levels)


def _start(mask: np.ndarray, tables: FrequencyTables, start: ContextState | None) -> ContextState:
    if start is None:
        return ContextState.initial(mask.shape[1:], tables)
    if start.latest.shape != mask.shape[1:]:
        raise ValueError(f"state for {start.latest.shape} latent frames, mask {mask.shape}")
    return start


def encode_tokens(
    indices: np.ndarray, mask: np.ndarray, tables: FrequencyTables, start: ContextState | None
) -> tuple[bytes, ContextState]:
    """Code a chunk's kept indices.

    Args:
        indices: ``(mask.sum(),)`` int64 in ``[0, K)``, C order of `mask`.
        mask: ``(T', h, w)`` bool keep-mask.
        tables: the model's frequency tables (the key chunk's prior).
        start: the state the chunk before left (`Chain`), None for a key chunk.

    Returns:
        The payload (``b""`` when nothing is kept; a non-key chunk's starts with the CRC32 of
        `start`) and the state for the next chunk.
    """
    state = _start(mask, tables, start)
    _, words, end = _code(mask, tables, state, indices=np.asarray(indices, dtype=np.int64))
    if not indices.size:
        return b"", end
    prefix = b"" if start is None else state.check_value().to_bytes(_CHECK_BYTES, "little")
    return prefix + words, end


def check_payload(data: bytes, count: int, start: ContextState | None) -> None:
    """The checks of `decode_tokens` that need no decoding: that `data` can hold `count`
    tokens, and that a non-key payload was coded from `start`.

    Raises:
        FormatError: ``tokens: ...``.
    """
    if count == 0:
        if data:
            raise FormatError(f"tokens: {len(data)} payload bytes for 0 indices")
        return
    if start is not None:
        if len(data) < _CHECK_BYTES:
            raise FormatError(f"tokens: {len(data)}-byte payload has no reference check")
        stored = int.from_bytes(data[:_CHECK_BYTES], "little")
        if stored != start.check_value():
            raise FormatError(
                f"tokens: coded from reference state {stored:08x}, the chunks before give "
                f"{start.check_value():08x} (a broken reference chain)"
            )
        data = data[_CHECK_BYTES:]
    check_payload_bits(data, count, MIN_BITS_PER_TOKEN, "tokens")


def decode_tokens(
    data: bytes, mask: np.ndarray, tables: FrequencyTables, start: ContextState | None
) -> tuple[np.ndarray, ContextState]:
    """Mirror of `encode_tokens`: ``(mask.sum(),)`` int64 indices and the next state.

    Raises:
        FormatError: ``tokens: ...`` for any payload `encode_tokens` cannot have produced from
            `mask` and `start`.
    """
    count = int(mask.sum())
    check_payload(data, count, start)
    state = _start(mask, tables, start)
    if count == 0:
        return np.zeros(0, dtype=np.int64), _code(mask, tables, state)[2]
    words = data if start is None else data[_CHECK_BYTES:]
    with coder_errors("tokens"):
        decoder = constriction.stream.queue.RangeDecoder(range_words(words, "tokens"))
        indices, again, end = _code(mask, tables, state, decoder=decoder)
    if again != words:
        raise FormatError("tokens: context payload is damaged (it does not re-encode to itself)")
    return indices, end
