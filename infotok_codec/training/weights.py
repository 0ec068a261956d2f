"""Starting a run from a model file (`--init`): its weights into a model that may be deeper,
and the refusals that keep a fine-tune honest."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch

from infotok_codec.errors import InfotokError, ModelError
from infotok_codec.model.light_router import split_head
from infotok_codec.model.tokenizer import Tokenizer, TokenizerConfig, read_model_file
from infotok_codec.training.options import GROWABLE


def init_weights(model: Tokenizer, path: Path) -> list[str]:
    """Load a model file's weights into `model` for fine-tuning; returns the tensors it lacked.

    The config must match, except that the model may have more residual blocks per conv stage
    (and another name): the file's blocks fill each stage from the front and the new ones keep
    their initialisation, which is the identity (a zero last layer), so a deeper model starts
    exactly as the file's. Tensors the file lacks (added since it was written) keep their
    initialisation too, and every tensor it has must fit.
    """
    tensors, metadata, _ = read_model_file(path)
    try:
        saved = TokenizerConfig.from_json(metadata.get("config", ""))
    except ValueError as exc:
        raise InfotokError(f"{path}: not a safetensors model ({exc})") from None
    if not _grows(saved, model.config):
        raise InfotokError(f"{path}: its model config differs from the one being trained")
    # A light router head was fitted to the file's network; the network about to change makes
    # it stale, so it is left out (the run fits a new one at its end, see `_finalize`).
    try:
        tensors, _ = split_head(tensors, metadata, saved.dim)
    except ModelError as exc:
        raise InfotokError(f"{path}: {exc}") from None
    try:
        result = model.load_state_dict(
            {k: v.to(torch.float32) for k, v in tensors.items()}, strict=False
        )
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise InfotokError(f"{path}: weights do not fit ({first})") from None
    if result.unexpected_keys:
        raise InfotokError(f"{path}: unknown tensors {', '.join(result.unexpected_keys)}")
    return list(result.missing_keys)


def refuse_frozen_new(model: Tokenizer, new: Sequence[str]) -> None:
    """Refuse tensors new to the model (`init_weights`) in its frozen part (`--decoder-only`):
    a new block there would stay as it started, dead compute in every encode."""
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    if frozen.intersection(new):
        raise InfotokError("--decoder-only freezes the encoder: it cannot start with new blocks")


def _grows(saved: TokenizerConfig, config: TokenizerConfig) -> bool:
    """Whether `config` is `saved` or `saved` with more conv residual blocks per stage."""
    same = dataclasses.replace(saved, name=config.name, **{k: getattr(config, k) for k in GROWABLE})
    return same == config and all(getattr(config, k) >= getattr(saved, k) for k in GROWABLE)
