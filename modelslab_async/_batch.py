"""The batch engine behind ``Client.generate_many``.

``max_in_flight`` workers each take an item from the input only when they are free, so
the input (an iterable or async iterable, possibly endless) is never read ahead; each
item is submitted (in one of the client's slots), waited for by the client's poller,
downloaded, and yielded as soon as it completes. A worker hands its result to the
consumer over a zero-buffer stream and takes the next item only once the consumer has
it, so a slow consumer slows the batch instead of filling memory. The engine knows the
client only through :class:`BatchClient`.

With a manifest, every state change is appended and fsynced before the next step: a
rerun yields ``done`` items from the manifest (their files verified) without a network
call, resumes ``submitted`` items by job id (never resubmitted), and retries ``failed``
items only with ``retry_failed=True`` (by job id when the job itself may have
succeeded). A ``submitted`` record without a job id is written right before each submit
goes on the wire; an item left in that state by a crash may have a job nobody knows the
id of, so a rerun fails it with ``AmbiguousSubmitError`` instead of paying twice (unless
``retry_failed`` or the client's ``retry_ambiguous_submits``). A job that fails with the
API's transient answer ("Failed, Try Again") is resubmitted up to ``max_resubmits`` times,
each attempt recorded with its own track id. A recorded job id the API answers "not found"
for fails its item with ``JobNotFoundError`` (a new job would be charged again) unless
``retry_failed`` or ``resubmit_lost_jobs``.

An invalid key (``AuthenticationError``) or empty credits (``InsufficientCreditsError``)
stop the batch's submits, not its jobs: the first such answer makes every later attempt
stop before it goes on the wire (so it costs one request per submit already on the wire,
never one per remaining item), no worker takes another item from the input, the jobs
already running finish and download, the items taken but not submitted are recorded
``NotSubmitted`` (a rerun submits them, like the items never read), and once what
finished has been yielded the iterator raises that error.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

import anyio
import anyio.abc
import anyio.lowlevel
import attrs
from anyio.streams.memory import MemoryObjectSendStream

from . import _constants as C
from ._convert import coerce_request, fingerprint
from ._download import remove_stale_parts, verify_image_file
from ._errors import (
    AmbiguousSubmitError,
    APIError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    DownloadError,
    GenerationFailed,
    GenerationTimeout,
    InsufficientCreditsError,
    JobId,
    JobNotFoundError,
    ModelsLabError,
    RateLimitError,
    ResponseFormatError,
    ServerError,
    TransportError,
)
from ._manifest import Manifest, ManifestRecord, error_from_record, error_record
from ._transport import SubmitWatch
from ._types import BatchResult, GeneratedImage, Generation, Job, Text2ImgRequest
from ._webhook import WebhookReceiver

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["BatchClient", "BatchOptions", "BatchProgress", "NOT_SUBMITTED", "run_batch"]

RequestLike = Text2ImgRequest | Mapping[str, Any] | str
#: An item of ``generate_many(..., indexed=True)``: the item's own index and its request.
IndexedRequest = tuple[int, RequestLike]

#: Errors after which the job itself may have succeeded: a retry resumes it by id.
_RESUMABLE = (
    DownloadError,
    GenerationTimeout,
    TransportError,
    ServerError,
    ResponseFormatError,
    RateLimitError,
)


#: Answers after which no submit of the batch can succeed: it stops submitting.
_BATCH_FATAL = (AuthenticationError, InsufficientCreditsError)


@attrs.frozen
class BatchProgress:
    """Counts of a running batch, passed to ``on_progress`` on every change.

    ``queued``: taken from the input, not yet submitted; ``submitted``: submits made in
    this run; ``processing``: submitted (or resumed) and not yet resolved; ``done`` and
    ``failed``: finished items (``from_manifest`` of the done ones came from a previous
    run); ``images``: files written or images received; ``throughput``: items finished
    per second since the start; ``not_submitted``: items taken from the input but not
    submitted because an invalid key or empty credits stopped the batch's submits.
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
    not_submitted: int = 0

    @property
    def finished(self) -> int:
        return self.done + self.failed

    @property
    def images_per_minute(self) -> float:
        return self.images / self.elapsed * 60.0 if self.elapsed > 0 else 0.0


