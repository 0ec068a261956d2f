"""Does `torch.compile` (inductor) speed up the decoder network on the CPU?

The speed section of benchmarks/README.md says the decoder's convolutions run near the matmul
rate and the elementwise work between them (norms, SiLU, casts, pads) takes the rest, which a
compiler could fuse. This times the shipped decoder network on one 256×256, 16-frame chunk
(the codec's default chunk): eager, the whole decoder compiled, and each residual block compiled
alone (the shuffles and reordered weights between blocks left eager). Interleaved, `--repeats`
times each, after one warm-up call; the compiled outputs are checked against eager.

    python benchmarks/torch_compile.py --threads 1 --out benchmarks/results/torch_compile.json

writes that JSON and a PNG beside it.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from infotok_codec.model import load_model
from infotok_codec.model.precision import native_bf16


def timed(fn: Any, z: torch.Tensor) -> tuple[float, torch.Tensor]:
    started = time.perf_counter()
    out = fn(z)
    return time.perf_counter() - started, out


def plot(result: dict[str, Any], path: Path) -> None:
    """Each variant's times a call, beside eager's (one dot a repeat, a bar at the median)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    names = list(result["seconds"])
    for x, name in enumerate(names):
        ax.bar(x, result["median_seconds"][name], color="#9ab", width=0.6)
        ax.plot([x] * len(result["seconds"][name]), result["seconds"][name], "k.", ms=4)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("seconds a 256×256×16 chunk")
    failed = ", ".join(f"{k} failed" for k in result["failures"])
    ax.set_title(f"decoder network, {result['precision']}, torch {result['torch']}  {failed}")
    ax.title.set_fontsize(8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokenizer = load_model().tokenizer
    video = torch.rand(1, 3, 16, 256, 256) * 2 - 1
    with torch.no_grad():
        codes = tokenizer.fsq.indices_to_codes(tokenizer.encode(video))
        z = tokenizer.decompressor(tokenizer.from_code(codes).permute(0, 4, 1, 2, 3))
        decoder = tokenizer.decoder
        variants: dict[str, Any] = {"eager": decoder}
        failures: dict[str, str] = {}
        compile_s: dict[str, float] = {}
        try:
            whole = torch.compile(copy.deepcopy(decoder), dynamic=False)
            compile_s["whole"], _ = timed(whole, z)
            variants["whole"] = whole
        except Exception as exc:  # the failure is the finding
            failures["whole"] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        blocks = copy.deepcopy(decoder)
        for stage in (blocks.stage2, blocks.stage1):
            for i, block in enumerate(stage):
                stage[i] = torch.compile(block, dynamic=False)
        compile_s["blocks"], _ = timed(blocks, z)
        variants["blocks"] = blocks
        reference = decoder(z)
        seconds: dict[str, list[float]] = {name: [] for name in variants}
        difference: dict[str, float] = {}
        for _ in range(args.repeats):
            for name, fn in variants.items():
                spent, out = timed(fn, z)
                seconds[name].append(round(spent, 4))
                difference[name] = float((out - reference).abs().max())
    medians = {name: sorted(s)[len(s) // 2] for name, s in seconds.items()}
    result = {
        "command": "python benchmarks/torch_compile.py "
        f"--threads {args.threads} --repeats {args.repeats} --out {args.out}",
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "native_bf16": native_bf16(torch.device("cpu")),
        "precision": "fp32",
        "chunk": "1 × 3 × 16 × 256 × 256",
        "seconds": seconds,
        "median_seconds": medians,
        "speedup_vs_eager": {n: round(medians["eager"] / m, 3) for n, m in medians.items()},
        "first_call_seconds": {k: round(v, 1) for k, v in compile_s.items()},
        "max_abs_difference": difference,
        "failures": failures,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.out.with_suffix(".png"))
    print(json.dumps({k: result[k] for k in ("median_seconds", "speedup_vs_eager", "failures")}))


if __name__ == "__main__":
    main()
