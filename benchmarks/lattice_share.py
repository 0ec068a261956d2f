"""How much of an error-routed mask should be lattice? (`router.ERROR_LATTICE_SHARE`)

For every clip in DEV (first 32 frames, short side 256, centre crop 256×256) and every chunk:
keep ⌈r·N⌉ positions for r in RATES, the first ⌊share·count/256⌋ from the spread order and the
rest by the full-rate error map, for each share in SHARES (0 = the paper's pure error order,
256 = the `uniform` router); encode the chunk knowing its mask, decode it, and code it as a
chunk record does (mask with its lattice implied, tokens by the default `adaptive` coder).
Reports PSNR-RGB (one MSE per clip, mean over clips) and the record's mask and token bytes as
bits per pixel, and each share's margin over the `uniform` curve at equal bits, paired per
clip (the uniform curve read at the share's bpp, linear in log bpp; mean, standard error,
wins).

    python benchmarks/lattice_share.py [--model M] [--dev DIR] [--out JSON] [--threads 2]
        [--frames 32] [--size 256]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from infotok_codec.bench import reference_frames
from infotok_codec.bench.report import paired_margin, quality_at
from infotok_codec.bitstream.entropy import encode_indices
from infotok_codec.bitstream.lattice import SHARE_DENOMINATOR
from infotok_codec.bitstream.mask_coder import encode_mask
from infotok_codec.codec import ChunkModel
from infotok_codec.metrics import psnr_pooled
from infotok_codec.model import latent_shape, load_model
from infotok_codec.routing import router as routing

ROOT = Path(__file__).resolve().parents[1]
SHARES = (0, 64, 128, 192, 224, 256)
RATES = (0.375, 0.5, 0.625)
CHUNK = 16


def margin_over_uniform(
    psnr: dict[tuple[float, int], list[float]],
    bpp: dict[tuple[float, int], list[float]],
    rate: float,
    share: int,
) -> dict[str, Any] | None:
    """Per clip: PSNR of (rate, share) minus the `uniform` curve's PSNR at the same bpp."""
    if share == SHARE_DENOMINATOR:
        return None
    diffs = []
    for i in range(len(psnr[(rate, share)])):
        points = sorted(
            (bpp[(r, SHARE_DENOMINATOR)][i], psnr[(r, SHARE_DENOMINATOR)][i]) for r in RATES
        )
        curve = (np.array([b for b, _ in points]), np.array([q for _, q in points]))
        uniform = quality_at(curve, bpp[(rate, share)][i])
        if uniform is not None:
            diffs.append(psnr[(rate, share)][i] - uniform)
    if len(diffs) < 2:
        return None
    return {"clips": len(diffs), **paired_margin(np.array(diffs))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--dev", type=Path, default=ROOT.parent / "shared" / "data" / "dev")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "lattice_share.json"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    engine = ChunkModel(loaded, "cpu")
    variants = [(r, s) for r in RATES for s in SHARES]
    psnr: dict[tuple[float, int], list[float]] = {v: [] for v in variants}
    bpp: dict[tuple[float, int], list[float]] = {v: [] for v in variants}
    rows: list[dict[str, object]] = []
    for clip in sorted(args.dev.iterdir()):
        video = reference_frames(clip, args.frames, args.size)
        recon: dict[tuple[float, int], list[np.ndarray]] = {v: [] for v in variants}
        bits = dict.fromkeys(variants, 0)
        for start in range(0, len(video), CHUNK):
            chunk = video[start : start + CHUNK]
            shape = latent_shape(len(chunk), args.size, args.size)
            error = engine.error_map(chunk)
            for rate, share in variants:
                keep = routing.lattice_then_error(
                    error, shape, routing.keep_count(rate, int(np.prod(shape))), share
                )
                indices = engine.tokens(chunk, keep)
                recon[(rate, share)].append(
                    engine.frames(indices, keep, len(chunk), args.size, args.size)
                )
                # What a chunk record stores: the mask with its lattice implied, and the kept
                # positions' indices under the default (adaptive) coder.
                mask_bytes = encode_mask(keep, share)
                token_bytes = encode_indices(indices[keep], "adaptive", engine.tables, keep)
                bits[(rate, share)] += 8 * (len(mask_bytes) + len(token_bytes))
        pixels = len(video) * args.size * args.size
        row: dict[str, object] = {"clip": clip.name}
        for v in variants:
            psnr[v].append(psnr_pooled(np.concatenate(recon[v]), video))
            bpp[v].append(bits[v] / pixels)
            row[f"r{v[0]}_s{v[1]}"] = [round(psnr[v][-1], 3), round(bpp[v][-1], 5)]
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    means = [
        {
            "rate": rate,
            "share": share,
            "psnr": round(float(np.mean(psnr[(rate, share)])), 3),
            "bpp": round(float(np.mean(bpp[(rate, share)])), 5),
            "over_uniform_at_equal_bits_db": margin_over_uniform(psnr, bpp, rate, share),
        }
        for rate, share in variants
    ]
    result = {
        "command": "python benchmarks/lattice_share.py " + " ".join(sys.argv[1:]),
        "model": loaded.name,
        "model_sha256": loaded.sha256.hex(),
        "protocol": f"first {args.frames} frames, short side {args.size}, centre crop "
        f"{args.size}x{args.size}; chunks of {CHUNK} frames; share in 256ths of the kept count; "
        "PSNR-RGB over each clip, mean over clips; bpp of mask + token payloads",
        "cpu": platform.processor() or platform.machine(),
        "mean": means,
        "clips": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for m in means:
        print(
            f"rate {m['rate']:.3f} share {m['share']:3d}: {m['psnr']:.3f} dB {m['bpp']:.5f} bpp, "
            f"over uniform at equal bits {m['over_uniform_at_equal_bits_db']}"
        )


if __name__ == "__main__":
    main()
