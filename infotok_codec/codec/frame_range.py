"""`--frames A:B`: the range of frames an encode or a decode works on, end exclusive."""

from __future__ import annotations

import re

from infotok_codec.errors import InfotokError

_RANGE = re.compile(r"([0-9]*):([0-9]*)", re.ASCII)


def parse_frame_range(
    text: str | None, frames: int, span: tuple[int, int] | None = None
) -> tuple[int, int]:
    """'A:B' (either side may be empty) → [A, B) inside [0, frames), or inside `span` (the
    frames a token file holds; the default range then)."""
    lo, hi = span if span is not None else (0, frames)
    if not text:
        return lo, hi
    match = _RANGE.fullmatch(text)  # whole numbers in ASCII digits: not "1_0", "+3" or "٣"
    if match is None:
        raise InfotokError(f"--frames {text!r} is not A:B")
    a = int(match[1]) if match[1] else lo
    b = int(match[2]) if match[2] else hi
    if not lo <= a < b <= hi:
        held = "" if span is None else f" (the token file holds frames {lo}:{hi})"
        raise InfotokError(f"--frames {text}: need {lo} <= A < B <= {hi}{held}")
    return a, b
