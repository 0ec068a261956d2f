"""Bitrate–distortion benchmark: InfoTok routers against each other and against classical codecs.

Every point is a real file: encode → file on disk → decode → metrics against the same source
frames (first `frames` frames, short side scaled to `size`, centre-cropped square). Bits per
pixel come from file sizes. For the tokenizer, one pass-1 analysis per clip serves every router
and budget (as `infotok encode` would compute it for each; `light`, whose pass 1 predicts the
map, has its own, run right after the others' on the same clip so their times are comparable),
and every point is decoded from its own `.itok` file.
"""

from __future__ import annotations

import dataclasses
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack, closing, nullcontext
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from infotok_codec import __version__
from infotok_codec.bench import set_budget
from infotok_codec.bench.classical import CODECS, encode_classical
from infotok_codec.bench.quality import chunk_psnr, quality_rows
from infotok_codec.bench.report import check_results_folder, summarise, write_outputs
from infotok_codec.codec import (
    Analysis,
    check_light_head,
    check_refine,
    decode_file,
    resolve_device,
)
from infotok_codec.errors import InfotokError
from infotok_codec.media import VideoWriter, find_videos, probe, read_frames
from infotok_codec.metrics import Scorer, check_metrics, default_metrics, judges
from infotok_codec.model import LoadedModel, load_model, use_bf16
from infotok_codec.rate import RateControl
from infotok_codec.routing import router as routing

ORACLE_RATES = (1 / 16, 1 / 8, 1 / 4, 3 / 8, 1 / 2, 5 / 8, 3 / 4, 1.0)

Tick = Callable[[str], None]


@dataclass
class BenchSettings:
    budgets: tuple[float, ...] = (0.25, 0.375, 0.5, 0.625, 0.75, 1.0)
    routers: tuple[str, ...] = ("elbo", "fixed", "uniform")
    codecs: tuple[str, ...] = ("x264", "x265", "svtav1")
    crfs: dict[str, tuple[int, ...]] = field(default_factory=dict)  # per codec; default: its own
    frames: int = 64
    size: int = 256
    metrics: tuple[str, ...] = field(default_factory=default_metrics)
    lpips_every: int = 1  # LPIPS on frames 0, k, 2k, ... (the network is the bench's costliest)
    device: str = "auto"
    bf16: bool | None = None  # the network in bf16 (None: where the device runs it natively)
    refine: int = 0  # steps of encoder-side refinement in every encode (`encode --refine`)
    oracle: bool = False
    qualities: tuple[float, ...] = ()  # `--quality` targets in dB, with the first router
    # Also spend each budget over the whole set of clips (`global`, InfoTok's global ELBO).
    set_budget: bool = False

    def __post_init__(self) -> None:
        """Refuse a bad setting before any work (one `InfotokError` line at the CLI)."""
        for name in self.codecs:
            if name not in CODECS:
                raise InfotokError(f"unknown codec {name!r}: choose from {', '.join(CODECS)}")
        for router in self.routers:
            routing.check_router(router)
        for budget in self.budgets:
            routing.check_budget(budget)
        check_metrics(self.metrics)
        check_refine(self.refine)
        if "psnr" not in self.metrics:
            raise InfotokError("metrics must include psnr (the BD-rates and summaries use it)")
        for q in self.qualities:
            RateControl.quality(q)  # raises on a target outside (0, 100] dB
        if self.set_budget and "elbo" not in self.routers:
            raise InfotokError("--set-budget is compared with elbo: include it in --routers")
        if self.frames < 1 or self.size < 1:
            raise InfotokError(f"frames {self.frames} and size {self.size} must be positive")
        if self.lpips_every < 1:
            raise InfotokError(f"lpips_every {self.lpips_every} must be at least 1")

    def crfs_for(self, codec: str) -> tuple[int, ...]:
        return self.crfs.get(codec) or CODECS[codec].default_crfs

    def points(self, clips: int) -> int:
        per_clip = len(self.routers) * len(self.budgets)
        per_clip += sum(len(self.crfs_for(c)) for c in self.codecs)
        per_clip += len(self.budgets) if self.oracle else 0
        per_clip += len(self.qualities)
        per_clip += sum(b < 1.0 for b in self.budgets) if self.set_budget else 0
        return clips * per_clip


