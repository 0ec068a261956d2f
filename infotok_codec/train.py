"""Training: stage 1 at full rate, stage 2 InfoTok post-training with data-dependent rates.

One process on a CPU, or one per GPU under `torchrun` (PyTorch DDP: DistributedSampler, rank-0
logging and checkpoints), under bf16 autocast where the hardware runs it natively (CUDA, CPUs
with AVX512-BF16 or AMX). The schedule is set in wall-clock minutes, because that is the budget a
CPU run has; checkpoints are written on a timer and `--resume` continues one.
At the end the entropy coder's frequency tables are fitted on training tokens and stored, with the
config, the recipe and a hash of the data manifest, in one safetensors file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import platform
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from infotok_codec.coder_fit import fit_coder
from infotok_codec.errors import InfotokError, ModelError
from infotok_codec.model import WeightAverage
from infotok_codec.model.light_router import split_head
from infotok_codec.model.precision import use_bf16
from infotok_codec.model.tokenizer import (
    Tokenizer,
    TokenizerConfig,
    pooled_error,
    read_model_metadata,
    save_model,
)
from infotok_codec.outputs import atomic_file, check_output
from infotok_codec.routing import fit_light_router, keep_count, select_positions

# Stage-2 rate sampler: r = clip(b · L(x) / EMA(L), 1/16, 1), b drawn from these (InfoTok §3.3).
STAGE2_BUDGETS = (1.0, 0.75, 0.5, 0.25)
MIN_RATE = 1 / 16
# Config fields `--init` may raise: a conv stage's new residual blocks start as the identity.
GROWABLE = ("enc_blocks1", "enc_blocks2", "dec_blocks1", "dec_blocks2")


@dataclass
class TrainOptions:
    data: list[Path]
    out: Path
    minutes: float = 120.0
    stage2_fraction: float = 0.3  # last share of the run spent on masked post-training
    # Share of stage-2 clips whose kept positions follow the data-agnostic spread order instead
    # of the error map, so the `uniform` baseline is decoded by a model that has seen its masks.
    spread_share: float = 0.15
    # Share of stage-2 clips kept whole (rate 1), so post-training does not forget full rate:
    # the sampler alone gives rate 1 only to clips with an above-average error drawn at b = 1.
    full_rate_share: float = 0.0
    # bf16 autocast: None picks it where the hardware runs bf16 natively (CUDA, or a CPU whose
    # oneDNN has bf16 kernels, e.g. AVX512-BF16/AMX: 1.7x faster steps on a 2-core AVX512-BF16 CPU).
    bf16: bool | None = None
    # Weight of a squared-error term added to the L1 loss: PSNR is a squared-error measure, and
    # L1 alone under-weights large errors (run 4, under L1, decoded a near-grey clip tinted
    # green; run 5, with this term at 10, lifted the dev set's full-rate PSNR by 1.8 dB).
    mse_weight: float = 10.0
    # Decay of an average of the weights kept beside them (0: none). With it, validation,
    # checkpoints' shippable weights and the model file are the average's (see model/averaging.py).
    weight_average: float = 0.0
    # Train the decoding half only (de-compressor, decoder, "dropped", projection from codes):
    # every token stays as the `init` model makes it (so do the coder tables fitted on them) and
    # a step skips the encoder's backward pass (0.42–0.55 s against 0.67 s a step, 2 threads).
    decoder_only: bool = False
    batch: int = 8
    frames: int = 16
    crop: int = 64
    lr: float = 8e-4
    warmup_steps: int = 200
    short_side: int = 256  # training frames are scaled like the benchmarks' inputs
    max_frames_per_clip: int = 256
    val_files: int = 4
    checkpoint_minutes: float = 10.0
    seed: int = 0
    resume: bool = False
    force: bool = False  # replace an existing `out` (a resumed run may always write it)
    init: Path | None = None  # start from this model file's weights (fine-tuning)
    threads: int | None = None
    max_steps: int | None = None  # stop early after this many steps (tests, smoke runs)
    config: TokenizerConfig = field(default_factory=TokenizerConfig)

    def __post_init__(self) -> None:
        """Refuse settings no run can use, before any data is decoded."""
        checks = [
            *(
                (0 <= getattr(self, name) <= 1, f"{name} {getattr(self, name)} is not in [0, 1]")
                for name in ("stage2_fraction", "spread_share", "full_rate_share")
            ),
            (self.minutes > 0, f"minutes {self.minutes} must be positive"),
            (self.mse_weight >= 0, f"mse weight {self.mse_weight} is negative"),
            (
                0 <= self.weight_average < 1,
                f"weight-average decay {self.weight_average} is not in [0, 1)",
            ),
            (self.batch >= 1, f"batch {self.batch} must be at least 1"),
            (self.frames >= 4 and self.frames % 4 == 0, f"frames {self.frames}: a multiple of 4"),
            (self.crop >= 8 and self.crop % 8 == 0, f"crop {self.crop}: a multiple of 8 pixels"),
            (self.lr > 0, f"learning rate {self.lr} must be positive"),
            (self.warmup_steps >= 1, f"warm-up steps {self.warmup_steps} must be at least 1"),
            (self.short_side >= 1, f"short side {self.short_side} must be positive"),
            (self.checkpoint_minutes > 0, f"checkpoint minutes {self.checkpoint_minutes} <= 0"),
            (self.threads is None or self.threads >= 1, f"threads {self.threads} must be >= 1"),
            (self.max_steps is None or self.max_steps >= 1, f"max steps {self.max_steps} < 1"),
            (self.crop <= self.short_side, f"crop {self.crop} is larger than the short side"),
            (not (self.resume and self.init), "give --resume or --init (a model file), not both"),
            (
                not self.decoder_only or self.resume or self.init is not None,
                "--decoder-only keeps the encoder as it is: give --init (a model file)",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise InfotokError(message)

    @property
    def checkpoint_path(self) -> Path:
        return self.out.with_name(self.out.name + ".ckpt.pt")


@dataclass
class TrainState:
    """What a checkpoint carries besides weights and optimizer; stored as a plain dict."""

    step: int = 0
    elapsed: float = 0.0  # seconds of training so far, across resumes
    loss_ema: float | None = None
    err_ema: float | None = None  # EMA of the per-clip error L(x) for the stage-2 sampler
    first_loss: float | None = None
    last_loss: float | None = None
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass(frozen=True)
class TrainReport:
    out: Path
    steps: int
    minutes: float
    first_loss: float | None
    last_loss: float | None
    history: list[dict[str, float]]


# -- data ------------------------------------------------------------------------------------
def manifest_sha256(files: Sequence[Path]) -> str:
    """Hash of the training set's names and sizes: which data a model saw, cheaply."""
    h = hashlib.sha256()
    for f in files:
        size = f.stat().st_size if f.is_file() else sum(p.stat().st_size for p in f.iterdir())
        h.update(f"{f.name}\t{size}\n".encode())
    return h.hexdigest()


