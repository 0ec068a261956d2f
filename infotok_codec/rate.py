"""What rate a user asks an encode for: a token budget, a quality, a bitrate or a file size.

`RateControl` is the typed face of `infotok encode`'s four exclusive options and of
`encode_file(rate=...)`; the header of an `.itok` file records it (mode and target). How each
mode is met is `infotok_codec.routing.rate_control`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from infotok_codec.errors import InfotokError

RATE_MODES = ("budget", "quality", "bitrate", "size")
"""`budget`: share of the full-rate token count, in (0, 1]; `quality`: PSNR-RGB in dB every
chunk should reach, in (0, 100]; `bitrate`: bits per second of video; `size`: bytes of the whole
file."""

MAX_QUALITY_DB = 100.0
MAX_BITRATE = 1e12  # bits per second: far above any video this codec writes
MAX_SIZE = 2.0**53  # bytes: every integer below it is exact in the header's f64
DEFAULT_BUDGET = 0.8

_UNITS = {"": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
_QUANTITY = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(|k|K|M|G|Ki|Mi|Gi)\s*")


@dataclass(frozen=True)
class RateControl:
    """One rate mode and its target (units in `RATE_MODES`); checked on construction.

    Raises:
        InfotokError: an unknown mode, or a target outside the mode's range.
    """

    mode: str
    target: float

    def __post_init__(self) -> None:
        if self.mode not in RATE_MODES:
            raise InfotokError(
                f"unknown rate mode {self.mode!r}: choose one of {', '.join(RATE_MODES)}"
            )
        if isinstance(self.target, bool) or not isinstance(self.target, (int, float)):
            raise InfotokError(f"{self.mode} target {self.target!r} is not a number")
        object.__setattr__(self, "target", float(self.target))
        low, high = {
            "budget": (0.0, 1.0),
            "quality": (0.0, MAX_QUALITY_DB),
            "bitrate": (0.0, MAX_BITRATE),
            "size": (0.0, MAX_SIZE),
        }[self.mode]
        if not low < self.target <= high:  # also refuses NaN
            raise InfotokError(f"{self.mode} target {self.target:g} outside ({low:g}, {high:g}]")

    @classmethod
    def budget(cls, share: float) -> RateControl:
        return cls("budget", share)

    @classmethod
    def quality(cls, psnr_db: float) -> RateControl:
        return cls("quality", psnr_db)

    @classmethod
    def bitrate(cls, bits_per_second: float) -> RateControl:
        return cls("bitrate", bits_per_second)

    @classmethod
    def size(cls, file_bytes: float) -> RateControl:
        return cls("size", file_bytes)

    def describe(self) -> str:
        """`budget 0.8`, `quality 25 dB`, `bitrate 300k bits/s`, `size 800000 bytes`."""
        if self.mode == "bitrate":
            return f"bitrate {si(self.target)} bits/s"
        if self.mode == "size":
            return f"size {round(self.target)} bytes"
        return f"{self.mode} {self.target:g}{' dB' if self.mode == 'quality' else ''}"


def parse_quantity(text: str, what: str) -> float:
    """`300k`, `1.5M`, `2G`, `800Ki` or a plain number → the number (k, M, G are powers of 1000,
    Ki, Mi, Gi of 1024, as in FFmpeg).

    Raises:
        InfotokError: ``<what> <text>: not a number with an optional k, M, G (or Ki, Mi, Gi)``.
    """
    match = _QUANTITY.fullmatch(text)
    if match is None:
        raise InfotokError(
            f"{what} {text!r}: not a number with an optional k, M, G (or Ki, Mi, Gi) suffix"
        )
    return float(match.group(1)) * _UNITS[match.group(2)]


def si(value: float) -> str:
    """A count in three significant figures with k, M or G: 1234567 → `1.23M`."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.4g}"


def choose_rate(
    budget: float | None = None,
    quality: float | None = None,
    bitrate: float | None = None,
    size: float | None = None,
) -> RateControl:
    """The one mode given (none: budget `DEFAULT_BUDGET`).

    Raises:
        InfotokError: more than one given, naming them.
    """
    given = {
        name: value
        for name, value in (
            ("budget", budget),
            ("quality", quality),
            ("bitrate", bitrate),
            ("size", size),
        )
        if value is not None
    }
    if len(given) > 1:
        raise InfotokError(
            f"{' and '.join(given)} are exclusive rate modes: give one of budget, quality, "
            "bitrate or size"
        )
    if not given:
        return RateControl.budget(DEFAULT_BUDGET)
    ((mode, target),) = given.items()
    return RateControl(mode, target)
