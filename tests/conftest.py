"""Shared fixtures: a tiny real tokenizer (random weights, real code, real file) and clips."""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import pytest

from helpers import make_clip, pattern, write_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small tokenizer with random weights: fast, and exercises every code path."""
    return write_tiny_model(tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture(scope="session")
def other_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same architecture, other weights: a stream from one must be refused by the other."""
    return write_tiny_model(tmp_path_factory.mktemp("model2") / "other.safetensors", seed=1)


@pytest.fixture
def clip(tmp_path: Path) -> Callable[..., Path]:
    """`clip(frames=, width=, height=, fps=, name=)` → a real H.264 (or FFV1) file."""

    def make(
        frames: int = 24,
        width: int = 64,
        height: int = 48,
        fps: Fraction = Fraction(25),
        name: str = "clip.mkv",
    ) -> Path:
        codec = "ffv1" if name.endswith(".mkv") else "libx264"
        pix_fmt = "yuv444p" if width % 2 or height % 2 else "yuv420p"
        source = pattern(frames, height, width)
        return make_clip(tmp_path / name, source, fps, codec=codec, pix_fmt=pix_fmt)

    return make