def load_clip(path: Path, short_side: int, max_frames: int) -> np.ndarray:
    """Decode a clip once into `(T, H, W, 3)` uint8 at the training scale."""
    # PyAV is imported where files are decoded, not with this module: the training loop's parts
    # then import on a machine without PyAV (`benchmarks/gpu_campaign.py` on a lent GPU).
    from infotok_codec import video as video_io

    chunks = list(video_io.read_frames(path, 64, max_frames=max_frames, short_side=short_side))
    return np.concatenate(chunks)


class ClipWindows(Dataset[torch.Tensor]):
    """Random windows of cached clips: item i is `(3, frames, crop, crop)` float in [-1, 1].

    Each item is drawn from its own seeded generator, so a DistributedSampler can split a virtual
    epoch of `length` items across ranks without two ranks drawing the same window.
    """

    def __init__(self, clips: list[np.ndarray], frames: int, crop: int, length: int) -> None:
        self.clips = [c for c in clips if c.shape[1] >= crop and c.shape[2] >= crop]
        if not self.clips:
            raise InfotokError(f"no training clip is at least {crop}×{crop}")
        self.frames, self.crop, self.length = frames, crop, length
        self.epoch_seed = 0

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> torch.Tensor:
        rng = np.random.default_rng((self.epoch_seed, i))
        clip = self.clips[rng.integers(len(self.clips))]
        stride = int(rng.choice([1, 2])) if clip.shape[0] >= 2 * self.frames else 1
        span = (self.frames - 1) * stride + 1
        t0 = int(rng.integers(max(clip.shape[0] - span, 0) + 1))
        times = np.minimum(np.arange(t0, t0 + span, stride), clip.shape[0] - 1)
        y = int(rng.integers(clip.shape[1] - self.crop + 1))
        x = int(rng.integers(clip.shape[2] - self.crop + 1))
        window = clip[times, y : y + self.crop, x : x + self.crop]
        if rng.random() < 0.5:
            window = window[:, :, ::-1]
        tensor = torch.from_numpy(np.ascontiguousarray(window)).permute(3, 0, 1, 2)
        return tensor.float() / 127.5 - 1.0


