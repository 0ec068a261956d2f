"""Peak memory of `infotok encode` and `infotok decode` for a short and a 10× longer clip.

Encoding streams (pass 1 spills error maps to disk, pass 2 reads the input again), so peak memory
should not grow with the video's length. Clips are generated here: 256×256 moving patterns, 200
and 2,000 frames.

    python benchmarks/streaming_memory.py [--model M] [--out JSON]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def make_clip(path: Path, frames: int, size: int = 256) -> None:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for t in range(frames):
            luma = 127 + 100 * np.sin((x + 3 * t) / 9.0) * np.cos((y - 2 * t) / 13.0)
            rgb = np.stack([luma, np.roll(luma, t, 0), 255 - luma], axis=-1).clip(0, 255)
            frame = av.VideoFrame.from_ndarray(rgb.astype(np.uint8), format="rgb24")
            frame.pts = t
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def peak_rss_mib(args: list[str]) -> tuple[float, float]:
    """Run one command in a fresh process; its peak resident memory (MiB) and wall seconds."""
    code = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        f"r = subprocess.run({args!r}); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, "
        "time.perf_counter() - t); sys.exit(r.returncode)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    peak, seconds = out.stdout.split()
    return float(peak), float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "streaming_memory.json"
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    model = ["--model", str(args.model)] if args.model else []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for frames in (200, 2000):
            src = Path(tmp) / f"clip{frames}.mp4"
            make_clip(src, frames)
            itok = Path(tmp) / f"clip{frames}.itok"
            cli = [sys.executable, "-m", "infotok_codec"]
            enc_peak, enc_s = peak_rss_mib(
                [
                    *cli,
                    "encode",
                    str(src),
                    str(itok),
                    "--budget",
                    "0.5",
                    "--quiet",
                    "--threads",
                    str(args.threads),
                    *model,
                ]
            )
            dec_peak, dec_s = peak_rss_mib(
                [
                    *cli,
                    "decode",
                    str(itok),
                    str(Path(tmp) / f"rec{frames}.mp4"),
                    "--quiet",
                    "--threads",
                    str(args.threads),
                    *model,
                ]
            )
            row = {
                "frames": frames,
                "encode_peak_mib": round(enc_peak, 1),
                "encode_seconds": round(enc_s, 1),
                "decode_peak_mib": round(dec_peak, 1),
                "decode_seconds": round(dec_s, 1),
                "itok_bytes": itok.stat().st_size,
            }
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    short, long = rows
    result = {
        "command": "python benchmarks/streaming_memory.py " + " ".join(sys.argv[1:]),
        "clips": "256x256 generated moving pattern, elbo router, budget 0.5",
        "runs": rows,
        "encode_peak_ratio_2000_vs_200": round(
            long["encode_peak_mib"] / short["encode_peak_mib"], 3
        ),
        "decode_peak_ratio_2000_vs_200": round(
            long["decode_peak_mib"] / short["decode_peak_mib"], 3
        ),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