@dataclass
class BenchRow:
    """One point of one curve."""

    clip: str
    method: str  # elbo, fixed, uniform, light, oracle, quality, global, x264, x265, svtav1
    param: float  # budget for token methods, CRF for classical codecs
    bytes: int
    bpp: float
    metrics: dict[str, float]
    seconds: dict[str, float]  # encode, decode (and for token methods: analyse, route, write)
    frames: int
    rate: float | None = None  # share of latent positions kept (token methods)
    chunk_rates: list[float] | None = None
    chunk_psnr: list[float] | None = None  # method quality: each chunk's PSNR-RGB (dB)


@dataclass
class BenchReport:
    results: list[BenchRow]
    summary: dict[str, Any]
    device: str
    versions: dict[str, str]
    settings: dict[str, Any]


def reference_frames(path: Path, frames: int, size: int) -> np.ndarray:
    """The first `frames` frames of a clip, short side scaled to `size` and centre-cropped to
    `size`×`size`: the benchmarks' protocol, `(n, size, size, 3)` uint8."""
    return np.concatenate(
        list(read_frames(path, 16, max_frames=frames, short_side=size, center_crop=size))
    )


def prepare_source(
    path: Path, settings: BenchSettings, workdir: Path, name: str | None = None
) -> tuple[np.ndarray, Path]:
    """The reference frames, and a lossless file of exactly them for the codecs to read
    (`workdir/NAME.source.mkv`; NAME defaults to the clip's stem)."""
    frames = reference_frames(path, settings.frames, settings.size)
    source = workdir / f"{name or path.stem}.source.mkv"
    with VideoWriter(source, frames.shape[2], frames.shape[1], probe(path).fps) as writer:
        writer.write(frames)
    return frames, source


def _decoded(path: Path) -> np.ndarray:
    return np.concatenate(list(read_frames(path, 64)))


def bench_tokenizer(
    clip: str,
    source: Path,
    score: Scorer,
    settings: BenchSettings,
    model: LoadedModel,
    workdir: Path,
    tick: Tick,
    global_counts: dict[float, list[int]] | None = None,
    pass1: Analysis | None = None,
) -> list[BenchRow]:
    """Rows for every router × budget (and the oracle, quality targets, and with
    `global_counts`, this clip's chunk counts of each budget spent over the whole set). `pass1`:
    the clip's full-rate analysis if one is already open (`--set-budget` made it); the caller
    closes it."""
    rows: list[BenchRow] = []
    full_rate = [r for r in settings.routers if r != "light"]
    if full_rate or settings.oracle or settings.qualities or global_counts:
        with (
            nullcontext(pass1) if pass1 is not None else _analysis(source, model, settings)
        ) as analysis:
            rows += _router_rows(clip, analysis, full_rate, score, settings, model, workdir, tick)
            if settings.oracle:
                rows += _oracle_rows(clip, analysis, score, settings, model, workdir, tick)
            if settings.qualities:
                rows += _quality_rows(clip, analysis, score, settings, model, workdir, tick)
            for budget, counts in (global_counts or {}).items():
                itok = workdir / f"{clip}.{set_budget.METHOD}.{budget}.itok"
                enc = analysis.write(
                    itok, router="elbo", budget=budget, counts=counts, force=True, audio=False
                )
                rows.append(
                    _token_row(
                        clip,
                        set_budget.METHOD,
                        budget,
                        itok,
                        enc,
                        analysis.seconds,
                        score,
                        settings,
                        model,
                        workdir,
                    )
                )
                tick(f"{clip} {set_budget.METHOD} {budget}")
    if "light" in settings.routers:
        with _analysis(source, model, settings, light=True) as analysis:
            rows += _router_rows(clip, analysis, ["light"], score, settings, model, workdir, tick)
    return rows


