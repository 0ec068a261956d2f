"""`bench --set-budget`: one budget spent over the whole set of clips (InfoTok's global ELBO
allocation), against the same budget spent clip by clip.

`elbo` gives each chunk of one video a rate in proportion to its full-rate error, scaled so the
video keeps `budget` of its positions. Over a set of clips (a dataset to tokenize, a library to
store) the same rule can run across every chunk of every clip, so a busy clip takes tokens a
flat one does not need: `set_counts` runs the router's own allocation over all of them.
`against_budget` then reads, for a method that moves tokens between clips (`global`, or
`--quality`), what one per-clip budget spends for the same mean PSNR over the set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from infotok_codec.routing import router as routing

if TYPE_CHECKING:
    from infotok_codec.bench.runner import BenchRow

METHOD = "global"
"""The rows' method name: the paper calls this allocation `global_elbo`."""


def set_counts(
    chunks: dict[str, tuple[list[int], list[float]]], budgets: Sequence[float]
) -> dict[str, dict[float, list[int]]]:
    """Per clip and budget, each chunk's kept positions from one `elbo` allocation over every
    chunk of every clip. `chunks` maps a clip to its chunks' (positions, mean full-rate error),
    as pass 1 saw them."""
    names = sorted(chunks)
    positions = [p for name in names for p in chunks[name][0]]
    errors = [e for name in names for e in chunks[name][1]]
    out: dict[str, dict[float, list[int]]] = {name: {} for name in names}
    for budget in budgets:
        counts = routing.allocate_counts("elbo", budget, positions, errors)
        start = 0
        for name in names:
            n = len(chunks[name][0])
            out[name][budget] = counts[start : start + n]
            start += n
    return out


def _pooled(rows: list[BenchRow]) -> tuple[float, float, float]:
    """(mean PSNR over clips, token share and bpp over all their frames) of one setting."""
    frames = sum(r.frames for r in rows)
    return (
        float(np.mean([r.metrics["psnr"] for r in rows])),
        sum((1.0 if r.rate is None else r.rate) * r.frames for r in rows) / frames,
        sum(r.bpp * r.frames for r in rows) / frames,
    )


def against_budget(
    rows: list[BenchRow], method: str, router: str, param_key: str
) -> list[dict[str, Any]]:
    """InfoTok's protocol in codec terms, per setting (`param`) of `method`: the set's mean PSNR
    at that setting, and what one `--budget` for every clip (the router's curve, linear between
    the bench's budgets) spends for the same mean PSNR, in tokens and bits. `method` moves
    tokens across clips; a per-clip budget moves them only within one. Each entry names the
    setting `param_key` (`target_db` for `--quality`, `set_budget` for `global`).

    Only clips with a row at every budget and every setting count; a setting whose mean PSNR
    lies outside the budget curve has no budget figures (None)."""
    clips = sorted({r.clip for r in rows if r.method == method})
    budgets = sorted({r.param for r in rows if r.method == router})
    by = {(r.clip, r.method, r.param): r for r in rows}
    clips = [c for c in clips if all((c, router, b) in by for b in budgets)]
    if not clips or len(budgets) < 2:
        return []
    curve = np.array([_pooled([by[(c, router, b)] for c in clips]) for b in budgets])
    out = []
    for param in sorted({r.param for r in rows if r.method == method}):
        picked = [by.get((c, method, param)) for c in clips]
        if any(r is None for r in picked):
            continue
        psnr, share, bpp = _pooled([r for r in picked if r is not None])
        entry: dict[str, Any] = {
            param_key: param,
            "mean_psnr": round(psnr, 3),
            method: {"tokens": round(share, 4), "bpp": round(bpp, 5)},
            "budget": None,
            "tokens_saved_percent": None,
            "bits_saved_percent": None,
        }
        # The first budget step whose mean PSNR brackets the setting's.
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


def global_against_budget(rows: list[BenchRow], router: str) -> list[dict[str, Any]]:
    """`against_budget` for `global`, plus, at each budget, the paired per-clip PSNR change
    from the same budget spent clip by clip (same total tokens): which clips gave, which took."""
    out = against_budget(rows, METHOD, router, "set_budget")
    by = {(r.clip, r.method, r.param): r for r in rows}
    for entry in out:
        b = entry["set_budget"]
        pairs = {
            c: (by[(c, METHOD, b)], by[(c, router, b)])
            for c in sorted({r.clip for r in rows if r.method == METHOD})
            if (c, METHOD, b) in by and (c, router, b) in by
        }
        entry["per_clip"] = {
            c: {
                "rate": None if g.rate is None else round(g.rate, 4),
                "psnr_change_db": round(g.metrics["psnr"] - e.metrics["psnr"], 3),
            }
            for c, (g, e) in pairs.items()
        }
    return out
