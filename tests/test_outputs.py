"""Outputs appear whole or not at all: `atomic_file` and `check_output`."""

from __future__ import annotations

from pathlib import Path

import pytest

from infotok_codec import InfotokError
from infotok_codec.outputs import atomic_file, check_output


def test_atomic_file_replaces_only_on_success(tmp_path: Path) -> None:
    dst = tmp_path / "out.bin"
    dst.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt), atomic_file(dst) as tmp:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt
    assert dst.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    with atomic_file(dst) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.bin.")
        tmp.write_bytes(b"new")
    assert dst.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_check_output(tmp_path: Path) -> None:
    (tmp_path / "there").write_bytes(b"x")
    (tmp_path / "dir").mkdir()
    check_output(tmp_path / "new", force=False)
    check_output(tmp_path / "there", force=True)
    check_output(tmp_path / "dir", force=True, folder_ok=True)
    with pytest.raises(InfotokError, match="already exists"):
        check_output(tmp_path / "there", force=False)
    with pytest.raises(InfotokError, match="is a folder"):
        check_output(tmp_path / "dir", force=True)
    with pytest.raises(InfotokError, match="does not exist"):
        check_output(tmp_path / "no" / "x", force=True)
