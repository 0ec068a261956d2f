"""How much moving tokens between clips can buy: the headroom of a set-level allocation.

For every clip in DEV (first `--frames` frames, short side 256, centre crop 256×256, 16-frame
chunks), each chunk is encoded and decoded for real at every rate in RATES (positions as the
`fixed`/`elbo` routers choose them, encoded knowing the mask), giving its squared error at each
rate. From those measured points, at each budget B in BUDGETS (the same total tokens, up to
the sampled rates' granularity: each row's `tokens` says what it spent):

- `per_clip`: every chunk at rate B (one budget per clip, `fixed`);
- `elbo_set`: each chunk at the sampled rate nearest the `elbo` allocation over all chunks of
  all clips (rate ∝ the chunk's mean full-rate error). Snapping to the samples costs it a
  little; `bench --set-budget` writes the exact allocation to real files for the measure;
- `best_set`: an allocation of the sampled rates for the set's mean PSNR (PSNR per clip from
  its pooled MSE), found greedily by the largest gain in the objective per token: what a
  router that knew each chunk's curve could reach (greedy, so a lower bound on the optimum);
- `best_mse`: the allocation that minimises the set's total squared error instead (the oracle
  of `bench --oracle`, over the whole set): what a Lagrangian on squared error does to the
  mean of PSNRs.

Tokens are latent positions kept (no bits: every variant uses the same coder). Mean PSNR over
the clips, and each clip's rate and PSNR under each allocation.

    python benchmarks/set_allocation.py [--model M] [--dev DIR] [--out JSON] [--threads 2]
        [--frames 64]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from infotok_codec.bench import reference_frames
from infotok_codec.codec import ChunkModel
from infotok_codec.media import find_videos
from infotok_codec.model import latent_shape, load_model
from infotok_codec.routing import router as routing

ROOT = Path(__file__).resolve().parents[1]
RATES = (1 / 16, 1 / 8, 1 / 4, 3 / 8, 1 / 2, 5 / 8, 3 / 4, 1.0)
BUDGETS = (0.25, 0.375, 0.5, 0.625, 0.75)
CHUNK = 16


@dataclass
class Chunk:
    """One chunk's measured curve: kept count and squared-error sum at each of RATES."""

    clip: int  # index into the sorted clip names
    values: int  # pixel values (frames × H × W × 3), to pool a clip's MSE
    counts: list[int]
    sse: list[float]
    mean_error: float  # mean full-rate error (what `elbo` allocates by)


def measure(engine: ChunkModel, video: np.ndarray, clip: int, size: int) -> list[Chunk]:
    chunks = []
    for start in range(0, len(video), CHUNK):
        frames = video[start : start + CHUNK]
        shape = latent_shape(len(frames), size, size)
        error = engine.error_map(frames)
        counts, sse = [], []
        for rate in RATES:
            count = routing.keep_count(rate, error.size)
            keep = routing.select_positions("fixed", error, shape, count)
            out = engine.frames(engine.tokens(frames, keep), keep, len(frames), size, size)
            sse.append(float(np.sum((out.astype(np.float64) - frames) ** 2)))
            counts.append(count)
        mean_error = float(error.mean(dtype=np.float64))
        chunks.append(Chunk(clip, frames.size, counts, sse, mean_error))
    return chunks


def mean_psnr(chunks: list[Chunk], choice: list[int], clips: int) -> tuple[float, list[float]]:
    sse, values = np.zeros(clips), np.zeros(clips)
    for c, k in zip(chunks, choice, strict=True):
        sse[c.clip] += c.sse[k]
        values[c.clip] += c.values
    psnr = [10 * math.log10(255**2 / max(s / v, 1e-10)) for s, v in zip(sse, values, strict=True)]
    return float(np.mean(psnr)), psnr


def greedy(chunks: list[Chunk], clips: int, target: float, objective: str) -> list[int]:
    """From every chunk at the lowest rate, repeatedly raise the chunk (to any higher sampled
    rate) whose step gains the most objective per token, while the tokens fit `target`."""
    choice = [0] * len(chunks)
    used = sum(c.counts[0] for c in chunks)

    def score(ch: list[int]) -> float:
        if objective == "psnr":
            return mean_psnr(chunks, ch, clips)[0]
        return -sum(c.sse[k] for c, k in zip(chunks, ch, strict=True))

    current = score(choice)
    while True:
        best = None
        for i, c in enumerate(chunks):
            for k in range(choice[i] + 1, len(RATES)):
                extra = c.counts[k] - c.counts[choice[i]]
                if used + extra > target:
                    break
                trial = choice.copy()
                trial[i] = k
                gain = (score(trial) - current) / extra
                if best is None or gain > best[0]:
                    best = (gain, i, k, extra)
        if best is None or best[0] <= 0:
            return choice
        _, i, k, extra = best
        choice[i] = k
        used += extra
        current = score(choice)


def nearest(rate: float) -> int:
    return int(np.argmin([abs(r - rate) for r in RATES]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--dev", type=Path, default=ROOT.parent / "shared" / "data" / "dev")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "set_allocation.json"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frames", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    engine = ChunkModel(loaded, "cpu")
    size = 256
    names = sorted(p.name for p in find_videos([args.dev]))
    started = time.perf_counter()
    chunks: list[Chunk] = []
    for i, name in enumerate(names):
        chunks += measure(engine, reference_frames(args.dev / name, args.frames, size), i, size)
        print(f"measured {name}", file=sys.stderr)
    total = sum(c.counts[-1] for c in chunks)
    rows = []
    for budget in BUDGETS:
        per_clip = [RATES.index(budget)] * len(chunks)
        counts = routing.allocate_counts(
            "elbo", budget, [c.counts[-1] for c in chunks], [c.mean_error for c in chunks]
        )
        elbo_set = [nearest(n / c.counts[-1]) for n, c in zip(counts, chunks, strict=True)]
        target = sum(c.counts[k] for c, k in zip(chunks, per_clip, strict=True))
        best_set = greedy(chunks, len(names), target, "psnr")
        best_mse = greedy(chunks, len(names), target, "mse")
        row: dict[str, object] = {"budget": budget}
        for label, choice in (
            ("per_clip", per_clip),
            ("elbo_set", elbo_set),
            ("best_set", best_set),
            ("best_mse", best_mse),
        ):
            mean, per = mean_psnr(chunks, choice, len(names))
            tokens = sum(c.counts[k] for c, k in zip(chunks, choice, strict=True)) / total
            clip_rates = [
                sum(c.counts[k] for c, k in zip(chunks, choice, strict=True) if c.clip == j)
                / sum(c.counts[-1] for c in chunks if c.clip == j)
                for j in range(len(names))
            ]
            row[label] = {
                "mean_psnr": round(mean, 3),
                "tokens": round(tokens, 4),
                "clips": {
                    n: {"rate": round(r, 4), "psnr": round(p, 3)}
                    for n, r, p in zip(names, clip_rates, per, strict=True)
                },
            }
        rows.append(row)
        print(
            json.dumps(
                {"budget": budget}
                | {k: row[k]["mean_psnr"] for k in ("per_clip", "elbo_set", "best_set", "best_mse")}  # type: ignore[index]
            ),
            file=sys.stderr,
        )
    result = {
        "command": " ".join(["python", *sys.argv]),
        "model": loaded.name,
        "model_sha256": loaded.sha256.hex(),
        "precision": engine.precision,
        "machine": f"{platform.machine()}, {args.threads} threads",
        "frames": args.frames,
        "rates": list(RATES),
        "seconds": round(time.perf_counter() - started, 1),
        "budgets": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
