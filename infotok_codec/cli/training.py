"""`infotok train`, `fit-router` and `fit-coder`: models and their fitted parts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from infotok_codec.cli.common import (
    Bf16Option,
    FitDataOption,
    FitOutOption,
    ForceOption,
    ThreadsOption,
    app,
    err_console,
    set_threads,
)

# routing.FIT_WINDOWS and FIT_STEPS, written out: the CLI imports no torch until it runs.
# `train` and `fit-router` fit the light router's head alike, by default.
FIT_WINDOWS = 400
FIT_STEPS = 600


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
    force: ForceOption = False,
    init: Annotated[
        Path | None, typer.Option(help="Start from this model file's weights (fine-tune).")
    ] = None,
    spread_share: Annotated[
        float,
        typer.Option(
            min=0.0, max=1.0, help="Share of stage-2 clips masked in spread order, not by error."
        ),
    ] = 0.15,
    full_rate_share: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Share of stage-2 clips kept at full rate."),
    ] = 0.0,
    mse_weight: Annotated[
        float,
        typer.Option(min=0.0, help="Weight of a squared-error term added to the L1 loss."),
    ] = 10.0,
    msssim_weight: Annotated[
        float,
        typer.Option(min=0.0, help="Weight of 1 - MS-SSIM of the frames added to the loss."),
    ] = 0.0,
    weight_average: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=0.9999,
            help="Decay of a moving average of the weights that validation and the model file "
            "use (0: none; e.g. 0.999).",
        ),
    ] = 0.0,
    decoder_only: Annotated[
        bool,
        typer.Option(
            "--decoder-only",
            help="Train the decoding half only: tokens stay as the --init model makes them.",
        ),
    ] = False,
    bf16: Bf16Option = None,
    warmup_steps: Annotated[
        int, typer.Option(min=1, help="Linear learning-rate warm-up steps.")
    ] = 200,
    threads: ThreadsOption = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many steps.")] = None,
    short_side: Annotated[
        int, typer.Option(help="Scale training frames to this short side.")
    ] = 256,
    router_windows: Annotated[
        int,
        typer.Option(
            min=2, help="Training windows the light router's head is fitted on at the end."
        ),
    ] = FIT_WINDOWS,
    router_steps: Annotated[int, typer.Option(min=1, help="Adam steps of that fit.")] = FIT_STEPS,
    config: Annotated[
        str | None,
        typer.Option(
            help='Model shape as JSON over the defaults, e.g. \'{"c1": 128, "dim": 384}\'.'
        ),
    ] = None,
) -> None:
    """Train a tokenizer; runs under `torchrun` for several GPUs."""
    from infotok_codec.model import TokenizerConfig
    from infotok_codec.training import TrainOptions
    from infotok_codec.training import train as run_training

    try:
        model_config = TokenizerConfig.override(json.loads(config) if config else {})
    except (ValueError, TypeError) as exc:
        raise typer.BadParameter(f"--config: {exc}") from None
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
        force=force,
        init=init,
        spread_share=spread_share,
        full_rate_share=full_rate_share,
        mse_weight=mse_weight,
        msssim_weight=msssim_weight,
        weight_average=weight_average,
        decoder_only=decoder_only,
        bf16=bf16,
        warmup_steps=warmup_steps,
        threads=threads,
        max_steps=max_steps,
        short_side=short_side,
        config=model_config,
        router_windows=router_windows,
        router_steps=router_steps,
    )
    report = run_training(opts)
    err_console.print(f"wrote {report.out} after {report.steps} steps ({report.minutes:.1f} min)")


@app.command("fit-router")
def fit_router(
    model: Annotated[Path, typer.Argument(help="Model file (.safetensors) to fit a head for.")],
    data: FitDataOption,
    out: FitOutOption = None,
    windows: Annotated[int, typer.Option(min=2, help="Training windows to fit on.")] = FIT_WINDOWS,
    steps: Annotated[int, typer.Option(min=1, help="Adam steps.")] = FIT_STEPS,
    threads: ThreadsOption = None,
    force: ForceOption = False,
) -> None:
    """Fit the `light` router's head for an existing model file; its network is left as it is."""
    from infotok_codec.routing import refit_model_file

    set_threads(threads)
    dst = out if out is not None else model
    info = refit_model_file(model, dst, data, windows=windows, steps=steps, force=force)
    err_console.print(
        f"wrote {dst}: light router head fitted on {info.windows} windows, Spearman on "
        f"{info.held_out_windows} held-out: positions {info.spearman_positions}, "
        f"window means {info.spearman_windows}",
        soft_wrap=True,
    )


@app.command("fit-coder")
def fit_coder(
    model: Annotated[Path, typer.Argument(help="Model file (.safetensors) to fit tables for.")],
    data: FitDataOption,
    out: FitOutOption = None,
    threads: ThreadsOption = None,
    force: ForceOption = False,
) -> None:
    """Fit the token coders' tables and the context coder's key prior for an existing model
    file; its network and light head are left as they are (streams name the file's hash, so
    those written with the old file need the old file)."""
    from infotok_codec.training import refit_model_file

    set_threads(threads)
    dst = out if out is not None else model
    refit_model_file(model, dst, data, force=force)
    err_console.print(f"wrote {dst}: coder tables and key prior fitted", soft_wrap=True)
