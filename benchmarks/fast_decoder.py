"""A slimmer decoding half for the same tokens (issue 14: decode speed), started from the
shipped one by keeping some of its blocks.

The decoder network is the whole cost of a decode, and at 1080p the roofline in
benchmarks/README.md ("Speed at 1080p") puts the target out of reach of today's decoding half on
two cores. Residual blocks can be dropped and the rest fine-tuned: a decoder that keeps the
encoding half untouched decodes the very same streams' tokens. `shrink` writes a model file
whose decoding half keeps only the listed blocks (the encoding half, coder tables and light head
are copied), ready for `infotok train --decoder-only --init`:

    python benchmarks/fast_decoder.py shrink --out runs/fast/init.safetensors \
        --decompressor 0 --stage2 0,1,8 --stage1 0,1,2
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from safetensors.torch import save_file

from infotok_codec.model.tokenizer import TokenizerConfig, read_model_file

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
    kept: dict[str, object] = {}
    for key, value in tensors.items():
        for prefix, (_, option) in PARTS.items():
            if key.startswith(prefix):
                match = re.match(re.escape(prefix) + r"(\d+)\.(.*)", key)
                assert match is not None, key
                block, rest = int(match.group(1)), match.group(2)
                if block in keep[option]:
                    kept[f"{prefix}{keep[option].index(block)}.{rest}"] = value
                break
        else:
            kept[key] = value
    for _, (field, option) in PARTS.items():
        if max(keep[option]) >= config[field]:
            raise SystemExit(f"error: --{option}: the model has {config[field]} blocks")
        config[field] = len(keep[option])
    config["name"] = name
    new = TokenizerConfig.from_json(json.dumps(config))
    metadata = {**metadata, "config": new.to_json()}
    metadata.pop("recipe", None)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(kept, str(out), metadata=metadata)  # type: ignore[arg-type]
    return new


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("shrink", help="keep some of the decoding half's blocks")
    cmd.add_argument("--model", type=Path, default=None, help="model file (default: shipped)")
    cmd.add_argument("--out", type=Path, required=True)
    cmd.add_argument("--name", default="infotok-s-fast")
    for _, option in PARTS.values():
        cmd.add_argument(f"--{option}", required=True, help="block indices to keep, e.g. 0,1,8")
    args = parser.parse_args()
    keep = {
        option: [int(i) for i in getattr(args, option).split(",")] for _, option in PARTS.values()
    }
    config = shrink(args.model, args.out, keep, args.name)
    print(config.to_json())


if __name__ == "__main__":
    main()
