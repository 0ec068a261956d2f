"""The campaign's GPU run (issue 12): a lent GPU's minutes spent on the model, prepared here.

Three steps, on two machines:

- ``prepare`` (here): the training files, less the four that `infotok train` holds out, decoded
  as training decodes them (first `--frames` frames, short side 256) and written as x264 mp4s
  into a git-ignored folder small enough to travel with the working tree (64 MiB in all with the
  tree's ~28 MB and the wheels), and the wheels the device image lacks (constriction, zstandard;
  it has torch, numpy, numba, safetensors, rich and OpenCV) into `.whl/`. PyAV is not among
  them (36 MB): the clips are read back there with OpenCV, and training imports no PyAV.
- ``train`` (there): `infotok train`'s stage-2 recipe (InfoTok's rate sampler over the codec's
  own masks, a quarter of the clips whole, L1 + 10·MSE, a moving average of the weights, cosine
  decay over the wall-clock budget) from a model file, under bf16 autocast, optionally grown
  (`--config`: new conv residual blocks start as the identity, so the run starts as the file)
  or with the encoding half frozen (`--decoder-only`); with `--depth D`, the depth trial instead
  (`depth_trial.py`: D nested tokens per position, full rate, random depth per clip). It
  validates the weights' average before and after on `infotok train`'s 32 held-out windows
  (read from their x264 copies, which score about 0.2 dB above the originals: compare runs with
  each other, not with MODEL.md's figures), and writes the averaged weights to `--out` as fp16
  safetensors in parts of at most 15 MB (the device returns files of up to 16 MiB) and the
  history.
- ``assemble`` (here): the parts joined into a model file with the init file's coder tables
  (and no `light` head: it belongs to the old network). Judge it with
  `benchmarks/tokenizer_quality.py --model`; before shipping, fit its `light` head
  (`infotok fit-router`) and, unless the tokens are unchanged (`--decoder-only`), its coder
  tables (`infotok fit-coder`).

On the device: ``MINUTES=5.5 bash benchmarks/gpu_session.sh train`` (`carry`: gpu_data and
.whl), which installs the wheels and runs ``train gpu_data --init
infotok_codec/models/infotok-s.safetensors.zst --minutes $MINUTES --workers 8 --out $OUT/run``.

``prepare-checks`` (here) makes what `gpu_session.sh checks` carries, in `gpu_checks/`.

Here: ``python benchmarks/gpu_campaign.py prepare ../shared/data/train`` before, and
``python benchmarks/gpu_campaign.py assemble /work/.device/N/run --init
infotok_codec/models/infotok-s.safetensors.zst --out runs/gpu/model.safetensors`` after.
"""

from __future__ import annotations

import argparse
import json
import lzma
import random
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from depth_trial import DepthTokenizer, param_groups
from depth_trial import validate as depth_validate
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from infotok_codec.errors import InfotokError
from infotok_codec.model import Tokenizer, TokenizerConfig, WeightAverage, use_bf16
from infotok_codec.model.tokenizer import read_model_metadata, save_model
from infotok_codec.outputs import check_output
from infotok_codec.training import (
    ClipWindows,
    TrainOptions,
    init_weights,
    learning_rate,
    load_clip,
    reconstruction_loss,
    refuse_frozen_new,
    sample_keep_masks,
    validate,
    validation_batch,
    validation_files,
)

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ("constriction==0.5.0", "zstandard==0.25.0", "pytorch-msssim==1.0.0")
PART_BYTES = 15_000_000  # the device returns files of at most 16 MiB
TRAVEL_BYTES = 32_000_000  # data budget beside the tree (~28 MB) and the wheels (~6 MB)


