"""`infotok encode`, `decode`, `pack` and `info`: files in, files out."""

from __future__ import annotations

import sys
from contextlib import ExitStack
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from infotok_codec.cli.common import (
    Bf16Option,
    DeviceOption,
    ForceOption,
    JsonOption,
    ModelOption,
    ThreadsOption,
    app,
    checked_by,
    console,
    err_console,
    print_json,
    progress_bars,
    set_threads,
)
from infotok_codec.errors import InfotokError


@app.command()
def encode(
    src: Annotated[
        str,  # not a Path: "-" is the pipe, "./-" a file of that name (a Path folds the two)
        typer.Argument(
            help="Input video (anything FFmpeg reads), image folder or - (a pipe: read whole "
            "first); or a folder of videos.",
        ),
    ],
    dst: Annotated[
        str, typer.Argument(help="Output .itok file; for a folder of videos, a folder.")
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
    chunk_frames: Annotated[
        int,
        typer.Option(
            help="Frames per chunk, a multiple of 4 up to 1024.",
            callback=checked_by("check_chunk_frames"),
        ),
    ] = 16,
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
    refine: Annotated[
        int,
        typer.Option(
            help="Steps of encoder-side search of each chunk's codes against the decoder: "
            "better quality per bit, a slower encode, the same decoder (0: off; 10 takes most "
            "of the gain)."
        ),
    ] = 0,
    device: DeviceOption = "auto",
    bf16: Bf16Option = None,
    threads: ThreadsOption = None,
    force: ForceOption = False,
    no_audio: Annotated[
        bool, typer.Option("--no-audio", help="Leave the source's audio out.")
    ] = False,
    frames: Annotated[
        str | None,
        typer.Option(
            help="Only the source's frames A:B (end exclusive), audio cut to them.",
            callback=checked_by("split_frame_range"),
        ),
    ] = None,
    as_json: JsonOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Encode a video into an .itok file, spending tokens where the information is; its audio
    is copied in as it is. Give at most one of --budget, --quality, --bitrate and --target-size.

    A folder of videos and an output folder encode every video under it (a dataset; shards
    across ranks under torchrun) and write OUT/manifest.json.
    """
    from infotok_codec.bitstream import CODERS
    from infotok_codec.codec import check_refine, encode_file
    from infotok_codec.media import PIPE, spooled_stdin
    from infotok_codec.outputs import check_output
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
    try:
        check_refine(refine)
    except InfotokError as exc:
        raise typer.BadParameter(f"--refine: {exc}") from None
    if dst == PIPE:
        raise typer.BadParameter("an .itok file cannot go to stdout (it ends in a seek index)")
    set_threads(threads)
    source, target = Path(src), Path(dst)
    if src != PIPE and source.is_dir() and target.suffix.lower() != ".itok":
        if rate.mode != "budget":
            raise typer.BadParameter("a folder of videos is encoded at a --budget only")
        if frames is not None:
            raise typer.BadParameter("--frames is for one video, not a folder of videos")
        _encode_folder(
            source,
            target,
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
                refine=refine,
            ),
            as_json=as_json,
            quiet=quiet,
        )
        return
    with ExitStack() as stack, progress_bars(quiet or as_json) as progress:
        if src == PIPE:
            check_output(target, force)  # before the pipe is read, not after
            source = stack.enter_context(spooled_stdin(target))
        result = encode_file(
            source,
            target,
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
            refine=refine,
            frames=frames,
            progress=progress,
        )
    if result.warning:
        err_console.print(
            f"warning: {result.warning}", markup=False, highlight=False, soft_wrap=True
        )
    if as_json:
        print_json(result)
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
        TextColumn("  encode", style="bold", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("files" + (f" (rank 0 of {shard.world})" if shard.world > 1 else "")),
        TimeElapsedColumn(),
        TextColumn("{task.description}", markup=False),
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
        str | None,  # not a Path: "-" is the pipe, "./-" a file of that name
        typer.Argument(
            help="Output video: .mp4, .mkv, .y4m, a folder for PNGs, or - for y4m on stdout.",
        ),
    ] = None,
    frames: Annotated[
        str | None,
        typer.Option(
            help="Only frames A:B (end exclusive).", callback=checked_by("split_frame_range")
        ),
    ] = None,
    tokens: Annotated[
        Path | None, typer.Option("--tokens", help="Also write every chunk's tokens to a .npz.")
    ] = None,
    model: ModelOption = None,
    fast: Annotated[
        bool,
        typer.Option(
            "--fast",
            help="Decode with the shipped model's fast decoder: about half the network's time, "
            "a few tenths of a dB lower (the same tokens).",
        ),
    ] = False,
    device: DeviceOption = "auto",
    bf16: Bf16Option = None,
    threads: ThreadsOption = None,
    force: ForceOption = False,
    as_json: JsonOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Decode an .itok file or a token file to video (format by extension) and/or tokens."""
    from infotok_codec.codec import decode_file
    from infotok_codec.media import PIPE

    if fast:
        if model is not None:
            raise typer.BadParameter("give --fast (the shipped fast decoder) or --model, not both")
        from infotok_codec.model import FAST_DECODER_PATH

        model = FAST_DECODER_PATH
    if str(src) == PIPE:  # a Path: "./-" is "-" too, and a file of that name is as unlikely
        raise typer.BadParameter("decode reads an .itok or token file; stdin (-) is not one")
    output: str | Path | None = dst  # the str "-" is the pipe; any other name a Path
    if dst == PIPE:
        if as_json:
            raise typer.BadParameter("--json prints to stdout, where - writes the video")
        if sys.stdout is None:
            raise typer.BadParameter("- writes y4m video to stdout, which is closed")
        if sys.stdout.isatty():
            raise typer.BadParameter("- writes y4m video to stdout, which is a terminal: pipe it")
    elif dst is not None:
        output = Path(dst)
    if tokens is not None and str(tokens) == PIPE:
        raise typer.BadParameter("--tokens -: a token file cannot go to stdout")
    set_threads(threads)
    with progress_bars(quiet or as_json) as progress:
        result = decode_file(
            src,
            output,
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
        print_json(result)


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
        print_json(result)


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
        check_output(heatmap, force, inputs=[src])
    summary = file_info(src)
    if heatmap is not None:
        token_heatmap(src, heatmap, model=model)
    if as_json:
        print_json(summary)
        return
    h = summary
    # In mode budget the target is the budget; other modes also say the budget they planned.
    asked = RateControl(h.rate_mode, h.rate_target).describe()
    planned = "" if h.rate_mode == "budget" else f", budget {h.budget:.4g}"
    steps = h.refine or 0  # None: a file before version 6, which did not record it
    refined = f", refined for {steps} step{'s' * (steps != 1)}" if steps else ""
    seconds = float(h.key_interval * h.chunk_frames / Fraction(h.fps))
    plural = "s" * (h.key_interval != 1)
    keys = f"a key chunk every {h.key_interval} chunk{plural} ({seconds:.3g} s)"
    console.print(
        Text.assemble(
            (str(src), "bold"),
            f"  (.itok version {h.version})  {h.width}×{h.height}, {h.frames} frames at {h.fps} "
            f"fps, chunks of {h.chunk_frames}, {keys}\n"
            f"model {h.model} ({h.model_hash[:12]}), router {h.router}, "
            f"{asked}{planned}{refined}, lattice {h.lattice_share}/256 of kept, coder {h.coder}",
        ),
        soft_wrap=True,
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
