"""Outputs appear whole or not at all, and never replace a file unasked.

Every file infotok writes (streams, videos, token archives, heat maps, model files and training
checkpoints) is written to a hidden temporary entry beside its destination and renamed into
place when complete; an error, Ctrl-C or SIGTERM removes the temporary entry and leaves the
destination as it was.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

from infotok_codec.closing import Closing
from infotok_codec.errors import InfotokError


def check_output(
    path: Path,
    force: bool,
    *,
    folder_ok: bool = False,
    inputs: Sequence[str | os.PathLike[str]] = (),
) -> None:
    """Refuse to overwrite, and fail before any work when the output cannot be written.

    Args:
        path: the destination.
        force: an existing destination may be replaced.
        folder_ok: the output may itself be a folder (a decoded video as PNG frames).
        inputs: files the command reads; the output may not be one of them, --force or not
            (as ffmpeg refuses "Output same as Input"): that would replace the source.
    """
    for source in inputs:
        if same_file(path, Path(source)):
            raise InfotokError(f"{path}: is also the input {source}")
    if path.is_dir() and not folder_ok:
        raise InfotokError(f"{path}: is a folder")
    if path.exists() and not force:
        raise InfotokError(f"{path}: already exists (use --force to overwrite)")
    parent = path.parent  # Path("x").parent is Path("."), never empty
    if not parent.is_dir():
        raise InfotokError(f"{parent}: output folder does not exist")
    if not os.access(parent, os.W_OK):
        raise InfotokError(f"{parent}: output folder is not writable")


def same_file(a: Path, b: Path) -> bool:
    """One file under two names: the same resolved path, or a link to the same inode."""
    if os.path.realpath(a) == os.path.realpath(b):  # realpath: a symlink loop is no error
        return True
    return a.exists() and b.exists() and os.path.samefile(a, b)


def make_temp(path: Path, *, folder: bool = False) -> str:
    """Create a hidden, unique file or folder beside ``path`` to write into.

    Not `tempfile.mkstemp`: that makes the entry private (0600), and the output should get
    the permissions an ordinary ``open``/``mkdir`` gives under the user's umask.
    """
    for _ in range(100):
        candidate = str(path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            if folder:
                os.mkdir(candidate)
            else:
                open(candidate, "xb").close()
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"no free temporary name beside {path}")


def remove_temp(path: str) -> None:
    """Delete a temporary output (file or folder) if it is still there."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write the whole output to; on a clean exit it
    replaces `path`, on any exception (KeyboardInterrupt included) it is removed.

    Writers that pick a format from the name's extension must be told the format: the
    temporary name ends in ``.tmp``.
    """
    target = Path(path)
    tmp = make_temp(target)
    mode = os.stat(tmp).st_mode  # what an ordinary open gives under the umask
    try:
        yield Path(tmp)
        # Some writers replace the file with a private one (safetensors writes 0600).
        if os.stat(tmp).st_mode != mode:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        remove_temp(tmp)
        raise


class WholeOrNothing(Closing):
    """A writer used as a context manager: `close()` (complete the output) when the block ends
    normally, `abort()` (leave nothing) when it raises."""

    def abort(self) -> None:
        raise NotImplementedError

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