class BatchOptions(TypedDict, total=False):
    """The keyword options of :meth:`Client.generate_many`, all optional.

    - ``dest``: folder for the images (None: bytes in ``result.generation.images``).
    - ``manifest``: a JSONL file; rerunning with it skips done items, resumes submitted
      ones by job id and retries failed ones only with ``retry_failed``.
    - ``max_in_flight``: items in progress, an integer >= 1 (default: the client's limit
      plus room for downloads).
    - ``on_progress``: called with a :class:`BatchProgress` on every change.
    - ``retry_failed``: submit again (or resume by job id, when the job itself may have
      succeeded) the items the manifest records as failed. Default False.
    - ``max_resubmits``: resubmissions of a job that failed with the API's transient
      "Failed, Try Again", an integer >= 0. Default 2.
    - ``webhook``: a :class:`WebhookReceiver` to be told when jobs finish.
    - ``resubmit_lost_jobs``: submit again an item whose recorded job id the API no
      longer knows ("not found"), without ``retry_failed``. Default False: such an item
      fails with :class:`JobNotFoundError` (a new job is a new charge). For servers whose
      jobs die with them (the CLI's ``--local`` emulator).
    - ``indexed``: each item is an ``(index, request)`` pair, and results and manifest
      records carry that index instead of the item's position (indices unique, >= 0, gaps
      allowed): a caller that resumes part of a larger job, such as a dataset skipping its
      complete shards, feeds only the items it still needs under their own indices.
      Default False.
    - ``fsync``: fsync each image file before it is renamed into place, so that a manifest
      record never outlives its file in a crash of the machine (a killed process loses
      nothing either way). Default True. False is for scratch files made durable some
      other way (the dataset writer's staged images, fsynced inside their shard); a rerun
      checks the files a manifest names, and downloads again any that is incomplete.
    """

    dest: str | os.PathLike[str] | None
    manifest: str | os.PathLike[str] | None
    max_in_flight: int | None
    on_progress: Callable[[BatchProgress], Any] | None
    retry_failed: bool
    max_resubmits: int
    webhook: WebhookReceiver | None
    resubmit_lost_jobs: bool
    indexed: bool
    fsync: bool


class BatchClient(Protocol):
    """What the batch engine needs of a client."""

    @property
    def in_flight_limit(self) -> int:
        """The client's current cap on jobs in flight."""
        ...

    @property
    def learns_limit(self) -> bool:
        """True when that cap is learned (``max_in_flight="auto"``)."""
        ...

    @property
    def retry_ambiguous_submits(self) -> bool:
        """True when the user allowed submits that may have created a job to be sent again."""
        ...

    def task_group(self) -> anyio.abc.TaskGroup:
        """The open client's task group; :class:`ClientStateError` if it is not open."""
        ...

    async def submit(
        self,
        request: Text2ImgRequest,
        *,
        watch: SubmitWatch | None,
        webhook: WebhookReceiver | None,
        track_id: str | int | None,
    ) -> Job | Generation:
        """Submit *request* in an in-flight slot (see :meth:`Client.submit`) under
        *track_id* (None: the request's own); *watch* is told about each attempt, *webhook*
        (if any) is told when the job finishes."""
        ...

    async def wait(self, job: Job | Generation) -> Generation: ...

    async def resume(self, job_id: JobId, *, request: Text2ImgRequest) -> Job | Generation: ...

    async def download(
        self, generation: Generation, dest: Path | None, *, fsync: bool
    ) -> list[GeneratedImage]: ...


