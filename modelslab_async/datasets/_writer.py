"""``write_dataset``: rows in, shards out, resumable by shard.

Shard k holds input rows [k*S, (k+1)*S). Rows go through ``Client.generate_many`` with
their row index as the batch index (``indexed=True``), so the run's manifest speaks of
input rows, and a rerun can leave out whole shards. Each finished row appends a line (its
sample, or its failure) to its shard's log ``OUT/.staging/NNNNN.jsonl``, beside the images
the batch downloaded into ``OUT/.staging/``, and is kept in memory until its shard is
written (the rows of the open shards only: a few shards of small records). When every row
of a shard is staged, a worker thread writes the shard (temporary name, fsync, rename),
appends the shard's failures to ``failures.jsonl``, writes ``NNNNN_stats.json`` last (the
mark of a complete shard) and removes what the shard staged.

A rerun skips complete shards without reading them, takes the rows already staged from
the logs, and feeds the batch only the others: the batch then resumes submitted jobs from
the manifest and submits only what was never submitted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
)
from contextlib import aclosing
from pathlib import Path
from typing import Any

import anyio
import attrs

from .. import (
    BadRequestError,
    BatchProgress,
    BatchResult,
    Client,
    GenerationFailed,
    RequestValidationError,
    Text2ImgRequest,
)
from .._download import verify_image_file
from ._common import (
    FAILURES_FILE,
    INFO_FILE,
    MANIFEST_FILE,
    OUTPUT_REQUEST_FIELDS,
    DatasetError,
    MetadataColumn,
    columns_of_kinds,
    dumps,
    encode_value,
    error_info,
    fsync_dir,
    infer_kinds,
    row_key,
    shard_name,
    stats_name,
    write_atomic,
)
from ._rows import Row, RowReader
from ._sinks import OUTPUT_FORMATS, Layout, OutputFormat, pack

_STATS = re.compile(r"^(\d{5,})_stats\.json$")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif")
_READ_CHUNK = 256  # rows read per worker-thread call

#: Failures of the row itself, final in its shard: bad values, a request the API refuses,
#: a job that failed (after the batch's resubmissions). Any other failure (the key,
#: credits, rate limits, the network, timeouts, downloads, a submit whose answer was lost)
#: may pass: its row is not finished, and its shard stays open for a rerun.
_FINAL_ERRORS = (RequestValidationError, BadRequestError, GenerationFailed)


@attrs.frozen(kw_only=True)
class DatasetProgress:
    """Counts of a running :func:`write_dataset`, given to ``on_progress`` on every change.

    ``rows_read``: input rows read so far; ``done`` / ``failed``: rows finished (those of
    shards complete before this run included); ``retryable``: rows that failed in a way
    that may pass (their shards stay open); ``images``: images of the done rows;
    ``shards_written``: shards this run completed; ``shards_skipped``: shards complete
    before it; ``batch``: the batch's own latest counts (None before its first change).
    """

    rows_read: int
    done: int
    failed: int
    retryable: int
    images: int
    shards_written: int
    shards_skipped: int
    batch: BatchProgress | None


@attrs.frozen(kw_only=True)
class DatasetSummary:
    """What :func:`write_dataset` left in ``out``.

    ``rows``: input rows; ``done`` / ``failed`` / ``images``: over the whole dataset (shards
    complete before this run included); ``retryable``: rows that failed in a way that may
    pass (an invalid key, no credits, the network, timeouts): not finished, so their shards
    stay open; rerun with ``retry_failed=True`` to try them again (their jobs are resumed
    by id where one exists); ``shards``: shards of the input;
    ``shards_written`` / ``shards_skipped``: completed by this run / before it;
    ``submitted``: jobs this run submitted (paid for); ``complete``: every shard is complete
    (the staging folder is gone); ``failures``: the failures file (it may not exist when no
    row failed).
    """

    out: Path
    output_format: str
    shard_size: int
    rows: int
    done: int
    failed: int
    retryable: int
    images: int
    shards: int
    shards_written: int
    shards_skipped: int
    submitted: int
    seconds: float
    complete: bool
    manifest: Path
    failures: Path


@attrs.define(eq=False)
class _Shard:
    number: int
    started: float = attrs.field(factory=time.monotonic)
    seen: int = 0  # input rows read
    records: dict[int, dict[str, Any]] = attrs.field(factory=dict)  # rows staged, by index
    staged: dict[int, dict[str, Any]] = attrs.field(factory=dict)  # staged by an earlier run
    closed: bool = False  # no more input rows can fall in it
    packing: bool = False


async def write_dataset(
    client: Client,
    rows: Iterable[Row] | AsyncIterable[Row],
    out: str | os.PathLike[str],
    *,
    output_format: OutputFormat = "files",
    shard_size: int = 1000,
    manifest: str | os.PathLike[str] | None = None,
    on_progress: Callable[[DatasetProgress], Any] | None = None,
    max_in_flight: int | None = None,
    retry_failed: bool = False,
) -> DatasetSummary:
    """Generate an image for every row and write them to *out* in *output_format*, in
    shards of *shard_size* rows; resumable: the same call again finishes the dataset.

    *rows*: :class:`Row` objects in increasing index order, e.g. :func:`read_rows`'s (a
    plain iterable is read in a worker thread, a few hundred rows at a time).
    *output_format*: ``files`` (the images in *out*, as ``generate_many(dest=out)`` names
    them), ``imagefolder``, ``webdataset`` or ``parquet`` (``docs/datasets.md`` has the
    layouts). *manifest*: the batch manifest (default ``OUT/manifest.jsonl``).
    *max_in_flight* and *retry_failed*: as for ``Client.generate_many``; *retry_failed*
    retries the failed rows of shards not yet complete (a complete shard is final).

    A row that makes no valid request, that the API refuses, or whose job fails, is a
    failed row: listed in ``OUT/failures.jsonl`` with its input and error and in its
    shard's stats, never raised. A row that fails in a way that may pass (an invalid key,
    no credits, the network, timeouts) is not finished: counted in ``retryable``, its shard
    stays open, and a rerun with ``retry_failed=True`` tries it again.
    Raises :class:`DatasetError` before anything is submitted when *out* holds a dataset of
    another format or shard size; the batch's own batch-fatal errors (an invalid key) after
    the shards that could be completed are written.
    """
    if output_format not in OUTPUT_FORMATS:
        raise DatasetError(
            f"output_format: got {output_format!r}, allowed " + ", ".join(OUTPUT_FORMATS)
        )
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise DatasetError(f"shard_size: got {shard_size!r}, allowed an integer >= 1")
    layout = Layout(Path(out), output_format, shard_size)
    run = _Run(
        client,
        rows,
        layout,
        manifest=Path(manifest) if manifest is not None else layout.out / MANIFEST_FILE,
        on_progress=on_progress,
        max_in_flight=max_in_flight,
        retry_failed=retry_failed,
    )
    return await run.run()


class _Run:
    def __init__(
        self,
        client: Client,
        rows: Iterable[Row] | AsyncIterable[Row],
        layout: Layout,
        *,
        manifest: Path,
        on_progress: Callable[[DatasetProgress], Any] | None,
        max_in_flight: int | None,
        retry_failed: bool,
    ) -> None:
        self.client = client
        self.rows = rows
        self.layout = layout
        self.manifest = manifest
        self.on_progress = on_progress
        self.max_in_flight = max_in_flight
        self.retry_failed = retry_failed
        self.started = time.monotonic()
        self.complete: dict[int, dict[str, Any]] = {}  # shard -> its stats
        self.open: dict[int, _Shard] = {}
        self.shards_seen: set[int] = set()
        self.pending: dict[int, tuple[Row, str]] = {}  # rows in the batch and their sha
        self.log = _Appender()
        self.info: dict[str, Any] = {}
        self.metadata: list[MetadataColumn] | None = None
        self.pack_lock = anyio.Lock()
        self.failure: BaseException | None = None
        self.rows_read = self.done = self.failed = self.retryable = self.images = 0
        self.shards_written = 0
        self.submitted = 0
        self.last_index = -1
        self.batch: BatchProgress | None = None
        self.tg: anyio.abc.TaskGroup | None = None

    # --- progress -----------------------------------------------------------------------

    def progress(self) -> DatasetProgress:
        return DatasetProgress(
            rows_read=self.rows_read,
            done=self.done,
            failed=self.failed,
            retryable=self.retryable,
            images=self.images,
            shards_written=self.shards_written,
            shards_skipped=len(self.complete) - self.shards_written,
            batch=self.batch,
        )

    def changed(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.progress())

    def on_batch(self, progress: BatchProgress) -> None:
        self.batch = progress
        self.submitted = progress.submitted
        self.changed()

    # --- the run ------------------------------------------------------------------------

    async def run(self) -> DatasetSummary:
        await anyio.to_thread.run_sync(self.prepare)
        skipped = len(self.complete)
        for stats in self.complete.values():
            self.done += int(stats.get("done", 0))
            self.failed += int(stats.get("failed", 0))
            self.images += int(stats.get("images", 0))
        feed = self.feed()
        stopped: Exception | None = None
        try:
            async with anyio.create_task_group() as tg:
                self.tg = tg
                results = self.client.generate_many(
                    feed,
                    dest=self.layout.images,
                    manifest=self.manifest,
                    max_in_flight=self.max_in_flight,
                    on_progress=self.on_batch,
                    retry_failed=self.retry_failed,
                    indexed=True,
                    # Staged images are scratch: their shard is fsynced when written.
                    fsync=self.layout.output_format == "files",
                )
                try:
                    async with aclosing(results):  # type: ignore[type-var]
                        async for result in results:
                            await self.finished(result)
                except Exception as exc:  # the batch's own (an invalid key, the input's)
                    stopped = exc  # raised once the shards being written are written
                else:
                    self.close_shards(None)
        except Exception as exc:
            raise _unwrap(exc) from None
        finally:
            self.tg = None
            with anyio.CancelScope(shield=True):
                await feed.aclose()
                await self.log.close()
        if self.failure is not None:
            raise self.failure
        if stopped is not None:
            raise stopped
        complete = self.shards_seen <= set(self.complete)
        if complete:
            await anyio.to_thread.run_sync(self.remove_staging)
        return DatasetSummary(
            out=self.layout.out,
            output_format=self.layout.output_format,
            shard_size=self.layout.shard_size,
            rows=self.rows_read,
            done=self.done,
            failed=self.failed,
            retryable=self.retryable,
            images=self.images,
            shards=len(self.shards_seen),
            shards_written=self.shards_written,
            shards_skipped=skipped,
            submitted=self.submitted,
            seconds=time.monotonic() - self.started,
            complete=complete,
            manifest=self.manifest,
            failures=self.layout.out / FAILURES_FILE,
        )

    # --- before the batch: what is there ------------------------------------------------

    def prepare(self) -> None:
        """Check that OUT holds nothing of another format, read the complete shards' stats,
        set up the staging folder, and take back failures of shards left incomplete."""
        layout = self.layout
        out, staging = layout.out, layout.staging
        out.mkdir(parents=True, exist_ok=True)
        for entry in os.scandir(out):
            match = _STATS.match(entry.name)
            if match is None:
                continue
            try:
                stats = json.loads(Path(entry.path).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # written atomically: only a foreign file can be unreadable
            self._check_same(stats, entry.name)
            self.complete[int(match.group(1))] = stats
        info_path = staging / INFO_FILE
        try:
            self.info = json.loads(info_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.info = {}
        if self.info:
            self._check_same(self.info, f"{staging.name}/{INFO_FILE}")
        elif not self.complete:
            self._check_empty_of_other_data()
        staging.mkdir(exist_ok=True)
        if not self.info:
            self.info = {"output_format": layout.output_format, "shard_size": layout.shard_size}
            write_atomic(info_path, dumps(self.info))
        for entry in os.scandir(staging):
            if entry.name.endswith(".tmp"):  # a shard being written when a run stopped
                path = Path(entry.path)
                shutil.rmtree(path) if entry.is_dir() else path.unlink(missing_ok=True)
        self._keep_failures_of_complete_shards()

    def _check_same(self, found: dict[str, Any], where: str) -> None:
        fmt, size = found.get("output_format"), found.get("shard_size")
        if fmt != self.layout.output_format or size != self.layout.shard_size:
            raise DatasetError(
                f"{self.layout.out} holds a {fmt} dataset in shards of {size} rows ({where}); "
                f"asked for {self.layout.output_format} in shards of {self.layout.shard_size}: "
                "use the same output format and shard size to resume it, or another folder"
            )

    def _check_empty_of_other_data(self) -> None:
        """A folder with no dataset marks may still hold a batch of image files (a plain
        ``generate_many`` / ``batch`` run): only ``files`` may continue it."""
        if self.layout.output_format == "files":
            return
        out = self.layout.out
        foreign = (out / MANIFEST_FILE).exists() or any(
            entry.name.lower().endswith(_IMAGE_SUFFIXES) for entry in os.scandir(out)
        )
        if foreign:
            raise DatasetError(
                f"{out} holds a batch of image files (images or {MANIFEST_FILE} without "
                f"shard stats); asked for {self.layout.output_format}: use another folder"
            )

    def _keep_failures_of_complete_shards(self) -> None:
        """failures.jsonl holds the failures of complete shards only: a run stopped between
        a shard's failures and its stats left lines that its rerun writes again."""
        path = self.layout.out / FAILURES_FILE
        if not path.exists():
            return
        kept: list[str] = []
        dropped = False
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                try:
                    shard = int(json.loads(line)["index"]) // self.layout.shard_size
                except (ValueError, KeyError, TypeError):
                    dropped = True  # a line cut off by a crash
                    continue
                if shard in self.complete:
                    kept.append(line if line.endswith("\n") else line + "\n")
                else:
                    dropped = True
        if dropped:
            write_atomic(path, "".join(kept))

    # --- the rows the batch gets ----------------------------------------------------------

    async def feed(self) -> AsyncGenerator[tuple[int, Text2ImgRequest], None]:
        """``(row index, request)`` of every row the batch still has to do, read lazily."""
        async for row in _aiter(self.rows):
            index = row.index
            if index <= self.last_index:
                raise DatasetError(
                    f"rows must come in increasing index order: row {index} after "
                    f"row {self.last_index}"
                )
            self.last_index = index
            self.rows_read += 1
            number = index // self.layout.shard_size
            self.shards_seen.add(number)
            if number in self.complete:
                last = self.complete[number].get("last_index")
                if isinstance(last, int) and index > last:
                    raise DatasetError(
                        f"row {index}: shard {shard_name(number)} is complete without it "
                        f"(its last row was {last}), so the input changed since; a complete "
                        f"shard is never rewritten: delete {stats_name(number)} to redo it, "
                        "or write the new input to another folder"
                    )
                continue
            self.close_shards(number)
            shard = self.open.get(number)
            if shard is None:
                shard = self.open[number] = _Shard(number)
                shard.staged = await anyio.to_thread.run_sync(self.read_staged, number)
            shard.seen += 1
            sha = _row_sha(row)
            before = shard.staged.pop(index, None)
            if (
                before is not None
                and before.get("sha") == sha
                and (before.get("state") == "done" or not self.retry_failed or not row.ok)
            ):  # staged by an earlier run (a final failure is retried only if asked)
                self.account(shard, before)
                continue
            if row.request is None or not row.ok:
                await self.stage_failure(shard, row, sha, row.error, None, bad_row=True)
                continue
            self.pending[index] = (row, sha)
            yield index, row.request
        self.changed()

    def close_shards(self, below: int | None) -> None:
        """No more rows fall in the shards before *below* (None: the input ended)."""
        for number, shard in list(self.open.items()):
            if below is None or number < below:
                shard.closed = True
                self.maybe_pack(shard)

    def log_path(self, number: int) -> Path:
        return self.layout.staging / f"{shard_name(number)}.jsonl"

    def read_staged(self, number: int) -> dict[int, dict[str, Any]]:
        """The rows an earlier run staged for shard *number* whose images are still there
        (the last record of a row wins; a line cut off by a crash is skipped: the batch's
        manifest still has its row)."""
        staged: dict[int, dict[str, Any]] = {}
        try:
            handle = open(self.log_path(number), encoding="utf-8")  # noqa: SIM115
        except FileNotFoundError:
            return staged
        with handle:
            for line in handle:
                try:
                    data = json.loads(line)
                    staged[int(data["index"])] = data
                except (ValueError, KeyError, TypeError):
                    continue
        return {i: data for i, data in staged.items() if self._files_present(data)}

    def _files_present(self, data: dict[str, Any]) -> bool:
        """Every image of the staged row is there and whole (staged images are not fsynced:
        after a crash of the machine one may be empty or cut short, and is then had again
        through the batch's manifest)."""
        images = self.layout.images
        return all(verify_image_file(images / f) for f in data.get("files") or ())

    # --- the rows the batch finished ------------------------------------------------------

    async def finished(self, result: BatchResult) -> None:
        row, sha = self.pending.pop(result.index)
        shard = self.open[result.index // self.layout.shard_size]
        if not result.ok:
            if isinstance(result.error, _FINAL_ERRORS):
                await self.stage_failure(shard, row, sha, result.error, result.job_id)
            else:
                self.retryable += 1  # not staged: its shard waits for a rerun
                self.changed()
            return
        request = result.request or row.request
        assert request is not None
        generation = result.generation
        seed = generation.seed if generation is not None else None
        if seed is None:
            seed = request.seed
        record: dict[str, Any] = {"prompt": request.prompt}
        record.update({name: getattr(request, name) for name in OUTPUT_REQUEST_FIELDS})
        record["seed"] = seed
        record.update(encode_value(dict(row.metadata)))
        record["job_id"] = result.job_id
        files = [f.name for f in result.files]  # the batch writes them flat into its dest
        staged = {
            "index": row.index,
            "state": "done",
            "sha": sha,
            "job_id": result.job_id,
            "files": files,
            "record": record,
        }
        await self.stage(shard, staged)

    async def stage_failure(
        self,
        shard: _Shard,
        row: Row,
        sha: str,
        error: BaseException | None,
        job_id: Any,
        *,
        bad_row: bool = False,
    ) -> None:
        info = error_info(error) if error is not None else {"type": "Error", "message": ""}
        if bad_row:
            info["message"] = row.error_message or f"row {row.index}: {info['message']}"
        staged = {
            "index": row.index,
            "state": "failed",
            "sha": sha,
            "job_id": job_id,
            "input": encode_value({**row.fields, **row.metadata}),
            "error": info,
        }
        await self.stage(shard, staged)

    async def stage(self, shard: _Shard, staged: dict[str, Any]) -> None:
        """Append the row's record to its shard's log (not fsynced: if a crash loses it,
        the batch's manifest still has the row, and a rerun gets it without a new job)."""
        await self.log.append(self.log_path(shard.number), json.dumps(staged) + "\n")
        self.account(shard, staged)

    def account(self, shard: _Shard, staged: dict[str, Any]) -> None:
        shard.records[int(staged["index"])] = staged
        if staged.get("state") == "done":
            self.done += 1
            self.images += len(staged.get("files") or ())
        else:
            self.failed += 1
        self.changed()
        self.maybe_pack(shard)

    # --- complete shards ------------------------------------------------------------------

    def maybe_pack(self, shard: _Shard) -> None:
        if shard.closed and not shard.packing and len(shard.records) == shard.seen:
            shard.packing = True
            assert self.tg is not None
            self.tg.start_soon(self.pack, shard)

    async def pack(self, shard: _Shard) -> None:
        try:
            async with self.pack_lock:
                await self.log.forget(self.log_path(shard.number))
                stats = await anyio.to_thread.run_sync(self.pack_sync, shard)
        except Exception as exc:
            self.failure = exc
            assert self.tg is not None
            self.tg.cancel_scope.cancel()
            return
        del self.open[shard.number]
        self.complete[shard.number] = stats
        self.shards_written += 1
        self.changed()

    def pack_sync(self, shard: _Shard) -> dict[str, Any]:
        layout = self.layout
        number, name = shard.number, shard_name(shard.number)
        staged = [shard.records[i] for i in sorted(shard.records)]
        done = [s for s in staged if s.get("state") == "done"]
        failed = [s for s in staged if s.get("state") != "done"]
        metadata = self._metadata_columns(done) if layout.output_format == "parquet" else None
        file = pack(layout, number, done, metadata)
        if failed:
            path = layout.out / FAILURES_FILE
            with open(path, "a", encoding="utf-8") as handle:
                for item in failed:
                    line = {
                        "index": item["index"],
                        "key": row_key(item["index"]),
                        "shard": name,
                        "input": item.get("input"),
                        "error": item.get("error"),
                        "job_id": item.get("job_id"),
                    }
                    handle.write(dumps(_decoded(line)) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        stats = {
            "shard": number,
            "output_format": layout.output_format,
            "shard_size": layout.shard_size,
            "file": file,
            "first_index": number * layout.shard_size,
            "last_index": max(shard.records, default=None),
            "rows": len(staged),
            "done": len(done),
            "failed": len(failed),
            "images": sum(len(s.get("files") or ()) for s in done),
            "failed_keys": {row_key(s["index"]): s.get("error") for s in failed},
            "seconds": round(time.monotonic() - shard.started, 3),
            **(
                {"metadata_kinds": self.info["metadata_kinds"]}
                if "metadata_kinds" in self.info
                else {}
            ),
            "finished_at": round(time.time(), 3),
        }
        write_atomic(layout.out / stats_name(number), dumps(stats) + "\n")
        # The shard is complete: what it staged can go. An imagefolder shard holds links to
        # its staged images: their staged names go. Images copied into a tar or parquet
        # shard are emptied (their space freed) and removed with the staging folder at the
        # end: on ext4, files deleted while the batch creates the next shard's make each
        # new file several times dearer to create (an inode freed in the last minutes is
        # not reused, and skipping one reads its inode block; benchmarks/README.md).
        if layout.output_format != "files":
            for item in done:
                for f in item.get("files") or ():
                    if layout.output_format == "imagefolder":
                        (layout.images / f).unlink(missing_ok=True)
                    else:
                        with contextlib.suppress(FileNotFoundError):
                            os.truncate(layout.images / f, 0)
        self.log_path(number).unlink(missing_ok=True)
        return stats

    def _metadata_columns(self, done: list[dict[str, Any]]) -> list[MetadataColumn]:
        """The metadata columns of the parquet shards: the input's (from read_rows), or
        those of the first shard written, kept in the staging info and in every parquet
        shard's stats for the others (also those a later run adds)."""
        if self.metadata is None:
            if isinstance(self.rows, RowReader):
                self.metadata = self.rows._metadata_schema()
            else:
                kinds = self.info.get("metadata_kinds")
                for stats in self.complete.values():  # a shard written by an earlier run
                    kinds = kinds or stats.get("metadata_kinds")
                if kinds is None:
                    kinds = infer_kinds(done)
                if "metadata_kinds" not in self.info:
                    self.info["metadata_kinds"] = kinds
                    write_atomic(self.layout.staging / INFO_FILE, dumps(self.info))
                self.metadata = columns_of_kinds(kinds)
        return self.metadata

    def remove_staging(self) -> None:
        shutil.rmtree(self.layout.staging, ignore_errors=True)
        fsync_dir(self.layout.out)


class _Appender:
    """Lines appended to files by a worker thread, in groups: appends that arrive while a
    group is being written go together in the next one (one thread hop per group)."""

    def __init__(self) -> None:
        self._pending: list[tuple[Path, str]] = []
        self._handles: dict[Path, Any] = {}
        self._lock = anyio.Lock()

    async def append(self, path: Path, line: str) -> None:
        self._pending.append((path, line))
        async with self._lock:
            if self._pending:
                group, self._pending = self._pending, []
                await anyio.to_thread.run_sync(self._write, group)

    def _write(self, group: list[tuple[Path, str]]) -> None:
        lines: dict[Path, list[str]] = {}
        for path, line in group:
            lines.setdefault(path, []).append(line)
        for path, chunk in lines.items():
            handle = self._handles.get(path)
            if handle is None:
                handle = self._handles[path] = open(path, "a", encoding="utf-8")  # noqa: SIM115
            handle.write("".join(chunk))
            handle.flush()

    async def forget(self, path: Path) -> None:
        """Close *path* (its shard is being written: no more lines go to it)."""
        async with self._lock:
            handle = self._handles.pop(path, None)
            if handle is not None:
                await anyio.to_thread.run_sync(handle.close)

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            async with self._lock:
                handles, self._handles = list(self._handles.values()), {}
                for handle in handles:
                    await anyio.to_thread.run_sync(handle.close)


def _decoded(line: dict[str, Any]) -> dict[str, Any]:
    from ._common import decode_value

    decoded: dict[str, Any] = decode_value(line)
    return decoded


def _row_sha(row: Row) -> str:
    """What the row asks for (its request, or its raw fields) and carries: a staged row
    whose input changed since is done again."""
    if row.request is not None:
        asked: Any = attrs.asdict(row.request)
        asked.pop("track_id", None)
    else:
        asked = encode_value(dict(row.fields))
    text = json.dumps([asked, encode_value(dict(row.metadata))], sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


async def _aiter(rows: Iterable[Row] | AsyncIterable[Row]) -> AsyncIterator[Row]:
    """*rows* as an async iterator; a plain iterable (a file being read) is advanced in a
    worker thread, a chunk at a time, off the event loop."""
    if isinstance(rows, AsyncIterable):
        async for row in rows:
            yield row
        return
    iterator = iter(rows)
    while True:
        chunk = await anyio.to_thread.run_sync(_take, iterator)
        if not chunk:
            return
        for row in chunk:
            yield row


def _take(iterator: Iterator[Row]) -> list[Row]:
    chunk = []
    for row in iterator:
        chunk.append(row)
        if len(chunk) >= _READ_CHUNK:
            break
    return chunk


def _unwrap(exc: BaseException) -> BaseException:
    """The error itself rather than the single-error ExceptionGroup(s) around it."""
    inner = getattr(exc, "exceptions", None)
    while isinstance(inner, tuple) and len(inner) == 1 and isinstance(inner[0], Exception):
        exc = inner[0]
        inner = getattr(exc, "exceptions", None)
    return exc
