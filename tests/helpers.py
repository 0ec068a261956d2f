"""Test inputs made in code: clips (PyAV) and a tiny tokenizer; the shared data folder."""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from infotok_codec.bitstream import FrequencyTables
from infotok_codec.media import read_frames
from infotok_codec.model import Tokenizer, TokenizerConfig, save_model

NTSC_FILM = Fraction(24000, 1001)
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEV = DATA / "dev"


# ----------------------------------------------------------------------------- helpers


def pattern(frames: int, height: int, width: int) -> np.ndarray:
    """A moving test pattern, ``(frames, height, width, 3)`` uint8.

    Detail is in brightness and colour varies slowly, like natural video, so 4:2:0 chroma
    subsampling alone does not cap the PSNR of an H.264 round trip.
    """
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        luma = 60 * np.sin((x + 2 * t) / 3.0) * np.cos((y - t) / 4.0)
        out[t, ..., 0] = np.clip(128 + luma + 40 * x / width, 0, 255)
        out[t, ..., 1] = np.clip(128 + luma + 30 * y / height, 0, 255)
        out[t, ..., 2] = np.clip(128 + luma - 20 * (x + y) / (width + height), 0, 255)
    return out


def make_clip(
    path: Path,
    frames: np.ndarray,
    rate: Fraction = Fraction(25),
    *,
    codec: str = "libx264",
    fmt: str | None = None,
    pix_fmt: str = "yuv420p",
) -> Path:
    """Encode ``frames`` (n, H, W, 3) uint8 with PyAV: the way other tools make our inputs.

    Odd sizes need a `pix_fmt` without chroma subsampling (yuv444p).
    """
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def read_all(path: Path, **kwargs: int) -> np.ndarray:
    return np.concatenate(list(read_frames(path, **kwargs)))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


TINY = TokenizerConfig(
    name="tiny-test",
    c1=16,
    c2=32,
    enc_blocks1=1,
    enc_blocks2=1,
    dec_blocks1=1,
    dec_blocks2=1,
    dim=32,
    enc_depth=1,
    dec_depth=1,
    heads=2,
)


def write_tiny_model(path: Path, seed: int = 0) -> Path:
    """A small tokenizer with random weights and uniform coder tables, saved to `path`."""
    torch.manual_seed(seed)
    model = Tokenizer(TINY)
    # Trained models have a non-zero "will drop" embedding; the fresh zero would hide whether
    # the codec encodes knowing the keep-mask.
    torch.nn.init.normal_(model.will_drop)
    save_model(model, path, tables_json=FrequencyTables.uniform(TINY.levels).to_json())
    return path


# ----------------------------------------------------------------------------- the CLI


def infotok(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infotok_codec", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def assert_one_line_error(run: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert run.returncode == code, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    assert "Traceback" not in run.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def make_av_clip(
    path: Path,
    frames: int = 24,
    *,
    acodec: str = "aac",
    sample_rate: int = 48000,
    layout: str = "stereo",
    audio_start: Fraction = Fraction(0),
    audio_seconds: Fraction | None = None,
    vcodec: str = "libx264",
    fps: Fraction = Fraction(25),
    fmt: str | None = None,
) -> Path:
    """A 64×48 clip with one audio stream: a 440 Hz tone from `audio_start` seconds (relative
    to the first frame) for `audio_seconds` (default: as long as the video), coded with
    `acodec` by PyAV's FFmpeg; the video is the moving `pattern`."""
    video = pattern(frames, 48, 64)
    seconds = Fraction(frames) / fps if audio_seconds is None else audio_seconds
    with av.open(str(path), "w", format=fmt) as container:
        vs = container.add_stream(vcodec, rate=fps)
        vs.height, vs.width = video.shape[1:3]
        vs.pix_fmt = "yuv420p"
        aus = container.add_stream(acodec, rate=sample_rate)
        aus.layout = layout
        ctx = aus.codec_context
        size = ctx.frame_size or 1024
        total = int(seconds * sample_rate)
        first = int(audio_start * sample_rate)
        channels = ctx.layout.nb_channels
        planar = ctx.format.is_planar
        kind = ctx.format.name.rstrip("p")
        dtype = {"flt": np.float32, "s16": np.int16, "s32": np.int32, "u8": np.uint8}[kind]
        # (scale, zero) map [-1, 1] onto the sample format.
        scale, zero = {"flt": (1, 0), "s16": (32767, 0), "s32": (2**31 - 1, 0), "u8": (127, 128)}[
            kind
        ]

        def audio_frames() -> list[av.AudioFrame]:
            out = []
            for start in range(0, total, size):
                n = min(size, total - start)
                tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(start, start + n) / sample_rate)
                samples = np.tile((tone * scale + zero).astype(dtype), (channels, 1))
                if not planar:
                    samples = samples.T.reshape(1, -1)
                frame = av.AudioFrame.from_ndarray(samples, format=ctx.format.name, layout=layout)
                frame.sample_rate = sample_rate
                frame.pts, frame.time_base = first + start, Fraction(1, sample_rate)
                out.append(frame)
            return out

        pending = audio_frames()
        for i, rgb in enumerate(video):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            for packet in vs.encode(frame):
                container.mux(packet)
            # Interleave as real muxers do: the audio up to this frame's time.
            while pending and pending[0].pts < (first + (i + 1) / fps * sample_rate):
                for packet in aus.encode(pending.pop(0)):
                    container.mux(packet)
        for af in pending:
            for packet in aus.encode(af):
                container.mux(packet)
        for stream in (vs, aus):
            for packet in stream.encode():
                container.mux(packet)
    return path


def stream_span(path: Path, kind: str) -> tuple[Fraction, Fraction]:
    """``(start, end)`` in seconds of the first stream of `kind` ("audio"/"video"), from its
    packets: the earliest pts and the latest pts + duration."""
    with av.open(str(path)) as container:
        stream = getattr(container.streams, kind)[0]
        starts, ends = [], []
        for packet in container.demux(stream):
            if packet.size and packet.pts is not None:
                t = packet.pts * packet.time_base
                starts.append(t)
                ends.append(t + (packet.duration or 0) * packet.time_base)
    return min(starts), max(ends)
