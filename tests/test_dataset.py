"""`encode DIR OUTDIR`: a mirrored tree of streams, a manifest, resume, and torchrun shards."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from infotok_codec.codec import encode_file
from infotok_codec.dataset import encode_dataset
from infotok_codec.errors import InfotokError, VideoError

from helpers import assert_one_line_error, infotok, make_av_clip, make_clip, pattern

GOOD = ("a.mp4", "b.mkv", "sub/c.mp4", "sub/e.mp4", "sub/deep/d.mkv")
BROKEN = "sub/broken.mp4"


def make_dataset(folder: Path) -> Path:
    """Six tiny clips in a tree (8 frames, 32×32), one of them an MP4 cut in half."""
    for i, name in enumerate(GOOD):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        frames = np.roll(pattern(8, 32, 32), 5 * i, axis=2)
        codec = "ffv1" if name.endswith(".mkv") else "libx264"
        make_clip(folder / name, frames, codec=codec)
    whole = (folder / "a.mp4").read_bytes()
    (folder / BROKEN).write_bytes(whole[: len(whole) // 2])
    (folder / "sub" / "notes.txt").write_text("not a video")
    return folder


def streams(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*.itok")}


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def first_run(
    dataset: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("run") / "tokens"
    run = infotok("encode", dataset, out, "--model", tiny_model, "--threads", "1")
    return out, run


def test_a_folder_encodes_to_a_mirrored_tree_and_a_manifest_names_the_failure(
    dataset: Path, tiny_model: Path, first_run: tuple[Path, subprocess.CompletedProcess[str]]
) -> None:
    out, run = first_run
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert lines[-1] == f"error: 1 of 6 files failed (listed in {out / 'manifest.json'})"
    assert any(line.startswith(f"failed: {BROKEN}: ") for line in lines)
    assert "6/6 files" in run.stderr  # the one bar, over files
    assert sorted(streams(out)) == sorted(name.rsplit(".", 1)[0] + ".itok" for name in GOOD)
    m = manifest(out)
    assert (m["encoded"], m["skipped"], m["failed"], m["processes"]) == (5, 0, 1, 1)
    entries = {e["source"]: e for e in m["files"]}
    assert sorted(entries) == sorted((*GOOD, BROKEN))
    assert (
        entries[BROKEN]["status"] == "failed" and "not a readable video" in entries[BROKEN]["error"]
    )
    for name in GOOD:
        e = entries[name]
        size = (out / e["output"]).stat().st_size
        assert e["status"] == "encoded" and e["error"] is None and e["frames"] == 8
        assert e["bytes"] == size and e["bpp"] == pytest.approx(8 * size / (32 * 32 * 8))
    # Each stream is what a single-file encode of that clip writes.
    single = out.parent / "single.itok"
    encode_file(dataset / "sub/deep/d.mkv", single, model=tiny_model)
    assert single.read_bytes() == (out / "sub/deep/d.itok").read_bytes()


def test_a_rerun_skips_every_stream_that_is_there(
    dataset: Path, tiny_model: Path, first_run: tuple[Path, subprocess.CompletedProcess[str]]
) -> None:
    out, _ = first_run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.itok")}
    run = infotok("encode", dataset, out, "--model", tiny_model, "--threads", "1")
    assert run.returncode == 1 and "1 of 6 files failed" in run.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.itok")} == before
    m = manifest(out)
    assert (m["encoded"], m["skipped"], m["failed"]) == (0, 5, 1)
    for e in m["files"]:
        if e["status"] == "skipped":
            assert e["bytes"] == (out / e["output"]).stat().st_size and e["frames"] == 8


def test_two_torchrun_processes_write_the_same_streams(
    dataset: Path, tiny_model: Path, first_run: tuple[Path, subprocess.CompletedProcess[str]]
) -> None:
    out = first_run[0].parent / "ddp"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "infotok_codec",
            "encode",
            str(dataset),
            str(out),
            "--model",
            str(tiny_model),
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode != 0  # the broken clip fails the run, under torchrun too
    assert f"error: 1 of 6 files failed (listed in {out / 'manifest.json'})" in run.stderr
    assert streams(out) == streams(first_run[0])
    m = manifest(out)
    assert (m["encoded"], m["failed"], m["processes"]) == (5, 1, 2)
    assert [e["source"] for e in m["files"]] == sorted((*GOOD, BROKEN))


def test_force_re_encodes_and_damaged_or_differently_set_streams_are_not_skipped(
    dataset: Path, tiny_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    encode_dataset(dataset, out, model=tiny_model, budget=0.5)
    result = encode_dataset(dataset, out, model=tiny_model, budget=0.6)
    assert result.count("failed") == 6
    mismatched = [e.error or "" for e in result.failed if e.source != BROKEN]
    assert len(mismatched) == 5
    assert all(error.endswith("budget 0.5 (not 0.6); --force re-encodes") for error in mismatched)
    (out / "b.itok").write_bytes((out / "b.itok").read_bytes()[:-1])
    result = encode_dataset(dataset, out, model=tiny_model, budget=0.5)
    (damaged,) = (e for e in result.failed if e.source != BROKEN)
    assert damaged.source == "b.mkv" and damaged.error is not None
    assert damaged.error.startswith("exists but is damaged (footer:")
    result = encode_dataset(dataset, out, model=tiny_model, budget=0.6, force=True)
    assert (result.count("encoded"), result.count("failed")) == (5, 1)
    single = tmp_path / "a.itok"
    encode_file(dataset / "a.mp4", single, model=tiny_model, budget=0.6)
    assert single.read_bytes() == (out / "a.itok").read_bytes()


def test_streams_written_with_other_refinement_or_key_interval_are_not_skipped(
    dataset: Path, tiny_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    encode_dataset(dataset, out, model=tiny_model, budget=0.5)
    result = encode_dataset(dataset, out, model=tiny_model, budget=0.5, refine=1, key_interval=0)
    mismatched = [e.error or "" for e in result.failed if e.source != BROKEN]
    assert len(mismatched) == 5 and result.count("encoded") == 0
    # 2 s at 25 fps in 16-frame chunks is 3 chunks; 0 s makes every chunk a key.
    want = "key_interval 3 (not 1), refine 0 (not 1); --force re-encodes"
    assert all(error.endswith(want) for error in mismatched), mismatched


def test_streams_that_copied_or_left_out_the_audio_are_skipped_only_under_the_same_choice(
    tiny_model: Path, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_av_clip(src / "voiced.mkv", 8)
    make_clip(src / "silent.mkv", pattern(8, 32, 32), codec="ffv1")
    out = tmp_path / "out"
    encode_dataset(src, out, model=tiny_model, audio=False)
    result = encode_dataset(src, out, model=tiny_model, audio=True)
    (failed,) = result.failed  # a stream without audio suits a source that has none
    assert failed.source == "voiced.mkv" and result.count("skipped") == 1
    assert failed.error == (
        "exists, written with other settings: audio left out (not copied); --force re-encodes"
    )
    encode_dataset(src, out, model=tiny_model, audio=True, force=True)
    result = encode_dataset(src, out, model=tiny_model, audio=False)
    (failed,) = result.failed
    assert failed.source == "voiced.mkv" and result.count("skipped") == 1
    assert failed.error is not None and "audio copied (not left out)" in failed.error


def test_two_videos_with_one_stream_name_fail_the_second(tiny_model: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_clip(src / "clip.mkv", pattern(8, 32, 32), codec="ffv1")
    make_clip(src / "clip.mp4", pattern(8, 32, 32))
    result = encode_dataset(src, tmp_path / "out", model=tiny_model)
    (failed,) = result.failed
    assert (
        failed.source == "clip.mp4" and failed.error == "clip.itok is also the stream of clip.mkv"
    )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["clip.itok", "manifest.json"]


def test_bad_settings_and_folders_without_videos_are_refused_before_any_work(
    tiny_model: Path, tmp_path: Path
) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "frame_000001.png").write_bytes(b"")
    with pytest.raises(InfotokError, match="unknown device 'gpu'"):
        encode_dataset(make_dataset(tmp_path / "d"), tmp_path / "out", device="gpu")
    with pytest.raises(VideoError, match="a folder of images is one video"):
        encode_dataset(frames, tmp_path / "out", model=tiny_model)
    assert not (tmp_path / "out").exists()
    run = infotok("encode", frames, tmp_path / "out", "--model", tiny_model)
    assert_one_line_error(run, 1, "no video files")
    (tmp_path / "file").write_text("x")
    run = infotok("encode", tmp_path / "d", tmp_path / "file", "--model", tiny_model)
    assert_one_line_error(run, 1, "exists and is not a folder")


def test_a_frame_range_is_refused_for_a_folder_of_videos(tiny_model: Path, tmp_path: Path) -> None:
    # Its videos differ in length; a range is for one video (exit 2: a usage error).
    run = infotok(
        "encode", make_dataset(tmp_path / "d"), tmp_path / "out", "--frames", "0:8",
        "--model", tiny_model,
    )  # fmt: skip
    assert_one_line_error(run, 2, "--frames is for one video")
    assert not (tmp_path / "out").exists()
