"""Encoding: a video file to an `.itok` file, the mirror of `decode`.

Encoding with the `elbo` router takes two passes over
the input: pass 1 runs the tokenizer at full rate on each chunk (encode and decode) for its error
map, spills the map to a temporary file and keeps in memory only the chunk's mean error; the
router then sets every chunk's token count from those means, and pass 2 reads the input again,
chooses each chunk's positions from its spilled map and encodes the chunk knowing its keep-mask
(the compressor moves what dropped positions hold into kept ones), then writes the record.
Memory stays flat however long the video is. The `light` router's pass 1 runs only the conv
encoder and the model's light-router head, and spills the conv features too, a tile at a time, so
its pass 2 runs only the compressor, without reading the input again.
"""

from __future__ import annotations

import functools
import math
import tempfile
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import numpy as np

from infotok_codec.bitstream import (
    AudioPacket,
    AudioTrack,
    Chain,
    check_coder,
    packets_in_span,
    side_writer,
)
from infotok_codec.bitstream.chunk_coding import encode_chunk
from infotok_codec.bitstream.container import ContainerReader, ContainerWriter
from infotok_codec.bitstream.header import (
    CHAINING_CODERS,
    KEY_INTERVAL_RANGE,
    Header,
)
from infotok_codec.closing import Closing
from infotok_codec.codec.engine import (
    ChunkModel,
    Progress,
    TileFeatures,
    as_model,
    check_chunk_frames,
    check_light_head,
    check_refine,
)
from infotok_codec.codec.frame_range import parse_frame_range, split_frame_range
from infotok_codec.errors import FormatError, InfotokError
from infotok_codec.media import probe, read_frames, read_source_audio
from infotok_codec.model import (
    SPACE_FACTOR,
    LoadedModel,
    latent_shape,
)
from infotok_codec.outputs import check_output
from infotok_codec.rate import RateControl, choose_rate
from infotok_codec.routing import rate_control
from infotok_codec.routing import router as routing

CountFeedback = Callable[[int, int], int]
"""Called as `count(chunk, record_bytes_written_so_far)` just before chunk `chunk` is written:
the positions it keeps."""


FEATURE_SPILL_LIMIT = 2 << 30
"""Bytes of conv features a `light` analysis spills for pass 2 to reuse (1 KiB per latent
position in float32, half in bf16: 2 GiB is 16 or 32 chunks of 16 frames at 1080p); later chunks
run the conv encoder again."""
KEY_SECONDS = 2.0
"""Default seconds between key chunks: seeking decodes at most this much extra token data."""


def check_key_interval(seconds: float) -> None:
    if not 0.0 <= seconds <= 3600.0:  # also rejects NaN
        raise InfotokError(f"key interval {seconds} s outside [0, 3600]")


def key_interval_chunks(seconds: float, fps: Fraction, chunk_frames: int, coder: str) -> int:
    """Chunks from one key chunk to the next: ``seconds`` of video rounded to whole chunks, at
    least 1 (0 s: every chunk a key). Coders that code every chunk alone have 1."""
    if coder not in CHAINING_CODERS:
        return 1
    chunks = math.floor(Fraction(seconds) * fps / chunk_frames + Fraction(1, 2))
    return min(max(chunks, 1), KEY_INTERVAL_RANGE[1])


@dataclass
class EncodeResult:
    path: Path
    width: int
    height: int
    frames: int
    fps: Fraction
    chunks: int
    bytes: int  # the file's size, audio included
    bpp: float  # 8 · bytes / (width · height · frames)
    audio_bytes: int  # the audio track's share of `bytes` (0: none)
    router: str
    budget: float
    realised_rate: float  # kept positions / all positions, over the whole video
    chunk_rates: list[float]
    rate: RateControl  # what the encode was asked for, as the header records it
    seconds: dict[str, float] = field(default_factory=dict)
    chunk_psnr: list[float] | None = None  # mode quality: each chunk's PSNR-RGB (dB), measured
    unreachable_chunks: int = 0  # mode quality: chunks below the target even at full rate
    warning: str | None = None  # a size or bitrate target out of reach, and what was written
    precision: str | None = None  # the network's arithmetic, "bf16" or "fp32" (None: no network)
    refine: int = 0  # steps of encoder-side refinement per chunk (`infotok_codec.model.refine`)
    first_frame: int = 0  # where `frames` begin in the source (`encode --frames`)


