"""The client: submit, wait, fetch, download, text2img and generate_many."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import anyio
import anyio.abc
import attrs

from . import _constants as C
from ._batch import BatchOptions, IndexedRequest, RequestLike, run_batch
from ._convert import coerce_request, request_to_wire
from ._download import Downloader, DownloadPolicy
from ._errors import (
    ClientStateError,
    ConfigurationError,
    GenerationTimeout,
    JobId,
    RateLimitError,
    RequestValidationError,
)
from ._poller import Poller, PollerStats, PollPolicy, _Tracked
from ._redact import Secret, mask
from ._slots import AdaptiveLimit, Lease, LocalSlots, Slots
from ._transport import RetryPolicy, SubmitWatch, Timeouts, Transport, is_testing
from ._types import BatchResult, GeneratedImage, Generation, Job, Text2ImgRequest
from ._webhook import WebhookReceiver

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["Client", "ClientStats", "MaxInFlight"]

log = logging.getLogger("modelslab_async")

MaxInFlight = int | Literal["auto"]


@attrs.frozen
class ClientStats:
    """A snapshot: jobs in flight and waiting for a slot, the current limit (from the
    client's :class:`Slots`), poller state, and the calls made (submits, fetches,
    downloads, retries)."""

    in_flight: int
    waiting_for_slot: int
    in_flight_limit: int
    poller: PollerStats
    calls: Mapping[str, int]
    rate_limit_pauses: int


def _timeout(value: float | None) -> float | None:
    """*value* if it is None or a finite number of seconds > 0 (a NaN deadline never
    passes, and a negative one has passed already); else a ConfigurationError naming it."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(
            f"timeout: got {value!r}, allowed a finite number of seconds > 0 or None"
        )
    return float(value)


def _slots_for(max_in_flight: MaxInFlight | None, slots: Slots | None) -> Slots:
    """The client's slots: *slots*, or in-process slots sized by *max_in_flight*."""
    if slots is not None:
        if not isinstance(slots, Slots):
            raise ConfigurationError(
                f"slots: got a {type(slots).__name__}, allowed a Slots object "
                "(LocalSlots, RedisSlots, RaySlots) or None"
            )
        if max_in_flight not in (None, "auto"):
            raise ConfigurationError(
                f"max_in_flight: got {max_in_flight!r} together with slots, allowed None or "
                "'auto' (the limit is the slots' own: set it where they are made)"
            )
        return slots
    if max_in_flight is None:
        return LocalSlots(C.DEFAULT_MAX_IN_FLIGHT)
    if max_in_flight == "auto":
        return LocalSlots(C.AUTO_INITIAL_IN_FLIGHT)
    if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or max_in_flight < 1:
        raise ConfigurationError(
            f"max_in_flight: got {max_in_flight!r}, allowed an integer >= 1 or 'auto'"
        )
    return LocalSlots(max_in_flight)


