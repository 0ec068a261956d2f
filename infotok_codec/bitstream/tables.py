"""Static integer frequency tables for FSQ token digits (`FrequencyTables`): the ``range``
coder's model, the ``adaptive`` coder's prior and the carrier of the ``context`` coder's key
prior; they ship with the model weights. Every probability is an exact integer, so every machine
codes the same bytes. docs/FORMAT.md specifies their JSON.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import constriction
import numpy as np

from infotok_codec.errors import FormatError
from infotok_codec.levels import validate_levels

PRECISION_BITS = 24
"""Every frequency-table row sums to exactly ``2**PRECISION_BITS``: constriction's precision for
its default categorical models, so a row is used as the coder's fixed-point model unchanged."""
TOTAL = 1 << PRECISION_BITS
"""What every row of integer weights sums to, in every coder."""
TABLES_FORMAT = "infotok-frequency-tables"
TABLES_VERSION = 1


def indices_to_digits(indices: np.ndarray, levels: Sequence[int]) -> np.ndarray:
    """Split FSQ indices into their mixed-radix digits.

    Digit ``i`` is ``(index // prod(levels[:i])) % levels[i]``: digit 0 is the least
    significant, the order of vector-quantize-pytorch's FSQ ``codes_to_indices``.

    Args:
        indices: ``(N,)`` integers in ``[0, prod(levels))``.
        levels: the FSQ levels.

    Returns:
        ``(N, len(levels))`` int64, column ``i`` in ``[0, levels[i])``.
    """
    rest = np.asarray(indices, dtype=np.int64)
    digits = np.empty((rest.shape[0], len(levels)), dtype=np.int64)
    for i, level in enumerate(levels):
        rest, digits[:, i] = np.divmod(rest, level)
    return digits


def digits_to_indices(digits: np.ndarray, levels: Sequence[int]) -> np.ndarray:
    """Inverse of `indices_to_digits`: ``(N, len(levels))`` digits to ``(N,)`` int64 indices."""
    indices = np.zeros(digits.shape[0], dtype=np.int64)
    for i in reversed(range(len(levels))):
        indices = indices * levels[i] + digits[:, i]
    return indices


def quantize_row(counts: np.ndarray) -> tuple[int, ...]:
    """Integer weights, each >= 1, summing to exactly ``2**PRECISION_BITS``, proportional to
    ``counts`` (>= 0, not all zero).

    Each symbol gets 1 plus its floor share of the rest; the remainder goes to the largest
    fractional parts (ties to the lower symbol). Python integers keep it exact.
    """
    n = len(counts)
    total = int(counts.sum())
    free = TOTAL - n
    shares = [divmod(int(c) * free, total) for c in counts]
    weights = [1 + q for q, _ in shares]
    remainder = free - sum(q for q, _ in shares)
    by_fraction = sorted(range(n), key=lambda s: -shares[s][1])
    for s in by_fraction[:remainder]:
        weights[s] += 1
    return tuple(weights)


