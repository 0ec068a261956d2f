"""Where `infotok encode` and `infotok decode` spend their time at a large frame size (1080p).

The source is made here from real video: the first frames of a dev clip, scaled to the size
(bicubic, PyAV) and written with x264 at CRF 16. Then, each in a fresh process:

- wall time and peak resident memory of `infotok encode SRC --router light --budget 0.8` and of
  `infotok decode` of its stream to .y4m (frames/s, MiB);
- the roofline: the network's GFLOP per frame (counted on the codec's tiles), this machine's
  float32 matmul rate, and the frames/s that rate allows, beside the measured frames/s;
- the same two, profiled in-process (cProfile): the time of each stage, summed over the calls
  of the functions that do it (tiles, chunks), as a share of the whole. Profiling costs a few
  per cent, so the shares, not these seconds, are the figures to read.

Run: ``python benchmarks/speed_large.py --threads 2 [--precision fp32|bf16] [--fast] [--out F]``
(`--fast`: also `decode --fast`, the fast decoder, timed the same way; writes
benchmarks/results/speed_large.json and .png; about 10 minutes at 1080p on 2 idle cores). The
network runs in bf16 where the CPU has native bf16 unless `--precision` says otherwise; the
roofline then uses the bf16 matmul rate.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import platform
import pstats
import shlex
import sys
import tempfile
from pathlib import Path

import av
import torch
from streaming_memory import peak_rss_mib

ROOT = Path(__file__).resolve().parents[1]

# Stage → the functions (file suffix, name) whose cumulative time is the stage's. None of them
# calls another of the same list, so the stages' times add up.
ENCODE_STAGES = {
    "read + scale input (PyAV)": [("video_reader.py", "_read_frames")],
    "probe (reads the input once more)": [("video_reader.py", "probe")],
    "conv encoder (pass 1, light features)": [("tokenizer.py", "features")],
    "light head": [("light_router.py", "error_map")],
    "compressor + FSQ (pass 2)": [("tokenizer.py", "encode_features"), ("tokenizer.py", "encode")],
    "token + mask coding": [("chunk_coding.py", "encode_chunk")],
}
DECODE_STAGES = {
    "token + mask decoding": [("decode.py", "_chunk_tokens")],
    "decoder network": [("tokenizer.py", "decode")],
    "write video (PyAV)": [("video_writer.py", "write")],
}


def network_gflop_per_frame(
    width: int, height: int, chunk_frames: int = 16, model_path: Path | None = None
) -> dict[str, float]:
    """The network's arithmetic per frame at this size (the shipped model's, or `model_path`'s),
    counted (FLOPs of every conv, matmul and attention, `torch.utils.flop_counter`) on the tiles
    the codec runs, on the meta device, so nothing is computed: `encode` is the conv encoder +
    compressor (a `light` encode's network work), `decode` the de-compressor + conv decoder."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    from infotok_codec.codec import tiles
    from infotok_codec.model import latent_shape, load_model

    model = copy.deepcopy(load_model(model_path).tokenizer).to("meta").eval()
    flops = {"encode": 0, "decode": 0}
    with torch.no_grad():
        for y0, y1, x0, x1 in tiles(height, width):
            size = (chunk_frames, y1 - y0, x1 - x0)
            with FlopCounterMode(display=False) as count:
                model.encode_features(model.features(torch.zeros(1, 3, *size, device="meta")))
            flops["encode"] += count.get_total_flops()
            indices = torch.zeros(1, *latent_shape(*size), dtype=torch.int64, device="meta")
            with FlopCounterMode(display=False) as count:
                model.decode(indices, None, size)
            flops["decode"] += count.get_total_flops()
    return {k: v / chunk_frames / 1e9 for k, v in flops.items()}


def matmul_gflops(threads: int, dtype: torch.dtype, n: int = 4096, repeats: int = 5) -> float:
    """This machine's matrix-multiply rate (GFLOP/s) in `dtype`: the ceiling for the network,
    whose time is almost all convolutions and matmuls."""
    import time

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - started) / 1e9


def roofline(width: int, height: int, threads: int, bf16: bool, measured: dict[str, float]) -> dict:
    """The frames/s the network's arithmetic allows at the machine's matmul rate (in the
    precision the network ran in), beside the measured frames/s and the share of that rate the
    whole command reached."""
    gflop = network_gflop_per_frame(width, height)
    peak = matmul_gflops(threads, torch.bfloat16 if bf16 else torch.float32)
    out: dict = {"matmul_gflops": round(peak, 1), "matmul_dtype": "bf16" if bf16 else "fp32"}
    for stage, per_frame in gflop.items():
        out[stage] = {
            "network_gflop_per_frame": round(per_frame, 2),
            "fps_bound": round(peak / per_frame, 3),
            "fps_measured": measured[stage],
            "share_of_matmul_rate": round(measured[stage] * per_frame / peak, 3),
        }
    return out


