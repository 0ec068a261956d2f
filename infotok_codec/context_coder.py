"""The ``context`` token coder: FSQ indices predicted from their neighbours in space, in time
and across chunks, with adaptive integer counts on a range coder.

A chunk's kept tokens are coded latent frame by latent frame, row by row, and in each row
those at even ``x``, then those at odd ``x``; each such batch goes to the range coder together
(vectorised), so every context is built from tokens of earlier batches, latent frames and
chunks only. For each token:

1. A *selection* symbol says which of eight candidates it equals, or none: its *reference*
   (the latest token kept at its position, in this chunk or the chunks before it back to the
   key chunk, else the nearest kept token above it in its latent frame), the token right above
   it, its left and right neighbours (known to odd ``x``), the latest tokens at those
   neighbours' positions (motion), and the tokens above left and above right. Candidates that
   are missing or repeat an earlier one are excluded.
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
SLOTS = 8
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


def _adapt(rows: np.ndarray, flat: np.ndarray, symbols: np.ndarray) -> None:
    """Add `STEP` per coded symbol to its context's row of `rows` (``(contexts, L)``, contexts
    `flat`), then halve every touched context whose total passed `LIMIT`
    (``max((n + 1) >> 1, FLOOR)``) until it no longer does."""
    np.add.at(rows, (flat, symbols), STEP)
    full = flat[rows[flat].sum(axis=1) > LIMIT]
    if full.size:
        for context in np.unique(full):
            while rows[context].sum() > LIMIT:
                rows[context] = np.maximum((rows[context] + 1) >> 1, FLOOR)


class _Rows:
    """The coding order and the candidates of each batch; encoder and decoder share it."""

    def __init__(self, mask: np.ndarray, state: ContextState) -> None:
        self.mask, self.state = mask, state
        self.grid = np.full(mask.shape, -1, dtype=np.int64)

    def __iter__(self) -> Iterator[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]]:
        """``(t, y, xs, candidates (n, SLOTS), above (n, 2))`` per batch, in coding order: the
        kept positions of a row at even ``x``, then at odd ``x`` (which see their left and right
        neighbours); ``above`` holds the nearest kept token above and its reference. The
        caller fills ``grid[t, y, xs]`` before resuming."""
        frames, height, width = self.mask.shape
        # Rows padded with -1 on both sides: column x is entry x + 1, so x - 1 and x + 1 of
        # any x in the row are entries x and x + 2.
        latest = np.pad(self.state.latest, ((0, 0), (1, 1)), constant_values=-1)
        for t in range(frames):
            above = np.full(width, -1, dtype=np.int64)
            above_ref = np.full(width, -1, dtype=np.int64)
            previous_row = np.full(width + 2, -1, dtype=np.int64)
            for y in range(height):
                kept = np.flatnonzero(self.mask[t, y])
                current = np.full(width + 2, -1, dtype=np.int64)
                for xs in (kept[kept % 2 == 0], kept[kept % 2 == 1]):
                    if not xs.size:
                        continue
                    earlier = latest[y, xs + 1]
                    reference = np.where(earlier >= 0, earlier, above[xs])
                    candidates = np.stack(
                        [
                            reference,
                            previous_row[xs + 1],
                            current[xs],
                            current[xs + 2],
                            latest[y, xs],
                            latest[y, xs + 2],
                            previous_row[xs],
                            previous_row[xs + 2],
                        ],
                        axis=1,
                    )
                    yield t, y, xs, candidates, np.stack([above[xs], above_ref[xs]], axis=1)
                    tokens = self.grid[t, y, xs]
                    current[xs + 1] = tokens
                    above[xs], above_ref[xs] = tokens, reference
                previous_row = current
            latest[:, 1:-1] = np.where(self.mask[t], self.grid[t], latest[:, 1:-1])
        self.latest = latest[:, 1:-1]


_EARLIER = np.tri(SLOTS, k=-1, dtype=bool)  # [j, k]: slot k comes before slot j


def _available(candidates: np.ndarray) -> np.ndarray:
    """``(n, SLOTS + 1)`` bool: present candidates that repeat no earlier one, and *none*."""
    repeats = ((candidates[:, :, None] == candidates[:, None, :]) & _EARLIER).any(axis=2)
    available = (candidates >= 0) & ~repeats
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
        _adapt(state.select, select_ctx, choice)
        rest = np.flatnonzero(choice == SLOTS)
        if rest.size:
            known = np.concatenate(
                [reference[rest], above[rest, 0], np.where(above[rest, 0] >= 0, above[rest, 1], -1)]
            )
            reference_digits, above_digits, above_reference = np.split(
                _digit_digits(known, levels), 3
            )
            tokens[rest] = _code_digits(
                tables,
                state,
                decoder,
                encoder,
                family,
                tokens[rest],
                reference_digits,
                above_digits,
                above_reference,
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
    # The change of the token above, per digit: 0 unknown, 1 kept its reference's, 2 changed.
    change = np.where(above_reference[:, :1] < 0, 0, 1 + (above != above_reference))
    for i, level in enumerate(levels):
        c = np.where(matched, 0, digits[:, i - 1]) if i else 0
        r = np.where(has_reference, reference[:, i], level)
        # Flat index of context (c, r, m, f) in counts of shape (C, level + 1, 2, FEATURES, L).
        ctx = ((c * (level + 1) + r) * 2 + matched) * FEATURES + 3 * misses + change[:, i]
        rows = state.digits[i].reshape(-1, level)
        probabilities = _weights(rows[ctx])
        if decoder is not None:
            values = decoder.decode(family, probabilities).astype(np.int64)
            if values.min() < 0 or values.max() >= level:
                raise FormatError(f"tokens: digit {i} value outside [0, {level})")
            digits[:, i] = values
        encoder.encode(digits[:, i].astype(np.int32), family, probabilities)
        _adapt(rows, ctx, digits[:, i])
        missed = has_reference & (digits[:, i] != reference[:, i])
        misses = np.minimum(misses + missed, 2)
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
