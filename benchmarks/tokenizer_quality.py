"""Tokenizer quality and speed on the dev set (issue: the tokenizer's acceptance figures).

For every clip in DEV: the first 32 frames, short side scaled to 256 and centre-cropped to
256×256. Reports PSNR-RGB (one MSE over the clip; mean and median over clips, and per clip) at
full rate, at rate 0.75 and 0.5 with positions chosen as the `elbo`/`fixed` routers choose them
(three quarters on a lattice, then the highest errors of the full-rate error map), and at rate
0.5 by the error map alone (the paper's rule), by the fixed spread order of the `uniform` router,
and by plain raster order (each chunk encoded knowing its keep-mask, as the codec does); and
frames per second of an `elbo` encode at rate 0.5 (full-rate error map, then the masked encode)
and of a full-rate decode. `--masks full,elbo` measures a subset (a quick comparison of models).

    python benchmarks/tokenizer_quality.py [--model M] [--dev DIR] [--out JSON] [--threads 2]
        [--precision fp32|bf16]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from infotok_codec.bench import reference_frames
from infotok_codec.codec import ChunkModel
from infotok_codec.metrics import psnr_pooled
from infotok_codec.model import latent_shape, load_model
from infotok_codec.routing import router as routing

ROOT = Path(__file__).resolve().parents[1]
MASKS = ("full", "elbo_0.75", "elbo", "error", "spread", "raster")
SUMMARY_NAMES = {
    "full": "full_rate",
    "elbo_0.75": "rate_0.75_elbo_positions",
    "elbo": "rate_0.5_elbo_positions",
    "error": "rate_0.5_error_only",
    "spread": "rate_0.5_spread_order",
    "raster": "rate_0.5_raster_order",
}


def keep_mask(name: str, error: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """The keep-mask `(T', h, w)` bool that row `name` decodes a chunk with."""
    n = int(np.prod(shape))
    half = routing.keep_count(0.5, n)
    if name == "full":
        return np.ones(shape, dtype=bool)
    if name == "elbo_0.75":
        return routing.select_positions("fixed", error, shape, routing.keep_count(0.75, n))
    if name == "elbo":
        return routing.select_positions("fixed", error, shape, half)
    if name == "error":
        return routing.lattice_then_error(error, shape, half, 0)
    if name == "spread":
        return routing.select_positions("uniform", None, shape, half)
    return np.arange(n).reshape(shape) < half


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--dev", type=Path, default=ROOT.parent / "shared" / "data" / "dev")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "tokenizer_quality.json"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--masks", default=",".join(MASKS), help="a subset of " + ",".join(MASKS))
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="the network's arithmetic (fp32, the reference models are compared in, by default)",
    )
    args = parser.parse_args()
    names = [m for m in MASKS if m in args.masks.split(",")]
    if not names or set(args.masks.split(",")) - set(MASKS):
        parser.error(f"--masks: choose from {','.join(MASKS)}")
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    engine = ChunkModel(loaded, "cpu", bf16=args.precision == "bf16")
    rows = []
    encode_s = decode_s = 0.0
    frames_total = 0
    for clip in sorted(args.dev.iterdir()):
        video = reference_frames(clip, args.frames, args.size)
        row: dict[str, object] = {"clip": clip.name, "frames": len(video)}
        recon: dict[str, list[np.ndarray]] = {k: [] for k in names}
        for start in range(0, len(video), 16):
            chunk = video[start : start + 16]
            shape = latent_shape(len(chunk), args.size, args.size)
            t0 = time.perf_counter()
            error = engine.error_map(chunk)
            elbo_keep = keep_mask("elbo", error, shape)
            elbo_indices = engine.tokens(chunk, elbo_keep)
            encode_s += time.perf_counter() - t0
            for name in names:
                keep = elbo_keep if name == "elbo" else keep_mask(name, error, shape)
                indices = elbo_indices if name == "elbo" else engine.tokens(chunk, keep)
                t0 = time.perf_counter()
                out = engine.frames(indices, keep, len(chunk), args.size, args.size)
                if name == "full":
                    decode_s += time.perf_counter() - t0
                recon[name].append(out)
            frames_total += len(chunk)
        for name, parts in recon.items():
            row[f"psnr_{name}"] = round(psnr_pooled(np.concatenate(parts), video), 3)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)

    def over_clips(name: str, reduce: object) -> float:
        return round(float(reduce([r[f"psnr_{name}"] for r in rows])), 3)  # type: ignore[operator]

    result = {
        "command": "python benchmarks/tokenizer_quality.py " + " ".join(sys.argv[1:]),
        "model": loaded.name,
        "model_sha256": loaded.sha256.hex(),
        "precision": engine.precision,
        "protocol": f"first {args.frames} frames, short side {args.size}, centre crop "
        f"{args.size}x{args.size}; PSNR-RGB over each clip, mean over clips; rate 0.5 keeps "
        "ceil(N/2) positions per 16-frame chunk",
        "mean_psnr": {SUMMARY_NAMES[m]: over_clips(m, np.mean) for m in names},
        "median_psnr": {SUMMARY_NAMES[m]: over_clips(m, np.median) for m in names},
        "speed": {
            "threads": args.threads,
            "cpu": platform.processor() or platform.machine(),
            "encode_rate_0.5_elbo_fps": round(frames_total / encode_s, 2),
            "decode_fps": round(frames_total / decode_s, 2) if decode_s else None,
        },
        "clips": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("mean_psnr", "median_psnr", "speed")}, indent=2))


if __name__ == "__main__":
    main()
