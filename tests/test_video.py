"""Reading and writing video (infotok_codec.media): counts, rates, sizes, round trips, errors.

Test clips are made here with PyAV (add_stream -> encode -> mux), small so the file runs fast.
"""

from __future__ import annotations

import csv
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from infotok_codec.errors import InfotokError, VideoError
from infotok_codec.media import VideoInfo, VideoWriter, output_size, probe, read_frames

from helpers import DATA, NTSC_FILM, make_clip, pattern, psnr, read_all

# ----------------------------------------------------------------------------- reading


@pytest.mark.parametrize(
    ("frames", "height", "width", "rate"),
    [
        (1, 48, 64, Fraction(25)),
        (100, 32, 48, Fraction(30)),
        (24, 48, 64, NTSC_FILM),
    ],
)
def test_probe_counts_frames_and_keeps_rate(
    tmp_path: Path, frames: int, height: int, width: int, rate: Fraction
) -> None:
    clip = make_clip(tmp_path / "clip.mp4", pattern(frames, height, width), rate)
    assert probe(clip) == VideoInfo(width, height, frames, rate, fps_assumed=False)


def test_odd_sized_clip_reads_back_at_its_size(tmp_path: Path) -> None:
    # libx264 with yuv444p accepts odd sizes; yuv420p would not.
    source = pattern(5, 17, 33)
    path = make_clip(tmp_path / "odd.mkv", source, pix_fmt="yuv444p")
    assert (probe(path).width, probe(path).height, probe(path).frames) == (33, 17, 5)
    frames = read_all(path)
    assert frames.shape == (5, 17, 33, 3) and frames.dtype == np.uint8
    assert psnr(source, frames) > 35


def test_read_frames_yields_full_chunks_then_the_rest(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "clip.mp4", pattern(37, 32, 48))
    sizes = [chunk.shape[0] for chunk in read_frames(clip, chunk_frames=16)]
    assert sizes == [16, 16, 5]
    assert [c.shape[0] for c in read_frames(clip, chunk_frames=16, max_frames=20)] == [16, 4]
    assert list(read_frames(clip, max_frames=0)) == []


def test_read_frames_from_a_start_frame_skips_the_frames_before(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "clip.mkv", pattern(37, 32, 48), codec="ffv1")
    whole = read_all(clip)
    chunks = list(read_frames(clip, chunk_frames=16, start=9, max_frames=20))
    assert [c.shape[0] for c in chunks] == [16, 4]
    assert np.array_equal(np.concatenate(chunks), whole[9:29])
    assert np.array_equal(read_all(clip, start=36), whole[36:])
    with pytest.raises(VideoError, match="no frames from frame 37 on"):
        list(read_frames(clip, start=37))
    with pytest.raises(ValueError, match="start must be >= 0"):
        read_frames(clip, start=-1)


def test_chunks_stay_valid_after_the_next_one(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "clip.mkv", pattern(8, 16, 16), codec="ffv1")
    chunks = list(read_frames(clip, chunk_frames=3))
    assert psnr(np.concatenate(chunks), pattern(8, 16, 16)) > 35


def test_raw_h264_stream_counts_frames_exactly(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "clip.264", pattern(30, 48, 64), NTSC_FILM, fmt="h264")
    info = probe(clip)
    assert (info.width, info.height, info.frames) == (64, 48, 30)
    # x264 writes VUI timing, so the stream's own rate wins over the demuxer's made-up 25.
    assert info.fps == NTSC_FILM and not info.fps_assumed
    assert read_all(clip).shape == (30, 48, 64, 3)


def test_image_folder_reads_in_name_order_from_any_start(tmp_path: Path) -> None:
    folder = tmp_path / "seq_frames"
    folder.mkdir()
    levels = [30, 90, 150, 210, 60]
    for number, level in zip(range(17, 22), levels, strict=True):
        rgb = np.full((24, 40, 3), level, np.uint8)
        av.VideoFrame.from_ndarray(rgb, format="rgb24").save(str(folder / f"{number:05d}.jpg"))
    (folder / "notes.txt").write_text("not a frame")
    assert probe(folder) == VideoInfo(40, 24, 5, Fraction(25), fps_assumed=True)
    frames = read_all(folder)
    assert frames.shape == (5, 24, 40, 3)
    np.testing.assert_allclose(frames.mean(axis=(1, 2, 3)), levels, atol=2)


def test_image_folder_sorts_unpadded_numbers_as_numbers(tmp_path: Path) -> None:
    for number in (9, 10, 100):
        rgb = np.full((8, 8, 3), number, np.uint8)
        av.VideoFrame.from_ndarray(rgb, format="rgb24").save(str(tmp_path / f"img{number}.png"))
    assert read_all(tmp_path)[:, 0, 0, 0].tolist() == [9, 10, 100]


