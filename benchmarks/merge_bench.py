"""Merge `infotok bench` runs over disjoint clips (same settings) into one report.

On a loaded machine the dev set can be split over concurrent bench processes; each still runs
its clips' analyses one after the other (so `light` and `elbo` are timed interleaved). The rows
are concatenated and the summary recomputed over all clips by `bench.summarise`; the result is
written as `infotok bench` writes it (results.json, results.csv, plots), with the runs' commands
and devices recorded under `settings`.

    python benchmarks/merge_bench.py OUT RUN_DIR [RUN_DIR ...] --command "…" [--command "…"]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from infotok_codec.bench import BenchReport, BenchRow, BenchSettings, summarise, write_outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--command", action="append", default=[], help="each run's command")
    args = parser.parse_args()
    reports = [json.loads((run / "results.json").read_text()) for run in args.runs]
    settings = reports[0]["settings"]
    fields = {f.name for f in dataclasses.fields(BenchSettings)}
    for other in reports[1:]:
        if {k: other["settings"][k] for k in fields} != {k: settings[k] for k in fields}:
            raise SystemExit("error: the runs were made with different settings")
    rows = [BenchRow(**row) for report in reports for row in report["results"]]
    clips = [r.clip for r in rows]
    if len({(r.clip, r.method, r.param) for r in rows}) != len(clips):
        raise SystemExit("error: the runs share clips")
    bench_settings = BenchSettings(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items() if k in fields}
    )
    merged = BenchReport(
        results=rows,
        summary=summarise(rows, bench_settings),
        device="; ".join(sorted({r["device"] for r in reports})),
        versions=reports[0]["versions"],
        settings={**settings, "runs": [str(r) for r in args.runs], "commands": args.command},
    )
    write_outputs(merged, args.out)
    print(json.dumps(merged.summary["psnr_at_equal_bpp"], indent=1))
    print(json.dumps(merged.summary["timing"], indent=1))


if __name__ == "__main__":
    main()