# -- here, before ------------------------------------------------------------------------
def prepare(args: argparse.Namespace) -> None:
    """Training clips as small mp4s, and the wheels the device image lacks."""
    from infotok_codec.media import find_videos

    if args.out.exists() and any(args.out.iterdir()):
        sys.exit(f"error: {args.out} is not empty (train reads every mp4 in it)")
    files = find_videos([args.data])
    held_out = set(validation_files(files, TrainOptions.val_files))
    (args.out / "validation").mkdir(parents=True, exist_ok=True)
    total = 0
    for path in files:
        # The held-out files' first 32 frames, as `infotok train` validates on them.
        frames = load_clip(path, 256, 32 if path in held_out else args.frames)
        dst = args.out / ("validation" if path in held_out else "") / f"{path.stem}.mp4"
        _write_mp4(frames, dst, args.crf)
        total += dst.stat().st_size
    print(f"{len(files)} clips ({len(held_out)} held out), {total / 1e6:.1f} MB in {args.out}")
    if total > TRAVEL_BYTES:
        sys.exit(f"error: {total / 1e6:.1f} MB is over {TRAVEL_BYTES / 1e6:.0f}: lower --frames")
    _download_wheels(WHEELS, args.wheels)


def prepare_checks(args: argparse.Namespace) -> None:
    """What `gpu_session.sh checks` carries: PyAV unpacked and recompressed (its wheel is 36 MB;
    the tree, the model and PyAV must fit 64 MiB together), the pure-Python wheels the image's
    versions may lack, and the dev clips' first 64 frames (the device has no ../shared)."""
    import av

    if args.out.exists():
        sys.exit(f"error: {args.out} exists: remove it first")
    with tempfile.TemporaryDirectory() as tmp:
        _download_wheels([f"av=={av.__version__}"], Path(tmp))
        (wheel,) = Path(tmp).glob("av-*.whl")
        unpacked = Path(tmp) / "av"
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(unpacked)
        args.out.mkdir(parents=True)
        packed = args.out / "av.tar.xz"
        with (
            lzma.open(packed, "wb", preset=9 | lzma.PRESET_EXTREME) as xz,
            tarfile.open(fileobj=xz, mode="w") as tar,
        ):
            for item in sorted(unpacked.iterdir()):
                tar.add(item, arcname=item.name)
    # Not typer: the image's own serves, and ours (0.29) imports pydantic, which it lacks.
    _download_wheels(["click", "rich", "pytorch-msssim"], args.out / "wheels")
    (args.out / "dev").mkdir()
    for clip in sorted(args.dev.iterdir()):
        _write_mp4(load_clip(clip, 256, 64), args.out / "dev" / clip.name, 20)
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"{size / 1e6:.1f} MB in {args.out}")


