"""The `infotok` command line: parses, calls the library, prints. Nothing else lives here."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from infotok_codec.errors import InfotokError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)
err_console = Console(stderr=True)


@app.callback()
def _root() -> None:
    """infotok: a video codec built on an adaptive discrete video tokenizer."""


def fail(message: str, code: int = 1) -> typer.Exit:
    """One line on stderr, an exit code, no traceback."""
    err_console.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(code)


@app.command()
def train(
    data: Annotated[list[Path], typer.Argument(help="Video files or folders of videos.")],
    out: Annotated[Path, typer.Option("--out", help="Model file to write (.safetensors).")],
    minutes: Annotated[float, typer.Option(help="Wall-clock training budget.")] = 120.0,
    stage2_fraction: Annotated[float, typer.Option(help="Share of the budget for stage 2.")] = 0.3,
    batch: Annotated[int, typer.Option(help="Clips per step and process.")] = 8,
    crop: Annotated[int, typer.Option(help="Training crop side in pixels.")] = 64,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 8e-4,
    checkpoint_minutes: Annotated[float, typer.Option(help="Minutes between checkpoints.")] = 10.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue from OUT.ckpt.pt.")] = False,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: all cores).")] = None,
) -> None:
    """Train a tokenizer; runs under `torchrun` for several GPUs."""
    from infotok_codec.train import TrainOptions
    from infotok_codec.train import train as run_training

    opts = TrainOptions(
        data=data,
        out=out,
        minutes=minutes,
        stage2_fraction=stage2_fraction,
        batch=batch,
        crop=crop,
        lr=lr,
        checkpoint_minutes=checkpoint_minutes,
        seed=seed,
        resume=resume,
        threads=threads,
    )
    run_training(opts)


def main() -> None:
    try:
        app()
    except InfotokError as exc:
        raise SystemExit(fail(str(exc)).exit_code) from None
    except KeyboardInterrupt:
        err_console.print("error: interrupted", markup=False)
        sys.exit(130)