def encode_file(
    src: str | Path,
    dst: str | Path,
    *,
    budget: float | None = None,
    rate: RateControl | None = None,
    router: str = "elbo",
    model: LoadedModel | str | Path | None = None,
    chunk_frames: int = 16,
    coder: str = "context",
    key_interval: float = KEY_SECONDS,
    device: str = "auto",
    bf16: bool | None = None,
    force: bool = False,
    audio: bool = True,
    refine: int = 0,
    frames: str | None = None,
    progress: Progress | None = None,
) -> EncodeResult:
    """Encode a video file into an `.itok` file: at `budget` of the full-rate token count, or
    at any `rate` (quality, bitrate, file size; `infotok_codec.routing.rate_control`). Give at
    most one; neither is budget 0.8. Key chunks come every `key_interval` seconds
    (`key_interval_chunks`); with `audio`, the source's audio streams are copied in as they are
    (`infotok_codec.bitstream.audio`). `bf16`: the network under bf16 autocast (None: where the
    device runs it natively; `infotok_codec.model.precision`). `refine`: steps of encoder-side
    search of every chunk's codes against the decoder (`infotok_codec.model.refine`; 0: none),
    in every mode, so rate control measures and spends the refined tokens. `frames` ("A:B",
    either side may be empty) encodes only the source's frames [A, B), with the audio that goes
    with them, cut as `decode_file --frames` cuts it."""
    if budget is not None and rate is not None:
        raise InfotokError("give a budget or a rate, not both")
    rate = rate or choose_rate(budget=budget)
    routing.check_router(router)
    check_coder(coder)
    check_key_interval(key_interval)
    check_refine(refine)
    check_output(Path(dst), force, inputs=[src])
    with_error = rate_control.needs_error_map(router, rate)
    with Analysis(
        src,
        model,
        chunk_frames,
        device,
        with_error,
        Path(dst).parent,
        progress,
        light=router == "light",
        bf16=bf16,
        refine=refine,
        frames=frames,
    ) as pass1:
        return rate_control.write(
            pass1,
            dst,
            rate,
            router=router,
            coder=coder,
            key_interval=key_interval,
            force=force,
            audio=audio,
        )


def _spill(spill: BinaryIO, array: np.ndarray) -> int:
    """Append `array` to the spill file; where it starts."""
    offset = spill.tell()
    np.save(spill, array)
    return offset


def _spill_tile(spill: BinaryIO, offsets: list[int], tile: np.ndarray) -> None:
    offsets.append(_spill(spill, tile))


def _load_spilled(spill: BinaryIO, offsets: list[int], index: int) -> np.ndarray:
    spill.seek(offsets[index])
    return np.load(spill)


@dataclass
class _ChunkPlan:
    """One chunk as pass 1 saw it: its size, and where its error map lies in the spill file."""

    frames: int
    shape: tuple[int, int, int]
    offset: int | None  # None: no error map was computed
    mean_error: float
    # Where each tile's spilled conv features lie (`light` analyses only; None: not spilled).
    features_offsets: list[int] | None = None

    @property
    def positions(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2]


