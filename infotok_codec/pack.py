"""`pack`: a token file (`infotok_codec.bitstream.tokens`) entropy-coded into an `.itok` stream.

The stream's header comes from the token file and each chunk is coded as an encode codes it
(`encode_chunk` with the model's tables), so packing the tokens `decode --tokens` wrote gives
back the encoded stream byte for byte, and tokens a generative model writes become streams like
any other.
"""

from __future__ import annotations

import time
from fractions import Fraction
from pathlib import Path

from infotok_codec.bitstream import Chain, ContainerWriter, TokenReader, encode_chunk
from infotok_codec.codec import EncodeResult, Progress, load_tables
from infotok_codec.errors import InfotokError
from infotok_codec.model import LoadedModel
from infotok_codec.outputs import check_output


def pack_file(
    src: str | Path,
    dst: str | Path,
    *,
    model: LoadedModel | str | Path | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> EncodeResult:
    """Entropy-code token file `src` into the `.itok` stream `dst`.

    Raises:
        FormatError: the token file is damaged (`TokenReader`, `check_chunk`).
        InfotokError: it holds only some chunks, or `dst` exists (without `force`).
        ModelError: `model` is not the one the header names by hash.
    """
    dst = Path(dst)
    check_output(dst, force, inputs=[src])
    started = time.perf_counter()
    with TokenReader(src) as source:
        header = source.header
        if not source.complete:
            first, stop = source.span
            raise InfotokError(
                f"{src}: holds frames {first}:{stop} of {header.frames} (a --frames decode): "
                "pack needs every chunk"
            )
        tables = load_tables(header, model)
        counts, positions = [], []
        chain = Chain()  # the context coder's state, carried from chunk to chunk as encode does
        with ContainerWriter(dst, header) as writer:
            for chunk in source.chunks():
                kept = chunk.indices[chunk.keep]
                writer.write_chunk(
                    encode_chunk(header, chunk.index, chunk.keep, kept, tables, chain)
                )
                counts.append(len(kept))
                positions.append(chunk.keep.size)
                if progress:
                    progress("pack", chunk.frames, header.frames)
    size = dst.stat().st_size
    return EncodeResult(
        path=dst,
        width=header.width,
        height=header.height,
        frames=header.frames,
        fps=Fraction(header.fps_num, header.fps_den),
        chunks=header.chunk_count,
        bytes=size,
        bpp=8 * size / (header.width * header.height * header.frames),
        audio_bytes=0,  # token files carry no audio
        router=header.router,
        budget=header.budget,
        realised_rate=sum(counts) / sum(positions),
        chunk_rates=[c / n for c, n in zip(counts, positions, strict=True)],
        seconds={"pack": time.perf_counter() - started},
        rate=header.rate,
        refine=header.refine or 0,  # as the token file recorded it (None: not recorded)
    )
