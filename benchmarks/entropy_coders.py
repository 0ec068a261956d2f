"""Benchmark the token and keep-mask coders of `infotok_codec.entropy`.

Tokens: two synthetic sources of FSQ indices (levels [8,8,8,5,5,5]), each with tables fitted on
one sample and measured on another (held out):

- ``independent``: every digit drawn independently from a two-sided geometric (discrete
  Laplace) law around the middle of its grid;
- ``correlated``: FSQ-like, correlated Gaussian latents squashed with tanh onto each digit's
  grid, as an FSQ layer after a conv encoder produces them.

Reported: bits per index of ``range`` with independent and with conditional tables, of
``adaptive`` (conditional tables as its prior) and of ``zstd``, against the sample's empirical
(plug-in) entropies, and symbols per second for encode and decode (decode includes the
canonical re-encode check) on the whole sample and on chunk-sized pieces. Synthetic indices
have no neighbours worth the name: ``adaptive`` sees the whole sample as one frame of rows of
1000 and each chunk as a full ``4 x 32 x 32`` grid, so its figure is the price of adapting where
there is nothing to learn.

Dev tokens (``--dev``, default ``../shared/data/dev`` when present): the real case. The shipped
model's tokens of each dev clip (first 16 frames, short side 256, centre crop 256x256: one
chunk), at full rate and at rate 0.5 (the ``fixed`` router's positions, encoded knowing the
mask), coded by every coder: bytes, bits per kept token, milliseconds per chunk.

Masks: keep-masks of the paper's rule (keep the highest ``rate`` fraction of a smooth error map:
Gaussian-blurred noise plus a little white noise), with no lattice given (the lattice part of
our routers' masks is not coded at all), bits per position of the context coder against
run-lengths + zstd, packed bits + zstd, and the i.i.d. bound ``H(rate)``.

Run: ``python benchmarks/entropy_coders.py --threads 2`` (writes
benchmarks/results/entropy_coders.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
import zstandard

from infotok_codec.bench import reference_frames
from infotok_codec.codec import ChunkModel
from infotok_codec.entropy import (
    CODERS,
    ZSTD_LEVEL,
    FrequencyTables,
    decode_indices,
    decode_mask,
    digits_to_indices,
    encode_indices,
    encode_mask,
    indices_to_digits,
)
from infotok_codec.router import keep_count, select_positions
from infotok_codec.tokenizer import load_model
from infotok_codec.video import find_videos

LEVELS = (8, 8, 8, 5, 5, 5)
CHUNK_SHAPE = (4, 32, 32)  # a 16-frame chunk of 256x256 video, in latent positions
CHUNK_INDICES = 4096


@dataclass
class TokenResult:
    source: str
    coder: str
    bits_per_index: float
    encode_symbols_per_s: float
    decode_symbols_per_s: float
    chunked_encode_symbols_per_s: float
    chunked_decode_symbols_per_s: float


@dataclass
class SourceEntropy:
    source: str
    joint_plugin_bits: float
    """Plug-in entropy of the index itself (biased low: K = 64000 against the sample size)."""
    conditional_bits: float
    """Sum over digits of H(digit i | digit i-1): the floor for conditional tables."""
    independent_bits: float
    """Sum over digits of H(digit i): the floor for independent tables."""


@dataclass
class MaskResult:
    shape: tuple[int, int, int]
    sigma: float
    rate: float
    iid_bits: float
    context_bits: float
    runlength_zstd_bits: float
    packbits_zstd_bits: float
    encode_ms: float
    decode_ms: float


def independent_source(n: int, rng: np.random.Generator) -> np.ndarray:
    digits = np.empty((n, len(LEVELS)), np.int64)
    for i, level in enumerate(LEVELS):
        spread = 0.6 + 0.25 * i  # digits differ in how peaked they are
        offsets = rng.geometric(1 - np.exp(-1 / spread), n) - 1
        signs = rng.choice([-1, 1], n)
        digits[:, i] = np.clip(level // 2 + signs * offsets, 0, level - 1)
    return digits_to_indices(digits, LEVELS)


def correlated_source(n: int, rng: np.random.Generator) -> np.ndarray:
    mix = np.random.default_rng(99).normal(size=(len(LEVELS), len(LEVELS)))
    z = np.tanh(0.5 * rng.normal(size=(n, len(LEVELS))) @ (mix + 2 * np.eye(len(LEVELS))).T)
    levels = np.array(LEVELS)
    return digits_to_indices(
        np.clip(((z + 1) / 2 * levels).astype(np.int64), 0, levels - 1), LEVELS
    )


def plugin_entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def entropies(source: str, indices: np.ndarray) -> SourceEntropy:
    digits = indices_to_digits(indices, LEVELS)
    independent = sum(plugin_entropy(np.bincount(digits[:, i])) for i in range(len(LEVELS)))
    conditional = plugin_entropy(np.bincount(digits[:, 0]))
    for i in range(1, len(LEVELS)):
        joint = plugin_entropy(np.bincount(digits[:, i - 1] * LEVELS[i] + digits[:, i]))
        conditional += joint - plugin_entropy(np.bincount(digits[:, i - 1]))
    return SourceEntropy(source, plugin_entropy(np.bincount(indices)), conditional, independent)


def rate(fn: Callable[..., object], calls: list[tuple], symbols: int, repeats: int = 3) -> float:
    """Symbols per second of ``fn(*args)`` for every ``args`` in ``calls``, best of
    ``repeats``."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for args in calls:
            fn(*args)
        best = min(best, time.perf_counter() - start)
    return symbols / best