# -- the loss of one batch -------------------------------------------------------------------
def stage2_keep_masks(
    error: torch.Tensor, rates: torch.Tensor, routers: Sequence[str]
) -> torch.Tensor:
    """Each clip's keep-mask: ⌈r·N⌉ positions of error map `(B, T', h, w)` chosen by the codec's
    own `router.select_positions`, so stage 2 trains on exactly the masks encoding makes."""
    t, h, w = error.shape[1:]
    shape = (int(t), int(h), int(w))
    n = t * h * w
    masks = [
        select_positions(router, e, shape, keep_count(r, n))
        for e, r, router in zip(error.float().cpu().numpy(), rates.tolist(), routers, strict=True)
    ]
    return torch.from_numpy(np.stack(masks)).to(error.device)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two tensors in [-1, 1], one MSE over everything."""
    mse = F.mse_loss(a.clamp(-1, 1), b).item() / 4.0
    return 10 * math.log10(1.0 / max(mse, 1e-10))


# -- the loop --------------------------------------------------------------------------------
def _is_distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def train(opts: TrainOptions) -> TrainReport:
    """Run (or resume) a training run and write the model file."""
    distributed = _is_distributed()
    if distributed:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    console = Console(stderr=True, quiet=rank != 0)
    torch.manual_seed(opts.seed + rank)
    random.seed(opts.seed + rank)

    check_output(opts.out, opts.force or opts.resume)
    from infotok_codec import video as video_io  # PyAV: see `load_clip`

    if opts.resume and not opts.checkpoint_path.is_file():
        raise InfotokError(f"{opts.checkpoint_path}: no checkpoint to resume from")
    if opts.checkpoint_path.exists() and not (opts.resume or opts.force):
        raise InfotokError(
            f"{opts.checkpoint_path}: a run's checkpoint is there (--resume continues it, "
            "--force starts over)"
        )
    # The model, its starting weights and the checkpoint before the data: their faults are
    # reported before minutes of decoding.
    model = Tokenizer(opts.config).to(device)
    if opts.decoder_only:
        for p in model.encoding_parameters():
            p.requires_grad_(False)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=opts.lr,
        weight_decay=0.01,
        betas=(0.9, 0.99),
    )
    state = TrainState()
    if opts.resume:
        ckpt = torch.load(opts.checkpoint_path, map_location=device, weights_only=False)
        if ckpt["config"] != opts.config.to_json():
            raise InfotokError(f"{opts.checkpoint_path}: checkpoint is for another model config")
        if ckpt.get("decoder_only", False) != opts.decoder_only:
            raise InfotokError(
                f"{opts.checkpoint_path}: checkpoint trained "
                + ("the decoding half only" if ckpt.get("decoder_only") else "the whole model")
                + " (give the same --decoder-only setting)"
            )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        average = _weight_average(opts, model)
        if average is not None:
            # A checkpoint written without an average starts one from its weights.
            average.load_state_dict(ckpt.get("average") or ckpt["model"])
        state = TrainState(**ckpt["state"])
        console.log(f"resumed at step {state.step} ({state.elapsed / 60:.1f} min)")
    else:
        if opts.init is not None:
            new = init_weights(model, opts.init)
            refuse_frozen_new(model, new)
            added = f"; new: {', '.join(new)}" if new else ""
            console.log(f"initialised from {opts.init}{added}")
        average = _weight_average(opts, model)
    files = video_io.find_videos(opts.data)
    val_set = set(validation_files(files, opts.val_files))
    train_files = [f for f in files if f not in val_set]
    console.log(f"{len(train_files)} training files, {len(val_set)} validation files")
    started = time.time()
    clips = [load_clip(f, opts.short_side, opts.max_frames_per_clip) for f in train_files]
    val_clips = [load_clip(f, opts.short_side, 32) for f in sorted(val_set)]
    n_frames = sum(len(c) for c in clips)
    console.log(f"decoded {n_frames} frames in {time.time() - started:.0f} s")

    net: torch.nn.Module = (
        # Stage 1 uses neither the "dropped" nor the "will drop" embedding, so DDP must not wait
        # for their gradients.
        DistributedDataParallel(model, find_unused_parameters=True) if distributed else model
    )

    dataset = ClipWindows(clips, opts.frames, opts.crop, length=100_000 * opts.batch)
    sampler: DistributedSampler[torch.Tensor] | None = (
        DistributedSampler(dataset, num_replicas=world, rank=rank, seed=opts.seed)
        if distributed
        else None
    )
    val_batch = validation_batch(val_clips, opts.frames, 128).to(device)

    budget_s = opts.minutes * 60
    stage2_at = budget_s * (1 - opts.stage2_fraction)
    last_ckpt = time.time()
    run_start = time.time() - state.elapsed
    amp = use_bf16(opts.bf16, device)
    epoch = state.step // (len(dataset) // (opts.batch * world))
    progress = Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        console=console,
        disable=rank != 0 or not console.is_terminal,
    )
    with progress:
        task = progress.add_task("train", total=budget_s, completed=int(state.elapsed), info="")
        while time.time() - run_start < budget_s and not _step_limit(opts, state):
            dataset.epoch_seed = opts.seed * 1000 + epoch
            if sampler is not None:
                sampler.set_epoch(epoch)
            loader = DataLoader(dataset, batch_size=opts.batch, sampler=sampler, shuffle=False)
            for batch in loader:
                elapsed = time.time() - run_start
                if elapsed >= budget_s or _step_limit(opts, state):
                    break
                x = batch.to(device, non_blocking=True)
                lr = learning_rate(opts, state.step, elapsed / budget_s)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                keep = None
                stage = 2 if elapsed >= stage2_at else 1
                if stage == 2:
                    keep, state.err_ema = sample_keep_masks(
                        model, x, state.err_ema, amp, opts.spread_share, opts.full_rate_share
                    )
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    recon = net(x, keep, encoder_grad=not opts.decoder_only)
                    loss = reconstruction_loss(recon.float(), x, opts.mse_weight)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                if average is not None:
                    average.update(model)
                state.step += 1
                value = loss.item()
                if state.first_loss is None:
                    state.first_loss = value
                state.last_loss = value
                state.loss_ema = (
                    value if state.loss_ema is None else 0.98 * state.loss_ema + 0.02 * value
                )
                state.elapsed = time.time() - run_start
                progress.update(
                    task,
                    completed=state.elapsed,
                    info=f"step {state.step} stage {stage} loss {state.loss_ema:.4f} "
                    f"psnr {psnr(recon.detach().float(), x):.2f} dB lr {lr:.1e}",
                )
                if state.step % 100 == 0:
                    console.log(
                        f"step {state.step} stage {stage} loss {state.loss_ema:.4f} "
                        f"batch-psnr {psnr(recon.detach().float(), x):.2f} dB"
                    )
                if time.time() - last_ckpt > opts.checkpoint_minutes * 60:
                    _checkpoint(opts, model, average, optimizer, state, val_batch, console, rank)
                    last_ckpt = time.time()
            epoch += 1
    _checkpoint(opts, model, average, optimizer, state, val_batch, console, rank)
    if rank == 0:
        shipped = model if average is None else average.model
        _finalize(opts, shipped, clips, files, state, world, device, console)
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return TrainReport(
        out=opts.out,
        steps=state.step,
        minutes=state.elapsed / 60,
        first_loss=state.first_loss,
        last_loss=state.last_loss,
        history=state.history,
    )


def reconstruction_loss(recon: torch.Tensor, x: torch.Tensor, mse_weight: float) -> torch.Tensor:
    """L1, plus `mse_weight` times the mean squared error when it is non-zero."""
    residual = recon - x
    loss = residual.abs().mean()
    if mse_weight:
        loss = loss + mse_weight * residual.square().mean()
    return loss


def _step_limit(opts: TrainOptions, state: TrainState) -> bool:
    return opts.max_steps is not None and state.step >= opts.max_steps


def learning_rate(opts: TrainOptions, step: int, progress: float) -> float:
    """Linear warm-up, then cosine decay over the wall-clock budget to 5% of the peak."""
    warm = min(1.0, (step + 1) / opts.warmup_steps)
    return opts.lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def init_weights(model: Tokenizer, path: Path) -> list[str]:
    """Load a model file's weights into `model` for fine-tuning; returns the tensors it lacked.

    The config must match, except that the model may have more residual blocks per conv stage
    (and another name): the file's blocks fill each stage from the front and the new ones keep
    their initialisation, which is the identity (a zero last layer), so a deeper model starts
    exactly as the file's. Tensors the file lacks (added since it was written) keep their
    initialisation too, and every tensor it has must fit.
    """
    metadata, _ = read_model_metadata(path)
    try:
        tensors = load_file(str(path))
        saved = TokenizerConfig.from_json(metadata.get("config", ""))
    except (SafetensorError, OSError, ValueError) as exc:
        raise InfotokError(f"{path}: not a safetensors model ({exc})") from None
    if not _grows(saved, model.config):
        raise InfotokError(f"{path}: its model config differs from the one being trained")
    # A light router head was fitted to the file's network; the network about to change makes
    # it stale, so it is left out (the run fits a new one at its end, see `_finalize`).
    try:
        tensors, _ = split_head(tensors, metadata, saved.dim)
    except ModelError as exc:
        raise InfotokError(f"{path}: {exc}") from None
    try:
        result = model.load_state_dict(
            {k: v.to(torch.float32) for k, v in tensors.items()}, strict=False
        )
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise InfotokError(f"{path}: weights do not fit ({first})") from None
    if result.unexpected_keys:
        raise InfotokError(f"{path}: unknown tensors {', '.join(result.unexpected_keys)}")
    return list(result.missing_keys)


def refuse_frozen_new(model: Tokenizer, new: Sequence[str]) -> None:
    """Refuse tensors new to the model (`init_weights`) in its frozen part (`--decoder-only`):
    a new block there would stay as it started, dead compute in every encode."""
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    if frozen.intersection(new):
        raise InfotokError("--decoder-only freezes the encoder: it cannot start with new blocks")


def _grows(saved: TokenizerConfig, config: TokenizerConfig) -> bool:
    """Whether `config` is `saved` or `saved` with more conv residual blocks per stage."""
    same = dataclasses.replace(saved, name=config.name, **{k: getattr(config, k) for k in GROWABLE})
    return same == config and all(getattr(config, k) >= getattr(saved, k) for k in GROWABLE)


@torch.no_grad()
def sample_keep_masks(
    model: Tokenizer,
    x: torch.Tensor,
    err_ema: float | None,
    amp: bool,
    spread_share: float,
    full_rate_share: float = 0.0,
) -> tuple[torch.Tensor, float]:
    """InfoTok's data-dependent sampler: per clip r = clip(b·L(x)/EMA(L), 1/16, 1); ⌈r·N⌉
    positions are kept as the `fixed` router keeps them (as `uniform` does for a `spread_share`
    of clips, so that baseline is measured with a model that has seen its masks). A
    `full_rate_share` of clips is kept whole."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        error = model.error_map(x).float()
    per_clip = error.flatten(1).mean(dim=1)
    mean = per_clip.mean().item()
    err_ema = mean if err_ema is None else 0.99 * err_ema + 0.01 * mean
    b = torch.tensor([random.choice(STAGE2_BUDGETS) for _ in range(x.shape[0])], device=x.device)
    rates = (b * per_clip / err_ema).clamp(MIN_RATE, 1.0)
    whole = torch.tensor([random.random() < full_rate_share for _ in range(len(x))])
    rates[whole.to(rates.device)] = 1.0
    routers = ["uniform" if random.random() < spread_share else "fixed" for _ in range(len(x))]
    return stage2_keep_masks(error, rates, routers), err_ema


