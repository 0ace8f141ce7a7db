"""The batch engine behind ``Client.generate_many``.

Items are pulled from the input only when one of ``max_in_flight`` slots is free, so
the input (an iterable or async iterable, possibly endless) is never read ahead; each
item is submitted, waited for by the client's poller, downloaded, and yielded as soon as
it completes. A result waits for the consumer before its slot is freed, so a slow
consumer slows the batch instead of filling memory.

With a manifest, every state change is appended and fsynced before the next step: a
rerun yields ``done`` items from the manifest (their files verified) without a network
call, resumes ``submitted`` items by job id (never resubmitted), and retries ``failed``
items only with ``retry_failed=True`` (by job id when the job itself may have
succeeded). A ``submitted`` record without a job id is written right before each submit
goes on the wire; an item left in that state by a crash may have a job nobody knows the
id of, so a rerun fails it with ``AmbiguousSubmitError`` instead of paying twice (unless
``retry_failed`` or the client's ``retry_ambiguous_submits``). A job that fails with the
API's transient answer ("Failed, Try Again") is resubmitted up to ``max_resubmits`` times,
each attempt recorded with its own track id.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections import deque
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Mapping,
)
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import attrs

from ._convert import coerce_request, request_to_wire, wire_fingerprint
from ._download import remove_stale_parts, verify_image_file
from ._errors import (
    AmbiguousSubmitError,
    BadRequestError,
    ConfigurationError,
    DownloadError,
    GenerationFailed,
    GenerationTimeout,
    JobId,
    ModelsLabError,
    RateLimitError,
    ResponseFormatError,
    ServerError,
    TransportError,
)
from ._manifest import Manifest, ManifestRecord, error_from_record, error_record
from ._transport import SubmitWatch
from ._types import (
    BatchResult,
    GeneratedImage,
    Generation,
    Job,
    Text2ImgRequest,
)

if TYPE_CHECKING:
    from ._client import Client
    from ._webhook import WebhookReceiver

RequestLike = Text2ImgRequest | Mapping[str, Any] | str

#: Errors after which the job itself may have succeeded: a retry resumes it by id.
_RESUMABLE = (
    DownloadError,
    GenerationTimeout,
    TransportError,
    ServerError,
    ResponseFormatError,
    RateLimitError,
)


@attrs.frozen
class BatchProgress:
    """Counts of a running batch, passed to ``on_progress`` on every change.

    ``queued``: taken from the input, not yet submitted; ``submitted``: submits made in
    this run; ``processing``: submitted (or resumed) and not yet resolved; ``done`` and
    ``failed``: finished items (``from_manifest`` of the done ones came from a previous
    run); ``images``: files written or images received; ``throughput``: items finished
    per second since the start.
    """

    queued: int
    submitted: int
    processing: int
    done: int
    failed: int
    from_manifest: int
    images: int
    elapsed: float
    throughput: float
    input_exhausted: bool

    @property
    def finished(self) -> int:
        return self.done + self.failed

    @property
    def images_per_minute(self) -> float:
        return self.images / self.elapsed * 60.0 if self.elapsed > 0 else 0.0


class _Batch:
    def __init__(
        self,
        client: Client,
        requests: Iterable[Any] | AsyncIterable[Any],
        *,
        dest: str | os.PathLike[str] | None,
        manifest: str | os.PathLike[str] | None,
        limit: int,
        on_progress: Callable[[BatchProgress], Any] | None,
        retry_failed: bool,
        max_resubmits: int,
        webhook: WebhookReceiver | None,
        indexed: bool = False,
    ) -> None:
        self.client = client
        self.requests = requests
        self.indexed = indexed
        self.dest = Path(dest) if dest is not None else None
        self.manifest_path = manifest
        self.manifest: Manifest | None = None
        self.limit = limit
        self._workers = 0
        self.on_progress = on_progress
        self.retry_failed = retry_failed
        self.max_resubmits = max_resubmits
        self.webhook = webhook
        self.scope = anyio.CancelScope()
        self.stopped = anyio.Event()
        self.results = _Handoff()
        self.failure: BaseException | None = None
        self.started = time.monotonic()
        self.queued = self.submitted = self.processing = 0
        self.done = self.failed = self.from_manifest = self.images = 0
        self.input_exhausted = False

    # --- progress -----------------------------------------------------------------------

    def progress(self) -> BatchProgress:
        elapsed = time.monotonic() - self.started
        finished = self.done + self.failed
        return BatchProgress(
            queued=self.queued,
            submitted=self.submitted,
            processing=self.processing,
            done=self.done,
            failed=self.failed,
            from_manifest=self.from_manifest,
            images=self.images,
            elapsed=elapsed,
            throughput=finished / elapsed if elapsed > 0 else 0.0,
            input_exhausted=self.input_exhausted,
        )

    def _changed(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.progress())

    # --- the engine ---------------------------------------------------------------------

    def cancel(self) -> None:
        self.scope.cancel()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            with self.scope:
                task_status.started()
                try:
                    await self._run()
                except anyio.get_cancelled_exc_class():
                    raise
                except Exception as exc:  # handed to the consumer, not the client's group
                    self.failure = _unwrap(exc)
        finally:
            self.results.close()
            self.stopped.set()

    async def _run(self) -> None:
        if self.manifest_path is not None:
            self.manifest = await Manifest(self.manifest_path).open()
        try:
            if self.dest is not None:
                await anyio.to_thread.run_sync(remove_stale_parts, self.dest)
            items = _Items(self.requests, indexed=self.indexed)
            async with anyio.create_task_group() as tg:
                self._spawn_worker(tg, items)
        finally:
            if self.manifest is not None:
                await self.manifest.close()

    def _spawn_worker(self, tg: anyio.abc.TaskGroup, items: _Items) -> None:
        self._workers += 1
        tg.start_soon(self._worker, tg, items)

    async def _worker(self, tg: anyio.abc.TaskGroup, items: _Items) -> None:
        """One in-flight slot: takes an item, runs it, hands its result to the consumer
        (waiting until it is taken), then takes the next. A worker that got an item starts
        the next worker, up to the limit, so input is read only as slots free up."""
        try:
            while True:
                got = await items.take()
                if got is None:
                    if not self.input_exhausted:
                        self.input_exhausted = True
                        self._changed()
                    return
                if self._workers < self.limit:
                    self._spawn_worker(tg, items)
                index, raw = got
                self.queued += 1
                self._changed()
                result = await self._process(index, raw)
                if result.ok:
                    self.done += 1
                    self.images += len(result.files) or (
                        len(result.generation.images) if result.generation else 0
                    )
                else:
                    self.failed += 1
                self._changed()
                await self.results.put(result)
                # Let the consumer run first: it has the result before the next read.
                await asyncio.sleep(0)
        finally:
            self._workers -= 1

    async def _record(self, **fields: Any) -> None:
        """Append the record made of *fields* to the manifest; without one, nothing (and
        no record object) is made."""
        if self.manifest is not None:
            await self.manifest.append(ManifestRecord(**fields))

    async def _process(self, index: int, raw: RequestLike) -> BatchResult:
        try:
            request = raw if type(raw) is Text2ImgRequest else coerce_request(raw, {})
        except ModelsLabError as exc:
            self.queued -= 1
            await self._record(index=index, state="failed", fingerprint="", error=error_record(exc))
            return BatchResult(index=index, request=None, error=exc)
        wire = request_to_wire(request)
        fp = wire_fingerprint(wire)
        previous = None
        if self.manifest is not None:
            previous = self.manifest.previous.pop(index, None)
            if previous is not None and previous.fingerprint != fp:
                previous = None
        attempt = 0
        resume_id: JobId | None = None
        if previous is not None:
            attempt = previous.attempt
            if previous.state == "done":
                result = await self._from_manifest(index, request, previous)
                if result is not None:
                    self.queued -= 1
                    return result
                resume_id = previous.job_id  # files gone: download the finished job again
            elif previous.state == "submitted":
                resume_id = previous.job_id
                if resume_id in (None, ""):
                    # The run stopped while this submit was on the wire: the job may exist.
                    if self.retry_failed:
                        attempt += 1  # asked for: submit again, under a new track id
                    elif not self._may_resubmit_ambiguous():
                        self.queued -= 1
                        return await self._failed(
                            index, request, fp, _interrupted_submit(previous), None, attempt
                        )
            elif (previous.error or {}).get("type") == NOT_SUBMITTED:
                pass  # stopped before it was sent: submit it now, as if new
            elif not self.retry_failed:
                self.queued -= 1
                return BatchResult(
                    index=index,
                    request=request,
                    error=error_from_record(previous),
                    job_id=previous.job_id,
                    from_manifest=True,
                )
            elif previous.job_id not in (None, "") and _resumable(previous):
                resume_id = previous.job_id
            else:
                attempt = previous.attempt + 1
        self.queued -= 1
        self.processing += 1
        self._changed()
        # A done job is paid for: if the server forgot it, do not pay again unasked.
        resubmit_unknown = previous is None or previous.state != "done"
        try:
            return await self._attempts(
                index, request, wire, fp, attempt, resume_id, resubmit_unknown
            )
        finally:
            self.processing -= 1

    async def _attempts(
        self,
        index: int,
        request: Text2ImgRequest,
        wire: dict[str, Any],
        fp: str,
        attempt: int,
        resume_id: JobId | None,
        resubmit_unknown: bool = True,
    ) -> BatchResult:
        job_id: JobId | None = resume_id
        while True:
            try:
                if resume_id is not None:
                    try:
                        answer: Job | Generation = await self.client.resume(
                            resume_id, request=request
                        )
                    except BadRequestError as exc:
                        if not (resubmit_unknown and _unknown_job(exc)):
                            raise
                        # The server does not know the job (the embedded emulator of a
                        # --local run died, say): it never made a charged image. Submit anew.
                        resume_id = None
                        attempt += 1
                        continue
                    resume_id = None
                else:
                    job_id = None  # a new job: an error of this submit is not the last job's
                    sent, sent_wire = self._prepare(request, wire, fp, index, attempt)
                    ahead = self._write_ahead(index, fp, attempt, sent.track_id)
                    try:
                        answer = await self.client._submit(
                            sent, webhook=self.webhook, watch=ahead, wire=sent_wire, job_meta=False
                        )
                    except BaseException as exc:
                        if ahead is not None and not isinstance(exc, ModelsLabError):
                            await ahead.stopped()  # cancelled: take back a surely-unsent record
                        raise
                    self.submitted += 1
                    job_id = answer.id
                    await self._record(
                        index=index,
                        state="submitted",
                        fingerprint=fp,
                        job_id=answer.id,
                        attempt=attempt,
                        track_id=sent.track_id,
                    )
                    self._changed()
                generation = await self.client.wait(answer)
                if generation.id is None and job_id is not None:
                    generation = attrs.evolve(generation, id=job_id)
                images = await self.client.download(generation, self.dest)
            except GenerationFailed as exc:
                if exc.transient and attempt < self.max_resubmits:
                    attempt += 1
                    continue
                return await self._failed(index, request, fp, exc, job_id, attempt)
            except ModelsLabError as exc:
                return await self._failed(index, request, fp, exc, job_id, attempt)
            files = tuple(img.path for img in images if img.path is not None)
            await self._record(
                index=index,
                state="done",
                fingerprint=fp,
                job_id=generation.id,
                files=tuple(str(f) for f in files),
                attempt=attempt,
            )
            return BatchResult(
                index=index,
                request=request,
                generation=attrs.evolve(generation, images=tuple(images)),
                files=files,
                job_id=generation.id,
            )

    def _write_ahead(
        self, index: int, fp: str, attempt: int, track_id: str | int | None
    ) -> _WriteAhead | None:
        """A ``submitted`` record without a job id, fsynced right before the submit goes on
        the wire: a rerun after a crash mid-submit knows the job may exist, and does not
        pay for it twice."""
        if self.manifest is None:
            return None
        return _WriteAhead(self, index, fp, attempt, track_id)

    def _may_resubmit_ambiguous(self) -> bool:
        return self.client.transport.retry.retry_ambiguous_submits

    def _prepare(
        self, request: Text2ImgRequest, wire: dict[str, Any], fp: str, index: int, attempt: int
    ) -> tuple[Text2ImgRequest, dict[str, Any]]:
        """The request as sent and its body: with a track id derived from the fingerprint,
        the index and the attempt, unless the user set one."""
        if request.track_id is not None:
            return request, wire
        track_id = f"mla-{fp[:20]}-{index}" + (f"-r{attempt}" if attempt else "")
        return attrs.evolve(request, track_id=track_id), {**wire, "track_id": track_id}

    async def _failed(
        self,
        index: int,
        request: Text2ImgRequest,
        fp: str,
        error: ModelsLabError,
        job_id: JobId | None,
        attempt: int,
    ) -> BatchResult:
        job_id = job_id if job_id is not None else getattr(error, "job_id", None)
        await self._record(
            index=index,
            state="failed",
            fingerprint=fp,
            job_id=job_id,
            error=error_record(error),
            attempt=attempt,
        )
        return BatchResult(index=index, request=request, error=error, job_id=job_id)

    async def _from_manifest(
        self, index: int, request: Text2ImgRequest, record: ManifestRecord
    ) -> BatchResult | None:
        files = [Path(f) for f in record.files]
        if self.dest is not None and not files:
            return None
        ok = await anyio.to_thread.run_sync(lambda: all(verify_image_file(f) for f in files))
        if not ok:
            return None
        self.from_manifest += 1
        images = tuple(
            GeneratedImage(url="", index=i, job_id=record.job_id, path=f)
            for i, f in enumerate(files)
        )
        generation = Generation(id=record.job_id, request=request, images=images)
        return BatchResult(
            index=index,
            request=request,
            generation=generation,
            files=files,
            job_id=record.job_id,
            from_manifest=True,
        )


def _unwrap(exc: Exception) -> Exception:
    """The error itself (an input iterator's, a manifest's) rather than the single-error
    ExceptionGroup(s) that the engine's task group wraps it in."""
    inner = getattr(exc, "exceptions", None)  # (Base)ExceptionGroup, also on Python 3.10
    while isinstance(inner, tuple) and len(inner) == 1 and isinstance(inner[0], Exception):
        exc = inner[0]
        inner = getattr(exc, "exceptions", None)
    return exc


