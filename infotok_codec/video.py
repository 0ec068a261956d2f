"""Reading and writing video through PyAV: the pixels in and out of the codec.

Everything the codec touches goes through here as RGB ``uint8`` arrays of shape
``(n, H, W, 3)``: `probe` describes an input, `read_frames` streams it in chunks, and
`VideoWriter` writes frames back out in a format chosen by the file's extension.

Inputs are anything FFmpeg decodes (mp4, mkv, webm, avi, y4m, raw ``.264`` elementary
streams, ...) and folders of images (jpg/png, read in natural name order). Only the first
video stream is used; rotation metadata is ignored (frames are returned as stored).
Any failure is a `VideoError` whose one-line message starts with the path.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import weakref
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

import av
import numpy as np
from av.video.reformatter import ColorRange, Colorspace, VideoReformatter

from infotok_codec.errors import VideoError
from infotok_codec.outputs import WholeOrNothing, make_temp, remove_temp

__all__ = ["SideStreams", "VideoInfo", "VideoWriter", "output_size", "probe", "read_frames"]

DEFAULT_FPS = Fraction(25)
"""Rate assumed when the input carries none (image folders, raw streams without timing)."""

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
"""File suffixes (lower case) that count as frames in an image-folder input."""

# Demuxers that invent a rate instead of reading one: raw elementary streams take their
# `-framerate` option (25) and image pipes do the same, so their `average_rate` means nothing.
# For raw streams the decoder's rate (H.264/HEVC VUI timing) is real when present.
_RATELESS_FORMATS = frozenset(
    {"h264", "hevc", "vvc", "m4v", "mpegvideo", "cavsvideo", "vc1", "obu", "image2", "mjpeg"}
)

_Size = tuple[int, int]


@dataclass(frozen=True)
class VideoInfo:
    """What a video holds, as `read_frames` will deliver it at its native size.

    Attributes:
        width, height: frame size in pixels (of the first frame).
        frames: exact number of decodable frames, >= 1.
        fps: frame rate as an exact fraction (e.g. ``Fraction(24000, 1001)``), > 0.
        fps_assumed: True when the input carried no rate and `DEFAULT_FPS` was used.
    """

    width: int
    height: int
    frames: int
    fps: Fraction
    fps_assumed: bool


# --------------------------------------------------------------------------------------
# Sizes


def output_size(
    info_or_wh: VideoInfo | _Size, short_side: int | None = None, center_crop: int | None = None
) -> _Size:
    """The ``(width, height)`` that `read_frames` yields for these options.

    Args:
        info_or_wh: a `VideoInfo` or a native ``(width, height)``.
        short_side: if given, scale so the shorter side equals it, keeping the aspect ratio
            (the long side is rounded to the nearest integer, halves up).
        center_crop: if given, the side of the centre square cut after scaling.

    Raises:
        ValueError: a size that is not a positive integer.
        VideoError: the centre crop is larger than the (scaled) frame.
    """
    width, height = (
        (info_or_wh.width, info_or_wh.height)
        if isinstance(info_or_wh, VideoInfo)
        else (int(info_or_wh[0]), int(info_or_wh[1]))
    )
    if width < 1 or height < 1:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    if short_side is not None:
        if short_side < 1:
            raise ValueError(f"short_side must be positive, got {short_side}")
        # Integer arithmetic for round-half-up, so the same input always gives the same size.
        if width <= height:
            width, height = short_side, max(1, (2 * height * short_side + width) // (2 * width))
        else:
            width, height = max(1, (2 * width * short_side + height) // (2 * height)), short_side
    if center_crop is not None:
        if center_crop < 1:
            raise ValueError(f"center_crop must be positive, got {center_crop}")
        if center_crop > min(width, height):
            raise VideoError(f"centre crop {center_crop} is larger than the frame {width}x{height}")
        width = height = center_crop
    return width, height


def _scaled_size(native: _Size, short_side: int | None) -> _Size:
    return output_size(native, short_side, None)


# --------------------------------------------------------------------------------------
# Errors


def _describe(err: BaseException) -> str:
    """One line for an FFmpeg or OS error, without PyAV's errno prefix and repeated path."""
    text = getattr(err, "strerror", None) or str(err) or type(err).__name__
    return " ".join(str(text).split())


# --------------------------------------------------------------------------------------
# Image folders