class Client:
    """An asynchronous ModelsLab text2img client; use it as ``async with Client() as c:``.

    ``api_key`` defaults to ``$MODELSLAB_API_KEY`` and ``base_url`` to
    ``$MODELSLAB_BASE_URL`` or the public API. Every job holds one of the account's
    queue *slots* from its submit until it resolves: ``max_in_flight`` sizes in-process
    slots (default 8; ``"auto"`` learns the limit from rate-limit answers), and ``slots``
    shares them with other processes instead (:class:`Slots`). ``timeout`` is a
    :class:`Timeouts` or a number (the total per request). One poller task resolves
    every processing job (see :class:`PollPolicy`).
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        max_in_flight: MaxInFlight | None = None,
        slots: Slots | None = None,
        max_retries: int = C.DEFAULT_MAX_RETRIES,
        timeout: Timeouts | float | None = None,
        poll: PollPolicy | None = None,
        retry: RetryPolicy | None = None,
        download: DownloadPolicy | None = None,
        retry_ambiguous_submits: bool = False,
        webhook: WebhookReceiver | None = None,
    ) -> None:
        # Only the masked key stays a local of this frame (tracebacks capture locals).
        api_key = key = Secret(
            api_key if api_key is not None else os.environ.get(C.ENV_API_KEY, "")
        )
        if not key or not key.strip():
            raise ConfigurationError(
                f"no API key: pass api_key=... or set the {C.ENV_API_KEY} environment variable"
            )
        url = base_url or os.environ.get(C.ENV_BASE_URL) or C.DEFAULT_BASE_URL
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(f"base_url: got {url!r}, allowed an http(s) URL")
        self._slots = _slots_for(max_in_flight, slots)
        self._auto = AdaptiveLimit(self._slots) if max_in_flight == "auto" else None
        if isinstance(timeout, int | float) and not isinstance(timeout, bool):
            timeouts = Timeouts(total=float(timeout))
        elif timeout is None or isinstance(timeout, Timeouts):
            timeouts = timeout or Timeouts()
        else:
            raise ConfigurationError(f"timeout: got {timeout!r}, allowed a number or Timeouts")
        retry = retry or RetryPolicy(max_retries=max_retries)
        if retry_ambiguous_submits:
            retry = attrs.evolve(retry, retry_ambiguous_submits=True)
        self.base_url = url.rstrip("/")
        self._transport = Transport(
            api_key=key,
            base_url=self.base_url,
            timeouts=timeouts,
            retry=retry,
            on_rate_limit=self._on_rate_limit,
            queue_limits_to_caller=True,
        )
        self.poll_policy = poll or PollPolicy()
        self._poller = Poller(
            self._fetch_for_poller,
            self.poll_policy,
            busy=lambda: self._slots.statistics().waiting > 0,
        )
        self._downloader = Downloader(self._transport, download)
        self._leases: set[Lease] = set()
        self._finished: OrderedDict[JobId, _Tracked] = OrderedDict()
        self._state: Literal["new", "open", "closed"] = "new"
        self._tg: anyio.abc.TaskGroup | None = None
        self._exit: contextlib.AsyncExitStack | None = None
        self._webhook = webhook

    def __repr__(self) -> str:
        if "_transport" not in vars(self):  # __init__ raised (a traceback reporter asks)
            return "Client(<not constructed>)"
        shared = (
            "" if isinstance(self._slots, LocalSlots) else f", slots={type(self._slots).__name__}"
        )
        return (
            f"Client(base_url={self.base_url!r}, api_key={mask(self._transport._key)}, "
            f"max_in_flight={self._slots.limit}{' (auto)' if self._auto else ''}{shared})"
        )

    # --- lifetime ---------------------------------------------------------------------------

    async def __aenter__(self) -> Client:
        """Open the HTTP session and the slots, start the poller (and the lease renewal)."""
        if self._state != "new":
            raise ClientStateError(f"a client can be entered once (it is {self._state})")
        self._state = "open"
        try:
            async with contextlib.AsyncExitStack() as stack:
                await stack.enter_async_context(self._transport)
                await stack.enter_async_context(self._slots)
                tg = await stack.enter_async_context(anyio.create_task_group())
                stack.callback(tg.cancel_scope.cancel)  # closing stops the tasks first
                self._tg = tg
                await tg.start(self._poller.run)
                interval = self._slots.renew_interval
                if interval is not None:
                    tg.start_soon(self._renew_leases, interval)
                self._exit = stack.pop_all()
        except BaseException:
            self._state, self._tg = "closed", None
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop the poller (a ``wait`` still pending raises :class:`ClientStateError`),
        then close the slots and the HTTP session."""
        self._state, self._tg = "closed", None
        stack, self._exit = self._exit, None
        if stack is not None:
            # Not exc_info: the body's own exception must propagate as itself, not wrapped
            # in an ExceptionGroup by the task group.
            await stack.aclose()

    def _check_open(self) -> None:
        if self._state != "open":
            raise ClientStateError(
                "the client is not open: use it inside `async with Client(...) as client:`"
                if self._state == "new"
                else "the client is closed"
            )

    def _task_group(self) -> anyio.abc.TaskGroup:
        self._check_open()
        assert self._tg is not None  # open: entered
        return self._tg

    # --- properties -------------------------------------------------------------------------

    @property
    def in_flight_limit(self) -> int:
        """The current cap on jobs in flight (learned when ``max_in_flight="auto"``)."""
        return self._slots.limit

    @property
    def slots(self) -> Slots:
        """The slots every job of this client holds one of while it runs."""
        return self._slots

    def statistics(self) -> ClientStats:
        """Counters for progress bars and benchmarks."""
        slots = self._slots.statistics()
        return ClientStats(
            in_flight=slots.held_here,
            waiting_for_slot=slots.waiting,
            in_flight_limit=slots.limit,
            poller=self._poller.statistics(),
            calls=dict(self._transport.counters),
            rate_limit_pauses=self._transport.gate.pauses,
        )

    # --- the API ----------------------------------------------------------------------------

    async def submit(
        self, request: Text2ImgRequest | Mapping[str, Any] | None = None, /, **fields: Any
    ) -> Job | Generation:
        """Submit one request: a :class:`Job` (processing) or a finished :class:`Generation`.

        Waits for a slot first; the slot is held until the job resolves. A processing job
        is tracked by the poller from here on. Raises :class:`RequestValidationError`
        before any network call on bad input.
        """
        return await self._submit(coerce_request(request, fields))

    async def _submit(
        self,
        request: Text2ImgRequest,
        *,
        watch: SubmitWatch | None = None,
        webhook: WebhookReceiver | None = None,
        job_meta: bool = True,
        track_id: str | int | None = None,
    ) -> Job | Generation:
        """:meth:`submit`; *watch* is told about each attempt (the batch's write-ahead
        record), *webhook* overrides the client's receiver, ``job_meta=False`` leaves the
        processing answer's ``meta`` out of the :class:`Job` (for a caller that never
        shows the job), *track_id* (if not None) is sent instead of the request's own."""
        self._check_open()
        lease = await self._acquire()
        holding = True  # False while a refused submit queues for its next slot
        receiver = webhook if webhook is not None else self._webhook
        if receiver is None or request.webhook is not None:
            receiver = None
        try:
            self._check_open()  # it may have closed while this submit waited for a slot
            if track_id is None:
                track_id = request.track_id
            if receiver is not None:
                if track_id is None:
                    track_id = f"mla-{uuid.uuid4().hex}"
                request = attrs.evolve(request, webhook=receiver.url, track_id=track_id)
                receiver.pending(track_id)
            wire = request_to_wire(request)
            wire["track_id"] = track_id  # the request's own, or the one given
            waited = 0.0
            while True:
                try:
                    answer = await self._transport.submit(
                        request, wire, watch=watch, job_meta=job_meta
                    )
                    break
                except RateLimitError as exc:
                    if exc.queue_limit is None:
                        raise
                    await self._learn_cap(exc.queue_limit)
                    if self._slots.statistics().held - 1 >= exc.queue_limit:
                        # Our own jobs (or those of the processes sharing our slots) fill
                        # the account's cap: give the slot back and queue for the next one
                        # that frees, instead of sleeping through the advised retry_after.
                        # (Bounded, like every rate-limit wait, by rate_limit_patience.)
                        patience = self._transport.retry.rate_limit_patience - waited
                        holding = False
                        await self._release(lease)
                        started = time.monotonic()
                        with anyio.move_on_after(patience):
                            lease = await self._acquire()
                            holding = True
                        if not holding:
                            raise
                        waited += time.monotonic() - started
                        self._check_open()
                    else:
                        # Someone outside our slots holds part of the cap: the advised wait.
                        waited = await self._queue_wait(exc, waited)
        except BaseException:
            if holding:
                with anyio.CancelScope(shield=True):
                    await self._release(lease)
            if receiver is not None and track_id is not None:
                receiver.forget(track_id)
            raise
        if self._auto is not None:
            await self._auto.accepted()
        if isinstance(answer, Generation):
            await self._release(lease)
            if receiver is not None and track_id is not None:
                receiver.forget(track_id)
            return answer
        first_check = None
        if receiver is not None:
            first_check = max(0.0, answer.eta) + self.poll_policy.webhook_grace
        self._poller.track(
            answer,
            on_resolved=functools.partial(self._job_resolved, lease, receiver, track_id),
            first_check=first_check,
        )
        if receiver is not None and track_id is not None:
            receiver.expect(track_id, functools.partial(self._poller.wake, answer.id))
        return answer

    async def _job_resolved(
        self,
        lease: Lease,
        receiver: WebhookReceiver | None,
        track_id: str | int | None,
        entry: _Tracked,
    ) -> None:
        """A submitted job resolved (or nobody waits for it any more): free its slot."""
        if receiver is not None and track_id is not None:
            receiver.forget(track_id)
        self._keep_finished(entry)
        await self._release(lease)

    async def _acquire(self) -> Lease:
        lease = await self._slots.acquire()
        self._leases.add(lease)
        return lease

    async def _learn_cap(self, cap: int) -> None:
        """The API named the account's queue cap: ``"auto"`` sets the limit to it; a
        limit above it is lowered to it (more can never be held)."""
        if self._auto is not None:
            await self._auto.cap_named(cap)
        elif self._slots.limit > cap:
            log.info(
                "the account allows %d unfinished jobs: limit %d -> %d", cap, self._slots.limit, cap
            )
            try:
                await self._slots.set_limit(cap)
            except Exception as exc:
                log.warning("could not set the limit to the account's cap %d: %s", cap, exc)

    async def _queue_wait(self, error: RateLimitError, waited: float) -> float:
        """Sleep the queue-limit answer's ``retry_after`` (bounded like every rate-limit
        wait by the retry policy); the total waited so far, or *error* past the patience."""
        retry = self._transport.retry
        wait = error.retry_after if error.retry_after is not None else C.DEFAULT_RETRY_AFTER
        wait = 0.0 if is_testing() else min(wait, retry.max_retry_after)
        if waited + wait > retry.rate_limit_patience:
            raise error
        log.debug(
            "queue cap reached with %d slots held here: retry in %.1fs",
            self._slots.statistics().held_here,
            wait,
        )
        await anyio.sleep(wait)
        return waited + wait

    async def _release(self, lease: Lease) -> None:
        self._leases.discard(lease)
        try:
            await self._slots.release(lease)
        except Exception as exc:  # the slot comes back when its lease expires
            log.warning("could not release a slot: %s", exc)

    async def _renew_leases(self, interval: float) -> None:
        """Renew the leases of every job in flight each *interval* seconds, so that slots
        shared with other processes stay ours while our jobs run."""
        while True:
            await anyio.sleep(interval)
            if self._leases:
                try:
                    await self._slots.renew(tuple(self._leases))
                except Exception as exc:
                    log.warning("could not renew %d slot leases: %s", len(self._leases), exc)

    def _on_rate_limit(self, retry_after: float) -> None:
        """A submit was refused for a rate or queue limit: a learned limit backs off."""
        if self._auto is not None and self._tg is not None:
            self._tg.start_soon(self._auto.rate_limited, retry_after)

    async def webhooks(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        public_url: str | None = None,
        *,
        path: str = "/modelslab/webhook",
    ) -> WebhookReceiver:
        """Serve a :class:`WebhookReceiver` in the client's task group and use it.

        The server listens on *host*:*port* (0: any free port) and lives as long as the
        client; *public_url* is where the API can reach it (default: the local URL).
        Every later submit of this client sends ``webhook`` and a unique ``track_id``.
        """
        tg = self._task_group()
        receiver = WebhookReceiver()
        await receiver.serve(tg, host=host, port=port, path=path, public_url=public_url)
        self._webhook = receiver
        return receiver

    def _keep_finished(self, entry: _Tracked) -> None:
        """Remember a resolved job nobody waited for, for a later :meth:`wait`."""
        if entry.resolved and entry.waiters == 0:
            self._finished[entry.job_id] = entry
            while len(self._finished) > C.FINISHED_JOBS_KEPT:
                self._finished.popitem(last=False)

    async def _remember(self, entry: _Tracked) -> None:
        self._keep_finished(entry)

    async def wait(self, job: Job | Generation, *, timeout: float | None = None) -> Generation:
        """Wait until *job* resolves; a :class:`Generation` is returned as is.

        Raises :class:`GenerationFailed` if the job failed, :class:`GenerationTimeout`
        after *timeout* seconds (the job goes on and can be fetched later by id), and
        :class:`ClientStateError` if the client closes first. Cancelling one waiter leaves
        every other job alone.
        """
        timeout = _timeout(timeout)
        self._check_open()
        if isinstance(job, Generation):
            return job
        entry = self._finished.pop(job.id, None) or self._poller.track(job)
        return await self._poller.wait(entry, timeout)

    async def fetch(self, job_id: JobId) -> Job | Generation:
        """One fetch call for *job_id*, no waiting: its current :class:`Job` or result."""
        self._check_open()
        if job_id is None or job_id == "":
            raise RequestValidationError("job_id", job_id, "a non-empty job id")
        return await self._transport.fetch(job_id)

    async def resume(
        self, job_id: JobId, *, request: Text2ImgRequest | None = None
    ) -> Job | Generation:
        """Pick up a job started elsewhere (or in a previous run) by id: one fetch, then the
        job is tracked by the poller like a fresh submit (nothing is resubmitted)."""
        answer = await self.fetch(job_id)
        if isinstance(answer, Job):
            answer = attrs.evolve(answer, request=request)
            self._poller.track(answer, on_resolved=self._remember)
        elif request is not None:
            answer = attrs.evolve(answer, request=request)
        return answer

    async def download(
        self,
        generation: Generation,
        dest: str | os.PathLike[str] | None = None,
        *,
        fsync: bool = True,
    ) -> list[GeneratedImage]:
        """Download (or base64-decode) every image of *generation*.

        With *dest*, files ``{job_id}-{n}.{ext}`` are written atomically there and each
        image has ``path``; without, each image holds its bytes in ``data``. Each file is
        fsynced before it is renamed into place, so that what is recorded after it (a
        manifest line) survives a crash of the machine with it; ``fsync=False`` leaves that
        out, for scratch files that are made durable some other way. Raises
        :class:`DownloadError` when an image cannot be had.
        """
        self._check_open()
        return await self._downloader.download(generation, dest, fsync=fsync)

    async def text2img(
        self,
        request: Text2ImgRequest | Mapping[str, Any] | None = None,
        /,
        *,
        dest: str | os.PathLike[str] | None = None,
        timeout: float | None = None,
        **fields: Any,
    ) -> Generation:
        """Submit, wait and download in one call; the result's ``images`` are filled.

        *timeout* bounds the whole call (raises :class:`GenerationTimeout` with the job id
        when the job was submitted).
        """
        timeout = _timeout(timeout)
        req = coerce_request(request, fields)
        started = time.monotonic()
        job_id: JobId | None = None
        try:
            with anyio.fail_after(timeout):
                answer = await self._submit(req)
                if isinstance(answer, Job):
                    job_id = answer.id
                gen = await self.wait(answer)
                images = await self.download(gen, dest)
        except TimeoutError as exc:
            if isinstance(exc, GenerationTimeout):
                raise
            raise GenerationTimeout(
                job_id if job_id is not None else "(not submitted)", time.monotonic() - started
            ) from None
        return attrs.evolve(gen, images=tuple(images))

    def generate_many(
        self,
        requests: Iterable[RequestLike | IndexedRequest]
        | AsyncIterable[RequestLike | IndexedRequest],
        **options: Unpack[BatchOptions],
    ) -> AsyncIterator[BatchResult]:
        """Generate many requests concurrently; yields a :class:`BatchResult` per item as it
        completes (not in input order: ``result.index`` is the input position).

        *requests*: any iterable or async iterable of requests, field mappings or prompt
        strings, read lazily (an item is taken only when a slot is free). *options*: see
        :class:`BatchOptions` (``dest``, ``manifest``, ``max_in_flight``, ``on_progress``,
        ``retry_failed``, ``max_resubmits``, ``webhook``, ``indexed``: items as ``(index,
        request)`` pairs); they are checked at this call.

        One item's failure is reported on its result and never stops the batch. Leaving
        the loop early cancels the rest; wrap the call in ``contextlib.aclosing`` for that
        to happen at once.
        """
        return run_batch(_BatchView(self), requests, **options)

    # --- internals --------------------------------------------------------------------------

    async def _fetch_for_poller(self, job_id: JobId, job: Job) -> Job | Generation:
        return await self._transport.fetch(job_id, job.request)

    @property
    def transport(self) -> Transport:
        return self._transport

    @property
    def poller(self) -> Poller:
        return self._poller


