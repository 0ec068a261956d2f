"""Tokenizer quality and speed on the dev set (issue: the tokenizer's acceptance figures).

For every clip in DEV: the first 32 frames, short side scaled to 256 and centre-cropped to
256×256. Reports PSNR-RGB (one MSE over the clip, then averaged over clips) at full rate and at
rate 0.5 with positions chosen as the `elbo`/`fixed` routers choose them (three quarters on a
lattice, then the highest errors of the full-rate error map), by the error map alone (the
paper's rule), by the fixed spread order of the `uniform` router, and by plain raster order
(each chunk encoded knowing its keep-mask, as the codec does); and frames per second of an
`elbo` encode at rate 0.5 (full-rate error map, then the masked encode) and of a full-rate
decode.

    python benchmarks/tokenizer_quality.py [--model M] [--dev DIR] [--out JSON] [--threads 2]
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

from infotok_codec import router as routing
from infotok_codec.bench import reference_frames
from infotok_codec.codec import ChunkModel
from infotok_codec.metrics import psnr_pooled
from infotok_codec.tokenizer import latent_shape, load_model

ROOT = Path(__file__).resolve().parents[1]
MASKS = ("full", "elbo", "error", "spread", "raster")


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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    engine = ChunkModel(loaded, "cpu")
    rows = []
    encode_s = decode_s = 0.0
    frames_total = 0
    for clip in sorted(args.dev.iterdir()):
        video = reference_frames(clip, args.frames, args.size)
        row: dict[str, object] = {"clip": clip.name, "frames": len(video)}
        recon: dict[str, list[np.ndarray]] = {k: [] for k in MASKS}
        for start in range(0, len(video), 16):
            chunk = video[start : start + 16]
            shape = latent_shape(len(chunk), args.size, args.size)
            count = routing.keep_count(0.5, int(np.prod(shape)))
            t0 = time.perf_counter()
            error = engine.error_map(chunk)
            elbo_keep = routing.select_positions("fixed", error, shape, count)
            elbo_indices = engine.tokens(chunk, elbo_keep)
            encode_s += time.perf_counter() - t0
            masks = {
                "full": np.ones(shape, dtype=bool),
                "elbo": elbo_keep,
                "error": routing.lattice_then_error(error, shape, count, 0),
                "spread": routing.select_positions("uniform", None, shape, count),
                "raster": np.arange(np.prod(shape)).reshape(shape) < count,
            }
            for name, keep in masks.items():
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
    summary = {name: round(float(np.mean([r[f"psnr_{name}"] for r in rows])), 3) for name in MASKS}
    result = {
        "command": "python benchmarks/tokenizer_quality.py " + " ".join(sys.argv[1:]),
        "model": loaded.name,
        "model_sha256": loaded.sha256.hex(),
        "protocol": f"first {args.frames} frames, short side {args.size}, centre crop "
        f"{args.size}x{args.size}; PSNR-RGB over each clip, mean over clips; rate 0.5 keeps "
        "ceil(N/2) positions per 16-frame chunk",
        "mean_psnr": {
            "full_rate": summary["full"],
            "rate_0.5_elbo_positions": summary["elbo"],
            "rate_0.5_error_only": summary["error"],
            "rate_0.5_spread_order": summary["spread"],
            "rate_0.5_raster_order": summary["raster"],
        },
        "speed": {
            "threads": args.threads,
            "cpu": platform.processor() or platform.machine(),
            "encode_rate_0.5_elbo_fps": round(frames_total / encode_s, 2),
            "decode_fps": round(frames_total / decode_s, 2),
        },
        "clips": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["mean_psnr"], indent=2), json.dumps(result["speed"]))


if __name__ == "__main__":
    main()
