"""What the token coders learn from training clips after training: the frequency tables (every
coder's static model and the `adaptive` coder's prior) and the `context` coder's key prior (the
counts a key chunk starts from). `infotok train` fits both at the end of a run and
`infotok fit-coder` refits them for an existing model file, its network left as it is."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from infotok_codec.bitstream import FrequencyTables, fit_key_prior
from infotok_codec.model import Tokenizer, autocast, load_model, replace_tables, use_bf16
from infotok_codec.outputs import check_output
from infotok_codec.routing import keep_count, select_positions

TABLE_WINDOW = 128
"""Pixels on a side of the 16-frame windows the tables are fitted on (one every 64 frames)."""
PRIOR_WINDOW = 256
"""Pixels on a side of the 32-frame windows (two chunks) the key prior is fitted on: the size
the dev benchmarks code."""
PRIOR_RATES = (1.0, 0.5)
"""Each prior window is coded at full rate and with the `fixed` router's mask at rate 0.5."""
TokenChain = list[tuple[np.ndarray, np.ndarray]]
"""A key chunk and the chunks chained to it, as ``(indices, keep-mask)``."""


def _video(window: np.ndarray, device: torch.device) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(window)).to(device)
    return x.permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0


def _centre(clip: np.ndarray, t0: int, frames: int, size: int) -> np.ndarray:
    y, x = (clip.shape[1] - size) // 2, (clip.shape[2] - size) // 2
    return clip[t0 : t0 + frames, y : y + size, x : x + size]


@torch.no_grad()
def fit_tables(model: Tokenizer, clips: Sequence[np.ndarray], device: torch.device) -> str:
    """Frequency tables (JSON) from full-rate tokens of training windows."""
    tokens = []
    for clip in clips:
        if clip.shape[0] < 16 or min(clip.shape[1:3]) < TABLE_WINDOW:
            continue
        for t0 in range(0, clip.shape[0] - 15, 64):
            window = _video(_centre(clip, t0, 16, TABLE_WINDOW), device)
            tokens.append(model.encode(window).flatten().cpu().numpy())
    indices = np.concatenate(tokens) if tokens else np.zeros(0, dtype=np.int64)
    return FrequencyTables.fit(indices, model.config.levels).to_json()


@torch.no_grad()
def prior_chains(
    model: Tokenizer, clips: Sequence[np.ndarray], device: torch.device
) -> list[TokenChain]:
    """Token chains for `fit_key_prior`: the first 32 frames of each clip (centre
    `PRIOR_WINDOW` square, or the largest that fits, cut to a multiple of 64 pixels) as two
    16-frame chunks, at each of `PRIOR_RATES`."""
    chains: list[TokenChain] = []
    with autocast(device, use_bf16(None, device)):
        for clip in clips:
            size = min(PRIOR_WINDOW, *clip.shape[1:3]) // 64 * 64
            if clip.shape[0] < 32 or size == 0:
                continue
            by_rate: dict[float, TokenChain] = {rate: [] for rate in PRIOR_RATES}
            for t0 in (0, 16):
                video = _video(_centre(clip, t0, 16, size), device)
                features = model.features(video)  # once per chunk, for every rate and the map
                error = model.error_map(video, features)[0].float().cpu().numpy()
                for rate, chain in by_rate.items():
                    keep = np.ones(error.shape, dtype=bool)
                    mask = None
                    if rate < 1.0:
                        count = keep_count(rate, error.size)
                        keep = select_positions("fixed", error, error.shape, count)
                        mask = torch.from_numpy(keep)[None].to(device)
                    indices = model.encode_features(features, mask)[0].cpu().numpy()
                    chain.append((indices, keep))
            chains += by_rate.values()
    return chains


def fit_coder(model: Tokenizer, clips: Sequence[np.ndarray], device: torch.device) -> str:
    """The model file's coder tables (JSON): frequency tables, then the key prior fitted with
    them. The network is put in eval mode for this and left as it was found."""
    was_training = model.training
    model.eval()
    try:
        tables = FrequencyTables.from_json(fit_tables(model, clips, device))
        prior = fit_key_prior(prior_chains(model, clips, device), tables)
    finally:
        model.train(was_training)
    return tables.with_context_prior(prior.to_json()).to_json()


def refit_model_file(
    src: str | Path,
    dst: str | Path,
    data: Sequence[Path],
    *,
    short_side: int = 256,
    max_frames: int = 64,
    force: bool = False,
) -> FrequencyTables:
    """Fit the coder tables for the model file `src` on the clips under `data` (scaled to
    `short_side`, the first `max_frames` frames of each) and write `src` with them to `dst`."""
    from infotok_codec import media  # PyAV: only where files are decoded

    check_output(Path(dst), force)
    loaded = load_model(src)
    loaded.check_encodes()
    clips = media.read_clips(data, max_frames=max_frames, short_side=short_side)
    tables_json = fit_coder(loaded.tokenizer, clips, torch.device("cpu"))
    replace_tables(src, dst, tables_json, force=force)
    return FrequencyTables.from_json(tables_json)
