"""`infotok bench`: bitrate–distortion curves of the routers against x264/x265/AV1 on the same
clips, from real file sizes (`runner`), `--qualities` encodes (`quality`), one budget spent over
the whole set (`set_budget`), and the classical codecs through PyAV (`classical`); `report`
sums the rows up and writes JSON + CSV + PNG.
"""

from infotok_codec.bench.report import (
    bd_rate,
    check_results_folder,
    plotted_metrics,
    summarise,
    write_outputs,
)
from infotok_codec.bench.runner import (
    BenchReport,
    BenchRow,
    BenchSettings,
    reference_frames,
    run_bench,
)

__all__ = [
    "BenchReport",
    "BenchRow",
    "BenchSettings",
    "bd_rate",
    "check_results_folder",
    "plotted_metrics",
    "reference_frames",
    "run_bench",
    "summarise",
    "write_outputs",
]
