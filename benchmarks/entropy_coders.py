"""Benchmark the token and keep-mask coders of `infotok_codec.bitstream.entropy`.

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
model's tokens of each dev clip (first 32 and first 64 frames, short side 256, centre crop
256x256: 16-frame chunks), at full rate and at rate 0.5 in every chunk (the ``fixed`` router's
positions, encoded knowing the mask), coded chunk after chunk through the container by every
coder (``context`` with the codec's default key interval of 2 s at the clip's frame rate, and
``context-v4``, the same under a version-4 header, whose key chunks ignore the key prior):
index and mask bytes per clip, bits per kept token, tokens per second encoding and decoding.
Then each clip's 64-frame stream, written with ``context`` and with ``adaptive``, is decoded
by `decode_file` (to .y4m, model on the CPU): the share of that wall time spent decoding
tokens (`read_tokens` on the same file). A PNG beside the JSON plots the per-clip ratios.

Masks: keep-masks of the paper's rule (keep the highest ``rate`` fraction of a smooth error map:
Gaussian-blurred noise plus a little white noise), with no lattice given (the lattice part of
our routers' masks is not coded at all), bits per position of the context coder against
run-lengths + zstd, packed bits + zstd, and the i.i.d. bound ``H(rate)``.

Run: ``python benchmarks/entropy_coders.py --threads 2 [--model M]`` (writes
benchmarks/results/entropy_coders.json and .png).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from fractions import Fraction
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
import zstandard

from infotok_codec.bench import reference_frames
from infotok_codec.bitstream import (
    VERSION,
    Chain,
    ContainerWriter,
    Header,
    context_coder,
    decode_chunk,
    encode_chunk,
)
from infotok_codec.bitstream.entropy import CODERS, ZSTD_LEVEL, decode_indices, encode_indices
from infotok_codec.bitstream.mask_coder import decode_mask, encode_mask
from infotok_codec.bitstream.tables import FrequencyTables, digits_to_indices, indices_to_digits
from infotok_codec.codec import (
    KEY_SECONDS,
    ChunkModel,
    decode_file,
    key_interval_chunks,
    read_tokens,
)
from infotok_codec.media import find_videos, probe
from infotok_codec.model import LoadedModel, load_model
from infotok_codec.routing.router import keep_count, lattice_share, select_positions

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


def _encode(indices: np.ndarray, coder: str, tables: FrequencyTables, mask: np.ndarray) -> bytes:
    """One chunk by any coder; ``context`` as a key chunk."""
    if coder == "context":
        return context_coder.encode_tokens(indices, mask, tables, None)[0]
    return encode_indices(indices, coder, tables, mask)


def _decode(
    data: bytes, count: int, coder: str, tables: FrequencyTables, mask: np.ndarray
) -> np.ndarray:
    if coder == "context":
        return context_coder.decode_tokens(data, mask, tables, None)[0]
    return decode_indices(data, count, coder, tables, mask)


def bench_tokens(source: str, train: np.ndarray, test: np.ndarray) -> list[TokenResult]:
    setups = [
        (
            "range (independent tables)",
            "range",
            FrequencyTables.fit(train, LEVELS, conditional=False),
        ),
        ("range (conditional tables)", "range", FrequencyTables.fit(train, LEVELS)),
        ("adaptive (conditional prior)", "adaptive", FrequencyTables.fit(train, LEVELS)),
        ("context (conditional prior)", "context", FrequencyTables.fit(train, LEVELS)),
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
        data = _encode(test, coder, tables, row)
        assert np.array_equal(_decode(data, len(test), coder, tables, row), test)
        coded = [_encode(c, coder, tables, grid) for c in chunks]
        n_chunked = sum(len(c) for c in chunks)
        repeats = 1 if coder == "zstd" else 3  # level-19 zstd takes seconds per run
        results.append(
            TokenResult(
                source=source,
                coder=name,
                bits_per_index=8 * len(data) / len(test),
                encode_symbols_per_s=rate(
                    _encode, [(test, coder, tables, row)], len(test), repeats
                ),
                decode_symbols_per_s=rate(
                    _decode, [(data, len(test), coder, tables, row)], len(test)
                ),
                chunked_encode_symbols_per_s=rate(
                    _encode,
                    [(c, coder, tables, grid) for c in chunks],
                    n_chunked,
                    repeats,
                ),
                chunked_decode_symbols_per_s=rate(
                    _decode,
                    [(d, CHUNK_INDICES, coder, tables, grid) for d in coded],
                    n_chunked,
                ),
            )
        )
    return results


@dataclass
class DevClipResult:
    """One dev clip's tokens (first `frames` frames) coded by one coder, chunk after chunk."""

    clip: str
    frames: int
    """The setting: the first 32 or 64 frames."""
    coded_frames: int
    """Frames coded: `frames`, or fewer where the clip is shorter."""
    budget: float
    coder: str
    key_interval: int
    """Chunks from one key chunk to the next (the codec's default of 2 s at the clip's rate)."""
    tokens: int
    index_bytes: int
    mask_bytes: int
    bits_per_token: float
    """(index + mask bytes) * 8 / kept tokens."""
    encode_s: float
    decode_s: float


