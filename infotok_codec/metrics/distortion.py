"""Distortion metrics between a decoded clip and its source, both `(n, H, W, 3)` uint8 RGB."""

from __future__ import annotations

import math

import numpy as np
import torch
from pytorch_msssim import ms_ssim, ssim

from infotok_codec.errors import InfotokError
from infotok_codec.metrics import judges

METRICS = ("psnr", "ssim", "msssim", "lpips", "vmaf")
# MS-SSIM's five scales with an 11-tap window need a short side above (11 - 1) · 2^4 = 160.
MSSSIM_MIN_SIDE = 161


def default_metrics() -> tuple[str, ...]:
    """PSNR, SSIM, MS-SSIM, and the perceptual judges whose packages are installed."""
    return ("psnr", "ssim", "msssim", *(j for j in judges.JUDGES if judges.available(j)))


def check_metrics(names: tuple[str, ...]) -> None:
    """Raise `InfotokError` for an unknown metric or a judge whose package is missing."""
    for name in names:
        if name not in METRICS:
            raise InfotokError(f"unknown metric {name!r}: choose from {', '.join(METRICS)}")
        if name in judges.JUDGES:
            judges.require(name)


def psnr_pooled(decoded: np.ndarray, source: np.ndarray) -> float:
    """PSNR-RGB in dB from one MSE over the whole clip."""
    mse = float(np.mean((decoded.astype(np.float64) - source.astype(np.float64)) ** 2))
    return 10 * math.log10(255**2 / max(mse, 1e-10))


def psnr_per_frame_mean(decoded: np.ndarray, source: np.ndarray) -> float:
    """Mean over frames of each frame's PSNR-RGB in dB (identical frames count as 100 dB)."""
    diff = decoded.astype(np.float64) - source.astype(np.float64)
    mse = np.mean(diff**2, axis=(1, 2, 3))
    return float(np.mean(10 * np.log10(255**2 / np.maximum(mse, 1e-10))))


def _frames(clip: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(clip)).permute(0, 3, 1, 2).float()


class Scorer:
    """The asked-for metrics of decoded clips against one source clip.

    SSIM-type scores, LPIPS and VMAF are means over frames; MS-SSIM, LPIPS and VMAF only where
    the frames' short side fits their scales (see the `*_MIN_SIDE` constants). LPIPS
    (about 50 times PSNR's cost) may judge every `lpips_every`-th frame only (0, k, 2k, ...);
    it keeps the source's features (about 10 MB a judged frame at 256×256), so each decoded
    clip costs one network pass, not two.
    """

    def __init__(
        self,
        source: np.ndarray,
        names: tuple[str, ...] = ("psnr", "ssim", "msssim"),
        lpips_every: int = 1,
    ) -> None:
        self.source = source
        self.names = names
        self.lpips_every = lpips_every
        fits = min(source.shape[1:3]) >= judges.LPIPS_MIN_SIDE
        self.lpips_reference = (
            judges.LpipsReference(source[::lpips_every]) if "lpips" in names and fits else None
        )

    def __call__(self, decoded: np.ndarray) -> dict[str, float]:
        source, names = self.source, self.names
        if decoded.shape != source.shape:
            raise ValueError(f"decoded {decoded.shape} and source {source.shape} differ")
        out: dict[str, float] = {}
        if "psnr" in names:
            out["psnr"] = psnr_pooled(decoded, source)
            out["psnr_frame_mean"] = psnr_per_frame_mean(decoded, source)
        with torch.no_grad():
            a, b = _frames(decoded), _frames(source)
            if "ssim" in names:
                out["ssim"] = float(ssim(a, b, data_range=255, size_average=True))
            if "msssim" in names and min(source.shape[1:3]) >= MSSSIM_MIN_SIDE:
                out["msssim"] = float(ms_ssim(a, b, data_range=255, size_average=True))
        if self.lpips_reference is not None:
            out["lpips"] = self.lpips_reference.distance(decoded[:: self.lpips_every])
        if "vmaf" in names and min(source.shape[1:3]) >= judges.VMAF_MIN_SIDE:
            out["vmaf"] = judges.vmaf(decoded, source)
        return out
