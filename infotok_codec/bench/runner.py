"""Bitrate–distortion benchmark: InfoTok routers against each other and against classical codecs.

Every point is a real file: encode → file on disk → decode → metrics against the same source
frames (first `frames` frames, short side scaled to `size`, centre-cropped square). Bits per
pixel come from file sizes. For the tokenizer, one pass-1 analysis per clip serves every router
and budget (as `infotok encode` would compute it for each; `light`, whose pass 1 predicts the
map, has its own, run right after the others' on the same clip so their times are comparable),
and every point is decoded from its own `.itok` file.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from infotok_codec import __version__
from infotok_codec.bench.classical import CODECS, encode_classical
from infotok_codec.bench.quality import (
    chunk_psnr,
    quality_against_budget,
    quality_landing,
    quality_rows,
)
from infotok_codec.codec import Analysis, check_light_head, decode_file, resolve_device
from infotok_codec.errors import InfotokError
from infotok_codec.metrics import Scorer, check_metrics, default_metrics, judges
from infotok_codec.model import LoadedModel, load_model
from infotok_codec.outputs import atomic_file
from infotok_codec.rate import RateControl
from infotok_codec.routing import router as routing
from infotok_codec.video import VideoWriter, find_videos, probe, read_frames

ORACLE_RATES = (1 / 16, 1 / 8, 1 / 4, 3 / 8, 1 / 2, 5 / 8, 3 / 4, 1.0)

Tick = Callable[[str], None]


@dataclass
class BenchSettings:
    budgets: tuple[float, ...] = (0.25, 0.375, 0.5, 0.625, 0.75, 1.0)
    routers: tuple[str, ...] = ("elbo", "fixed", "uniform")
    codecs: tuple[str, ...] = ("x264", "x265", "svtav1")
    crfs: dict[str, tuple[int, ...]] = field(default_factory=dict)  # per codec; default: its own
    frames: int = 64
    size: int = 256
    metrics: tuple[str, ...] = field(default_factory=default_metrics)
    lpips_every: int = 1  # LPIPS on frames 0, k, 2k, ... (the network is the bench's costliest)
    device: str = "auto"
    oracle: bool = False
    qualities: tuple[float, ...] = ()  # `--quality` targets in dB, with the first router

    def __post_init__(self) -> None:
        """Refuse a bad setting before any work (one `InfotokError` line at the CLI)."""
        for name in self.codecs:
            if name not in CODECS:
                raise InfotokError(f"unknown codec {name!r}: choose from {', '.join(CODECS)}")
        for router in self.routers:
            routing.check_router(router)
        for budget in self.budgets:
            routing.check_budget(budget)
        check_metrics(self.metrics)
        if "psnr" not in self.metrics:
            raise InfotokError("metrics must include psnr (the BD-rates and summaries use it)")
        for q in self.qualities:
            RateControl.quality(q)  # raises on a target outside (0, 100] dB
        if self.frames < 1 or self.size < 1:
            raise InfotokError(f"frames {self.frames} and size {self.size} must be positive")
        if self.lpips_every < 1:
            raise InfotokError(f"lpips_every {self.lpips_every} must be at least 1")

    def crfs_for(self, codec: str) -> tuple[int, ...]:
        return self.crfs.get(codec) or CODECS[codec].default_crfs

    def points(self, clips: int) -> int:
        per_clip = len(self.routers) * len(self.budgets)
        per_clip += sum(len(self.crfs_for(c)) for c in self.codecs)
        per_clip += len(self.budgets) if self.oracle else 0
        per_clip += len(self.qualities)
        return clips * per_clip


@dataclass
class BenchRow:
    """One point of one curve."""

    clip: str
    method: str  # elbo, fixed, uniform, light, oracle, x264, x265, svtav1
    param: float  # budget for token methods, CRF for classical codecs
    bytes: int
    bpp: float
    metrics: dict[str, float]
    seconds: dict[str, float]  # encode, decode (and for token methods: analyse, route, write)
    frames: int
    rate: float | None = None  # share of latent positions kept (token methods)
    chunk_rates: list[float] | None = None
    chunk_psnr: list[float] | None = None  # method quality: each chunk's PSNR-RGB (dB)


@dataclass
class BenchReport:
    results: list[BenchRow]
    summary: dict[str, Any]
    device: str
    versions: dict[str, str]
    settings: dict[str, Any]


def reference_frames(path: Path, frames: int, size: int) -> np.ndarray:
    """The first `frames` frames of a clip, short side scaled to `size` and centre-cropped to
    `size`×`size`: the benchmarks' protocol, `(n, size, size, 3)` uint8."""
    return np.concatenate(
        list(read_frames(path, 16, max_frames=frames, short_side=size, center_crop=size))
    )


