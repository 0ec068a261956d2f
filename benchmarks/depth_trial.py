"""The depth trial (issue 12, "Range: depth, gated"): can more tokens per latent position buy
quality? Trained from a model file, validated on `train`'s held-out windows at every depth.

Each latent position carries up to `--depth` tokens. Token 1 is the model's own (its projection
to codes, FSQ); token k > 1 is an FSQ index from its own projection of the same compressor output,
and the de-compressor's input is the sum of the first d tokens' projections back ("nested"). The
new projections back start at zero, so every depth starts as the model the trial extends, and
the new projections learn at their own, higher rate (`--new-lr`). Each
training clip draws its depth uniformly from 1..D, so every prefix is trained; the loss is
`train`'s (L1 + 10 · MSE), full rate (the question is what depth buys, not masking).

The gate (the issue): build depth into the codec only if depth D leads depth 1 by at least 1 dB
on validation and is still rising. The trial code stays out of the package until then.

Run: ``python benchmarks/depth_trial.py ../shared/data/train --init
infotok_codec/models/infotok-s.safetensors.zst --out runs/depth --minutes 150 --threads 1``;
``--resume`` continues `OUT/trial.ckpt.pt`. Writes `OUT/history.json` (one row per check) and
`OUT/history.png`.
This script runs on the CPU; `gpu_campaign.py train --depth` runs the same trial on a GPU with
the classes and functions here.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from infotok_codec.model import Tokenizer, TokenizerConfig, WeightAverage
from infotok_codec.model.precision import float32
from infotok_codec.model.tokenizer import read_model_metadata
from infotok_codec.outputs import atomic_file
from infotok_codec.training import (
    ClipWindows,
    TrainOptions,
    init_weights,
    learning_rate,
    load_clip,
    psnr,
    reconstruction_loss,
    validation_batch,
    validation_files,
)


class DepthTokenizer(nn.Module):
    """A tokenizer with `depth` tokens per latent position, nested: the decoder sums the first
    d tokens' projections back."""

    def __init__(self, config: TokenizerConfig, depth: int) -> None:
        super().__init__()
        self.base = Tokenizer(config)
        dim, code_dim = config.dim, self.base.fsq.dim
        self.to_codes = nn.ModuleList(nn.Linear(dim, code_dim) for _ in range(depth - 1))
        self.from_codes = nn.ModuleList(nn.Linear(code_dim, dim) for _ in range(depth - 1))
        for layer in self.from_codes:  # every depth starts as the base model
            assert isinstance(layer, nn.Linear)
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def depth(self) -> int:
        return len(self.to_codes) + 1

    def codes(self, video: torch.Tensor) -> list[torch.Tensor]:
        """Full-rate codes of every depth, each `(B, T', h, w, len(levels))`, rounded in float32
        as `Tokenizer.codes_from_features` rounds them."""
        base = self.base
        features = base.compressor(base.features(video)).permute(0, 2, 3, 4, 1).float()
        with float32(video.device):
            return [base.fsq(base.to_code(features))] + [
                base.fsq(project(features)) for project in self.to_codes
            ]

    def decode(
        self, codes: list[torch.Tensor], depths: torch.Tensor, size: tuple[int, int, int]
    ) -> torch.Tensor:
        """Video from the first `depths[b]` tokens of each clip b."""
        base = self.base
        x = base.from_code(codes[0])
        for k, (code, back) in enumerate(zip(codes[1:], self.from_codes, strict=True), start=2):
            use = (depths >= k).to(device=x.device, dtype=x.dtype)[:, None, None, None, None]
            x = x + use * back(code)
        y = base.decoder(base.decompressor(x.permute(0, 4, 1, 2, 3)))
        t, h, w = size
        return y[:, :, :t, :h, :w]

    def forward(self, video: torch.Tensor, depths: torch.Tensor) -> torch.Tensor:
        return self.decode(self.codes(video), depths, tuple(video.shape[2:]))  # type: ignore[arg-type]


def param_groups(model: DepthTokenizer, lr: float, new_lr: float) -> list[dict]:
    """AdamW groups: the base network at peak `lr`, the new projections at `new_lr` (each
    group's "peak"; the schedule scales it)."""
    new = [*model.to_codes.parameters(), *model.from_codes.parameters()]
    new_ids = {id(p) for p in new}
    old = [p for p in model.parameters() if id(p) not in new_ids and p.requires_grad]
    return [{"params": old, "peak": lr}, {"params": new, "peak": new_lr}]