def validation_files(files: list[Path], count: int) -> list[Path]:
    """The files a run holds out (at most `count`, always leaving one to train on): split by
    file, deterministically, every n-th of `files` (by name)."""
    n_val = min(count, max(len(files) - 1, 0))
    return files[:: max(len(files) // n_val, 1)][:n_val] if n_val else []


def validation_batch(val_clips: list[np.ndarray], frames: int, crop: int) -> torch.Tensor:
    """Fixed windows of the held-out files: `(N, 3, frames, crop, crop)` in [-1, 1].

    Every `frames`-frame span of each clip at four spatial places (the corners of a centred
    square twice the crop, clamped to the frame): 32 windows from four 32-frame clips, enough to
    resolve 0.1 dB between checkpoints where four centre windows swung by ±0.5 dB."""
    windows = []
    for clip in val_clips:
        t, h, w = clip.shape[:3]
        if t < frames or min(h, w) < crop:
            continue
        ys = sorted({min(max(h // 2 - crop + dy, 0), h - crop) for dy in (0, crop)})
        xs = sorted({min(max(w // 2 - crop + dx, 0), w - crop) for dx in (0, crop)})
        for t0 in range(0, t - frames + 1, frames):
            for y in ys:
                for x in xs:
                    windows.append(clip[t0 : t0 + frames, y : y + crop, x : x + crop])
    if not windows:
        return torch.empty(0, 3, frames, crop, crop)
    return torch.from_numpy(np.stack(windows)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


@torch.no_grad()
def validate(model: Tokenizer, batch: torch.Tensor) -> dict[str, float]:
    """PSNR at full rate and at rate 0.5 with error-selected positions."""
    if len(batch) == 0:
        return {}
    model.eval()
    size = tuple(batch.shape[2:])
    full_parts, half_parts = [], []
    for part in batch.split(8):  # bounded memory for many windows
        full = model.decode_codes(model.quantized_codes(part), None, size)  # type: ignore[arg-type]
        half_rate = torch.full((len(part),), 0.5, device=part.device)
        keep = stage2_keep_masks(pooled_error(part, full), half_rate, ["fixed"] * len(part))
        kept = model.quantized_codes(part, keep) * keep.unsqueeze(-1)
        full_parts.append(full)
        half_parts.append(model.decode_codes(kept, keep, size))  # type: ignore[arg-type]
    model.train()
    return {
        "psnr_full": psnr(torch.cat(full_parts), batch),
        "psnr_half": psnr(torch.cat(half_parts), batch),
    }


def _weight_average(opts: TrainOptions, model: Tokenizer) -> WeightAverage[Tokenizer] | None:
    return WeightAverage(model, opts.weight_average) if opts.weight_average else None


def _checkpoint(
    opts: TrainOptions,
    model: Tokenizer,
    average: WeightAverage[Tokenizer] | None,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    val_batch: torch.Tensor,
    console: Console,
    rank: int,
) -> None:
    if rank != 0:
        return
    val = validate(model if average is None else average.model, val_batch)
    state.history.append({"step": state.step, "minutes": state.elapsed / 60, **val})
    with atomic_file(opts.checkpoint_path) as tmp:
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "average": None if average is None else average.state_dict(),
                "state": dataclasses.asdict(state),
                "config": opts.config.to_json(),
                "decoder_only": opts.decoder_only,
            },
            tmp,
        )
    console.log(
        f"checkpoint at step {state.step}: " + ", ".join(f"{k} {v:.2f}" for k, v in val.items())
    )


def _finalize(
    opts: TrainOptions,
    model: Tokenizer,
    clips: list[np.ndarray],
    files: list[Path],
    state: TrainState,
    world: int,
    device: torch.device,
    console: Console,
) -> None:
    """Fit the token coders' tables (`coder_fit`) and the `light` router's head on training
    clips (both read the final network) and write the model file. Everything this needs is
    imported with the module, at the start of a run: an edit to the package during a long run
    must not break it after its last checkpoint (run 4 did)."""
    tables_json = fit_coder(model, clips, device)
    light_head = fit_light_router(model, clips, device)
    console.log(f"fitted the light router's head: {light_head[1].to_json()}")
    recipe = {
        "options": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in dataclasses.asdict(opts).items()
            if k not in ("data", "out", "config", "force")
        },
        "bf16": use_bf16(opts.bf16, device),
        "steps": state.step,
        "minutes": round(state.elapsed / 60, 1),
        "processes": world,
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "history": state.history,
        "data_files": [f.name for f in files],
    }
    save_model(
        model,
        opts.out,
        tables_json=tables_json,
        light_head=light_head,
        extra={"recipe": recipe, "data_manifest_sha256": manifest_sha256(files)},
    )
    console.log(f"wrote {opts.out}")