def prepare_source(path: Path, settings: BenchSettings, workdir: Path) -> tuple[np.ndarray, Path]:
    """The reference frames, and a lossless file of exactly them for the codecs to read."""
    frames = reference_frames(path, settings.frames, settings.size)
    source = workdir / f"{path.stem}.source.mkv"
    with VideoWriter(source, frames.shape[2], frames.shape[1], probe(path).fps) as writer:
        writer.write(frames)
    return frames, source


def _decoded(path: Path) -> np.ndarray:
    return np.concatenate(list(read_frames(path, 64)))


def bench_tokenizer(
    clip: str,
    source: Path,
    score: Scorer,
    settings: BenchSettings,
    model: LoadedModel,
    workdir: Path,
    tick: Tick,
) -> list[BenchRow]:
    """Rows for every router × budget (and the oracle) of one clip."""
    rows: list[BenchRow] = []
    full_rate = [r for r in settings.routers if r != "light"]
    if full_rate or settings.oracle or settings.qualities:
        with Analysis(source, model, device=settings.device, with_error=True) as analysis:
            rows += _router_rows(clip, analysis, full_rate, score, settings, model, workdir, tick)
            if settings.oracle:
                rows += _oracle_rows(clip, analysis, score, settings, model, workdir, tick)
            if settings.qualities:
                rows += _quality_rows(clip, analysis, score, settings, model, workdir, tick)
    if "light" in settings.routers:
        with Analysis(
            source, model, device=settings.device, with_error=True, light=True
        ) as analysis:
            rows += _router_rows(clip, analysis, ["light"], score, settings, model, workdir, tick)
    return rows


def _router_rows(
    clip: str,
    analysis: Analysis,
    routers: Sequence[str],
    score: Scorer,
    settings: BenchSettings,
    model: LoadedModel,
    workdir: Path,
    tick: Tick,
) -> list[BenchRow]:
    rows = []
    for router in routers:
        for budget in settings.budgets:
            itok = workdir / f"{clip}.{router}.{budget}.itok"
            enc = analysis.write(itok, router=router, budget=budget, force=True, audio=False)
            # `uniform` (and any budget-1.0 encode) needs no pass 1.
            analyse_s = analysis.seconds if routing.needs_error_map(router, budget) else 0.0
            rows.append(
                _token_row(
                    clip, router, budget, itok, enc, analyse_s, score, settings, model, workdir
                )
            )
            tick(f"{clip} {router} {budget}")
    return rows


def _quality_rows(
    clip: str,
    analysis: Analysis,
    score: Scorer,
    settings: BenchSettings,
    model: LoadedModel,
    workdir: Path,
    tick: Tick,
) -> list[BenchRow]:
    """`--quality` encodes at each of `settings.qualities`, with each chunk's PSNR-RGB."""
    router = settings.routers[0] if settings.routers else "elbo"

    def row(itok: Path, enc: Any, analyse_s: float) -> BenchRow:
        return _token_row(
            clip, "quality", enc.rate.target, itok, enc, analyse_s, score, settings, model, workdir
        )

    rows = []
    for q_row in quality_rows(analysis, settings.qualities, router, workdir, clip, row):
        decoded = _decoded(workdir / f"{clip}.quality.{q_row.param}.decoded.mkv")
        q_row.chunk_psnr = chunk_psnr(decoded, score.source, analysis.chunk_frames)
        rows.append(q_row)
        tick(f"{clip} quality {q_row.param}")
    return rows


