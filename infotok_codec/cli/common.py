"""The `infotok` command line's shared parts: the app, its consoles, the options several commands
take, and printing (JSON, progress bars)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode="markdown",
)
# Markup off: paths, router and model names are printed as they are ("clip [eng].mp4", or a
# header's "[/x]", which rich would read as a closing tag and raise on); styles go by argument.
console = Console(markup=False)
err_console = Console(stderr=True, markup=False)

ModelOption = Annotated[
    Path | None, typer.Option("--model", help="Model file (default: the shipped model).")
]


def checked_by(check: str) -> Callable[[Any], Any]:
    """An option callback: `infotok_codec.codec.<check>(value)`, whose `InfotokError` becomes a
    usage error found while parsing, before any file is read (imported then: it needs torch)."""

    def callback(value: Any) -> Any:
        import infotok_codec.codec
        from infotok_codec.errors import InfotokError

        try:
            getattr(infotok_codec.codec, check)(value)
        except InfotokError as exc:
            raise typer.BadParameter(str(exc)) from None
        return value

    return callback


DeviceOption = Annotated[
    str, typer.Option(help="auto, cpu, cuda or cuda:N.", callback=checked_by("resolve_device"))
]
Bf16Option = Annotated[
    bool | None,
    typer.Option(
        "--bf16/--fp32",
        help="Run the network in bf16 or float32 (default: bf16 where the GPU or CPU runs it "
        "natively).",
        show_default=False,
    ),
]
ThreadsOption = Annotated[int | None, typer.Option(help="CPU threads (default: all cores).")]
ForceOption = Annotated[bool, typer.Option("--force", help="Overwrite the output.")]
FitDataOption = Annotated[
    list[Path], typer.Option("--data", help="Training videos or folders (repeatable).")
]
FitOutOption = Annotated[
    Path | None, typer.Option("--out", help="Model file to write (default: MODEL itself).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print a JSON summary.")]


def _print_version(value: bool) -> None:
    if value:
        from infotok_codec import __version__
        from infotok_codec.bitstream import VERSION

        console.print(f"infotok {__version__} (.itok format version {VERSION})", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """infotok: a video codec built on an adaptive discrete video tokenizer."""


def set_threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            raise typer.BadParameter(f"--threads {threads} must be at least 1")
        import torch

        torch.set_num_threads(threads)


def jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Fraction):
        return f"{value.numerator}/{value.denominator}"
    if isinstance(value, bytes):
        return value.hex()
    return value


def print_json(value: Any) -> None:
    print(json.dumps(jsonable(value), indent=2))


@contextmanager
def progress_bars(quiet: bool) -> Iterator[Any]:
    """A rich bar per pass with frames/s; yields the callback the library calls."""
    if quiet:
        yield None
        return
    bars = Progress(
        TextColumn("{task.description:>8}", style="bold", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("frames"),
        TextColumn("{task.fields[fps]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    )
    tasks: dict[str, TaskID] = {}

    def advance(name: str, frames: int, total: int) -> None:
        if name not in tasks:
            tasks[name] = bars.add_task(name, total=total, fps="")
        bars.advance(tasks[name], frames)
        speed = next(t.speed for t in bars.tasks if t.id == tasks[name])
        bars.update(tasks[name], fps=f"{speed:.1f} fps" if speed else "")

    with bars:
        yield advance
