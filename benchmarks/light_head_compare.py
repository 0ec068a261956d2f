"""`light` against `elbo` at equal bits, for `light` rows from other bench runs than `elbo`'s.

A head refit changes only `light`'s encodes, so a refitted head is judged by a `--routers light`
bench on the same clips, frames and budgets, read against the `elbo` rows of an earlier run. For
each run given after the first, its `light` rows and the first run's `elbo` rows are summarised
together by `bench.summarise` (the bench's own paired margins at equal bpp), and the margins are
written to one JSON, keyed by run.

    python benchmarks/light_head_compare.py ELBO_RUN LIGHT_RUN [LIGHT_RUN ...] --out OUT.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from infotok_codec.bench import BenchRow, BenchSettings, summarise

COMPARED = ("frames", "size", "budgets", "metrics")


def rows(report: dict, method: str) -> list[BenchRow]:
    return [BenchRow(**row) for row in report["results"] if row["method"] == method]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("elbo_run", type=Path)
    parser.add_argument("light_runs", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    base = json.loads((args.elbo_run / "results.json").read_text())
    fields = {f.name for f in dataclasses.fields(BenchSettings)}
    settings = BenchSettings(
        **{
            k: tuple(v) if isinstance(v, list) else v
            for k, v in base["settings"].items()
            if k in fields
        }
    )
    compared: dict[str, object] = {}
    for run in args.light_runs:
        report = json.loads((run / "results.json").read_text())
        for key in COMPARED:
            if report["settings"].get(key) != base["settings"].get(key):
                raise SystemExit(f"error: {run} was run with another {key}")
        light = rows(report, "light")
        if {r.clip for r in light} != {r.clip for r in rows(base, "elbo")}:
            raise SystemExit(f"error: {run} has other clips than {args.elbo_run}")
        summary = summarise(rows(base, "elbo") + light, settings)
        compared[str(run)] = {
            "model_sha256": report["settings"].get("model_sha256"),
            "light_minus_elbo_db": {
                budget: point["margins_db"]["light_minus_elbo"]
                for budget, point in summary["psnr_at_equal_bpp"].items()
            },
        }
    out = {"elbo_run": str(args.elbo_run), "light_runs": compared}
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
