"""Entropy coders for FSQ token indices: the coders that code a chunk alone, and the range-coder
helpers the keep-mask coder (`infotok_codec.bitstream.mask_coder`) and the context coder share.
Their static model is `infotok_codec.bitstream.tables.FrequencyTables`.

Three coders for the indices of kept positions, each coding a chunk alone (the default,
``context``, which also sees the chunk before, is `infotok_codec.bitstream.context_coder`):

- ``range``: a range coder (constriction's ``queue.RangeEncoder``) driven by static integer
  frequency tables (`FrequencyTables`) that ship with the model weights. An index is split into
  its FSQ digits; digit 0 is coded with one table, digit ``i > 0`` with the table selected by the
  value of digit ``i - 1`` (conditional tables; independent tables are the special case where
  every context holds the same row).
- ``adaptive``: the same digits on the same range coder, coded row by row of
  the chunk's latent grid, each digit in a context of the token's previous digit, its
  *reference*'s digit (the token at the same position in the last latent frame that kept it,
  else the kept token above) and whether it has matched the reference so far; the contexts
  start from the table rows and learn the chunk's own counts as they go (`_TokenModel`). One
  video uses a narrow part of the codebook and much of it repeats from one latent frame to the
  next: on dev clips 54% fewer bytes than ``range`` at full rate, and 11% fewer than ``zstd``.
- ``zstd``: the indices packed as little-endian ``uint16`` (``K <= 65536``) or ``uint32`` and
  compressed with zstandard: the simple baseline.

All probabilities handed to the coder are exact integers, so every machine produces and accepts
the same bytes.

Decoders trust nothing: every payload is checked against its declared size before anything is
allocated, and a range payload is accepted only if re-encoding what was decoded reproduces it
byte for byte, so any damaged or non-canonical payload raises `FormatError`.
docs/FORMAT.md specifies the bitstreams.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import constriction
import numpy as np
import zstandard

from infotok_codec.bitstream.tables import (
    PRECISION_BITS,
    TOTAL,
    FrequencyTables,
    digits_to_indices,
    indices_to_digits,
)
from infotok_codec.errors import FormatError, InfotokError

CODERS = ("context", "adaptive", "range", "zstd")
"""Token coder names; ``context`` (`infotok_codec.bitstream.context_coder`, the default) codes
chunks in chains, so `chunk_coding` calls it directly and the functions here take the other
three."""
CHUNK_CODERS = CODERS[1:]
"""The coders `encode_indices` and `decode_indices` take."""

ZSTD_LEVEL = 19


# Adaptive token model constants (part of the bitstream, like the mask model's).
_ADAPTIVE_LIMIT = 4096
"""An adaptive token context is halved once its counts pass this (units of 1/16 observation),
so it follows local statistics and no symbol's probability exceeds a known bound."""
_ADAPTIVE_FLOOR = 4
"""The least count of any symbol in an adaptive token context."""
_RANGE_SLACK_BITS = 64
"""A range coder's output is never shorter than the message's information content minus one
32-bit word; this margin is twice that."""


@contextmanager
def coder_errors(what: str) -> Iterator[None]:
    """Turn anything the coding library raises on a bad payload into a FormatError.

    constriction reports Rust panics as pyo3's ``PanicException``, which derives from
    ``BaseException``, so the net is wider than ``Exception``; interrupts still pass.
    """
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        raise
    except FormatError:
        raise
    except BaseException as e:
        raise FormatError(f"{what}: payload does not decode ({type(e).__name__}: {e})") from e


def range_words(data: bytes, what: str) -> np.ndarray:
    """A range-coder payload as its ``uint32`` words (stored little-endian)."""
    if len(data) % 4:
        raise FormatError(f"{what}: range payload length {len(data)} is not a multiple of 4")
    return np.frombuffer(data, dtype="<u4").astype(np.uint32)


def check_payload_bits(data: bytes, count: int, min_bits: float, what: str) -> None:
    """Reject a payload too short to hold ``count`` symbols of at least ``min_bits`` each,
    before the decoder allocates ``count`` of anything."""
    if count * min_bits * (1 - 1e-9) > 8 * len(data) + _RANGE_SLACK_BITS:
        raise FormatError(f"{what}: {len(data)} payload bytes cannot hold {count} symbols")