def _unknown_job(error: BadRequestError) -> bool:
    """True for the fetch answer about a job id the server does not know."""
    return "not found" in (error.api_message or "").lower()


class _WriteAhead(SubmitWatch):
    """The write-ahead record of one submit, taken back when a stop (Ctrl-C, a batch
    leaving early) comes while the last attempt surely created no job, e.g. during a
    rate-limit pause: such an item is submitted again by a rerun, not failed as ambiguous."""

    def __init__(
        self, batch: _Batch, index: int, fp: str, attempt: int, track_id: str | int | None
    ) -> None:
        self._batch = batch
        self._item: dict[str, Any] = {
            "index": index,
            "fingerprint": fp,
            "attempt": attempt,
            "track_id": track_id,
        }
        self._written = False
        self._last_refused = False

    async def sending(self) -> None:
        self._last_refused = False
        if not self._written:
            self._written = True
            await self._batch._record(state="submitted", **self._item)

    def refused(self) -> None:
        self._last_refused = True

    async def stopped(self) -> None:
        if self._written and self._last_refused:
            with anyio.CancelScope(shield=True):
                await self._batch._record(
                    state="failed",
                    error={"type": NOT_SUBMITTED, "message": "stopped before it was sent"},
                    **self._item,
                )


#: The error type of a ``failed`` record that takes back a write-ahead record: the run
#: stopped while the submit was surely not on the wire, so a rerun submits it (no charge).
NOT_SUBMITTED = "NotSubmitted"