def _download_wheels(names: Sequence[str], dest: Path) -> None:
    """Wheels for the device's Python (CPython 3.12, x86-64 Linux), without their dependencies."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        + ["--python-version", "3.12", "--implementation", "cp", "-d", str(dest)]
        + [f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64")]
        + ["--platform=manylinux2014_x86_64", *names],
        check=True,
    )


def _write_mp4(frames: np.ndarray, path: Path, crf: int) -> None:
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25, options={"crf": str(crf), "preset": "slow"})
        stream.width, stream.height = frames.shape[2] // 2 * 2, frames.shape[1] // 2 * 2
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            crop = np.ascontiguousarray(frame[: stream.height, : stream.width])
            out.mux(stream.encode(av.VideoFrame.from_ndarray(crop, format="rgb24")))
        out.mux(stream.encode())


# -- there -------------------------------------------------------------------------------
def read_clip(path: Path) -> np.ndarray:
    """`(T, H, W, 3)` uint8 RGB: OpenCV where it is (the device image), else PyAV."""
    try:
        import cv2
    except ImportError:
        import av

        with av.open(str(path)) as container:
            return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    capture, frames = cv2.VideoCapture(str(path)), []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    if not frames:
        sys.exit(f"error: {path}: OpenCV read no frames")
    return np.stack(frames)


def train(args: argparse.Namespace) -> None:
    """The stage-2 recipe (or, with `--depth`, the depth trial's) on the prepared clips for
    `--minutes`; averaged weights and validation to `--out`."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    random.seed(0)
    clips = [read_clip(p) for p in sorted(args.data.glob("*.mp4"))]
    held_out = [read_clip(p) for p in sorted((args.data / "validation").glob("*.mp4"))]
    val_batch = validation_batch(held_out, 16, 128).to(device)
    print(
        f"{len(clips)} clips, {sum(len(c) for c in clips)} frames, {len(val_batch)} validation "
        f"windows on {device}",
        flush=True,
    )
    metadata, _ = read_model_metadata(args.init)
    config = TokenizerConfig.from_json(metadata["config"])
    if args.config:
        config = TokenizerConfig.override({**json.loads(metadata["config"]), **args.config})
    depth = DepthTokenizer(config, args.depth) if args.depth > 1 else None
    model = (depth.base if depth is not None else Tokenizer(config)).to(device)
    new = init_weights(model, args.init)
    net: torch.nn.Module = (depth if depth is not None else model).to(device)
    print(f"from {args.init}; new tensors: {len(new)}; depth {args.depth}", flush=True)
    if args.decoder_only:
        for p in model.encoding_parameters():
            p.requires_grad_(False)
        refuse_frozen_new(model, new)
    opts = TrainOptions(  # the recipe's settings, as `infotok train` has them by default
        data=[],
        out=args.out,
        minutes=args.minutes,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        full_rate_share=0.25,
        msssim_weight=args.msssim_weight,
    )
    groups = (
        param_groups(depth, args.lr, args.new_lr)
        if depth is not None
        else [{"params": [p for p in net.parameters() if p.requires_grad], "peak": args.lr}]
    )
    optimizer = torch.optim.AdamW(groups, weight_decay=0.01, betas=(0.9, 0.99))
    average = WeightAverage(net, args.weight_average)
    amp = use_bf16(None, device)

    def scores() -> dict[str, float]:
        """Validation PSNRs of the average: full rate and rate 0.5, or at every depth."""
        if depth is None:
            return validate(average.model, val_batch)  # type: ignore[arg-type]
        return depth_validate(average.model, val_batch, amp)  # type: ignore[arg-type]

    history = [{"step": 0, "minutes": 0.0, **scores()}]
    print(json.dumps(history[-1]), flush=True)
    dataset = ClipWindows(clips, 16, args.crop, length=1_000_000 * args.batch)
    loader = DataLoader(dataset, batch_size=args.batch, num_workers=args.workers)
    budget, started, err_ema, steps = args.minutes * 60, time.time(), None, 0
    for step, batch in enumerate(loader):
        elapsed = time.time() - started
        if elapsed >= budget:
            break
        x = batch.to(device, non_blocking=True)
        scale = learning_rate(opts, step, elapsed / budget) / opts.lr
        for group in optimizer.param_groups:
            group["lr"] = group["peak"] * scale
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            if depth is None:
                keep, err_ema = sample_keep_masks(
                    model, x, err_ema, amp, opts.spread_share, opts.full_rate_share
                )
                recon = model(x, keep, encoder_grad=not args.decoder_only)
            else:  # the depth trial: full rate, each clip its own depth
                recon = depth(x, torch.randint(1, args.depth + 1, (len(x),), device=device))
            loss = reconstruction_loss(recon.float(), x, opts.mse_weight, opts.msssim_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        average.update(net)
        steps = step + 1
        if steps % 200 == 0:
            print(json.dumps({"step": steps, "loss": round(loss.item(), 5)}), flush=True)
    minutes = round((time.time() - started) / 60, 2)
    history.append({"step": steps, "minutes": minutes, **scores()})
    print(json.dumps(history[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    parts = write_parts(average.model, config, args.out)
    summary = {
        "init": str(args.init),
        "steps": steps,
        "minutes": minutes,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "config": config.to_json(),
        "parts": parts,
    }
    # Written last: `assemble` reads it first, so a run cut short is refused whole.
    (args.out / "history.json").write_text(json.dumps({**summary, "history": history}) + "\n")


def write_parts(model: torch.nn.Module, config: TokenizerConfig, out: Path) -> dict[str, int]:
    """fp16 weights in safetensors files of at most `PART_BYTES`, with the config; each part's
    name and tensor count."""
    parts: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in model.state_dict().items():
        half = tensor.detach().to(torch.float16).cpu().contiguous()
        if size + half.nbytes > PART_BYTES and parts[-1]:
            parts.append({})
            size = 0
        parts[-1][name] = half
        size += half.nbytes
    for i, part in enumerate(parts):
        save_file(part, str(out / f"weights-{i}.safetensors"), {"config": config.to_json()})
    return {f"weights-{i}.safetensors": len(part) for i, part in enumerate(parts)}


# -- here, after -------------------------------------------------------------------------
def assemble(args: argparse.Namespace) -> None:
    """The parts into a model file with the init file's coder tables."""
    check_output(args.out, args.force)
    try:
        history = json.loads((args.parts / "history.json").read_text())
        if history["options"]["depth"] > 1:
            sys.exit("error: these are the depth trial's weights: its figures are in history.json")
        tensors: dict[str, torch.Tensor] = {}
        for name, count in history["parts"].items():
            part = load_file(str(args.parts / name))
            if len(part) != count:
                sys.exit(f"error: {name} holds {len(part)} tensors, history.json says {count}")
            tensors.update(part)
        model = Tokenizer(TokenizerConfig.from_json(history["config"]))
        model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)
    except (OSError, KeyError, ValueError, RuntimeError, SafetensorError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        sys.exit(f"error: {args.parts}: not a whole gpu_campaign run ({first})")
    metadata, _ = read_model_metadata(args.init)
    recipe = {"gpu_campaign": {k: v for k, v in history.items() if k != "history"}}
    recipe["gpu_campaign"]["history"] = history["history"]
    extra = {"recipe": recipe, "init_recipe": metadata.get("recipe", "")}
    if "data_manifest_sha256" in metadata:
        extra["data_manifest_sha256"] = metadata["data_manifest_sha256"]
    save_model(model, args.out, tables_json=metadata["entropy_tables"], extra=extra)
    print(f"wrote {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare", help="here: training clips and wheels to carry")
    p.add_argument("data", type=Path)
    p.add_argument("--out", type=Path, default=ROOT / "gpu_data")
    p.add_argument("--wheels", type=Path, default=ROOT / ".whl")
    p.add_argument("--frames", type=int, default=200, help="per clip (200: 24 MB at CRF 18)")
    p.add_argument("--crf", type=int, default=18)
    p = sub.add_parser("prepare-checks", help="here: what gpu_session.sh checks carries")
    p.add_argument("--dev", type=Path, default=ROOT.parent / "shared" / "data" / "dev")
    p.add_argument("--out", type=Path, default=ROOT / "gpu_checks")
    p = sub.add_parser("train", help="there: the recipe for --minutes")
    p.add_argument("data", type=Path)
    p.add_argument("--init", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--minutes", type=float, default=8.0)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--weight-average", type=float, default=0.995)
    # Items are float32 (50 MB a batch of 16): a few workers, since /dev/shm may be small there.
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--decoder-only", action="store_true")
    p.add_argument("--msssim-weight", type=float, default=0.0, help="as `infotok train`'s")
    p.add_argument("--depth", type=int, default=1, help="> 1: the depth trial (depth_trial.py)")
    p.add_argument("--new-lr", type=float, default=1e-3, help="--depth: new projections' rate")
    p.add_argument("--config", type=json.loads, default=None, help="e.g. '{\"dec_blocks1\": 5}'")
    p = sub.add_parser("assemble", help="here: the parts into a model file")
    p.add_argument("parts", type=Path)
    p.add_argument("--init", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--force", action="store_true", help="replace --out")
    args = parser.parse_args()
    try:
        step = {
            "prepare": prepare,
            "prepare-checks": prepare_checks,
            "train": train,
            "assemble": assemble,
        }[args.step]
        step(args)
    except InfotokError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
