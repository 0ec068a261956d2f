"""How far a decoded clip is from its source: PSNR, SSIM, MS-SSIM (`distortion`) and the
perceptual judges LPIPS and VMAF (`judges`). Clips are `(n, H, W, 3)` uint8 RGB.

Below both `routing` (a `--quality` encode searches for a target PSNR) and `bench`.
"""

from infotok_codec.metrics.distortion import (
    METRICS,
    Scorer,
    check_metrics,
    default_metrics,
    psnr_per_frame_mean,
    psnr_pooled,
)

__all__ = [
    "METRICS",
    "Scorer",
    "check_metrics",
    "default_metrics",
    "psnr_per_frame_mean",
    "psnr_pooled",
]