def make_source(src: Path, out: Path, frames: int, width: int, height: int) -> None:
    """The first `frames` frames of `src`, scaled to `width`×`height`, as x264 CRF 16 MP4."""
    with av.open(str(src)) as inp, av.open(str(out), "w") as dst:
        stream = dst.add_stream("libx264", rate=inp.streams.video[0].average_rate or 25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "16", "preset": "veryfast"}
        written = 0
        for frame in inp.decode(video=0):
            scaled = frame.reformat(width, height, "yuv420p", interpolation="BICUBIC")
            scaled.pts = written
            for packet in stream.encode(scaled):
                dst.mux(packet)
            written += 1
            if written == frames:
                break
        for packet in stream.encode():
            dst.mux(packet)
    if written < frames:
        raise SystemExit(f"{src} has only {written} frames")


def stage_seconds(stats: pstats.Stats, stages: dict[str, list[tuple[str, str]]]) -> dict:
    table = stats.stats  # type: ignore[attr-defined]
    out = {}
    for stage, functions in stages.items():
        out[stage] = sum(
            cumulative
            for (path, _, name), (_, _, _, cumulative, _) in table.items()
            for suffix, wanted in functions
            if name == wanted and path.endswith(suffix)
        )
    return out


def profiled(call: str, env: dict, stages: dict[str, list[tuple[str, str]]]) -> dict:
    profile = cProfile.Profile()
    profile.runctx(call, env, {})
    stats = pstats.Stats(profile)
    total = stats.total_tt  # type: ignore[attr-defined]
    seconds = stage_seconds(stats, stages)
    seconds["other"] = max(total - sum(seconds.values()), 0.0)
    return {
        "total_s": round(total, 2),
        "stages": {k: {"s": round(v, 2), "share": round(v / total, 3)} for k, v in seconds.items()},
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, key in zip(axes, ("encode_profile", "decode_profile"), strict=True):
        stages = result[key]["stages"]
        names = list(stages)
        ax.barh(names, [100 * stages[n]["share"] for n in names])
        ax.invert_yaxis()
        ax.set_xlabel("share of wall time (%)")
        ax.set_title(f"{key.split('_')[0]} {result['width']}×{result['height']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--clip", type=Path, default=ROOT.parent / "shared/data/dev/moviepy_sintel.mp4"
    )
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--precision",
        choices=("auto", "bf16", "fp32"),
        default="auto",
        help="the network's arithmetic (auto: bf16 where the CPU runs it natively)",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "speed_large.json"
    )
    parser.add_argument(
        "--fast", action="store_true", help="also time `decode --fast` (the fast decoder)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from infotok_codec.codec import decode_file, encode_file
    from infotok_codec.model import use_bf16

    bf16 = use_bf16(
        {"auto": None, "bf16": True, "fp32": False}[args.precision], torch.device("cpu")
    )

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        src, itok, y4m = work / "src.mp4", work / "out.itok", work / "out.y4m"
        make_source(args.clip, src, args.frames, args.width, args.height)
        flags = ["--threads", str(args.threads), "--bf16" if bf16 else "--fp32"]
        cli = [sys.executable, "-m", "infotok_codec"]
        enc = [*cli, "encode", str(src), str(itok), "--router", "light", "--budget", "0.8"]
        enc_peak, enc_s = peak_rss_mib([*enc, *flags, "--force"])
        dec = [*cli, "decode", str(itok), str(y4m), *flags, "--force"]
        dec_peak, dec_s = peak_rss_mib(dec)
        fast = None
        if args.fast:
            from infotok_codec.model import FAST_DECODER_PATH

            fast_peak, fast_s = peak_rss_mib([*dec, "--fast"])
            gflop = network_gflop_per_frame(args.width, args.height, model_path=FAST_DECODER_PATH)
            fast = {
                "seconds": round(fast_s, 2),
                "fps": round(args.frames / fast_s, 3),
                "peak_mib": round(fast_peak, 1),
                "network_gflop_per_frame": round(gflop["decode"], 2),
            }
        size = itok.stat().st_size
        env = {"encode_file": encode_file, "decode_file": decode_file, "src": src, "itok": itok}
        env["y4m"], env["bf16"] = y4m, bf16
        encode_profile = profiled(
            "encode_file(src, itok, router='light', budget=0.8, bf16=bf16, force=True)",
            env,
            ENCODE_STAGES,
        )
        decode_profile = profiled(
            "decode_file(itok, y4m, bf16=bf16, force=True)", env, DECODE_STAGES
        )
    result = {
        "command": "python " + shlex.join(sys.argv),
        "machine": {"processor": platform.processor(), "threads": args.threads},
        "precision": "bf16" if bf16 else "fp32",
        "clip": args.clip.name,
        "frames": args.frames,
        "width": args.width,
        "height": args.height,
        "bytes": size,
        "encode": {
            "seconds": round(enc_s, 2),
            "fps": round(args.frames / enc_s, 3),
            "peak_mib": round(enc_peak, 1),
        },
        "decode": {
            "seconds": round(dec_s, 2),
            "fps": round(args.frames / dec_s, 3),
            "peak_mib": round(dec_peak, 1),
        },
        **({"decode_fast": fast} if fast else {}),
        "roofline": roofline(
            args.width,
            args.height,
            args.threads,
            bf16,
            {"encode": round(args.frames / enc_s, 3), "decode": round(args.frames / dec_s, 3)},
        ),
        "encode_profile": encode_profile,
        "decode_profile": decode_profile,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out.with_suffix(".png"))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