def _interrupted_submit(record: ManifestRecord) -> AmbiguousSubmitError:
    track = f" (track_id {record.track_id})" if record.track_id not in (None, "") else ""
    return AmbiguousSubmitError(
        f"item {record.index}: the run that submitted it{track} stopped before the answer "
        "arrived; the job may have been created, so it was not resubmitted (a duplicate "
        "would be charged twice; retry_failed / --retry-failed submits it again)",
        kind="interrupted",
    )


def _resumable(record: ManifestRecord) -> bool:
    kind = (record.error or {}).get("type", "")
    return kind in {cls.__name__ for cls in _RESUMABLE}


class _Handoff:
    """Results from the workers to the consumer, one at a time and unbuffered: ``put``
    returns once the consumer has the result, so a slow consumer holds the workers back
    instead of letting results pile up. ``get`` returns None once closed and drained.
    (anyio's zero-buffer memory stream does the same with two more trips round the event
    loop and an event per item.)"""

    def __init__(self) -> None:
        self._waiting: deque[tuple[BatchResult, asyncio.Future[None]]] = deque()
        self._taker: asyncio.Future[BatchResult | None] | None = None
        self._closed = False

    def _hand(self, item: BatchResult | None) -> bool:
        taker, self._taker = self._taker, None
        if taker is not None and not taker.done():
            taker.set_result(item)
            return True
        return False

    async def put(self, item: BatchResult) -> None:
        if self._hand(item):
            return
        waiting = (item, asyncio.get_running_loop().create_future())
        self._waiting.append(waiting)
        try:
            await waiting[1]
        except BaseException:
            if not waiting[1].done():
                waiting[1].cancel()
                with contextlib.suppress(ValueError):
                    self._waiting.remove(waiting)
            raise

    async def get(self) -> BatchResult | None:
        while self._waiting:
            item, taken = self._waiting.popleft()
            if not taken.done():
                taken.set_result(None)
                return item
        if self._closed:
            return None
        taker: asyncio.Future[BatchResult | None] = asyncio.get_running_loop().create_future()
        self._taker = taker
        try:
            return await taker
        finally:
            if self._taker is taker:
                self._taker = None

    def close(self) -> None:
        """No more results: a waiting (or later) ``get`` returns None."""
        self._closed = True
        self._hand(None)


