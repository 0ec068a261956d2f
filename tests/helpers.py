"""Test inputs made in code: clips (PyAV) and a tiny tokenizer; the shared data folder."""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from infotok_codec.entropy import FrequencyTables
from infotok_codec.tokenizer import Tokenizer, TokenizerConfig, save_model
from infotok_codec.video import read_frames

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