@dataclass(frozen=True)
class FrequencyTables:
    """Static integer frequency tables: the ``range`` coder's model and the ``adaptive`` coder's
    prior; they ship with the model weights.

    ``weights[i][c][s]`` is the frequency of value ``s`` for FSQ digit ``i`` (digit order as in
    `indices_to_digits`) when the previous digit ``i - 1`` has value ``c``. Digit 0 has one
    context (``len(weights[0]) == 1``); digit ``i > 0`` has ``levels[i - 1]`` contexts. Every
    row has ``levels[i]`` integers, each >= 1 (every symbol stays codable), summing to exactly
    ``2**PRECISION_BITS``.

    ``context_prior``, when present, is the ``context`` coder's key prior as text
    (`context_state.KeyPrior`, which parses and checks it where it is used): counts fitted on
    training tokens that key chunks of version-5 streams start from.
    """

    levels: tuple[int, ...]
    weights: tuple[tuple[tuple[int, ...], ...], ...]
    context_prior: str | None = None

    def __post_init__(self) -> None:
        levels = validate_levels(self.levels)
        if len(self.weights) != len(levels):
            raise ValueError(f"{len(self.weights)} digit tables for {len(levels)} fsq levels")
        for i, table in enumerate(self.weights):
            contexts = 1 if i == 0 else levels[i - 1]
            if len(table) != contexts:
                raise ValueError(f"digit {i}: {len(table)} contexts, expected {contexts}")
            for c, row in enumerate(table):
                if len(row) != levels[i]:
                    raise ValueError(
                        f"digit {i} context {c}: {len(row)} weights, expected {levels[i]}"
                    )
                if any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in row):
                    raise ValueError(f"digit {i} context {c}: weights must be integers >= 1")
                if sum(row) != TOTAL:
                    raise ValueError(
                        f"digit {i} context {c}: weights sum to {sum(row)}, "
                        f"expected 2**{PRECISION_BITS}"
                    )

    @property
    def codebook_size(self) -> int:
        """``K = prod(levels)``: indices lie in ``[0, K)``."""
        return math.prod(self.levels)

    @classmethod
    def fit(
        cls, indices: np.ndarray, levels: Sequence[int], *, conditional: bool = True
    ) -> FrequencyTables:
        """Fit tables to token data.

        Args:
            indices: ``(N,)`` integers in ``[0, prod(levels))``, e.g. every token of a
                training set.
            levels: the FSQ levels.
            conditional: condition each digit on the previous digit's value; ``False`` gives
                every context the digit's marginal (independent tables, for comparison).

        Counts start at 1 (add-one smoothing): every symbol stays codable and a context never
        seen in the data gets a uniform row.
        """
        levels = validate_levels(levels)
        flat = np.asarray(indices)
        if flat.ndim != 1 or not np.issubdtype(flat.dtype, np.integer):
            raise ValueError(f"indices must be a 1-D integer array, got {flat.dtype} {flat.shape}")
        if flat.size and (flat.min() < 0 or flat.max() >= math.prod(levels)):
            raise ValueError(f"indices outside [0, {math.prod(levels)})")
        digits = indices_to_digits(flat, levels)
        weights = []
        for i, level in enumerate(levels):
            if i == 0:
                counts = np.bincount(digits[:, 0], minlength=level)[None, :]
            elif conditional:
                pairs = digits[:, i - 1] * level + digits[:, i]
                counts = np.bincount(pairs, minlength=levels[i - 1] * level)
                counts = counts.reshape(levels[i - 1], level)
            else:
                marginal = np.bincount(digits[:, i], minlength=level)
                counts = np.repeat(marginal[None, :], levels[i - 1], axis=0)
            weights.append(tuple(quantize_row(row + 1) for row in counts))
        return cls(levels, tuple(weights))

    @classmethod
    def uniform(cls, levels: Sequence[int]) -> FrequencyTables:
        """Uniform tables (about ``log2(K)`` bits per index): the fallback for a model without
        fitted tables."""
        levels = validate_levels(levels)
        weights = []
        for i, level in enumerate(levels):
            row = quantize_row(np.ones(level, dtype=np.int64))
            weights.append((row,) * (1 if i == 0 else levels[i - 1]))
        return cls(levels, tuple(weights))

    def with_context_prior(self, prior: str | None) -> FrequencyTables:
        """The same tables carrying `prior` (`context_state.KeyPrior.to_json`), or none."""
        return FrequencyTables(self.levels, self.weights, prior)

    def to_json(self) -> str:
        """Serialize; the layout is specified in docs/FORMAT.md (frequency tables)."""
        obj: dict[str, Any] = {
            "format": TABLES_FORMAT,
            "version": TABLES_VERSION,
            "precision_bits": PRECISION_BITS,
            "levels": list(self.levels),
            "weights": [[list(row) for row in table] for table in self.weights],
        }
        if self.context_prior is not None:
            obj["context_prior"] = self.context_prior
        return json.dumps(obj, separators=(",", ":"))

    @classmethod
    def from_json(cls, s: str) -> FrequencyTables:
        """Parse and validate `to_json` output.

        Raises:
            FormatError: ``frequency tables: ...`` naming the fault, for anything that is not
                a valid table set.
        """
        try:
            obj = json.loads(s)
        except (ValueError, RecursionError) as e:
            raise FormatError(f"frequency tables: not JSON ({e})") from e
        expected = {"format", "version", "precision_bits", "levels", "weights"}
        if not isinstance(obj, dict) or not expected <= set(obj) <= expected | {"context_prior"}:
            raise FormatError(
                f"frequency tables: expected an object with keys {sorted(expected)} "
                "(and context_prior)"
            )
        prior = obj.get("context_prior")
        if prior is not None and not isinstance(prior, str):
            raise FormatError("frequency tables: context_prior is not a string")
        if obj["format"] != TABLES_FORMAT:
            raise FormatError(
                f"frequency tables: format {obj['format']!r} is not {TABLES_FORMAT!r}"
            )
        if obj["version"] != TABLES_VERSION:
            raise FormatError(f"frequency tables: unsupported version {obj['version']!r}")
        if obj["precision_bits"] != PRECISION_BITS:
            raise FormatError(
                f"frequency tables: precision_bits {obj['precision_bits']!r} "
                f"is not {PRECISION_BITS}"
            )
        levels, weights = obj["levels"], obj["weights"]
        if not isinstance(levels, list) or not _is_nested_list(weights, depth=3):
            raise FormatError(
                "frequency tables: levels must be a list and weights a list of lists of lists"
            )
        try:
            return cls(
                tuple(levels),
                tuple(tuple(tuple(row) for row in table) for table in weights),
                prior,
            )
        except ValueError as e:
            raise FormatError(f"frequency tables: {e}") from e

    @cached_property
    def coder_models(self) -> list[list[Any]]:
        """constriction models, ``[digit][context]``, built once per table set.

        A row of weights ``w`` (summing to ``2**24``) is passed as ``w - 1`` in float64. For
        ``perfect=False`` constriction gives symbol ``s`` the fixed-point weight
        ``floor(sum(p[:s]) * scale) + s`` minus the same for ``s - 1``, with
        ``scale = (2**24 - n) / sum(p)``. Here ``sum(p) = 2**24 - n``, so ``scale`` is exactly
        1.0, all sums are integers below 2**53 (exact in float64), and the coder's model is
        exactly ``w`` on every machine: no rounding anywhere.
        """
        model = constriction.stream.model
        return [
            [
                model.Categorical(np.asarray(row, dtype=np.float64) - 1.0, perfect=False)
                for row in table
            ]
            for table in self.weights
        ]

    @cached_property
    def min_bits_per_index(self) -> float:
        """The fewest bits any index can cost under these tables (for payload-size bounds)."""
        return sum(min(-math.log2(max(row) / TOTAL) for row in table) for table in self.weights)


def _is_nested_list(value: object, depth: int) -> bool:
    if not isinstance(value, list):
        return False
    return depth == 1 or all(_is_nested_list(v, depth - 1) for v in value)