def _token_row(
    clip: str,
    method: str,
    budget: float,
    itok: Path,
    enc: Any,
    analyse_s: float,
    score: Scorer,
    settings: BenchSettings,
    model: LoadedModel,
    workdir: Path,
) -> BenchRow:
    decoded_path = workdir / f"{itok.stem}.decoded.mkv"
    started = time.perf_counter()
    decode_file(itok, decoded_path, model=model, device=settings.device, force=True)
    decode_s = time.perf_counter() - started
    decoded = _decoded(decoded_path)
    encode_s = analyse_s + enc.seconds["route"] + enc.seconds["write"]
    return BenchRow(
        clip=clip,
        method=method,
        param=budget,
        bytes=enc.bytes,
        bpp=enc.bpp,
        metrics=score(decoded),
        seconds={
            "encode": encode_s,
            "decode": decode_s,
            "analyse": analyse_s,
            "route": enc.seconds["route"],
            "write": enc.seconds["write"],
        },
        frames=len(score.source),
        rate=enc.realised_rate,
        chunk_rates=enc.chunk_rates,
    )


def _oracle_rows(
    clip: str,
    analysis: Analysis,
    score: Scorer,
    settings: BenchSettings,
    model: LoadedModel,
    workdir: Path,
    tick: Tick,
) -> list[BenchRow]:
    """The upper bound: per chunk, distortion at every rate in ORACLE_RATES (positions by error),
    then the budget split by Lagrangian search to minimise total squared error."""
    engine = analysis.engine
    h, w = score.source.shape[1:3]
    distortion: list[list[float]] = []  # [chunk][rate] sum of squared error
    counts_at: list[list[int]] = []
    with closing(analysis.read_chunks()) as inputs:
        for error, frames in zip(analysis.chunk_errors(), inputs, strict=True):
            row_d, row_c = [], []
            for r in ORACLE_RATES:
                count = routing.keep_count(r, error.size)
                keep = routing.select_positions("fixed", error, error.shape, count)
                out = engine.frames(engine.tokens(frames, keep), keep, len(frames), h, w)
                row_d.append(float(np.sum((out.astype(np.float64) - frames) ** 2)))
                row_c.append(count)
            distortion.append(row_d)
            counts_at.append(row_c)
    rows = []
    total = sum(c[-1] for c in counts_at)
    for budget in settings.budgets:
        counts = lagrangian_allocation(distortion, counts_at, budget * total)
        itok = workdir / f"{clip}.oracle.{budget}.itok"
        enc = analysis.write(
            itok, router="fixed", budget=budget, counts=counts, force=True, audio=False
        )
        row = _token_row(
            clip, "oracle", budget, itok, enc, analysis.seconds, score, settings, model, workdir
        )
        rows.append(row)
        tick(f"{clip} oracle {budget}")
    return rows


def lagrangian_allocation(
    distortion: list[list[float]], counts: list[list[int]], target: float
) -> list[int]:
    """Per chunk, the option minimising D + λ·count; λ bisected so Σ count ≤ target (closest)."""

    def pick(lam: float) -> list[int]:
        return [
            int(np.argmin([d + lam * c for d, c in zip(ds, cs, strict=True)]))
            for ds, cs in zip(distortion, counts, strict=True)
        ]

    def used(choice: list[int]) -> int:
        return sum(cs[i] for cs, i in zip(counts, choice, strict=True))

    lo, hi = 0.0, 1.0
    while used(pick(hi)) > target and hi < 1e30:
        hi *= 4
    best = pick(hi)
    for _ in range(100):
        mid = (lo + hi) / 2
        choice = pick(mid)
        if used(choice) <= target:
            best, hi = choice, mid
        else:
            lo = mid
    return [cs[i] for cs, i in zip(counts, best, strict=True)]


