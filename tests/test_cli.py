"""The `infotok` command: bad input is one `error:` line, an exit code, and nothing left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest

from infotok_codec.bitstream import VERSION, ContainerReader
from infotok_codec.media import probe

from helpers import assert_one_line_error, infotok, make_av_clip, read_all, write_tiny_model


def only(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# -- inputs that are not videos ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("command", "src", "dst"),
    [("encode", "nope.mp4", "o.itok"), ("decode", "nope.itok", "o.mkv"), ("info", "nope.itok", "")],
)
def test_missing_input(tmp_path: Path, tiny_model: Path, command: str, src: str, dst: str) -> None:
    outputs = [tmp_path / dst] if dst else []
    run = infotok(command, tmp_path / src, *outputs, "--model", tiny_model)
    assert_one_line_error(run, 1, f"{src}: no such file")
    assert only(tmp_path) == []


def test_directory_without_images(tmp_path: Path, tiny_model: Path) -> None:
    (tmp_path / "d").mkdir()
    run = infotok("encode", tmp_path / "d", tmp_path / "o.itok", "--model", tiny_model)
    assert_one_line_error(run, 1, "d")
    assert only(tmp_path) == ["d"]


@pytest.mark.parametrize("kind", ["text", "png", "audio", "corrupt", "empty-video"])
def test_files_that_are_not_readable_video(
    tmp_path: Path, tiny_model: Path, clip, kind: str
) -> None:
    src = tmp_path / "in.mp4"
    if kind == "text":
        src.write_text("hello, I am not a video\n" * 20)
    elif kind == "png":
        with av.open(str(tmp_path / "x.png"), "w") as c:
            s = c.add_stream("png")
            s.width, s.height, s.pix_fmt = 8, 8, "rgb24"
            for p in s.encode(av.VideoFrame.from_ndarray(np.zeros((8, 8, 3), np.uint8))):
                c.mux(p)
        (tmp_path / "x.png").rename(src)
    elif kind == "audio":
        src = tmp_path / "in.mkv"
        with av.open(str(src), "w") as c:
            s = c.add_stream("pcm_s16le", rate=8000)
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 800), np.int16), format="s16", layout="mono"
            )
            frame.sample_rate = 8000
            for p in s.encode(frame):
                c.mux(p)
            for p in s.encode():
                c.mux(p)
    elif kind == "corrupt":
        good = clip(frames=16, name="good.mp4").read_bytes()
        src.write_bytes(good[:64] + bytes(np.random.default_rng(0).integers(0, 256, len(good))))
    else:
        with av.open(str(src), "w") as c:
            s = c.add_stream("libx264", rate=25)
            s.width, s.height, s.pix_fmt = 16, 16, "yuv420p"
    before = only(tmp_path)
    run = infotok("encode", src, tmp_path / "o.itok", "--model", tiny_model)
    if kind == "png" and run.returncode == 0:
        return  # FFmpeg may read a PNG as a one-frame video: then it must simply work
    assert_one_line_error(run, 1, src.name)
    assert only(tmp_path) == before


@pytest.mark.parametrize("budget", ["0", "-0.5", "1.5", "nan", "abc"])
def test_budget_outside_range_is_a_usage_error(tmp_path: Path, clip, budget: str) -> None:
    src = clip(frames=4)
    run = infotok("encode", src, tmp_path / "o.itok", "--budget", budget)
    assert_one_line_error(run, 2, "budget")
    assert not (tmp_path / "o.itok").exists()


# -- outputs ---------------------------------------------------------------------------------
def test_existing_output_is_untouched_without_force(tmp_path: Path, tiny_model: Path, clip) -> None:
    src = clip(frames=4)
    out = tmp_path / "o.itok"
    out.write_bytes(b"precious")
    run = infotok("encode", src, out, "--model", tiny_model)
    assert_one_line_error(run, 1, "already exists", "--force")
    assert out.read_bytes() == b"precious"
    assert infotok("encode", src, out, "--model", tiny_model, "--force").returncode == 0
    assert out.read_bytes()[:4] == b"ITOK"


def test_encode_frames_takes_a_range_and_refuses_a_bad_one_untouched(
    tmp_path: Path, tiny_model: Path, clip
) -> None:
    src, out = clip(frames=20), tmp_path / "o.itok"
    out.write_bytes(b"precious")
    run = infotok("encode", src, out, "--model", tiny_model, "--frames", "12:21", "--force")
    assert_one_line_error(run, 1, "--frames 12:21: need 0 <= A < B <= 20")
    assert out.read_bytes() == b"precious"
    run = infotok("encode", src, out, "--model", tiny_model, "--frames", "12:", "--force", "--json")
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert (summary["frames"], summary["first_frame"]) == (8, 12)


@pytest.mark.parametrize("command", ["encode", "decode"])
@pytest.mark.parametrize("frames", ["1_0:20", " 3:5", "+3:5", "3", "9" * 5000 + ":"])
def test_a_frame_range_that_is_not_a_b_is_a_usage_error_before_any_work(
    tmp_path: Path, tiny_model: Path, command: str, frames: str
) -> None:
    # Refused while parsing: the input does not exist, and no model is loaded. 5,000 digits
    # are past what Python converts to an int; that is a one-line refusal too.
    src = tmp_path / ("missing.mp4" if command == "encode" else "missing.itok")
    out = tmp_path / ("o.itok" if command == "encode" else "o.mkv")
    run = infotok(command, src, out, "--model", tiny_model, "--frames", frames)
    assert_one_line_error(run, 2, "is not A:B")
    assert not out.exists()


def test_output_that_is_a_folder_is_refused_even_with_force(
    tmp_path: Path, tiny_model: Path, clip
) -> None:
    src = clip(frames=4)
    (tmp_path / "o.itok").mkdir()
    run = infotok("encode", src, tmp_path / "o.itok", "--model", tiny_model, "--force")
    assert_one_line_error(run, 1, "o.itok: is a folder")
    assert only(tmp_path) == sorted(["o.itok", src.name]) and only(tmp_path / "o.itok") == []


def test_the_output_may_never_be_the_input(tmp_path: Path, tiny_model: Path, clip) -> None:
    src = clip(frames=4, name="clip.mp4")
    source = src.read_bytes()
    run = infotok("encode", src, src, "--model", tiny_model, "--force")
    assert_one_line_error(run, 1, "is also the input")
    (tmp_path / "link.mp4").symlink_to(src)  # another name for the same file
    run = infotok("encode", src, tmp_path / "link.mp4", "--model", tiny_model, "--force")
    assert_one_line_error(run, 1, "is also the input")
    itok = tmp_path / "o.itok"
    assert infotok("encode", src, itok, "--model", tiny_model).returncode == 0
    stream = itok.read_bytes()
    run = infotok("decode", itok, "--tokens", itok, "--model", tiny_model, "--force")
    assert_one_line_error(run, 1, "is also the input")
    run = infotok("info", itok, "--heatmap", itok, "--model", tiny_model, "--force")
    assert_one_line_error(run, 1, "is also the input")
    video = tmp_path / "v.mkv"
    run = infotok("decode", itok, video, "--tokens", video, "--model", tiny_model)
    assert_one_line_error(run, 1, "v.mkv: is also the output video")
    assert src.read_bytes() == source and itok.read_bytes() == stream
    assert only(tmp_path) == sorted([src.name, "link.mp4", "o.itok"])


@pytest.mark.parametrize(
    ("option", "value", "needle"),
    [
        ("--device", "cuda:abc", "unknown device 'cuda:abc'"),
        ("--device", "tpu", "unknown device 'tpu'"),
        ("--chunk-frames", "2048", "4..1024"),
        ("--chunk-frames", "6", "multiple of 4"),
    ],
)
def test_bad_device_and_chunk_size_are_usage_errors_before_any_work(
    tmp_path: Path, tiny_model: Path, option: str, value: str, needle: str
) -> None:
    # The input does not exist: a usage error is found before the input is even opened.
    run = infotok("encode", tmp_path / "nope.mp4", tmp_path / "o.itok", option, value)
    assert_one_line_error(run, 2, needle)
    assert only(tmp_path) == []


def _piped(
    *args: str | Path, stdin: bytes = b"", cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    """`infotok` with bytes on its standard input and bytes from its standard output."""
    command = [sys.executable, "-m", "infotok_codec", *map(str, args)]
    return subprocess.run(command, input=stdin, capture_output=True, timeout=300, cwd=cwd)


def test_encode_reads_a_pipe_and_decode_writes_one(tmp_path: Path, tiny_model: Path) -> None:
    src = make_av_clip(tmp_path / "voiced.mkv", 20)  # with its audio: the pipe carries both
    from_file, from_pipe = tmp_path / "file.itok", tmp_path / "pipe.itok"
    assert infotok("encode", src, from_file, "--model", tiny_model).returncode == 0
    run = _piped("encode", "-", from_pipe, "--model", tiny_model, stdin=src.read_bytes())
    assert run.returncode == 0, run.stderr
    assert from_pipe.read_bytes() == from_file.read_bytes()
    with ContainerReader(from_pipe) as reader:
        assert reader.side_span[1] > 0  # the audio came through the pipe too
    assert only(tmp_path) == ["file.itok", "pipe.itok", "voiced.mkv"]  # no spool left
    y4m = tmp_path / "o.y4m"
    assert infotok("decode", from_pipe, y4m, "--model", tiny_model).returncode == 0
    run = _piped("decode", from_pipe, "-", "--model", tiny_model, "--quiet")
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(b"YUV4MPEG2 ") and run.stdout == y4m.read_bytes()
    note = run.stderr.decode()  # y4m holds no audio, and says so
    assert "y4m on stdout: this output format holds no audio" in note
    # "./-" is a file named "-", as in ffmpeg: only a bare "-" is the pipe.
    (tmp_path / "-").write_bytes(src.read_bytes())
    run = _piped("encode", "./-", "dash.itok", "--model", tiny_model, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "dash.itok").read_bytes() == from_file.read_bytes()


@pytest.mark.parametrize(
    ("args", "stdin", "code", "needle"),
    [
        (("encode", "-", "o.itok"), b"", 1, "stdin: empty input"),
        (("encode", "-", "o.itok"), b"not a video\n" * 50, 1, "stdin: not a readable video"),
        (("decode", "missing.itok", "-", "--json"), b"", 2, "--json prints to stdout"),
        (("decode", "-", "o.mkv"), b"", 2, "stdin (-) is not one"),
        (("decode", "missing.itok", "--tokens", "-"), b"", 2, "token file cannot go to stdout"),
        (("encode", "missing.mkv", "-"), b"", 2, "cannot go to stdout"),
    ],
)
def test_pipe_mistakes_are_one_line(
    tmp_path: Path, args: tuple[str, ...], stdin: bytes, code: int, needle: str
) -> None:
    run = _piped(*args, stdin=stdin, cwd=tmp_path)
    lines = run.stderr.decode().strip().splitlines()
    assert run.returncode == code and len(lines) == 1 and needle in lines[0], run.stderr
    assert only(tmp_path) == []


def test_unknown_coder_is_a_usage_error(tmp_path: Path, clip) -> None:
    run = infotok("encode", clip(frames=4), tmp_path / "o.itok", "--coder", "lzma")
    assert_one_line_error(run, 2, "--coder 'lzma'", "context", "adaptive")
    assert not (tmp_path / "o.itok").exists()


def test_a_negative_key_interval_is_a_usage_error(tmp_path: Path, clip) -> None:
    run = infotok("encode", clip(frames=4), tmp_path / "o.itok", "--key-interval", "-1")
    assert_one_line_error(run, 2, "--key-interval -1.0 outside [0, 3600]")
    assert not (tmp_path / "o.itok").exists()


def test_encoding_with_one_or_two_threads_writes_the_same_file(
    tmp_path: Path, tiny_model: Path, clip
) -> None:
    src = clip(frames=40)  # 25 fps: the default key interval (2 s) is 3 chunks
    for threads in ("1", "2"):
        out = tmp_path / f"t{threads}.itok"
        run = infotok("encode", src, out, "--model", tiny_model, "--threads", threads, "--quiet")
        assert run.returncode == 0, run.stderr
    with ContainerReader(tmp_path / "t1.itok") as reader:
        assert reader.header.coder == "context" and reader.header.key_interval == 3
    assert (tmp_path / "t1.itok").read_bytes() == (tmp_path / "t2.itok").read_bytes()


def test_decoding_frames_from_a_non_key_chunk_gives_the_full_decodes_frames(
    tmp_path: Path, tiny_model: Path, clip
) -> None:
    out = tmp_path / "o.itok"
    src = clip(frames=56)  # chunks 0-3, keys 0 and 3
    run = infotok("encode", src, out, "--model", tiny_model, "--budget", "0.6", "--quiet")
    assert run.returncode == 0, run.stderr
    with ContainerReader(out) as reader:
        assert not reader.header.is_key(1) and not reader.header.is_key(2)
    for name, frames in (("full.mkv", []), ("part.mkv", ["--frames", "20:40"])):
        run = infotok("decode", out, tmp_path / name, "--model", tiny_model, *frames)
        assert run.returncode == 0, run.stderr
    full, part = read_all(tmp_path / "full.mkv"), read_all(tmp_path / "part.mkv")
    assert part.shape[0] == 20 and np.array_equal(part, full[20:40])


def test_outputs_get_the_permissions_of_an_ordinary_file(
    tmp_path: Path, tiny_model: Path, clip
) -> None:
    out = tmp_path / "o.itok"
    assert infotok("encode", clip(frames=4), out, "--model", tiny_model).returncode == 0
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask
    # Model files too, though safetensors writes its files private (0600).
    model = write_tiny_model(tmp_path / "m.safetensors")
    assert model.stat().st_mode & 0o777 == 0o666 & ~umask


def test_missing_output_folder(tmp_path: Path, tiny_model: Path, clip) -> None:
    run = infotok("encode", clip(frames=4), tmp_path / "no" / "o.itok", "--model", tiny_model)
    assert_one_line_error(run, 1, "does not exist")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_output_folder(tmp_path: Path, tiny_model: Path, clip) -> None:
    src = clip(frames=4)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    run = infotok("encode", src, locked / "o.itok", "--model", tiny_model)
    assert_one_line_error(run, 1, "not writable")


# -- damaged or foreign .itok ----------------------------------------------------------------
@pytest.fixture
def itok(tmp_path: Path, tiny_model: Path, clip) -> Path:
    out = tmp_path / "good.itok"
    assert (
        infotok("encode", clip(frames=32), out, "--model", tiny_model, "--budget", "0.5").returncode
        == 0
    )
    return out


def test_stream_from_another_model_names_both(
    itok: Path, other_model: Path, tmp_path: Path
) -> None:
    run = infotok("decode", itok, tmp_path / "r.mkv", "--model", other_model)
    assert_one_line_error(run, 1, "written by model tiny-test", "this is model tiny-test")
    assert not (tmp_path / "r.mkv").exists()


@pytest.mark.parametrize("damage", ["truncate", "bitflip"])
def test_damaged_itok(itok: Path, tiny_model: Path, tmp_path: Path, damage: str) -> None:
    data = bytearray(itok.read_bytes())
    bad = tmp_path / "bad.itok"
    if damage == "truncate":
        bad.write_bytes(bytes(data[: len(data) // 2]))
    else:
        data[len(data) // 2] ^= 0x10
        bad.write_bytes(bytes(data))
    run = infotok("decode", bad, tmp_path / "r.mkv", "--model", tiny_model)
    assert_one_line_error(run, 1)
    assert not (tmp_path / "r.mkv").exists()


@pytest.mark.parametrize(
    ("signum", "code", "message"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
)
def test_interrupted_encode_leaves_nothing(
    tmp_path: Path, tiny_model: Path, clip, signum: int, code: int, message: str
) -> None:
    src = clip(frames=400, width=256, height=256, name="long.mp4")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "infotok_codec",
            "encode",
            str(src),
            str(out_dir / "o.itok"),
            "--model",
            str(tiny_model),
            "--quiet",
        ],
        stderr=subprocess.PIPE,
        text=True,
        # A runner started in the background (`cmd &`) ignores SIGINT, and children inherit that;
        # give the encoder the default disposition a terminal user's Ctrl-C meets.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    # Interrupt once pass 1 runs: its spill file, open in the output folder, shows the imports
    # are done and the encode is under way (Linux: /proc).
    deadline = time.monotonic() + 120
    while (
        proc.poll() is None
        and time.monotonic() < deadline
        and not _has_open_file_in(proc.pid, out_dir)
    ):
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.skip("encode finished before the interrupt; machine too fast for this clip")
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code and stderr.strip() == f"error: {message}"
    assert only(out_dir) == []


def _has_open_file_in(pid: int, folder: Path) -> bool:
    fds = Path(f"/proc/{pid}/fd")
    try:
        return any(os.readlink(fd).startswith(str(folder)) for fd in fds.iterdir())
    except OSError:  # the process or one of its descriptors went away while we looked
        return False


# -- sizes that must work --------------------------------------------------------------------
@pytest.mark.parametrize(("width", "height", "frames"), [(1, 1, 1), (2, 3, 2), (33, 17, 9)])
def test_tiny_and_odd_sizes_work(
    tmp_path: Path, tiny_model: Path, clip, width: int, height: int, frames: int
) -> None:
    src = clip(frames=frames, width=width, height=height)
    assert infotok("encode", src, tmp_path / "o.itok", "--model", tiny_model).returncode == 0
    run = infotok("decode", tmp_path / "o.itok", tmp_path / "r.mp4", "--model", tiny_model)
    assert run.returncode == 0, run.stderr
    info = probe(tmp_path / "r.mp4")
    assert info.frames == frames


def test_json_summaries(tmp_path: Path, tiny_model: Path, clip) -> None:
    src = clip(frames=20, width=40, height=24)
    run = infotok(
        "encode", src, tmp_path / "o.itok", "--model", tiny_model, "--json", "--budget", "0.5"
    )
    summary = json.loads(run.stdout)
    assert summary["frames"] == 20 and summary["chunks"] == 2
    info = json.loads(infotok("info", tmp_path / "o.itok", "--json").stdout)
    size = (tmp_path / "o.itok").stat().st_size
    assert info["bytes"] == size == summary["bytes"]
    assert info["bpp"] == pytest.approx(8 * size / (40 * 24 * 20))
    assert [c["frames"] for c in info["chunks"]] == [16, 4]
    assert {"index", "first_frame", "frames", "tokens", "positions", "bytes"} <= set(
        info["chunks"][0]
    )
    assert sum(c["tokens"] for c in info["chunks"]) == info["tokens"]
    assert info["version"] == VERSION and info["key_interval"] == 3  # 2 s at 25 fps
    assert summary["precision"] in ("bf16", "fp32")
    # A name rich would read as markup prints as it is.
    odd = tmp_path / "o [eng] [bold].itok"
    odd.write_bytes((tmp_path / "o.itok").read_bytes())
    run = infotok("info", odd)
    assert run.returncode == 0, run.stderr
    assert f"{odd}  (.itok version {VERSION})" in run.stdout
    assert "a key chunk every 3 chunks (1.92 s)" in run.stdout  # 3 chunks of 16 frames, 25 fps


def test_decode_threads_do_not_change_tokens(tmp_path: Path, tiny_model: Path, itok: Path) -> None:
    for threads in ("1", "2"):
        run = infotok(
            "decode",
            itok,
            "--tokens",
            tmp_path / f"t{threads}.npz",
            "--threads",
            threads,
            "--model",
            tiny_model,
        )
        assert run.returncode == 0, run.stderr
    a, b = np.load(tmp_path / "t1.npz"), np.load(tmp_path / "t2.npz")
    assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)


def test_heatmap_is_a_png(tmp_path: Path, tiny_model: Path, itok: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    run = infotok("info", itok, "--heatmap", out / "h.png", "--model", tiny_model)
    assert run.returncode == 0, run.stderr
    assert (out / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert only(out) == ["h.png"]


@pytest.mark.parametrize("target", ["missing/h.png", "folder", "existing.png"])
def test_heatmap_output_problems_are_one_line(
    tmp_path: Path, tiny_model: Path, itok: Path, target: str
) -> None:
    out = tmp_path / "out"
    (out / "folder").mkdir(parents=True)
    (out / "existing.png").write_bytes(b"precious")
    run = infotok("info", itok, "--heatmap", out / target, "--model", tiny_model)
    needle = {"missing/h.png": "does not exist", "folder": "is a folder"}.get(target, "--force")
    assert_one_line_error(run, 1, needle)
    assert only(out) == ["existing.png", "folder"] and only(out / "folder") == []
    assert (out / "existing.png").read_bytes() == b"precious"


def test_3840x2160_works(tmp_path: Path, tiny_model: Path, clip) -> None:
    src = clip(frames=2, width=3840, height=2160, name="uhd.mp4")
    assert (
        infotok(
            "encode", src, tmp_path / "o.itok", "--model", tiny_model, "--budget", "0.5"
        ).returncode
        == 0
    )
    run = infotok("decode", tmp_path / "o.itok", tmp_path / "r.mkv", "--model", tiny_model)
    assert run.returncode == 0, run.stderr
    info = probe(tmp_path / "r.mkv")
    assert (info.width, info.height, info.frames) == (3840, 2160, 2)


def test_version_and_bare_command() -> None:
    from infotok_codec import __version__
    from infotok_codec.bitstream import VERSION

    run = infotok("--version")
    assert run.returncode == 0 and run.stdout.strip() == (
        f"infotok {__version__} (.itok format version {VERSION})"
    )
    bare = infotok()
    assert bare.returncode == 2 and "Usage:" in bare.stdout and "encode" in bare.stdout
    assert "error" not in bare.stderr
