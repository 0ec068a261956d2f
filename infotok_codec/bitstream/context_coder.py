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
from the state the chunk before it ended with (`ContextState`), a key chunk from the model
file's *key prior* (`KeyPrior`: counts fitted on training tokens, format version 5) or, without
one, from counts derived from the shipped frequency tables. All arithmetic is in integers, so
every machine codes the same bytes; docs/FORMAT.md specifies the model precisely.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import constriction
import numba
import numpy as np

from infotok_codec.bitstream.context_state import (
    FEATURES,
    FLOOR,
    LIMIT,
    SLOTS,
    STEP,
    ContextState,
    KeyPrior,
    count_shapes,
    derived_counts,
)
from infotok_codec.bitstream.entropy import check_payload_bits, coder_errors, range_words
from infotok_codec.bitstream.tables import TOTAL, FrequencyTables
from infotok_codec.errors import FormatError

_CHECK_BYTES = 4
"""A non-key chunk's payload starts with the CRC32 of the state it was coded from."""
MIN_BITS_PER_TOKEN = -float(np.log2(1 - FLOOR / LIMIT + (SLOTS + 2) / TOTAL))
"""The fewest bits a token can cost: its selection symbol's least cost when a candidate is
available, which is below any digit's (digits keep ``FLOOR`` per symbol the same way)."""


Tally = Callable[[int, np.ndarray, np.ndarray], None]
"""Called as `tally(array, contexts, symbols)` for every batch of coded symbols: `array` 0 is the
selection counts, ``1 + i`` digit ``i``'s (`context_prior` fits a `KeyPrior` from it)."""


@dataclass
class Chain:
    """The coder's memory along one stream, for `chunk_coding.encode_chunk` / `decode_chunk`.

    Hand the same chain the chunks of a stream in order, starting at a key chunk; each call
    leaves in it the state the next chunk needs. Coders that code every chunk alone leave
    `state` None.
    """

    next_chunk: int | None = None
    state: ContextState | None = None


# The model's arithmetic, token by token, compiled by numba: a batch holds a dozen tokens or so,
# too few for numpy calls to pay for themselves (the numpy version of this coder spent most of
# its time in call overhead). Integers throughout; the float64 weights handed to constriction
# are whole numbers below 2**24, so exact.
_kernel = numba.njit(cache=True, nogil=True)


@_kernel
def _weights_into(counts: np.ndarray, out: np.ndarray) -> None:
    """`out` = integer weights, each >= 1, summing to ``2**24``, from `counts` (>= 0, sum > 0):
    ``1 + n * free // sum`` with ``free = 2**24 - L``, and what rounding leaves over added to
    the first largest count; stored as float64 ``w - 1`` (see `FrequencyTables.coder_models`)."""
    level = counts.size
    total = 0
    best = 0
    for k in range(level):
        total += counts[k]
        if counts[k] > counts[best]:
            best = k
    free = TOTAL - level
    given = 0
    for k in range(level):
        weight = 1 + counts[k] * free // total
        given += weight
        out[k] = weight - 1
    out[best] += TOTAL - given


@_kernel
def _adapt(rows: np.ndarray, flat: np.ndarray, symbols: np.ndarray) -> None:
    """Add `STEP` per coded symbol to its context's row of `rows` (``(contexts, L)``, contexts
    `flat`), then halve every touched context whose total passed `LIMIT`
    (``max((n + 1) >> 1, FLOOR)``) until it no longer does."""
    for j in range(flat.size):
        rows[flat[j], symbols[j]] += STEP
    for j in range(flat.size):
        row = rows[flat[j]]
        while row.sum() > LIMIT:
            for k in range(row.size):
                row[k] = max((row[k] + 1) >> 1, FLOOR)


