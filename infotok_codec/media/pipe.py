"""``-`` as a path: standard input and output, for pipes to and from ffmpeg.

`decode … -` writes y4m to standard output as it decodes (`VideoWriter`). `encode - …` reads
standard input whole into a hidden file beside the output first (`spooled_stdin`), because an
encode reads its input more than once (probe, pass 1, pass 2, audio).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from infotok_codec.errors import InfotokError, VideoError
from infotok_codec.outputs import remove_temp

PIPE = "-"
"""The path that means standard input (a source) or standard output (a decoded video)."""


def is_pipe(path: str | os.PathLike[str] | None) -> bool:
    """The str ``-`` only: a `Path` always names a file (``Path("./-")`` prints as ``-``)."""
    return isinstance(path, str) and path == PIPE


@contextlib.contextmanager
def spooled_stdin(beside: Path) -> Iterator[Path]:
    """Standard input copied to a hidden file beside `beside` (the output: a folder the user
    can write to), removed afterwards. Errors raised inside name the input ``stdin``, not the
    hidden file.

    Raises:
        VideoError: standard input is a terminal, or empty.
    """
    if sys.stdin is None or sys.stdin.isatty():
        raise VideoError("stdin: no input piped in (encode - reads a video from a pipe)")
    # Private (0600, unlike outputs): it holds someone's video only while the encode runs.
    handle, spool = tempfile.mkstemp(prefix=f".{beside.name}.", suffix=".stdin", dir=beside.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            shutil.copyfileobj(sys.stdin.buffer, file, 1 << 20)
        if os.path.getsize(spool) == 0:
            raise VideoError("stdin: empty input")
        try:
            yield Path(spool)
        except InfotokError as exc:
            message = str(exc).replace(spool, "stdin")
            if message == str(exc):
                raise
            raise type(exc)(message) from None
    finally:
        remove_temp(spool)
