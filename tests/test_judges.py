"""The perceptual judges (ST-LPIPS, VMAF) on real frames: a dev clip where the shared data is
present, else a textured clip made in code and round-tripped through a real H.264 file."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from infotok_codec.bench import reference_frames
from infotok_codec.bench.classical import CODECS, encode_classical
from infotok_codec.metrics import Scorer, default_metrics, judges

from helpers import DEV, assert_one_line_error, make_clip, pattern, read_all

# Heavy work per frame (the LPIPS network): few frames, 128×128 (VMAF's four scales fit).
FRAMES, SIDE = 8, 128


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """`(8, 128, 128, 3)` uint8 natural frames: a dev clip's, else a made clip's as decoded."""
    dev = DEV / "cotrack_bear.mp4"
    if dev.is_file():
        return reference_frames(dev, FRAMES, SIDE)
    path = tmp_path_factory.mktemp("judges") / "textured.mp4"
    return read_all(make_clip(path, pattern(FRAMES, SIDE, SIDE)))


def blurred(clip: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian blur (per frame and channel, reflect borders) of a `(n, H, W, 3)` uint8 clip."""
    radius = int(3 * sigma)
    taps = torch.exp(-(torch.arange(-radius, radius + 1.0) ** 2) / (2 * sigma**2))
    taps = taps / taps.sum()
    x = torch.from_numpy(clip).permute(0, 3, 1, 2).float()
    x = F.pad(x, (radius,) * 4, mode="reflect")
    x = F.conv2d(x, taps.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    x = F.conv2d(x, taps.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def clean_copy(clip: np.ndarray, tmp_path: Path) -> np.ndarray:
    """The clip through a real x264 file at CRF 18: visually clean, not identical."""
    path = tmp_path / "clean.mkv"
    encode_classical(CODECS["x264"], clip, Fraction(25), 18, path)
    return read_all(path)


def test_identical_clips_score_lpips_zero_and_vmaf_at_least_95(frames: np.ndarray) -> None:
    scores = Scorer(frames, ("psnr", "lpips", "vmaf"))(frames.copy())
    assert scores["lpips"] == pytest.approx(0.0, abs=1e-6)
    assert scores["vmaf"] >= 95


def test_blurred_copy_scores_worse_than_clean_copy_on_both_judges(
    frames: np.ndarray, tmp_path: Path
) -> None:
    score = Scorer(frames, ("psnr", "lpips", "vmaf"))
    clean = score(clean_copy(frames, tmp_path))
    soft, heavy = score(blurred(frames, 1.0)), score(blurred(frames, 3.0))
    assert 0 < clean["lpips"] < soft["lpips"] < heavy["lpips"]
    assert clean["vmaf"] > soft["vmaf"] > heavy["vmaf"]
    # A heavy blur is far from "excellent" on VMAF's 0–100 scale, a clean copy close to it.
    assert clean["vmaf"] > 80 and heavy["vmaf"] < 50


def test_lpips_on_every_kth_frame_judges_only_those_frames(frames: np.ndarray) -> None:
    distorted = frames.copy()
    distorted[1::2] = blurred(frames[1::2], 3.0)  # odd frames only
    every_other = Scorer(frames, ("psnr", "lpips"), lpips_every=2)(distorted)
    every = Scorer(frames, ("psnr", "lpips"))(distorted)
    assert every_other["lpips"] == pytest.approx(0.0, abs=1e-6)
    assert every["lpips"] > 0.01
    assert every_other["psnr"] == every["psnr"]


def test_our_st_lpips_network_holds_every_tensor_of_the_wheels_weight_file() -> None:
    # `st_lpips` loads with strict=True; here the loaded values are compared one by one.
    spec = importlib.util.find_spec("stlpips_pytorch")
    assert spec is not None and spec.submodule_search_locations is not None
    path = Path(next(iter(spec.submodule_search_locations))) / judges.ST_LPIPS_WEIGHTS
    stored = torch.load(path, map_location="cpu", weights_only=True)
    ours = judges.st_lpips().state_dict()
    assert set(stored) == set(ours)
    assert all(torch.equal(stored[k], ours[k]) for k in stored)


def test_judges_score_with_the_network_switched_off(tmp_path: Path) -> None:
    # Weights and model come from the installed packages: no socket may be opened.
    script = tmp_path / "offline.py"
    script.write_text(
        "import socket\n"
        "def refuse(*args, **kwargs):\n"
        "    raise OSError('network used')\n"
        "socket.socket.connect = socket.socket.connect_ex = refuse\n"
        "socket.getaddrinfo = refuse\n"
        "import numpy as np\n"
        "from infotok_codec.metrics import Scorer\n"
        "clip = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)\n"
        "print(Scorer(clip, ('psnr', 'lpips', 'vmaf'))(clip))\n"
    )
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "'lpips': 0.0" in run.stdout


HIDE_JUDGES = (
    "import sys\n"
    "sys.modules['stlpips_pytorch'] = None\n"
    "sys.modules['vmaf_torch'] = None\n"
    "from infotok_codec.cli import main\n"
    "sys.argv = ['infotok', *sys.argv[1:]]\n"
    "main()\n"
)


def without_judges(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The CLI in a Python where neither judge's package can be imported."""
    return subprocess.run(
        [sys.executable, "-c", HIDE_JUDGES, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_bench_without_the_judges_packages_runs_without_them(
    clip, tiny_model: Path, tmp_path: Path
) -> None:
    assert {"lpips", "vmaf"} <= set(default_metrics())  # installed here (the dev extra)
    out = tmp_path / "res"
    common = ["bench", clip(frames=8), "--model", tiny_model, "--routers", "uniform"]
    common += ["--budgets", "1.0", "--codecs", "none", "--frames", "8", "--size", "32"]
    run = without_judges(*common, "--out", out, "--json")
    assert run.returncode == 0, run.stderr
    rows = json.loads((out / "results.json").read_text())["results"]
    assert rows and all("lpips" not in r["metrics"] and "vmaf" not in r["metrics"] for r in rows)
    asked = without_judges(*common, "--metrics", "psnr,vmaf", "--out", tmp_path / "res2")
    assert_one_line_error(asked, 2, "metric 'vmaf' needs the vmaf-torch package")  # usage
    assert not (tmp_path / "res2").exists()


@pytest.mark.parametrize(("side", "judged"), [(20, {"vmaf"}), (21, {"lpips", "vmaf"}), (16, set())])
def test_judges_leave_out_frames_too_small_for_their_scales(side: int, judged: set[str]) -> None:
    clip = pattern(3, side, 40)
    scores = Scorer(clip, ("psnr", "lpips", "vmaf"))(clip)
    assert {"lpips", "vmaf"} & set(scores) == judged