class Analysis(Closing):
    """Pass 1 of an encode: every chunk's full-rate error map, spilled to disk.

    Routing needs only each chunk's mean error, so that is all it keeps in memory. Routers that
    need no error map (`uniform`, or budget 1.0) skip the model here: the chunks follow from the
    frame count. One analysis can be written out at any number of routers and budgets (`write`,
    pass 2, reads the input again); `bench` relies on that. With `light`, the maps are the
    `light` router's predictions (the model file's head on the conv features), and the features
    are spilled too (up to `FEATURE_SPILL_LIMIT`) so that pass 2 runs only the compressor (and
    reads the input again only when some chunk's went past the limit, or to refine); such an
    analysis serves `light` and `uniform` writes, the others `elbo`, `fixed` and `uniform`.
    With `frames` ("A:B"), the video is the source's frames [A, B): `info` describes them, and
    `span` says where they lie in the source.
    """

    def __init__(
        self,
        src: str | Path,
        model: LoadedModel | str | Path | None = None,
        chunk_frames: int = 16,
        device: str = "auto",
        with_error: bool = True,
        spill_dir: Path | None = None,
        progress: Progress | None = None,
        light: bool = False,
        bf16: bool | None = None,
        refine: int = 0,
        frames: str | None = None,
    ) -> None:
        check_chunk_frames(chunk_frames)
        check_refine(refine)
        split_frame_range(frames)  # a typo costs nothing; the bounds wait for the frame count
        self.src = Path(src)
        # The model, device and head are checked before the input is probed (a full decode),
        # and the header before pass 1: a mistake costs seconds, not a pass over the video.
        self.loaded = as_model(model)
        self.loaded.check_encodes()
        self.engine = ChunkModel(self.loaded, device, bf16, refine)
        if light and with_error:
            check_light_head(self.loaded)
        self.chunk_frames = chunk_frames
        self.progress = progress
        self.light = light
        probed = probe(self.src)
        self.source_frames = probed.frames
        self.span = parse_frame_range(frames, probed.frames)
        self.info = replace(probed, frames=self.span[1] - self.span[0])
        try:
            self.header("uniform", 1.0, "zstd")
        except FormatError as exc:
            raise InfotokError(f"{self.src}: cannot be written as .itok ({exc})") from None
        self._spill: BinaryIO | None = None
        started = time.perf_counter()
        if with_error:
            self._spill = tempfile.TemporaryFile(dir=spill_dir)  # noqa: SIM115
            try:
                self.chunks = self._run(self._spill)
            except BaseException:
                self._spill.close()
                raise
        else:
            self.chunks = self._plan()
        self.seconds = time.perf_counter() - started

    def close(self) -> None:
        """Remove the spill file (the analysis is then no longer usable for pass 2)."""
        if self._spill is not None:
            self._spill.close()

    def _plan(self) -> list[_ChunkPlan]:
        h, w = self.info.height, self.info.width
        return [
            _ChunkPlan(n, latent_shape(n, h, w), None, 0.0)
            for start in range(0, self.info.frames, self.chunk_frames)
            for n in [min(self.chunk_frames, self.info.frames - start)]
        ]

    def _run(self, spill: BinaryIO) -> list[_ChunkPlan]:
        chunks: list[_ChunkPlan] = []
        spilled_features = 0
        for frames in self.read_chunks():
            n = len(frames)
            offsets: list[int] | None = None
            if self.light:
                nbytes = self.engine.feature_bytes(n, self.info.height, self.info.width)
                if spilled_features + nbytes <= FEATURE_SPILL_LIMIT:
                    spilled_features += nbytes
                    offsets = []
                keep = None if offsets is None else functools.partial(_spill_tile, spill, offsets)
                error = self.engine.light_error_map(frames, keep)
            else:
                error = self.engine.error_map(frames)
            # Dropped before the next chunk is read: two chunks of 1080p frames are 200 MB.
            del frames
            offset = _spill(spill, error)
            mean = float(error.mean(dtype=np.float64))
            chunks.append(_ChunkPlan(n, error.shape, offset, mean, offsets))
            if self.progress:
                self.progress("analyse", n, self.info.frames)
        return chunks

    def read_chunks(self) -> Generator[np.ndarray, None, None]:
        """The input's chunks of frames, checked against the probed frame count."""
        first, stop = self.span
        # To the source's end when the span reaches it, so that an input that grew is noticed.
        limit = None if stop == self.source_frames else stop - first
        total = 0
        for frames in read_frames(self.src, self.chunk_frames, start=first, max_frames=limit):
            total += len(frames)
            if total > self.info.frames:
                break
            yield frames
            del frames  # not held while the reader fills the next chunk
        if total != self.info.frames:
            raise InfotokError(f"{self.src}: read {total} frames, expected {self.info.frames}")

    def chunk_errors(self) -> Iterator[np.ndarray]:
        """Each chunk's full-rate error map `(T', h, w)`, from the spill."""
        for chunk in self.chunks:
            yield self._error(chunk)

    def _error(self, chunk: _ChunkPlan) -> np.ndarray:
        if chunk.offset is None or self._spill is None:
            raise InfotokError("this analysis computed no error maps")
        self._spill.seek(chunk.offset)
        return np.load(self._spill)

    def chunk_features(self, k: int) -> TileFeatures | None:
        """Chunk `k`'s spilled conv features, tile by tile as `ChunkModel.tokens` takes them,
        each read from the spill when asked for; or None (`tokens` runs the conv encoder)."""
        offsets = self.chunks[k].features_offsets
        if offsets is None or self._spill is None:
            return None
        return functools.partial(_load_spilled, self._spill, offsets)

    def coding_inputs(self) -> Generator[np.ndarray | None, None, None]:
        """The frames that coding the chunks needs (pass 2, rate control's byte sampling), chunk
        by chunk. When every chunk's conv features were spilled and no refinement needs the
        frames, chunks are coded from the features alone: the input is not read again, and each
        chunk's frames are None (`tokens` takes them so)."""
        if self.engine.refine or any(c.features_offsets is None for c in self.chunks):
            yield from self.read_chunks()
        else:
            yield from (None for _ in self.chunks)

    def tokens(self, k: int, frames: np.ndarray | None, keep: np.ndarray) -> np.ndarray:
        """Chunk `k`'s token indices keeping `keep`, from its frames (`coding_inputs`' item) or,
        when those are None, from its spilled features alone."""
        features = self.chunk_features(k)
        if frames is None:
            assert features is not None  # `coding_inputs` reads the input otherwise
            size = (self.info.height, self.info.width)
            return self.engine.tokens_of_features(features, keep, self.chunks[k].frames, *size)
        return self.engine.tokens(frames, keep, features)

    @functools.cached_property
    def _audio(self) -> tuple[list[AudioTrack], list[list[AudioPacket]]]:
        """The source's audio tracks and, per track, its packets that go with `span`; demuxed
        once, at the first write (bench writes one analysis at many budgets)."""
        tracks, packets = read_source_audio(self.src)
        fps = self.info.fps
        return tracks, [
            packets_in_span(track_packets, track, fps, self.span, self.source_frames)
            for track, track_packets in zip(tracks, packets, strict=True)
        ]

    def header(
        self,
        router: str,
        budget: float,
        coder: str,
        rate: RateControl | None = None,
        key_interval: float = KEY_SECONDS,
    ) -> Header:
        """The header of this video written at `router`, `budget` (the mean rate aimed for),
        `coder` with key chunks every `key_interval` seconds, recording `rate` (default: mode
        budget) and the engine's refinement steps."""
        info, loaded = self.info, self.loaded
        rate = rate or RateControl.budget(budget)
        return Header(
            width=info.width,
            height=info.height,
            frames=info.frames,
            fps_num=info.fps.numerator,
            fps_den=info.fps.denominator,
            chunk_frames=self.chunk_frames,
            latent_height=-(-info.height // SPACE_FACTOR),
            latent_width=-(-info.width // SPACE_FACTOR),
            model_name=loaded.name,
            model_hash=loaded.sha256,
            fsq_levels=loaded.tokenizer.config.levels,
            coder=coder,
            router=router,
            budget=budget,
            lattice_share=routing.lattice_share(router),
            key_interval=key_interval_chunks(key_interval, info.fps, self.chunk_frames, coder),
            rate_mode=rate.mode,
            rate_target=rate.target,
            refine=self.engine.refine,
        )

    def write(
        self,
        dst: str | Path,
        *,
        router: str = "elbo",
        budget: float = 0.8,
        coder: str = "context",
        key_interval: float = KEY_SECONDS,
        force: bool = False,
        counts: Sequence[int] | CountFeedback | None = None,
        rate: RateControl | None = None,
        audio: bool = True,
    ) -> EncodeResult:
        """Pass 2: route, choose positions, encode each chunk knowing its keep-mask, write;
        then, with `audio`, the source's audio packets.

        `counts` (kept positions per chunk) overrides the router's allocation; positions are then
        still chosen by `router`. Bench's oracle and rate control use it; rate control's size
        modes give a `CountFeedback`, asked for each chunk's count just before it is written.
        `rate` is what the header records as asked for (default: mode budget at `budget`).
        """
        dst = Path(dst)
        routing.check_router(router)
        routing.check_budget(budget)
        check_coder(coder)
        check_key_interval(key_interval)
        if routing.needs_error_map(router, budget):
            if self._spill is None:
                raise InfotokError(f"router {router} needs an analysis with error maps")
            if (router == "light") != self.light:
                made = "light" if self.light else "full-rate"
                raise InfotokError(f"router {router} cannot use this analysis's {made} error maps")
        check_output(dst, force, inputs=[self.src])
        info = self.info
        header = self.header(router, budget, coder, rate, key_interval)
        size = (info.height, info.width)
        started = time.perf_counter()
        positions = [c.positions for c in self.chunks]
        errors = [c.mean_error for c in self.chunks]
        if counts is None:
            counts = routing.allocate_counts(router, budget, positions, errors)
        elif not callable(counts) and len(counts) != len(positions):
            raise InfotokError(f"{len(counts)} counts for {len(positions)} chunks")
        route_s = time.perf_counter() - started
        started = time.perf_counter()
        # Demuxed before any chunk is coded, so a broken audio stream fails fast.
        side = side_writer(header, *self._audio) if audio else None
        chain = Chain()
        written, used = 0, []
        with ContainerWriter(dst, header) as writer, closing(self.coding_inputs()) as inputs:
            for k, chunk in enumerate(self.chunks):
                # `next`, not `zip`: zip's reused result tuple would hold the last chunk's frames
                # while the reader fills the next (a 100 MB chunk at 1080p).
                frames = next(inputs)
                count = counts(k, written) if callable(counts) else counts[k]
                if frames is not None and frames.shape[:3] != (chunk.frames, *size):
                    raise InfotokError(
                        f"{self.src}: chunk {k} is {frames.shape[:3]} (frames, height, width), "
                        f"pass 1 saw {(chunk.frames, *size)}: the input changed"
                    )
                error = (
                    self._error(chunk) if router != "uniform" and count < chunk.positions else None
                )
                keep = routing.select_positions(router, error, chunk.shape, count)
                indices = self.tokens(k, frames, keep)
                del frames
                record = encode_chunk(header, k, keep, indices[keep], self.engine.tables, chain)
                writer.write_chunk(record)
                written += record.nbytes
                used.append(count)
                if self.progress:
                    self.progress("write", chunk.frames, info.frames)
            next(inputs, None)  # the reader checks that the input ends where pass 1 saw it end
            writer.close(side)
        write_s = time.perf_counter() - started
        nbytes = dst.stat().st_size
        with ContainerReader(dst) as reader:
            audio_bytes = reader.side_span[1]
        return EncodeResult(
            path=dst,
            width=info.width,
            height=info.height,
            frames=info.frames,
            fps=info.fps,
            chunks=len(self.chunks),
            bytes=nbytes,
            bpp=8 * nbytes / (info.width * info.height * info.frames),
            audio_bytes=audio_bytes,
            router=router,
            budget=budget,
            realised_rate=sum(used) / sum(positions),
            chunk_rates=[c / n for c, n in zip(used, positions, strict=True)],
            seconds={"analyse": self.seconds, "route": route_s, "write": write_s},
            rate=header.rate,
            precision=self.engine.precision,
            refine=self.engine.refine,
            first_frame=self.span[0],
        )