class _BatchView:
    """The client as the batch engine sees it (:class:`~._batch.BatchClient`)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    @property
    def in_flight_limit(self) -> int:
        return self._client.in_flight_limit

    @property
    def learns_limit(self) -> bool:
        return self._client._auto is not None

    @property
    def retry_ambiguous_submits(self) -> bool:
        return self._client._transport.retry.retry_ambiguous_submits

    def task_group(self) -> anyio.abc.TaskGroup:
        return self._client._task_group()

    async def submit(
        self,
        request: Text2ImgRequest,
        *,
        watch: SubmitWatch | None,
        webhook: WebhookReceiver | None,
        track_id: str | int | None,
    ) -> Job | Generation:
        # The batch yields the finished generation (with its own meta), never the Job.
        return await self._client._submit(
            request, watch=watch, webhook=webhook, job_meta=False, track_id=track_id
        )

    async def wait(self, job: Job | Generation) -> Generation:
        return await self._client.wait(job)

    async def resume(self, job_id: JobId, *, request: Text2ImgRequest) -> Job | Generation:
        return await self._client.resume(job_id, request=request)

    async def download(
        self, generation: Generation, dest: Path | None, *, fsync: bool
    ) -> list[GeneratedImage]:
        return await self._client.download(generation, dest, fsync=fsync)
