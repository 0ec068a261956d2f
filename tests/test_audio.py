"""The audio side track: copied from the source, stored in the `.itok`, muxed back on decode."""

from __future__ import annotations

import json
import struct
import zlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from infotok_codec.bitstream import AudioReader, ContainerReader
from infotok_codec.codec import decode_file, encode_file, read_tokens
from infotok_codec.errors import FormatError
from infotok_codec.model import read_model_metadata

from helpers import (
    assert_one_line_error,
    infotok,
    make_av_clip,
    make_clip,
    pattern,
    read_all,
    stream_span,
)

DATA = Path(__file__).parent / "data"

# name → (make_av_clip options, samples per coded audio frame, sample rate)
SOURCES = {
    "aac-in-mp4": (dict(acodec="aac", fmt="mp4"), 1024, 48000),
    "mp3-in-mkv": (dict(acodec="libmp3lame", sample_rate=44100, fmt="matroska"), 1152, 44100),
    "ac3-in-avi": (dict(acodec="ac3", vcodec="mpeg4", fmt="avi"), 1536, 48000),
}
SUFFIX = {"mp4": ".mp4", "matroska": ".mkv", "avi": ".avi"}
MKV_TICK = Fraction(1, 1000)  # Matroska stores times in milliseconds


def _source(tmp_path: Path, name: str, frames: int = 24, **extra: object) -> Path:
    options, _, _ = SOURCES[name]
    path = tmp_path / f"{name}{SUFFIX[str(options['fmt'])]}"
    return make_av_clip(path, frames, **{**options, **extra})  # type: ignore[arg-type]


def _offset_and_length(path: Path) -> tuple[Fraction, Fraction]:
    """Audio start minus video start, and the audio's length, in seconds."""
    audio, video = stream_span(path, "audio"), stream_span(path, "video")
    return audio[0] - video[0], audio[1] - audio[0]


def _audio_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux(container.streams.audio[0]) if p.size]


@pytest.mark.parametrize("name", list(SOURCES))
def test_decoded_mkv_and_mp4_carry_the_source_audio_in_sync(
    tmp_path: Path, tiny_model: Path, name: str
) -> None:
    # Audio that starts 0.2 s after the first frame: the offset must survive.
    src = _source(tmp_path, name, audio_start=Fraction(1, 5))
    _, frame_samples, rate = SOURCES[name]
    audio_frame = Fraction(frame_samples, rate)
    itok = tmp_path / "a.itok"
    encode_file(src, itok, model=tiny_model, budget=0.5)
    offset, length = _offset_and_length(src)
    for suffix in (".mkv", ".mp4"):
        out = tmp_path / f"out{suffix}"
        result = decode_file(itok, out, model=tiny_model)
        assert result.notes == []
        got_offset, got_length = _offset_and_length(out)
        assert abs(got_offset - offset) <= MKV_TICK, (suffix, got_offset, offset)
        assert abs(got_length - length) <= audio_frame, (suffix, got_length, length)
        # Copied, not re-encoded: the very packets of the source.
        assert _audio_packets(out) == _audio_packets(src)
        assert len(read_all(out)) == 24


@pytest.mark.parametrize("cut_when", ["decoding", "encoding"])
def test_a_frame_range_cuts_the_audio_to_the_same_span(
    tmp_path: Path, tiny_model: Path, cut_when: str
) -> None:
    # `decode --frames 20:40` of the whole stream, or `encode --frames 20:40` decoded whole:
    # mirrors, so the same video frames and the same audio packets.
    src = _source(tmp_path, "aac-in-mp4", frames=48)
    itok, out = tmp_path / "a.itok", tmp_path / "part.mkv"
    span = {"decoding": (None, "20:40"), "encoding": ("20:40", None)}[cut_when]
    encode_file(src, itok, frames=span[0], model=tiny_model, budget=0.5)
    decode_file(itok, out, frames=span[1], model=tiny_model)
    audio_frame = Fraction(1024, 48000)
    offset, length = _offset_and_length(out)
    assert 0 <= offset < audio_frame + MKV_TICK
    assert abs(length - Fraction(20, 25)) <= audio_frame + MKV_TICK
    assert len(read_all(out)) == 20
    # The packets are the source's, those that start in frames [20, 40).
    with av.open(str(src)) as container:
        wanted = [
            bytes(p)
            for p in container.demux(container.streams.audio[0])
            if p.size and Fraction(20, 25) <= p.pts * p.time_base < Fraction(40, 25)
        ]
    assert _audio_packets(out) == wanted


