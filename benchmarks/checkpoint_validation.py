"""Validation PSNRs of training checkpoints, raw weights and their moving average alike.

`infotok train` validates the average only (when it keeps one). Candidates started at one time
from the same file hold averages of different age (a fresh run's average still holds much of its
start), so a screen compares both. The held-out windows are the ones `train` uses: the same file
split and `validation_batch` (32 windows of the crop each run trained on).

Run: ``python benchmarks/checkpoint_validation.py ../shared/data/train A.ckpt.pt B.ckpt.pt
--crop 128 --threads 2`` (prints one JSON line per checkpoint).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from infotok_codec.media import find_videos
from infotok_codec.model import Tokenizer, TokenizerConfig
from infotok_codec.training import (
    TrainOptions,
    load_clip,
    validate,
    validation_batch,
    validation_files,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--frames", type=int, default=TrainOptions.frames)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    held_out = validation_files(find_videos([Path(args.data)]), TrainOptions.val_files)
    val_clips = [load_clip(f, TrainOptions.short_side, 32) for f in sorted(held_out)]
    batch = validation_batch(val_clips, args.frames, args.crop)
    for path in args.checkpoints:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        model = Tokenizer(TokenizerConfig.from_json(ckpt["config"]))
        row: dict[str, object] = {"checkpoint": path, "step": ckpt["state"]["step"]}
        for kind in ("model", "average"):
            if ckpt.get(kind) is None:
                continue
            model.load_state_dict(ckpt[kind])
            row[kind] = {k: round(v, 3) for k, v in validate(model, batch).items()}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
