"""Rate control: `--quality`, `--bitrate` and `--target-size` end to end on generated clips, the
exclusive options, out-of-range targets, and the byte spender's invariants."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infotok_codec import InfotokError
from infotok_codec.codec import Analysis, decode_file, encode_file
from infotok_codec.inspect import file_info
from infotok_codec.media import read_frames
from infotok_codec.rate import RateControl, choose_rate, parse_quantity
from infotok_codec.routing.rate_control import ByteCurve, ByteSpender, byte_curves, write

from helpers import assert_one_line_error, infotok, make_clip, pattern, psnr


def chunk_psnr(decoded: Path, source: Path, chunk: int = 16) -> list[float]:
    a = np.concatenate(list(read_frames(decoded)))
    b = np.concatenate(list(read_frames(source)))
    return [psnr(a[s : s + chunk], b[s : s + chunk]) for s in range(0, len(b), chunk)]


@pytest.fixture(scope="module")
def busy_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two chunks of the moving pattern, lossless: the shipped model decodes them at 17 dB with
    one token and 22.6 dB with all."""
    path = tmp_path_factory.mktemp("clips") / "busy.mkv"
    return make_clip(path, pattern(32, 64, 64), codec="ffv1", pix_fmt="bgr0")


# -- the options -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "value"),
    [("300k", 300e3), ("1.5M", 1.5e6), ("800K", 800e3), ("2M", 2e6), ("123456", 123456.0)],
)
def test_quantities_read_as_ffmpeg_reads_them(text: str, value: float) -> None:
    assert parse_quantity(text, "--bitrate") == value
    assert parse_quantity("1Ki", "--target-size") == 1024


@pytest.mark.parametrize("text", ["", "3x", "k", "1.5 MB", "-2k"])
def test_a_quantity_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(InfotokError, match="not a number with an optional k, M, G"):
        parse_quantity(text, "--bitrate")


@pytest.mark.parametrize(
    "options",
    [
        ("--budget", "0.5", "--quality", "25"),
        ("--quality", "25", "--bitrate", "300k"),
        ("--bitrate", "300k", "--target-size", "2M"),
        ("--budget", "0.5", "--target-size", "2M"),
    ],
)
def test_rate_options_are_exclusive(tmp_path: Path, clip, options: tuple[str, ...]) -> None:
    run = infotok("encode", clip(frames=8), tmp_path / "o.itok", *options)
    assert_one_line_error(run, 2, "exclusive", options[0][2:])
    assert not (tmp_path / "o.itok").exists()


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        (("--bitrate", "3x"), "--bitrate '3x'"),
        (("--target-size", "0"), "size target 0 outside"),
        (("--quality", "-3"), "quality target -3 outside"),
    ],
)
def test_a_bad_rate_target_is_a_usage_error(
    tmp_path: Path, clip, options: tuple[str, ...], needle: str
) -> None:
    assert_one_line_error(
        infotok("encode", clip(frames=8), tmp_path / "o.itok", *options), 2, needle
    )


def test_no_rate_option_is_budget_0_8() -> None:
    assert choose_rate() == RateControl.budget(0.8)
    with pytest.raises(InfotokError, match="quality and size are exclusive"):
        choose_rate(quality=20.0, size=1e6)


# -- quality -----------------------------------------------------------------------------------
@pytest.mark.parametrize("target", [18.5, 20.0])
def test_quality_lands_every_chunk_in_the_window(
    busy_clip: Path, tmp_path: Path, target: float
) -> None:
    itok = tmp_path / "q.itok"
    result = encode_file(busy_clip, itok, rate=RateControl.quality(target))
    decode_file(itok, tmp_path / "q.mkv")
    measured = chunk_psnr(tmp_path / "q.mkv", busy_clip)
    assert all(target <= p <= target + 0.5 for p in measured), measured
    assert result.chunk_psnr == pytest.approx(measured, abs=1e-6)  # the search decoded for real
    assert result.unreachable_chunks == 0 and max(result.chunk_rates) < 1.0
    info = file_info(itok)
    assert (info.rate_mode, info.rate_target) == ("quality", target)
    assert info.budget == pytest.approx(result.realised_rate)


