"""What the command line shows: the progress bar or plain progress lines, the summary
table, failure lines, and the ``--json`` records (stdout); everything else goes to stderr."""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import attrs
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
)
from rich.table import Table

from .._convert import fingerprint
from .._manifest import ManifestRecord, error_record
from .._types import BatchResult

#: Seconds between two plain progress lines when stderr is not a terminal.
PLAIN_INTERVAL = 5.0
#: Failures printed one by one before the rest are only counted.
MAX_FAILURE_LINES = 20


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False)


def say(console: Console, text: str) -> None:
    """One line on stderr, without rich markup (messages may contain brackets)."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


@attrs.define
class Tally:
    """What the batch did, from its results (and the live counts of ``on_progress``)."""

    started: float = attrs.field(factory=time.monotonic)
    total: int | None = None
    submitted: int = 0
    processing: int = 0
    done: int = 0
    failed: int = 0
    instant: int = 0  # results taken from the manifest (no work this run)
    resumed_done: int = 0
    files: int = 0
    new_images: int = 0
    errors: Counter[str] = attrs.field(factory=Counter)
    failure_lines: int = 0
    input_exhausted: bool = False

    @property
    def finished(self) -> int:
        return self.done + self.failed

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def images_per_minute(self) -> float:
        elapsed = self.elapsed
        return self.new_images / elapsed * 60.0 if elapsed > 0 else 0.0

    @property
    def seconds_left(self) -> float | None:
        if self.total is None:
            return None
        worked = self.finished - self.instant
        remaining = max(0, self.total - self.finished)
        if remaining == 0:
            return 0.0
        if worked <= 0:
            return None
        return remaining * self.elapsed / worked

    def counts(self) -> str:
        return (
            f"submitted {self.submitted} · processing {self.processing} · "
            f"done {self.done} · failed {self.failed}"
        )

    def rate(self) -> str:
        return f"{self.images_per_minute:.0f} img/min"

    def left(self) -> str:
        seconds = self.seconds_left
        return f"~{_duration(seconds)} left" if seconds is not None else ""


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Display:
    """A rich progress bar on a terminal, periodic plain lines otherwise (both on stderr)."""

    def __init__(self, console: Console, tally: Tally) -> None:
        self.console = console
        self.tally = tally
        self.live = console.is_terminal
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        self._last_line = ""

    def __enter__(self) -> Display:
        if self.live:
            self.progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]batch"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[counts]}"),
                TextColumn("{task.fields[rate]}"),
                TextColumn("{task.fields[left]}"),
                console=self.console,
                auto_refresh=False,
                redirect_stdout=False,
                redirect_stderr=False,
                transient=False,
            )
            self.progress.start()
            self.task = self.progress.add_task("batch", total=None, counts="", rate="", left="")
            self.refresh()
        return self

    def __exit__(self, *exc: object) -> None:
        self.refresh(final=True)
        if self.progress is not None:
            self.progress.stop()

    def say(self, text: str) -> None:
        say(self.console, text)
        if self.progress is not None:
            self.progress.refresh()

    def refresh(self, *, final: bool = False) -> None:
        t = self.tally
        if self.progress is not None and self.task is not None:
            self.progress.update(
                self.task,
                total=t.total,
                completed=t.finished,
                counts=t.counts(),
                rate=t.rate(),
                left=t.left() if not final else "",
                refresh=True,
            )
            return
        line = f"{t.finished}/{t.total if t.total is not None else '?'} finished: {t.counts()}"
        if line == self._last_line and not final:
            return
        self._last_line = line
        extra = ", ".join(part for part in (t.rate(), "" if final else t.left()) if part)
        say(self.console, f"[{_duration(t.elapsed)}] {line}, {extra}")

    async def tick(self) -> None:
        interval = 0.125 if self.live else PLAIN_INTERVAL
        while True:
            await anyio.sleep(interval)
            self.refresh()


def summary(console: Console, tally: Tally, out: Path, manifest: Path, interrupted: bool) -> None:
    table = Table(title="modelslab-async batch", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_column()
    previous = f"{tally.resumed_done} from a previous run" if tally.resumed_done else ""
    table.add_row("done", str(tally.done), previous)
    table.add_row("failed", str(tally.failed), "")
    for kind, count in sorted(tally.errors.items(), key=lambda kv: (-kv[1], kv[0])):
        table.add_row(f"  {kind}", str(count), "")
    table.add_row("files", str(tally.files), f"in {out}")
    table.add_row("images/min", f"{tally.images_per_minute:.0f}", "written in this run")
    table.add_row("wall time", _duration(tally.elapsed), f"{tally.elapsed:.1f} s")
    table.add_row("manifest", "", str(manifest))
    console.print(table)
    if interrupted:
        say(
            console,
            "Interrupted: rerun the same command to resume (done items are kept and submitted "
            "jobs are picked up by id, nothing is submitted twice).",
        )
    elif tally.failed:
        say(
            console,
            f"{tally.failed} item(s) failed: see the manifest; rerun with --retry-failed "
            "to try them again.",
        )


def result_record(result: BatchResult) -> dict[str, Any]:
    """The ``--json`` object of a result: the manifest's record fields."""
    record = ManifestRecord(
        index=result.index,
        state="done" if result.ok else "failed",
        fingerprint=fingerprint(result.request) if result.request is not None else "",
        job_id=result.job_id,
        files=tuple(str(f) for f in result.files),
        error=error_record(result.error) if result.error is not None else None,
    ).to_json()
    keys = ("index", "state", "fingerprint", "job_id", "files", "error", "time")
    return {k: record[k] for k in keys}


def emit(record: Mapping[str, Any]) -> bool:
    """Print one JSON line on stdout; False when the reader went away (a broken pipe)."""
    try:
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # Point stdout at /dev/null so that the flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return False
    return True


def account(tally: Tally, result: BatchResult, display: Display) -> None:
    if result.from_manifest:
        tally.instant += 1
    if result.ok:
        tally.done += 1
        tally.files += len(result.files)
        if result.from_manifest:
            tally.resumed_done += 1
        else:
            generation = result.generation
            tally.new_images += len(result.files) or (
                len(generation.images) if generation is not None else 0
            )
        return
    tally.failed += 1
    error = result.error
    tally.errors[type(error).__name__] += 1
    tally.failure_lines += 1
    if tally.failure_lines <= MAX_FAILURE_LINES:
        before = " (in a previous run)" if result.from_manifest else ""
        display.say(f"item {result.index} failed{before}: {type(error).__name__}: {error}")
    elif tally.failure_lines == MAX_FAILURE_LINES + 1:
        display.say("(more failures are only counted: see the manifest)")


__all__ = [
    "MAX_FAILURE_LINES",
    "PLAIN_INTERVAL",
    "Display",
    "Tally",
    "account",
    "emit",
    "result_record",
    "say",
    "stderr_console",
    "summary",
]