def bench_tokens(source: str, train: np.ndarray, test: np.ndarray) -> list[TokenResult]:
    setups = [
        (
            "range (independent tables)",
            "range",
            FrequencyTables.fit(train, LEVELS, conditional=False),
        ),
        ("range (conditional tables)", "range", FrequencyTables.fit(train, LEVELS)),
        ("adaptive (conditional prior)", "adaptive", FrequencyTables.fit(train, LEVELS)),
        (f"zstd (level {ZSTD_LEVEL})", "zstd", FrequencyTables.uniform(LEVELS)),
    ]
    chunks = np.split(
        test[: len(test) // CHUNK_INDICES * CHUNK_INDICES], len(test) // CHUNK_INDICES
    )[:16]
    # As rows of 1000 (one row when that does not divide): `adaptive` adapts between rows.
    width = 1000 if len(test) % 1000 == 0 else len(test)
    row = np.ones((1, len(test) // width, width), bool)
    grid = np.ones(CHUNK_SHAPE, bool)
    results = []
    for name, coder, tables in setups:
        data = encode_indices(test, coder, tables, row)
        assert np.array_equal(decode_indices(data, len(test), coder, tables, row), test)
        coded = [encode_indices(c, coder, tables, grid) for c in chunks]
        n_chunked = sum(len(c) for c in chunks)
        repeats = 1 if coder == "zstd" else 3  # level-19 zstd takes seconds per run
        results.append(
            TokenResult(
                source=source,
                coder=name,
                bits_per_index=8 * len(data) / len(test),
                encode_symbols_per_s=rate(
                    encode_indices, [(test, coder, tables, row)], len(test), repeats
                ),
                decode_symbols_per_s=rate(
                    decode_indices, [(data, len(test), coder, tables, row)], len(test)
                ),
                chunked_encode_symbols_per_s=rate(
                    encode_indices,
                    [(c, coder, tables, grid) for c in chunks],
                    n_chunked,
                    repeats,
                ),
                chunked_decode_symbols_per_s=rate(
                    decode_indices,
                    [(d, CHUNK_INDICES, coder, tables, grid) for d in coded],
                    n_chunked,
                ),
            )
        )
    return results


@dataclass
class DevTokenResult:
    rate: float
    coder: str
    clips: int
    tokens: int
    bytes: int
    bits_per_token: float
    encode_ms_per_chunk: float
    decode_ms_per_chunk: float


def dev_tokens(
    folder: Path, engine: ChunkModel
) -> dict[float, list[tuple[np.ndarray, np.ndarray]]]:
    """Per rate, each dev clip's ``(kept indices, mask)``, as the codec makes them."""
    out: dict[float, list[tuple[np.ndarray, np.ndarray]]] = {1.0: [], 0.5: []}
    for path in find_videos([folder]):
        frames = reference_frames(path, 16, 256)
        full = engine.tokens(frames)
        out[1.0].append((full.ravel(), np.ones(full.shape, bool)))
        error = engine.error_map(frames)
        mask = select_positions("fixed", error, error.shape, keep_count(0.5, error.size))
        out[0.5].append((engine.tokens(frames, mask)[mask], mask))
    return out


def bench_dev_tokens(folder: Path) -> list[DevTokenResult]:
    engine = ChunkModel(load_model(), "cpu")
    tables = engine.tables
    results = []
    for keep, clips in dev_tokens(folder, engine).items():
        for coder in CODERS:
            coded = [encode_indices(i, coder, tables, m) for i, m in clips]
            for data, (indices, mask) in zip(coded, clips, strict=True):
                out = decode_indices(data, len(indices), coder, tables, mask)
                assert np.array_equal(out, indices)
            calls = [(i, coder, tables, m) for i, m in clips]
            encode = rate(encode_indices, calls, len(clips))
            decode = rate(
                decode_indices,
                [(d, len(i), coder, tables, m) for d, (i, m) in zip(coded, clips, strict=True)],
                len(clips),
            )
            tokens = sum(len(i) for i, _ in clips)
            size = sum(len(d) for d in coded)
            results.append(
                DevTokenResult(
                    rate=keep,
                    coder=coder,
                    clips=len(clips),
                    tokens=tokens,
                    bytes=size,
                    bits_per_token=8 * size / tokens,
                    encode_ms_per_chunk=1000 / encode,
                    decode_ms_per_chunk=1000 / decode,
                )
            )
    return results


def blur(a: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    radius = int(3 * sigma) + 1
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(
        a, [(radius, radius) if d == axis else (0, 0) for d in range(a.ndim)], mode="reflect"
    )
    return np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="valid"), axis, padded)


def router_mask(
    shape: tuple[int, int, int], sigma: float, keep: float, rng: np.random.Generator
) -> np.ndarray:
    """Keep the ``ceil(keep * N)`` positions of highest error in a smooth error map (spatial
    blur ``sigma`` latent positions, temporal blur 1 latent frame, plus 20% white noise)."""
    error = blur(blur(rng.normal(size=shape), sigma, 1), sigma, 2)
    error = blur(error, 1.0, 0)
    error = error / error.std() + 0.2 * rng.normal(size=shape)
    count = int(np.ceil(keep * error.size))
    mask = np.zeros(error.size, bool)
    mask[np.argsort(-error, axis=None, kind="stable")[:count]] = True
    return mask.reshape(shape)


def decode_mask_of(data: bytes, shape: tuple[int, int, int], kept: int) -> np.ndarray:
    return decode_mask(data, shape, kept=kept)


def runlength_zstd_bytes(mask: np.ndarray) -> int:
    flat = mask.reshape(-1).astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]]))
    out = bytearray([int(flat[0])])
    for run in runs.tolist():  # LEB128 varints
        while run >= 128:
            out.append((run & 127) | 128)
            run >>= 7
        out.append(run)
    return len(zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(bytes(out)))