def _check_indices(indices: np.ndarray, tables: FrequencyTables) -> np.ndarray:
    flat = np.asarray(indices)
    if flat.ndim != 1 or not np.issubdtype(flat.dtype, np.integer):
        raise ValueError(f"indices must be a 1-D integer array, got {flat.dtype} {flat.shape}")
    if flat.size and (flat.min() < 0 or flat.max() >= tables.codebook_size):
        raise ValueError(f"indices outside [0, {tables.codebook_size})")
    return flat.astype(np.int64)


def _columns(indices: np.ndarray, tables: FrequencyTables) -> np.ndarray:
    """``(D, N)`` int32 digits, one contiguous row per digit (the range coder's layout)."""
    return np.ascontiguousarray(indices_to_digits(indices, tables.levels).T, dtype=np.int32)


def check_coder(coder: str) -> None:
    if coder not in CODERS:
        raise InfotokError(f"unknown coder {coder!r}: choose one of {', '.join(CODERS)}")


def _check_chunk_coder(coder: str) -> None:
    check_coder(coder)
    if coder not in CHUNK_CODERS:
        raise ValueError(
            f"coder {coder!r} codes chunks in chains: use infotok_codec.bitstream.context_coder"
        )


def encode_indices(
    indices: np.ndarray, coder: str, tables: FrequencyTables, mask: np.ndarray | None = None
) -> bytes:
    """Code FSQ indices.

    Args:
        indices: ``(N,)`` integers in ``[0, K)``, ``K = tables.codebook_size``; ``N`` may be 0.
        coder: ``adaptive``, ``range`` or ``zstd``.
        tables: the model's frequency tables (``zstd`` uses only their levels).
        mask: ``(T', h, w)`` bool keep-mask with ``N`` True positions, `indices` in its C order;
            needed by ``adaptive`` (its contexts are the tokens' neighbours), ignored otherwise.

    Returns:
        The payload; ``b""`` when ``N == 0``.
    """
    _check_chunk_coder(coder)
    flat = _check_indices(indices, tables)
    if flat.size == 0:
        return b""
    if coder == "zstd":
        return _zstd_encode(flat, tables)
    if coder == "adaptive":
        return _adaptive_encode(flat, _check_token_mask(mask, flat.size), tables)
    return _range_encode(_columns(flat, tables), tables)