def bench_classical(
    clip: str,
    score: Scorer,
    fps: Fraction,
    settings: BenchSettings,
    workdir: Path,
    tick: Tick,
) -> list[BenchRow]:
    rows = []
    reference = score.source
    n, h, w = reference.shape[:3]
    for name in settings.codecs:
        codec = CODECS[name]
        for crf in settings.crfs_for(name):
            path = workdir / f"{clip}.{name}.{crf}.mkv"
            started = time.perf_counter()
            encode_classical(codec, reference, fps, crf, path)
            encode_s = time.perf_counter() - started
            started = time.perf_counter()
            decoded = _decoded(path)
            decode_s = time.perf_counter() - started
            size = path.stat().st_size
            rows.append(
                BenchRow(
                    clip=clip,
                    method=name,
                    param=crf,
                    bytes=size,
                    bpp=8 * size / (n * h * w),
                    metrics=score(decoded),
                    seconds={"encode": encode_s, "decode": decode_s},
                    frames=n,
                )
            )
            tick(f"{clip} {name} crf {crf}")
    return rows


# -- summaries -------------------------------------------------------------------------------
def _curve(rows: list[BenchRow], x: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    pts = sorted((getattr(r, x), r.metrics[metric]) for r in rows if metric in r.metrics)
    return np.array([p[0] for p in pts], dtype=np.float64), np.array([p[1] for p in pts])


def bd_rate(
    anchor: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]
) -> float | None:
    """Bjøntegaard delta rate (%) of `test` against `anchor`, curves as (rate, quality).

    Piecewise-linear log-rate as a function of quality over the overlapping quality range
    (robust with few points, where the cubic fit of the original overshoots). Negative = saves.
    """
    (ra, qa), (rt, qt) = anchor, test
    if len(ra) < 2 or len(rt) < 2:
        return None
    oa, ot = np.argsort(qa), np.argsort(qt)
    qa, la = np.maximum.accumulate(qa[oa]), np.log(ra[oa])
    qt, lt = np.maximum.accumulate(qt[ot]), np.log(rt[ot])
    lo, hi = max(qa.min(), qt.min()), min(qa.max(), qt.max())
    if not hi > lo:
        return None
    q = np.linspace(lo, hi, 200)
    diff = np.interp(q, qt, lt) - np.interp(q, qa, la)
    return float((math.exp(float(np.mean(diff))) - 1) * 100)


def token_saving(elbo: list[BenchRow], fixed: list[BenchRow]) -> float | None:
    """Mean share of tokens `elbo` saves against `fixed` at equal PSNR (overlap only)."""
    result = bd_rate(_curve(fixed, "rate", "psnr"), _curve(elbo, "rate", "psnr"))
    return None if result is None else -result


def quality_at(curve: tuple[np.ndarray, np.ndarray], bpp: float) -> float | None:
    """Quality of a (bpp, quality) curve at `bpp`, linear in log bpp; None outside the curve."""
    rates, quality = curve
    if len(rates) < 2 or not rates[0] <= bpp <= rates[-1]:
        return None
    return float(np.interp(math.log(bpp), np.log(rates), quality))


def routers_at_equal_bpp(
    by: dict[tuple[str, str], list[BenchRow]], clips: list[str], budget: float
) -> dict[str, Any] | None:
    """Mean PSNR of each router at one bpp per clip: the mean bpp the routers reach at `budget`,
    moved into the range every router's curve covers on that clip.

    Routers spend different bits at one budget (`uniform`'s masks are all lattice and nearly
    free, error-chosen positions are not), so budget-matched means are not bpp-matched; each
    router's curve is read at the shared bpp instead. Margins are paired per clip: mean, standard
    error over clips, and wins. Clips whose curves share no bpp range are left out.
    """
    routers = [
        m for m in ("elbo", "fixed", "uniform", "light") if all(by.get((c, m)) for c in clips)
    ]
    if len(routers) < 2:
        return None
    psnr: dict[str, list[float]] = {m: [] for m in routers}
    used = []
    for c in clips:
        at_budget = [r.bpp for m in routers for r in by[(c, m)] if r.param == budget]
        curves = [_curve(by[(c, m)], "bpp", "psnr") for m in routers]
        lo = max(float(x.min()) for x, _ in curves)
        hi = min(float(x.max()) for x, _ in curves)
        if len(at_budget) != len(routers) or lo > hi:
            continue
        target = min(max(float(np.mean(at_budget)), lo), hi)
        values = [quality_at(curve, target) for curve in curves]
        used.append(target)
        for m, v in zip(routers, values, strict=True):
            psnr[m].append(float(v))  # type: ignore[arg-type]
    if not used:
        return None
    return {
        "clips": len(used),
        "bpp": round(float(np.mean(used)), 5),
        "psnr": {m: round(float(np.mean(v)), 3) for m, v in psnr.items()},
        "margins_db": {
            f"{a}_minus_{b}": paired_margin(np.array(psnr[a]) - np.array(psnr[b]))
            for a, b in (
                ("elbo", "fixed"),
                ("fixed", "uniform"),
                ("elbo", "uniform"),
                ("light", "elbo"),
                ("light", "fixed"),
            )
            if a in psnr and b in psnr
        },
    }


