"""FSQ levels: the limits a model's config and a stream's header are both held to.

A leaf shared by the model (`TokenizerConfig`) and the bitstream (the header, the token coders),
so that neither has to import the other.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

MAX_LEVELS = 16
LEVEL_RANGE = (2, 256)
MAX_CODEBOOK = 2**32
"""Largest codebook ``K = prod(levels)``: indices must fit the ``uint32`` packing of ``zstd``."""


def validate_levels(levels: Sequence[int]) -> tuple[int, ...]:
    """Check FSQ levels and return them as a tuple.

    Args:
        levels: the FSQ levels, 1 to `MAX_LEVELS` integers each in `LEVEL_RANGE`, with
            ``prod(levels) <= MAX_CODEBOOK``.

    Raises:
        ValueError: with a message naming the fault (`Header` prefixes it with the field).
    """
    out = tuple(levels)
    if not 1 <= len(out) <= MAX_LEVELS:
        raise ValueError(f"fsq_levels count {len(out)} outside [1, {MAX_LEVELS}]")
    lo, hi = LEVEL_RANGE
    for level in out:
        if isinstance(level, bool) or not isinstance(level, (int, np.integer)):
            raise ValueError(f"fsq level {level!r} is not an integer")
        if not lo <= level <= hi:
            raise ValueError(f"fsq level {level} outside [{lo}, {hi}]")
    size = math.prod(int(level) for level in out)
    if size > MAX_CODEBOOK:
        raise ValueError(f"fsq_levels product {size} exceeds {MAX_CODEBOOK}")
    return tuple(int(level) for level in out)
