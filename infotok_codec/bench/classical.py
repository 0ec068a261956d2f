"""Classical codecs through PyAV (x264, x265, SVT-AV1): the baselines `bench` compares against."""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from infotok_codec.errors import InfotokError


@dataclass(frozen=True)
class ClassicalCodec:
    name: str  # method name in results
    encoder: str  # FFmpeg encoder
    preset: str
    default_crfs: tuple[int, ...]

    def options(self, crf: int) -> dict[str, str]:
        opts = {"crf": str(crf), "preset": self.preset}
        if self.encoder == "libx265":
            opts["x265-params"] = "log-level=error"
        return opts


CODECS = {
    c.name: c
    for c in (
        ClassicalCodec("x264", "libx264", "medium", (28, 33, 38, 43, 48)),
        ClassicalCodec("x265", "libx265", "medium", (30, 35, 40, 45, 50)),
        ClassicalCodec("svtav1", "libsvtav1", "6", (35, 43, 51, 57, 63)),
    )
}


def _quiet_encoders() -> None:
    # SVT-AV1 prints its whole configuration to stderr at every encode unless told otherwise.
    os.environ.setdefault("SVT_LOG", "1")


def encode_classical(
    codec: ClassicalCodec, frames: np.ndarray, fps: Fraction, crf: int, path: Path
) -> None:
    """Frames `(n, H, W, 3)` uint8 (H, W even) → a Matroska file coded at `crf`, 4:2:0."""
    _quiet_encoders()
    try:
        av.codec.Codec(codec.encoder, "w")
    except Exception:  # PyAV raises its own UnknownCodecError
        raise InfotokError(f"this FFmpeg has no {codec.encoder} encoder") from None
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream(codec.encoder, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = codec.options(crf)
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame = frame.reformat(format="yuv420p")
            frame.pts = i
            frame.time_base = 1 / fps
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