def decode_indices(
    data: bytes,
    count: int,
    coder: str,
    tables: FrequencyTables,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Mirror of `encode_indices`.

    Args:
        data: the payload, untrusted.
        count: the number of indices it holds (a chunk's ``kept``), >= 0.
        coder: as for `encode_indices`.
        tables: the same tables the encoder used.
        mask: as for `encode_indices` (``adaptive`` only), with `count` True positions.

    Returns:
        ``(count,)`` int64 in ``[0, K)``.

    Raises:
        FormatError: ``tokens: ...`` for any payload that `encode_indices` cannot have produced
            for ``count`` indices.
    """
    check_indices_payload(data, count, coder, tables)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    if coder == "zstd":
        return _zstd_decode(data, count, tables)
    if coder == "adaptive":
        indices, again = _adaptive_decode(data, _check_token_mask(mask, count), tables)
    else:
        columns = _range_decode(data, count, tables)
        indices = digits_to_indices(columns.T, tables.levels)
        again = _range_encode(columns, tables)
    # Only bytes that re-encode identically are accepted: this catches garbage that a range
    # decoder would otherwise turn into plausible symbols, and trailing bytes.
    if again != data:
        raise FormatError(f"tokens: {coder} payload is damaged (it does not re-encode to itself)")
    return indices


def check_indices_payload(data: bytes, count: int, coder: str, tables: FrequencyTables) -> None:
    """The checks of `decode_indices` that need no decoding: whether `data` can hold `count`
    indices at all. Cheap, so a caller can bound an untrusted `count` before allocating
    anything of its size (a chunk's keep-mask, for one).

    Raises:
        FormatError: ``tokens: ...``.
    """
    _check_chunk_coder(coder)
    if count < 0:
        raise ValueError(f"count {count} is negative")
    if count == 0:
        if data:
            raise FormatError(f"tokens: {len(data)} payload bytes for 0 indices")
    elif coder == "zstd":
        _zstd_frame_check(data, count, tables)
    else:
        min_bits = (
            _min_bits_per_adaptive_index(tables)
            if coder == "adaptive"
            else tables.min_bits_per_index
        )
        check_payload_bits(data, count, min_bits, "tokens")


def _check_token_mask(mask: np.ndarray | None, count: int) -> np.ndarray:
    if mask is None:
        raise ValueError("the adaptive coder needs the keep-mask")
    mask = np.asarray(mask)
    if mask.dtype != np.bool_ or mask.ndim != 3 or int(mask.sum()) != count:
        raise ValueError(f"mask must be (T', h, w) bool with {count} kept positions")
    return mask


def _digit_groups(columns: np.ndarray, i: int, contexts: int) -> Iterator[tuple[np.ndarray, int]]:
    """The order in which digit ``i`` is coded: groups of positions (into ``columns[i]``)
    sharing one context, each with its context.

    Digit 0 is one group; digit ``i > 0`` is split by the value of digit ``i - 1`` (already
    known to the decoder), contexts in increasing order, positions in increasing order within
    a context. Grouping lets each group go to the coder as one array with one model.
    """
    if i == 0:
        yield np.arange(columns.shape[1]), 0
        return
    # Levels are <= 256, so uint8 holds the context and the stable sort is a radix sort.
    previous = columns[i - 1].astype(np.uint8)
    order = np.argsort(previous, kind="stable")
    counts = np.bincount(previous, minlength=contexts)
    for context, positions in enumerate(np.split(order, np.cumsum(counts)[:-1])):
        if positions.size:
            yield positions, context


def _range_encode(columns: np.ndarray, tables: FrequencyTables) -> bytes:
    """``(D, N)`` int32 digits to range-coder bytes: digit by digit, each in `_digit_groups`
    order."""
    encoder = constriction.stream.queue.RangeEncoder()
    for i, models in enumerate(tables.coder_models):
        for positions, context in _digit_groups(columns, i, len(models)):
            encoder.encode(columns[i][positions], models[context])
    return encoder.get_compressed().astype("<u4").tobytes()


def _range_decode(data: bytes, count: int, tables: FrequencyTables) -> np.ndarray:
    """Mirror of `_range_encode`: ``(D, count)`` int32 digits (the payload's size already
    checked by `check_indices_payload`)."""
    columns = np.zeros((len(tables.levels), count), dtype=np.int32)
    with coder_errors("tokens"):
        decoder = constriction.stream.queue.RangeDecoder(range_words(data, "tokens"))
        for i, (level, models) in enumerate(zip(tables.levels, tables.coder_models, strict=True)):
            for positions, context in _digit_groups(columns, i, len(models)):
                values = decoder.decode(models[context], positions.size)
                # A categorical model over `level` symbols cannot yield others; checked anyway
                # because nothing from a file is taken on trust, the library included.
                if values.min() < 0 or values.max() >= level:
                    raise FormatError(f"tokens: digit {i} value outside [0, {level})")
                columns[i][positions] = values
    return columns


def _quantize_rows(counts: np.ndarray) -> np.ndarray:
    """`tables.quantize_row` for every row of ``(n, L)`` int64 counts at once, in int64 (the counts
    are bounded by the adaptive model's limit, so every product stays far below 2**63)."""
    n = counts.shape[1]
    total = counts.sum(axis=1, keepdims=True)
    free = TOTAL - n
    share, frac = np.divmod(counts * free, total)
    remainder = free - share.sum(axis=1, keepdims=True)
    # Rank of each symbol by fractional part, largest first, ties to the lower symbol.
    rank = np.argsort(np.argsort(-frac, axis=1, kind="stable"), axis=1, kind="stable")
    return 1 + share + (rank < remainder)


def _min_bits_per_adaptive_index(tables: FrequencyTables) -> float:
    """The fewest bits any index can cost under the ``adaptive`` coder (for payload-size bounds):
    every other symbol of a context keeps at least `_ADAPTIVE_FLOOR` of at most `_ADAPTIVE_LIMIT`
    units (plus one rounding step)."""
    return sum(
        -math.log2(1 - (level - 1) * _ADAPTIVE_FLOOR / _ADAPTIVE_LIMIT + level / TOTAL)
        for level in tables.levels
    )


class _TokenModel:
    """Adaptive context model for the ``adaptive`` coder, shared by its encoder and decoder.

    Kept positions are visited latent frame by latent frame, row by row; a row's kept positions
    go to the coder together, digit by digit. A token's *reference* is the token at the same
    position in the latest earlier latent frame that kept it, else the nearest kept token above
    it in its own frame (none in the first row of the first frame). Digit ``i`` is coded in the
    context ``(c, r, m)``: ``c`` the token's digit ``i - 1`` (0 for digit 0), ``r`` the
    reference's digit ``i`` (``levels[i]`` when there is no reference), ``m`` 1 when there is a
    reference and the token's digits ``0 .. i - 1`` equal the reference's.

    A matched token's ``c`` is set to 0: its digit ``i - 1`` is its reference's, so it would
    only split the context.

    Counts are integers in units of 1/16 of an observation. Context ``(c, r, m)`` starts from
    table row ``w = weights[i][c]``: ``4 + (w * 64 >> 24)`` without a reference; with one,
    ``4 + (w * 32 >> 24)`` plus 32 (``m = 0``) or 96 (``m = 1``) units on symbol ``r``. After
    a row's digit ``i`` is coded, each of its symbols adds 16 to its context's count; a context
    whose total then passes `_ADAPTIVE_LIMIT` is halved (rounding up) with every count kept at
    least `_ADAPTIVE_FLOOR`, until it does not.
    """

    def __init__(self, mask: np.ndarray, tables: FrequencyTables) -> None:
        self.mask = mask
        self.levels = tables.levels
        self.grid = np.full(mask.shape, -1, dtype=np.int64)
        self.counts = []
        for i, level in enumerate(self.levels):
            rows = np.asarray(tables.weights[i], dtype=np.int64)  # (contexts, level)
            counts = np.empty((len(rows), level + 1, 2, level), dtype=np.int64)
            counts[:, level] = _ADAPTIVE_FLOOR + ((rows * 64) >> PRECISION_BITS)[:, None, :]
            counts[:, :level] = _ADAPTIVE_FLOOR + ((rows * 32) >> PRECISION_BITS)[:, None, None]
            spike = np.arange(level)
            counts[:, spike, 0, spike] += 32
            counts[:, spike, 1, spike] += 96  # a token that matched so far tends to go on
            self.counts.append(counts)

    def rows(self) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
        """``(t, y, xs, reference)`` per row with kept positions, in coding order, `reference`
        the references' digits (``(n, D)``, -1 where there is none); the caller codes the row's
        tokens, then stores them with `store` before resuming."""
        frames, height, width = self.mask.shape
        latest = np.full((height, width), -1, dtype=np.int64)
        for t in range(frames):
            above = np.full(width, -1, dtype=np.int64)
            for y in range(height):
                xs = np.flatnonzero(self.mask[t, y])
                if xs.size:
                    earlier = latest[y, xs]
                    reference = np.where(earlier >= 0, earlier, above[xs])
                    digits = indices_to_digits(np.maximum(reference, 0), self.levels)
                    digits[reference < 0] = -1
                    yield t, y, xs, digits
                    above[xs] = self.grid[t, y, xs]
            latest = np.where(self.mask[t], self.grid[t], latest)

    def contexts(
        self, i: int, digits: np.ndarray, reference: np.ndarray, matched: np.ndarray
    ) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
        """Context indices of digit ``i`` for a row, and each symbol's model: ``(n, levels[i])``
        float64 rows ``w - 1`` (exact for constriction, as in `FrequencyTables.coder_models`).

        `digits` holds the row's digits ``0 .. i - 1`` (``(n, D)``; later columns unused),
        `reference` the references' digits (``(n, D)``, -1 where there is none) and `matched`
        whether digits ``0 .. i - 1`` equal the reference's (False where there is none).
        """
        # A matched token's digit i - 1 is its reference's: it would only split the context.
        c = np.where(matched, 0, digits[:, i - 1]) if i else np.zeros(len(digits), np.int64)
        r = np.where(reference[:, i] >= 0, reference[:, i], self.levels[i])
        ctx = (c, r, matched.astype(np.int64))
        weights = _quantize_rows(self.counts[i][ctx])
        return ctx, (weights - 1).astype(np.float64)

    def update(self, i: int, ctx: tuple[np.ndarray, ...], symbols: np.ndarray) -> None:
        counts = self.counts[i]
        np.add.at(counts, (*ctx, symbols), 16)
        # Only the contexts this row touched can have passed the limit.
        touched = np.unique(np.ravel_multi_index(ctx, counts.shape[:-1]))
        rows = counts.reshape(-1, counts.shape[-1])
        for context in touched[rows[touched].sum(axis=1) > _ADAPTIVE_LIMIT]:
            while rows[context].sum() > _ADAPTIVE_LIMIT:
                rows[context] = np.maximum((rows[context] + 1) >> 1, _ADAPTIVE_FLOOR)

    def store(self, t: int, y: int, xs: np.ndarray, digits: np.ndarray) -> None:
        """Record a coded row, for the references of later rows."""
        self.grid[t, y, xs] = digits_to_indices(digits, self.levels)


def _adaptive_code(
    mask: np.ndarray,
    tables: FrequencyTables,
    *,
    indices: np.ndarray | None = None,
    decoder: Any = None,
) -> tuple[np.ndarray, bytes]:
    """Walk `_TokenModel`'s coding order once, range-encoding every digit: the encoder's pass
    (`indices` given) or the decoder's (digits read from `decoder`), whose re-encoding is then
    the canonical check at the cost of the coder calls alone. Returns the kept indices (C order
    of `mask`) and the encoded bytes."""
    model = _TokenModel(mask, tables)
    if indices is not None:
        model.grid[mask] = indices  # references read only earlier tokens
    family = constriction.stream.model.Categorical(perfect=False)
    encoder = constriction.stream.queue.RangeEncoder()
    for t, y, xs, reference in model.rows():
        if decoder is None:
            digits = indices_to_digits(model.grid[t, y, xs], tables.levels)
        else:
            digits = np.zeros((xs.size, len(tables.levels)), dtype=np.int64)
        matched = reference[:, 0] >= 0
        for i, level in enumerate(tables.levels):
            ctx, probabilities = model.contexts(i, digits, reference, matched)
            if decoder is not None:
                values = decoder.decode(family, probabilities).astype(np.int64)
                if values.min() < 0 or values.max() >= level:
                    raise FormatError(f"tokens: digit {i} value outside [0, {level})")
                digits[:, i] = values
            encoder.encode(digits[:, i].astype(np.int32), family, probabilities)
            model.update(i, ctx, digits[:, i])
            matched &= digits[:, i] == reference[:, i]
        model.store(t, y, xs, digits)
    return model.grid[mask], encoder.get_compressed().astype("<u4").tobytes()


def _adaptive_encode(indices: np.ndarray, mask: np.ndarray, tables: FrequencyTables) -> bytes:
    """Kept indices (C order of `mask`) to range-coder bytes under `_TokenModel`."""
    return _adaptive_code(mask, tables, indices=indices)[1]


def _adaptive_decode(
    data: bytes, mask: np.ndarray, tables: FrequencyTables
) -> tuple[np.ndarray, bytes]:
    """Mirror of `_adaptive_encode`: the kept indices, and what they re-encode to."""
    with coder_errors("tokens"):
        decoder = constriction.stream.queue.RangeDecoder(range_words(data, "tokens"))
        return _adaptive_code(mask, tables, decoder=decoder)


def _zstd_width(tables: FrequencyTables) -> int:
    return 2 if tables.codebook_size <= 1 << 16 else 4


def _zstd_encode(indices: np.ndarray, tables: FrequencyTables) -> bytes:
    """Indices packed as little-endian uint16/uint32, in one zstd frame with its content size
    and checksum."""
    dtype = "<u2" if _zstd_width(tables) == 2 else "<u4"
    compressor = zstandard.ZstdCompressor(
        level=ZSTD_LEVEL, write_checksum=True, write_content_size=True
    )
    return compressor.compress(indices.astype(dtype).tobytes())


def _zstd_frame_check(data: bytes, count: int, tables: FrequencyTables) -> None:
    expected = count * _zstd_width(tables)
    with coder_errors("tokens"):
        params = zstandard.get_frame_parameters(data)
    if params.content_size != expected:
        raise FormatError(
            f"tokens: zstd frame declares {params.content_size} bytes, "
            f"{count} indices need {expected}"
        )
    if not params.has_checksum:
        raise FormatError("tokens: zstd frame has no checksum")


def _zstd_decode(data: bytes, count: int, tables: FrequencyTables) -> np.ndarray:
    """Mirror of `_zstd_encode`. The frame must declare exactly ``count * width`` bytes before
    anything is decompressed (`_zstd_frame_check`, already run by `check_indices_payload`; zstd
    then refuses to write more), carry a checksum, and be the whole payload."""
    width = _zstd_width(tables)
    expected = count * width
    with coder_errors("tokens"):
        stream = zstandard.ZstdDecompressor().decompressobj()
        raw = stream.decompress(data)
        complete, unused = stream.eof, stream.unused_data
    if not complete or len(raw) != expected:
        raise FormatError(f"tokens: zstd frame is truncated ({len(raw)} of {expected} bytes)")
    if unused:
        raise FormatError(f"tokens: {len(unused)} bytes after the zstd frame")
    indices = np.frombuffer(raw, dtype="<u2" if width == 2 else "<u4").astype(np.int64)
    if indices.max() >= tables.codebook_size:
        raise FormatError(f"tokens: index {indices.max()} outside [0, {tables.codebook_size})")
    return indices