def paired_margin(diffs: np.ndarray) -> dict[str, Any]:
    """Per-clip differences in dB summarised: mean, standard error (None for one clip), wins."""
    stderr = float(diffs.std(ddof=1) / math.sqrt(len(diffs))) if len(diffs) > 1 else None
    return {
        "mean": round(float(diffs.mean()), 3),
        "stderr": None if stderr is None else round(stderr, 3),
        "wins": int((diffs > 0).sum()),
    }


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    if len(a) < 3:
        return None
    ra = np.argsort(np.argsort(a)).astype(np.float64)
    rb = np.argsort(np.argsort(b)).astype(np.float64)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def _mean_metrics(rows: list[BenchRow]) -> dict[str, float]:
    """Mean of PSNR and of each of MS-SSIM, LPIPS and VMAF that every row has."""
    names = ["psnr", *(m for m in ("msssim", "lpips", "vmaf") if all(m in r.metrics for r in rows))]
    return {m: float(np.mean([r.metrics[m] for r in rows])) for m in names}


def summarise(rows: list[BenchRow], settings: BenchSettings) -> dict[str, Any]:
    clips = sorted({r.clip for r in rows})
    methods = sorted({r.method for r in rows})
    by = {
        (c, m): [r for r in rows if r.clip == c and r.method == m] for c in clips for m in methods
    }
    summary: dict[str, Any] = {
        "clips": clips,
        "methods": methods,
        "bd_rate_vs_x264": {},
        "means": {},
    }
    # BD-rate needs higher = better, which LPIPS is not.
    for metric in [m for m in ("psnr", "msssim", "vmaf") if any(m in r.metrics for r in rows)]:
        table: dict[str, float | None] = {}
        for m in methods:
            values = [
                bd_rate(_curve(by[(c, "x264")], "bpp", metric), _curve(by[(c, m)], "bpp", metric))
                for c in clips
                if by.get((c, "x264"))
            ]
            finite = [v for v in values if v is not None]
            table[m] = round(float(np.mean(finite)), 2) if finite else None
        summary["bd_rate_vs_x264"][metric] = table
    # Mean quality and size per (token method, budget) over clips: the budget-matched comparison.
    for m in methods:
        params = sorted({r.param for r in rows if r.method == m})
        summary["means"][m] = [
            {
                "param": p,
                "bpp": float(np.mean([r.bpp for r in rows if r.method == m and r.param == p])),
                **_mean_metrics([r for r in rows if r.method == m and r.param == p]),
                "rate": (
                    float(
                        np.mean(
                            [
                                r.rate
                                for r in rows
                                if r.method == m and r.param == p and r.rate is not None
                            ]
                        )
                    )
                    if any(r.rate is not None for r in rows if r.method == m)
                    else None
                ),
            }
            for p in params
        ]
    if "elbo" in methods and "fixed" in methods:
        savings = [token_saving(by[(c, "elbo")], by[(c, "fixed")]) for c in clips]
        finite = [s for s in savings if s is not None]
        summary["tokens_saved_by_elbo_vs_fixed_at_equal_psnr_percent"] = (
            round(float(np.mean(finite)), 2) if finite else None
        )
        summary["tokens_saved_per_clip_percent"] = dict(zip(clips, savings, strict=True))
    summary["psnr_at_equal_bpp"] = {
        str(b): routers_at_equal_bpp(by, clips, b) for b in settings.budgets if b < 1.0
    }
    timing: dict[str, Any] = {}
    for m in methods:
        mr = [r for r in rows if r.method == m]
        frames = sum(r.frames for r in mr)
        timing[m] = {
            "encode_fps": round(frames / sum(r.seconds["encode"] for r in mr), 2),
            "decode_fps": round(frames / sum(r.seconds["decode"] for r in mr), 2),
        }
    if "elbo" in methods and "uniform" in methods:
        e = [r for r in rows if r.method == "elbo" and r.param < 1.0]
        u = [r for r in rows if r.method == "uniform" and r.param < 1.0]
        if e and u:
            # What routing costs: pass 1 (a full-rate encode and decode for the error map) and the
            # allocation; `uniform` runs pass 2 only.
            elbo_s = float(np.mean([r.seconds["encode"] for r in e]))
            plain_s = float(np.mean([r.seconds["encode"] for r in u]))
            timing["router_share_of_elbo_encode"] = round(max(elbo_s - plain_s, 0.0) / elbo_s, 3)
    if "elbo" in methods and "light" in methods:
        e = [r for r in rows if r.method == "elbo" and r.param < 1.0]
        lt = [r for r in rows if r.method == "light" and r.param < 1.0]
        if e and lt:
            # Both analyses run on each clip one after the other, so load drifts hit both alike.
            timing["light_encode_time_over_elbo"] = round(
                sum(r.seconds["encode"] for r in lt) / sum(r.seconds["encode"] for r in e), 3
            )
    summary["timing"] = timing
    if settings.qualities:
        summary["quality"] = quality_landing(rows)
        router = settings.routers[0] if settings.routers else "elbo"
        summary["quality_against_budget"] = quality_against_budget(rows, router)
    if settings.oracle and "elbo" in methods:
        corr, gaps = [], []
        for c in clips:
            for b in settings.budgets:
                if b >= 1.0:
                    continue
                elbo_row = next((r for r in by[(c, "elbo")] if r.param == b), None)
                oracle_row = next((r for r in by.get((c, "oracle"), []) if r.param == b), None)
                if elbo_row and oracle_row and elbo_row.chunk_rates and oracle_row.chunk_rates:
                    rho = spearman(elbo_row.chunk_rates, oracle_row.chunk_rates)
                    if rho is not None:
                        corr.append(rho)
                    gaps.append(oracle_row.metrics["psnr"] - elbo_row.metrics["psnr"])
        summary["oracle"] = {
            "mean_psnr_gap_db_oracle_minus_elbo": round(float(np.mean(gaps)), 3) if gaps else None,
            "mean_spearman_chunk_rates_elbo_vs_oracle": round(float(np.mean(corr)), 3)
            if corr
            else None,
        }
    return summary


