"""Perceptual judges: LPIPS (its shift-tolerant AlexNet form) and VMAF, both from installed
packages only, nothing fetched at run time.

- LPIPS: `stlpips-pytorch` ships ST-LPIPS's AlexNet and linear-layer weights in its wheel, but its
  code imports torchvision, IPython and torchsummary. `STLPIPS` below is the same network
  (AlexNet with blur-pooled strides, Ghildyal & Liu, ECCV 2022) written here and loaded strictly
  from the wheel's weight file. It is not numerically the original LPIPS (whose AlexNet weights
  torchvision downloads), so figures compare with ST-LPIPS ones, not with LPIPS tables.
- VMAF: `vmaf-torch` (VMAF v0.6.1 in PyTorch, the SVM model built into its code) on the luma
  plane an FFmpeg `yuv420p` encode of the RGB frames would carry (BT.601, limited range).

Both take clips `(n, H, W, 3)` uint8 RGB, the reference and the decoded one frame for frame.
"""

from __future__ import annotations

import importlib.util
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from infotok_codec.errors import InfotokError


@dataclass(frozen=True)
class Judge:
    module: str  # the installed package's import name
    distribution: str  # its name on PyPI
    note: str  # what the score is, for the bench's settings record


JUDGES = {
    "lpips": Judge(
        "stlpips_pytorch",
        "stlpips-pytorch",
        "ST-LPIPS with its AlexNet (stlpips-pytorch's weights), RGB, mean over the judged frames "
        "(every lpips_every-th); not the original LPIPS's numbers",
    ),
    "vmaf": Judge(
        "vmaf_torch",
        "vmaf-torch",
        "VMAF v0.6.1 (vmaf-torch, float features) on BT.601 limited-range luma, scores clipped "
        "to 0-100, mean over frames",
    ),
}
INSTALL_HINT = "pip install 'infotok-codec[judges]'"
# Frames per forward pass: bounds memory (AlexNet's first layer at 256×256 is 16 MB a frame).
BATCH = 8
ST_LPIPS_WEIGHTS = "weights/vST0.0/alex_shift_tolerant.pth"
# Smallest short sides the judges take: below them a reflect padding in the network (LPIPS) or
# in VMAF's four scales is wider than the image and torch refuses it (found by trying sides).
LPIPS_MIN_SIDE = 21
VMAF_MIN_SIDE = 17


class JudgeUnavailable(InfotokError):
    """A judge was asked for and its package is not installed."""


def available(name: str) -> bool:
    """Whether the package judge `name` ("lpips" or "vmaf") needs is installed (not imported)."""
    return importlib.util.find_spec(JUDGES[name].module) is not None


def require(name: str) -> None:
    if not available(name):
        raise JudgeUnavailable(
            f"metric {name!r} needs the {JUDGES[name].distribution} package ({INSTALL_HINT})"
        )


def versions(metrics: Sequence[str]) -> dict[str, str]:
    """The installed versions of the judges' packages among `metrics`, by PyPI name."""
    return {JUDGES[m].distribution: version(JUDGES[m].distribution) for m in JUDGES if m in metrics}


