"""Encoder-side refinement against none: two `infotok bench` runs of the same clips compared.

Per clip and budget: PSNR-RGB, MS-SSIM and bpp of each run; per clip the Bjøntegaard delta rate
of the refined curve against the plain one (bytes saved at equal quality, over their overlap);
mean and median over clips. Writes a JSON and a PNG of the mean curves beside x264's.

    python benchmarks/refine_compare.py PLAIN_DIR REFINED_DIR --out OUT.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from infotok_codec.bench.report import bd_rate

METRICS = ("psnr", "msssim")


def curves(report: dict, method: str, key: str = "param") -> dict[str, list[dict]]:
    """Each clip's points of `method` by rising `key` (a budget's full rate can cost fewer
    bytes than a lower budget, which pays for its mask), metrics flattened into the row."""
    out: dict[str, list[dict]] = {}
    for row in report["results"]:
        if row["method"] == method:
            out.setdefault(row["clip"], []).append({**row, **row["metrics"]})
    return {clip: sorted(rows, key=lambda r: r[key]) for clip, rows in out.items()}


def arrays(rows: list[dict], metric: str) -> tuple[np.ndarray, np.ndarray]:
    return np.array([r["bpp"] for r in rows]), np.array([r[metric] for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plain", type=Path)
    parser.add_argument("refined", type=Path)
    parser.add_argument("--method", default="elbo")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    plain_report, refined_report = (
        json.loads((d / "results.json").read_text()) for d in (args.plain, args.refined)
    )
    plain, refined = curves(plain_report, args.method), curves(refined_report, args.method)
    x264 = curves(plain_report, "x264", key="bpp")
    clips = sorted(plain)
    budgets = sorted({r["param"] for rows in plain.values() for r in rows})
    result: dict[str, object] = {"clips": {}, "budgets": {}, "bd_rate_refined_vs_plain": {}}
    for clip in clips:
        result["clips"][clip] = [  # type: ignore[index]
            {
                "budget": a["param"],
                **{f"{m}_plain": round(a[m], 4) for m in METRICS},
                **{f"{m}_refined": round(b[m], 4) for m in METRICS},
                "bpp_plain": round(a["bpp"], 6),
                "bpp_refined": round(b["bpp"], 6),
            }
            for a, b in zip(plain[clip], refined[clip], strict=True)
        ]
    for k, budget in enumerate(budgets):
        gains = [refined[c][k]["psnr"] - plain[c][k]["psnr"] for c in clips]
        extra = [refined[c][k]["bpp"] / plain[c][k]["bpp"] - 1 for c in clips]
        result["budgets"][str(budget)] = {  # type: ignore[index]
            "psnr_plain_mean": statistics.mean(plain[c][k]["psnr"] for c in clips),
            "psnr_refined_mean": statistics.mean(refined[c][k]["psnr"] for c in clips),
            "psnr_plain_median": statistics.median(plain[c][k]["psnr"] for c in clips),
            "psnr_refined_median": statistics.median(refined[c][k]["psnr"] for c in clips),
            "psnr_gain_mean": statistics.mean(gains),
            "psnr_gain_median": statistics.median(gains),
            "bpp_extra_mean": statistics.mean(extra),
        }
    for metric in METRICS:
        result["bd_rate_refined_vs_plain"][metric] = {  # type: ignore[index]
            c: bd_rate(arrays(plain[c], metric), arrays(refined[c], metric)) for c in clips
        }
    result["bd_rate_vs_x264"] = {
        "plain": plain_report["summary"]["bd_rate_vs_x264"],
        "refined": refined_report["summary"]["bd_rate_vs_x264"],
    }
    result["timing"] = {
        "plain": plain_report["summary"]["timing"][args.method],
        "refined": refined_report["summary"]["timing"][args.method],
    }
    result["settings"] = {"plain": str(args.plain), "refined": str(args.refined)}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, data in (("elbo", plain), ("elbo --refine 10", refined), ("x264", x264)):
        points = min(len(rows) for rows in data.values())
        bpp = [statistics.mean(data[c][k]["bpp"] for c in clips) for k in range(points)]
        db = [statistics.mean(data[c][k]["psnr"] for c in clips) for k in range(points)]
        ax.plot(bpp, db, marker="o", label=name)
    ax.set_xlabel("bpp (mean over clips)")
    ax.set_ylabel("PSNR-RGB, dB (mean over clips)")
    ax.set_xlim(0, 0.06)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out.with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    main()