def _integer(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{name}: got {value!r}, allowed an integer >= {minimum}")
    return value


class _Batch:
    def __init__(
        self,
        client: BatchClient,
        requests: Iterable[RequestLike | IndexedRequest]
        | AsyncIterable[RequestLike | IndexedRequest],
        options: BatchOptions,
    ) -> None:
        unknown = sorted(set(options) - set(BatchOptions.__annotations__))
        if unknown:
            raise TypeError(f"generate_many() got an unexpected keyword argument {unknown[0]!r}")
        self.client = client
        self.requests = requests
        dest = options.get("dest")
        self.dest = Path(dest) if dest is not None else None
        self.manifest_path = options.get("manifest")
        self.manifest: Manifest | None = None
        width = options.get("max_in_flight")
        if width is not None:
            self.limit = _integer("max_in_flight", width, 1)
        elif client.learns_limit:
            self.limit = C.AUTO_BATCH_WIDTH  # room for the limit to grow
        else:  # the client's slots, plus items downloading or waiting for the consumer
            self.limit = client.in_flight_limit + max(2, math.ceil(client.in_flight_limit / 4))
        self.on_progress = options.get("on_progress")
        self.retry_failed = bool(options.get("retry_failed", False))
        self.max_resubmits = _integer("max_resubmits", options.get("max_resubmits", 2), 0)
        self.webhook = options.get("webhook")
        self.resubmit_lost_jobs = bool(options.get("resubmit_lost_jobs", False))
        self.indexed = bool(options.get("indexed", False))
        self.fsync = bool(options.get("fsync", True))
        self._workers = 0
        self.fatal: APIError | None = None  # the answer that stopped the batch's submits
        self.not_submitted = 0
        self.stopped = anyio.Event()
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
            not_submitted=self.not_submitted,
        )

    def _changed(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.progress())

    # --- the engine ---------------------------------------------------------------------

    async def results(self) -> AsyncIterator[BatchResult]:
        """Run the batch in the client's task group and yield its results.

        Leaving the loop (``break``, an exception, cancellation) cancels the batch and
        waits until it stopped.
        """
        # No buffer: an item keeps its worker until the consumer has taken its result, so
        # a slow consumer holds back the input instead of letting results pile up.
        send, receive = anyio.create_memory_object_stream[BatchResult](0)
        self.scope = anyio.CancelScope()
        self.started = time.monotonic()
        with receive:
            await self.client.task_group().start(self.run, send)
            try:
                async for result in receive:
                    yield result
                if self.failure is not None:
                    raise self.failure
            finally:
                self.scope.cancel()
                with anyio.CancelScope(shield=True):
                    await self.stopped.wait()

    async def run(
        self,
        results: MemoryObjectSendStream[BatchResult],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            with self.scope, results:
                task_status.started()
                try:
                    await self._run(results)
                except anyio.get_cancelled_exc_class():
                    raise
                except Exception as exc:  # handed to the consumer, not the client's group
                    self.failure = _unwrap(exc)
                if self.failure is None and self.fatal is not None:
                    self.failure = self.fatal  # raised after every finished item was yielded
        finally:
            self.stopped.set()

    async def _run(self, results: MemoryObjectSendStream[BatchResult]) -> None:
        if self.manifest_path is not None:
            self.manifest = await Manifest(self.manifest_path).open()
        try:
            if self.dest is not None:
                await anyio.to_thread.run_sync(remove_stale_parts, self.dest)
            items = _Items(self.requests, indexed=self.indexed)
            async with anyio.create_task_group() as tg:
                self._spawn_worker(tg, items, results)
        finally:
            if self.manifest is not None:
                await self.manifest.close()

    def _spawn_worker(
        self,
        tg: anyio.abc.TaskGroup,
        items: _Items,
        results: MemoryObjectSendStream[BatchResult],
    ) -> None:
        self._workers += 1
        tg.start_soon(self._worker, tg, items, results)

    async def _worker(
        self,
        tg: anyio.abc.TaskGroup,
        items: _Items,
        results: MemoryObjectSendStream[BatchResult],
    ) -> None:
        """Takes an item, runs it, hands its result to the consumer (waiting until it is
        taken), then takes the next. A worker that got an item starts the next worker, up
        to the limit, so input is read only as workers free up."""
        try:
            while self.fatal is None:  # stopped submitting: take nothing more
                got = await items.take()
                if got is None:
                    if not self.input_exhausted:
                        self.input_exhausted = True
                        self._changed()
                    return
                if self._workers < self.limit:
                    self._spawn_worker(tg, items, results)
                index, raw = got
                self.queued += 1
                self._changed()
                result = await self._process(index, raw)
                if result is None:  # not submitted: the batch stopped submitting
                    self._changed()
                    continue
                if result.ok:
                    self.done += 1
                    self.images += len(result.files) or (
                        len(result.generation.images) if result.generation else 0
                    )
                else:
                    self.failed += 1
                self._changed()
                await results.send(result)
                # Let the consumer run first: it has the result before the next read.
                await anyio.lowlevel.checkpoint()
        finally:
            self._workers -= 1

    async def _record(self, **fields: Any) -> None:
        """Append the record made of *fields* to the manifest, if the batch has one."""
        if self.manifest is not None:
            await self.manifest.append(ManifestRecord(**fields))

    async def _process(self, index: int, raw: RequestLike) -> BatchResult | None:
        try:
            request = coerce_request(raw, {})
        except ModelsLabError as exc:
            self.queued -= 1
            await self._record(
                index=index,
                state="failed",
                fingerprint="",
                error=error_record(exc),
                prompt=_raw_prompt(raw),
            )
            return BatchResult(index=index, request=None, error=exc)
        fp = fingerprint(request)
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
                    elif not self.client.retry_ambiguous_submits:
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
            return await self._attempts(index, request, fp, attempt, resume_id, resubmit_unknown)
        finally:
            self.processing -= 1

    async def _attempts(
        self,
        index: int,
        request: Text2ImgRequest,
        fp: str,
        attempt: int,
        resume_id: JobId | None,
        resubmit_unknown: bool = True,
    ) -> BatchResult | None:
        """The item's result, or None when it was not submitted (see :meth:`_stop`)."""
        job_id: JobId | None = resume_id
        while True:
            try:
                if resume_id is not None:
                    try:
                        answer: Job | Generation = await self.client.resume(
                            resume_id, request=request
                        )
                    except BadRequestError as exc:
                        if not _unknown_job(exc):
                            raise
                        if not (
                            resubmit_unknown and (self.retry_failed or self.resubmit_lost_jobs)
                        ):
                            raise _job_not_found(resume_id, exc) from None
                        # Asked for (or the server's jobs die with it, as the embedded
                        # emulator's of a --local run): submit anew, under a new track id.
                        resume_id = None
                        attempt += 1
                        continue
                    resume_id = None
                else:
                    job_id = None  # a new job: an error of this submit is not the last job's
                    track_id = self._track_id(request, fp, index, attempt)
                    ahead = self._write_ahead(index, fp, attempt, track_id)
                    try:
                        answer = await self.client.submit(
                            request, watch=ahead, webhook=self.webhook, track_id=track_id
                        )
                    except _NotSent:
                        await self._not_submitted(index, fp, attempt, track_id)
                        return None
                    except _BATCH_FATAL as exc:
                        self._stop(exc)  # refused: surely no job was created
                        await self._not_submitted(index, fp, attempt, track_id)
                        return None
                    except BaseException as exc:
                        if not isinstance(exc, ModelsLabError):
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
                        track_id=track_id,
                    )
                    self._changed()
                generation = await self.client.wait(answer)
                if generation.id is None and job_id is not None:
                    generation = attrs.evolve(generation, id=job_id)
                images = await self.client.download(generation, self.dest, fsync=self.fsync)
            except GenerationFailed as exc:
                if exc.transient and attempt < self.max_resubmits:
                    attempt += 1
                    continue
                return await self._failed(index, request, fp, exc, job_id, attempt)
            except _BATCH_FATAL as exc:
                # A fetch of a submitted job refused the key: the job goes on, and its
                # `submitted` record lets a rerun resume it by id.
                self._stop(exc)
                return None
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
                prompt=request.prompt,
                seed=generation.seed,
                generation_time=generation.generation_time,
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
    ) -> _WriteAhead:
        """A ``submitted`` record without a job id, fsynced right before the submit goes on
        the wire: a rerun after a crash mid-submit knows the job may exist, and does not
        pay for it twice. (Without a manifest it only stops a submit of a stopped batch.)"""
        return _WriteAhead(self, index, fp, attempt, track_id)

    def _stop(self, error: APIError) -> None:
        """Stop submitting: every later attempt raises :class:`_NotSent` before it is sent,
        and no worker takes another item. The first such error is the one raised."""
        if self.fatal is None:
            self.fatal = error

    async def _not_submitted(
        self, index: int, fp: str, attempt: int, track_id: str | int | None
    ) -> None:
        """Record an item the stopped batch did not submit: a rerun submits it."""
        self.not_submitted += 1
        kind = type(self.fatal).__name__ if self.fatal is not None else "a stop"
        await self._record(
            index=index,
            state="failed",
            fingerprint=fp,
            attempt=attempt,
            track_id=track_id,
            error={"type": NOT_SUBMITTED, "message": f"not submitted: {kind} stopped the batch"},
        )

    @staticmethod
    def _track_id(request: Text2ImgRequest, fp: str, index: int, attempt: int) -> str | int:
        """The track id the item is sent under: the user's, or one derived from the
        fingerprint, the index and the attempt."""
        if request.track_id is not None:
            return request.track_id
        return f"mla-{fp[:20]}-{index}" + (f"-r{attempt}" if attempt else "")

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
            prompt=request.prompt,
            seed=request.seed,
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


