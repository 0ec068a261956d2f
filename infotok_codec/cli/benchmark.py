"""`infotok bench`: bitrate-distortion curves against classical codecs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from infotok_codec.cli.common import (
    Bf16Option,
    DeviceOption,
    JsonOption,
    ModelOption,
    ThreadsOption,
    app,
    console,
    err_console,
    print_json,
    set_threads,
)
from infotok_codec.errors import InfotokError


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(
            f"{what} {text!r} is not a comma-separated list of numbers"
        ) from None


def _integers(text: str, what: str) -> tuple[int, ...]:
    values = _floats(text, what)
    if not all(v.is_integer() for v in values):
        raise typer.BadParameter(f"{what} {text!r}: whole numbers only")
    return tuple(int(v) for v in values)


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


@app.command()
def bench(
    paths: Annotated[list[Path], typer.Argument(help="Video files or folders of videos.")],
    budgets: Annotated[str, typer.Option(help="Token budgets.")] = "0.25,0.375,0.5,0.625,0.75,1.0",
    routers: Annotated[
        str, typer.Option(help="InfoTok routers: elbo, fixed, uniform, light.")
    ] = "elbo,fixed,uniform",
    codecs: Annotated[
        str, typer.Option(help="Classical codecs: x264,x265,svtav1 (or none).")
    ] = "x264,x265,svtav1",
    crfs: Annotated[
        str | None,
        typer.Option(help="CRFs for every classical codec (default: each its own sweep)."),
    ] = None,
    frames: Annotated[int, typer.Option(help="First frames of each clip.")] = 64,
    size: Annotated[
        int, typer.Option(help="Short side scaled and centre-cropped to this square.")
    ] = 256,
    metrics: Annotated[
        str | None,
        typer.Option(
            help="psnr,ssim,msssim,lpips,vmaf (default: all; lpips and vmaf where installed)."
        ),
    ] = None,
    lpips_every: Annotated[
        int, typer.Option(help="LPIPS on every k-th frame only (its network is the costliest).")
    ] = 1,
    oracle: Annotated[
        bool, typer.Option("--oracle", help="Add the Lagrangian oracle allocation.")
    ] = False,
    qualities: Annotated[
        str | None,
        typer.Option(help="Also encode at these --quality targets (dB), with the first router."),
    ] = None,
    set_budget: Annotated[
        bool,
        typer.Option(
            "--set-budget",
            help="Also spend each budget over the whole set of clips (elbo across clips: "
            "InfoTok's global allocation).",
        ),
    ] = False,
    refine: Annotated[
        int, typer.Option(help="Steps of encoder-side refinement in every encode (0: off).")
    ] = 0,
    model: ModelOption = None,
    device: DeviceOption = "auto",
    bf16: Bf16Option = None,
    threads: ThreadsOption = None,
    out: Annotated[
        Path, typer.Option(help="Folder for results.json, results.csv and plots.")
    ] = Path("bench-results"),
    keep_files: Annotated[
        bool, typer.Option("--keep-files", help="Keep the encoded files in OUT/files.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace results already in OUT.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Bitrate-distortion curves: InfoTok routers against x264, x265 and SVT-AV1."""
    from infotok_codec.bench import BenchSettings, check_results_folder, plotted_metrics, run_bench
    from infotok_codec.codec import check_light_head
    from infotok_codec.metrics import default_metrics
    from infotok_codec.model import load_model

    set_threads(threads)
    codec_names = tuple(c for c in _names(codecs) if c != "none")
    crf_values = _integers(crfs, "--crfs") if crfs else ()
    try:  # a bad value among the settings is a usage error, as encode's are
        settings = BenchSettings(
            budgets=_floats(budgets, "--budgets"),
            routers=_names(routers),
            codecs=codec_names,
            crfs={c: crf_values for c in codec_names} if crf_values else {},
            frames=frames,
            size=size,
            metrics=_names(metrics) if metrics is not None else default_metrics(),
            lpips_every=lpips_every,
            device=device,
            bf16=bf16,
            refine=refine,
            oracle=oracle,
            qualities=_floats(qualities, "--qualities") if qualities else (),
            set_budget=set_budget,
        )
    except InfotokError as exc:
        raise typer.BadParameter(str(exc)) from None
    from infotok_codec.media import find_videos

    check_results_folder(out, force)  # run_bench checks too; here it fails before the bar shows
    loaded = load_model(model)
    loaded.check_encodes()  # as run_bench does, before the bar shows
    if "light" in settings.routers:
        check_light_head(loaded)  # as run_bench does, before the bar shows
    total = settings.points(len(find_videos(paths)))
    bars = Progress(
        TextColumn("bench", style="bold", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}", markup=False),
        TimeElapsedColumn(),
        console=err_console,
        disable=as_json,
    )
    with bars:
        task = bars.add_task("", total=total)
        report = run_bench(
            paths,
            settings,
            out,
            model=loaded,
            keep_files=keep_files,
            force=force,
            tick=lambda label: bars.update(task, advance=1, description=label),
        )
    if as_json:
        print_json(report.summary)
        return
    # Columns: (summary key, heading, format); a metric no point has is left out.
    scores = [
        (key, heading, fmt)
        for key, heading, fmt in (
            ("msssim", "MS-SSIM", ".4f"),
            ("lpips", "LPIPS", ".4f"),
            ("vmaf", "VMAF", ".2f"),
        )
        if any(key in p for points in report.summary["means"].values() for p in points)
    ]
    table = Table(
        "method",
        "param",
        "bpp",
        "PSNR dB",
        *(heading for _, heading, _ in scores),
        "rate",
        title=f"mean over {len(report.summary['clips'])} clips",
    )
    for method, points in report.summary["means"].items():
        for p in points:
            table.add_row(
                method,
                f"{p['param']:g}",
                f"{p['bpp']:.4f}",
                f"{p['psnr']:.2f}",
                *(format(p[key], fmt) if key in p else "" for key, _, fmt in scores),
                "" if p["rate"] is None else f"{p['rate']:.3f}",
            )
    console.print(table)
    console.print(f"BD-rate vs x264: {report.summary['bd_rate_vs_x264']}")
    if "tokens_saved_by_elbo_vs_fixed_at_equal_psnr_percent" in report.summary:
        console.print(
            "tokens saved by elbo vs fixed at equal PSNR: "
            f"{report.summary['tokens_saved_by_elbo_vs_fixed_at_equal_psnr_percent']}%"
        )
    for budget, equal in report.summary.get("psnr_at_equal_bpp", {}).items():
        if equal:
            console.print(
                f"PSNR at equal bpp (budget {budget}: {equal['bpp']:.4f} bpp over "
                f"{equal['clips']} clips): {equal['psnr']}, margins "
                + ", ".join(
                    f"{k} {v['mean']:+.3f} dB (± {v['stderr']}, wins {v['wins']}/{equal['clips']})"
                    for k, v in equal["margins_db"].items()
                )
            )
    console.print(f"timing: {report.summary['timing']}")
    if "oracle" in report.summary:
        console.print(f"oracle: {report.summary['oracle']}")
    if "quality" in report.summary:
        landing = Table(
            "clip",
            "target dB",
            "PSNR dB",
            "in window",
            "unreachable",
            "above",
            "below",
            "rate",
            title="--quality: chunks in [Q, Q + 0.5] dB, kept whole below Q, above, below",
        )
        for clip_name, targets in report.summary["quality"].items():
            for t in targets:
                landing.add_row(
                    clip_name,
                    f"{t['target_db']:g}",
                    f"{t['psnr']:.2f}",
                    f"{t['in_window']}/{t['chunks']}",
                    str(t["unreachable"]),
                    str(t["above_window"]),
                    str(t["below_target"]),
                    f"{t['rate']:.3f}",
                )
        console.print(landing)
    for t in report.summary.get("quality_against_budget", []):
        _print_against_budget(f"--quality {t['target_db']:g}", t, t["quality"])
    for t in report.summary.get("global_against_budget", []):
        _print_against_budget(f"set budget {t['set_budget']:g}", t, t["global"])
    plots = ", ".join(f"rd_{m}.png" for m in plotted_metrics(report.results))
    console.print(f"wrote {out}/results.json, results.csv, {plots}")


def _print_against_budget(label: str, entry: dict[str, Any], spent: dict[str, float]) -> None:
    """One line of `bench`'s across-clips comparison (`bench.set_budget.against_budget`)."""
    line = f"{label}: set mean {entry['mean_psnr']:.2f} dB with {spent['tokens']:.3f} of the tokens"
    if entry["budget"] is None:
        console.print(f"{line}; no budget reaches that mean")
        return
    console.print(
        f"{line}, one budget for every clip needs {entry['budget']['tokens']:.3f}"
        f" (budget {entry['budget']['budget']:.3f}): {entry['tokens_saved_percent']:+.1f}% tokens,"
        f" {entry['bits_saved_percent']:+.1f}% bits saved"
    )