@torch.no_grad()
def validate(model: DepthTokenizer, batch: torch.Tensor, bf16: bool) -> dict[str, float]:
    """PSNR over all held-out windows at each depth 1..D (full rate)."""
    model.eval()
    size = tuple(batch.shape[2:])
    recons: dict[int, list[torch.Tensor]] = {d: [] for d in range(1, model.depth + 1)}
    for part in batch.split(8):
        with torch.autocast(part.device.type, dtype=torch.bfloat16, enabled=bf16):
            codes = model.codes(part)
            for d in recons:
                depths = torch.full((len(part),), d, device=part.device)
                recons[d].append(model.decode(codes, depths, size).float())  # type: ignore[arg-type]
    model.train()
    return {f"depth{d}": psnr(torch.cat(parts), batch) for d, parts in recons.items()}


def plot_history(history: list[dict], path: Path) -> None:
    """Validation PSNR against steps, a line per depth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    depths = sorted(k for k in history[0] if k.startswith("depth"))
    for key in depths:
        ax.plot([r["step"] for r in history], [r[key] for r in history], marker="o", label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("validation PSNR-RGB (dB), full rate")
    ax.set_title("depth trial: tokens per latent position")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--init", type=Path, required=True, help="the model file to extend")
    parser.add_argument("--out", type=Path, required=True, help="folder for checkpoint, history")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--minutes", type=float, default=150.0)
    parser.add_argument("--lr", type=float, default=2e-4, help="peak rate of the base network")
    parser.add_argument("--new-lr", type=float, default=1e-3, help="peak rate of new projections")
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--check-minutes", type=float, default=15.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    if args.depth < 2:
        parser.error(f"--depth {args.depth}: the trial needs at least 2")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    random.seed(0)
    bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())

    metadata, _ = read_model_metadata(args.init)
    model = DepthTokenizer(TokenizerConfig.from_json(metadata["config"]), args.depth)
    init_weights(model.base, args.init)
    optimizer = torch.optim.AdamW(
        param_groups(model, args.lr, args.new_lr), weight_decay=0.01, betas=(0.9, 0.99)
    )
    average = WeightAverage(model, 0.99)
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt_path, history_path = args.out / "trial.ckpt.pt", args.out / "history.json"
    step, elapsed, history = 0, 0.0, []
    if args.resume:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["model"])
        average.load_state_dict(ckpt["average"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step, elapsed, history = ckpt["step"], ckpt["elapsed"], ckpt["history"]

    from infotok_codec.media import find_videos  # PyAV: not needed by gpu_campaign's import

    files = find_videos([Path(args.data)])
    held_out = set(validation_files(files, TrainOptions.val_files))
    clips = [load_clip(f, 256, 256) for f in files if f not in held_out]
    val_batch = validation_batch([load_clip(f, 256, 32) for f in sorted(held_out)], 16, 128)
    dataset = ClipWindows(clips, 16, args.crop, length=100_000 * args.batch)

    def check() -> None:
        row = {"step": step, "minutes": round(elapsed / 60, 1)}
        row.update({k: round(v, 3) for k, v in validate(average.model, val_batch, bf16).items()})
        history.append(row)
        print(json.dumps(row), flush=True)
        with atomic_file(ckpt_path) as tmp:
            torch.save(
                {
                    "model": model.state_dict(),
                    "average": average.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "step": step,
                    "elapsed": elapsed,
                    "history": history,
                    "args": {k: str(v) for k, v in vars(args).items()},
                },
                tmp,
            )
        with atomic_file(history_path) as tmp:
            tmp.write_text(json.dumps(history, indent=1) + "\n")
        plot_history(history, history_path.with_suffix(".png"))

    if not history:
        check()
    budget = args.minutes * 60
    # `infotok train`'s schedule (warm-up, cosine to 5%), scaling each group's own peak.
    schedule = TrainOptions(
        data=[], out=args.out, minutes=args.minutes, lr=args.lr, warmup_steps=args.warmup_steps
    )
    start, last_check = time.time() - elapsed, time.time()
    dataset.epoch_seed = step  # a resumed run draws new windows
    for batch in DataLoader(dataset, batch_size=args.batch):
        elapsed = time.time() - start
        if elapsed >= budget:
            break
        scale = learning_rate(schedule, step, elapsed / budget) / schedule.lr
        for group in optimizer.param_groups:
            group["lr"] = group["peak"] * scale
        depths = torch.randint(1, args.depth + 1, (len(batch),))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = reconstruction_loss(model(batch, depths).float(), batch, 10.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        average.update(model)
        step += 1
        if step % 100 == 0:
            print(json.dumps({"step": step, "loss": round(loss.item(), 5)}), flush=True)
        if time.time() - last_check > args.check_minutes * 60:
            elapsed = time.time() - start
            check()
            last_check = time.time()
    elapsed = time.time() - start
    check()


if __name__ == "__main__":
    main()
