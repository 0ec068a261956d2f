"""What a bench run's rows come to: BD-rates against x264, budget-matched means, routers at equal
bpp, timings and the oracle's gap (`summarise`), and its files (`write_outputs`: results.json,
results.csv, one rd_<metric>.png each). Works on rows alone, so runs can be merged
(benchmarks/merge_bench.py).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from infotok_codec.bench.quality import quality_against_budget, quality_landing
from infotok_codec.bench.set_budget import global_against_budget
from infotok_codec.errors import InfotokError
from infotok_codec.outputs import atomic_file

if TYPE_CHECKING:
    from infotok_codec.bench.runner import BenchReport, BenchRow, BenchSettings


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
    if settings.set_budget:
        summary["global_against_budget"] = global_against_budget(rows, "elbo")
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
            "global",
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
        tokens = ("elbo", "fixed", "uniform", "light", "oracle", "quality", "global")
        style = "-o" if m in tokens else "--s"
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