AXIS_LABELS = {
    "psnr": "PSNR-RGB (dB, pooled per clip)",
    "msssim": "MS-SSIM",
    "lpips": "ST-LPIPS, AlexNet (mean over frames; lower is better)",
    "vmaf": "VMAF v0.6.1 (mean over frames)",
}


def plot(rows: list[BenchRow], metric: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [
        m
        for m in (
            "elbo",
            "fixed",
            "uniform",
            "light",
            "oracle",
            "quality",
            "x264",
            "x265",
            "svtav1",
        )
        if any(r.method == m and metric in r.metrics for r in rows)
    ]
    fig, ax = plt.subplots(figsize=(7, 5))
    for m in methods:
        params = sorted({r.param for r in rows if r.method == m})
        xs = [np.mean([r.bpp for r in rows if r.method == m and r.param == p]) for p in params]
        ys = [
            np.mean([r.metrics[metric] for r in rows if r.method == m and r.param == p])
            for p in params
        ]
        order = np.argsort(xs)
        style = "-o" if m in ("elbo", "fixed", "uniform", "light", "oracle", "quality") else "--s"
        ax.plot(np.array(xs)[order], np.array(ys)[order], style, label=m, ms=4)
    ax.set_xscale("log")
    ax.set_xlabel("bits per pixel (from file sizes, mean over clips)")
    ax.set_ylabel(AXIS_LABELS.get(metric, metric))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title(f"infotok bench: {len({r.clip for r in rows})} clips")
    fig.tight_layout()
    with atomic_file(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def check_results_folder(out_dir: Path, force: bool) -> None:
    """`out_dir` can take the results: a folder (or none yet) without results, or `force`."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InfotokError(f"{out_dir}: exists and is not a folder")
    if (out_dir / "results.json").exists() and not force:
        raise InfotokError(f"{out_dir}: already holds results (use --force to overwrite)")
    # The folder is made at the end: check now that it can be, not after an hour of work.
    existing = next(p for p in (out_dir.absolute(), *out_dir.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise InfotokError(f"{out_dir}: {existing} is not a folder")
    if not os.access(existing, os.W_OK):
        raise InfotokError(f"{out_dir}: {existing} is not writable")


def plotted_metrics(rows: list[BenchRow]) -> list[str]:
    """The metrics that get an `rd_<metric>.png`: PSNR, and each other one some row has."""
    return ["psnr", *(m for m in ("msssim", "lpips", "vmaf") if any(m in r.metrics for r in rows))]


def write_outputs(report: BenchReport, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    data = dataclasses.asdict(report)
    with atomic_file(out_dir / "results.json") as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
    metric_names = sorted({k for r in report.results for k in r.metrics})
    with atomic_file(out_dir / "results.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "clip",
                "method",
                "param",
                "bytes",
                "bpp",
                "rate",
                *metric_names,
                "encode_s",
                "decode_s",
            ]
        )
        for r in report.results:
            writer.writerow(
                [
                    r.clip,
                    r.method,
                    r.param,
                    r.bytes,
                    f"{r.bpp:.6f}",
                    "" if r.rate is None else f"{r.rate:.4f}",
                    *[f"{r.metrics[m]:.4f}" if m in r.metrics else "" for m in metric_names],
                    f"{r.seconds['encode']:.3f}",
                    f"{r.seconds['decode']:.3f}",
                ]
            )
    for metric in plotted_metrics(report.results):
        plot(report.results, metric, out_dir / f"rd_{metric}.png")


def run_bench(
    paths: Sequence[Path],
    settings: BenchSettings,
    out_dir: Path,
    *,
    model: LoadedModel | str | Path | None = None,
    tick: Tick | None = None,
    keep_files: bool = False,
    force: bool = False,
) -> BenchReport:
    """Run every point, write results.json / results.csv / plots into `out_dir`.

    `keep_files` leaves every encoded file in `out_dir/files` (named clip.method.param.ext).
    Results already in `out_dir` are replaced only with `force`.
    """
    check_results_folder(out_dir, force)
    clips = find_videos(paths)
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    if "light" in settings.routers:
        check_light_head(loaded)
    device = str(resolve_device(settings.device))
    rows: list[BenchRow] = []
    step = tick or (lambda _label: None)
    with tempfile.TemporaryDirectory(prefix="infotok-bench-") as tmp:
        work = out_dir / "files" if keep_files else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for path in clips:
            reference, source = prepare_source(path, settings, work)
            fps = probe(source).fps
            score = Scorer(reference, settings.metrics, settings.lpips_every)
            rows += bench_tokenizer(path.name, source, score, settings, loaded, work, step)
            rows += bench_classical(path.name, score, fps, settings, work, step)
            if not keep_files:
                for leftover in work.iterdir():
                    leftover.unlink()
    import av
    import torch

    versions = {
        "infotok": __version__,
        "torch": torch.__version__,
        "av": av.__version__,
        "ffmpeg": ".".join(str(v) for v in av.library_versions.get("libavcodec", ())),
        "python": platform.python_version(),
        **judges.versions(settings.metrics),
    }
    report = BenchReport(
        results=rows,
        summary=summarise(rows, settings),
        device=device
        if device != "cpu"
        else f"cpu ({platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads)",
        versions=versions,
        settings={
            **dataclasses.asdict(settings),
            "model": loaded.name,
            "model_sha256": loaded.sha256.hex(),
            "psnr": "pooled over each clip (one MSE); psnr_frame_mean: mean of per-frame PSNR",
            **{m: j.note for m, j in judges.JUDGES.items() if m in settings.metrics},
        },
    )
    write_outputs(report, out_dir)
    return report