# -- LPIPS -----------------------------------------------------------------------------------
class BlurPool(nn.Module):
    """Stride-2 downsampling through a [1 2 1]ᵀ[1 2 1]/16 blur, reflect-padded by 2 each side
    (ST-LPIPS's "pad more"): `(B, C, H, W)` → `(B, C, ⌊H/2⌋ + 1, ⌊W/2⌋ + 1)`."""

    filt: torch.Tensor

    def __init__(self, channels: int) -> None:
        super().__init__()
        taps = torch.tensor([1.0, 2.0, 1.0])
        kernel = torch.outer(taps, taps) / 16
        # Named `filt` as in the weight file, which stores it: a strict load checks it too.
        self.register_buffer("filt", kernel.expand(channels, 1, 3, 3).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = F.pad(x, (2, 2, 2, 2), mode="reflect")
        return F.conv2d(padded, self.filt, stride=2, groups=x.shape[1])


class ScalingLayer(nn.Module):
    """LPIPS's input whitening, per RGB channel (values from the weight file)."""

    shift: torch.Tensor
    scale: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.zeros(1, 3, 1, 1))
        self.register_buffer("scale", torch.ones(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale


class STLPIPS(nn.Module):
    """ST-LPIPS with its AlexNet trunk: `forward(a, b)` with `(B, 3, H, W)` float in [-1, 1]
    gives `(B,)` distances ≥ 0 (0 for identical images; lower is closer).

    Module names mirror the weight file's keys (`net.slice1.0.weight`, `lin0.model.1.weight`),
    so `load_state_dict(strict=True)` proves every tensor found its place.
    """

    CHANNELS = (64, 192, 384, 256, 256)

    def __init__(self) -> None:
        super().__init__()
        self.scaling_layer = ScalingLayer()
        relu = nn.ReLU
        slices = [
            [("0", nn.Conv2d(3, 64, 11, padding=2)), ("1", BlurPool(64)), ("2", relu())],
            [
                ("3", nn.MaxPool2d(3, stride=1)),
                ("4", BlurPool(64)),
                ("5", nn.Conv2d(64, 192, 5, padding=2)),
                ("6", relu()),
            ],
            [
                ("7", nn.MaxPool2d(3, stride=1)),
                ("8", BlurPool(192)),
                ("9", nn.Conv2d(192, 384, 3, padding=1)),
                ("10", relu()),
            ],
            [("11", nn.Conv2d(384, 256, 3, padding=1)), ("12", relu())],
            [("13", nn.Conv2d(256, 256, 3, padding=1)), ("14", relu())],
        ]
        self.net = nn.Module()
        for i, layers in enumerate(slices, start=1):
            self.net.add_module(f"slice{i}", nn.Sequential(OrderedDict(layers)))
        for i, channels in enumerate(self.CHANNELS):
            # Index 1: the original puts a dropout (a no-op at eval) in front of each 1×1 conv.
            lin = nn.Module()
            lin.model = nn.Sequential(OrderedDict([("1", nn.Conv2d(channels, 1, 1, bias=False))]))
            self.add_module(f"lin{i}", lin)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five ReLU outputs, each unit-normalised over channels."""
        h = self.scaling_layer(x)
        out = []
        for i in range(1, 6):
            h = getattr(self.net, f"slice{i}")(h)
            out.append(h / (torch.sqrt(torch.sum(h**2, dim=1, keepdim=True)) + 1e-10))
        return out

    def distance(self, fa: list[torch.Tensor], fb: list[torch.Tensor]) -> torch.Tensor:
        """`(B,)` distances between two images' `features`."""
        total = torch.zeros(fa[0].shape[0], device=fa[0].device)
        for i, (a, b) in enumerate(zip(fa, fb, strict=True)):
            total = total + getattr(self, f"lin{i}").model((a - b) ** 2).mean(dim=(1, 2, 3))
        return total

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.distance(self.features(a), self.features(b))


@cache
def st_lpips() -> STLPIPS:
    """The network with the weights of the installed `stlpips-pytorch` wheel (loaded once)."""
    require("lpips")
    spec = importlib.util.find_spec(JUDGES["lpips"].module)
    assert spec is not None and spec.submodule_search_locations is not None
    path = Path(next(iter(spec.submodule_search_locations))) / ST_LPIPS_WEIGHTS
    model = STLPIPS()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model.eval().requires_grad_(False)


def _rgb(clip: np.ndarray) -> torch.Tensor:
    """`(n, H, W, 3)` uint8 → `(n, 3, H, W)` float in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(clip)).permute(0, 3, 1, 2).float() / 127.5 - 1


class LpipsReference:
    """ST-LPIPS against one source clip `(n, H, W, 3)` uint8, its features computed once."""

    def __init__(self, source: np.ndarray) -> None:
        self.model = st_lpips()
        with torch.no_grad():
            self.features = [
                self.model.features(_rgb(source[start : start + BATCH]))
                for start in range(0, len(source), BATCH)
            ]
        self.frames = len(source)

    def distance(self, decoded: np.ndarray) -> float:
        """Mean over frames of ST-LPIPS between `decoded` (the source's shape) and the source;
        0 for identical clips, lower is closer."""
        total = 0.0
        with torch.no_grad():
            for i, reference in enumerate(self.features):
                batch = decoded[i * BATCH : (i + 1) * BATCH]
                total += float(
                    self.model.distance(self.model.features(_rgb(batch)), reference).sum()
                )
        return total / self.frames


# -- VMAF ------------------------------------------------------------------------------------
def luma(clip: np.ndarray) -> torch.Tensor:
    """`(n, H, W, 3)` uint8 RGB → `(n, 1, H, W)` float BT.601 limited-range Y in [16, 235]:
    the plane FFmpeg's RGB → yuv420p conversion writes, which is what VMAF is trained on."""
    rgb = torch.from_numpy(np.ascontiguousarray(clip)).float()
    y = 16 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255
    return y.round().unsqueeze(1)


@cache
def _vmaf_model() -> nn.Module:
    require("vmaf")
    from vmaf_torch import VMAF

    # clip_score: scores in [0, 100] as libvmaf reports them.
    model: nn.Module = VMAF(temporal_pooling=False, enable_motion=True, clip_score=True)
    return model.eval()


def vmaf(decoded: np.ndarray, source: np.ndarray) -> float:
    """Mean over frames of VMAF v0.6.1 (0–100, higher is better; identical clips score about
    100, the first frame lower because VMAF's motion feature is 0 there)."""
    with torch.no_grad():
        scores = _vmaf_model()(luma(source), luma(decoded))
    return float(scores.mean())