def bench_masks(rng: np.random.Generator, samples: int) -> list[MaskResult]:
    results = []
    for shape in ((4, 32, 32), (4, 68, 120)):
        for sigma in (1.0, 2.0, 3.0):
            for keep in (0.25, 0.5, 0.75):
                masks = [router_mask(shape, sigma, keep, rng) for _ in range(samples)]
                positions = samples * int(np.prod(shape))
                coded = [encode_mask(m) for m in masks]
                for m, c in zip(masks, coded, strict=True):
                    assert np.array_equal(decode_mask(c, shape, kept=int(m.sum())), m)
                enc = rate(encode_mask, [(m,) for m in masks], samples, repeats=1)
                dec = rate(
                    decode_mask_of,
                    [(c, shape, int(m.sum())) for c, m in zip(coded, masks, strict=True)],
                    samples,
                    repeats=1,
                )
                p = np.mean([m.mean() for m in masks])
                results.append(
                    MaskResult(
                        shape=shape,
                        sigma=sigma,
                        rate=keep,
                        iid_bits=float(-(p * np.log2(p) + (1 - p) * np.log2(1 - p))),
                        context_bits=8 * sum(len(c) for c in coded) / positions,
                        runlength_zstd_bits=8
                        * sum(runlength_zstd_bytes(m) for m in masks)
                        / positions,
                        packbits_zstd_bits=8
                        * sum(
                            len(
                                zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(
                                    np.packbits(m).tobytes()
                                )
                            )
                            for m in masks
                        )
                        / positions,
                        encode_ms=1000 / enc,
                        decode_ms=1000 / dec,
                    )
                )
    return results