def test_short_side_and_center_crop_set_the_shape(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "wide.mp4", pattern(3, 48, 100))
    assert read_all(clip, short_side=24).shape == (3, 24, 50, 3)
    assert read_all(clip, short_side=96).shape == (3, 96, 200, 3)
    assert read_all(clip, short_side=24, center_crop=24).shape == (3, 24, 24, 3)
    assert read_all(clip, center_crop=40).shape == (3, 40, 40, 3)
    assert output_size(probe(clip), 24, None) == (50, 24)
    assert output_size((100, 48), 24, 24) == (24, 24)


def test_center_crop_takes_the_middle(tmp_path: Path) -> None:
    frames = np.zeros((1, 16, 32, 3), np.uint8)
    frames[:, :, 8:24] = 255  # the centre 16 columns
    clip = tmp_path / "bars.mkv"
    with VideoWriter(clip, 32, 16, Fraction(25)) as writer:
        writer.write(frames)
    assert (read_all(clip, center_crop=16) == 255).all()


def test_output_size_rounds_the_long_side_to_nearest() -> None:
    assert output_size((854, 480), 256, None) == (455, 256)  # 455.47
    assert output_size((480, 854), 256, None) == (256, 455)
    assert output_size((426, 240), 128, None) == (227, 128)  # 227.2
    assert output_size((3, 2), 3, None) == (5, 3)  # 4.5 rounds up


def test_center_crop_larger_than_the_frame_is_a_video_error(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "clip.mp4", pattern(2, 32, 48))
    with pytest.raises(VideoError, match=r"clip\.mp4: centre crop 64"):
        list(read_frames(clip, center_crop=64))


# ----------------------------------------------------------------------------- bad input


def test_missing_path_is_a_video_error(tmp_path: Path) -> None:
    with pytest.raises(VideoError, match=r"nope\.mp4: no such file"):
        probe(tmp_path / "nope.mp4")
    with pytest.raises(VideoError, match=r"nope\.mp4"):
        read_frames(tmp_path / "nope.mp4")


def test_text_file_named_mp4_is_a_video_error(tmp_path: Path) -> None:
    fake = tmp_path / "fake.mp4"
    fake.write_text("this is not a video\n" * 20)
    with pytest.raises(VideoError, match=r"fake\.mp4: not a readable video"):
        probe(fake)
    with pytest.raises(VideoError, match=r"fake\.mp4"):
        list(read_frames(fake))


def test_png_named_mp4_does_not_crash(tmp_path: Path) -> None:
    fake = tmp_path / "still.mp4"
    rgb = np.full((8, 8, 3), 77, np.uint8)
    av.VideoFrame.from_ndarray(rgb, format="rgb24").save(str(tmp_path / "still.png"))
    (tmp_path / "still.png").rename(fake)
    # FFmpeg opens a lone image as a one-frame video; any outcome but a crash is fine.
    try:
        info = probe(fake)
    except VideoError:
        return
    assert info.frames == 1 and info.fps_assumed


@pytest.mark.parametrize(("name", "codec"), [("tone.wav", "pcm_s16le"), ("tone.mkv", "mp2")])
def test_audio_only_file_has_no_video_stream(tmp_path: Path, name: str, codec: str) -> None:
    path = tmp_path / name
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=16000)
        samples = np.zeros((1, 2304), np.int16)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate, frame.pts = 16000, 0
        for packet in (*stream.encode(frame), *stream.encode()):
            container.mux(packet)
    with pytest.raises(VideoError, match=rf"{name}: no video stream"):
        probe(path)


def test_empty_folder_is_a_video_error(tmp_path: Path) -> None:
    with pytest.raises(VideoError, match="no images"):
        probe(tmp_path)
    with pytest.raises(VideoError, match="no images"):
        list(read_frames(tmp_path))


def test_truncated_file_is_a_video_error(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "clip.mp4", pattern(20, 32, 48))
    data = clip.read_bytes()
    clip.write_bytes(data[: len(data) // 2])  # the index (moov) is written last: now gone
    with pytest.raises(VideoError, match=r"clip\.mp4"):
        probe(clip)


def test_video_error_is_an_infotok_error() -> None:
    assert issubclass(VideoError, InfotokError)


# ----------------------------------------------------------------------------- writing


@pytest.mark.parametrize("name", ["out.mkv", "frames", "frames_slash/"])
def test_lossless_outputs_round_trip_exactly(tmp_path: Path, name: str) -> None:
    source = pattern(6, 17, 33)
    target = f"{tmp_path}/{name}"
    with VideoWriter(target, 33, 17, NTSC_FILM) as writer:
        writer.write(source[:4])
        writer.write(source[4:])
    np.testing.assert_array_equal(read_all(Path(target)), source)


def test_mkv_keeps_frame_count_and_rate(tmp_path: Path) -> None:
    path = tmp_path / "out.mkv"
    with VideoWriter(path, 33, 17, NTSC_FILM) as writer:
        writer.write(pattern(7, 17, 33))
    assert probe(path) == VideoInfo(33, 17, 7, NTSC_FILM, fps_assumed=False)


@pytest.mark.parametrize("frames", [1, 24])
def test_mp4_of_odd_size_keeps_count_rate_and_quality(tmp_path: Path, frames: int) -> None:
    source = pattern(frames, 17, 33)
    path = tmp_path / "out.mp4"
    with VideoWriter(path, 33, 17, NTSC_FILM) as writer:
        writer.write(source)
    # yuv420p needs even sizes: one replicated column and row were added.
    assert probe(path) == VideoInfo(34, 18, frames, NTSC_FILM, fps_assumed=False)
    decoded = read_all(path)[:, :17, :33]
    assert psnr(source, decoded) > 35


def test_y4m_keeps_size_count_rate_and_quality(tmp_path: Path) -> None:
    source = pattern(5, 17, 33)
    path = tmp_path / "out.y4m"
    with VideoWriter(path, 33, 17, NTSC_FILM) as writer:
        writer.write(source)
    assert probe(path) == VideoInfo(33, 17, 5, NTSC_FILM, fps_assumed=False)
    assert psnr(source, read_all(path)) > 40


def test_exception_inside_with_leaves_no_output(tmp_path: Path) -> None:
    path = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError), VideoWriter(path, 16, 16, Fraction(25)) as writer:
        writer.write(pattern(3, 16, 16))
        raise RuntimeError("model failed")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["out.mkv", "frames"])
