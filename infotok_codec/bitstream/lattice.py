"""Data-agnostic orders of latent positions, shared by the routers and the bitstream.

A keep-mask's *lattice* is the first ``lattice_count(kept, share)`` positions of `spread_order`:
the routers put it in every mask they make (all of a `uniform` mask, three quarters of an
`elbo`/`fixed` one), the header says how much (`share`, in 256ths), and the mask coder leaves
those positions out because the decoder can compute them (docs/FORMAT.md).
"""

from __future__ import annotations

import functools

import numpy as np

SHARE_DENOMINATOR = 256
"""A lattice share is an integer in ``[0, SHARE_DENOMINATOR]``: exact arithmetic everywhere."""


def lattice_count(kept: int, share: int) -> int:
    """Positions of a mask keeping `kept` that its lattice fixes: ⌊share·kept / 256⌋."""
    return kept * share // SHARE_DENOMINATOR


def mask_is_implied(kept: int, positions: int, share: int) -> bool:
    """Whether `kept` alone fixes a mask over `positions`: all kept, or all on the lattice.

    Such a mask is stored as an empty payload (a `uniform` stream's masks, at share 256, cost
    nothing).
    """
    return kept == positions or lattice_count(kept, share) == kept


def lattice_mask(shape: tuple[int, int, int], kept: int, share: int) -> np.ndarray:
    """``shape`` bool, True on the first `lattice_count` positions of `spread_order`."""
    mask = np.zeros(int(np.prod(shape)), dtype=bool)
    count = lattice_count(kept, share)
    if count:  # the order costs ~50 bytes per position: only build it when it is used
        mask[spread_order(tuple(shape))[:count]] = True
    return mask.reshape(shape)


@functools.lru_cache(maxsize=8)
def spread_order(shape: tuple[int, ...]) -> np.ndarray:
    """A fixed order of positions whose every prefix covers the grid evenly.

    Positions are sorted by the bit-reversed Morton (Z-order) code of their prefix-XORed
    coordinates (t, y^t, x^y^t): the first half of the order is a 3-D checkerboard, the first
    quarter a lattice staggered from one latent frame to the next, and so on. A plain raster
    prefix would drop whole latent frames, which no sensible tail-drop tokenizer does; this is the
    strongest data-agnostic baseline we know.
    """
    coords = np.indices(shape).reshape(len(shape), -1)
    coords = np.bitwise_xor.accumulate(coords, axis=0)
    bits = max(1, max(int(s - 1).bit_length() for s in shape))
    code = np.zeros(coords.shape[1], dtype=np.int64)
    for bit in range(bits):
        for axis in range(len(shape)):
            code = (code << 1) | ((coords[axis] >> (bits - 1 - bit)) & 1)
    width = bits * len(shape)
    reversed_code = np.zeros_like(code)
    for i in range(width):
        reversed_code |= ((code >> i) & 1) << (width - 1 - i)
    order = np.argsort(reversed_code, kind="stable")
    order.setflags(write=False)  # cached: shared by every caller
    return order
