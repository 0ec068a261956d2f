"""`bench --qualities`: `--quality` encodes of each clip, and where their chunks land.

One search (`rate_control.QualitySearch`) serves every target of a clip, so decodes made for one
target are not made again for the next.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from infotok_codec.bench.set_budget import against_budget
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


def quality_against_budget(rows: list[BenchRow], router: str) -> list[dict[str, Any]]:
    """InfoTok's protocol for `--quality` (`set_budget.against_budget`): per target, the set's
    mean PSNR, and what one `--budget` for every clip spends for it. `--quality` moves tokens
    across clips, by a floor on each chunk rather than by error."""
    return against_budget(rows, "quality", router, "target_db")
