"""encode_file / decode_file / read_tokens end to end, on real files, with a real (tiny) model."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from infotok_codec import ModelError
from infotok_codec.codec import Analysis, decode_file, encode_file, read_tokens
from infotok_codec.errors import InfotokError
from infotok_codec.inspect import file_info
from infotok_codec.media import probe, read_frames

from helpers import DEV, make_clip, pattern, psnr


@pytest.mark.parametrize(
    ("frames", "width", "height", "fps"),
    [
        (1, 1, 1, Fraction(25)),
        (1, 3, 2, Fraction(25)),
        (5, 33, 17, Fraction(24000, 1001)),
        (37, 64, 48, Fraction(30)),
    ],
)
def test_decoded_video_has_the_source_size_rate_and_frame_count(
    clip, tiny_model: Path, tmp_path: Path, frames: int, width: int, height: int, fps: Fraction
) -> None:
    src = clip(frames=frames, width=width, height=height, fps=fps)
    itok = tmp_path / "out.itok"
    result = encode_file(src, itok, budget=0.5, model=tiny_model)
    assert result.bytes == itok.stat().st_size
    assert result.bpp == pytest.approx(8 * result.bytes / (width * height * frames))
    out = tmp_path / "rec.mkv"
    decode_file(itok, out, model=tiny_model)
    info = probe(out)
    assert (info.width, info.height, info.frames, info.fps) == (width, height, frames, fps)


@pytest.mark.parametrize("router", ["elbo", "fixed", "uniform"])
@pytest.mark.parametrize("budget", [0.25, 0.5, 0.8])
def test_realised_rate_matches_the_budget(
    clip, tiny_model: Path, tmp_path: Path, router: str, budget: float
) -> None:
    src = clip(frames=64, width=128, height=64)
    result = encode_file(src, tmp_path / "o.itok", budget=budget, router=router, model=tiny_model)
    assert result.realised_rate == pytest.approx(budget, rel=0.005)
    info = file_info(tmp_path / "o.itok")
    assert info.tokens / info.positions == pytest.approx(result.realised_rate)


def test_elbo_moves_tokens_between_chunks_and_fixed_does_not(
    clip, tiny_model: Path, tmp_path: Path
) -> None:
    # A clip that is flat for two chunks and busy for two: elbo should favour the busy ones.
    src = clip(frames=64, width=64, height=64)
    frames = np.concatenate(list(read_frames(src)))
    frames[:32] = 128
    from infotok_codec.media import VideoWriter

    mixed = tmp_path / "mixed.mkv"
    with VideoWriter(mixed, 64, 64, 25) as w:
        w.write(frames)
    elbo = encode_file(mixed, tmp_path / "e.itok", budget=0.5, router="elbo", model=tiny_model)
    fixed = encode_file(mixed, tmp_path / "f.itok", budget=0.5, router="fixed", model=tiny_model)
    assert fixed.chunk_rates == [0.5] * 4
    assert max(elbo.chunk_rates[2:]) > 0.5 > min(elbo.chunk_rates[:2])


def test_budget_one_keeps_every_position_and_sends_no_mask(
    clip, tiny_model: Path, tmp_path: Path
) -> None:
    src = clip(frames=16)
    encode_file(src, tmp_path / "o.itok", budget=1.0, model=tiny_model)
    info = file_info(tmp_path / "o.itok")
    assert info.tokens == info.positions and info.mask_bytes == 0


def test_encoding_twice_gives_identical_bytes(clip, tiny_model: Path, tmp_path: Path) -> None:
    src = clip(frames=20)
    encode_file(src, tmp_path / "a.itok", budget=0.6, model=tiny_model)
    encode_file(src, tmp_path / "b.itok", budget=0.6, model=tiny_model)
    assert (tmp_path / "a.itok").read_bytes() == (tmp_path / "b.itok").read_bytes()


def test_frame_range_decodes_only_those_frames(clip, tiny_model: Path, tmp_path: Path) -> None:
    src = clip(frames=40)
    encode_file(src, tmp_path / "o.itok", budget=0.5, model=tiny_model)
    decode_file(tmp_path / "o.itok", tmp_path / "all.mkv", model=tiny_model)
    done: list[tuple[int, int]] = []
    result = decode_file(
        tmp_path / "o.itok",
        tmp_path / "part.mkv",
        frames="18:35",
        model=tiny_model,
        progress=lambda name, frames, total: done.append((frames, total)),
    )
    assert result.frames == 17 and probe(tmp_path / "part.mkv").frames == 17
    # The bar counts the frames written, not the chunks' whole lengths: 14 + 3 of 17.
    assert done == [(14, 17), (3, 17)]
    whole = np.concatenate(list(read_frames(tmp_path / "all.mkv")))
    part = np.concatenate(list(read_frames(tmp_path / "part.mkv")))
    assert np.array_equal(part, whole[18:35])


def test_a_frame_range_encodes_as_a_clip_of_just_those_frames(
    clip, tiny_model: Path, tmp_path: Path
) -> None:
    # Lossless sources (FFV1): frames 7:30 of the long clip are the short clip's frames, so the
    # two encodes must be the same bytes, at every router (pass 1 reads the span too).
    long_src, short_src = clip(frames=40, name="long.mkv"), tmp_path / "short.mkv"
    make_clip(short_src, pattern(40, 48, 64)[7:30], codec="ffv1")
    for router in ("elbo", "uniform"):
        cut = encode_file(
            long_src,
            tmp_path / "cut.itok",
            frames="7:30",
            budget=0.6,
            router=router,
            model=tiny_model,
            force=True,
        )
        alone = encode_file(
            short_src,
            tmp_path / "alone.itok",
            budget=0.6,
            router=router,
            model=tiny_model,
            force=True,
        )
        assert (cut.frames, cut.first_frame, alone.first_frame) == (23, 7, 0)
        assert (tmp_path / "cut.itok").read_bytes() == (tmp_path / "alone.itok").read_bytes()
    # Either end may be left open, as in decode's --frames.
    assert encode_file(long_src, tmp_path / "t.itok", frames="33:", model=tiny_model).frames == 7
    assert (
        encode_file(long_src, tmp_path / "h.itok", frames=":5", model=tiny_model, force=True).frames
        == 5
    )


@pytest.mark.parametrize("frames", ["30:20", "5:41", "-1:5", "1_0:20", "7", "a:b", "9" * 19 + ":"])
def test_a_bad_frame_range_is_refused_before_anything_is_written(
    clip, tiny_model: Path, tmp_path: Path, frames: str
) -> None:
    with pytest.raises(InfotokError, match="--frames"):
        encode_file(clip(frames=40), tmp_path / "o.itok", frames=frames, model=tiny_model)
    assert not (tmp_path / "o.itok").exists()


def test_read_tokens_matches_the_tokens_file_and_the_mask(
    clip, tiny_model: Path, tmp_path: Path
) -> None:
    src = clip(frames=20)
    encode_file(src, tmp_path / "o.itok", budget=0.5, model=tiny_model)
    decode_file(tmp_path / "o.itok", None, tokens_out=tmp_path / "t.npz", model=tiny_model)
    chunks = read_tokens(tmp_path / "o.itok", tiny_model)
    saved = np.load(tmp_path / "t.npz")
    assert len(chunks) == 2
    for c in chunks:
        assert np.array_equal(saved[f"indices_{c.index}"], c.indices)
        assert np.array_equal(saved[f"keep_{c.index}"], c.keep)
        assert ((c.indices >= 0) == c.keep).all()


def test_kept_tokens_are_encoded_knowing_the_mask(clip, tiny_model: Path, tmp_path: Path) -> None:
    from infotok_codec.codec import ChunkModel
    from infotok_codec.model import load_model

    src = clip(frames=16, width=64, height=64)
    # float32 on both sides (bf16 picks a few other indices, the same for both).
    encode_file(src, tmp_path / "o.itok", budget=0.5, router="fixed", model=tiny_model, bf16=False)
    (chunk,) = read_tokens(tmp_path / "o.itok", tiny_model)
    engine = ChunkModel(load_model(tiny_model), "cpu", bf16=False)
    frames = np.concatenate(list(read_frames(src)))
    masked = engine.tokens(frames, chunk.keep)
    assert np.array_equal(chunk.indices[chunk.keep], masked[chunk.keep])
    assert not np.array_equal(chunk.indices[chunk.keep], engine.tokens(frames)[chunk.keep])


@pytest.mark.parametrize("frames", [20, 40])
def test_an_input_that_changes_between_the_passes_is_refused(
    clip, tiny_model: Path, tmp_path: Path, frames: int
) -> None:
    from infotok_codec import InfotokError
    from infotok_codec.codec import Analysis

    src = clip(frames=32, name="a.mkv")
    other = clip(frames=frames, name="b.mkv")
    with Analysis(src, tiny_model) as pass1:
        other.replace(src)
        with pytest.raises(InfotokError, match=r"the input changed|read 40 frames, expected 32"):
            pass1.write(tmp_path / "o.itok", budget=0.5)
    assert not (tmp_path / "o.itok").exists()
    assert list(tmp_path.glob("*.itok*")) == []


def test_a_stream_is_refused_by_another_model(
    clip, tiny_model: Path, other_model: Path, tmp_path: Path
) -> None:
    src = clip(frames=8)
    encode_file(src, tmp_path / "o.itok", model=tiny_model)
    with pytest.raises(ModelError, match=r"written by model tiny-test .* this is model tiny-test"):
        decode_file(tmp_path / "o.itok", tmp_path / "r.mkv", model=other_model)
    assert not (tmp_path / "r.mkv").exists()


@pytest.mark.skipif(not DEV.is_dir(), reason="needs ../shared/data/dev")
def test_every_dev_clip_round_trips(tiny_model: Path, tmp_path: Path) -> None:
    from infotok_codec.media import VideoWriter

    for path in sorted(DEV.iterdir()):
        # 8 frames at 64 px short side keep this quick; the full-size run is a benchmark.
        frames = next(read_frames(path, 8, max_frames=8, short_side=64))
        src = tmp_path / f"{path.stem}.mkv"
        with VideoWriter(src, frames.shape[2], frames.shape[1], probe(path).fps) as w:
            w.write(frames)
        encode_file(src, tmp_path / "o.itok", budget=0.5, model=tiny_model, force=True)
        decode_file(tmp_path / "o.itok", tmp_path / "r.mkv", model=tiny_model, force=True)
        info, ref = probe(tmp_path / "r.mkv"), probe(src)
        assert (info.width, info.height, info.frames, info.fps) == (
            ref.width,
            ref.height,
            ref.frames,
            ref.fps,
        ), path.name


def test_4k_frames_are_coded_in_tiles_that_tile_exactly(tiny_model: Path, tmp_path: Path) -> None:
    from infotok_codec.codec import tiles

    boxes = tiles(2160, 3840)
    covered = np.zeros((2160, 3840), dtype=np.int32)
    for y0, y1, x0, x1 in boxes:
        assert y0 % 512 == 0 and x0 % 512 == 0
        covered[y0:y1, x0:x1] += 1
    assert (covered == 1).all() and len(boxes) == 5 * 8
    assert tiles(720, 1280) == [(0, 720, 0, 1280)]


def test_tiled_frames_encode_each_tile_with_its_part_of_the_mask(
    clip, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from infotok_codec.codec import engine
    from infotok_codec.model import load_model

    # Tiles of 64 px above 4,096 px: a 100×150 clip is 2×3 tiles, ragged at the right and bottom.
    monkeypatch.setattr(engine, "TILE", 64)
    monkeypatch.setattr(engine, "TILE_ABOVE", 64 * 64)
    src = clip(frames=8, width=150, height=100)
    # float32, as the plain tokenizer calls below run (bf16 would pick a few other indices).
    encode_file(src, tmp_path / "o.itok", budget=0.5, router="fixed", model=tiny_model, bf16=False)
    (chunk,) = read_tokens(tmp_path / "o.itok", tiny_model)
    frames = np.concatenate(list(read_frames(src)))
    tokenizer = load_model(tiny_model).tokenizer
    for y0, y1, x0, x1 in engine.tiles(100, 150):
        ly, lx = slice(y0 // 8, -(-y1 // 8)), slice(x0 // 8, -(-x1 // 8))
        video = torch.from_numpy(frames[:, y0:y1, x0:x1]).permute(3, 0, 1, 2)[None] / 127.5 - 1
        tile_keep = chunk.keep[:, ly, lx]
        alone = tokenizer.encode(video, torch.from_numpy(tile_keep)[None])[0].numpy()
        assert np.array_equal(chunk.indices[:, ly, lx][tile_keep], alone[tile_keep])
    decode_file(tmp_path / "o.itok", tmp_path / "r.mkv", model=tiny_model)
    assert probe(tmp_path / "r.mkv").width == 150


def test_shipped_model_codes_the_sample_clip(tmp_path: Path) -> None:
    # The README's first command, through the API: the default model, offline, real quality.
    sample = Path(__file__).resolve().parents[1] / "examples" / "bigbuckbunny.mp4"
    src = tmp_path / "sample.mkv"
    frames = next(read_frames(sample, 16))
    from infotok_codec.media import VideoWriter

    with VideoWriter(src, frames.shape[2], frames.shape[1], 25) as w:
        w.write(frames)
    result = encode_file(src, tmp_path / "s.itok", budget=0.8)
    assert result.realised_rate == pytest.approx(0.8, abs=0.005)
    decode_file(tmp_path / "s.itok", tmp_path / "r.mkv")
    decoded = next(read_frames(tmp_path / "r.mkv", 16))
    # The first BBB frames are dense grass: the shipped model gets about 18 dB there at 0.8, an
    # untrained one about 13 dB.
    assert psnr(decoded, frames) > 16


def test_every_token_coder_carries_the_same_tokens(tmp_path: Path) -> None:
    # The coders are lossless: same tokens, same video, whatever the coder; on real video the
    # default context coder's file is the smallest (it also sees the chunk before), then
    # adaptive's (its contexts see repeated tokens). One analysis serves the four writes, as it
    # serves bench's; `light`'s keeps the conv features, so a write runs only the compressor.
    sample = Path(__file__).resolve().parents[1] / "examples" / "bigbuckbunny.mp4"
    sizes = {}
    tokens = {}
    with Analysis(sample, light=True) as analysis:
        for coder in ("context", "adaptive", "range", "zstd"):
            out = tmp_path / f"{coder}.itok"
            analysis.write(out, router="light", budget=0.5, coder=coder)
            assert file_info(out).coder == coder
            sizes[coder] = out.stat().st_size
            tokens[coder] = read_tokens(out)
    for coder in ("adaptive", "range", "zstd"):
        for a, b in zip(tokens["context"], tokens[coder], strict=True):
            assert np.array_equal(a.indices, b.indices) and np.array_equal(a.keep, b.keep)
    assert sizes["context"] < sizes["adaptive"] < sizes["zstd"] < sizes["range"]


def test_bf16_and_fp32_streams_decode_alike_in_either_precision(tmp_path: Path) -> None:
    # bf16 changes which indices an encode picks and the pixels a decode writes, not the stream's
    # meaning: each precision's stream decodes in the other to nearly the same video, at the
    # quality fp32 gets. (Autocast runs bf16 on any CPU; natively it is also faster.)
    # 8 frames of 64×128, two attention windows (lossless): a CPU without native bf16 emulates
    # it some 40× slower; the whole 320×256×48 sample took over 20 minutes there.
    sample = Path(__file__).resolve().parents[1] / "examples" / "bigbuckbunny.mp4"
    frames = next(read_frames(sample, 8))[:, :64, :128].copy()
    src = make_clip(tmp_path / "crop.mkv", frames, codec="ffv1", pix_fmt="yuv444p")
    decoded = {}
    for enc in (False, True):
        out = tmp_path / f"{enc}.itok"
        result = encode_file(src, out, budget=0.8, bf16=enc)
        assert result.precision == ("bf16" if enc else "fp32")
        for dec in (False, True):
            video = tmp_path / f"{enc}-{dec}.y4m"
            assert decode_file(out, video, bf16=dec).precision == ("bf16" if dec else "fp32")
            decoded[enc, dec] = next(read_frames(video, 8))
    reference = psnr(decoded[False, False], frames)
    for key, video in decoded.items():
        assert psnr(video, frames) > reference - 0.1, key
    # The same stream in both precisions: far closer to each other than to the source.
    assert psnr(decoded[False, True], decoded[False, False]) > 40
    assert psnr(decoded[True, False], decoded[True, True]) > 40


def test_bf16_quantizes_in_float32() -> None:
    # Under autocast the compressor's projection is still rounded to the FSQ grid in float32:
    # rounding bf16 (8 significant bits) would move codes near a level boundary.
    import torch

    from infotok_codec.model import load_model

    tokenizer = load_model().tokenizer.eval()
    sample = Path(__file__).resolve().parents[1] / "examples" / "bigbuckbunny.mp4"
    video = torch.from_numpy(next(read_frames(sample, 8))).float()
    video = video.permute(3, 0, 1, 2)[None, :, :, :64, :64] / 127.5 - 1  # one attention window
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        codes = tokenizer.quantized_codes(video)
    assert codes.dtype == torch.float32
