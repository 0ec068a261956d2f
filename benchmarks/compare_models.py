"""Two models' `infotok bench` results on the same clips, compared at equal bits (issue 12).

A new network can gain PSNR at every budget and still spend more bytes for it (its tokens
carry more information), so a budget-by-budget table alone does not say it is better. For one
router this prints, as mean and median over clips: the PSNR change at each budget with the bpp
ratio, and the PSNR change at equal bpp (the candidate's curve, its upper envelope in bpp order,
read at the baseline's bpp, linear in log bpp, where that bpp lies inside it); then the
Bjøntegaard delta rate of the candidate against the baseline (`infotok_codec.bench.bd_rate`:
negative saves bits), per clip with its PSNR changes. `--out` writes every per-clip figure.

    python benchmarks/compare_models.py BASELINE_DIR CANDIDATE_DIR [--router elbo] [--out JSON]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from infotok_codec.bench.report import bd_rate, quality_at

Curve = tuple[np.ndarray, np.ndarray]


def curves(results_dir: Path, router: str) -> tuple[dict[str, Curve], dict[str, Any]]:
    """Per clip (bpp, PSNR) sorted by budget, and the report's settings."""
    report = json.loads((results_dir / "results.json").read_text())
    points: dict[str, list[tuple[float, float, float]]] = {}
    for row in report["results"]:
        if row["method"] == router:
            points.setdefault(row["clip"], []).append(
                (row["param"], row["bpp"], row["metrics"]["psnr"])
            )
    out = {}
    for clip, rows in points.items():
        rows.sort()
        out[clip] = (np.array([r[1] for r in rows]), np.array([r[2] for r in rows]))
    return out, report["settings"]


def envelope(curve: Curve) -> Curve:
    """The curve in bpp order, each point's PSNR the best at that bpp or below: a clip can
    spend fewer bits at a higher budget (the routers' masks cost bits), and reading the
    candidate between such points would compare against a point its own curve beats."""
    rates, quality = curve
    order = np.argsort(rates, kind="stable")
    return rates[order], np.maximum.accumulate(quality[order])


def compare(base: dict[str, Curve], cand: dict[str, Curve]) -> dict[str, dict[str, Any]]:
    """Per clip: PSNR and bpp deltas at each budget, PSNR at equal bpp, BD-rate."""
    per_clip = {}
    for clip in sorted(base.keys() & cand.keys()):
        (rb, qb), (rc, qc) = base[clip], cand[clip]
        at_equal = [quality_at(envelope((rc, qc)), float(r)) for r in rb]
        per_clip[clip] = {
            "psnr_delta": (qc - qb).round(4).tolist(),
            "bpp_ratio": (rc / rb).round(4).tolist(),
            "psnr_delta_equal_bpp": [
                None if q is None else round(q - float(b), 4)
                for q, b in zip(at_equal, qb, strict=True)
            ],
            "bd_rate_percent": bd_rate((rb, qb), (rc, qc)),
        }
    return per_clip


def summary(per_clip: dict[str, dict[str, Any]], key: str, i: int | None) -> str:
    values = [c[key] if i is None else c[key][i] for c in per_clip.values()]
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    return f"{statistics.mean(values):+.3f} / {statistics.median(values):+.3f} ({len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("baseline", type=Path)
    parser.add_argument("candidate", type=Path)
    parser.add_argument("--router", default="elbo")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    base, base_settings = curves(args.baseline, args.router)
    cand, cand_settings = curves(args.candidate, args.router)
    if not base.keys() & cand.keys():
        raise SystemExit(f"error: no clip has {args.router} rows in both result folders")
    budgets = base_settings["budgets"]
    if cand_settings["budgets"] != budgets or cand_settings["frames"] != base_settings["frames"]:
        raise SystemExit("error: the two runs used different budgets or frame counts")
    per_clip = compare(base, cand)
    print(f"{args.router}: candidate against baseline, mean / median over clips (clips)")
    print("budget | PSNR at the budget (dB) | bpp ratio | PSNR at equal bpp (dB)")
    for i, budget in enumerate(budgets):
        print(
            f"{budget} | {summary(per_clip, 'psnr_delta', i)} | "
            f"{summary(per_clip, 'bpp_ratio', i)} | {summary(per_clip, 'psnr_delta_equal_bpp', i)}"
        )
    print(f"BD-rate (%): {summary(per_clip, 'bd_rate_percent', None)}")
    for clip, c in per_clip.items():
        bd = "—" if c["bd_rate_percent"] is None else f"{c['bd_rate_percent']:+.1f}%"
        deltas = " ".join(f"{d:+.2f}" for d in c["psnr_delta"])
        print(f"  {clip}: {deltas} dB at the budgets; BD-rate {bd}")
    if args.out:
        base_model, cand_model = base_settings["model_sha256"], cand_settings["model_sha256"]
        args.out.write_text(
            json.dumps(
                {
                    "baseline": {"dir": str(args.baseline), "model": base_model},
                    "candidate": {"dir": str(args.candidate), "model": cand_model},
                    "router": args.router,
                    "budgets": budgets,
                    "per_clip": per_clip,
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
