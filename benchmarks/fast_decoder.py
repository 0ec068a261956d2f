r"""A slimmer decoding half for the same tokens (issue 14: decode speed), started from the
shipped one by keeping some of its blocks.

The decoder network is the whole cost of a decode, and at 1080p the roofline in
benchmarks/README.md ("Speed at 1080p") puts the target out of reach of today's decoding half on
two cores. Residual blocks can be dropped and the rest fine-tuned: a decoder that keeps the
encoding half untouched decodes the very same streams' tokens.

- `shrink` writes a model file whose decoding half keeps only the listed blocks (the encoding
  half, coder tables and light head are copied), for `infotok train --decoder-only --init`.
- `finish` turns trained weights (a run's checkpoint, whose weight average it takes, or a
  model file) into a packed *decoder file* for the token model's streams: its tensors, the
  token model's coder tables, and the token model's sha256 under `decodes_streams_of`. The
  encoding half must be the token model's, tensor for tensor, or the tokens would differ.
- `compare` encodes each dev clip with the token model (the bench's protocol: first 64 frames,
  256×256, `elbo`) at a few budgets and decodes every stream with both, timing the decodes
  (whole `decode_file` calls, the two decoders in turn): PSNR-RGB per clip (and any of the
  bench's other metrics, `--metrics`) and frames/s, JSON and PNG. Any decoder file for the
  token model's streams can be compared, not only a slimmer one.

    python benchmarks/fast_decoder.py shrink --out runs/fast/init.safetensors \
        --decompressor 0 --stage2 0,1,8 --stage1 0,1,2
    infotok train ../shared/data/train --out runs/fast/fast.safetensors \
        --init runs/fast/init.safetensors --decoder-only \
        --config '{"name": "infotok-s-fast", "dec_depth": 1, "dec_blocks2": 3}' \
        --stage2-fraction 1.0 --full-rate-share 0.25 --lr 3e-4 --warmup-steps 30 \
        --minutes 120 --threads 2 --crop 128 --batch 2 --weight-average 0.99
    python benchmarks/fast_decoder.py finish runs/fast/fast.safetensors.ckpt.pt \
        --out infotok_codec/models/infotok-s-fast.safetensors.zst
    python benchmarks/fast_decoder.py compare --threads 2 \
        --out benchmarks/results/fast_decoder/compare.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from infotok_codec.errors import InfotokError
from infotok_codec.model import load_model, use_bf16
from infotok_codec.model.tokenizer import (
    FAST_DECODER_PATH,
    Tokenizer,
    TokenizerConfig,
    pack_model,
    read_model_file,
    save_decoder_file,
    write_safetensors,
)
from infotok_codec.outputs import check_output

ROOT = Path(__file__).resolve().parents[1]
PARTS = {  # tensor prefix → (config field, option)
    "decompressor.blocks.": ("dec_depth", "decompressor"),
    "decoder.stage2.": ("dec_blocks2", "stage2"),
    "decoder.stage1.": ("dec_blocks1", "stage1"),
}


def shrink(src: Path | None, out: Path, keep: dict[str, list[int]], name: str) -> TokenizerConfig:
    """Write `src` (the shipped model when None) to `out` keeping, per part, the listed blocks
    renumbered from 0 in the given order; returns the new config."""
    tensors, metadata, _ = read_model_file(src)
    config = json.loads(metadata["config"])
    for field, option in PARTS.values():
        blocks = keep[option]
        if not blocks or len(set(blocks)) < len(blocks) or max(blocks) >= config[field]:
            raise SystemExit(f"error: --{option}: distinct blocks of the model's {config[field]}")
        config[field] = len(blocks)
    kept: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        prefix = next((p for p in PARTS if key.startswith(p)), None)
        if prefix is None:
            kept[key] = value
            continue
        block, rest = key[len(prefix) :].split(".", 1)
        blocks = keep[PARTS[prefix][1]]
        if int(block) in blocks:
            kept[f"{prefix}{blocks.index(int(block))}.{rest}"] = value
    config["name"] = name
    new = TokenizerConfig.from_json(json.dumps(config))
    metadata = {**metadata, "config": new.to_json()}
    metadata.pop("recipe", None)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(out, kept, metadata)
    return new


def finish(trained: Path, token_model: Path | None, out: Path, force: bool) -> None:
    """Write the decoder file of trained weights, a run's checkpoint (`.pt`: its weight
    average) or a model file (`gpu_campaign.py assemble`'s), for `token_model`'s streams,
    packed."""
    check_output(out, force)  # before the work, not after it
    if trained.suffix == ".pt":
        ckpt = torch.load(trained, map_location="cpu", weights_only=False)
        model = Tokenizer(TokenizerConfig.from_json(ckpt["config"]))
        model.load_state_dict(ckpt["average"] or ckpt["model"])
        state = ckpt["state"]
        recipe = {
            "steps": state["step"],
            "minutes": round(state["elapsed"] / 60, 1),
            "history": state["history"],
        }
    else:
        loaded = load_model(trained)
        model, recipe = loaded.tokenizer, json.loads(loaded.metadata.get("recipe", "{}"))
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "decoder.safetensors"
        save_decoder_file(model, plain, token_model, extra={"recipe": recipe})
        pack_model(plain, out, force=force)


def compare(
    decoder: Path,
    token_model: Path | None,
    dev: Path,
    budgets: list[float],
    frames: int,
    metrics: tuple[str, ...] = ("psnr",),
    lpips_every: int = 1,
) -> dict[str, Any]:
    """Each dev clip encoded with `token_model` and decoded with it ("full") and with `decoder`
    ("fast", whatever the decoder under test is), scored by `metrics` (the bench's names)."""
    from infotok_codec.bench import BenchSettings
    from infotok_codec.bench.runner import prepare_source
    from infotok_codec.codec import decode_file, encode_file
    from infotok_codec.media import find_videos, read_frames
    from infotok_codec.metrics import Scorer, check_metrics

    check_metrics(metrics)
    models = {"full": load_model(token_model), "fast": load_model(decoder)}
    settings = BenchSettings(budgets=tuple(budgets), routers=("elbo",), codecs=(), frames=frames)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for clip in find_videos([dev]):
            reference, source = prepare_source(clip, settings, work)
            score = Scorer(reference, metrics, lpips_every)
            for budget in budgets:
                stream = work / "s.itok"
                enc = encode_file(source, stream, budget=budget, model=models["full"], force=True)
                row: dict[str, Any] = {"clip": clip.name, "budget": budget, "bytes": enc.bytes}
                row["bpp"] = 8 * enc.bytes / reference[..., 0].size
                row["frames"] = len(reference)
                for name, model in models.items():
                    out = work / f"{name}.mkv"
                    result = decode_file(stream, out, model=model, force=True)
                    decoded = np.concatenate(list(read_frames(out, 64)))
                    for metric, value in score(decoded).items():
                        if metric in metrics:
                            row[f"{metric}_{name}"] = round(value, 4 if metric == "psnr" else 5)
                    row[f"decode_s_{name}"] = round(result.seconds, 3)
                print(json.dumps(row), flush=True)
                rows.append(row)
    summary: dict[str, Any] = {}
    for budget in budgets:
        at = [r for r in rows if r["budget"] == budget]
        summary[str(budget)] = _deltas(at, "psnr")  # the keys earlier reports have
        for metric in metrics:
            if metric != "psnr" and all(f"{metric}_full" in r for r in at):
                summary[str(budget)][metric] = _deltas(at, metric)
    for name in models:  # frames/s over every decode, whole calls
        seconds = sum(r[f"decode_s_{name}"] for r in rows)
        summary[f"decode_fps_{name}"] = round(sum(r["frames"] for r in rows) / seconds, 3)
    summary["decode_time_fast_over_full"] = round(
        summary["decode_fps_full"] / summary["decode_fps_fast"], 3
    )
    return {
        "command": "python " + shlex.join(sys.argv),
        "decoder": decoder.name,
        "decoder_sha256": models["fast"].sha256.hex(),
        "token_model_sha256": models["full"].sha256.hex(),
        "frames": frames,
        "size": settings.size,
        "threads": torch.get_num_threads(),
        "precision": "bf16" if use_bf16(None, torch.device("cpu")) else "fp32",
        "metrics": list(metrics),
        "lpips_every": lpips_every,
        "summary": summary,
        "rows": rows,
    }


def _deltas(rows: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """Mean and median of `metric` for both decoders over `rows`, and of fast − full per clip
    (for LPIPS, lower is better: a negative delta is a gain)."""
    delta = [r[f"{metric}_fast"] - r[f"{metric}_full"] for r in rows]
    digits = 3 if metric == "psnr" else 5
    return {
        **{
            f"{stat}_{name}": round(fn([r[f"{metric}_{name}"] for r in rows]), digits)
            for name in ("full", "fast")
            for stat, fn in (("mean", statistics.mean), ("median", statistics.median))
        },
        "delta_mean": round(statistics.mean(delta), digits),
        "delta_median": round(statistics.median(delta), digits),
        "delta_range": [round(min(delta), digits), round(max(delta), digits)],
    }


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    budgets = sorted({r["budget"] for r in rows})
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    labels = {"full": "token model's decoder", "fast": report["decoder"]}  # the one under test
    for name, style in (("full", "o-"), ("fast", "s--")):
        bpp = [statistics.mean(r["bpp"] for r in rows if r["budget"] == b) for b in budgets]
        psnr = [report["summary"][str(b)][f"mean_{name}"] for b in budgets]
        fps = report["summary"][f"decode_fps_{name}"]
        left.plot(bpp, psnr, style, label=f"{labels[name]} ({fps:.1f} frames/s)")
    left.set(xlabel="bpp (mean over clips)", ylabel="PSNR-RGB, dB (mean)", title="same streams")
    left.legend()
    clips = sorted({r["clip"] for r in rows})
    for i, b in enumerate(budgets):
        delta = {r["clip"]: r["psnr_fast"] - r["psnr_full"] for r in rows if r["budget"] == b}
        x = np.arange(len(clips)) + (i - (len(budgets) - 1) / 2) * 0.8 / len(budgets)
        right.bar(x, [delta[c] for c in clips], 0.8 / len(budgets), label=f"budget {b}")
    right.set_xticks(range(len(clips)), [c.rsplit(".", 1)[0] for c in clips], rotation=45)
    right.set(ylabel=f"{report['decoder']} − token model's, dB", title="per clip")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("shrink", help="keep some of the decoding half's blocks")
    cmd.add_argument("--model", type=Path, default=None, help="model file (default: shipped)")
    cmd.add_argument("--out", type=Path, required=True)
    cmd.add_argument("--name", default="infotok-s-fast")
    for _, option in PARTS.values():
        cmd.add_argument(f"--{option}", required=True, help="block indices to keep, e.g. 0,1,8")
    cmd = sub.add_parser("finish", help="a trained checkpoint → a packed decoder file")
    cmd.add_argument("trained", type=Path, help="a run's checkpoint (.pt) or a model file")
    cmd.add_argument("--token-model", type=Path, default=None, help="default: shipped")
    cmd.add_argument("--out", type=Path, required=True)
    cmd.add_argument("--force", action="store_true")
    cmd = sub.add_parser("compare", help="dev clips decoded with both decoders")
    cmd.add_argument("--decoder", type=Path, default=FAST_DECODER_PATH)
    cmd.add_argument("--token-model", type=Path, default=None, help="default: shipped")
    cmd.add_argument("--dev", type=Path, default=ROOT.parent / "shared" / "data" / "dev")
    cmd.add_argument("--budgets", default="0.5,0.75,1.0")
    cmd.add_argument("--frames", type=int, default=64)
    cmd.add_argument("--threads", type=int, default=2)
    cmd.add_argument("--metrics", default="psnr", help="the bench's names, e.g. psnr,msssim,lpips")
    cmd.add_argument("--lpips-every", type=int, default=1, help="judge every k-th frame")
    cmd.add_argument("--out", type=Path, required=True, help="JSON (and a PNG beside it)")
    args = parser.parse_args()
    if args.command == "compare":
        torch.set_num_threads(args.threads)
        budgets = [float(b) for b in args.budgets.split(",")]
        metrics = tuple(args.metrics.split(","))
        report = compare(
            args.decoder,
            args.token_model,
            args.dev,
            budgets,
            args.frames,
            metrics,
            args.lpips_every,
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        plot(report, args.out.with_suffix(".png"))
        print(json.dumps(report["summary"], indent=1))
        return
    if args.command == "finish":
        try:
            finish(args.trained, args.token_model, args.out, args.force)
        except InfotokError as exc:  # ModelError included
            raise SystemExit(f"error: {exc}") from None
        return
    try:
        keep = {
            option: [int(i) for i in getattr(args, option).split(",")]
            for _, option in PARTS.values()
        }
    except ValueError as exc:
        raise SystemExit(f"error: block indices: {exc}") from None
    config = shrink(args.model, args.out, keep, args.name)
    print(config.to_json())


if __name__ == "__main__":
    main()
