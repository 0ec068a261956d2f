"""The ``context`` coder's counts: its model constants, the state a chunk starts from and leaves
to the next (`ContextState`), and the key prior a key chunk starts from (`KeyPrior`).

The coding walk that reads and updates these counts is `infotok_codec.bitstream.context_coder`;
docs/FORMAT.md specifies both.
"""

from __future__ import annotations

import base64
import functools
import json
import zlib
from dataclasses import dataclass

import numpy as np

from infotok_codec.bitstream.tables import PRECISION_BITS, FrequencyTables
from infotok_codec.errors import ModelError

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
    def initial(
        cls, shape: tuple[int, int], tables: FrequencyTables, key_prior: bool = False
    ) -> ContextState:
        """A key chunk's start: nothing referenced; counts from the tables' key prior when
        `key_prior` (format version 5) and they carry one, else derived from the tables
        (docs/FORMAT.md)."""
        prior = KeyPrior.of(tables) if key_prior else None
        if prior is not None:
            select, digits = prior.select.copy(), tuple(d.copy() for d in prior.digits)
        else:
            select, digits = derived_counts(tables)
        return cls(
            latest=np.full(shape, -1, dtype=np.int64),
            last_mask=np.zeros(shape, dtype=bool),
            select=select,
            digits=digits,
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


def derived_counts(tables: FrequencyTables) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """A key chunk's selection and digit counts derived from the frequency tables (version 4,
    and version 5 tables without a key prior; docs/FORMAT.md)."""
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
    return select, tuple(digits)


def count_shapes(levels: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """Shapes of a state's count arrays for these FSQ levels: selection, then each digit's."""
    digits = tuple(
        (1 if i == 0 else levels[i - 1], level + 1, 2, FEATURES, level)
        for i, level in enumerate(levels)
    )
    return ((SELECT_CONTEXTS, SLOTS + 1), *digits)


@dataclass(frozen=True)
class KeyPrior:
    """Counts a key chunk starts from, fitted on training tokens (`context_coder.fit_key_prior`)
    and carried in the model file's frequency tables (`FrequencyTables.context_prior`).

    Every count lies in ``[FLOOR, LIMIT]`` and every context's counts sum to at most `LIMIT`,
    as the coder's own states do, so a prior can never make a symbol uncodable.
    """

    select: np.ndarray  # (SELECT_CONTEXTS, SLOTS + 1) int64
    digits: tuple[np.ndarray, ...]  # `count_shapes(levels)[1:]`, int64

    def to_json(self) -> str:
        """The layout docs/FORMAT.md specifies: each array's counts in C order as
        little-endian uint16, zlib-compressed, base64."""

        def pack(counts: np.ndarray) -> str:
            return base64.b64encode(zlib.compress(counts.astype("<u2").tobytes(), 9)).decode()

        return json.dumps(
            {"select": pack(self.select), "digits": [pack(d) for d in self.digits]},
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str, levels: tuple[int, ...]) -> KeyPrior:
        """Parse and check `to_json` output for these levels.

        Raises:
            ModelError: ``frequency tables: context prior ...`` naming the fault.
        """
        shapes = count_shapes(levels)
        try:
            obj = json.loads(text)
            if not isinstance(obj, dict) or set(obj) != {"select", "digits"}:
                raise ValueError("expected an object with keys digits and select")
            packed = [obj["select"], *obj["digits"]]
            if len(packed) != len(shapes) or not all(isinstance(p, str) for p in packed):
                raise ValueError(f"expected {len(shapes) - 1} digit arrays")
            arrays = []
            for raw, shape in zip(packed, shapes, strict=True):
                size = int(np.prod(shape))
                inflate = zlib.decompressobj()  # bounded: at most one count past the array
                data = inflate.decompress(base64.b64decode(raw, validate=True), 2 * size + 1)
                if not inflate.eof or inflate.unused_data:
                    raise ValueError("a count array is not one whole zlib stream")
                if len(data) != 2 * size:
                    raise ValueError(f"an array of {len(data) // 2} counts, expected {size}")
                counts = np.frombuffer(data, dtype="<u2").astype(np.int64).reshape(shape)
                rows = counts.reshape(-1, shape[-1])
                if rows.min() < FLOOR or rows.max() > LIMIT or rows.sum(axis=1).max() > LIMIT:
                    raise ValueError(f"counts outside [{FLOOR}, {LIMIT}] or rows above {LIMIT}")
                arrays.append(counts)
        except (ValueError, TypeError, RecursionError, zlib.error) as e:
            raise ModelError(f"frequency tables: context prior: {e}") from None
        return cls(arrays[0], tuple(arrays[1:]))

    @staticmethod
    def of(tables: FrequencyTables) -> KeyPrior | None:
        """The tables' key prior, parsed once per distinct text; None when they carry none."""
        if tables.context_prior is None:
            return None
        return _parsed_prior(tables.context_prior, tables.levels)


@functools.lru_cache(maxsize=4)
def _parsed_prior(text: str, levels: tuple[int, ...]) -> KeyPrior:
    return KeyPrior.from_json(text, levels)