@_kernel
def _select_model(
    latest: np.ndarray,
    above: np.ndarray,
    previous_row: np.ndarray,
    current: np.ndarray,
    xs: np.ndarray,
    select: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A batch's candidates ``(n, SLOTS)``, availability ``(n, SLOTS + 1)`` (present, repeating
    no earlier candidate; *none* always), selection contexts ``(n,)`` and weights.

    `latest`, `previous_row` and `current` are rows padded with -1 on both sides (column x is
    entry x + 1); `above` holds the nearest kept token above each column."""
    n = xs.size
    candidates = np.empty((n, SLOTS), np.int64)
    available = np.empty((n, SLOTS + 1), np.bool_)
    contexts = np.empty(n, np.int64)
    weights = np.empty((n, SLOTS + 1), np.float64)
    counts = np.empty(SLOTS + 1, np.int64)
    for j in range(n):
        x = xs[j]
        reference = latest[x + 1] if latest[x + 1] >= 0 else above[x]
        candidates[j, 0] = reference
        candidates[j, 1] = previous_row[x + 1]
        candidates[j, 2] = current[x]
        candidates[j, 3] = current[x + 2]
        candidates[j, 4] = latest[x]
        candidates[j, 5] = latest[x + 2]
        candidates[j, 6] = previous_row[x]
        candidates[j, 7] = previous_row[x + 2]
        for k in range(SLOTS):
            value = candidates[j, k]
            ok = value >= 0
            for m in range(k):
                if candidates[j, m] == value:
                    ok = False
            available[j, k] = ok
        available[j, SLOTS] = True
        if reference < 0:
            context = 0
        elif above[x] < 0:
            context = 3
        else:
            context = 2 if above[x] == reference else 1
        contexts[j] = context
        for k in range(SLOTS + 1):
            counts[k] = select[context, k] if available[j, k] else 0
        _weights_into(counts, weights[j])
    return candidates, available, contexts, weights


@_kernel
def _choose(candidates: np.ndarray, available: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """The encoder's selection symbols: the first available candidate equal to each token,
    else ``SLOTS``."""
    choice = np.full(tokens.size, SLOTS, np.int64)
    for j in range(tokens.size):
        for k in range(SLOTS):
            if available[j, k] and candidates[j, k] == tokens[j]:
                choice[j] = k
                break
    return choice


@_kernel
def _selected(candidates: np.ndarray, available: np.ndarray, choice: np.ndarray) -> np.ndarray:
    """The decoder's tokens from its selection symbols, -1 for *none*; all -2 when a symbol
    names a candidate that is not there (the caller's `FormatError`)."""
    tokens = np.full(choice.size, -1, np.int64)
    for j in range(choice.size):
        k = choice[j]
        if k < 0 or k > SLOTS or not available[j, k]:
            tokens[:] = -2
            return tokens
        if k < SLOTS:
            tokens[j] = candidates[j, k]
    return tokens


@_kernel
def _digits_of(values: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """FSQ digits ``(n, D)`` of `values` (digit 0 least significant), -1 rows where a value
    is -1."""
    digits = np.empty((values.size, levels.size), np.int64)
    for j in range(values.size):
        rest = values[j]
        for i in range(levels.size):
            digits[j, i] = rest % levels[i] if values[j] >= 0 else -1
            rest //= levels[i]
    return digits


@_kernel
def _indices_of(digits: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Inverse of `_digits_of` for rows without -1."""
    indices = np.zeros(digits.shape[0], np.int64)
    for j in range(digits.shape[0]):
        for i in range(levels.size - 1, -1, -1):
            indices[j] = indices[j] * levels[i] + digits[j, i]
    return indices


@_kernel
def _digit_model(
    rows: np.ndarray,
    i: int,
    digits: np.ndarray,
    matched: np.ndarray,
    reference: np.ndarray,
    misses: np.ndarray,
    change: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Contexts ``(n,)`` and weights ``(n, L)`` of FSQ digit `i` of a batch's tokens: context
    ``(c, r, m, f)`` of counts ``(C, L + 1, 2, FEATURES, L)`` flattened, with `c` the previous
    digit (0 for digit 0 or while the token matches its reference), `r` the reference's digit
    (L without one), `m` the match so far and `f` ``3 * misses + change``. `digits`,
    `reference` and `change` are ``(n, D)``."""
    level = rows.shape[1]
    n = matched.size
    contexts = np.empty(n, np.int64)
    weights = np.empty((n, level), np.float64)
    for j in range(n):
        c = 0 if i == 0 or matched[j] else digits[j, i - 1]
        r = reference[j, i] if reference[j, i] >= 0 else level
        m = 1 if matched[j] else 0
        contexts[j] = ((c * (level + 1) + r) * 2 + m) * FEATURES + 3 * misses[j] + change[j, i]
        _weights_into(rows[contexts[j]], weights[j])
    return contexts, weights


@_kernel
def _digit_seen(
    rows: np.ndarray,
    contexts: np.ndarray,
    digits: np.ndarray,
    i: int,
    reference: np.ndarray,
    matched: np.ndarray,
    misses: np.ndarray,
) -> bool:
    """Adapt to coded digit `i` and update the match state; False (nothing changed) when a
    value is outside the digit's range."""
    level = rows.shape[1]
    values = digits[:, i].copy()
    for j in range(values.size):
        if values[j] < 0 or values[j] >= level:
            return False
    _adapt(rows, contexts, values)
    for j in range(values.size):
        if reference[j, i] >= 0 and values[j] != reference[j, i]:
            misses[j] = min(misses[j] + 1, 2)
            matched[j] = False
    return True


def _code(
    mask: np.ndarray,
    tables: FrequencyTables,
    start: ContextState,
    *,
    indices: np.ndarray | None = None,
    decoder: Any = None,
    tally: Tally | None = None,
) -> tuple[np.ndarray, bytes, ContextState]:
    """Walk the coding order once, range-encoding every symbol: the encoder's pass (`indices`
    given, C order of `mask`) or the decoder's (symbols read from `decoder`), whose
    re-encoding is the canonical check. Returns the kept indices, the encoded words and the
    end state. `start` is not modified.

    The order: latent frame by latent frame, row by row, the kept positions of a row at even
    ``x``, then at odd ``x`` (which see their left and right neighbours)."""
    state = start.copy()
    frames, height, width = mask.shape
    grid = np.full(mask.shape, -1, dtype=np.int64)
    if indices is not None:
        grid[mask] = indices  # candidates read only earlier tokens
    family = constriction.stream.model.Categorical(perfect=False)
    encoder = constriction.stream.queue.RangeEncoder()
    levels = np.asarray(tables.levels, dtype=np.int64)
    digit_rows = [d.reshape(-1, int(level)) for d, level in zip(state.digits, levels, strict=True)]
    # Rows padded with -1 on both sides: column x is entry x + 1.
    latest = np.pad(state.latest, ((0, 0), (1, 1)), constant_values=-1)
    for t in range(frames):
        above = np.full(width, -1, dtype=np.int64)  # nearest kept token above, in this frame
        above_ref = np.full(width, -1, dtype=np.int64)  # and its reference
        previous_row = np.full(width + 2, -1, dtype=np.int64)
        for y in range(height):
            kept = np.flatnonzero(mask[t, y])
            current = np.full(width + 2, -1, dtype=np.int64)
            for xs in (kept[kept % 2 == 0], kept[kept % 2 == 1]):
                if not xs.size:
                    continue
                candidates, available, contexts, weights = _select_model(
                    latest[y], above, previous_row, current, xs, state.select
                )
                if decoder is None:
                    tokens = grid[t, y, xs]
                    choice = _choose(candidates, available, tokens)
                else:
                    choice = decoder.decode(family, weights).astype(np.int64)
                    tokens = _selected(candidates, available, choice)
                    if tokens.size and tokens[0] == -2:
                        raise FormatError("tokens: selects a candidate that is not there")
                encoder.encode(choice.astype(np.int32), family, weights)
                _adapt(state.select, contexts, choice)
                if tally is not None:
                    tally(0, contexts, choice)
                rest = np.flatnonzero(choice == SLOTS)
                reference = candidates[:, 0]
                if rest.size:
                    near = above[xs[rest]]
                    known = np.concatenate(
                        [reference[rest], near, np.where(near >= 0, above_ref[xs[rest]], -1)]
                    )
                    known_digits = _digits_of(known, levels)
                    tokens[rest] = _code_digits(
                        levels,
                        digit_rows,
                        decoder,
                        encoder,
                        family,
                        tokens[rest],
                        known_digits[: rest.size],
                        known_digits[rest.size : 2 * rest.size],
                        known_digits[2 * rest.size :],
                        tally,
                    )
                grid[t, y, xs] = tokens
                current[xs + 1] = tokens
                above[xs], above_ref[xs] = tokens, reference
            previous_row = current
        latest[:, 1:-1] = np.where(mask[t], grid[t], latest[:, 1:-1])
    state.latest = latest[:, 1:-1].copy()
    state.last_mask = mask[-1].copy()
    return grid[mask], encoder.get_compressed().astype("<u4").tobytes(), state


def _code_digits(
    levels: np.ndarray,
    digit_rows: list[np.ndarray],
    decoder: Any,
    encoder: Any,
    family: Any,
    tokens: np.ndarray,
    reference: np.ndarray,
    above: np.ndarray,
    above_reference: np.ndarray,
    tally: Tally | None = None,
) -> np.ndarray:
    """Code the digits of a batch's tokens that no candidate gave; returns the tokens.

    `tokens` ``(n,)`` (ignored when decoding); `reference`, `above`, `above_reference`
    ``(n, D)`` digits, -1 rows where absent."""
    n = len(tokens)
    if decoder is None:
        digits = _digits_of(tokens, levels)
    else:
        digits = np.zeros((n, len(levels)), dtype=np.int64)
    matched = reference[:, 0] >= 0
    misses = np.zeros(n, dtype=np.int64)
    # The change of the token above, per digit: 0 unknown, 1 kept its reference's, 2 changed.
    change = np.where(above_reference[:, :1] < 0, 0, 1 + (above != above_reference))
    for i, rows in enumerate(digit_rows):
        contexts, weights = _digit_model(rows, i, digits, matched, reference, misses, change)
        if decoder is not None:
            digits[:, i] = decoder.decode(family, weights)
        if not _digit_seen(rows, contexts, digits, i, reference, matched, misses):
            raise FormatError(f"tokens: digit {i} value outside [0, {levels[i]})")
        encoder.encode(digits[:, i].astype(np.int32), family, weights)
        if tally is not None:
            tally(1 + i, contexts, digits[:, i])
    return _indices_of(digits, levels)


def _start(
    mask: np.ndarray, tables: FrequencyTables, start: ContextState | None, key_prior: bool
) -> ContextState:
    if start is None:
        return ContextState.initial(mask.shape[1:], tables, key_prior)
    if start.latest.shape != mask.shape[1:]:
        raise ValueError(f"state for {start.latest.shape} latent frames, mask {mask.shape}")
    return start


def encode_tokens(
    indices: np.ndarray,
    mask: np.ndarray,
    tables: FrequencyTables,
    start: ContextState | None,
    *,
    key_prior: bool = True,
    tally: Tally | None = None,
) -> tuple[bytes, ContextState]:
    """Code a chunk's kept indices.

    Args:
        indices: ``(mask.sum(),)`` int64 in ``[0, K)``, C order of `mask`.
        mask: ``(T', h, w)`` bool keep-mask.
        tables: the model's frequency tables (the key chunk's prior).
        start: the state the chunk before left (`Chain`), None for a key chunk.
        key_prior: a key chunk starts from the tables' `KeyPrior` if they carry one (format
            version 5; False for version 4 streams).
        tally: sees every coded symbol with its context (fitting a prior).

    Returns:
        The payload (``b""`` when nothing is kept; a non-key chunk's starts with the CRC32 of
        `start`) and the state for the next chunk.
    """
    state = _start(mask, tables, start, key_prior)
    indices = np.asarray(indices, dtype=np.int64)
    _, words, end = _code(mask, tables, state, indices=indices, tally=tally)
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
    data: bytes,
    mask: np.ndarray,
    tables: FrequencyTables,
    start: ContextState | None,
    *,
    key_prior: bool = True,
) -> tuple[np.ndarray, ContextState]:
    """Mirror of `encode_tokens`: ``(mask.sum(),)`` int64 indices and the next state.

    Raises:
        FormatError: ``tokens: ...`` for any payload `encode_tokens` cannot have produced from
            `mask` and `start`.
    """
    count = int(mask.sum())
    check_payload(data, count, start)
    state = _start(mask, tables, start, key_prior)
    if count == 0:
        return np.zeros(0, dtype=np.int64), _code(mask, tables, state)[2]
    words = data if start is None else data[_CHECK_BYTES:]
    with coder_errors("tokens"):
        decoder = constriction.stream.queue.RangeDecoder(range_words(words, "tokens"))
        indices, again, end = _code(mask, tables, state, decoder=decoder)
    if again != words:
        raise FormatError("tokens: context payload is damaged (it does not re-encode to itself)")
    return indices, end


PRIOR_MASS = 256
"""What a fitted key prior's context holds (units of 1/16 observation, 16 tokens' worth): enough
to start from the training distribution, little enough that a clip's own statistics take over
within a few rows. Chosen on training clips held out from the fit (`benchmarks/key_prior_mass.py`:
256 and 512 tie, smaller and larger masses code more); a setting of the fit, not of the
bitstream."""


def fit_key_prior(
    chains: Iterable[Sequence[tuple[np.ndarray, np.ndarray]]],
    tables: FrequencyTables,
    mass: int = PRIOR_MASS,
) -> KeyPrior:
    """A key prior from token chains: each a key chunk then the chunks chained to it, as
    ``(indices, mask)`` with indices ``(T', h, w)`` (values at dropped positions ignored).

    Every chain is coded as a stream would be, from the tables' derived counts (any prior they
    carry is ignored), and every coded symbol is tallied under its context; a context the
    chains reached gets ``FLOOR`` plus its tally scaled to `mass`, the others keep the derived
    counts.
    """
    shapes = count_shapes(tuple(int(v) for v in tables.levels))
    tallies = [np.zeros((int(np.prod(s[:-1])), s[-1]), dtype=np.int64) for s in shapes]

    def tally(array: int, contexts: np.ndarray, symbols: np.ndarray) -> None:
        np.add.at(tallies[array], (contexts, symbols), 1)

    for chain in chains:
        state: ContextState | None = None
        for indices, mask in chain:
            _, state = encode_tokens(
                indices[mask], mask, tables, state, key_prior=False, tally=tally
            )
    select, digits = derived_counts(tables)
    counts = []
    for seen, start, shape in zip(tallies, (select, *digits), shapes, strict=True):
        rows = start.reshape(seen.shape).copy()
        total = seen.sum(axis=1)
        hit = total > 0
        scale = np.minimum(total[hit] * STEP, mass)
        rows[hit] = FLOOR + seen[hit] * scale[:, None] // total[hit, None]
        counts.append(rows.reshape(shape))
    return KeyPrior(counts[0], tuple(counts[1:]))