@dataclass
class DevSummary:
    frames: int
    budget: float
    coder: str
    tokens: int
    index_bytes: int
    mask_bytes: int
    bits_per_token: float
    index_bits_per_token: float
    mask_bits_per_token: float
    bytes_vs_adaptive: float
    """Index + mask bytes over ``adaptive``'s, all clips together."""
    worst_clip_vs_adaptive: float
    encode_tokens_per_s: float
    decode_tokens_per_s: float


@dataclass
class DecodeShare:
    """`infotok decode` of a dev clip's stream (64 frames, 256x256, to .y4m): wall time, the
    time of its token decoding alone (`read_tokens`), and the share."""

    clip: str
    budget: float
    coder: str
    decode_s: float
    tokens_s: float
    share: float


DEV_FRAMES = (32, 64)
DEV_BUDGETS = (1.0, 0.5)
CHUNK = 16


@dataclass
class DevClip:
    name: str
    fps: Fraction
    grids: dict[float, list[np.ndarray]]
    """Per budget, each chunk's indices ``(T', h, w)``, -1 where dropped."""


def dev_tokens(folder: Path, engine: ChunkModel) -> list[DevClip]:
    """Each dev clip's chunks (up to 64 frames at 256x256) as the codec makes them: full rate,
    and rate 0.5 per chunk (the ``fixed`` router's positions, encoded knowing the mask)."""
    clips = []
    for path in find_videos([folder]):
        frames = reference_frames(path, max(DEV_FRAMES), 256)
        grids: dict[float, list[np.ndarray]] = {1.0: [], 0.5: []}
        for start in range(0, len(frames), CHUNK):
            chunk = frames[start : start + CHUNK]
            grids[1.0].append(engine.tokens(chunk))
            error = engine.error_map(chunk)
            mask = select_positions("fixed", error, error.shape, keep_count(0.5, error.size))
            grids[0.5].append(np.where(mask, engine.tokens(chunk, mask), -1))
        clips.append(DevClip(path.stem, probe(path).fps, grids))
    return clips


DEV_CODERS = (*CODERS, "context-v4")
"""The coders the dev tokens go through; ``context-v4`` is ``context`` under a version-4 header,
whose key chunks start from the tables' derived counts instead of the model file's key prior."""


def _header(clip: DevClip, frames: int, budget: float, coder: str, model: LoadedModel) -> Header:
    fps = clip.fps
    version = 4 if coder == "context-v4" else VERSION
    coder = coder.removesuffix("-v4")
    return Header(
        width=256,
        height=256,
        frames=frames,
        fps_num=fps.numerator,
        fps_den=fps.denominator,
        chunk_frames=CHUNK,
        latent_height=32,
        latent_width=32,
        model_name=model.name,
        model_hash=model.sha256,
        fsq_levels=model.tokenizer.config.levels,
        coder=coder,
        router="fixed",
        budget=budget,
        lattice_share=lattice_share("fixed"),
        key_interval=key_interval_chunks(KEY_SECONDS, fps, CHUNK, coder),
        version=version,
    )


