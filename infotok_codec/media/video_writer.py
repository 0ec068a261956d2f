"""Writing video through PyAV: the codec's pixels out, the mirror of `video_reader`.

`VideoWriter` takes RGB ``uint8`` arrays of shape ``(n, H, W, 3)`` and writes them in a format
chosen by the file's extension (`output_kind`), atomically, with any side streams (audio) muxed
beside them; or, to standard output (``-``, `pipe.PIPE`), as a y4m stream for a pipe
(``… - | ffplay -``), written as it comes: a pipe cannot be written atomically, so a failure
leaves its reader a truncated stream.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import weakref
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

import av
import numpy as np
from av.video.reformatter import ColorRange, Colorspace

from infotok_codec.errors import VideoError
from infotok_codec.media.pipe import is_pipe
from infotok_codec.media.video_reader import Size, describe_error
from infotok_codec.outputs import WholeOrNothing, make_temp, remove_temp

MP4_CRF = 12
"""x264 constant-rate factor for `.mp4` output: visually lossless, for judging decoded quality."""

MP4_PRESET = "medium"

_STDOUT_URL = "pipe:1"  # FFmpeg's own writer on file descriptor 1
_FOLDER_FRAME = "frame_{:06d}.png"
_FOLDER_FRAME_RE = re.compile(r"frame_\d{6,}\.png")

# AVColorSpace / AVColorPrimaries / AVColorTransferCharacteristic / AVColorRange values for
# BT.709 limited range, written into the H.264 stream so players convert back as we did.
_AVCOL_BT709 = 1
_AVCOL_RANGE_MPEG = 1


def output_kind(path: str | os.PathLike[str]) -> str:
    """``"mp4"``, ``"mkv"``, ``"y4m"`` or ``"png"`` (a folder: no extension or a trailing /);
    standard output (``-``) is ``"y4m"``."""
    if is_pipe(path):
        return "y4m"
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
    """Streams muxed beside the video (the audio track: `infotok_codec.media.AudioMuxer`)."""

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
        self.pipe = is_pipe(path)
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
        if self.pipe:
            self._tmp = _STDOUT_URL
        else:
            try:
                self._tmp = make_temp(self.path, folder=self.kind == "png")
            except OSError as err:
                raise VideoError(
                    f"{self.path}: cannot create output ({describe_error(err)})"
                ) from None
        # Removes the temporary output if the writer is dropped without close(); a pipe has
        # none, so its finalizer is detached at once (calling a detached one does nothing).
        self._cleanup = weakref.finalize(self, remove_temp, self._tmp)
        if self.pipe:
            self._cleanup.detach()
        try:
            self._open()
        except (av.FFmpegError, OSError) as err:
            self._cleanup()
            raise VideoError(f"{self.path}: cannot start encoder ({describe_error(err)})") from None

    def _check_target(self) -> None:
        if self.pipe:
            return
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

    def _coded_size(self) -> Size:
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
            raise VideoError(f"{self.path}: cannot write frame ({describe_error(err)})") from None

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
            raise VideoError(f"{self.path}: cannot finish output ({describe_error(err)})") from None
        self._closed = True
        self._cleanup.detach()

    def _publish(self) -> None:
        """Move the finished temporary output onto ``path`` (atomic for files)."""
        if self.pipe:
            return
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
