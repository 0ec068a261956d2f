"""`infotok bench` on one generated clip: real files, and sizes in the JSON that match them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from infotok_codec.bench import bd_rate
from infotok_codec.bench.runner import lagrangian_allocation

from helpers import assert_one_line_error, infotok


def test_bench_reports_the_real_sizes_of_the_files_it_wrote(
    clip, tiny_model: Path, tmp_path: Path
) -> None:
    src = clip(frames=24, width=96, height=64, name="gen.mp4")
    out = tmp_path / "res"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "infotok_codec",
            "bench",
            str(src),
            "--model",
            str(tiny_model),
            "--budgets",
            "0.5,1.0",
            "--routers",
            "elbo,fixed",
            "--codecs",
            "x264",
            "--crfs",
            "30,40",
            "--frames",
            "24",
            "--size",
            "64",
            "--out",
            str(out),
            "--keep-files",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads((out / "results.json").read_text())
    rows = report["results"]
    assert {(r["method"], r["param"]) for r in rows} == {
        ("elbo", 0.5),
        ("elbo", 1.0),
        ("fixed", 0.5),
        ("fixed", 1.0),
        ("x264", 30),
        ("x264", 40),
    }
    for r in rows:
        ext = "itok" if r["method"] in ("elbo", "fixed") else "mkv"
        param = r["param"] if ext == "itok" else int(r["param"])
        path = out / "files" / f"gen.mp4.{r['method']}.{param}.{ext}"
        assert r["bytes"] == path.stat().st_size, path
        assert r["bpp"] == pytest.approx(8 * r["bytes"] / (24 * 64 * 64))
        # The judges are on by default where installed (the dev extra installs them).
        assert {"psnr", "psnr_frame_mean", "ssim", "lpips", "vmaf"} <= set(r["metrics"])
        assert r["metrics"]["lpips"] >= 0 and 0 <= r["metrics"]["vmaf"] <= 100
    assert report["device"].startswith("cpu")
    assert set(report["versions"]) >= {"stlpips-pytorch", "vmaf-torch"}
    assert set(report["summary"]["bd_rate_vs_x264"]["vmaf"]) == {"elbo", "fixed", "x264"}
    for plot in ("rd_psnr.png", "rd_lpips.png", "rd_vmaf.png"):
        assert (out / plot).read_bytes()[:4] == b"\x89PNG"
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert len(csv_lines) == len(rows) + 1
    assert {"lpips", "vmaf"} <= set(csv_lines[0].split(","))


def test_bench_qualities_reports_each_chunk_against_its_target(
    clip, tiny_model: Path, tmp_path: Path
) -> None:
    src = clip(frames=32, width=64, height=64, name="q.mp4")
    out = tmp_path / "res"
    run = infotok(
        "bench",
        src,
        "--model",
        tiny_model,
        "--budgets",
        "0.5",
        "--routers",
        "elbo",
        "--codecs",
        "none",
        "--frames",
        "32",
        "--size",
        "64",
        "--qualities",
        "12,60",
        "--out",
        out,
    )
    assert run.returncode == 0, run.stderr
    assert "--quality: chunks in [Q, Q + 0.5] dB" in run.stdout
    report = json.loads((out / "results.json").read_text())
    rows = {r["param"]: r for r in report["results"] if r["method"] == "quality"}
    assert set(rows) == {12.0, 60.0}
    landing = {t["target_db"]: t for t in report["summary"]["quality"]["q.mp4"]}
    # Nothing reaches 60 dB: every chunk kept whole, and counted.
    assert rows[60.0]["chunk_rates"] == [1.0, 1.0]
    assert landing[60.0]["unreachable"] == 2 and landing[60.0]["in_window"] == 0
    # 12 dB is below what one token gives: every chunk reaches it with few tokens.
    assert all(p >= 12 for p in rows[12.0]["chunk_psnr"])
    assert landing[12.0]["unreachable"] == 0 and rows[12.0]["rate"] < 1.0
    assert landing[12.0]["below_target"] == 0
    # One budget is no curve to read a --quality target's mean PSNR on.
    assert report["summary"]["quality_against_budget"] == []


@pytest.mark.parametrize(
    ("option", "value", "needle"),
    [
        ("--codecs", "x266", "unknown codec 'x266'"),
        ("--metrics", "psnr,lpipz", "unknown metric 'lpipz'"),
        ("--lpips-every", "0", "must be at least 1"),
        ("--metrics", "ssim", "must include psnr"),
        ("--frames", "0", "must be positive"),
        ("--budgets", "0.5,2", "budget 2.0 outside"),
        ("--routers", "tail", "unknown router 'tail'"),
        ("--qualities", "25,0", "quality target 0 outside"),
        ("--crfs", "23.5", "whole numbers only"),
        ("--device", "cuda:x", "unknown device"),
    ],
)
def test_bad_settings_are_one_line_before_any_work(
    clip, tmp_path: Path, option: str, value: str, needle: str
) -> None:
    src = clip(frames=4)
    run = infotok("bench", src, option, value, "--out", tmp_path / "res")
    assert_one_line_error(run, 2, needle)  # a usage error, as on every command
    assert not (tmp_path / "res").exists()


@pytest.mark.parametrize("existing", ["file", "file-above", "results"])
def test_results_are_not_replaced_without_force(clip, tmp_path: Path, existing: str) -> None:
    res = tmp_path / "res"
    out = res / "sub" if existing == "file-above" else res
    if existing.startswith("file"):
        res.write_bytes(b"precious")
    else:
        res.mkdir()
        (res / "results.json").write_bytes(b"precious")
    run = infotok("bench", clip(frames=4), "--codecs", "none", "--out", out)
    needle = "use --force" if existing == "results" else "is not a folder"
    assert_one_line_error(run, 1, needle)
    assert (res / "results.json" if existing == "results" else res).read_bytes() == b"precious"


def test_bd_rate_of_a_curve_shifted_to_half_the_rate_is_minus_fifty() -> None:
    rate = [0.1, 0.2, 0.4, 0.8]
    quality = [30.0, 33.0, 36.0, 39.0]
    import numpy as np

    anchor = (np.array(rate), np.array(quality))
    test = (np.array(rate) / 2, np.array(quality))
    assert bd_rate(anchor, test) == pytest.approx(-50.0)
    assert bd_rate(anchor, anchor) == pytest.approx(0.0)


def test_lagrangian_allocation_spends_where_distortion_falls_most() -> None:
    # Chunk 0 gains a lot from more tokens, chunk 1 nothing: the budget goes to chunk 0.
    distortion = [[100.0, 50.0, 10.0], [5.0, 5.0, 5.0]]
    counts = [[1, 2, 4], [1, 2, 4]]
    assert lagrangian_allocation(distortion, counts, target=5) == [4, 1]


def test_routers_are_compared_at_one_bpp_not_at_one_budget() -> None:
    import math

    from infotok_codec.bench import BenchRow
    from infotok_codec.bench.report import routers_at_equal_bpp

    def curve(method: str, bits_per_budget: float, offset_db: float) -> list[BenchRow]:
        # PSNR linear in log bpp, so reading the curve between its points is exact.
        return [
            BenchRow(
                clip="c",
                method=method,
                param=b,
                bytes=0,
                bpp=bits_per_budget * b,
                metrics={"psnr": 30 + 10 * math.log2(bits_per_budget * b / 0.1) + offset_db},
                seconds={},
                frames=1,
            )
            for b in (0.25, 0.5, 1.0)
        ]

    # `uniform` spends fewer bits per budget and is 1 dB worse at any bpp.
    by = {("c", "fixed"): curve("fixed", 0.2, 0.0), ("c", "uniform"): curve("uniform", 0.16, -1.0)}
    result = routers_at_equal_bpp(by, ["c"], 0.5)
    assert result is not None
    assert result["bpp"] == pytest.approx(0.09)
    assert result["psnr"]["fixed"] == pytest.approx(30 + 10 * math.log2(0.9), abs=1e-3)
    margin = result["margins_db"]["fixed_minus_uniform"]
    assert margin["mean"] == pytest.approx(1.0, abs=1e-3) and margin["wins"] == 1
    # At the lowest budget the routers' mean bpp lies below `fixed`'s curve: read at its start.
    lowest = routers_at_equal_bpp(by, ["c"], 0.25)
    assert lowest is not None and lowest["bpp"] == pytest.approx(0.05)
    assert lowest["margins_db"]["fixed_minus_uniform"]["mean"] == pytest.approx(1.0, abs=1e-3)


def test_quality_is_compared_with_one_budget_at_the_same_mean_psnr() -> None:
    from infotok_codec.bench import BenchRow
    from infotok_codec.bench.quality import quality_against_budget

    def row(clip: str, method: str, param: float, rate: float, psnr: float) -> BenchRow:
        return BenchRow(
            clip=clip,
            method=method,
            param=param,
            bytes=0,
            bpp=0.1 * rate,
            metrics={"psnr": psnr},
            seconds={},
            frames=16,
            rate=rate,
        )

    # Tokens buy the "flat" clip little (30 + 2b dB) and the "busy" one much (16 + 12b): one
    # budget b for both gives a mean of 23 + 7b dB, 26.5 at 0.5 and 30 at 1.0.
    rows = [row("flat", "elbo", b, b, 30 + 2 * b) for b in (0.5, 1.0)]
    rows += [row("busy", "elbo", b, b, 16 + 12 * b) for b in (0.5, 1.0)]
    # --quality 28: the flat clip meets it at 0.25 tokens, the busy one needs all: mean 29.25 dB
    # with 0.625 of the tokens, where one budget needs (29.25 - 23) / 7 = 0.893 of them.
    rows += [row("flat", "quality", 28, 0.25, 30.5), row("busy", "quality", 28, 1.0, 28.0)]
    # --quality 40: both whole, as budget 1.0. --quality 20: a mean below the budget curve.
    rows += [row("flat", "quality", 40, 1.0, 32.0), row("busy", "quality", 40, 1.0, 28.0)]
    rows += [row("flat", "quality", 20, 0.25, 30.5), row("busy", "quality", 20, 0.34, 20.08)]
    result = {t["target_db"]: t for t in quality_against_budget(rows, "elbo")}
    assert set(result) == {20, 28, 40}
    at28 = result[28]
    assert at28["mean_psnr"] == pytest.approx(29.25) and at28["quality"]["tokens"] == 0.625
    assert at28["budget"]["budget"] == pytest.approx(6.25 / 7, abs=1e-4)
    assert at28["budget"]["tokens"] == pytest.approx(6.25 / 7, abs=1e-4)
    assert at28["tokens_saved_percent"] == pytest.approx(30.0, abs=0.01)
    assert at28["bits_saved_percent"] == pytest.approx(30.0, abs=0.01)
    assert result[40]["budget"]["budget"] == 1.0 and result[40]["tokens_saved_percent"] == 0.0
    assert result[20]["budget"] is None and result[20]["tokens_saved_percent"] is None
    # A clip without every budget's row does not count.
    partial = [r for r in rows if not (r.clip == "busy" and r.method == "elbo" and r.param == 0.5)]
    assert [t["mean_psnr"] for t in quality_against_budget(partial, "elbo")] == [30.5, 30.5, 32.0]


def test_set_budget_spends_one_budget_over_every_clip(
    clip, tiny_model: Path, tmp_path: Path
) -> None:
    from infotok_codec.media import VideoWriter

    from helpers import pattern

    busy = clip(frames=32, width=64, height=64, name="busy.mp4")
    # A clip of one flat grey: its full-rate error is far below the busy clip's.
    flat = tmp_path / "flat.mkv"
    grey = pattern(32, 64, 64)
    grey[:] = 128
    with VideoWriter(flat, 64, 64, 25) as writer:
        writer.write(grey)
    out = tmp_path / "res"
    run = infotok(
        "bench",
        busy,
        flat,
        "--model",
        tiny_model,
        "--budgets",
        "0.5,1.0",
        "--routers",
        "elbo",
        "--codecs",
        "none",
        "--metrics",
        "psnr",
        "--frames",
        "32",
        "--size",
        "64",
        "--set-budget",
        "--out",
        out,
        "--keep-files",
    )
    assert run.returncode == 0, run.stderr
    assert "set budget 0.5: set mean" in run.stdout
    report = json.loads((out / "results.json").read_text())
    rows = {(r["clip"], r["method"], r["param"]): r for r in report["results"]}
    assert {k for k in rows if k[1] == "global"} == {
        ("busy.mp4", "global", 0.5),
        ("flat.mkv", "global", 0.5),
    }
    for name in ("busy.mp4", "flat.mkv"):
        assert (out / "files" / f"{name}.global.0.5.itok").stat().st_size == rows[
            (name, "global", 0.5)
        ]["bytes"]
    busy_rate = rows[("busy.mp4", "global", 0.5)]["rate"]
    flat_rate = rows[("flat.mkv", "global", 0.5)]["rate"]
    # Both clips have as many positions: together they keep half, the busy one more of it.
    assert (busy_rate + flat_rate) / 2 == pytest.approx(0.5, abs=0.01)
    assert busy_rate > 0.52 and flat_rate < 0.48
    # Per clip, `elbo` keeps half of each.
    assert rows[("busy.mp4", "elbo", 0.5)]["rate"] == pytest.approx(0.5, abs=0.01)
    (entry,) = report["summary"]["global_against_budget"]
    assert entry["set_budget"] == 0.5 and set(entry["per_clip"]) == {"busy.mp4", "flat.mkv"}


def test_set_budget_runs_pass_1_once_per_clip(
    clip, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from infotok_codec.bench import runner
    from infotok_codec.bench.runner import BenchSettings, run_bench

    made: list[Path] = []

    class CountedAnalysis(runner.Analysis):  # the real pass 1, counted
        def __init__(self, src, *args, **kwargs):  # type: ignore[no-untyped-def]
            made.append(Path(src))
            super().__init__(src, *args, **kwargs)

    monkeypatch.setattr(runner, "Analysis", CountedAnalysis)
    a = clip(frames=16, width=64, height=64, name="a.mp4")
    b = clip(frames=16, width=64, height=64, name="b.mkv")
    settings = BenchSettings(
        budgets=(0.5, 1.0),
        routers=("elbo", "fixed"),
        codecs=(),
        metrics=("psnr",),
        frames=16,
        size=64,
        set_budget=True,
    )
    report = run_bench([a, b], settings, tmp_path / "res", model=tiny_model, keep_files=True)
    # One analysis per clip serves the set allocation and every row of that clip.
    assert sorted(p.name for p in made) == ["a.mp4.source.mkv", "b.mkv.source.mkv"]
    methods = {(r.clip, r.method, r.param) for r in report.results}
    for name in ("a.mp4", "b.mkv"):
        assert {(name, "global", 0.5), (name, "elbo", 0.5), (name, "fixed", 0.5)} <= methods
    # Scored against the lossless source its analysis read: budget 1.0 is the same file for
    # every method, so the same PSNR.
    full = {(r.clip, r.method): r.metrics["psnr"] for r in report.results if r.param == 1.0}
    for name in ("a.mp4", "b.mkv"):
        assert full[(name, "elbo")] == full[(name, "fixed")] > 10


def test_set_budget_needs_elbo_to_compare_with() -> None:
    from infotok_codec import InfotokError
    from infotok_codec.bench import BenchSettings

    with pytest.raises(InfotokError, match="include it in --routers"):
        BenchSettings(routers=("fixed",), set_budget=True)


def test_set_counts_is_the_elbo_allocation_over_all_chunks() -> None:
    from infotok_codec.bench.set_budget import set_counts
    from infotok_codec.routing.router import allocate_counts

    chunks = {"b": ([256, 256], [0.2, 0.1]), "a": ([256, 128], [0.05, 0.05])}
    counts = set_counts(chunks, [0.25, 0.5])
    for budget in (0.25, 0.5):
        joint = allocate_counts("elbo", budget, [256, 128, 256, 256], [0.05, 0.05, 0.2, 0.1])
        assert counts["a"][budget] + counts["b"][budget] == joint
    one = set_counts({"only": ([256, 256], [0.2, 0.1])}, [0.5])
    assert one["only"][0.5] == allocate_counts("elbo", 0.5, [256, 256], [0.2, 0.1])