class _Items:
    """The input, read lazily by the workers: ``(index, item)`` pairs, None at the end.

    The index is the item's position in the input, or (``indexed``) the index the input
    gives with each item as an ``(index, request)`` pair."""

    def __init__(
        self, requests: Iterable[Any] | AsyncIterable[Any], *, indexed: bool = False
    ) -> None:
        self._indexed = indexed
        self._iterator: Any
        if isinstance(requests, AsyncIterable):
            self._iterator, self._async = requests.__aiter__(), True
        else:
            self._iterator, self._async = iter(requests), False
        self._lock = anyio.Lock()  # one __anext__ at a time (async generators need it)
        self._index = 0
        self._ended = False

    async def take(self) -> tuple[int, RequestLike] | None:
        if self._ended:
            return None
        try:
            if self._async:
                async with self._lock:  # (after the end, __anext__ raises again)
                    item = await self._iterator.__anext__()
            else:
                item = next(self._iterator)
        except (StopIteration, StopAsyncIteration):
            self._ended = True
            return None
        if self._indexed:
            return _indexed_item(item)
        index = self._index
        self._index += 1
        return index, item


def _indexed_item(item: Any) -> tuple[int, RequestLike]:
    if (
        isinstance(item, tuple)
        and len(item) == 2
        and isinstance(item[0], int)
        and not isinstance(item[0], bool)
        and item[0] >= 0
    ):
        return item[0], item[1]
    raise ConfigurationError(
        f"indexed=True: got an item of type {type(item).__name__}, "
        "allowed an (index, request) pair with an integer index >= 0"
    )