def code_clip(
    clip: DevClip,
    frames: int,
    budget: float,
    coder: str,
    model: LoadedModel,
    tables: FrequencyTables,
) -> DevClipResult:
    grids = clip.grids[budget][: -(-frames // CHUNK)]
    header = _header(clip, min(frames, CHUNK * len(grids)), budget, coder, model)
    started = time.perf_counter()
    chain, records = Chain(), []
    for k, grid in enumerate(grids):
        keep = grid >= 0
        records.append(encode_chunk(header, k, keep, grid[keep], tables, chain))
    encode_s = time.perf_counter() - started
    started = time.perf_counter()
    chain = Chain()
    for grid, record in zip(grids, records, strict=True):
        keep, indices = decode_chunk(header, record, tables, chain)
        assert np.array_equal(keep, grid >= 0) and np.array_equal(indices, grid[keep])
    decode_s = time.perf_counter() - started
    tokens = sum(int((g >= 0).sum()) for g in grids)
    index_bytes = sum(len(r.tokens) for r in records)
    mask_bytes = sum(len(r.mask) for r in records)
    return DevClipResult(
        clip=clip.name,
        frames=frames,
        coded_frames=header.frames,
        budget=budget,
        coder=coder,
        key_interval=header.key_interval,
        tokens=tokens,
        index_bytes=index_bytes,
        mask_bytes=mask_bytes,
        bits_per_token=8 * (index_bytes + mask_bytes) / tokens,
        encode_s=encode_s,
        decode_s=decode_s,
    )


def summarise(results: list[DevClipResult]) -> list[DevSummary]:
    out = []
    for frames in DEV_FRAMES:
        for budget in DEV_BUDGETS:
            rows = [r for r in results if r.frames == frames and r.budget == budget]
            by_coder = {c: [r for r in rows if r.coder == c] for c in DEV_CODERS}
            base = {r.clip: r.index_bytes + r.mask_bytes for r in by_coder["adaptive"]}
            for coder, own in by_coder.items():
                tokens = sum(r.tokens for r in own)
                index = sum(r.index_bytes for r in own)
                mask = sum(r.mask_bytes for r in own)
                out.append(
                    DevSummary(
                        frames=frames,
                        budget=budget,
                        coder=coder,
                        tokens=tokens,
                        index_bytes=index,
                        mask_bytes=mask,
                        bits_per_token=8 * (index + mask) / tokens,
                        index_bits_per_token=8 * index / tokens,
                        mask_bits_per_token=8 * mask / tokens,
                        bytes_vs_adaptive=(index + mask) / sum(base.values()),
                        worst_clip_vs_adaptive=max(
                            (r.index_bytes + r.mask_bytes) / base[r.clip] for r in own
                        ),
                        encode_tokens_per_s=tokens / sum(r.encode_s for r in own),
                        decode_tokens_per_s=tokens / sum(r.decode_s for r in own),
                    )
                )
    return out


def decode_shares(
    clips: list[DevClip], model: LoadedModel, tables: FrequencyTables, workdir: Path
) -> list[DecodeShare]:
    """Write each clip's 64-frame stream at each budget with `context` and `adaptive`, then
    time `decode_file` (model on the CPU) against `read_tokens` on it."""
    out = []
    for clip in clips:
        for budget in DEV_BUDGETS:
            for coder in ("context", "adaptive"):
                grids = clip.grids[budget]
                header = _header(clip, CHUNK * len(grids), budget, coder, model)
                path = workdir / f"{clip.name}.{coder}.itok"
                chain = Chain()
                with ContainerWriter(path, header) as writer:
                    for k, grid in enumerate(grids):
                        keep = grid >= 0
                        writer.write_chunk(encode_chunk(header, k, keep, grid[keep], tables, chain))
                started = time.perf_counter()
                read_tokens(path, model)
                tokens_s = time.perf_counter() - started
                started = time.perf_counter()
                decode_file(path, workdir / "out.y4m", model=model, device="cpu", force=True)
                decode_s = time.perf_counter() - started
                out.append(
                    DecodeShare(clip.name, budget, coder, decode_s, tokens_s, tokens_s / decode_s)
                )
    return out


def bench_dev(
    folder: Path, workdir: Path, model: LoadedModel
) -> tuple[list[DevClipResult], list[DecodeShare]]:
    engine = ChunkModel(model, "cpu", bf16=False)
    clips = dev_tokens(folder, engine)
    results = [
        code_clip(clip, frames, budget, coder, model, engine.tables)
        for clip in clips
        for frames in DEV_FRAMES
        for budget in DEV_BUDGETS
        for coder in DEV_CODERS
    ]
    return results, decode_shares(clips, model, engine.tables, workdir)


def plot_dev(summary: list[DevSummary], results: list[DevClipResult], path: Path) -> None:
    """Per clip and setting, context's index + mask bytes over adaptive's; bits per token by
    coder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    clips = sorted({r.clip for r in results})
    settings = [(f, b) for f in DEV_FRAMES for b in DEV_BUDGETS]
    width = 0.8 / len(settings)
    for j, (frames, budget) in enumerate(settings):
        rows = {
            (r.clip, r.coder): r.index_bytes + r.mask_bytes
            for r in results
            if r.budget == budget and r.frames == frames
        }
        ratios = [rows[clip, "context"] / rows[clip, "adaptive"] for clip in clips]
        left.bar(
            np.arange(len(clips)) + j * width, ratios, width, label=f"{frames} frames, {budget}"
        )
    left.axhline(0.85, color="k", lw=0.8, ls="--", label="0.85")
    left.set_xticks(np.arange(len(clips)) + 0.4 - width / 2, clips, rotation=30, ha="right")
    left.set(ylabel="context / adaptive bytes (index + mask)", ylim=(0.6, 1.0))
    left.legend(fontsize=7)
    for coder in DEV_CODERS:
        points = [s for s in summary if s.coder == coder]
        right.plot(
            [f"{s.frames}f, {s.budget}" for s in points],
            [s.bits_per_token for s in points],
            "o-",
            label=coder,
        )
    right.set(ylabel="bits per kept token (index + mask)", yscale="log")
    right.legend(fontsize=8)
    fig.suptitle("Token coders on the dev clips' tokens (shipped model, 256x256)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


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
    parser.add_argument("--model", type=Path, default=None, help="Model file (default: shipped).")
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
    dev_results: list[DevClipResult] = []
    shares: list[DecodeShare] = []
    model = load_model(args.model)
    if args.dev.is_dir():
        with tempfile.TemporaryDirectory() as workdir:
            dev_results, shares = bench_dev(args.dev, Path(workdir), model)
    dev_summary = summarise(dev_results) if dev_results else []
    share_summary = {
        coder: {
            "share": sum(x.tokens_s for x in own) / sum(x.decode_s for x in own),
            "min": min(x.share for x in own),
            "max": max(x.share for x in own),
        }
        for coder in ("context", "adaptive")
        if (own := [x for x in shares if x.coder == coder])
    }

    report = {
        "command": shlex.join(["python", *sys.argv]),
        "model": model.name,
        "model_sha256": model.sha256.hex(),
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
        "dev_summary": [asdict(r) for r in dev_summary],
        "dev_clips": [asdict(r) for r in dev_results],
        "decode_share": share_summary,
        "decode_share_clips": [asdict(r) for r in shares],
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
    if dev_summary:
        plot = args.out.with_suffix(".png")
        plot_dev(dev_summary, dev_results, plot)
        print(
            f"\n{'dev tokens':16} {'coder':9} {'bits/tok':>8} {'index':>6} {'mask':>6} "
            f"{'vs adpt':>7} {'worst':>6} {'enc tok/s':>10} {'dec tok/s':>10}"
        )
        for d in dev_summary:
            print(
                f"{f'{d.frames} f, budget {d.budget}':16} {d.coder:9} {d.bits_per_token:8.3f} "
                f"{d.index_bits_per_token:6.3f} {d.mask_bits_per_token:6.3f} "
                f"{d.bytes_vs_adaptive:7.3f} {d.worst_clip_vs_adaptive:6.3f} "
                f"{d.encode_tokens_per_s:10.0f} {d.decode_tokens_per_s:10.0f}"
            )
        for coder, share in share_summary.items():
            print(
                f"{coder}: token decoding is {share['share']:.1%} of decode wall time "
                f"(clips {share['min']:.1%} to {share['max']:.1%})"
            )
        print(f"wrote {plot}")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
