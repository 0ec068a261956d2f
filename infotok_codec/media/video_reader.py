"""Reading video through PyAV: the pixels into the codec.

Inputs arrive as RGB ``uint8`` arrays of shape ``(n, H, W, 3)``: `probe` describes an input and
`read_frames` streams it in chunks. Inputs are anything FFmpeg decodes (mp4, mkv, webm, avi, y4m,
raw ``.264`` elementary streams, ...) and folders of images (jpg/png, read in natural name
order). Only the first video stream is used; rotation metadata is ignored (frames are returned
as stored). Any failure is a `VideoError` whose one-line message starts with the path.
"""

from __future__ import annotations

import os
import re
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from infotok_codec.errors import VideoError

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

Size = tuple[int, int]


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
    info_or_wh: VideoInfo | Size, short_side: int | None = None, center_crop: int | None = None
) -> Size:
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


def _scaled_size(native: Size, short_side: int | None) -> Size:
    return output_size(native, short_side, None)


# --------------------------------------------------------------------------------------
# Errors


def describe_error(err: BaseException) -> str:
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
        raise VideoError(f"{folder}: cannot list folder ({describe_error(err)})") from None
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
        raise VideoError(f"{file}: cannot decode image ({describe_error(err)})") from None
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
        raise VideoError(f"{path}: not a readable video ({describe_error(err)})") from None
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
        raise VideoError(f"{path}: corrupt video data ({describe_error(err)})") from None
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
        raise VideoError(f"{path}: corrupt video data ({describe_error(err)})") from None
    finally:
        container.close()
    if count == 0:
        raise VideoError(f"{path}: no frames")
    return VideoInfo(size[0], size[1], count, fps, assumed)


def read_frames(
    path: str | os.PathLike[str],
    chunk_frames: int = 16,
    *,
    start: int = 0,
    max_frames: int | None = None,
    short_side: int | None = None,
    center_crop: int | None = None,
) -> Iterator[np.ndarray]:
    """Stream a video (file or image folder) as RGB chunks, never holding the whole video.

    Args:
        path: a video file FFmpeg can decode, or a folder of images.
        chunk_frames: frames per chunk, >= 1; every chunk has this many except maybe the last.
        start: skip this many frames first (decoded, never converted to RGB).
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
        ValueError: a non-positive ``chunk_frames``, ``start`` or ``max_frames`` below 0, or
            bad sizes.
    """
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    if max_frames is not None and max_frames < 0:
        raise ValueError(f"max_frames must be >= 0, got {max_frames}")
    path = Path(path)
    _check_path(path)
    return _read_frames(path, chunk_frames, start, max_frames, short_side, center_crop)


def _read_frames(
    path: Path,
    chunk_frames: int,
    start: int,
    max_frames: int | None,
    short_side: int | None,
    center_crop: int | None,
) -> Iterator[np.ndarray]:
    """The generator behind `read_frames`, apart so bad arguments fail at the call."""
    limit = max_frames if max_frames is not None else -1
    if limit == 0:
        return
    scaled: Size | None = None
    crop_box = (0, 0, 0, 0)
    chunk: np.ndarray | None = None
    filled = 0
    total = 0
    # One reformatter for the whole video keeps its scaler set up between frames (about a
    # third of the conversion time at 720p).
    reformatter = VideoReformatter()
    frames = _native_frames(path)
    try:
        for index, frame in enumerate(frames):
            if scaled is None:
                native = (frame.width, frame.height)
                scaled = _scaled_size(native, short_side)
                try:
                    out_w, out_h = output_size(scaled, None, center_crop)
                except VideoError as err:
                    raise VideoError(f"{path}: {err}") from None
                left, top = (scaled[0] - out_w) // 2, (scaled[1] - out_h) // 2
                crop_box = (top, top + out_h, left, left + out_w)
            if index < start:  # sized by the video's first frame, as the frames kept are
                continue
            if chunk is None:
                chunk = np.empty(
                    (chunk_frames, crop_box[1] - crop_box[0], crop_box[3] - crop_box[2], 3),
                    dtype=np.uint8,
                )
            try:
                rgb = _to_rgb(frame, scaled, reformatter)
            except av.FFmpegError as err:
                raise VideoError(
                    f"{path}: cannot convert frame {index} ({describe_error(err)})"
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
        raise VideoError(f"{path}: no frames" + (f" from frame {start} on" if start else ""))
    if chunk is not None and filled:
        yield chunk[:filled].copy()


def _to_rgb(frame: av.VideoFrame, size: Size, reformatter: VideoReformatter) -> np.ndarray:
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