async def run_batch(
    client: Client,
    requests: Iterable[Any] | AsyncIterable[Any],
    *,
    dest: str | os.PathLike[str] | None = None,
    manifest: str | os.PathLike[str] | None = None,
    max_in_flight: int | None = None,
    on_progress: Callable[[BatchProgress], Any] | None = None,
    retry_failed: bool = False,
    max_resubmits: int = 2,
    webhook: WebhookReceiver | None = None,
    indexed: bool = False,
) -> AsyncIterator[BatchResult]:
    """The async generator behind ``Client.generate_many`` (see the module docstring).

    The work runs in the client's task group under its own cancel scope; leaving the
    loop (``break``, an exception, cancellation) cancels it and waits until it stopped.
    Use ``contextlib.aclosing`` to make that happen at the ``break`` itself rather than
    when the generator is collected.
    """
    client._check_open()
    if max_in_flight is None:
        limit = client.in_flight_limit + max(2, math.ceil(client.in_flight_limit / 4))
        if client.limiter.adaptive:
            limit = 64
    elif (
        isinstance(max_in_flight, int)
        and not isinstance(max_in_flight, bool)
        and max_in_flight >= 1
    ):
        limit = max_in_flight
    else:
        from ._errors import ConfigurationError

        raise ConfigurationError(f"max_in_flight: got {max_in_flight!r}, allowed an integer >= 1")
    batch = _Batch(
        client,
        requests,
        dest=dest,
        manifest=manifest,
        limit=limit,
        on_progress=on_progress,
        retry_failed=retry_failed,
        max_resubmits=max_resubmits,
        webhook=webhook,
        indexed=indexed,
    )
    # No buffer: an item keeps its slot until the consumer has taken its result, so a slow
    # consumer holds back the input instead of letting results pile up.
    assert client._tg is not None
    await client._tg.start(batch.run)
    try:
        while (result := await batch.results.get()) is not None:
            yield result
        if batch.failure is not None:
            raise batch.failure
    finally:
        batch.cancel()
        with anyio.CancelScope(shield=True):
            await batch.stopped.wait()
