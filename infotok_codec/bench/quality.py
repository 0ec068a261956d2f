"""`bench --qualities`: `--quality` encodes of each clip, and where their chunks land.

One search (`rate_control.QualitySearch`) serves every target of a clip, so decodes made for one
target are not made again for the next.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from infotok_codec.codec import KEY_SECONDS
from infotok_codec.metrics import psnr_pooled
from infotok_codec.rate import RateControl
from infotok_codec.routing import rate_control

if TYPE_CHECKING:
    from infotok_codec.bench.runner import BenchRow
    from infotok_codec.codec import Analysis, EncodeResult

WINDOW_DB = 0.5
"""A chunk lands when its PSNR-RGB is in [Q, Q + WINDOW_DB]."""


def quality_rows(
    analysis: Analysis,
    qualities: tuple[float, ...],
    router: str,
    workdir: Path,
    clip: str,
    row: Callable[[Path, EncodeResult, float], BenchRow],
) -> Iterator[BenchRow]:
    """One row per target: `row(itok, result, encode seconds)` decodes and measures the file
    (`clip.quality.Q.itok` in `workdir`)."""
    search = rate_control.QualitySearch(analysis, router)
    for q in qualities:
        itok = workdir / f"{clip}.quality.{q}.itok"
        enc = rate_control.write(
            analysis,
            itok,
            RateControl.quality(q),
            router=router,
            key_interval=KEY_SECONDS,
            search=search,
            force=True,
            audio=False,  # bench's bpp is the video's
        )
        yield row(itok, enc, analysis.seconds + enc.seconds.get("search", 0.0))


def chunk_psnr(decoded: np.ndarray, reference: np.ndarray, chunk_frames: int) -> list[float]:
    """PSNR-RGB (dB) of each chunk of `chunk_frames` frames, both `(n, H, W, 3)` uint8."""
    return [
        psnr_pooled(decoded[s : s + chunk_frames], reference[s : s + chunk_frames])
        for s in range(0, len(reference), chunk_frames)
    ]


def quality_landing(rows: list[BenchRow]) -> dict[str, list[dict[str, Any]]]:
    """Per clip and target: the file's PSNR and how its chunks landed: in the window, kept whole
    and still below Q (cannot reach it), above the window (already at one token, or the search
    stopped), or below Q with tokens to spare (none, if the search is right)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r.method != "quality" or r.chunk_psnr is None or r.chunk_rates is None:
            continue
        q = r.param
        whole = [rate >= 1.0 for rate in r.chunk_rates]
        out.setdefault(r.clip, []).append(
            {
                "target_db": q,
                "psnr": round(r.metrics["psnr"], 3),
                "chunks": len(r.chunk_psnr),
                "in_window": sum(q <= p <= q + WINDOW_DB for p in r.chunk_psnr),
                "unreachable": sum(p < q and w for p, w in zip(r.chunk_psnr, whole, strict=True)),
                "above_window": sum(p > q + WINDOW_DB for p in r.chunk_psnr),
                "below_target": sum(
                    p < q and not w for p, w in zip(r.chunk_psnr, whole, strict=True)
                ),
                "rate": None if r.rate is None else round(r.rate, 4),
                "bpp": round(r.bpp, 5),
            }
        )
    return out


def _pooled(rows: list[BenchRow]) -> tuple[float, float, float]:
    """(mean PSNR over clips, token share and bpp over all their frames) of one setting."""
    frames = sum(r.frames for r in rows)
    return (
        float(np.mean([r.metrics["psnr"] for r in rows])),
        sum((1.0 if r.rate is None else r.rate) * r.frames for r in rows) / frames,
        sum(r.bpp * r.frames for r in rows) / frames,
    )


def quality_against_budget(rows: list[BenchRow], router: str) -> list[dict[str, Any]]:
    """InfoTok's protocol in codec terms, per `--quality` target: the set's mean PSNR at that
    target, and what one `--budget` for every clip (the router's curve, linear between the
    bench's budgets) spends for the same mean PSNR, in tokens and bits. `--quality` moves
    tokens across clips (as the paper's global ELBO allocation), a budget only within one.

    Only clips with a row at every budget and every target count; a target whose mean PSNR
    lies outside the budget curve has no budget figures (None)."""
    clips = sorted({r.clip for r in rows if r.method == "quality"})
    budgets = sorted({r.param for r in rows if r.method == router})
    by = {(r.clip, r.method, r.param): r for r in rows}
    clips = [c for c in clips if all((c, router, b) in by for b in budgets)]
    if not clips or len(budgets) < 2:
        return []
    curve = np.array([_pooled([by[(c, router, b)] for c in clips]) for b in budgets])
    out = []
    for q in sorted({r.param for r in rows if r.method == "quality"}):
        picked = [by.get((c, "quality", q)) for c in clips]
        if any(r is None for r in picked):
            continue
        psnr, share, bpp = _pooled([r for r in picked if r is not None])
        entry: dict[str, Any] = {
            "target_db": q,
            "mean_psnr": round(psnr, 3),
            "quality": {"tokens": round(share, 4), "bpp": round(bpp, 5)},
            "budget": None,
            "tokens_saved_percent": None,
            "bits_saved_percent": None,
        }
        # The first budget step whose mean PSNR brackets the target's.
        for k in range(len(budgets) - 1):
            lo, hi = curve[k, 0], curve[k + 1, 0]
            if min(lo, hi) <= psnr <= max(lo, hi) and hi != lo:
                f = (psnr - lo) / (hi - lo)
                budget = budgets[k] + f * (budgets[k + 1] - budgets[k])
                b_share, b_bpp = curve[k, 1:] + f * (curve[k + 1, 1:] - curve[k, 1:])
                entry["budget"] = {
                    "budget": round(budget, 4),
                    "tokens": round(float(b_share), 4),
                    "bpp": round(float(b_bpp), 5),
                }
                entry["tokens_saved_percent"] = round(100 * (1 - share / b_share), 2)
                entry["bits_saved_percent"] = round(100 * (1 - bpp / b_bpp), 2)
                break
        out.append(entry)
    return out