def _analysis(
    source: Path, model: LoadedModel, settings: BenchSettings, light: bool = False
) -> Analysis:
    """Pass 1 of `source` with the bench's device, precision and refinement: full-rate error
    maps, or with `light` the `light` router's (and the conv features)."""
    return Analysis(
        source,
        model,
        device=settings.device,
        bf16=settings.bf16,
        refine=settings.refine,
        light=light,
    )


def _router_rows(
    clip: str,
    analysis: Analysis,
    routers: Sequence[str],
    score: Scorer,
    settings: BenchSettings,
    model: LoadedModel,
    workdir: Path,
    tick: Tick,
) -> list[BenchRow]:
    rows = []
    for router in routers:
        for budget in settings.budgets:
            itok = workdir / f"{clip}.{router}.{budget}.itok"
            enc = analysis.write(itok, router=router, budget=budget, force=True, audio=False)
            # `uniform` (and any budget-1.0 encode) needs no pass 1.
            analyse_s = analysis.seconds if routing.needs_error_map(router, budget) else 0.0
            rows.append(
                _token_row(
                    clip, router, budget, itok, enc, analyse_s, score, settings, model, workdir
                )
            )
            tick(f"{clip} {router} {budget}")
    return rows


def _quality_rows(
    clip: str,
    analysis: Analysis,
    score: Scorer,
    settings: BenchSettings,
    model: LoadedModel,
    workdir: Path,
    tick: Tick,
) -> list[BenchRow]:
    """`--quality` encodes at each of `settings.qualities`, with each chunk's PSNR-RGB."""
    router = settings.routers[0] if settings.routers else "elbo"

    def row(itok: Path, enc: Any, analyse_s: float) -> BenchRow:
        return _token_row(
            clip,
            "quality",
            enc.rate.target,
            itok,
            enc,
            analyse_s,
            score,
            settings,
            model,
            workdir,
            chunk_frames=analysis.chunk_frames,
        )

    rows = []
    for q_row in quality_rows(analysis, settings.qualities, router, workdir, clip, row):
        rows.append(q_row)
        tick(f"{clip} quality {q_row.param}")
    return rows


def _token_row(
    clip: str,
    method: str,
    budget: float,
    itok: Path,
    enc: Any,
    analyse_s: float,
    score: Scorer,
    settings: BenchSettings,
    model: LoadedModel,
    workdir: Path,
    chunk_frames: int | None = None,
) -> BenchRow:
    """Decode `itok` once and score it; with `chunk_frames`, also each chunk's PSNR-RGB."""
    decoded_path = workdir / f"{itok.stem}.decoded.mkv"
    started = time.perf_counter()
    decode_file(
        itok, decoded_path, model=model, device=settings.device, bf16=settings.bf16, force=True
    )
    decode_s = time.perf_counter() - started
    decoded = _decoded(decoded_path)
    encode_s = analyse_s + enc.seconds["route"] + enc.seconds["write"]
    return BenchRow(
        clip=clip,
        method=method,
        param=budget,
        bytes=enc.bytes,
        bpp=enc.bpp,
        metrics=score(decoded),
        seconds={
            "encode": encode_s,
            "decode": decode_s,
            "analyse": analyse_s,
            "route": enc.seconds["route"],
            "write": enc.seconds["write"],
        },
        frames=len(score.source),
        rate=enc.realised_rate,
        chunk_rates=enc.chunk_rates,
        chunk_psnr=None
        if chunk_frames is None
        else chunk_psnr(decoded, score.source, chunk_frames),
    )


