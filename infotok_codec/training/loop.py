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
import math
import os
import platform
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from pytorch_msssim import ms_ssim
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from infotok_codec.errors import InfotokError
from infotok_codec.model import WeightAverage
from infotok_codec.model.precision import use_bf16
from infotok_codec.model.tokenizer import Tokenizer, pooled_error, save_model
from infotok_codec.outputs import atomic_file, check_output
from infotok_codec.routing import fit_light_router
from infotok_codec.training.coder_fit import fit_coder
from infotok_codec.training.data import (
    ClipWindows,
    load_clip,
    manifest_sha256,
    validation_batch,
    validation_files,
)
from infotok_codec.training.options import TrainOptions, TrainReport, TrainState
from infotok_codec.training.sampling import sample_keep_masks, stage2_keep_masks
from infotok_codec.training.weights import init_weights, refuse_frozen_new


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two tensors in [-1, 1], one MSE over everything."""
    mse = F.mse_loss(a.clamp(-1, 1), b).item() / 4.0
    return 10 * math.log10(1.0 / max(mse, 1e-10))


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
    console = Console(stderr=True, quiet=rank != 0, markup=False)  # paths print as they are
    torch.manual_seed(opts.seed + rank)
    random.seed(opts.seed + rank)

    check_output(opts.out, opts.force or opts.resume)
    from infotok_codec import media  # PyAV: see `load_clip`

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
    files = media.find_videos(opts.data)
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
        TextColumn("train", style="bold", markup=False),
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
                    loss = reconstruction_loss(
                        recon.float(), x, opts.mse_weight, opts.msssim_weight
                    )
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


def reconstruction_loss(
    recon: torch.Tensor, x: torch.Tensor, mse_weight: float, msssim_weight: float = 0.0
) -> torch.Tensor:
    """L1, plus `mse_weight` times the mean squared error and `msssim_weight` times
    1 − MS-SSIM of the frames, each when its weight is non-zero. Clips are `(B, 3, T, H, W)`
    in [-1, 1]."""
    residual = recon - x
    loss = residual.abs().mean()
    if mse_weight:
        loss = loss + mse_weight * residual.square().mean()
    if msssim_weight:
        loss = loss + msssim_weight * (1 - frame_msssim(recon, x))
    return loss


def msssim_window(side: int) -> int:
    """The widest odd MS-SSIM window, at most the usual 11 taps, whose five scales fit a frame
    of this short side (pytorch-msssim needs side > (window − 1) · 2^4), or 0 if none does."""
    fitting = [w for w in (11, 9, 7, 5, 3) if side > (w - 1) * 16]
    return fitting[0] if fitting else 0


def frame_msssim(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean MS-SSIM over the frames of two clips `(B, 3, T, H, W)` in [-1, 1], differentiable
    in `recon`: the five-scale score the bench reports, with a narrower window on crops too
    small for 11 taps. In float32 under any autocast: SSIM's variances are differences of
    nearly equal means, which bf16 convolutions would leave mostly rounding."""
    frames = [clip.float().transpose(1, 2).flatten(0, 1).add(1).mul(0.5) for clip in (recon, x)]
    window = msssim_window(min(frames[1].shape[-2:]))
    with torch.autocast(recon.device.type, enabled=False):
        return ms_ssim(frames[0], frames[1], data_range=1.0, win_size=window)


def _step_limit(opts: TrainOptions, state: TrainState) -> bool:
    return opts.max_steps is not None and state.step >= opts.max_steps


def learning_rate(opts: TrainOptions, step: int, progress: float) -> float:
    """Linear warm-up, then cosine decay over the wall-clock budget to 5% of the peak."""
    warm = min(1.0, (step + 1) / opts.warmup_steps)
    return opts.lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


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
    light_head = fit_light_router(
        model, clips, device, windows=opts.router_windows, steps=opts.router_steps
    )
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
