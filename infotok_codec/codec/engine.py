"""What encoding and decoding share: the tokenizer on a device, run tile by tile.

`ChunkModel` turns a chunk of uint8 frames into token indices (full rate or knowing a keep-mask),
error maps (the `elbo` router's and the `light` router's) and back into frames. Frames above
about a megapixel run in `TILE`-pixel tiles that encoder and decoder derive alike from the frame
size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import torch

from infotok_codec.bitstream import (
    FrequencyTables,
    KeyPrior,
)
from infotok_codec.bitstream.context_coder import encode_tokens
from infotok_codec.bitstream.header import CHUNK_FRAMES_RANGE, TEMPORAL_STRIDE
from infotok_codec.errors import InfotokError, ModelError
from infotok_codec.model import (
    SPACE_FACTOR,
    LoadedModel,
    autocast,
    latent_shape,
    load_model,
    refine_indices,
    use_bf16,
)

Progress = Callable[[str, int, int], None]
"""Called as `progress(pass_name, frames_just_done, total_frames)` after each chunk."""
TileFeatures = Callable[[int], np.ndarray]
"""Called as `features(i)`: the conv features of the `i`th box of `tiles`, as `light_error_map`
handed them out."""


# -- running the model on one chunk ----------------------------------------------------------
class ChunkModel:
    """A loaded tokenizer on a device, working on uint8 frames `(n, H, W, 3)`."""

    def __init__(
        self, model: LoadedModel, device: str = "auto", bf16: bool | None = None, refine: int = 0
    ) -> None:
        check_refine(refine)
        self.model = model
        self.refine = refine  # steps of encoder-side refinement for every `tokens` (model.refine)
        self.device = resolve_device(device)
        self.bf16 = use_bf16(bf16, self.device)  # None: where the device runs it natively
        self.tokenizer = model.tokenizer.to(self.device).eval()
        self.light_head = (
            model.light_head.to(self.device).eval() if model.light_head is not None else None
        )
        self.tables = (
            FrequencyTables.from_json(model.tables_json)
            if model.tables_json
            else FrequencyTables.uniform(model.tokenizer.config.levels)
        )
        KeyPrior.of(self.tables)  # a damaged key prior is one error here, before any frame

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    def feature_bytes(self, n: int, height: int, width: int) -> int:
        """Bytes of the conv features `light_error_map` hands out for `n` frames of that size."""
        itemsize = 2 if self.bf16 else 4
        return math.prod(latent_shape(n, height, width)) * self.tokenizer.config.dim * itemsize

    def _autocast(self) -> AbstractContextManager[object]:
        return autocast(self.device, self.bf16)

    def _video(self, frames: np.ndarray) -> torch.Tensor:
        """`(n, H, W, 3)` uint8 → `(1, 3, n, H, W)` float in [-1, 1] on the device."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        return x.permute(3, 0, 1, 2)[None].float().div_(127.5).sub_(1.0)  # one float copy, not two

    def tokens(
        self,
        frames: np.ndarray,
        keep: np.ndarray | None = None,
        features: TileFeatures | None = None,
    ) -> np.ndarray:
        """Indices `(T', h, w)` int64: full rate, or encoded knowing the keep-mask `(T', h, w)`
        (indices at dropped positions are meaningless). `features`, the conv encoder's output
        for these frames tile by tile as `light_error_map` handed it out, skips the conv
        encoder. With `refine` steps, each tile's codes are then searched against the decoder,
        tile by tile as `frames` decodes them (`model.refine`)."""
        n, height, width = frames.shape[:3]
        if features is not None and not self.refine:
            return self.tokens_of_features(features, keep, n, height, width)
        indices = np.zeros(latent_shape(n, height, width), dtype=np.int64)
        for i, (y0, y1, x0, x1) in enumerate(tiles(height, width)):
            (ly0, ly1), (lx0, lx1) = _latent_span(y0, y1), _latent_span(x0, x1)
            mask = self._tile_mask(keep, ly0, ly1, lx0, lx1)
            feats = None if features is None else self._tile_features(features(i))
            video = self._video(frames[:, y0:y1, x0:x1])
            with self._autocast():
                if self.refine:
                    tile_keep = (
                        keep[:, ly0:ly1, lx0:lx1]
                        if keep is not None
                        else np.ones((indices.shape[0], ly1 - ly0, lx1 - lx0), dtype=bool)
                    )
                    idx = refine_indices(
                        self.tokenizer, video, self.refine, mask, feats, self._bits(tile_keep)
                    )
                else:
                    idx = self.tokenizer.encode(video, mask)
            indices[:, ly0:ly1, lx0:lx1] = idx[0].cpu()
        return indices

    def tokens_of_features(
        self,
        features: TileFeatures,
        keep: np.ndarray | None,
        n: int,
        height: int,
        width: int,
    ) -> np.ndarray:
        """`tokens` of `n` frames of `height`×`width` from their conv features alone: the
        frames are not needed, and only one tile's features at a time (`features` may read them
        from disk)."""
        indices = np.zeros(latent_shape(n, height, width), dtype=np.int64)
        for i, (y0, y1, x0, x1) in enumerate(tiles(height, width)):
            (ly0, ly1), (lx0, lx1) = _latent_span(y0, y1), _latent_span(x0, x1)
            mask = self._tile_mask(keep, ly0, ly1, lx0, lx1)
            feats = self._tile_features(features(i))
            with self._autocast():
                idx = self.tokenizer.encode_features(feats, mask)
            indices[:, ly0:ly1, lx0:lx1] = idx[0].cpu()
        return indices

    def _tile_mask(
        self, keep: np.ndarray | None, ly0: int, ly1: int, lx0: int, lx1: int
    ) -> torch.Tensor | None:
        """A tile's keep-mask `(1, T', h, w)` on the device, or None where it keeps everything."""
        if keep is None or keep[:, ly0:ly1, lx0:lx1].all():
            return None
        return torch.from_numpy(keep[:, ly0:ly1, lx0:lx1]).to(self.device)[None]

    def _tile_features(self, tile: np.ndarray) -> torch.Tensor:
        """A tile's features `(T', h, w, dim)` as `light_error_map` kept them → `(1, dim, T',
        h, w)` on the device, as the conv encoder made them (a channels-last view)."""
        feats = torch.from_numpy(np.ascontiguousarray(tile))
        if feats.dtype == torch.int16:  # bf16 bits
            feats = feats.view(torch.bfloat16)
        return feats.to(self.device).permute(3, 0, 1, 2)[None]

    def _bits(self, keep: np.ndarray) -> Callable[[torch.Tensor], float]:
        """What a tile's indices `(1, T', h, w)` cost under `keep`, coded by the context coder
        as a key chunk: refinement's measure of the bits its codes add (the chunk's real coder
        and chain may differ; it needs the change, not the count)."""

        def bits(indices: torch.Tensor) -> float:
            kept = indices[0].cpu().numpy()[keep]
            return 8.0 * len(encode_tokens(kept, keep, self.tables, None)[0])

        return bits

    @torch.no_grad()
    def light_error_map(
        self, frames: np.ndarray, keep_features: Callable[[np.ndarray], object] | None = None
    ) -> np.ndarray:
        """The `light` router's predicted error `(T', h, w)` float32. With `keep_features`, each
        box of `tiles` in turn hands it the conv features `(T', h, w, dim)` the error was
        predicted from (for `tokens`): float32, or under bf16 their bf16 bits as int16 (numpy
        has no bf16): exact, and half the bytes to hold and spill. A tile at a time, so that a
        chunk's features (130 MB at 1080p in float32) are never all in memory. Channels last,
        as the conv encoder makes them: the copy moves whole feature vectors."""
        check_light_head(self.model)
        assert self.light_head is not None  # moved to the device with the model
        n, height, width = frames.shape[:3]
        error = np.zeros(latent_shape(n, height, width), dtype=np.float32)
        for y0, y1, x0, x1 in tiles(height, width):
            (ly0, ly1), (lx0, lx1) = _latent_span(y0, y1), _latent_span(x0, x1)
            with self._autocast():
                feats = self.tokenizer.features(self._video(frames[:, y0:y1, x0:x1]))
                error[:, ly0:ly1, lx0:lx1] = self.light_head.error_map(feats)[0].float().cpu()
            if keep_features is not None:
                tile = feats[0].permute(1, 2, 3, 0).cpu()
                tile = tile.to(torch.bfloat16).view(torch.int16) if self.bf16 else tile.float()
                keep_features(np.ascontiguousarray(tile.numpy()))
        return error

    def error_map(self, frames: np.ndarray) -> np.ndarray:
        """The router's ELBO proxy `(T', h, w)` float32: full-rate error per latent position."""
        n, height, width = frames.shape[:3]
        error = np.zeros(latent_shape(n, height, width), dtype=np.float32)
        for y0, y1, x0, x1 in tiles(height, width):
            (ly0, ly1), (lx0, lx1) = _latent_span(y0, y1), _latent_span(x0, x1)
            with self._autocast():
                err = self.tokenizer.error_map(self._video(frames[:, y0:y1, x0:x1]))
            error[:, ly0:ly1, lx0:lx1] = err[0].float().cpu()
        return error

    def frames(
        self, indices: np.ndarray, keep: np.ndarray, n: int, height: int, width: int
    ) -> np.ndarray:
        """Indices `(T', h, w)` + keep-mask `(T', h, w)` → frames `(n, height, width, 3)` uint8."""
        out = np.empty((n, height, width, 3), dtype=np.uint8)
        for y0, y1, x0, x1 in tiles(height, width):
            (ly0, ly1), (lx0, lx1) = _latent_span(y0, y1), _latent_span(x0, x1)
            tile_keep = keep[:, ly0:ly1, lx0:lx1]
            tile_idx = np.where(tile_keep, indices[:, ly0:ly1, lx0:lx1], 0)
            idx = torch.from_numpy(tile_idx).to(self.device)[None]
            mask = None if tile_keep.all() else torch.from_numpy(tile_keep).to(self.device)[None]
            with self._autocast():
                video = self.tokenizer.decode(idx, mask, (n, y1 - y0, x1 - x0))[0]
            # A frame at a time, in place: at a 512×512 tile a float copy of the whole video is
            # 50 MB. (A bf16 frame is copied to float first: bf16 cannot hold every level from
            # 128 to 255.)
            for i in range(n):
                frame = video[:, i].float().add_(1.0).mul_(127.5).round_().clamp_(0, 255)
                out[i, y0:y1, x0:x1] = frame.to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        return out


