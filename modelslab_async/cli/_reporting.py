"""The batch report from the command line: ``DIR/report.html`` at the end of every ``batch``
run (also one that failed items or was interrupted), and the ``report`` command that
rebuilds it from the manifest. The page itself is ``modelslab_async._report``'s."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import anyio
from rich.console import Console

from .._report import write_report
from ._display import Tally, say
from ._run import error_line

#: What writing the report raises on files it cannot read (a manifest that is not UTF-8 or
#: nested too deeply, a folder that cannot be written) or without Jinja2.
REPORT_ERRORS = (OSError, ValueError, ImportError, RecursionError)


def run_stats(tally: Tally, lags: Sequence[float] | None) -> dict[str, float]:
    """The report's run statistics: wall time and images per minute of this run, and the
    poll lag p50 / p99 when the embedded emulator measured it (``--local``)."""
    stats = {"wall_time": tally.elapsed, "images_per_minute": tally.images_per_minute}
    if lags:
        ordered = sorted(lags)
        stats["lag_p50"] = _percentile(ordered, 0.50)
        stats["lag_p99"] = _percentile(ordered, 0.99)
    return stats


def _percentile(ordered: Sequence[float], q: float) -> float:
    """The nearest-rank percentile *q* of the sorted, non-empty *ordered*."""
    rank = max(1, math.ceil(q * len(ordered)))
    return max(0.0, ordered[rank - 1])


def report_link(path: Path) -> str:
    """The report's ``file://`` URL, which terminals make clickable."""
    return path.resolve().as_uri()


async def write_batch_report(
    console: Console, out: Path, manifest: Path, stats: Mapping[str, float]
) -> Path | None:
    """Write ``out/report.html`` in a worker thread and print its link on stderr. A report
    that cannot be written is one line on stderr: the batch's exit code stands."""
    try:
        path = await anyio.to_thread.run_sync(
            functools.partial(write_report, out, manifest=manifest, stats=stats)
        )
    except FileNotFoundError:
        say(console, f"No report: nothing was recorded in {manifest}.")
        return None
    except REPORT_ERRORS as exc:
        say(console, f"No report: {error_line(exc, manifest).removeprefix('Error: ')}")
        return None
    say(console, f"Report: {report_link(path)}")
    return path


__all__ = ["REPORT_ERRORS", "report_link", "run_stats", "write_batch_report"]
