"""Meeting a rate: a quality by search on real decodes, a bitrate or file size by real bytes.

Every mode ends in the same pass 2 (`Analysis.write`): what differs is how many positions each
chunk keeps. Positions are always the router's (`router.select_positions` on the router's error
map), so any router that makes error maps works here.

- `budget`: the router's own allocation (`router.allocate_counts`).
- `quality`: each chunk keeps the fewest positions whose decode reaches the target PSNR-RGB
  against the source chunk, or all of them if even that does not (the chunk is counted as
  unreachable). The search decodes for real, a few times per chunk: it models the chunk's squared
  error at `k` kept positions as linear in the router's error summed over the positions it drops
  at `k` (`QualitySearch`), which the decodes calibrate; each guess solves that model inside the
  bracket of counts measured so far (regula falsi; geometric bisection when one end of the
  bracket has moved twice in a row), and the calibration seeds the next chunk.
- `bitrate`, `size`: pass 1 also codes every chunk for real at a few counts (`byte_curves`);
  between them a chunk's bytes are interpolated. The router then spends the target: the budget
  whose allocation the curves price at the target is bisected (`ByteSpender`), and while pass 2
  writes, each chunk's count is re-solved for what is left of the target after the real bytes
  already written, so the error left is the last chunk's interpolation error.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from infotok_codec.bitstream.chunk_coding import encode_chunk
from infotok_codec.bitstream.context_coder import Chain
from infotok_codec.bitstream.header import framing_bytes
from infotok_codec.errors import InfotokError
from infotok_codec.metrics import psnr_pooled
from infotok_codec.rate import RateControl, si
from infotok_codec.routing import router as routing

if TYPE_CHECKING:
    from infotok_codec.codec import Analysis, CountFeedback, EncodeResult

QUALITY_AIM_DB = 0.1
"""Each guess aims this far above the target, so that a model error lands inside the window."""
QUALITY_WINDOW_DB = 0.3
"""A chunk whose decode lands in [target, target + this] stops its search."""
MAX_QUALITY_DECODES = 8
"""Decodes per chunk at most (full rate included); the fewest passing count measured wins."""
SIZE_SAMPLE_RATES = (1 / 16, 1 / 8, 3 / 16, 1 / 4, 3 / 8, 1 / 2, 3 / 4, 1.0)
"""Rates each chunk is coded at for its byte curve, beside a single kept position (the least a
chunk can keep). Bytes are near linear in the count between these; chained chunks bend most
below 1/2 (dev clips: without 3/16 a two-chunk file at rate 0.19 came out 3.1% over its
target), so the samples are densest there."""
_BISECTION_STEPS = 60
MIN_BUDGET = 1e-9
"""The least budget the size modes spend: one position per chunk at any size this codec takes."""


def needs_error_map(router: str, rate: RateControl) -> bool:
    """Whether meeting `rate` with `router` reads the error maps of pass 1."""
    budget = rate.target if rate.mode == "budget" else routing.MIN_RATE
    return routing.needs_error_map(router, budget)


def write(
    analysis: Analysis,
    dst: str | Path,
    rate: RateControl,
    *,
    router: str = "elbo",
    coder: str = "context",
    key_interval: float | None = None,
    force: bool = False,
    audio: bool = True,
    search: QualitySearch | None = None,
    curves: list[ByteCurve] | None = None,
) -> EncodeResult:
    """Pass 2 of an encode at `rate`, key chunks every `key_interval` seconds (None: the
    encoder's default). `search` (mode quality) and `curves` (bitrate, size) may
    be kept from an earlier call on the same analysis, router and coder: decodes and byte
    samples already made are not made again.

    Raises:
        InfotokError: a size or bitrate target below the smallest file this video makes
            (nothing is written).
    """
    common: dict[str, object] = dict(coder=coder, force=force, rate=rate, audio=audio)
    if key_interval is not None:  # else `Analysis.write`'s default
        common["key_interval"] = key_interval
    if rate.mode == "budget":
        return analysis.write(dst, router=router, budget=rate.target, **common)  # type: ignore[arg-type]
    started = time.perf_counter()
    if rate.mode == "quality":
        plan = (search or QualitySearch(analysis, router)).plan(rate.target)
        search_s = time.perf_counter() - started
        result = analysis.write(
            dst,
            router=router,
            budget=plan.rate,
            counts=plan.counts,
            **common,  # type: ignore[arg-type]
        )
        return dataclasses.replace(
            result,
            chunk_psnr=plan.psnr,
            unreachable_chunks=plan.unreachable,
            seconds={**result.seconds, "search": search_s},
        )
    spender = ByteSpender.of(analysis, router, coder, rate, curves, key_interval)
    sample_s = time.perf_counter() - started
    target = target_bytes(analysis, rate)
    smallest, largest = spender.smallest(), spender.largest()
    reach = f"reachable {_in_mode(analysis, rate, smallest)} to {_in_mode(analysis, rate, largest)}"
    if target < smallest:
        raise InfotokError(
            f"{rate.describe()} is below the smallest file this model writes for this video "
            f"({reach})"
        )
    if target >= largest:
        result = analysis.write(dst, router=router, budget=1.0, **common)  # type: ignore[arg-type]
        return dataclasses.replace(
            result,
            seconds={**result.seconds, "sample": sample_s},
            warning=f"{rate.describe()} is above what this video reaches ({reach}): wrote the "
            f"largest file, {_in_mode(analysis, rate, result.bytes)}",
        )
    budget = spender.budget_for(target)
    result = analysis.write(
        dst,
        router=router,
        budget=spender.planned_rate(budget),
        counts=spender.feedback(target),
        **common,  # type: ignore[arg-type]
    )
    return dataclasses.replace(result, seconds={**result.seconds, "sample": sample_s})


def target_bytes(analysis: Analysis, rate: RateControl) -> float:
    """The file size `rate` asks for, in bytes (mode `size` or `bitrate`)."""
    if rate.mode == "size":
        return rate.target
    if rate.mode == "bitrate":
        seconds = analysis.info.frames / float(analysis.info.fps)
        return rate.target * seconds / 8
    raise InfotokError(f"mode {rate.mode} has no target size")


def _chunk_errors(analysis: Analysis, router: str) -> Iterator[np.ndarray | None]:
    """Each chunk's error map, or None for a router that chooses positions without one."""
    if needs_error_map(router, RateControl.quality(1.0)):  # any mode but budget: rates below 1
        yield from analysis.chunk_errors()
    else:
        yield from (None for _ in analysis.chunks)


def _in_mode(analysis: Analysis, rate: RateControl, size: float) -> str:
    """A file size in the unit of `rate`'s mode: `12345 bytes` or `45.6k bits/s`."""
    if rate.mode == "bitrate":
        return f"{si(size * 8 * float(analysis.info.fps) / analysis.info.frames)} bits/s"
    return f"{round(size)} bytes"


# -- quality -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChunkQuality:
    """One chunk's outcome: the count kept, its decode's PSNR-RGB (dB), whether that reaches the
    target, and how many decodes the search made for it (cached ones not counted)."""

    count: int
    positions: int
    psnr: float
    reached: bool
    decodes: int


@dataclass(frozen=True)
class QualityPlan:
    target: float  # dB
    chunks: list[ChunkQuality]

    @property
    def counts(self) -> list[int]:
        return [c.count for c in self.chunks]

    @property
    def psnr(self) -> list[float]:
        return [c.psnr for c in self.chunks]

    @property
    def unreachable(self) -> int:
        return sum(not c.reached for c in self.chunks)

    @property
    def rate(self) -> float:
        """Kept positions over all positions: what the header records as the budget."""
        return sum(c.count for c in self.chunks) / sum(c.positions for c in self.chunks)


def _mse(psnr_db: float) -> float:
    return 255.0**2 / 10 ** (psnr_db / 10)


def _psnr_db(mse: float) -> float:
    return 10 * math.log10(255.0**2 / mse)


def _geometric_middle(lo: int, hi: int) -> int:
    """The count nearest the geometric mean of `lo` and `hi`, kept within [lo + 1, hi - 1]."""
    return min(max(round(math.sqrt(lo * hi)), lo + 1), hi - 1)


class QualitySearch:
    """Per chunk, the PSNR-RGB of real decodes at the counts tried, kept so that one search
    serves several targets (`bench --qualities`)."""

    def __init__(self, analysis: Analysis, router: str) -> None:
        routing.check_router(router)
        self.analysis, self.router = analysis, router
        self.measured: list[dict[int, float]] = [{} for _ in analysis.chunks]

    def plan(self, target_db: float) -> QualityPlan:
        """Every chunk's count for `target_db`, chunk by chunk over the input."""
        analysis = self.analysis
        scale: float | None = None  # squared error per unit of dropped router error
        chunks = []
        errors = _chunk_errors(analysis, self.router)
        with closing(analysis.read_chunks()) as inputs:
            for k, chunk in enumerate(analysis.chunks):
                frames, error = next(inputs), next(errors)  # not zip: it would hold the frames
                dropped = DroppedError(self.router, error, chunk.shape)
                outcome, scale = self._search(k, frames, dropped, target_db, scale)
                del frames
                chunks.append(outcome)
                if analysis.progress:
                    analysis.progress("quality", chunk.frames, analysis.info.frames)
        return QualityPlan(target_db, chunks)

    def _psnr(self, k: int, frames: np.ndarray, dropped: DroppedError, count: int) -> float:
        if count not in self.measured[k]:
            engine = self.analysis.engine
            keep = dropped.keep(count)
            n, height, width = frames.shape[:3]
            indices = engine.tokens(frames, keep, self.analysis.chunk_features(k))
            out = engine.frames(indices, keep, n, height, width)
            self.measured[k][count] = psnr_pooled(out, frames)
        return self.measured[k][count]

    def _search(
        self,
        k: int,
        frames: np.ndarray,
        dropped: DroppedError,
        target: float,
        scale: float | None,
    ) -> tuple[ChunkQuality, float | None]:
        """(outcome, calibration for the next chunk)."""
        before = len(self.measured[k])
        n = dropped.positions
        full = self._psnr(k, frames, dropped, n)
        if full < target:
            return ChunkQuality(n, n, full, False, len(self.measured[k]) - before), scale
        goal = _mse(target + QUALITY_AIM_DB)
        moved: list[bool] = []  # per guess: whether it passed (moved the bracket's upper end)
        for _ in range(MAX_QUALITY_DECODES - 1):
            tried = self.measured[k]
            passing = [c for c, p in tried.items() if p >= target]
            hi = min(passing)
            if tried[hi] <= target + QUALITY_WINDOW_DB:
                break
            below = [c for c, p in tried.items() if p < target and c < hi]
            lo = max(below) if below else 0
            if hi - lo <= 1:
                break
            if len(moved) >= 2 and moved[-1] == moved[-2]:
                # The same end moved twice: the model is bent there, and the line through the
                # bracket ends would creep along one side (regula falsi's stall). Halve the
                # bracket instead, geometrically, since counts span orders of magnitude.
                guess = _geometric_middle(max(lo, 1), hi)
            else:
                guess = self._guess(k, dropped, goal, lo, hi, scale)
            moved.append(self._psnr(k, frames, dropped, guess) >= target)
            scale = self._calibration(k, dropped, goal) or scale
        tried = self.measured[k]
        best = min(c for c, p in tried.items() if p >= target)
        outcome = ChunkQuality(best, n, tried[best], True, len(tried) - before)
        return outcome, scale

    def _guess(
        self, k: int, dropped: DroppedError, goal: float, lo: int, hi: int, scale: float | None
    ) -> int:
        """The count in (lo, hi) where the model puts the goal's squared error.

        With a failing count `lo` measured, PSNR is taken as linear in the log of the count
        between the two bracket ends (dev chunks gain 3-4 dB per doubling, while squared error
        against dropped error bends sharply at low counts); without one, squared error is the
        line in dropped error from full rate through `hi`, or the previous chunk's slope; with
        no slope at all, half of `hi`.
        """
        tried = self.measured[k]
        if lo > 0:
            rise = tried[hi] - tried[lo]
            if rise <= 0:
                return _geometric_middle(lo, hi)
            aim = _psnr_db(goal) - tried[lo]
            count = lo * (hi / lo) ** (aim / rise)
            return min(max(round(count), lo + 1), hi - 1)
        mse_hi, s_hi = _mse(tried[hi]), dropped.at(hi)
        slope: float | None
        if hi < dropped.positions and s_hi > 0 and mse_hi > _mse(tried[dropped.positions]):
            slope = (mse_hi - _mse(tried[dropped.positions])) / s_hi
        else:
            slope = scale
        if slope is None or slope <= 0:
            return (lo + hi) // 2
        return min(max(dropped.count_for(s_hi + (goal - mse_hi) / slope, lo, hi), lo + 1), hi - 1)

    def _calibration(self, k: int, dropped: DroppedError, goal: float) -> float | None:
        """Squared error per unit of dropped router error, from the measured count whose error
        is nearest the goal (None when no reduced count is measured, or dropping cost nothing)."""
        tried = self.measured[k]
        n = dropped.positions
        reduced = [c for c in tried if c < n and dropped.at(c) > 0]
        if not reduced:
            return None
        c = min(reduced, key=lambda c: abs(_mse(tried[c]) - goal))
        slope = (_mse(tried[c]) - _mse(tried[n])) / dropped.at(c)
        return slope if slope > 0 else None


class DroppedError:
    """The router's error summed over the positions it drops at a count: the quality search's
    coordinate. Routers without an error map (`uniform`) count each dropped position as 1."""

    def __init__(self, router: str, error: np.ndarray | None, shape: tuple[int, int, int]) -> None:
        self.router, self.error, self.shape = router, error, shape
        self.positions = int(np.prod(shape))
        self.weight = np.ones(self.positions) if error is None else error.astype(np.float64).ravel()
        self._cache: dict[int, float] = {}

    def keep(self, count: int) -> np.ndarray:
        """The router's keep-mask `shape` bool with `count` positions."""
        return routing.select_positions(self.router, self.error, self.shape, count)

    def at(self, count: int) -> float:
        if count not in self._cache:
            self._cache[count] = float(self.weight[~self.keep(count).ravel()].sum())
        return self._cache[count]

    def count_for(self, value: float, lo: int, hi: int) -> int:
        """A count in [lo, hi] whose dropped error is nearest `value` (it falls as the count
        grows), by bisection."""
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.at(mid) > value:
                lo = mid
            else:
                hi = mid
        return lo if abs(self.at(lo) - value) < abs(self.at(hi) - value) else hi


# -- bitrate and size --------------------------------------------------------------------------
@dataclass(frozen=True)
class ByteCurve:
    """One chunk's record bytes (framing included) at sampled counts, both increasing: real
    entropy-coded records, interpolated linearly between."""

    counts: tuple[int, ...]
    bytes: tuple[int, ...]

    def at(self, count: int) -> float:
        return float(np.interp(count, self.counts, self.bytes))


def byte_curves(
    analysis: Analysis, router: str, coder: str, key_interval: float | None = None
) -> list[ByteCurve]:
    """Every chunk coded for real at one kept position and at each of `SIZE_SAMPLE_RATES`, as
    the file codes it, with key chunks every `key_interval` seconds (None: the encoder's
    default).

    A coder that chains chunks (`context`) codes a chunk for less after the chunks before it,
    and for how much less depends on the rate: on dev clips a chained chunk costs 0.52× its
    alone bytes at 1/16 of the positions and 0.65× at all of them. So each sampled rate keeps
    its own chain through the chunks, as if the whole file were written at that rate; pass 2's
    feedback re-solves each count from the bytes actually written."""
    header = (
        analysis.header(router, 1.0, coder)  # the header's default is the encoder's
        if key_interval is None
        else analysis.header(router, 1.0, coder, key_interval=key_interval)
    )
    rates = (None, *SIZE_SAMPLE_RATES)  # None: a single kept position
    chains = [Chain() for _ in rates]
    tables = analysis.engine.tables
    curves = []
    errors = _chunk_errors(analysis, router)
    # A `light` analysis's spilled features code the chunks without reading the input again.
    with closing(analysis.coding_inputs()) as inputs:
        for k, chunk in enumerate(analysis.chunks):
            frames, error = next(inputs), next(errors)  # not zip: it would hold the last frames
            sampled: dict[int, int] = {}  # count → bytes; a repeated count keeps its first
            for rate, chain in zip(rates, chains, strict=True):
                count = 1 if rate is None else routing.keep_count(rate, chunk.positions)
                keep = routing.select_positions(router, error, chunk.shape, count)
                indices = analysis.tokens(k, frames, keep)
                nbytes = encode_chunk(header, k, keep, indices[keep], tables, chain).nbytes
                sampled.setdefault(count, nbytes)
            del frames
            counts = sorted(sampled)
            # A larger count never prices below a smaller one, so budgets price monotonically.
            priced = np.maximum.accumulate([sampled[n] for n in counts])
            curves.append(ByteCurve(tuple(counts), tuple(int(b) for b in priced)))
            if analysis.progress:
                analysis.progress("sample", chunk.frames, analysis.info.frames)
    return curves


def _padded(values: tuple[int, ...], width: int) -> list[int]:
    return list(values) + [values[-1]] * (width - len(values))


class ByteSpender:
    """The router's allocation at the budget that the byte curves price at a target size.

    Args:
        router: the router whose allocation spends the bytes.
        positions, errors: each chunk's positions and mean error (`router.allocate_counts`).
        framing: the file's bytes outside chunk records (`header.framing_bytes`).
        curves: each chunk's `ByteCurve`.
    """

    def __init__(
        self,
        router: str,
        positions: list[int],
        errors: list[float],
        framing: int,
        curves: list[ByteCurve],
    ) -> None:
        if not len(curves) == len(positions) == len(errors):
            raise InfotokError(f"{len(curves)} byte curves for {len(positions)} chunks")
        routing.check_router(router)
        self.router, self.positions, self.errors = router, positions, errors
        self.framing, self.curves = framing, curves
        # Pass 2 re-solves a budget for every chunk, each by bisection over the chunks left:
        # arrays, not per-chunk Python, keep that from growing with the square of the length.
        self._n = np.asarray(positions, dtype=np.int64)
        self._e = np.asarray(errors, dtype=np.float64)
        # Each curve padded by repeating its last sample at least once (flat beyond it, as
        # np.interp), so the last segment a count can fall in always ends at the curve's end.
        width = 1 + max([1] + [len(c.counts) for c in curves])
        self._xs = np.array([_padded(c.counts, width) for c in curves], dtype=np.float64)
        self._ys = np.array([_padded(c.bytes, width) for c in curves], dtype=np.float64)

    @classmethod
    def of(
        cls,
        analysis: Analysis,
        router: str,
        coder: str,
        rate: RateControl,
        curves: list[ByteCurve] | None = None,
        key_interval: float | None = None,
    ) -> ByteSpender:
        """The spender of an analysed video (its byte curves made here unless given, for key
        chunks every `key_interval` seconds: None, the encoder's default)."""
        return cls(
            router,
            [c.positions for c in analysis.chunks],
            [c.mean_error for c in analysis.chunks],
            framing_bytes(analysis.header(router, 1.0, coder, rate)),
            curves or byte_curves(analysis, router, coder, key_interval),
        )

    def counts(self, budget: float, start: int = 0) -> list[int]:
        """The router's counts for chunks `start..` at `budget` of their positions."""
        return [int(v) for v in self._counts(budget, start)]

    def _counts(self, budget: float, start: int) -> np.ndarray:
        routing.check_budget(budget)
        return routing.allocate_array(self.router, budget, self._n[start:], self._e[start:])

    def priced(self, budget: float, start: int = 0) -> float:
        """Predicted record bytes of chunks `start..` at `budget` (each `ByteCurve.at`)."""
        count = self._counts(budget, start).astype(np.float64)
        xs, ys = self._xs[start:], self._ys[start:]
        if not len(count):
            return 0.0
        # np.interp row by row: the segment each count falls in, clamped to the ends.
        seg = np.clip((xs <= count[:, None]).sum(axis=1) - 1, 0, xs.shape[1] - 2)
        rows = np.arange(len(count))
        x0, x1 = xs[rows, seg], xs[rows, seg + 1]
        y0, y1 = ys[rows, seg], ys[rows, seg + 1]
        span = np.where(x1 > x0, x1 - x0, 1.0)
        t = np.clip((count - x0) / span, 0.0, 1.0)
        return float((y0 + t * (y1 - y0)).sum())

    def smallest(self) -> float:
        """The smallest file: one position per chunk (sampled, so exact)."""
        return self.framing + sum(c.bytes[0] for c in self.curves)

    def largest(self) -> float:
        """The largest file: every position (sampled, so exact)."""
        return self.framing + sum(c.bytes[-1] for c in self.curves)

    def budget_for(self, target: float, start: int = 0, written: float = 0.0) -> float:
        """The budget in (0, 1] whose chunks `start..` price nearest `target` bytes of file,
        of which `written` are already written (records before `start`)."""
        left = target - self.framing - written
        lo, hi = MIN_BUDGET, 1.0
        if self.priced(hi, start) <= left:
            return hi
        for _ in range(_BISECTION_STEPS):
            mid = (lo + hi) / 2
            if self.priced(mid, start) <= left:
                lo = mid
            else:
                hi = mid
        return lo

    def planned_rate(self, budget: float) -> float:
        return sum(self.counts(budget)) / sum(self.positions)

    def feedback(self, target: float) -> CountFeedback:
        """Pass 2's counts: each chunk's, re-solved for what the target leaves after the
        records already written."""

        def count(k: int, written: int) -> int:
            return self.counts(self.budget_for(target, k, written), k)[0]

        return count