def test_exception_inside_with_keeps_the_existing_output(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    with VideoWriter(path, 16, 16, Fraction(25)) as writer:
        writer.write(pattern(2, 16, 16))
    before = read_all(path)
    with pytest.raises(RuntimeError), VideoWriter(path, 16, 16, Fraction(25)) as writer:
        writer.write(pattern(5, 16, 16)[::-1])
        raise RuntimeError("model failed")
    np.testing.assert_array_equal(read_all(path), before)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_output_appears_only_on_close(tmp_path: Path) -> None:
    path = tmp_path / "out.mkv"
    writer = VideoWriter(path, 16, 16, Fraction(25))
    writer.write(pattern(2, 16, 16))
    assert not path.exists()
    writer.close()
    writer.close()
    assert probe(path).frames == 2


def test_writing_again_replaces_a_frame_folder(tmp_path: Path) -> None:
    path = tmp_path / "frames"
    for count in (4, 2):
        with VideoWriter(path, 16, 16, Fraction(25)) as writer:
            writer.write(pattern(count, 16, 16))
    assert probe(path).frames == 2


def test_folder_output_refuses_a_folder_of_other_files(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(VideoError, match="holds other files"):
        VideoWriter(tmp_path, 16, 16, Fraction(25))
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_unknown_extension_is_a_video_error(tmp_path: Path) -> None:
    with pytest.raises(VideoError, match=r"out\.avi: unknown output extension"):
        VideoWriter(tmp_path / "out.avi", 16, 16, Fraction(25))
    assert list(tmp_path.iterdir()) == []


def test_frames_of_the_wrong_size_are_a_video_error(tmp_path: Path) -> None:
    with VideoWriter(tmp_path / "out.mkv", 16, 16, Fraction(25)) as writer:
        with pytest.raises(VideoError, match=r"expected uint8 \(n, 16, 16, 3\)"):
            writer.write(pattern(1, 16, 18))
        writer.write(pattern(1, 16, 16))


def test_closing_without_frames_is_a_video_error(tmp_path: Path) -> None:
    with (
        pytest.raises(VideoError, match="no frames written"),
        VideoWriter(tmp_path / "out.mp4", 16, 16, Fraction(25)),
    ):
        pass
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- real clips


@pytest.fixture(scope="module")
def dev_clips() -> dict[Path, int]:
    """The dev split beside the repo: clip path -> decoded frame count from MANIFEST.tsv."""
    if not (DATA / "dev").is_dir():
        pytest.skip(f"no dev clips at {DATA / 'dev'}")
    with open(DATA / "MANIFEST.tsv", newline="") as file:
        rows = list(csv.reader(file, delimiter="\t"))
    return {DATA / "dev" / row[1]: int(row[7]) for row in rows[1:] if row[0] == "dev"}


def test_every_dev_clip_opens_with_its_manifest_frame_count(dev_clips: dict[Path, int]) -> None:
    assert dev_clips
    for clip, frames in dev_clips.items():
        info = probe(clip)
        assert info.frames == frames, clip.name
        chunks = list(read_frames(clip, 16, max_frames=16, short_side=64))
        assert [c.shape[0] for c in chunks] == [16], clip.name
        assert chunks[0].shape[1:] == (*output_size(info, 64, None)[::-1], 3), clip.name


def test_mp4_of_many_busy_frames_keeps_every_frame(tmp_path: Path) -> None:
    # x264 reorders frames once its lookahead fills; frames must carry their own 1/fps clock.
    noise = np.random.default_rng(0).integers(0, 256, (48, 64, 96, 3), dtype=np.uint8)
    with VideoWriter(tmp_path / "n.mp4", 96, 64, NTSC_FILM) as writer:
        writer.write(noise)
    assert probe(tmp_path / "n.mp4") == VideoInfo(96, 64, 48, NTSC_FILM, fps_assumed=False)