def _oracle_rows(
    clip: str,
    analysis: Analysis,
    score: Scorer,
    settings: BenchSettings,
    model: LoadedModel,
    workdir: Path,
    tick: Tick,
) -> list[BenchRow]:
    """The upper bound: per chunk, distortion at every rate in ORACLE_RATES (positions by error),
    then the budget split by Lagrangian search to minimise total squared error."""
    engine = analysis.engine
    h, w = score.source.shape[1:3]
    distortion: list[list[float]] = []  # [chunk][rate] sum of squared error
    counts_at: list[list[int]] = []
    with closing(analysis.read_chunks()) as inputs:
        for error in analysis.chunk_errors():
            frames = next(inputs)  # not zip: its result tuple would hold the last chunk's frames
            row_d, row_c = [], []
            for r in ORACLE_RATES:
                count = routing.keep_count(r, error.size)
                keep = routing.select_positions("fixed", error, error.shape, count)
                out = engine.frames(engine.tokens(frames, keep), keep, len(frames), h, w)
                row_d.append(float(np.sum((out.astype(np.float64) - frames) ** 2)))
                row_c.append(count)
            del frames
            distortion.append(row_d)
            counts_at.append(row_c)
    rows = []
    total = sum(c[-1] for c in counts_at)
    for budget in settings.budgets:
        counts = lagrangian_allocation(distortion, counts_at, budget * total)
        itok = workdir / f"{clip}.oracle.{budget}.itok"
        enc = analysis.write(
            itok, router="fixed", budget=budget, counts=counts, force=True, audio=False
        )
        row = _token_row(
            clip, "oracle", budget, itok, enc, analysis.seconds, score, settings, model, workdir
        )
        rows.append(row)
        tick(f"{clip} oracle {budget}")
    return rows


def lagrangian_allocation(
    distortion: list[list[float]], counts: list[list[int]], target: float
) -> list[int]:
    """Per chunk, the option minimising D + λ·count; λ bisected so Σ count ≤ target (closest)."""

    def pick(lam: float) -> list[int]:
        return [
            int(np.argmin([d + lam * c for d, c in zip(ds, cs, strict=True)]))
            for ds, cs in zip(distortion, counts, strict=True)
        ]

    def used(choice: list[int]) -> int:
        return sum(cs[i] for cs, i in zip(counts, choice, strict=True))

    lo, hi = 0.0, 1.0
    while used(pick(hi)) > target and hi < 1e30:
        hi *= 4
    best = pick(hi)
    for _ in range(100):
        mid = (lo + hi) / 2
        choice = pick(mid)
        if used(choice) <= target:
            best, hi = choice, mid
        else:
            lo = mid
    return [cs[i] for cs, i in zip(counts, best, strict=True)]


def bench_classical(
    clip: str,
    score: Scorer,
    fps: Fraction,
    settings: BenchSettings,
    workdir: Path,
    tick: Tick,
) -> list[BenchRow]:
    rows = []
    reference = score.source
    n, h, w = reference.shape[:3]
    for name in settings.codecs:
        codec = CODECS[name]
        for crf in settings.crfs_for(name):
            path = workdir / f"{clip}.{name}.{crf}.mkv"
            started = time.perf_counter()
            encode_classical(codec, reference, fps, crf, path)
            encode_s = time.perf_counter() - started
            started = time.perf_counter()
            decoded = _decoded(path)
            decode_s = time.perf_counter() - started
            size = path.stat().st_size
            rows.append(
                BenchRow(
                    clip=clip,
                    method=name,
                    param=crf,
                    bytes=size,
                    bpp=8 * size / (n * h * w),
                    metrics=score(decoded),
                    seconds={"encode": encode_s, "decode": decode_s},
                    frames=n,
                )
            )
            tick(f"{clip} {name} crf {crf}")
    return rows


