"""The codec: video file ⇄ `.itok` file, and the tokens inside one.

`encode_file` and `decode_file` are mirrors. Encoding with the `elbo` router takes two passes over
the input: pass 1 runs the tokenizer at full rate on each chunk (encode and decode) for its error
map, spills the map to a temporary file and keeps in memory only the chunk's mean error; the
router then sets every chunk's token count from those means, and pass 2 reads the input again,
chooses each chunk's positions from its spilled map and encodes the chunk knowing its keep-mask
(the compressor moves what dropped positions hold into kept ones), then writes the record.
Memory stays flat however long the video is. The `light` router's pass 1 runs only the conv
encoder and the model's light-router head, and spills the conv features too, so its pass 2 runs
only the compressor.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, closing
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from infotok_codec.audio_io import AudioMuxer, read_source_audio
from infotok_codec.bitstream import (
    AudioReader,
    Chain,
    ChunkTokens,
    FrequencyTables,
    KeyPrior,
    TokenReader,
    TokenWriter,
    check_coder,
    side_writer,
)
from infotok_codec.bitstream.chunk_coding import decode_chunk, encode_chunk
from infotok_codec.bitstream.container import ContainerReader, ContainerWriter
from infotok_codec.bitstream.header import (
    CHAINING_CODERS,
    KEY_INTERVAL_RANGE,
    ChunkRecord,
    Header,
)
from infotok_codec.closing import Closing
from infotok_codec.errors import InfotokError, ModelError
from infotok_codec.model import (
    SPACE_FACTOR,
    LoadedModel,
    autocast,
    latent_shape,
    load_model,
    use_bf16,
)
from infotok_codec.outputs import check_output
from infotok_codec.rate import RateControl, choose_rate
from infotok_codec.routing import rate_control
from infotok_codec.routing import router as routing
from infotok_codec.video import HOLDS_SIDE_STREAMS, VideoWriter, output_kind, probe, read_frames

Progress = Callable[[str, int, int], None]
"""Called as `progress(pass_name, frames_just_done, total_frames)` after each chunk."""
CountFeedback = Callable[[int, int], int]
"""Called as `count(chunk, record_bytes_written_so_far)` just before chunk `chunk` is written:
the positions it keeps."""


# -- running the model on one chunk ----------------------------------------------------------
class ChunkModel:
    """A loaded tokenizer on a device, working on uint8 frames `(n, H, W, 3)`."""

    def __init__(self, model: LoadedModel, device: str = "auto", bf16: bool | None = None) -> None:
        self.model = model
        self.device = resolve_device(device)
        self.bf16 = use_bf16(bf16, self.device)  # None: where the device runs it natively
        self.tokenizer = model.tokenizer.to(self.device).eval()
        self.light_head = (
            model.light_head.to(self.device).eval() if model.light_head is not None else None
        )
        self.tables = (
            FrequencyTables.from_json(model.tables_json)
            if model.tables_json
            else FrequencyTables.uniform(model.tokenizer.config.levels)
        )
        KeyPrior.of(self.tables)  # a damaged key prior is one error here, before any frame

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    def _autocast(self) -> AbstractContextManager[object]:
        return autocast(self.device, self.bf16)

    def _video(self, frames: np.ndarray) -> torch.Tensor:
        """`(n, H, W, 3)` uint8 → `(1, 3, n, H, W)` float in [-1, 1] on the device."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        return x.permute(3, 0, 1, 2)[None].float().div_(127.5).sub_(1.0)  # one float copy, not two

    def tokens(
        self,
        frames: np.ndarray,
        keep: np.ndarray | None = None,
        features: np.ndarray | None = None,
    ) -> np.ndarray:
        """Indices `(T', h, w)` int64: full rate, or encoded knowing the keep-mask `(T', h, w)`
        (indices at dropped positions are meaningless). `features` `(dim, T', h, w)`, the conv
        encoder's output for these frames as `light_error_map` keeps it (float32, or bf16 bits
        as int16), skips the conv encoder."""
        n, height, width = frames.shape[:3]
        indices = np.zeros(latent_shape(n, height, width), dtype=np.int64)
        for y0, y1, x0, x1 in tiles(height, width):
            (ly0, ly1), (lx0, lx1) = _latent_span(y0, y1), _latent_span(x0, x1)
            mask = None
            if keep is not None and not keep[:, ly0:ly1, lx0:lx1].all():
                mask = torch.from_numpy(keep[:, ly0:ly1, lx0:lx1]).to(self.device)[None]
            with self._autocast():
                if features is None:
                    idx = self.tokenizer.encode(self._video(frames[:, y0:y1, x0:x1]), mask)
                else:
                    tile = torch.from_numpy(np.ascontiguousarray(features[:, :, ly0:ly1, lx0:lx1]))
                    if tile.dtype == torch.int16:  # bf16 bits, as the conv encoder made them
                        tile = tile.view(torch.bfloat16)
                    idx = self.tokenizer.encode_features(tile.to(self.device)[None], mask)
            indices[:, ly0:ly1, lx0:lx1] = idx[0].cpu()
        return indices

    @torch.no_grad()
    def light_error_map(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The `light` router's predicted error `(T', h, w)` float32, and the conv features
        `(dim, T', h, w)` it was predicted from (for `tokens`): float32, or under bf16 their
        bf16 bits as int16 (numpy has no bf16): exact, and half the bytes to hold and spill."""
        check_light_head(self.model)
        assert self.light_head is not None  # moved to the device with the model
        n, height, width = frames.shape[:3]
        shape = latent_shape(n, height, width)
        error = np.zeros(shape, dtype=np.float32)
        dtype = np.int16 if self.bf16 else np.float32
        features = np.zeros((self.tokenizer.config.dim, *shape), dtype=dtype)
        for y0, y1, x0, x1 in tiles(height, width):
            (ly0, ly1), (lx0, lx1) = _latent_span(y0, y1), _latent_span(x0, x1)
            with self._autocast():
                feats = self.tokenizer.features(self._video(frames[:, y0:y1, x0:x1]))
                error[:, ly0:ly1, lx0:lx1] = self.light_head.error_map(feats)[0].float().cpu()
            tile = feats[0].cpu()
            tile = tile.to(torch.bfloat16).view(torch.int16) if self.bf16 else tile.float()
            features[:, :, ly0:ly1, lx0:lx1] = tile.numpy()
        return error, features

    def error_map(self, frames: np.ndarray) -> np.ndarray:
        """The router's ELBO proxy `(T', h, w)` float32: full-rate error per latent position."""
        n, height, width = frames.shape[:3]
        error = np.zeros(latent_shape(n, height, width), dtype=np.float32)
        for y0, y1, x0, x1 in tiles(height, width):
            (ly0, ly1), (lx0, lx1) = _latent_span(y0, y1), _latent_span(x0, x1)
            with self._autocast():
                err = self.tokenizer.error_map(self._video(frames[:, y0:y1, x0:x1]))
            error[:, ly0:ly1, lx0:lx1] = err[0].float().cpu()
        return error

    def frames(
        self, indices: np.ndarray, keep: np.ndarray, n: int, height: int, width: int
    ) -> np.ndarray:
        """Indices `(T', h, w)` + keep-mask `(T', h, w)` → frames `(n, height, width, 3)` uint8."""
        out = np.empty((n, height, width, 3), dtype=np.uint8)
        for y0, y1, x0, x1 in tiles(height, width):
            (ly0, ly1), (lx0, lx1) = _latent_span(y0, y1), _latent_span(x0, x1)
            tile_keep = keep[:, ly0:ly1, lx0:lx1]
            tile_idx = np.where(tile_keep, indices[:, ly0:ly1, lx0:lx1], 0)
            idx = torch.from_numpy(tile_idx).to(self.device)[None]
            mask = None if tile_keep.all() else torch.from_numpy(tile_keep).to(self.device)[None]
            with self._autocast():
                video = self.tokenizer.decode(idx, mask, (n, y1 - y0, x1 - x0))[0]
            # A frame at a time, in place: at a 512×512 tile a float copy of the whole video is
            # 50 MB. (A bf16 frame is copied to float first: bf16 cannot hold every level from
            # 128 to 255.)
            for i in range(n):
                frame = video[:, i].float().add_(1.0).mul_(127.5).round_().clamp_(0, 255)
                out[i, y0:y1, x0:x1] = frame.to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        return out


FEATURE_SPILL_LIMIT = 2 << 30
"""Bytes of conv features a `light` analysis spills for pass 2 to reuse (1 KiB per latent
position in float32, half in bf16: 2 GiB is 16 or 32 chunks of 16 frames at 1080p); later chunks
run the conv encoder again."""
TILE = 512  # pixels; a multiple of the compressor's 64-pixel window, so windows never straddle
TILE_ABOVE = 1024 * 1024  # frames of more pixels than this are coded in tiles


def tiles(height: int, width: int) -> list[tuple[int, int, int, int]]:
    """Pixel boxes (y0, y1, x0, x1) the model runs on, one at a time.

    Frames up to about a megapixel run whole; larger ones in TILE×TILE tiles, so memory is bounded
    at any resolution (3840×2160 included). Encoder and decoder derive the same tiles from the
    frame size, so a stream needs no record of them.
    """
    if height * width <= TILE_ABOVE:
        return [(0, height, 0, width)]
    return [
        (y, min(y + TILE, height), x, min(x + TILE, width))
        for y in range(0, height, TILE)
        for x in range(0, width, TILE)
    ]


def _latent_span(p0: int, p1: int) -> tuple[int, int]:
    """Latent rows (or columns) covering pixel rows [p0, p1) of a tile."""
    return p0 // SPACE_FACTOR, -(-p1 // SPACE_FACTOR)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise InfotokError(f"unknown device {device!r}: use auto, cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InfotokError("--device cuda asked for, but no CUDA device is available")
    return torch.device(device)


def check_chunk_frames(chunk_frames: int) -> None:
    if chunk_frames < 4 or chunk_frames % 4:
        raise InfotokError(f"chunk frames {chunk_frames} is not a positive multiple of 4")


def as_model(model: LoadedModel | str | Path | None) -> LoadedModel:
    return model if isinstance(model, LoadedModel) else load_model(model)


def check_light_head(model: LoadedModel) -> None:
    """Refuse the `light` router for a model file without its head, naming the fix."""
    if model.light_head is None:
        raise ModelError(
            f"model {model.name} has no light router head: fit one with "
            "`infotok fit-router MODEL --data DIR`"
        )


# -- encode ----------------------------------------------------------------------------------
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
    progress: Progress | None = None,
) -> EncodeResult:
    """Encode a video file into an `.itok` file: at `budget` of the full-rate token count, or
    at any `rate` (quality, bitrate, file size; `infotok_codec.routing.rate_control`). Give at
    most one; neither is budget 0.8. Key chunks come every `key_interval` seconds
    (`key_interval_chunks`); with `audio`, the source's audio streams are copied in as they are
    (`infotok_codec.bitstream.audio`). `bf16`: the network under bf16 autocast (None: where the
    device runs it natively; `infotok_codec.model.precision`)."""
    if budget is not None and rate is not None:
        raise InfotokError("give a budget or a rate, not both")
    rate = rate or choose_rate(budget=budget)
    routing.check_router(router)
    check_coder(coder)
    check_key_interval(key_interval)
    check_output(Path(dst), force)
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


@dataclass
class _ChunkPlan:
    """One chunk as pass 1 saw it: its size, and where its error map lies in the spill file."""

    frames: int
    shape: tuple[int, int, int]
    offset: int | None  # None: no error map was computed
    mean_error: float
    features_offset: int | None = None  # the spilled conv features (`light` analyses only)

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
    are spilled too (up to `FEATURE_SPILL_LIMIT`) so that pass 2 runs only the compressor; such an
    analysis serves `light` and `uniform` writes, the others `elbo`, `fixed` and `uniform`.
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
    ) -> None:
        check_chunk_frames(chunk_frames)
        self.src = Path(src)
        self.info = probe(self.src)
        self.loaded = as_model(model)
        self.engine = ChunkModel(self.loaded, device, bf16)
        self.chunk_frames = chunk_frames
        self.progress = progress
        self.light = light
        if light and with_error:
            check_light_head(self.loaded)
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
            features = None
            if self.light:
                error, features = self.engine.light_error_map(frames)
            else:
                error = self.engine.error_map(frames)
            offset = spill.tell()
            np.save(spill, error)
            features_offset = None
            if features is not None and spilled_features + features.nbytes <= FEATURE_SPILL_LIMIT:
                spilled_features += features.nbytes
                features_offset = spill.tell()
                np.save(spill, features)
            mean = float(error.mean(dtype=np.float64))
            chunks.append(_ChunkPlan(len(frames), error.shape, offset, mean, features_offset))
            if self.progress:
                self.progress("analyse", len(frames), self.info.frames)
        return chunks

    def read_chunks(self) -> Generator[np.ndarray, None, None]:
        """The input's chunks of frames, checked against the probed frame count."""
        total = 0
        for frames in read_frames(self.src, self.chunk_frames):
            total += len(frames)
            if total > self.info.frames:
                break
            yield frames
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

    def _features(self, chunk: _ChunkPlan) -> np.ndarray | None:
        """The chunk's spilled conv features `(dim, T', h, w)`, or None (pass 2 recomputes)."""
        if chunk.features_offset is None or self._spill is None:
            return None
        self._spill.seek(chunk.features_offset)
        return np.load(self._spill)

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
        budget)."""
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
        check_output(dst, force)
        info = self.info
        header = self.header(router, budget, coder, rate, key_interval)
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
        side = side_writer(header, *read_source_audio(self.src)) if audio else None
        chain = Chain()
        written, used = 0, []
        with ContainerWriter(dst, header) as writer, closing(self.read_chunks()) as inputs:
            for k, (chunk, frames) in enumerate(zip(self.chunks, inputs, strict=True)):
                count = counts(k, written) if callable(counts) else counts[k]
                if frames.shape[:3] != (chunk.frames, info.height, info.width):
                    raise InfotokError(
                        f"{self.src}: chunk {k} is {frames.shape[:3]} (frames, height, width), "
                        f"pass 1 saw {(chunk.frames, info.height, info.width)}: the input changed"
                    )
                error = (
                    self._error(chunk) if router != "uniform" and count < chunk.positions else None
                )
                keep = routing.select_positions(router, error, chunk.shape, count)
                indices = self.engine.tokens(frames, keep, self._features(chunk))
                record = encode_chunk(header, k, keep, indices[keep], self.engine.tables, chain)
                writer.write_chunk(record)
                written += record.nbytes
                used.append(count)
                if self.progress:
                    self.progress("write", chunk.frames, info.frames)
            writer.close(side)
        write_s = time.perf_counter() - started
        size = dst.stat().st_size
        with ContainerReader(dst) as reader:
            audio_bytes = reader.side_span[1]
        return EncodeResult(
            path=dst,
            width=info.width,
            height=info.height,
            frames=info.frames,
            fps=info.fps,
            chunks=len(self.chunks),
            bytes=size,
            bpp=8 * size / (info.width * info.height * info.frames),
            audio_bytes=audio_bytes,
            router=router,
            budget=budget,
            realised_rate=sum(used) / sum(positions),
            chunk_rates=[c / n for c, n in zip(used, positions, strict=True)],
            seconds={"analyse": self.seconds, "route": route_s, "write": write_s},
            rate=header.rate,
            precision=self.engine.precision,
        )


# -- decode ----------------------------------------------------------------------------------
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
    if header.model_hash != model.sha256:
        raise ModelError(
            f"the file was written by model {header.model_name} ({header.model_hash.hex()[:12]}), "
            f"this is model {model.name} ({model.sha256.hex()[:12]}): pass the right --model"
        )


def parse_frame_range(
    text: str | None, frames: int, span: tuple[int, int] | None = None
) -> tuple[int, int]:
    """'A:B' (either side may be empty) → [A, B) inside [0, frames), or inside `span` (the
    frames a token file holds; the default range then)."""
    lo, hi = span if span is not None else (0, frames)
    if not text:
        return lo, hi
    try:
        a_text, b_text = text.split(":")
        a = int(a_text) if a_text else lo
        b = int(b_text) if b_text else hi
    except ValueError:
        raise InfotokError(f"--frames {text!r} is not A:B") from None
    if not lo <= a < b <= hi:
        held = "" if span is None else f" (the token file holds frames {lo}:{hi})"
        raise InfotokError(f"--frames {text}: need {lo} <= A < B <= {hi}{held}")
    return a, b


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
    video (format by extension) and/or a token file.

    With `audio`, an `.itok` file's audio track goes into `.mkv` and `.mp4` outputs, cut to the
    decoded frames (`AudioReader.read_span`); `DecodeResult.notes` says where it could not.
    Token files carry no audio.
    """
    src = Path(src)
    out = Path(dst) if dst is not None else None
    tokens_path = Path(tokens_out) if tokens_out is not None else None
    if out is None and tokens_path is None:
        raise InfotokError("nothing to write: give an output video and/or --tokens")
    if out is not None:
        check_output(out, force, folder_ok=True)  # a folder of PNG frames
    if tokens_path is not None:
        check_output(tokens_path, force)
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
            if output_kind(out) in HOLDS_SIDE_STREAMS:
                muxer = AudioMuxer(tracks.tracks, tracks.read_span(first, stop))
            else:
                notes.append(f"{out}: this output format holds no audio; the audio is left out")
        tokens = (
            stack.enter_context(TokenWriter(tokens_path, header))
            if tokens_path is not None
            else None
        )
        writer = (
            stack.enter_context(VideoWriter(out, header.width, header.height, fps, muxer))
            if out is not None
            else None
        )
        if muxer is not None:
            notes.extend(muxer.notes)
        for chunk in chunks:
            if tokens is not None:
                tokens.write(chunk)
            if writer is not None and engine is not None:
                video = engine.frames(
                    chunk.indices, chunk.keep, chunk.frames, header.height, header.width
                )
                lo = max(first - chunk.first_frame, 0)
                hi = min(stop - chunk.first_frame, chunk.frames)
                writer.write(video[lo:hi])
                del video  # not held while the next chunk decodes: 100 MB a chunk at 1080p
            if progress:
                progress("decode", chunk.frames, stop - first)
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
        from infotok_codec.model import read_model_metadata

        meta, sha = read_model_metadata(model)
        if sha != header.model_hash:
            raise ModelError(
                f"the file was written by model {header.model_name} "
                f"({header.model_hash.hex()[:12]}), "
                f"the model given has hash {sha.hex()[:12]}: pass the right --model"
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
