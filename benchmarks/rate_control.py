"""Rate control on the dev clips: where `--quality` lands, and how near `--target-size` and
`--bitrate` come to their targets.

For every clip in DEV (first `--frames` frames, short side 256, centre crop 256×256, as `bench`
uses them; written losslessly so the encoder reads exactly those frames): one pass-1 analysis
(`elbo` router), then
- `quality` at each of QUALITIES, one search shared by the targets (decodes made for one target
  serve the others); every file is decoded and each chunk's PSNR-RGB measured against its source
  chunk: in the window [Q, Q + 0.5] or not, and the chunks that cannot reach Q at full rate;
- `size` at targets spread over the clip's reachable range (geometrically, SIZE_SHARES of the
  way from the smallest file to the largest) and `bitrate` at BITRATES, one set of byte curves
  shared; the error of each file's real size against its target, for targets inside the range
  (out-of-range targets are listed with their warning).

    python benchmarks/rate_control.py [--model M] [--dev DIR] [--out JSON] [--threads 2]
        [--frames 32] [--clips a.mp4,b.mp4] [--modes quality,size]
    python benchmarks/rate_control.py --from-logs run1.err run2.err [--out JSON]

Each measured row is also printed to stderr as one JSON line; `--from-logs` assembles the
results from such logs (runs over parts of the clips, run side by side to share the machine).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from infotok_codec.bench.runner import BenchSettings, prepare_source
from infotok_codec.codec import KEY_SECONDS, Analysis, decode_file
from infotok_codec.errors import InfotokError
from infotok_codec.media import read_frames
from infotok_codec.metrics import psnr_pooled
from infotok_codec.model import load_model
from infotok_codec.rate import RateControl
from infotok_codec.routing import rate_control

ROOT = Path(__file__).resolve().parents[1]
QUALITIES = (22.0, 25.0, 28.0)
WINDOW_DB = 0.5
SIZE_SHARES = (0.25, 0.5, 0.75)
BITRATES = (5e3, 10e3, 20e3, 30e3)
CHUNK = 16
POSITIONS = CHUNK // 4 * (256 // 8) ** 2  # latent positions of a full chunk at 256×256

CODER = "context"  # the encoder's default coder: the one the files are written with


def chunk_psnr(decoded: np.ndarray, reference: np.ndarray) -> list[float]:
    return [
        psnr_pooled(decoded[s : s + CHUNK], reference[s : s + CHUNK])
        for s in range(0, len(reference), CHUNK)
    ]


def clip_rows(
    path: Path, model: Any, frames: int, work: Path, modes: tuple[str, ...]
) -> dict[str, Any]:
    reference, source = prepare_source(path, BenchSettings(frames=frames, size=256), work)
    out: dict[str, Any] = {"clip": path.name, "quality": [], "size": []}
    with Analysis(source, model, device="cpu") as analysis:
        search = rate_control.QualitySearch(analysis, "elbo")
        for q in QUALITIES if "quality" in modes else ():
            started = time.perf_counter()
            before = sum(len(m) for m in search.measured)
            itok = work / f"{path.stem}.q{q:g}.itok"
            enc = rate_control.write(
                analysis,
                itok,
                RateControl.quality(q),
                key_interval=KEY_SECONDS,
                search=search,
                force=True,
            )
            decoded_path = work / f"{path.stem}.q{q:g}.mkv"
            decode_file(itok, decoded_path, model=model, device="cpu", force=True)
            decoded = np.concatenate(list(read_frames(decoded_path, 64)))
            measured = chunk_psnr(decoded, reference)
            # A chunk that cannot reach q is one kept whole that decodes below it.
            reachable = [
                not (r == 1.0 and p < q) for p, r in zip(measured, enc.chunk_rates, strict=True)
            ]
            out["quality"].append(
                {
                    "target_db": q,
                    "chunk_psnr": [round(p, 3) for p in measured],
                    "chunk_psnr_in_search": [round(p, 3) for p in enc.chunk_psnr or []],
                    "chunk_rates": [round(r, 4) for r in enc.chunk_rates],
                    "reachable_chunks": sum(reachable),
                    "reachable_chunks_in_window": sum(
                        ok and q <= p <= q + WINDOW_DB
                        for p, ok in zip(measured, reachable, strict=True)
                    ),
                    "unreachable_chunks": enc.unreachable_chunks,
                    "file_psnr": round(psnr_pooled(decoded, reference), 3),
                    "bytes": enc.bytes,
                    "rate": round(enc.realised_rate, 4),
                    "new_decodes": sum(len(m) for m in search.measured) - before,
                    "seconds": round(time.perf_counter() - started, 1),
                }
            )
            print(json.dumps({"clip": path.name, **out["quality"][-1]}), file=sys.stderr)
        if "size" not in modes:
            return out
        # The curves must be the coder's that writes the files (the encoder's default).
        curves = rate_control.byte_curves(analysis, "elbo", CODER, KEY_SECONDS)
        probe = rate_control.ByteSpender.of(
            analysis, "elbo", CODER, RateControl.size(1), curves, KEY_SECONDS
        )
        smallest, largest = probe.smallest(), probe.largest()
        targets = [
            RateControl.size(round(smallest * (largest / smallest) ** f)) for f in SIZE_SHARES
        ]
        targets += [RateControl.bitrate(b) for b in BITRATES]
        for rate in targets:
            itok = work / f"{path.stem}.{rate.mode}.itok"
            goal = rate_control.target_bytes(analysis, rate)
            try:
                enc = rate_control.write(
                    analysis,
                    itok,
                    rate,
                    coder=CODER,
                    key_interval=KEY_SECONDS,
                    curves=curves,
                    force=True,
                )
            except InfotokError as exc:
                out["size"].append({"mode": rate.mode, "target": rate.target, "error": str(exc)})
                continue
            out["size"].append(
                {
                    "mode": rate.mode,
                    "target": rate.target,
                    "target_bytes": round(goal, 1),
                    "bytes": enc.bytes,
                    "error_percent": round(100 * (enc.bytes - goal) / goal, 3),
                    "in_range": enc.warning is None,
                    "warning": enc.warning,
                    "rate": round(enc.realised_rate, 4),
                }
            )
            print(json.dumps({"clip": path.name, **out["size"][-1]}), file=sys.stderr)
    return out


def summary(clips: list[dict[str, Any]]) -> dict[str, Any]:
    quality = {}
    for q in QUALITIES:
        rows = [r for c in clips for r in c["quality"] if r["target_db"] == q]
        if not rows:
            continue
        quality[f"{q:g}"] = {
            "chunks": sum(len(r["chunk_psnr"]) for r in rows),
            "reachable_chunks": sum(r["reachable_chunks"] for r in rows),
            "reachable_chunks_in_window": sum(r["reachable_chunks_in_window"] for r in rows),
            "unreachable_chunks": sum(r["unreachable_chunks"] for r in rows),
            # Reachable chunks above the window that already keep a single token: none fewer.
            "above_window_at_one_token": sum(
                p > q + WINDOW_DB and round(rate * POSITIONS) <= 1
                for r in rows
                for p, rate in zip(r["chunk_psnr"], r["chunk_rates"], strict=True)
            ),
            "mean_rate": round(float(np.mean([r["rate"] for r in rows])), 4),
            "decodes_per_chunk": round(
                sum(r["new_decodes"] for r in rows) / sum(len(r["chunk_psnr"]) for r in rows), 2
            ),
        }
    inside = [r for c in clips for r in c["size"] if r.get("in_range")]
    sizes = {}
    for mode in ("size", "bitrate"):
        errors = [abs(r["error_percent"]) for r in inside if r["mode"] == mode]
        sizes[mode] = {
            "targets_in_range": len(errors),
            "within_3_percent": sum(e <= 3.0 for e in errors),
            "max_abs_error_percent": round(max(errors), 3) if errors else None,
            "mean_abs_error_percent": round(float(np.mean(errors)), 3) if errors else None,
            "out_of_range": sum(
                1 for c in clips for r in c["size"] if r["mode"] == mode and not r.get("in_range")
            ),
        }
    return {"quality": quality, "size": sizes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--dev", type=Path, default=ROOT.parent / "shared" / "data" / "dev")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "rate_control.json"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--clips", default="", help="Only these clip names, comma-separated.")
    parser.add_argument("--from-logs", type=Path, nargs="*", default=None)
    parser.add_argument(
        "--modes", default="quality,size", help="quality (the search), size (size and bitrate)."
    )
    args = parser.parse_args()
    if args.from_logs:
        write_result(args, from_logs(args.from_logs), seconds=None)
        return
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    paths = sorted(args.dev.glob("*.mp4"))
    if args.clips:
        paths = [p for p in paths if p.name in args.clips.split(",")]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rate-control-") as tmp:
        modes = tuple(args.modes.split(","))
        clips = [clip_rows(p, model, args.frames, Path(tmp), modes) for p in paths]
    write_result(args, clips, round(time.perf_counter() - started, 1))


def from_logs(logs: list[Path]) -> list[dict[str, Any]]:
    """The per-clip results of the JSON lines in `logs`, in clip order."""
    clips: dict[str, dict[str, Any]] = {}
    for log in logs:
        for line in log.read_text().splitlines():
            if not line.startswith("{"):
                continue
            row = json.loads(line)
            clip = clips.setdefault(
                row["clip"], {"clip": row.pop("clip"), "quality": [], "size": []}
            )
            row.pop("clip", None)
            clip["quality" if "target_db" in row else "size"].append(row)
    return [clips[name] for name in sorted(clips)]


def write_result(
    args: argparse.Namespace, clips: list[dict[str, Any]], seconds: float | None
) -> None:
    model = load_model(args.model)
    result = {
        "command": "python benchmarks/rate_control.py " + " ".join(sys.argv[1:]),
        "model": model.name,
        "model_sha256": model.sha256.hex(),
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads",
        "frames": args.frames,
        "window_db": WINDOW_DB,
        "seconds": seconds,
        "summary": summary(clips),
        "clips": clips,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()
