"""Training data: clips decoded once at the training scale, random windows of them
(`ClipWindows`), and the held-out files and fixed windows that validation reads."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from infotok_codec.errors import InfotokError


def manifest_sha256(files: Sequence[Path]) -> str:
    """Hash of the training set's names and sizes: which data a model saw, cheaply."""
    h = hashlib.sha256()
    for f in files:
        size = f.stat().st_size if f.is_file() else sum(p.stat().st_size for p in f.iterdir())
        h.update(f"{f.name}\t{size}\n".encode())
    return h.hexdigest()


def load_clip(path: Path, short_side: int, max_frames: int) -> np.ndarray:
    """Decode a clip once into `(T, H, W, 3)` uint8 at the training scale."""
    # PyAV is imported where files are decoded, not with this module: the training loop's parts
    # then import on a machine without PyAV (`benchmarks/gpu_campaign.py` on a lent GPU).
    from infotok_codec import media

    chunks = list(media.read_frames(path, 64, max_frames=max_frames, short_side=short_side))
    return np.concatenate(chunks)


class ClipWindows(Dataset[torch.Tensor]):
    """Random windows of cached clips: item i is `(3, frames, crop, crop)` float in [-1, 1].

    Each item is drawn from its own seeded generator, so a DistributedSampler can split a virtual
    epoch of `length` items across ranks without two ranks drawing the same window.
    """

    def __init__(self, clips: list[np.ndarray], frames: int, crop: int, length: int) -> None:
        self.clips = [c for c in clips if c.shape[1] >= crop and c.shape[2] >= crop]
        if not self.clips:
            raise InfotokError(f"no training clip is at least {crop}×{crop}")
        self.frames, self.crop, self.length = frames, crop, length
        self.epoch_seed = 0

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> torch.Tensor:
        rng = np.random.default_rng((self.epoch_seed, i))
        clip = self.clips[rng.integers(len(self.clips))]
        stride = int(rng.choice([1, 2])) if clip.shape[0] >= 2 * self.frames else 1
        span = (self.frames - 1) * stride + 1
        t0 = int(rng.integers(max(clip.shape[0] - span, 0) + 1))
        times = np.minimum(np.arange(t0, t0 + span, stride), clip.shape[0] - 1)
        y = int(rng.integers(clip.shape[1] - self.crop + 1))
        x = int(rng.integers(clip.shape[2] - self.crop + 1))
        window = clip[times, y : y + self.crop, x : x + self.crop]
        if rng.random() < 0.5:
            window = window[:, :, ::-1]
        tensor = torch.from_numpy(np.ascontiguousarray(window)).permute(3, 0, 1, 2)
        return tensor.float() / 127.5 - 1.0


def validation_files(files: list[Path], count: int) -> list[Path]:
    """The files a run holds out (at most `count`, always leaving one to train on): split by
    file, deterministically, every n-th of `files` (by name)."""
    n_val = min(count, max(len(files) - 1, 0))
    return files[:: max(len(files) // n_val, 1)][:n_val] if n_val else []


def validation_batch(val_clips: list[np.ndarray], frames: int, crop: int) -> torch.Tensor:
    """Fixed windows of the held-out files: `(N, 3, frames, crop, crop)` in [-1, 1].

    Every `frames`-frame span of each clip at four spatial places (the corners of a centred
    square twice the crop, clamped to the frame): 32 windows from four 32-frame clips, enough to
    resolve 0.1 dB between checkpoints where four centre windows swung by ±0.5 dB."""
    windows = []
    for clip in val_clips:
        t, h, w = clip.shape[:3]
        if t < frames or min(h, w) < crop:
            continue
        ys = sorted({min(max(h // 2 - crop + dy, 0), h - crop) for dy in (0, crop)})
        xs = sorted({min(max(w // 2 - crop + dx, 0), w - crop) for dx in (0, crop)})
        for t0 in range(0, t - frames + 1, frames):
            for y in ys:
                for x in xs:
                    windows.append(clip[t0 : t0 + frames, y : y + crop, x : x + crop])
    if not windows:
        return torch.empty(0, 3, frames, crop, crop)
    return torch.from_numpy(np.stack(windows)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
