"""Peak memory and time of encoder-side refinement on one 512×512×16 tile (the tile 1080p runs
in), with the decoder's activations held and recomputed (`refine.RECOMPUTE_ABOVE`).

Each setting runs in a fresh process, so its peak RSS is its own. Run:
``python benchmarks/refine_memory.py --steps 2 --threads 2 --out
benchmarks/results/refine_memory.json``
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

CLIP = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "dev" / "moviepy_sintel.mp4"


def probe(steps: int, recompute: bool, threads: int) -> dict[str, object]:
    """One refinement of the tile in this process: seconds, peak RSS, an index checksum."""
    import infotok_codec.model.refine as refinement
    from infotok_codec.media import read_frames
    from infotok_codec.model import autocast, load_model, refine_indices, use_bf16

    torch.set_num_threads(threads)
    tokenizer = load_model().tokenizer
    frames = next(read_frames(CLIP, 16, max_frames=16))
    video = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    video = torch.nn.functional.interpolate(video, size=(16, 512, 512), mode="trilinear")
    refinement.RECOMPUTE_ABOVE = 1 if recompute else video[0].numel() + 1
    device = torch.device("cpu")
    start = time.perf_counter()
    with autocast(device, use_bf16(None, device)):
        indices = refine_indices(tokenizer, video, steps)
    return {
        "recompute": recompute,
        "seconds": round(time.perf_counter() - start, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "index_checksum": int(indices.sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--probe", choices=["held", "recomputed"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(probe(args.steps, args.probe == "recomputed", args.threads)))
        return
    rows = []
    for setting in ("held", "recomputed"):
        command = [sys.executable, __file__, "--probe", setting]
        command += ["--steps", str(args.steps), "--threads", str(args.threads)]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    report = {
        "command": "python benchmarks/refine_memory.py " + " ".join(sys.argv[1:]),
        "tile": "16 frames of moviepy_sintel, scaled to 512x512",
        "steps": args.steps,
        "rows": rows,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