def test_a_higher_quality_keeps_more_tokens(busy_clip: Path, tmp_path: Path) -> None:
    with Analysis(busy_clip) as analysis:
        low = write(analysis, tmp_path / "a.itok", RateControl.quality(18.5))
        high = write(analysis, tmp_path / "b.itok", RateControl.quality(21.0))
    assert all(a < b for a, b in zip(low.chunk_rates, high.chunk_rates, strict=True))


def test_a_quality_out_of_reach_keeps_everything_and_counts_the_chunks(
    clip, tiny_model: Path, tmp_path: Path
) -> None:
    src = clip(frames=40)
    run = infotok("encode", src, tmp_path / "q.itok", "--model", tiny_model, "--quality", "60")
    assert run.returncode == 0, run.stderr
    assert "3 of 3 below the target at full rate" in run.stderr
    info = file_info(tmp_path / "q.itok")
    assert info.tokens == info.positions and info.mask_bytes == 0
    assert (info.rate_mode, info.rate_target) == ("quality", 60.0)


# -- size and bitrate --------------------------------------------------------------------------
@pytest.fixture
def sized(clip, tiny_model: Path, tmp_path: Path) -> tuple[Path, dict[float, int]]:
    """A 4-chunk clip and the sizes of its files at a few budgets."""
    src = clip(frames=64, width=128, height=64)
    sizes = {
        b: encode_file(src, tmp_path / f"b{b}.itok", budget=b, model=tiny_model).bytes
        for b in (0.2, 0.5, 0.9)
    }
    return src, sizes


