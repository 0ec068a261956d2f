"""The `light` router's head: the `elbo` error map predicted from the conv encoder's features.

`elbo` reads each chunk's error map off a full-rate encode *and decode*; the decode is most of an
encode's time. The head predicts the log of that map from what pass 2 computes anyway, the conv
encoder's features `(B, dim, T', h, w)` (T/4 × H/8 × W/8), so a `light` encode runs the conv encoder
once, the head, and the masked compressor. Its weights travel in the model file under
`HEAD_PREFIX`, with `HeadInfo` as JSON under the metadata key `HEAD_KEY`; a file without them still
loads and simply cannot route `light`.

Fitting it is `routing/light_router_fit.py`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from infotok_codec.errors import ModelError
from infotok_codec.model.autoencoder import SpatialConv

HEAD_PREFIX = "light_router."
HEAD_KEY = "light_router"
LOG_FLOOR = 1e-4  # errors are |x − x̂| in [0, 2]; the floor keeps log finite on flat cells


@dataclass(frozen=True)
class HeadInfo:
    """What the file says about its head: its width, and how and how well it was fitted."""

    channels: int
    windows: int  # training windows the head was fitted on
    held_out_windows: int
    steps: int
    spearman_positions: float | None  # mean over held-out windows, positions within a window
    spearman_windows: float | None  # across held-out windows, of their mean errors

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> HeadInfo:
        try:
            data = json.loads(text)
            info = cls(**data)
        except (ValueError, TypeError) as exc:
            raise ModelError(f"light router metadata is not valid ({exc})") from None
        if isinstance(info.channels, bool) or not isinstance(info.channels, int):
            raise ModelError(f"light router channels {info.channels!r} is not an integer")
        if not 1 <= info.channels <= 1024:
            raise ModelError(f"light router channels {info.channels} outside [1, 1024]")
        return info


class LightRouterHead(nn.Module):
    """Features `(B, dim, T', h, w)` → predicted log error `(B, T', h, w)`.

    A 1×1×1 projection, a 3×3 spatial conv (a position's error depends on its neighbours'
    texture) and a 1×1×1 output; 53,441 weights at dim 256, channels 64.
    """

    def __init__(self, dim: int, channels: int = 64) -> None:
        super().__init__()
        self.project = nn.Conv3d(dim, channels, 1)
        self.spatial = SpatialConv(channels, channels)
        self.out = nn.Conv3d(channels, 1, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.project(features))
        h = F.silu(self.spatial(h))
        return self.out(h)[:, 0]

    def error_map(self, features: torch.Tensor) -> torch.Tensor:
        """The predicted `elbo` error `(B, T', h, w)` float, positive."""
        return torch.exp(self(features))


def head_tensors(head: LightRouterHead) -> dict[str, torch.Tensor]:
    """The head's weights as the model file stores them (fp16, under `HEAD_PREFIX`)."""
    return {
        HEAD_PREFIX + k: v.detach().to(torch.float16).contiguous()
        for k, v in head.state_dict().items()
    }


def split_head(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str], dim: int
) -> tuple[dict[str, torch.Tensor], LightRouterHead | None]:
    """The network's tensors, and the head built strictly from the rest (None without one).

    A file that names a head must hold exactly its tensors; head tensors without the metadata
    are left with the network's, whose strict load then refuses them.
    """
    if HEAD_KEY not in metadata:
        return tensors, None
    info = HeadInfo.from_json(metadata[HEAD_KEY])
    network = {k: v for k, v in tensors.items() if not k.startswith(HEAD_PREFIX)}
    state = {
        k[len(HEAD_PREFIX) :]: v.to(torch.float32)
        for k, v in tensors.items()
        if k.startswith(HEAD_PREFIX)
    }
    head = LightRouterHead(dim, info.channels)
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelError(f"light router weights do not match its metadata ({first})") from None
    return network, head.eval()