def test_no_audio_leaves_the_track_out(tmp_path: Path, tiny_model: Path) -> None:
    src = _source(tmp_path, "aac-in-mp4")
    itok = tmp_path / "a.itok"
    run = infotok("encode", src, itok, "--model", tiny_model, "--no-audio", "--quiet")
    assert run.returncode == 0, run.stderr
    summary = json.loads(infotok("info", itok, "--json").stdout)
    assert summary["audio_bytes"] == 0 and summary["audio"] == []
    out = tmp_path / "out.mkv"
    assert infotok("decode", itok, out, "--model", tiny_model, "--quiet").returncode == 0
    with av.open(str(out)) as container:
        assert not container.streams.audio


def test_info_lists_the_track_and_splits_bpp(tmp_path: Path, tiny_model: Path) -> None:
    src = _source(tmp_path, "aac-in-mp4")
    itok = tmp_path / "a.itok"
    with_audio = encode_file(src, itok, model=tiny_model, budget=0.5)
    without = encode_file(src, tmp_path / "b.itok", model=tiny_model, budget=0.5, audio=False)
    run = infotok("info", itok, "--json")
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    size = itok.stat().st_size
    pixels = 64 * 48 * 24
    assert summary["bytes"] == size == with_audio.bytes
    assert summary["bpp"] == pytest.approx(8 * size / pixels)
    assert summary["audio_bytes"] == with_audio.audio_bytes == size - without.bytes
    assert summary["video_bpp"] == pytest.approx(8 * without.bytes / pixels)
    (track,) = summary["audio"]
    assert (track["codec"], track["channels"], track["sample_rate"]) == ("aac", 2, 48000)
    assert track["bytes"] == sum(map(len, _audio_packets(src)))
    assert track["seconds"] == pytest.approx(float(_offset_and_length(src)[1]))
    text = infotok("info", itok).stdout
    assert "audio 0: aac, 2 ch (stereo), 48000 Hz" in text


def test_mp4_output_transcodes_a_codec_mp4_cannot_hold(tmp_path: Path, tiny_model: Path) -> None:
    src = make_av_clip(tmp_path / "u8.mkv", 24, acodec="pcm_u8", fmt="matroska")
    itok = tmp_path / "a.itok"
    encode_file(src, itok, model=tiny_model, budget=0.5)
    out = tmp_path / "out.mp4"
    run = infotok("decode", itok, out, "--model", tiny_model, "--quiet")
    assert run.returncode == 0, run.stderr
    assert run.stderr.strip() == (
        "note: pcm_u8 audio cannot be stored as is in this output format: transcoded to AAC"
    )
    with av.open(str(out)) as container:
        assert container.streams.audio[0].codec_context.name == "aac"
    offset, length = _offset_and_length(out)
    src_offset, src_length = _offset_and_length(src)
    # AAC's encoder delay (one frame, before the first sample) is all the difference.
    aac_frame = Fraction(1024, 48000)
    assert abs(offset - src_offset) <= aac_frame
    assert abs(length - src_length) <= aac_frame
    # .mkv holds pcm_u8, so it is copied there.
    mkv = tmp_path / "out.mkv"
    assert infotok("decode", itok, mkv, "--model", tiny_model, "--quiet").stderr == ""
    assert _audio_packets(mkv) == _audio_packets(src)


