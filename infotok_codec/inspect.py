"""What is inside an `.itok` file: sizes and rates per chunk, and a picture of token usage."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from infotok_codec.bitstream import ContainerReader
from infotok_codec.bitstream.audio import AudioReader, summarize
from infotok_codec.model import LoadedModel
from infotok_codec.outputs import atomic_file


@dataclass(frozen=True)
class ChunkInfo:
    index: int
    first_frame: int
    frames: int
    tokens: int  # kept positions
    positions: int
    mask_bytes: int
    index_bytes: int
    bytes: int  # the whole record, framing and CRC included


@dataclass(frozen=True)
class AudioInfo:
    codec: str
    channels: int
    layout: str
    sample_rate: int
    seconds: float  # first packet's start to last packet's end
    packets: int
    bytes: int  # packet data


@dataclass(frozen=True)
class FileInfo:
    path: str
    version: int  # the .itok format version
    width: int
    height: int
    frames: int
    fps: str
    chunk_frames: int
    key_interval: int  # chunks from one key chunk to the next (1: every chunk is a key)
    model: str
    model_hash: str
    router: str
    budget: float
    rate_mode: str  # what the encode was asked for: budget, quality, bitrate or size
    rate_target: float  # the budget, dB, bits per second or bytes
    refine: int | None  # the encoder's refinement steps (None: a file before version 6)
    lattice_share: int  # 256ths of each mask's kept positions on the spread-order lattice
    coder: str
    fsq_levels: list[int]
    bytes: int  # the file's size
    bpp: float  # 8 · bytes / (width · height · frames)
    audio_bytes: int  # the audio section's share of `bytes`, framing included
    video_bpp: float  # bpp without the audio section
    tokens: int
    positions: int
    rate: float
    mask_bytes: int
    index_bytes: int
    chunks: list[ChunkInfo]
    audio: list[AudioInfo]


def file_info(path: str | Path) -> FileInfo:
    """Read every chunk record (CRC-checked) without decoding any token."""
    with ContainerReader(path) as reader:
        h = reader.header
        chunks = [
            ChunkInfo(
                index=rec.index,
                first_frame=rec.first_frame,
                frames=rec.frames,
                tokens=rec.kept,
                positions=rec.positions(h),
                mask_bytes=len(rec.mask),
                index_bytes=len(rec.tokens),
                bytes=size,
            )
            for rec, size in zip(reader.chunks(), reader.chunk_sizes, strict=True)
        ]
        size = reader.file_size
        side = AudioReader(reader)
        audio = [
            AudioInfo(
                codec=s.track.codec,
                channels=s.track.channels,
                layout=s.track.layout,
                sample_rate=s.track.sample_rate,
                seconds=s.seconds,
                packets=s.packets,
                bytes=s.bytes,
            )
            for s in summarize(side)
        ]
    fps = Fraction(h.fps_num, h.fps_den)
    return FileInfo(
        path=str(path),
        version=h.version,
        width=h.width,
        height=h.height,
        frames=h.frames,
        fps=str(fps),
        chunk_frames=h.chunk_frames,
        key_interval=h.key_interval,
        model=h.model_name,
        model_hash=h.model_hash.hex(),
        router=h.router,
        budget=h.budget,
        rate_mode=h.rate.mode,
        rate_target=h.rate.target,
        refine=h.refine,
        lattice_share=h.lattice_share,
        coder=h.coder,
        fsq_levels=list(h.fsq_levels),
        bytes=size,
        bpp=8 * size / (h.width * h.height * h.frames),
        audio_bytes=side.bytes,
        video_bpp=8 * (size - side.bytes) / (h.width * h.height * h.frames),
        tokens=sum(c.tokens for c in chunks),
        positions=sum(c.positions for c in chunks),
        rate=sum(c.tokens for c in chunks) / max(sum(c.positions for c in chunks), 1),
        mask_bytes=sum(c.mask_bytes for c in chunks),
        index_bytes=sum(c.index_bytes for c in chunks),
        chunks=chunks,
        audio=audio,
    )


def token_heatmap(
    path: str | Path,
    out: str | Path,
    *,
    model: LoadedModel | str | Path | None = None,
    max_chunks: int = 8,
) -> None:
    """PNG: the rate of every chunk, and each latent frame's keep-mask over its decoded frame.

    Shows up to `max_chunks` chunks, spread evenly over the video.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from infotok_codec.codec import ChunkModel, as_model, check_model_matches, iter_tokens

    loaded = as_model(model)
    engine = ChunkModel(loaded, "cpu")
    with ContainerReader(path) as reader:
        h = reader.header
        check_model_matches(h, loaded)
        n = len(reader)
        rates = [rec.kept / rec.positions(h) for rec in reader.chunks()]
        shown = sorted(set(np.linspace(0, n - 1, min(n, max_chunks)).round().astype(int).tolist()))
        latent_frames = h.chunk_frames // 4
        fig = plt.figure(figsize=(2.0 * latent_frames + 1, 1.6 * len(shown) + 2.2))
        grid = fig.add_gridspec(
            len(shown) + 1, latent_frames, height_ratios=[1.4] + [1] * len(shown)
        )
        ax = fig.add_subplot(grid[0, :])
        ax.bar(range(n), rates, color="tab:blue")
        ax.axhline(h.budget, color="k", lw=0.8, ls="--", label=f"budget {h.budget}")
        ax.set(
            xlabel="chunk",
            ylabel="rate",
            ylim=(0, 1.05),
            title=f"{Path(path).name}: {h.router} router",
        )
        ax.legend(loc="upper right", fontsize=8)
        for row, k in enumerate(shown, start=1):
            chunk = next(
                iter_tokens(reader, engine.tables, k * h.chunk_frames, k * h.chunk_frames + 1)
            )
            frames = engine.frames(chunk.indices, chunk.keep, chunk.frames, h.height, h.width)
            for t in range(chunk.keep.shape[0]):
                axt = fig.add_subplot(grid[row, t])
                frame = frames[min(4 * t, chunk.frames - 1)]
                axt.imshow(frame)
                mask = np.kron(chunk.keep[t], np.ones((8, 8)))[: h.height, : h.width]
                axt.imshow(np.where(mask, np.nan, 0.0), cmap="gray", alpha=0.6, vmin=0, vmax=1)
                axt.set_xticks([])
                axt.set_yticks([])
                if t == 0:
                    axt.set_ylabel(f"chunk {k}\nrate {rates[k]:.2f}", fontsize=8)
        fig.tight_layout()
        with atomic_file(out) as tmp:
            fig.savefig(tmp, dpi=80, format="png")
        plt.close(fig)