def conditional_summary(results: list[TokenResult]) -> list[dict[str, object]]:
    """Per source: bits per index with independent and conditional tables, and the decision."""
    out: list[dict[str, object]] = []
    for source in dict.fromkeys(r.source for r in results):
        bits = {
            r.coder.split("(")[1].split()[0]: r.bits_per_index
            for r in results
            if r.source == source and r.coder.startswith("range")
        }
        saving = 100 * (1 - bits["conditional"] / bits["independent"])
        out.append(
            {
                "source": source,
                "independent_bits": bits["independent"],
                "conditional_bits": bits["conditional"],
                "saving_percent": saving,
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--symbols", type=int, default=1_000_000)
    parser.add_argument("--mask-samples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--dev",
        type=Path,
        default=Path(__file__).resolve().parents[2] / "shared" / "data" / "dev",
        help="Dev clips for the real-token comparison (skipped when absent).",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the model.")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "entropy_coders.json"
    )
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    load_at_start = os.getloadavg()[0]

    sources = {"independent": independent_source, "correlated": correlated_source}
    token_results, source_entropies = [], []
    for name, make in sources.items():
        train, test = make(args.symbols, rng), make(args.symbols, rng)
        source_entropies.append(entropies(name, test))
        token_results += bench_tokens(name, train, test)
    mask_results = bench_masks(rng, args.mask_samples)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev_results = bench_dev_tokens(args.dev) if args.dev.is_dir() else []

    report = {
        "command": shlex.join(["python", *sys.argv]),
        "conditional_tables": conditional_summary(token_results),
        "machine": {
            "cpus": os.cpu_count(),
            # Throughput figures are only comparable at a similar load.
            "load_average_1min_at_start": load_at_start,
            "platform": platform.platform(),
            "processor": platform.processor(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "constriction": version("constriction"),
            "zstandard": zstandard.__version__,
        },
        "config": {
            "levels": LEVELS,
            "symbols": args.symbols,
            "chunk_indices": CHUNK_INDICES,
            "mask_samples": args.mask_samples,
            "seed": args.seed,
        },
        "token_entropy": [asdict(e) for e in source_entropies],
        "tokens": [asdict(r) for r in token_results],
        "masks": [asdict(r) for r in mask_results],
        "dev_tokens": [asdict(r) for r in dev_results],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(
        f"{'source':12} {'coder':28} {'bits/index':>10} {'enc Msym/s':>10} "
        f"{'dec Msym/s':>10} {'chunk enc':>10} {'chunk dec':>10}"
    )
    for e in source_entropies:
        print(f"{e.source:12} {'entropy: conditional':28} {e.conditional_bits:10.3f}")
        print(f"{e.source:12} {'entropy: independent digits':28} {e.independent_bits:10.3f}")
        print(f"{e.source:12} {'entropy: joint plug-in':28} {e.joint_plugin_bits:10.3f}")
        for r in token_results:
            if r.source == e.source:
                print(
                    f"{r.source:12} {r.coder:28} {r.bits_per_index:10.3f} "
                    f"{r.encode_symbols_per_s / 1e6:10.2f} {r.decode_symbols_per_s / 1e6:10.2f} "
                    f"{r.chunked_encode_symbols_per_s / 1e6:10.2f} "
                    f"{r.chunked_decode_symbols_per_s / 1e6:10.2f}"
                )
    print(
        f"\n{'mask shape':14} {'sigma':>5} {'rate':>5} {'H(rate)':>8} {'context':>8} "
        f"{'rle+zstd':>8} {'bits+zstd':>9} {'enc ms':>7} {'dec ms':>7}   (bits/position)"
    )
    for m in mask_results:
        print(
            f"{'x'.join(map(str, m.shape)):14} {m.sigma:5.1f} {m.rate:5.2f} {m.iid_bits:8.3f} "
            f"{m.context_bits:8.3f} {m.runlength_zstd_bits:8.3f} {m.packbits_zstd_bits:9.3f} "
            f"{m.encode_ms:7.1f} {m.decode_ms:7.1f}"
        )
    if dev_results:
        print(
            f"\n{'dev tokens':12} {'coder':10} {'bytes':>8} {'bits/token':>10} {'enc ms':>7} "
            f"{'dec ms':>7}   (per 16-frame 256x256 chunk)"
        )
        for d in dev_results:
            print(
                f"{'rate ' + str(d.rate):12} {d.coder:10} {d.bytes:8d} {d.bits_per_token:10.3f} "
                f"{d.encode_ms_per_chunk:7.1f} {d.decode_ms_per_chunk:7.1f}"
            )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