def _raw_prompt(raw: RequestLike) -> str | None:
    """The prompt of an input item that is not a valid request, for its failed record."""
    try:
        prompt = raw.get("prompt") if isinstance(raw, Mapping) else raw
    except ModelsLabError:  # an input line that could not be read at all (the CLI's)
        return None
    return prompt if isinstance(prompt, str) else None


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
        self.shield = batch.manifest is not None  # only a recorded job id is worth waiting for

    async def sending(self) -> None:
        if self._batch.fatal is not None:
            raise _NotSent
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


class _NotSent(Exception):
    """Internal: a submit of a batch that stopped submitting, stopped before the wire."""


#: The error type of a ``failed`` record of an item surely not submitted (the run stopped
#: while its submit was not on the wire, or an invalid key or empty credits stopped the
#: batch's submits): a rerun submits it (no charge).
NOT_SUBMITTED = "NotSubmitted"


def _job_not_found(job_id: JobId | None, error: BadRequestError) -> JobNotFoundError:
    return JobNotFoundError(
        f"job {job_id}: the manifest records it, but the API answers {error.api_message!r}; "
        "it was not resubmitted (a new job would be charged again; retry_failed / "
        "--retry-failed submits it again)",
        status_code=error.status_code,
        api_message=error.api_message,
        url=error.url,
        job_id=job_id,
    )


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


def run_batch(
    client: BatchClient,
    requests: Iterable[RequestLike | IndexedRequest] | AsyncIterable[RequestLike | IndexedRequest],
    **options: Unpack[BatchOptions],
) -> AsyncIterator[BatchResult]:
    """The async iterator behind ``Client.generate_many`` (see the module docstring).

    The options are checked now; the work starts at the first iteration and runs in the
    client's task group under its own cancel scope. Leaving the loop cancels it; use
    ``contextlib.aclosing`` to make that happen at the ``break`` itself rather than when
    the iterator is collected.
    """
    return _Batch(client, requests, options).results()