def _natural_key(name: str) -> tuple[Any, ...]:
    # Digit runs compare as numbers, so frame_9 < frame_10 even without zero padding;
    # for zero-padded names this is plain sorted order.
    parts = re.split(r"(\d+)", name)
    return (*((int(p) if i % 2 else p.lower()) for i, p in enumerate(parts)), name)


def _image_files(folder: Path) -> list[Path]:
    """The frames of an image-folder input, in natural name order (hidden files skipped)."""
    try:
        entries = list(folder.iterdir())
    except OSError as err:
        raise VideoError(f"{folder}: cannot list folder ({_describe(err)})") from None
    files = [
        p
        for p in entries
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    ]
    if not files:
        raise VideoError(f"{folder}: no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return sorted(files, key=lambda p: _natural_key(p.name))


def _decode_image(file: Path) -> av.VideoFrame:
    try:
        with av.open(str(file), metadata_errors="replace") as container:
            if not container.streams.video:
                raise VideoError(f"{file}: not an image")
            for frame in container.decode(container.streams.video[0]):
                return frame
    except (av.FFmpegError, OSError) as err:
        raise VideoError(f"{file}: cannot decode image ({_describe(err)})") from None
    raise VideoError(f"{file}: no frames")


# --------------------------------------------------------------------------------------
# Reading


def _check_path(path: Path) -> None:
    if not path.exists():
        raise VideoError(f"{path}: no such file or folder")


def _stream_rate(container: Any, stream: Any) -> tuple[Fraction, bool]:
    """The stream's frame rate and whether it was assumed (see `_RATELESS_FORMATS`)."""
    format_names = set(container.format.name.split(","))
    if format_names & _RATELESS_FORMATS or container.format.name.endswith("_pipe"):
        candidates = [stream.codec_context.framerate]
    else:
        candidates = [stream.average_rate, stream.guessed_rate, stream.codec_context.framerate]
    for rate in candidates:
        if rate is not None and rate > 0:
            return Fraction(rate.numerator, rate.denominator), False
    return DEFAULT_FPS, True


def _open_video(path: Path) -> tuple[Any, Any]:
    """Open a media file and its first video stream (threaded decode); raises `VideoError`."""
    try:
        # Tags are never used; a damaged or oddly encoded tag must not stop the pixels.
        container = av.open(str(path), metadata_errors="replace")
    except (av.FFmpegError, OSError) as err:
        raise VideoError(f"{path}: not a readable video ({_describe(err)})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: no video stream")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        container.close()
        raise VideoError(f"{path}: no decoder for the video codec")
    # Frame threading is safe here because frames are consumed in order; it is the main
    # speed-up for large H.264 inputs.
    stream.thread_type = "AUTO"
    return container, stream


def _native_frames(path: Path) -> Generator[av.VideoFrame, None, None]:
    """Decoded frames of a file or image folder, in display order, errors as `VideoError`."""
    _check_path(path)
    if path.is_dir():
        for file in _image_files(path):
            yield _decode_image(file)
        return
    container, stream = _open_video(path)
    try:
        yield from container.decode(stream)
    except (av.FFmpegError, OSError) as err:
        raise VideoError(f"{path}: corrupt video data ({_describe(err)})") from None
    finally:
        container.close()


def probe(path: str | os.PathLike[str]) -> VideoInfo:
    """Describe a video file or image folder; the frame count is exact.

    The count comes from decoding every frame, because container counts and packet counts
    are wrong for raw elementary streams, packed B-frames (AVI), edit lists and invisible
    VP8 frames. Frames are decoded but never converted to RGB, which is the costly part.

    Raises:
        VideoError: missing path, empty folder, no video stream, not decodable, no frames.
    """
    path = Path(path)
    _check_path(path)
    if path.is_dir():
        files = _image_files(path)
        first = _decode_image(files[0])
        return VideoInfo(first.width, first.height, len(files), DEFAULT_FPS, True)
    container, stream = _open_video(path)
    # Only the count is needed, so skip deblocking and inverse transforms: frames still come
    # out one per picture (with wrong pixels), about 20% sooner.
    stream.codec_context.options = {"skip_loop_filter": "all", "skip_idct": "all"}
    try:
        fps, assumed = _stream_rate(container, stream)
        count, size = 0, (0, 0)
        for frame in container.decode(stream):
            if count == 0:
                size = (frame.width, frame.height)
            count += 1
    except (av.FFmpegError, OSError) as err:
        raise VideoError(f"{path}: corrupt video data ({_describe(err)})") from None
    finally:
        container.close()
    if count == 0:
        raise VideoError(f"{path}: no frames")
    return VideoInfo(size[0], size[1], count, fps, assumed)


def read_frames(
    path: str | os.PathLike[str],
    chunk_frames: int = 16,
    *,
    max_frames: int | None = None,
    short_side: int | None = None,
    center_crop: int | None = None,
) -> Iterator[np.ndarray]:
    """Stream a video (file or image folder) as RGB chunks, never holding the whole video.

    Args:
        path: a video file FFmpeg can decode, or a folder of images.
        chunk_frames: frames per chunk, >= 1; every chunk has this many except maybe the last.
        max_frames: stop after this many frames (None: all).
        short_side: scale so the shorter side equals this (area filter when shrinking,
            bicubic when enlarging); see `output_size` for the rounding.
        center_crop: then keep the centre square of this side.

    Yields:
        ``(n, H, W, 3)`` uint8 arrays in [0, 255], RGB, ``1 <= n <= chunk_frames``; each is a
        fresh array the caller may keep. ``(W, H)`` is `output_size` of the first frame's
        size; later frames of another size (rare mid-stream changes) are scaled to it.

    Raises:
        VideoError: the input cannot be read, has no video, or has no frames; the crop
            does not fit the frame.
        ValueError: a non-positive ``chunk_frames``, ``max_frames`` below 0, or bad sizes.
    """
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    if max_frames is not None and max_frames < 0:
        raise ValueError(f"max_frames must be >= 0, got {max_frames}")
    path = Path(path)
    _check_path(path)
    return _read_frames(path, chunk_frames, max_frames, short_side, center_crop)


def _read_frames(
    path: Path,
    chunk_frames: int,
    max_frames: int | None,
    short_side: int | None,
    center_crop: int | None,
) -> Iterator[np.ndarray]:
    """The generator behind `read_frames`, apart so bad arguments fail at the call."""
    limit = max_frames if max_frames is not None else -1
    if limit == 0:
        return
    scaled: _Size | None = None
    crop_box = (0, 0, 0, 0)
    chunk: np.ndarray | None = None
    filled = 0
    total = 0
    # One reformatter for the whole video keeps its scaler set up between frames (about a
    # third of the conversion time at 720p).
    reformatter = VideoReformatter()
    frames = _native_frames(path)
    try:
        for frame in frames:
            if scaled is None:
                native = (frame.width, frame.height)
                scaled = _scaled_size(native, short_side)
                try:
                    out_w, out_h = output_size(scaled, None, center_crop)
                except VideoError as err:
                    raise VideoError(f"{path}: {err}") from None
                left, top = (scaled[0] - out_w) // 2, (scaled[1] - out_h) // 2
                crop_box = (top, top + out_h, left, left + out_w)
            if chunk is None:
                chunk = np.empty(
                    (chunk_frames, crop_box[1] - crop_box[0], crop_box[3] - crop_box[2], 3),
                    dtype=np.uint8,
                )
            try:
                rgb = _to_rgb(frame, scaled, reformatter)
            except av.FFmpegError as err:
                raise VideoError(
                    f"{path}: cannot convert frame {total} ({_describe(err)})"
                ) from None
            chunk[filled] = rgb[crop_box[0] : crop_box[1], crop_box[2] : crop_box[3]]
            filled += 1
            total += 1
            if filled == chunk_frames:
                yield chunk
                chunk, filled = None, 0
            if total == limit:
                break
    finally:
        frames.close()
    if total == 0:
        raise VideoError(f"{path}: no frames")
    if chunk is not None and filled:
        yield chunk[:filled].copy()


def _to_rgb(frame: av.VideoFrame, size: _Size, reformatter: VideoReformatter) -> np.ndarray:
    """One frame as ``(H, W, 3)`` uint8 RGB at ``size`` = (W, H)."""
    width, height = size
    if (frame.width, frame.height) == (width, height):
        return reformatter.reformat(frame, format="rgb24").to_ndarray()
    # Area averaging is the alias-free way down; bicubic is the usual choice up.
    shrinking = width * height < frame.width * frame.height
    interpolation = "AREA" if shrinking else "BICUBIC"
    return reformatter.reformat(
        frame, width=width, height=height, format="rgb24", interpolation=interpolation
    ).to_ndarray()


# --------------------------------------------------------------------------------------
# Writing: the mirror of reading. The output format follows the extension.

MP4_CRF = 12
"""x264 constant-rate factor for `.mp4` output: visually lossless, for judging decoded quality."""

MP4_PRESET = "medium"

_FOLDER_FRAME = "frame_{:06d}.png"
_FOLDER_FRAME_RE = re.compile(r"frame_\d{6,}\.png")

# AVColorSpace / AVColorPrimaries / AVColorTransferCharacteristic / AVColorRange values for
# BT.709 limited range, written into the H.264 stream so players convert back as we did.
_AVCOL_BT709 = 1
_AVCOL_RANGE_MPEG = 1


def output_kind(path: str | os.PathLike[str]) -> str:
    """``"mp4"``, ``"mkv"``, ``"y4m"`` or ``"png"`` (a folder: no extension or a trailing /)."""
    text = os.fspath(path)
    if text.endswith(("/", os.sep)) or not Path(text).suffix:
        return "png"
    suffix = Path(text).suffix.lower()
    if suffix in (".mp4", ".mkv", ".y4m"):
        return suffix[1:]
    raise VideoError(
        f"{text}: unknown output extension {suffix!r} "
        "(use .mp4, .mkv, .y4m, or a folder path for PNG frames)"
    )


def _is_own_frame_folder(folder: Path) -> bool:
    """True for an empty folder or one holding only frames a `VideoWriter` wrote."""
    return all(_FOLDER_FRAME_RE.fullmatch(p.name) for p in folder.iterdir())


HOLDS_SIDE_STREAMS = frozenset({"mp4", "mkv"})
"""Output kinds that can carry streams beside the video (audio); y4m and PNG folders cannot."""


class SideStreams(Protocol):
    """Streams muxed beside the video (the audio track: `infotok_codec.audio_io.AudioMuxer`)."""

    def open(self, container: Any) -> None:
        """Add the streams to the output container, before anything is muxed."""

    def mux_until(self, seconds: Fraction) -> None:
        """Mux what starts before ``seconds`` of the output (called after each frame)."""

    def finish(self) -> None:
        """Mux the rest (called before the container is closed)."""


class VideoWriter(WholeOrNothing):
    """Write RGB frames to a video file or a folder of PNGs, atomically.

    The format follows the extension:

    - ``.mp4``: H.264 (libx264, crf `MP4_CRF`, yuv420p, BT.709 limited range, tagged), which
      any player opens. yuv420p needs even sizes, so an odd width or height is padded by
      repeating the last column or row: the file is up to 1 px wider/taller than the frames.
    - ``.mkv``: FFV1 in 8-bit RGB (bgr0): lossless, reads back bit-exact.
    - ``.y4m``: raw yuv444p (BT.601, as y4m readers assume) in a YUV4MPEG2 stream, any size.
    - no extension or a trailing ``/``: a folder of ``frame_000000.png`` ... (lossless; a
      folder has no rate, so it reads back at 25 fps, assumed). An existing folder is
      replaced only if it is empty or holds nothing but such frames.

    The frame rate is kept exactly (one tick of 1/fps per frame) and so is the frame count.
    Output goes to a hidden temporary name beside ``path`` and appears at ``path`` only when
    `close` succeeds; leaving a ``with`` block by an exception removes it and leaves any
    existing file at ``path`` untouched.

    Example::

        with VideoWriter("out.mp4", width, height, Fraction(24000, 1001)) as writer:
            for chunk in chunks:  # (n, height, width, 3) uint8
                writer.write(chunk)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        width: int,
        height: int,
        fps: Fraction | int,
        side: SideStreams | None = None,
    ) -> None:
        """Prepare the output; nothing appears at ``path`` until `close`.

        Args:
            path: output file (``.mp4``, ``.mkv``, ``.y4m``) or folder.
            width, height: frame size in pixels, >= 1.
            fps: frame rate, > 0, kept exactly (e.g. ``Fraction(24000, 1001)``).
            side: streams to mux beside the video, timed from its first frame; only for the
                kinds in `HOLDS_SIDE_STREAMS` (ValueError otherwise).

        Raises:
            VideoError: unknown extension, missing parent folder, or ``path`` is in the way.
            ValueError: a non-positive size or rate.
        """
        self.kind = output_kind(path)
        self.path = Path(path)
        self.width, self.height = int(width), int(height)
        self.fps = Fraction(fps)
        if self.width < 1 or self.height < 1:
            raise ValueError(f"frame size must be positive, got {self.width}x{self.height}")
        if self.fps <= 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        if side is not None and self.kind not in HOLDS_SIDE_STREAMS:
            raise ValueError(f"{self.path}: .{self.kind} output holds no streams beside video")
        self._side = side
        self._check_target()
        self.frames_written = 0
        self._closed = False
        self._container: Any = None
        self._stream: Any = None
        self._png: Any = None
        try:
            self._tmp = make_temp(self.path, folder=self.kind == "png")
        except OSError as err:
            raise VideoError(f"{self.path}: cannot create output ({_describe(err)})") from None
        # Removes the temporary output if the writer is dropped without close().
        self._cleanup = weakref.finalize(self, remove_temp, self._tmp)
        try:
            self._open()
        except (av.FFmpegError, OSError) as err:
            self._cleanup()
            raise VideoError(f"{self.path}: cannot start encoder ({_describe(err)})") from None

    def _check_target(self) -> None:
        if not self.path.parent.is_dir():
            raise VideoError(f"{self.path}: folder {self.path.parent} does not exist")
        if self.kind == "png":
            if self.path.exists() and not self.path.is_dir():
                raise VideoError(f"{self.path}: exists and is not a folder")
            if self.path.is_dir() and not _is_own_frame_folder(self.path):
                raise VideoError(f"{self.path}: folder exists and holds other files")
        elif self.path.is_dir():
            raise VideoError(f"{self.path}: is a folder")

    def _open(self) -> None:
        if self.kind == "png":
            self._png = av.CodecContext.create("png", "w")
            self._png.width, self._png.height = self.width, self.height
            self._png.pix_fmt = "rgb24"
            return
        muxer = {"mp4": "mp4", "mkv": "matroska", "y4m": "yuv4mpegpipe"}[self.kind]
        codec = {"mp4": "libx264", "mkv": "ffv1", "y4m": "rawvideo"}[self.kind]
        self._container = av.open(self._tmp, "w", format=muxer)
        stream = self._container.add_stream(codec, rate=self.fps)
        stream.width, stream.height = self._coded_size()
        # Muxers derive their clock from the stream time base; 1/fps gives one tick per
        # frame, which keeps rates like 24000/1001 exact in every container.
        stream.time_base = 1 / self.fps
        if self.kind == "mp4":
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(MP4_CRF), "preset": MP4_PRESET}
            ctx = stream.codec_context
            ctx.colorspace = ctx.color_primaries = ctx.color_trc = _AVCOL_BT709
            ctx.color_range = _AVCOL_RANGE_MPEG
        elif self.kind == "mkv":
            stream.pix_fmt = "bgr0"
        else:
            stream.pix_fmt = "yuv444p"
        self._stream = stream
        if self._side is not None:
            self._side.open(self._container)

    def _coded_size(self) -> _Size:
        if self.kind == "mp4":
            return self.width + self.width % 2, self.height + self.height % 2
        return self.width, self.height

    def write(self, frames: np.ndarray) -> None:
        """Append frames.

        Args:
            frames: ``(n, height, width, 3)`` uint8 RGB in [0, 255] (``n`` may be 0), or one
                ``(height, width, 3)`` frame.

        Raises:
            VideoError: frames of another size or type, or the encoder failed (the
                temporary output is then removed).
            ValueError: the writer is closed.
        """
        if self._closed:
            raise ValueError(f"{self.path}: writer is closed")
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.dtype != np.uint8 or frames.shape[1:] != (self.height, self.width, 3):
            raise VideoError(
                f"{self.path}: frames are {frames.dtype} {tuple(frames.shape)}, "
                f"expected uint8 (n, {self.height}, {self.width}, 3)"
            )
        try:
            for rgb in frames:
                self._write_one(rgb)
        except (av.FFmpegError, OSError) as err:
            self.abort()
            raise VideoError(f"{self.path}: cannot write frame ({_describe(err)})") from None

    def _write_one(self, rgb: np.ndarray) -> None:
        index = self.frames_written
        if self.kind == "png":
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            # PNG is intra-only with no delay: each frame comes straight back as one packet.
            data = b"".join(bytes(p) for p in self._png.encode(frame))
            with open(os.path.join(self._tmp, _FOLDER_FRAME.format(index)), "wb") as file:
                file.write(data)
            self.frames_written += 1
            return
        coded_w, coded_h = self._coded_size()
        if (coded_w, coded_h) != (self.width, self.height):
            # Edge replication keeps the padding invisible to the encoder's prediction
            # (no artificial edge), so it costs almost no bits.
            rgb = np.pad(
                rgb, ((0, coded_h - self.height), (0, coded_w - self.width), (0, 0)), mode="edge"
            )
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        if self.kind == "mp4":
            frame = frame.reformat(
                format="yuv420p",
                dst_colorspace=Colorspace.ITU709,
                dst_color_range=ColorRange.MPEG,
            )
        else:
            frame = frame.reformat(format=self._stream.pix_fmt)
        frame.pts = index
        # One tick per frame. Not the stream's time base: the muxer rewrites that when it writes
        # the header (mp4 picks 1/12800), and frames stamped in it reach x264 out of order.
        frame.time_base = 1 / self.fps
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames_written += 1
        if self._side is not None:
            self._side.mux_until(self.frames_written / self.fps)

    def close(self) -> None:
        """Flush the encoder and move the output to ``path``; safe to call twice.

        Raises:
            VideoError: no frames were written, or finishing the file failed; nothing is
                left at the temporary name and ``path`` is untouched.
        """
        if self._closed:
            return
        if self.frames_written == 0:
            self.abort()
            raise VideoError(f"{self.path}: no frames written")
        try:
            if self._container is not None:
                for packet in self._stream.encode():
                    self._container.mux(packet)
                if self._side is not None:
                    self._side.finish()
                self._container.close()
            self._publish()
        except VideoError:
            self.abort()
            raise
        except (av.FFmpegError, OSError) as err:
            self.abort()
            raise VideoError(f"{self.path}: cannot finish output ({_describe(err)})") from None
        self._closed = True
        self._cleanup.detach()

    def _publish(self) -> None:
        """Move the finished temporary output onto ``path`` (atomic for files)."""
        if self.kind != "png":
            os.replace(self._tmp, self.path)
            return
        if not self.path.is_dir():
            os.replace(self._tmp, self.path)
            return
        self._check_target()
        # rename() cannot replace a non-empty folder: park the old one under a fresh empty
        # name (which rename may replace), move the new one in, then delete the old.
        aside = tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".old", dir=self.path.parent)
        os.replace(self.path, aside)
        try:
            os.replace(self._tmp, self.path)
        except OSError:
            os.replace(aside, self.path)
            raise
        shutil.rmtree(aside, ignore_errors=True)

    def abort(self) -> None:
        """Drop the temporary output; ``path`` is never touched."""
        self._closed = True
        if self._container is not None:
            with contextlib.suppress(av.FFmpegError, OSError):
                self._container.close()
        self._cleanup()


VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".webm", ".avi", ".mov", ".264", ".h264", ".y4m"})


def find_videos(paths: Sequence[Path]) -> list[Path]:
    """Video files and image-sequence folders among `paths` (files or folders), sorted by name."""
    found: list[Path] = []
    for path in paths:
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            for child in sorted(path.iterdir()):
                if child.is_dir() or child.suffix.lower() in VIDEO_SUFFIXES:
                    found.append(child)
        else:
            raise VideoError(f"{path}: no such file or folder")
    if not found:
        raise VideoError(f"no videos in {', '.join(map(str, paths))}")
    return sorted(found)


def read_clips(paths: Sequence[Path], *, max_frames: int, short_side: int) -> list[np.ndarray]:
    """Every video among `paths` (`find_videos`) as one array `(n, H, W, 3)` uint8: its first
    `max_frames` frames, short side scaled to `short_side`. For the fits that read a few
    seconds of each training clip (`fit-router`, `fit-coder`)."""
    return [
        np.concatenate(list(read_frames(f, 64, max_frames=max_frames, short_side=short_side)))
        for f in find_videos(paths)
    ]
