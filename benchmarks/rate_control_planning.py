"""How long `--target-size`/`--bitrate` pass 2 spends planning, against the video's length.

Pass 2 re-solves a budget for every chunk from the bytes already written (`ByteSpender.feedback`),
each by bisection over the chunks left. This times that planning alone, without the network, on
synthetic byte curves shaped like real ones (a count of one position and each of the sampled
rates; bytes rising by 100–3,000 a step) for videos of N chunks, and pass 2 as `Analysis.write`
runs it, each chunk costing what its curve says:

    python benchmarks/rate_control_planning.py --chunks 50,200,1000,2000 \
        --out benchmarks/results/rate_control_planning.json

Run it against another checkout with PYTHONPATH=that/checkout to compare implementations.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np

from infotok_codec.routing.rate_control import SIZE_SAMPLE_RATES, ByteCurve, ByteSpender
from infotok_codec.routing.router import keep_count

POSITIONS = 16 * 32 * 32  # a 16-frame chunk at 256×256: 4 × 32 × 32 latent positions


def spender(chunks: int, seed: int = 0) -> ByteSpender:
    rng = np.random.default_rng(seed)
    curves = []
    for _ in range(chunks):
        counts = sorted({1} | {keep_count(r, POSITIONS) for r in SIZE_SAMPLE_RATES})
        steps = rng.uniform(100, 3000, len(counts)).cumsum().astype(int)
        curves.append(ByteCurve(tuple(counts), tuple(int(b) for b in steps)))
    errors = list(rng.uniform(0.5, 2.0, chunks))
    return ByteSpender("elbo", [POSITIONS] * chunks, errors, 1000, curves)


def plan(chunks: int) -> dict[str, float]:
    s = spender(chunks)
    target = (s.smallest() + s.largest()) / 2
    count_of = s.feedback(target)
    started = time.perf_counter()
    written = 0.0
    for k, curve in enumerate(s.curves):
        written += round(curve.at(count_of(k, round(written))))
    seconds = time.perf_counter() - started
    return {
        "chunks": chunks,
        "seconds": round(seconds, 3),
        "ms_per_chunk": round(1000 * seconds / chunks, 3),
        "target_bytes": round(target),
        "planned_bytes": round(s.framing + written),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", default="50,200,1000,2000")
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--compare", type=Path, help="Another run's JSON: plot both beside --out, as .png."
    )
    args = parser.parse_args()
    import infotok_codec

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=Path(infotok_codec.__file__).parent,
    ).stdout.strip()
    rows = []
    for n in (int(v) for v in args.chunks.split(",")):
        rows.append(plan(n))
        print(json.dumps(rows[-1]), flush=True)
    report = {
        "command": "python " + " ".join(__import__("sys").argv),
        "commit": commit,
        "rows": rows,
    }
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if args.out and args.compare:
        plot([json.loads(args.compare.read_text()), report], args.out.with_suffix(".png"))


def plot(reports: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for report in reports:
        rows = report["rows"]
        ax.plot(
            [r["chunks"] for r in rows],
            [r["seconds"] for r in rows],
            "o-",
            label=f"commit {report['commit']}",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("chunks in the video (16 frames each)")
    ax.set_ylabel("pass-2 planning, seconds")
    ax.set_title("--target-size / --bitrate planning time")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
