"""The `infotok` command line: parses, calls the library, prints. Nothing else lives here."""

from __future__ import annotations

import dataclasses
import json
import signal
import sys
from collections.abc import Iterator
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
)
from rich.table import Table

from infotok_codec.errors import InfotokError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
console = Console()
err_console = Console(stderr=True)

ModelOption = Annotated[
    Path | None, typer.Option("--model", help="Model file (default: the shipped model).")
]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
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


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            raise typer.BadParameter(f"--threads {threads} must be at least 1")
        import torch

        torch.set_num_threads(threads)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Fraction):
        return f"{value.numerator}/{value.denominator}"
    if isinstance(value, bytes):
        return value.hex()
    return value


def _print_json(value: Any) -> None:
    print(json.dumps(_jsonable(value), indent=2))


@contextmanager
def _progress(quiet: bool) -> Iterator[Any]:
    """A rich bar per pass with frames/s; yields the callback the library calls."""
    if quiet:
        yield None
        return
    bars = Progress(
        TextColumn("[bold]{task.description:>8}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("frames"),
        TextColumn("{task.fields[fps]}"),
        TimeElapsedColumn(),
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


@app.command()
def encode(
    src: Annotated[
        Path,
        typer.Argument(
            help="Input video (anything FFmpeg reads) or image folder; or a folder of videos."
        ),
    ],
    dst: Annotated[
        Path, typer.Argument(help="Output .itok file; for a folder of videos, a folder.")
    ],
    budget: Annotated[
        float | None,
        typer.Option(help="Share of the full-rate token count, in (0, 1] (default 0.8)."),
    ] = None,
    quality: Annotated[
        float | None,
        typer.Option(help="Each chunk's PSNR-RGB in dB: the fewest tokens that reach it."),
    ] = None,
    bitrate: Annotated[
        str | None, typer.Option(help="Bits per second of video: 300k, 1.5M.")
    ] = None,
    target_size: Annotated[
        str | None, typer.Option(help="Bytes of the whole file: 800K, 2M, 123456.")
    ] = None,
    router: Annotated[
        str,
        typer.Option(help="elbo, fixed, uniform, or light (elbo predicted: no decode pass)."),
    ] = "elbo",
    model: ModelOption = None,
    chunk_frames: Annotated[int, typer.Option(help="Frames per chunk, a multiple of 4.")] = 16,
    coder: Annotated[
        str,
        typer.Option(
            help="Token coder: context (sees the chunk before), adaptive, range (static "
            "tables) or zstd."
        ),
    ] = "context",
    key_interval: Annotated[
        float,
        typer.Option(
            help="Seconds between key chunks, which decode alone (0: every chunk; context "
            "coder only)."
        ),
    ] = 2.0,
    device: DeviceOption = "auto",
    bf16: Bf16Option = None,
    threads: ThreadsOption = None,
    force: ForceOption = False,
    no_audio: Annotated[
        bool, typer.Option("--no-audio", help="Leave the source's audio out.")
    ] = False,
    as_json: JsonOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Encode a video into an .itok file, spending tokens where the information is; its audio
    is copied in as it is. Give at most one of --budget, --quality, --bitrate and --target-size.

    A folder of videos and an output folder encode every video under it (a dataset; shards
    across ranks under torchrun) and write OUT/manifest.json.
    """
    from infotok_codec.bitstream import CODERS
    from infotok_codec.codec import encode_file
    from infotok_codec.rate import choose_rate, parse_quantity
    from infotok_codec.routing import ROUTERS

    try:
        rate = choose_rate(
            budget=budget,
            quality=quality,
            bitrate=None if bitrate is None else parse_quantity(bitrate, "--bitrate"),
            size=None if target_size is None else parse_quantity(target_size, "--target-size"),
        )
    except InfotokError as exc:
        raise typer.BadParameter(str(exc)) from None
    if router not in ROUTERS:
        raise typer.BadParameter(f"--router {router!r}: choose one of {', '.join(ROUTERS)}")
    if coder not in CODERS:
        raise typer.BadParameter(f"--coder {coder!r}: choose one of {', '.join(CODERS)}")
    if not 0.0 <= key_interval <= 3600.0:
        raise typer.BadParameter(f"--key-interval {key_interval} outside [0, 3600] seconds")
    _set_threads(threads)
    if src.is_dir() and dst.suffix.lower() != ".itok":
        if rate.mode != "budget":
            raise typer.BadParameter("a folder of videos is encoded at a --budget only")
        _encode_folder(
            src,
            dst,
            dict(
                budget=rate.target,
                router=router,
                model=model,
                chunk_frames=chunk_frames,
                coder=coder,
                device=device,
                bf16=bf16,
                threads=threads,
                force=force,
                audio=not no_audio,
                key_interval=key_interval,
            ),
            as_json=as_json,
            quiet=quiet,
        )
        return
    with _progress(quiet or as_json) as progress:
        result = encode_file(
            src,
            dst,
            rate=rate,
            router=router,
            model=model,
            chunk_frames=chunk_frames,
            coder=coder,
            key_interval=key_interval,
            device=device,
            bf16=bf16,
            force=force,
            audio=not no_audio,
            progress=progress,
        )
    if result.warning:
        err_console.print(
            f"warning: {result.warning}", markup=False, highlight=False, soft_wrap=True
        )
    if as_json:
        _print_json(result)
    elif not quiet:
        reached = ""
        if result.chunk_psnr is not None:
            reached = (
                f"; chunks {min(result.chunk_psnr):.2f} to {max(result.chunk_psnr):.2f} dB, "
                f"{result.unreachable_chunks} of {result.chunks} below the target at full rate"
            )
        err_console.print(
            f"{result.path}: {result.frames} frames, {result.bytes} bytes, {result.bpp:.4f} bpp, "
            f"rate {result.realised_rate:.3f} ({result.router}, {result.rate.describe()}){reached}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


def _encode_folder(
    src: Path, dst: Path, options: dict[str, Any], *, as_json: bool, quiet: bool
) -> None:
    """`encode DIR OUTDIR`: one bar over files (rank 0's share under torchrun), the failures
    at the end, exit 1 if any."""
    from infotok_codec.dataset import ManifestEntry, Shard, encode_dataset

    shard = Shard.from_env()
    bars = Progress(
        TextColumn("[bold]  encode"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("files" + (f" (rank 0 of {shard.world})" if shard.world > 1 else "")),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=err_console,
        disable=quiet or as_json or shard.rank != 0,
    )
    task: TaskID | None = None

    def tick(entry: ManifestEntry, total: int) -> None:
        nonlocal task
        if task is None:
            task = bars.add_task("", total=total)
        bars.update(task, advance=1, description=f"{entry.status} {entry.source}")

    with bars:
        result = encode_dataset(src, dst, tick=tick, shard=shard, **options)
    if shard.rank != 0:
        return
    if as_json:
        print(result.manifest.read_text() if result.manifest else "{}", end="")
    elif not quiet:
        err_console.print(
            f"{dst}: {result.count('encoded')} encoded, {result.count('skipped')} skipped, "
            f"{len(result.failed)} failed of {len(result.entries)} files; {result.manifest}",
            highlight=False,
            soft_wrap=True,
        )
    for entry in result.failed:
        line = f"failed: {entry.source}: {entry.error}"
        err_console.print(line, markup=False, highlight=False, soft_wrap=True)
    if result.failed:
        raise InfotokError(
            f"{len(result.failed)} of {len(result.entries)} files failed "
            f"(listed in {result.manifest})"
        )


@app.command()
def decode(
    src: Annotated[Path, typer.Argument(help="Input .itok file, or a token file (.npz).")],
    dst: Annotated[
        Path | None,
        typer.Argument(help="Output video: .mp4, .mkv, .y4m, or a folder for PNGs."),
    ] = None,
    frames: Annotated[str | None, typer.Option(help="Only frames A:B (end exclusive).")] = None,
    tokens: Annotated[
        Path | None, typer.Option("--tokens", help="Also write every chunk's tokens to a .npz.")
    ] = None,
    model: ModelOption = None,
    device: DeviceOption = "auto",
    bf16: Bf16Option = None,
    threads: ThreadsOption = None,
    force: ForceOption = False,
    as_json: JsonOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Decode an .itok file or a token file to video (format by extension) and/or tokens."""
    from infotok_codec.codec import decode_file

    _set_threads(threads)
    with _progress(quiet or as_json) as progress:
        result = decode_file(
            src,
            dst,
            frames=frames,
            tokens_out=tokens,
            model=model,
            device=device,
            bf16=bf16,
            force=force,
            progress=progress,
        )
    for note in result.notes:
        err_console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    if as_json:
        _print_json(result)


@app.command()
def pack(
    src: Annotated[Path, typer.Argument(help="Token file (.npz), as decode --tokens writes.")],
    dst: Annotated[Path, typer.Argument(help="Output .itok file.")],
    model: ModelOption = None,
    force: ForceOption = False,
    as_json: JsonOption = False,
) -> None:
    """Entropy-code a token file into an .itok file (the bytes its encode wrote)."""
    from infotok_codec.pack import pack_file

    result = pack_file(src, dst, model=model, force=force)
    if as_json:
        _print_json(result)


@app.command()
def info(
    src: Annotated[Path, typer.Argument(help="An .itok file.")],
    as_json: JsonOption = False,
    heatmap: Annotated[
        Path | None, typer.Option(help="Write a PNG of token usage (decodes thumbnails).")
    ] = None,
    model: ModelOption = None,
    force: ForceOption = False,
) -> None:
    """Header, per-chunk rates and sizes, and bits per pixel from the real file size."""
    from infotok_codec.inspect import file_info, token_heatmap
    from infotok_codec.outputs import check_output
    from infotok_codec.rate import RateControl

    if heatmap is not None:
        check_output(heatmap, force)
    summary = file_info(src)
    if heatmap is not None:
        token_heatmap(src, heatmap, model=model)
    if as_json:
        _print_json(summary)
        return
    h = summary
    # In mode budget the target is the budget; other modes also say the budget they planned.
    asked = RateControl(h.rate_mode, h.rate_target).describe()
    planned = "" if h.rate_mode == "budget" else f", budget {h.budget:.4g}"
    console.print(
        f"[bold]{src}[/]  (.itok version {h.version})  {h.width}×{h.height}, {h.frames} frames "
        f"at {h.fps} fps, chunks of {h.chunk_frames}, a key chunk every {h.key_interval}\n"
        f"model {h.model} ({h.model_hash[:12]}), router {h.router}, "
        f"{asked}{planned}, lattice {h.lattice_share}/256 of kept, coder {h.coder}"
    )
    table = Table(
        "chunk",
        "first frame",
        "frames",
        "tokens",
        "positions",
        "rate",
        "mask bytes",
        "index bytes",
        "bytes",
    )
    for c in h.chunks:
        table.add_row(
            str(c.index),
            str(c.first_frame),
            str(c.frames),
            str(c.tokens),
            str(c.positions),
            f"{c.tokens / c.positions:.3f}",
            str(c.mask_bytes),
            str(c.index_bytes),
            str(c.bytes),
        )
    console.print(table)
    for t, a in enumerate(h.audio):
        console.print(
            f"audio {t}: {a.codec}, {a.channels} ch ({a.layout or 'unnamed layout'}), "
            f"{a.sample_rate} Hz, {a.seconds:.3f} s, {a.packets} packets, {a.bytes} bytes",
            highlight=False,
        )
    console.print(
        f"total {h.tokens} of {h.positions} tokens (rate {h.rate:.3f}); {h.bytes} bytes "
        f"(masks {h.mask_bytes}, indices {h.index_bytes}, audio {h.audio_bytes}); "
        f"{h.bpp:.4f} bpp ({h.video_bpp:.4f} without audio)"
    )


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(
            f"{what} {text!r} is not a comma-separated list of numbers"
        ) from None


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

    _set_threads(threads)
    codec_names = tuple(c for c in _names(codecs) if c != "none")
    crf_values = tuple(int(v) for v in _floats(crfs, "--crfs")) if crfs else ()
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
        oracle=oracle,
        qualities=_floats(qualities, "--qualities") if qualities else (),
        set_budget=set_budget,
    )
    from infotok_codec.video import find_videos

    check_results_folder(out, force)  # run_bench checks too; here it fails before the bar shows
    loaded = load_model(model)
    if "light" in settings.routers:
        check_light_head(loaded)  # as run_bench does, before the bar shows
    total = settings.points(len(find_videos(paths)))
    bars = Progress(
        TextColumn("[bold]bench"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
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
        _print_json(report.summary)
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
    config: Annotated[
        str | None,
        typer.Option(
            help='Model shape as JSON over the defaults, e.g. \'{"c1": 128, "dim": 384}\'.'
        ),
    ] = None,
) -> None:
    """Train a tokenizer; runs under `torchrun` for several GPUs."""
    from infotok_codec.model import TokenizerConfig
    from infotok_codec.train import TrainOptions
    from infotok_codec.train import train as run_training

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
        weight_average=weight_average,
        decoder_only=decoder_only,
        bf16=bf16,
        warmup_steps=warmup_steps,
        threads=threads,
        max_steps=max_steps,
        short_side=short_side,
        config=model_config,
    )
    report = run_training(opts)
    err_console.print(f"wrote {report.out} after {report.steps} steps ({report.minutes:.1f} min)")


@app.command("fit-router")
def fit_router(
    model: Annotated[Path, typer.Argument(help="Model file (.safetensors) to fit a head for.")],
    data: FitDataOption,
    out: FitOutOption = None,
    windows: Annotated[int, typer.Option(min=2, help="Training windows to fit on.")] = 100,
    steps: Annotated[int, typer.Option(min=1, help="Adam steps.")] = 300,
    threads: ThreadsOption = None,
    force: ForceOption = False,
) -> None:
    """Fit the `light` router's head for an existing model file; its network is left as it is."""
    from infotok_codec.routing import refit_model_file

    _set_threads(threads)
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
    from infotok_codec.coder_fit import refit_model_file

    _set_threads(threads)
    dst = out if out is not None else model
    refit_model_file(model, dst, data, force=force)
    err_console.print(f"wrote {dst}: coder tables and key prior fitted", soft_wrap=True)


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
    if code == 130:  # typer turns Ctrl-C inside a command into exit code 130
        _fail("interrupted", 130)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int) -> None:
    first_line = message.strip().splitlines()[0] if message.strip() else "failed"
    err_console.print(f"error: {first_line}", markup=False, highlight=False, soft_wrap=True)
    sys.exit(code)