def test_target_size_lands_within_3_percent(sized, tiny_model: Path, tmp_path: Path) -> None:
    src, sizes = sized
    for target in (sizes[0.2], (sizes[0.5] + sizes[0.9]) // 2):
        out = tmp_path / f"s{target}.itok"
        run = infotok("encode", src, out, "--model", tiny_model, "--target-size", str(target))
        assert run.returncode == 0 and "warning" not in run.stderr, run.stderr
        assert abs(out.stat().st_size - target) <= 0.03 * target
        info = file_info(out)
        assert (info.rate_mode, info.rate_target) == ("size", target)


def test_bitrate_lands_within_3_percent(sized, tiny_model: Path, tmp_path: Path) -> None:
    src, sizes = sized
    seconds = 64 / 25
    bits_per_second = 8 * sizes[0.5] / seconds
    result = encode_file(
        src, tmp_path / "r.itok", rate=RateControl.bitrate(bits_per_second), model=tiny_model
    )
    assert abs(8 * result.bytes / seconds - bits_per_second) <= 0.03 * bits_per_second
    assert result.warning is None
    assert file_info(tmp_path / "r.itok").rate_mode == "bitrate"


def test_a_size_above_reach_warns_and_writes_the_largest_file(
    sized, tiny_model: Path, tmp_path: Path
) -> None:
    src, _ = sized
    out = tmp_path / "big.itok"
    run = infotok("encode", src, out, "--model", tiny_model, "--target-size", "10M", "--quiet")
    assert run.returncode == 0, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: size 10000000 bytes is above"), lines
    assert "reachable" in lines[0] and f"wrote the largest file, {out.stat().st_size}" in lines[0]
    info = file_info(out)
    assert info.tokens == info.positions


def test_a_size_below_the_smallest_file_is_an_error_and_writes_nothing(
    sized, tiny_model: Path, tmp_path: Path
) -> None:
    src, _ = sized
    out = tmp_path / "small.itok"
    run = infotok("encode", src, out, "--model", tiny_model, "--bitrate", "100", "--quiet")
    assert_one_line_error(run, 1, "bitrate 100 bits/s is below the smallest file", "reachable")
    assert list(tmp_path.glob("small*")) == []


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(share=st.floats(0.0, 1.0))
def test_real_files_land_near_any_target_in_reach(
    clip, tiny_model: Path, tmp_path: Path, share: float
) -> None:
    src = clip(frames=48, width=64, height=48, name="h.mkv")
    with Analysis(src, tiny_model) as analysis:
        # The default coder, `context`, chains chunks (48 frames at 25 fps: one key chunk,
        # two chained): the curves must price the largest file as a full-rate encode writes it.
        curves = byte_curves(analysis, "elbo", "context")
        spender = ByteSpender.of(analysis, "elbo", "context", RateControl.size(1), curves)
        smallest, largest = spender.smallest(), spender.largest()
        target = round(smallest + share * (largest - 1 - smallest))
        out = tmp_path / "h.itok"
        result = write(analysis, out, RateControl.size(target), curves=curves, force=True)
    assert result.warning is None
    assert abs(result.bytes - target) <= 0.03 * target
    assert 0 < result.realised_rate <= 1


# -- the spender's invariants, on byte curves of any shape ---------------------------------------
@st.composite
def spenders(draw: st.DrawFn) -> ByteSpender:
    chunks = draw(st.integers(1, 6))
    positions, errors, curves = [], [], []
    for _ in range(chunks):
        n = draw(st.integers(1, 3000))
        counts = sorted({1, n} | set(draw(st.lists(st.integers(1, n), max_size=5))))
        steps = draw(st.lists(st.integers(0, 400), min_size=len(counts), max_size=len(counts)))
        positions.append(n)
        errors.append(draw(st.floats(0.0, 2.0)))
        curves.append(ByteCurve(tuple(counts), tuple(np.cumsum(steps) + 38)))
    router = draw(st.sampled_from(["elbo", "fixed", "uniform"]))
    return ByteSpender(router, positions, errors, draw(st.integers(80, 400)), curves)


@settings(max_examples=50, deadline=None)
@given(spender=spenders(), share=st.floats(0.0, 1.0))
def test_the_spent_budget_never_prices_above_the_target(spender: ByteSpender, share: float) -> None:
    target = spender.smallest() + share * (spender.largest() - spender.smallest())
    budget = spender.budget_for(target)
    assert 0 < budget <= 1
    counts = spender.counts(budget)
    assert all(1 <= c <= n for c, n in zip(counts, spender.positions, strict=True))
    assert spender.framing + spender.priced(budget) <= target + 1e-6


@settings(max_examples=50, deadline=None)
@given(spender=spenders(), budget=st.floats(1e-9, 1.0), start=st.integers(0, 5))
def test_pricing_reads_each_chunks_curve_at_its_count(
    spender: ByteSpender, budget: float, start: int
) -> None:
    # `priced` interpolates every curve at once; it must be each curve read on its own.
    start = min(start, len(spender.curves) - 1)
    counts = spender.counts(budget, start)
    each = sum(c.at(n) for c, n in zip(spender.curves[start:], counts, strict=True))
    assert spender.priced(budget, start) == pytest.approx(each, rel=1e-12, abs=1e-9)


def test_pricing_reads_curves_that_repeat_a_count() -> None:
    # The longest curve ends in a repeated count: np.interp reads its last byte count there.
    curves = [ByteCurve((1, 5, 5), (10, 20, 30)), ByteCurve((3, 3), (7, 9)), ByteCurve((1,), (4,))]
    spender = ByteSpender("fixed", [5, 3, 1], [1.0, 1.0, 1.0], 0, curves)
    assert spender.priced(1.0) == 30 + 9 + 4 == sum(c.at(c.counts[-1]) for c in curves)


@settings(max_examples=50, deadline=None)
@given(spender=spenders(), share=st.floats(0.0, 1.0))
def test_pass_2_feedback_spends_what_the_written_chunks_left(
    spender: ByteSpender, share: float
) -> None:
    # Pass 2 as `Analysis.write` runs it, each chunk costing what its curve says: the file never
    # passes the target, and the last chunk could not have kept one more position.
    target = spender.smallest() + share * (spender.largest() - spender.smallest())
    count_of = spender.feedback(target)
    written, counts = 0.0, []
    for k, curve in enumerate(spender.curves):
        counts.append(count_of(k, round(written)))
        written += round(curve.at(counts[-1]))
    last, n = spender.curves[-1], spender.positions[-1]
    assert spender.framing + written <= target + len(counts)  # rounding of written bytes
    if counts[-1] < n and spender.router != "elbo":
        step = last.at(counts[-1] + 1) - last.at(counts[-1])
        assert spender.framing + written + step > target - len(counts)
