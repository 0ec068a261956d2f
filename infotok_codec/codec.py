"""The codec: video file ⇄ `.itok` file, and the tokens inside one.

`encode_file` and `decode_file` are mirrors. Encoding with the `elbo` router takes two passes over
the input: pass 1 runs the tokenizer at full rate on each chunk (encode and decode) for its error
map, spills the map to a temporary file and keeps in memory only the chunk's mean error; the
router then sets every chunk's token count from those means, and pass 2 reads the input again,
chooses each chunk's positions from its spilled map and encodes the chunk knowing its keep-mask
(the compressor moves what dropped positions hold into kept ones), then writes the record.
Memory stays flat however long the video is.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from infotok_codec import rate_control
from infotok_codec import router as routing
from infotok_codec.container import (
    ChunkRecord,
    ContainerReader,
    ContainerWriter,
    Header,
    decode_chunk,
    encode_chunk,
)
from infotok_codec.entropy import FrequencyTables, check_coder
from infotok_codec.errors import InfotokError, ModelError
from infotok_codec.outputs import atomic_file, check_output
from infotok_codec.rate import RateControl, choose_rate
from infotok_codec.tokenizer import SPACE_FACTOR, LoadedModel, latent_shape, load_model
from infotok_codec.video import VideoWriter, probe, read_frames

Progress = Callable[[str, int, int], None]
"""Called as `progress(pass_name, frames_just_done, total_frames)` after each chunk."""
CountFeedback = Callable[[int, int], int]
"""Called as `count(chunk, record_bytes_written_so_far)` just before chunk `chunk` is written:
the positions it keeps."""


# -- running the model on one chunk ----------------------------------------------------------
class ChunkModel:
    """A loaded tokenizer on a device, working on uint8 frames `(n, H, W, 3)`."""

    def __init__(self, model: LoadedModel, device: str = "auto") -> None:
        self.model = model
        self.device = resolve_device(device)
        self.tokenizer = model.tokenizer.to(self.device).eval()
        self.tables = (
            FrequencyTables.from_json(model.tables_json)
            if model.tables_json
            else FrequencyTables.uniform(model.tokenizer.config.levels)
        )

    def _video(self, frames: np.ndarray) -> torch.Tensor:
        """`(n, H, W, 3)` uint8 → `(1, 3, n, H, W)` float in [-1, 1] on the device."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        return x.permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0

    def tokens(self, frames: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
        """Indices `(T', h, w)` int64: full rate, or encoded knowing the keep-mask `(T', h, w)`
        (indices at dropped positions are meaningless)."""
        n, height, width = frames.shape[:3]
        indices = np.zeros(latent_shape(n, height, width), dtype=np.int64)
        for y0, y1, x0, x1 in tiles(height, width):
            (ly0, ly1), (lx0, lx1) = _latent_span(y0, y1), _latent_span(x0, x1)
            mask = None
            if keep is not None and not keep[:, ly0:ly1, lx0:lx1].all():
                mask = torch.from_numpy(keep[:, ly0:ly1, lx0:lx1]).to(self.device)[None]
            idx = self.tokenizer.encode(self._video(frames[:, y0:y1, x0:x1]), mask)
            indices[:, ly0:ly1, lx0:lx1] = idx[0].cpu()
        return indices

    def error_map(self, frames: np.ndarray) -> np.ndarray:
        """The router's ELBO proxy `(T', h, w)` float32: full-rate error per latent position."""
        n, height, width = frames.shape[:3]
        error = np.zeros(latent_shape(n, height, width), dtype=np.float32)
        for y0, y1, x0, x1 in tiles(height, width):
            (ly0, ly1), (lx0, lx1) = _latent_span(y0, y1), _latent_span(x0, x1)
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
            video = self.tokenizer.decode(idx, mask, (n, y1 - y0, x1 - x0))
            pixels = ((video[0] + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
            out[:, y0:y1, x0:x1] = pixels.permute(1, 2, 3, 0).cpu().numpy()
        return out


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


def as_model(model: LoadedModel | str | Path | None) -> LoadedModel:
    return model if isinstance(model, LoadedModel) else load_model(model)


# -- encode ----------------------------------------------------------------------------------
@dataclass
class EncodeResult:
    path: Path
    width: int
    height: int
    frames: int
    fps: Fraction
    chunks: int
    bytes: int
    bpp: float
    router: str
    budget: float
    realised_rate: float  # kept positions / all positions, over the whole video
    chunk_rates: list[float]
    rate: RateControl  # what the encode was asked for, as the header records it
    seconds: dict[str, float] = field(default_factory=dict)
    chunk_psnr: list[float] | None = None  # mode quality: each chunk's PSNR-RGB (dB), measured
    unreachable_chunks: int = 0  # mode quality: chunks below the target even at full rate
    warning: str | None = None  # a size or bitrate target out of reach, and what was written


def encode_file(
    src: str | Path,
    dst: str | Path,
    *,
    budget: float | None = None,
    rate: RateControl | None = None,
    router: str = "elbo",
    model: LoadedModel | str | Path | None = None,
    chunk_frames: int = 16,
    coder: str = "adaptive",
    device: str = "auto",
    force: bool = False,
    progress: Progress | None = None,
) -> EncodeResult:
    """Encode a video file into an `.itok` file: at `budget` of the full-rate token count, or
    at any `rate` (quality, bitrate, file size; `infotok_codec.rate_control`). Give at most one;
    neither is budget 0.8."""
    if budget is not None and rate is not None:
        raise InfotokError("give a budget or a rate, not both")
    rate = rate or choose_rate(budget=budget)
    routing.check_router(router)
    check_coder(coder)
    check_output(Path(dst), force)
    with_error = rate_control.needs_error_map(router, rate)
    with Analysis(
        src, model, chunk_frames, device, with_error, Path(dst).parent, progress
    ) as pass1:
        return rate_control.write(pass1, dst, rate, router=router, coder=coder, force=force)


@dataclass
class _ChunkPlan:
    """One chunk as pass 1 saw it: its size, and where its error map lies in the spill file."""

    frames: int
    shape: tuple[int, int, int]
    offset: int | None  # None: no error map was computed
    mean_error: float

    @property
    def positions(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2]


class Analysis:
    """Pass 1 of an encode: every chunk's full-rate error map, spilled to disk.

    Routing needs only each chunk's mean error, so that is all it keeps in memory. Routers that
    need no error map (`uniform`, or budget 1.0) skip the model here: the chunks follow from the
    frame count. One analysis can be written out at any number of routers and budgets (`write`,
    pass 2, reads the input again); `bench` relies on that.
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
    ) -> None:
        if chunk_frames < 4 or chunk_frames % 4:
            raise InfotokError(f"chunk frames {chunk_frames} is not a positive multiple of 4")
        self.src = Path(src)
        self.info = probe(self.src)
        self.loaded = as_model(model)
        self.engine = ChunkModel(self.loaded, device)
        self.chunk_frames = chunk_frames
        self.progress = progress
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

    def __enter__(self) -> Analysis:
        return self

    def __exit__(self, *exc: object) -> None:
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
        for frames in self.read_chunks():
            error = self.engine.error_map(frames)
            offset = spill.tell()
            np.save(spill, error)
            mean = float(error.mean(dtype=np.float64))
            chunks.append(_ChunkPlan(len(frames), error.shape, offset, mean))
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

    def header(
        self, router: str, budget: float, coder: str, rate: RateControl | None = None
    ) -> Header:
        """The header of this video written at `router`, `budget` (the mean rate aimed for),
        `coder`, recording `rate` (default: mode budget)."""
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
            rate_mode=rate.mode,
            rate_target=rate.target,
        )

    def write(
        self,
        dst: str | Path,
        *,
        router: str = "elbo",
        budget: float = 0.8,
        coder: str = "adaptive",
        force: bool = False,
        counts: Sequence[int] | CountFeedback | None = None,
        rate: RateControl | None = None,
    ) -> EncodeResult:
        """Pass 2: route, choose positions, encode each chunk knowing its keep-mask, write.

        `counts` (kept positions per chunk) overrides the router's allocation; positions are then
        still chosen by `router`. Bench's oracle and rate control use it; rate control's size
        modes give a `CountFeedback`, asked for each chunk's count just before it is written.
        `rate` is what the header records as asked for (default: mode budget at `budget`).
        """
        dst = Path(dst)
        routing.check_router(router)
        routing.check_budget(budget)
        check_coder(coder)
        if routing.needs_error_map(router, budget) and self._spill is None:
            raise InfotokError(f"router {router} needs an analysis with error maps")
        check_output(dst, force)
        info = self.info
        header = self.header(router, budget, coder, rate)
        started = time.perf_counter()
        positions = [c.positions for c in self.chunks]
        errors = [c.mean_error for c in self.chunks]
        if counts is None:
            counts = routing.allocate_counts(router, budget, positions, errors)
        elif not callable(counts) and len(counts) != len(positions):
            raise InfotokError(f"{len(counts)} counts for {len(positions)} chunks")
        route_s = time.perf_counter() - started
        started = time.perf_counter()
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
                indices = self.engine.tokens(frames, keep)
                record = encode_chunk(header, k, keep, indices[keep], self.engine.tables)
                writer.write_chunk(record)
                written += record.nbytes
                used.append(count)
                if self.progress:
                    self.progress("write", chunk.frames, info.frames)
        write_s = time.perf_counter() - started
        size = dst.stat().st_size
        return EncodeResult(
            path=dst,
            width=info.width,
            height=info.height,
            frames=info.frames,
            fps=info.fps,
            chunks=len(self.chunks),
            bytes=size,
            bpp=8 * size / (info.width * info.height * info.frames),
            router=router,
            budget=budget,
            realised_rate=sum(used) / sum(positions),
            chunk_rates=[c / n for c, n in zip(used, positions, strict=True)],
            seconds={"analyse": self.seconds, "route": route_s, "write": write_s},
            rate=header.rate,
        )


# -- decode ----------------------------------------------------------------------------------
@dataclass
class ChunkTokens:
    """One chunk's tokens as stored: indices `(T', h, w)` int64, -1 where dropped."""

    index: int
    first_frame: int
    frames: int
    indices: np.ndarray
    keep: np.ndarray  # (T', h, w) bool


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


def _chunk_tokens(header: Header, rec: ChunkRecord, tables: FrequencyTables) -> ChunkTokens:
    keep, kept = decode_chunk(header, rec, tables)
    indices = np.full(keep.shape, -1, dtype=np.int64)
    indices[keep] = kept
    return ChunkTokens(rec.index, rec.first_frame, rec.frames, indices, keep)


def check_model_matches(header: Header, model: LoadedModel) -> None:
    if header.model_hash != model.sha256:
        raise ModelError(
            f"the file was written by model {header.model_name} ({header.model_hash.hex()[:12]}), "
            f"this is model {model.name} ({model.sha256.hex()[:12]}): pass the right --model"
        )


def parse_frame_range(text: str | None, frames: int) -> tuple[int, int]:
    """'A:B' (either side may be empty) → [A, B) inside [0, frames)."""
    if not text:
        return 0, frames
    try:
        a_text, b_text = text.split(":")
        a = int(a_text) if a_text else 0
        b = int(b_text) if b_text else frames
    except ValueError:
        raise InfotokError(f"--frames {text!r} is not A:B") from None
    if not 0 <= a < b <= frames:
        raise InfotokError(f"--frames {text}: need 0 <= A < B <= {frames}")
    return a, b


def iter_tokens(
    reader: ContainerReader, tables: FrequencyTables, first: int = 0, stop: int | None = None
) -> Iterator[ChunkTokens]:
    """Tokens of the chunks that overlap frames [first, stop), read through the seek index."""
    header = reader.header
    stop = header.frames if stop is None else stop
    for k in range(first // header.chunk_frames, -(-stop // header.chunk_frames)):
        yield _chunk_tokens(header, reader.chunk(k), tables)


def decode_file(
    src: str | Path,
    dst: str | Path | None,
    *,
    frames: str | None = None,
    tokens_out: str | Path | None = None,
    model: LoadedModel | str | Path | None = None,
    device: str = "auto",
    force: bool = False,
    progress: Progress | None = None,
) -> DecodeResult:
    """Decode an `.itok` file to a video (format by extension) and/or a `.npz` of its tokens."""
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
    with ContainerReader(src) as reader:
        header = reader.header
        first, stop = parse_frame_range(frames, header.frames)
        fps = Fraction(header.fps_num, header.fps_den)
        engine: ChunkModel | None = None
        if out is not None:
            loaded = as_model(model)
            check_model_matches(header, loaded)
            engine = ChunkModel(loaded, device)
            tables = engine.tables
        else:
            tables = load_tables(header, model)
        collected: list[ChunkTokens] = []
        with ExitStack() as stack:
            writer = (
                stack.enter_context(VideoWriter(out, header.width, header.height, fps))
                if out is not None
                else None
            )
            for chunk in iter_tokens(reader, tables, first, stop):
                if tokens_path is not None:
                    collected.append(chunk)
                if writer is not None and engine is not None:
                    video = engine.frames(
                        chunk.indices, chunk.keep, chunk.frames, header.height, header.width
                    )
                    lo = max(first - chunk.first_frame, 0)
                    hi = min(stop - chunk.first_frame, chunk.frames)
                    writer.write(video[lo:hi])
                if progress:
                    progress("decode", chunk.frames, stop - first)
            if tokens_path is not None:
                save_tokens(tokens_path, header, collected)
    return DecodeResult(
        path=out,
        tokens_path=tokens_path,
        width=header.width,
        height=header.height,
        frames=stop - first,
        fps=fps,
        first_frame=first,
        seconds=time.perf_counter() - started,
    )


def load_tables(header: Header, model: LoadedModel | str | Path | None) -> FrequencyTables:
    """The coder tables of the model that wrote `header`, without building the network."""
    if isinstance(model, LoadedModel):
        check_model_matches(header, model)
        tables_json = model.tables_json
    else:
        from infotok_codec.tokenizer import read_model_metadata

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


def save_tokens(path: Path, header: Header, chunks: list[ChunkTokens]) -> None:
    """A `.npz` with `indices_K` / `keep_K` / `first_frame_K` per chunk and the header fields."""
    arrays: dict[str, np.ndarray] = {
        "width": np.array(header.width),
        "height": np.array(header.height),
        "frames": np.array(header.frames),
        "fps": np.array([header.fps_num, header.fps_den]),
        "fsq_levels": np.array(header.fsq_levels),
        "chunk_frames": np.array(header.chunk_frames),
    }
    for c in chunks:
        arrays[f"indices_{c.index}"] = c.indices
        arrays[f"keep_{c.index}"] = c.keep
        arrays[f"first_frame_{c.index}"] = np.array(c.first_frame)
    with atomic_file(path) as tmp, open(tmp, "wb") as file:
        np.savez_compressed(file, **arrays)  # type: ignore[arg-type]