@pytest.mark.parametrize("target", ["out.y4m", "frames/"])
def test_outputs_without_audio_say_so_in_one_line(
    tmp_path: Path, tiny_model: Path, target: str
) -> None:
    src = _source(tmp_path, "aac-in-mp4")
    itok = tmp_path / "a.itok"
    encode_file(src, itok, model=tiny_model, budget=0.5)
    run = infotok("decode", itok, tmp_path / target, "--model", tiny_model, "--quiet")
    assert run.returncode == 0, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("note: ") and "no audio" in lines[0]


def test_bench_style_encode_stores_no_audio(tmp_path: Path, tiny_model: Path) -> None:
    src = make_clip(tmp_path / "v.mkv", pattern(8, 32, 32), codec="ffv1")
    result = encode_file(src, tmp_path / "v.itok", model=tiny_model, chunk_frames=4)
    assert result.audio_bytes == 0
    with ContainerReader(tmp_path / "v.itok") as reader:
        assert reader.side_span[1] == 0 and AudioReader(reader).tracks == ()


def test_damaged_audio_directory_is_a_format_error(tmp_path: Path, tiny_model: Path) -> None:
    src = _source(tmp_path, "aac-in-mp4")
    itok = tmp_path / "a.itok"
    encode_file(src, itok, model=tiny_model, budget=0.5)
    data = bytearray(itok.read_bytes())
    data[-20] ^= 0xFF  # inside the audio footer's block count
    itok.write_bytes(bytes(data))
    run = infotok("decode", itok, tmp_path / "out.mkv", "--model", tiny_model, "--quiet")
    assert_one_line_error(run, 1, "audio:")
    assert not (tmp_path / "out.mkv").exists()


def _as_model(v3: Path, model: Path, dst: Path) -> Path:
    """The fixture, naming `model` instead of the equal-weights file it was written with (a
    model file's bytes, hence its hash, vary between writes; its weights do not)."""
    data = bytearray(v3.read_bytes())
    data[36:68] = read_model_metadata(model)[1]
    (length,) = struct.unpack_from("<I", data, 6)
    data[10 + length : 14 + length] = struct.pack("<I", zlib.crc32(data[: 10 + length]))
    dst.write_bytes(bytes(data))
    return dst


def test_a_version_3_stream_still_decodes_to_the_same_tokens(
    tmp_path: Path, tiny_model: Path
) -> None:
    # tests/data/v3_tiny.*: written, and decoded to FFV1 and to tokens, by the version-3 code
    # (the merge base, 9731558) with the tiny test model: 8 frames of 32×32 in 4-frame chunks.
    itok = _as_model(DATA / "v3_tiny.itok", tiny_model, tmp_path / "v3.itok")
    with ContainerReader(itok) as reader:
        assert reader.version == 3 and reader.side_span[1] == 0
    reference = np.load(DATA / "v3_tiny.tokens.npz")
    for chunk in read_tokens(itok, tiny_model):
        np.testing.assert_array_equal(chunk.indices, reference[f"indices_{chunk.index}"])
        np.testing.assert_array_equal(chunk.keep, reference[f"keep_{chunk.index}"])
    out = tmp_path / "v3.mkv"
    # The indices above are the stream's exact content. The pixels are what a float32 network
    # makes of them, and float kernels differ by CPU (AVX512 against the AVX2 machine that made
    # the reference: one value in 24,576 one level off), so they are checked to that level.
    decode_file(itok, out, model=tiny_model, bf16=False)
    diff = np.abs(read_all(out).astype(int) - read_all(DATA / "v3_tiny.decoded.mkv"))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-4


def test_a_version_3_file_cannot_hold_a_side_section(tmp_path: Path) -> None:
    data = (DATA / "v3_tiny.itok").read_bytes()
    padded = tmp_path / "padded.itok"
    padded.write_bytes(data[:-16] + bytes(40) + data[-16:])
    with pytest.raises(FormatError, match=r"footer: index offset .* must start at"):
        ContainerReader(padded)
