"""The `infotok` command line: parses, calls the library, prints. Nothing else lives here.

One module per group of commands (`coding`, `benchmark`, `training`), all on `common.app`;
importing them registers the commands."""

from __future__ import annotations

import signal
import sys

import typer

# Importing a group registers its commands, in this order in `infotok --help`.
# isort: off
from infotok_codec.cli import coding, benchmark, training  # noqa: F401

# isort: on
from infotok_codec.cli.common import app, err_console
from infotok_codec.errors import InfotokError


class Terminated(BaseException):
    """SIGTERM (`kill`, `timeout`), raised where the process is, like Ctrl-C's KeyboardInterrupt,
    so that the same clean-up runs: temporary outputs are removed on the way out."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


def main() -> None:
    """Entry point: every expected failure is one `error: …` line and an exit code."""
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        code = app(standalone_mode=False)
    except Terminated:
        _fail("terminated", 128 + signal.SIGTERM)
    except InfotokError as exc:
        _fail(str(exc), 1)
    except typer.TyperException as exc:  # usage errors (bad option, missing argument)
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        if not message.strip():  # no command given: the help was printed, nothing went wrong
            sys.exit(getattr(exc, "exit_code", 2))
        _fail(message, getattr(exc, "exit_code", 2))
    except (KeyboardInterrupt, typer.Abort):
        _fail("interrupted", 130)
    except OSError as exc:  # the system refused (disk full, permissions, a vanished folder)
        where = f"{exc.filename}: " if exc.filename else ""
        _fail(f"{where}{exc.strerror or exc}", 1)
    if code == 130:  # typer turns Ctrl-C inside a command into exit code 130
        _fail("interrupted", 130)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int) -> None:
    first_line = message.strip().splitlines()[0] if message.strip() else "failed"
    err_console.print(f"error: {first_line}", markup=False, highlight=False, soft_wrap=True)
    sys.exit(code)
