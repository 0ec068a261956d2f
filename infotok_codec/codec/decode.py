"""Decoding: an `.itok` file (or a token file) to frames and/or tokens, the mirror of `encode`.

Chunks are read through the seek index from the key chunk at or before the first frame asked
for, decoded to tokens by the coder, then to frames by the model, and written as they come, so
memory stays flat however long the video is.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from infotok_codec.bitstream import (
    AudioReader,
    Chain,
    ChunkTokens,
    FrequencyTables,
    TokenReader,
    TokenWriter,
)
from infotok_codec.bitstream.chunk_coding import decode_chunk
from infotok_codec.bitstream.container import ContainerReader
from infotok_codec.bitstream.header import (
    ChunkRecord,
    Header,
)
from infotok_codec.codec.engine import ChunkModel, Progress, as_model
from infotok_codec.codec.frame_range import parse_frame_range
from infotok_codec.errors import InfotokError, ModelError
from infotok_codec.media import (
    HOLDS_SIDE_STREAMS,
    PIPE,
    AudioMuxer,
    VideoWriter,
    is_pipe,
    output_kind,
)
from infotok_codec.model import (
    LoadedModel,
)
from infotok_codec.outputs import check_output, same_file


@dataclass
class DecodeResult:
    path: Path | None
    tokens_path: Path | None
    width: int
    height: int
    frames: int  # frames written
    fps: Fraction
    first_frame: int
    seconds: float
    notes: list[str] = field(default_factory=list)  # what happened to the audio, one line each
    precision: str | None = None  # the network's arithmetic, "bf16" or "fp32" (None: no network)


def _chunk_tokens(
    header: Header, rec: ChunkRecord, tables: FrequencyTables, chain: Chain
) -> ChunkTokens:
    keep, kept = decode_chunk(header, rec, tables, chain)
    indices = np.full(keep.shape, -1, dtype=np.int64)
    indices[keep] = kept
    return ChunkTokens(rec.index, rec.first_frame, rec.frames, indices, keep)


def check_model_matches(header: Header, model: LoadedModel) -> None:
    this = f"this is model {model.name} ({model.sha256.hex()[:12]})"
    if model.stream_hash != model.sha256:
        this = f"this is {model.name}, a decoder for model {model.stream_hash.hex()[:12]}'s streams"
    _check_stream_hash(header, model.stream_hash, this)


def _check_stream_hash(header: Header, reads: bytes, this: str) -> None:
    """Refuse a model that does not read `header`'s stream: `reads` is the hash of the model
    whose streams it reads (`LoadedModel.stream_hash`)."""
    if header.model_hash != reads:
        raise ModelError(
            f"the file was written by model {header.model_name} ({header.model_hash.hex()[:12]}), "
            f"{this}: decode with the model that wrote it (--model)"
        )


def iter_tokens(
    reader: ContainerReader, tables: FrequencyTables, first: int = 0, stop: int | None = None
) -> Iterator[ChunkTokens]:
    """Tokens of the chunks that overlap frames [first, stop), read through the seek index.

    Decoding starts at the last key chunk at or before the first of them: the chunks between
    are decoded to tokens (their references) but not yielded."""
    header = reader.header
    stop = header.frames if stop is None else stop
    begin = first // header.chunk_frames
    chain = Chain()
    for k in range(header.key_before(begin), -(-stop // header.chunk_frames)):
        chunk = _chunk_tokens(header, reader.chunk(k), tables, chain)
        if k >= begin:
            yield chunk


def decode_file(
    src: str | Path,
    dst: str | Path | None,
    *,
    frames: str | None = None,
    tokens_out: str | Path | None = None,
    model: LoadedModel | str | Path | None = None,
    device: str = "auto",
    bf16: bool | None = None,
    force: bool = False,
    audio: bool = True,
    progress: Progress | None = None,
) -> DecodeResult:
    """Decode an `.itok` file, or a token file (`.npz`, `infotok_codec.bitstream.tokens`), to a
    video (format by extension; ``-``: y4m on standard output) and/or a token file.

    With `audio`, an `.itok` file's audio track goes into `.mkv` and `.mp4` outputs, cut to the
    decoded frames (`AudioReader.read_span`); `DecodeResult.notes` says where it could not.
    Token files carry no audio.
    """
    src = Path(src)
    out = Path(dst) if dst is not None else None
    tokens_path = Path(tokens_out) if tokens_out is not None else None
    if out is None and tokens_path is None:
        raise InfotokError("nothing to write: give an output video and/or --tokens")
    to_pipe = is_pipe(dst)  # y4m on standard output (the str "-"; a Path is always a file)
    if out is not None and not to_pipe:
        check_output(out, force, folder_ok=True, inputs=[src])  # or a folder of PNG frames
    if tokens_path is not None:
        check_output(tokens_path, force, inputs=[src])
        if out is not None and not to_pipe and same_file(tokens_path, out):
            raise InfotokError(f"{tokens_path}: is also the output video")
    started = time.perf_counter()
    with ExitStack() as stack:
        source: ContainerReader | TokenReader
        if src.suffix.lower() == ".npz":
            source = stack.enter_context(TokenReader(src))
            source.validate()  # a fault is one line before the model runs, not mid-video
            first, stop = parse_frame_range(frames, source.header.frames, source.span)
        else:
            source = stack.enter_context(ContainerReader(src))
            first, stop = parse_frame_range(frames, source.header.frames)
        header = source.header
        fps = Fraction(header.fps_num, header.fps_den)
        engine: ChunkModel | None = None
        if out is not None:
            loaded = as_model(model)
            check_model_matches(header, loaded)
            engine = ChunkModel(loaded, device, bf16)
        if isinstance(source, TokenReader):
            chunks = source.chunks(first, stop)
        else:
            tables = engine.tables if engine is not None else load_tables(header, model)
            chunks = iter_tokens(source, tables, first, stop)
        notes: list[str] = []
        muxer = None
        tracks = (
            AudioReader(source)
            if audio and out is not None and isinstance(source, ContainerReader)
            else None
        )
        if out is not None and tracks is not None and tracks.tracks:
            if not to_pipe and output_kind(out) in HOLDS_SIDE_STREAMS:
                muxer = AudioMuxer(tracks.tracks, tracks.read_span(first, stop))
            else:
                name = "y4m on stdout" if to_pipe else out
                notes.append(f"{name}: this output format holds no audio; the audio is left out")
        tokens = (
            stack.enter_context(TokenWriter(tokens_path, header))
            if tokens_path is not None
            else None
        )
        writer = (
            stack.enter_context(
                VideoWriter(PIPE if to_pipe else out, header.width, header.height, fps, muxer)
            )
            if out is not None
            else None
        )
        if muxer is not None:
            notes.extend(muxer.notes)
        for chunk in chunks:
            # The frames of this chunk inside [first, stop): a range cuts its first and last.
            lo = max(first - chunk.first_frame, 0)
            hi = min(stop - chunk.first_frame, chunk.frames)
            if tokens is not None:
                tokens.write(chunk)
            if writer is not None and engine is not None:
                video = engine.frames(
                    chunk.indices, chunk.keep, chunk.frames, header.height, header.width
                )
                writer.write(video[lo:hi])
                del video  # not held while the next chunk decodes: 100 MB a chunk at 1080p
            if progress:
                progress("decode", hi - lo, stop - first)
    return DecodeResult(
        path=out,
        tokens_path=tokens_path,
        width=header.width,
        height=header.height,
        frames=stop - first,
        fps=fps,
        first_frame=first,
        seconds=time.perf_counter() - started,
        notes=notes,
        precision=engine.precision if engine is not None else None,
    )


def load_tables(header: Header, model: LoadedModel | str | Path | None) -> FrequencyTables:
    """The coder tables of the model that wrote `header`, without building the network."""
    if isinstance(model, LoadedModel):
        check_model_matches(header, model)
        tables_json = model.tables_json
    else:
        from infotok_codec.model import read_model_metadata, stream_hash

        meta, sha = read_model_metadata(model)
        reads = stream_hash(meta, sha)
        _check_stream_hash(
            header, reads, f"the model given reads model {reads.hex()[:12]}'s streams"
        )
        tables_json = meta.get("entropy_tables", "")
    if not tables_json:
        return FrequencyTables.uniform(header.fsq_levels)
    return FrequencyTables.from_json(tables_json)


def read_tokens(
    path: str | Path, model: LoadedModel | str | Path | None = None
) -> list[ChunkTokens]:
    """Every chunk's indices and keep-mask, without running the model."""
    with ContainerReader(path) as reader:
        tables = load_tables(reader.header, model)
        return list(iter_tokens(reader, tables))
