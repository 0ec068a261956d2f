"""A chunk's coding: its keep-mask and token indices to and from a chunk record's payloads.

`encode_chunk` codes the keep-mask (`infotok_codec.bitstream.mask_coder`) and the kept
positions' FSQ indices with the header's coder (`context`, `infotok_codec.bitstream.context_coder`,
or one of `infotok_codec.bitstream.entropy`'s) into a `ChunkRecord`, and `decode_chunk` reads
them back, checking the payloads as it goes; a non-key chunk is coded from the state its chain
(`Chain`) was left in by the chunk before. Kept apart from the file
(`infotok_codec.bitstream.container`), which stores records without reading their payloads, so
rate control can size a chunk's record without writing a file.
"""

from __future__ import annotations

import numpy as np

from infotok_codec.bitstream import context_coder
from infotok_codec.bitstream.context_coder import Chain
from infotok_codec.bitstream.context_state import ContextState, KeyPrior
from infotok_codec.bitstream.entropy import (
    FrequencyTables,
    check_indices_payload,
    decode_indices,
    encode_indices,
)
from infotok_codec.bitstream.header import ChunkRecord, Header
from infotok_codec.bitstream.mask_coder import decode_mask, encode_mask
from infotok_codec.errors import FormatError, ModelError


def encode_chunk(
    header: Header,
    k: int,
    mask: np.ndarray,
    indices: np.ndarray,
    tables: FrequencyTables,
    chain: Chain | None = None,
) -> ChunkRecord:
    """Code chunk ``k`` of a video into a record.

    Args:
        header: the file header (dimensions, coder, FSQ levels, key interval).
        k: chunk number; its frames follow from `Header.chunk_span`.
        mask: ``header.mask_shape(frames)`` bool, True at kept positions; it must hold its
            lattice (``header.lattice_share``).
        indices: ``(mask.sum(),)`` integers in ``[0, K)``: the kept positions' FSQ indices in
            C order of the mask.
        tables: the model's frequency tables, for ``header.fsq_levels``.
        chain: the coder's memory (`Chain`): needed for a non-key chunk, which must follow
            chunk ``k - 1`` in it; left holding what chunk ``k + 1`` needs.
    """
    _check_tables(header, tables)
    first, frames = header.chunk_span(k)
    shape = header.mask_shape(frames)
    if mask.shape != shape or len(indices) != int(mask.sum()):
        raise ValueError(
            f"chunk {k}: mask {mask.shape} with {len(indices)} indices; expected "
            f"mask {shape} and one index per kept position"
        )
    start = _chain_start(header, k, chain)
    end: ContextState | None = None
    if header.coder == "context":
        tokens, end = context_coder.encode_tokens(
            np.asarray(indices), mask, tables, start, key_prior=header.key_prior
        )
    else:
        tokens = encode_indices(indices, header.coder, tables, mask)
    record = ChunkRecord(
        index=k,
        first_frame=first,
        frames=frames,
        latent_frames=shape[0],
        kept=len(indices),
        mask=encode_mask(mask, header.lattice_share, _previous_mask(start)),
        tokens=tokens,
    )
    if chain is not None:
        chain.next_chunk, chain.state = k + 1, end
    return record


def decode_chunk(
    header: Header, rec: ChunkRecord, tables: FrequencyTables, chain: Chain | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Mirror of `encode_chunk`: ``(mask, indices)``, mask ``(T', h, w)`` bool and indices
    ``(rec.kept,)`` int64 in ``[0, K)``. A non-key chunk needs the `chain` that decoded
    chunk ``rec.index - 1`` (decoding starts at `Header.key_before`).

    Raises:
        FormatError: ``chunk k: mask ...`` / ``chunk k: tokens ...`` for a damaged payload,
            or one coded from another state than the chain's (a broken reference chain).
        ModelError: the tables are for other FSQ levels than the stream.
    """
    _check_tables(header, tables)
    start = _chain_start(header, rec.index, chain)
    end: ContextState | None = None
    try:
        # The tokens' size first: it bounds `kept`, and with it the mask's lattice, before the
        # mask decoder allocates a grid (its own size check covers only the coded positions).
        if header.coder == "context":
            context_coder.check_payload(rec.tokens, rec.kept, start)
        else:
            check_indices_payload(rec.tokens, rec.kept, header.coder, tables)
        mask = decode_mask(
            rec.mask,
            header.mask_shape(rec.frames),
            kept=rec.kept,
            lattice_share=header.lattice_share,
            previous=_previous_mask(start),
        )
        if header.coder == "context":
            indices, end = context_coder.decode_tokens(
                rec.tokens, mask, tables, start, key_prior=header.key_prior
            )
        else:
            indices = decode_indices(rec.tokens, rec.kept, header.coder, tables, mask)
    except FormatError as e:
        raise FormatError(f"chunk {rec.index}: {e}") from e
    if chain is not None:
        chain.next_chunk, chain.state = rec.index + 1, end
    return mask, indices


def _chain_start(header: Header, k: int, chain: Chain | None) -> ContextState | None:
    """The state chunk ``k`` is coded from: None for a key chunk, else the chain's."""
    if header.is_key(k):
        return None
    if chain is None or chain.next_chunk != k or chain.state is None:
        raise ValueError(
            f"chunk {k} is not a key chunk: code chunks {header.key_before(k)} to {k - 1} "
            "first, with the same chain"
        )
    return chain.state


def _previous_mask(start: ContextState | None) -> np.ndarray | None:
    return None if start is None else start.last_mask


def _check_tables(header: Header, tables: FrequencyTables) -> None:
    if tables.levels != header.fsq_levels:
        raise ModelError(
            f"frequency tables are for fsq levels {list(tables.levels)}, the "
            f"stream uses {list(header.fsq_levels)}"
        )
    if header.coder == "context" and header.key_prior:
        KeyPrior.of(tables)  # a damaged prior: one ModelError, before any chunk
