"""The keep-mask coder: which latent positions of a chunk keep a token.

Keep-masks are coded with an adaptive binary context model (neighbours above, beside and in the
previous latent frame) on the range coder the token coders use (`infotok_codec.bitstream.entropy`).
All probabilities handed to the coder are exact integers, so every machine produces and accepts
the same bytes. The decoder trusts nothing: the payload is checked against the mask's size before
the mask is allocated, and accepted only if re-encoding what was decoded reproduces it byte for
byte, so any damaged or non-canonical payload raises `FormatError`. docs/FORMAT.md specifies the
bitstream.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import constriction
import numpy as np

from infotok_codec.bitstream.entropy import check_payload_bits, coder_errors, range_words
from infotok_codec.bitstream.lattice import lattice_count, lattice_mask, mask_is_implied
from infotok_codec.bitstream.tables import PRECISION_BITS, TOTAL
from infotok_codec.errors import FormatError

# Mask model constants (part of the bitstream: changing them needs a new format version).
_MASK_CONTEXTS = 32
_MASK_COUNT_LIMIT = 1024
"""Per-context counts are halved once they pass this, so the model follows local statistics."""
_MASK_MIN_BITS = -math.log2((2 * _MASK_COUNT_LIMIT + 1) / (2 * _MASK_COUNT_LIMIT + 2))
"""The fewest bits the mask model can spend on one position: the bound that rejects a payload
too short for the mask it claims before the mask is allocated."""


class _MaskModel:
    """Adaptive binary model for keep-masks, shared by the mask encoder and decoder.

    Each bit's context is its left, up, up-left and up-right neighbours and the same position
    in the previous latent frame (32 contexts; neighbours outside the grid read as 0): the
    causal template of a raster scan. Instead of a raster scan, positions are visited latent
    frame by frame in wavefronts ``2y + x = s`` for ``s = 0, 1, ...`` (``y`` increasing within
    a wavefront): every neighbour in the template lies on an earlier wavefront, so a whole
    wavefront goes to the coder as one array (fast in Python) with the full raster context.

    Each context keeps doubled counts ``(a0, a1)`` of the zeros and ones seen;
    ``P(1) = (a1 + 1) / (a0 + a1 + 2)`` (a KT estimator). A context starts at the vote of its
    neighbours (``a1`` = number of set neighbours, ``a0`` = 5 minus that), counts update after
    each wavefront and are halved while ``a0 + a1`` exceeds ``2 * _MASK_COUNT_LIMIT``.
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        known: np.ndarray,
        given: np.ndarray,
        previous: np.ndarray | None = None,
    ) -> None:
        """`known`: the grid as far as it is known before coding (the whole mask when
        encoding, the `given` positions when decoding); `given`: positions not coded;
        `previous`: ``(h, w)`` bool, the mask of the latent frame before the first (the
        chunk before's last, for a chained chunk), else all 0."""
        frames, height, width = shape
        # Padded copy, flattened: grid[t + 1, y + 1, x + 1] is position (t, y, x) and the
        # border stays 0 (frame 0 of it holds `previous`); positions are addressed by their
        # flat index into `self.flat`.
        grid = np.zeros((frames + 1, height + 1, width + 2), dtype=np.int8)
        grid[1:, 1:, 1:-1] = known
        if previous is not None:
            grid[0, 1:, 1:-1] = previous
        coded = np.zeros(grid.shape, dtype=bool)
        coded[1:, 1:, 1:-1] = ~given
        self.flat, self.padded_shape = grid.reshape(-1), grid.shape
        self.coded = coded.reshape(-1)
        self.frames, self.frame_stride, row = frames, grid[0].size, width + 2
        # Flat offsets of the template: left, up, up-left, up-right, previous frame.
        self.template = np.array([-1, -row, -row - 1, -row + 1, -self.frame_stride])
        self.waves = []
        for s in range(2 * (height - 1) + width):
            ys = np.arange(max(0, (s - width + 2) // 2), min(height - 1, s // 2) + 1)
            if ys.size:  # a one-column grid has nothing on odd wavefronts
                self.waves.append((ys + 1) * row + (s - 2 * ys) + 1)
        self.ones = np.array([bin(c).count("1") for c in range(_MASK_CONTEXTS)], np.int64)
        self.zeros = 5 - self.ones
        self.table = self._table()

    def steps(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(positions, contexts)`` per wavefront in coding order (flat indices into
        `self.flat`); the caller codes the bits there and calls `update` before resuming."""
        weights = 1 << np.arange(len(self.template))
        for t in range(self.frames):
            for wave in self.waves:
                positions = wave + (t + 1) * self.frame_stride
                positions = positions[self.coded[positions]]
                if positions.size:
                    yield positions, weights @ self.flat[positions + self.template[:, None]]

    def _table(self) -> np.ndarray:
        """``(32, 2)`` float64 rows ``w - 1`` with integer ``w0 + w1 = 2**24``: exact for
        constriction, for the reason given in `FrequencyTables.coder_models`.

        ``w1 = floor(2**24 * (a1 + 1) / (a0 + a1 + 2))`` lies in ``[1, 2**24 - 1]`` because
        both counts are bounded by the count limit, so neither weight is ever 0.
        """
        ones = ((self.ones + 1) << PRECISION_BITS) // (self.zeros + self.ones + 2)
        return np.stack([TOTAL - ones - 1, ones - 1], axis=1).astype(np.float64)

    def update(self, positions: np.ndarray, ctx: np.ndarray, bits: np.ndarray) -> None:
        """Store a wavefront's bits (0/1 int64) and adapt the counts of its contexts."""
        self.flat[positions] = bits
        seen = np.bincount(ctx + _MASK_CONTEXTS * bits, minlength=2 * _MASK_CONTEXTS)
        self.zeros += 2 * seen[:_MASK_CONTEXTS]
        self.ones += 2 * seen[_MASK_CONTEXTS:]
        while (self.zeros + self.ones).max() > 2 * _MASK_COUNT_LIMIT:
            full = self.zeros + self.ones > 2 * _MASK_COUNT_LIMIT
            self.zeros[full] = (self.zeros[full] + 1) >> 1
            self.ones[full] = (self.ones[full] + 1) >> 1
        self.table = self._table()

    def mask(self) -> np.ndarray:
        """The grid without its border: ``(T', h, w)`` bool."""
        return self.flat.reshape(self.padded_shape)[1:, 1:, 1:-1].astype(np.bool_)


def _check_mask_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) != 3 or any(int(n) < 1 for n in shape):
        raise ValueError(f"mask shape must be 3 positive sizes (T', h, w), got {shape}")
    return int(shape[0]), int(shape[1]), int(shape[2])


def encode_mask(
    mask: np.ndarray, lattice_share: int = 0, previous: np.ndarray | None = None
) -> bytes:
    """Code a keep-mask.

    Args:
        mask: ``(T', h, w)`` bool, True where the position's index is stored.
        lattice_share: the mask holds its lattice at this share
            (`infotok_codec.bitstream.lattice`); those positions are not coded (the decoder
            computes them from the kept count) but serve as context.
        previous: ``(h, w)`` bool, the last latent frame's mask of the chunk before, the
            context of the first latent frame in a chained (non-key) chunk; None reads as 0.

    Returns:
        The payload; ``b""`` exactly when the kept count implies the mask
        (`lattice.mask_is_implied`: every position kept, or only the lattice).
    """
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise ValueError(f"mask must be bool, got {mask.dtype}")
    shape = _check_mask_shape(mask.shape)
    given = lattice_mask(shape, int(mask.sum()), lattice_share)
    if (given & ~mask).any():
        raise ValueError("mask drops positions of its lattice")
    _check_previous(previous, shape)
    return _encode_mask(mask, given, previous)


def _check_previous(previous: np.ndarray | None, shape: tuple[int, int, int]) -> None:
    if previous is not None and (previous.dtype != np.bool_ or previous.shape != shape[1:]):
        raise ValueError(f"previous mask must be {shape[1:]} bool")


def _encode_mask(mask: np.ndarray, given: np.ndarray, previous: np.ndarray | None) -> bytes:
    if mask.all() or np.array_equal(mask, given):
        return b""
    model = _MaskModel(mask.shape, mask, given, previous)
    family = constriction.stream.model.Categorical(perfect=False)
    encoder = constriction.stream.queue.RangeEncoder()
    for positions, ctx in model.steps():
        bits = model.flat[positions].astype(np.int64)
        encoder.encode(bits.astype(np.int32), family, model.table[ctx])
        model.update(positions, ctx, bits)
    return encoder.get_compressed().astype("<u4").tobytes()


def decode_mask(
    data: bytes,
    shape: tuple[int, int, int],
    *,
    kept: int,
    lattice_share: int = 0,
    previous: np.ndarray | None = None,
) -> np.ndarray:
    """Mirror of `encode_mask`.

    Args:
        data: the payload, untrusted; ``b""`` means the mask `kept` implies.
        shape: ``(T', h, w)``, from the container header and chunk record.
        kept: the number of kept positions (chunk record), untrusted.
        lattice_share: as for `encode_mask` (header).
        previous: as for `encode_mask`.

    Returns:
        ``shape`` bool with exactly `kept` True positions.

    Raises:
        FormatError: ``mask: ...`` for any payload `encode_mask` cannot have produced for
            ``shape``, `kept` and `lattice_share`.
    """
    dims = _check_mask_shape(shape)
    _check_previous(previous, dims)
    total = math.prod(dims)
    if not 0 <= kept <= total:
        raise FormatError(f"mask: kept {kept} outside [0, {total}]")
    if mask_is_implied(kept, total, lattice_share) != (not data):
        raise FormatError(
            f"mask: {len(data)}-byte payload for kept {kept} of {total} at lattice share "
            f"{lattice_share} (empty exactly when kept implies the mask)"
        )
    if not data:
        if kept == total:
            return np.ones(dims, dtype=np.bool_)
        return lattice_mask(dims, kept, lattice_share)
    # Size check before anything of `shape` is allocated, the lattice included.
    coded = total - lattice_count(kept, lattice_share)
    check_payload_bits(data, coded, _MASK_MIN_BITS, "mask")
    given = lattice_mask(dims, kept, lattice_share)
    model = _MaskModel(dims, given, given, previous)
    family = constriction.stream.model.Categorical(perfect=False)
    with coder_errors("mask"):
        decoder = constriction.stream.queue.RangeDecoder(range_words(data, "mask"))
        for positions, ctx in model.steps():
            bits = decoder.decode(family, model.table[ctx]).astype(np.int64)
            if bits.min() < 0 or bits.max() > 1:
                raise FormatError("mask: decoded bit outside {0, 1}")
            model.update(positions, ctx, bits)
    mask = model.mask()
    if int(mask.sum()) != kept:
        raise FormatError(f"mask: keeps {int(mask.sum())} positions, kept is {kept}")
    # As for indices: only a payload that re-encodes to itself is accepted.
    if _encode_mask(mask, given, previous) != data:
        raise FormatError("mask: payload is damaged (it does not re-encode to itself)")
    return mask
