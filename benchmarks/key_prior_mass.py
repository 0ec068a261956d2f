"""How much a key prior should weigh: the `context` coder's bytes on held-out training clips for
key priors fitted at several masses (`context_coder.fit_key_prior`), against no prior.

Training clips only (the dev clips are never used to choose it): every `--every`-th file of
`../shared/data/train` (the four validation files left out), every third of those held out. Each
clip's first 32 frames, short side 256, centre crop 256×256, as two 16-frame chunks at full rate
and at rate 0.5 (the `fixed` router's mask, encoded knowing it), the network in float32. Priors
are fitted on the other clips' chains with the shipped tables and scored by the bytes of the
held-out chains, coded key chunk then chained chunk.

Run: ``python benchmarks/key_prior_mass.py --threads 2`` (writes results/key_prior_mass.json;
about 5 minutes on 2 idle cores for the 25 files of ``--every 3``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from infotok_codec.bench import reference_frames
from infotok_codec.bitstream import FrequencyTables, fit_key_prior
from infotok_codec.bitstream.context_coder import encode_tokens
from infotok_codec.codec import ChunkModel
from infotok_codec.media import find_videos
from infotok_codec.model import latent_shape, load_model
from infotok_codec.routing import keep_count, select_positions
from infotok_codec.training import TokenChain as Chain
from infotok_codec.training import TrainOptions, validation_files

ROOT = Path(__file__).resolve().parents[1]
MASSES = (32, 64, 128, 256, 512, 1024, 4000)


def chains_of(path: Path, engine: ChunkModel) -> dict[float, Chain]:
    """The clip's two chunks at full rate and at rate 0.5, as ``(indices, mask)``; none for a
    clip of fewer than 32 frames."""
    video = reference_frames(path, 32, 256)
    out: dict[float, Chain] = {1.0: [], 0.5: []}
    if len(video) < 32:
        return {}
    for start in (0, 16):
        chunk = video[start : start + 16]
        shape = latent_shape(16, 256, 256)
        out[1.0].append((engine.tokens(chunk), np.ones(shape, dtype=bool)))
        error = engine.error_map(chunk)
        keep = select_positions("fixed", error, shape, keep_count(0.5, error.size))
        out[0.5].append((engine.tokens(chunk, keep), keep))
    return out


def chain_bytes(chains: list[Chain], tables: FrequencyTables) -> int:
    total = 0
    for chain in chains:
        state = None
        for indices, mask in chain:
            data, state = encode_tokens(indices[mask], mask, tables, state)
            total += len(data)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "train")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--every", type=int, default=3, help="use every N-th training file")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "key_prior_mass.json"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model()
    engine = ChunkModel(model, "cpu", bf16=False)
    tables = engine.tables.with_context_prior(None)
    files = find_videos([args.data])
    held_for_validation = set(validation_files(files, TrainOptions.val_files))  # as train's
    files = [f for f in files if f not in held_for_validation][:: args.every]
    fit: list[Chain] = []
    held: dict[float, list[Chain]] = {1.0: [], 0.5: []}
    for i, path in enumerate(files):
        chains = chains_of(path, engine)
        for rate, chain in chains.items():
            (held[rate] if i % 3 == 2 else fit).append(chain)
        print(path.name, file=sys.stderr, flush=True)
    base = {rate: chain_bytes(group, tables) for rate, group in held.items()}
    rows = []
    for mass in MASSES:
        prior = tables.with_context_prior(fit_key_prior(fit, tables, mass).to_json())
        row: dict[str, float] = {"mass": mass}
        for rate, group in held.items():
            row[f"bytes_rate_{rate}"] = chain_bytes(group, prior)
            row[f"vs_no_prior_rate_{rate}"] = round(row[f"bytes_rate_{rate}"] / base[rate], 4)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    result = {
        "command": "python " + shlex.join(sys.argv),
        "model_sha256": model.sha256.hex(),
        "fit_chains": len(fit),
        "held_out_clips": len(held[1.0]),
        "no_prior_bytes": {f"rate_{rate}": b for rate, b in base.items()},
        "masses": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
