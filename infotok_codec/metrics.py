"""Distortion metrics between a decoded clip and its source, both `(n, H, W, 3)` uint8 RGB."""

from __future__ import annotations

import math

import numpy as np
import torch
from pytorch_msssim import ms_ssim, ssim

METRICS = ("psnr", "ssim", "msssim")
# MS-SSIM's five scales with an 11-tap window need a short side above (11 - 1) · 2^4 = 160.
MSSSIM_MIN_SIDE = 161


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


def measure(
    decoded: np.ndarray, source: np.ndarray, names: tuple[str, ...] = METRICS
) -> dict[str, float]:
    """The asked-for metrics; SSIM-type ones are per-frame means, MS-SSIM only where it fits."""
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
    return out