def _set_allocation(
    clips: Sequence[Path],
    settings: BenchSettings,
    model: LoadedModel,
    workdir: Path,
    held: ExitStack,
) -> tuple[dict[str, Analysis], dict[str, dict[float, list[int]]]]:
    """Pass 1 over every clip first (chunk sizes and mean full-rate errors), then each budget's
    `elbo` allocation over all their chunks (`set_budget.set_counts`). Every clip's analysis
    stays open in `held` (its spill file and its source file in `workdir`: kilobytes and a few
    megabytes at the bench's sizes) for its own rows, so no clip runs pass 1 twice."""
    names = [p.name for p in clips]
    if len(set(names)) != len(names):
        raise InfotokError("--set-budget needs clips of distinct file names (rows are by name)")
    analyses: dict[str, Analysis] = {}
    for path in clips:
        _, source = prepare_source(path, settings, workdir, name=path.name)
        analyses[path.name] = held.enter_context(_analysis(source, model, settings))
    chunks = {
        name: ([c.positions for c in a.chunks], [c.mean_error for c in a.chunks])
        for name, a in analyses.items()
    }
    return analyses, set_budget.set_counts(chunks, [b for b in settings.budgets if b < 1.0])


# -- summaries -------------------------------------------------------------------------------
def run_bench(
    paths: Sequence[Path],
    settings: BenchSettings,
    out_dir: Path,
    *,
    model: LoadedModel | str | Path | None = None,
    tick: Tick | None = None,
    keep_files: bool = False,
    force: bool = False,
) -> BenchReport:
    """Run every point, write results.json / results.csv / plots into `out_dir`.

    `keep_files` leaves every encoded file in `out_dir/files` (named clip.method.param.ext).
    Results already in `out_dir` are replaced only with `force`.
    """
    check_results_folder(out_dir, force)
    clips = find_videos(paths)
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    loaded.check_encodes()
    if "light" in settings.routers:
        check_light_head(loaded)
    device = str(resolve_device(settings.device))
    rows: list[BenchRow] = []
    step = tick or (lambda _label: None)
    with tempfile.TemporaryDirectory(prefix="infotok-bench-") as tmp, ExitStack() as held:
        work = out_dir / "files" if keep_files else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        pass1: dict[str, Analysis] = {}
        counts_by_clip: dict[str, dict[float, list[int]]] = {}
        if settings.set_budget:
            pass1, counts_by_clip = _set_allocation(clips, settings, loaded, work, held)
        for path in clips:
            analysis = pass1.pop(path.name, None)
            if analysis is not None:
                source = analysis.src
                reference = _decoded(source)  # lossless: exactly the frames it was made of
            else:
                reference, source = prepare_source(path, settings, work)
            fps = probe(source).fps
            score = Scorer(reference, settings.metrics, settings.lpips_every)
            rows += bench_tokenizer(
                path.name,
                source,
                score,
                settings,
                loaded,
                work,
                step,
                counts_by_clip.get(path.name),
                analysis,
            )
            rows += bench_classical(path.name, score, fps, settings, work, step)
            if analysis is not None:
                analysis.close()
            if not keep_files:
                pending = {a.src for a in pass1.values()}  # later clips' sources
                for leftover in work.iterdir():
                    if leftover not in pending:
                        leftover.unlink()
    import av
    import torch

    versions = {
        "infotok": __version__,
        "torch": torch.__version__,
        "av": av.__version__,
        "ffmpeg": ".".join(str(v) for v in av.library_versions.get("libavcodec", ())),
        "python": platform.python_version(),
        **judges.versions(settings.metrics),
    }
    report = BenchReport(
        results=rows,
        summary=summarise(rows, settings),
        device=(
            device
            if device != "cpu"
            else f"cpu ({platform.processor() or platform.machine()}, "
            f"{torch.get_num_threads()} threads)"
        )
        + (", bf16" if use_bf16(settings.bf16, torch.device(device)) else ", fp32"),
        versions=versions,
        settings={
            **dataclasses.asdict(settings),
            "model": loaded.name,
            "model_sha256": loaded.sha256.hex(),
            "psnr": "pooled over each clip (one MSE); psnr_frame_mean: mean of per-frame PSNR",
            **{m: j.note for m, j in judges.JUDGES.items() if m in settings.metrics},
        },
    )
    write_outputs(report, out_dir)
    return report
