"""`--frames A:B`: the range of frames an encode or a decode works on, end exclusive."""

from __future__ import annotations

import re

from infotok_codec.errors import InfotokError

# Whole numbers in ASCII digits ("1_0", "+3" and "٣" are not frame numbers), at most 18 of them
# (a frame count fits; Python refuses to convert over 4,300).
_RANGE = re.compile(r"([0-9]{0,18}):([0-9]{0,18})", re.ASCII)


def split_frame_range(text: str | None) -> tuple[int | None, int | None]:
    """'A:B' → (A, B), an empty side None; None or '' → (None, None). Syntax only, so that a
    typo is refused before a video is read (`parse_frame_range` checks the bounds)."""
    if not text:
        return None, None
    match = _RANGE.fullmatch(text)
    if match is None:
        raise InfotokError(f"--frames {text!r} is not A:B (frame numbers, end exclusive)")
    return (int(match[1]) if match[1] else None), (int(match[2]) if match[2] else None)


def parse_frame_range(
    text: str | None, frames: int, span: tuple[int, int] | None = None
) -> tuple[int, int]:
    """'A:B' (either side may be empty) → [A, B) inside [0, frames), or inside `span` (the
    frames a token file holds; the default range then)."""
    lo, hi = span if span is not None else (0, frames)
    a, b = split_frame_range(text)
    a, b = lo if a is None else a, hi if b is None else b
    if not lo <= a < b <= hi:
        held = "" if span is None else f" (the token file holds frames {lo}:{hi})"
        raise InfotokError(f"--frames {text}: need {lo} <= A < B <= {hi}{held}")
    return a, b