MAX_REFINE = 200
"""Refinement steps at most: the gain has levelled off long before (`model.refine`)."""
TILE = 512  # pixels; a multiple of the compressor's 64-pixel window, so windows never straddle
TILE_ABOVE = 1024 * 1024  # frames of more pixels than this are coded in tiles


def tiles(height: int, width: int) -> list[tuple[int, int, int, int]]:
    """Pixel boxes (y0, y1, x0, x1) the model runs on, one at a time.

    Frames up to about a megapixel run whole; larger ones in TILE×TILE tiles, so memory is bounded
    at any resolution (3840×2160 included). Encoder and decoder derive the same tiles from the
    frame size, so a stream needs no record of them.
    """
    if height * width <= TILE_ABOVE:
        return [(0, height, 0, width)]
    return [
        (y, min(y + TILE, height), x, min(x + TILE, width))
        for y in range(0, height, TILE)
        for x in range(0, width, TILE)
    ]


def _latent_span(p0: int, p1: int) -> tuple[int, int]:
    """Latent rows (or columns) covering pixel rows [p0, p1) of a tile."""
    return p0 // SPACE_FACTOR, -(-p1 // SPACE_FACTOR)


def resolve_device(device: str) -> torch.device:
    """`auto`, `cpu`, `cuda` or `cuda:N`, checked against the devices this machine has."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    kind, _, number = device.partition(":")
    if kind != "cuda" or (device != "cuda" and not (number.isascii() and number.isdecimal())):
        raise InfotokError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise InfotokError(f"--device {device} asked for, but no CUDA device is available")
    if number and int(number) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise InfotokError(f"--device {device}: this machine has {count} CUDA device(s)")
    return torch.device(device)


def check_refine(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or not 0 <= steps <= MAX_REFINE:
        raise InfotokError(f"refine steps {steps!r} outside 0..{MAX_REFINE}")


def check_chunk_frames(chunk_frames: int) -> None:
    lo, hi = CHUNK_FRAMES_RANGE
    if not lo <= chunk_frames <= hi or chunk_frames % TEMPORAL_STRIDE:
        raise InfotokError(
            f"chunk frames {chunk_frames} is not a multiple of {TEMPORAL_STRIDE} in {lo}..{hi}"
        )


def as_model(model: LoadedModel | str | Path | None) -> LoadedModel:
    return model if isinstance(model, LoadedModel) else load_model(model)


def check_light_head(model: LoadedModel) -> None:
    """Refuse the `light` router for a model file without its head, naming the fix."""
    if model.light_head is None:
        raise ModelError(
            f"model {model.name} has no light router head: fit one with "
            "`infotok fit-router MODEL --data DIR`"
        )
