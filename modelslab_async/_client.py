"""The client: submit, wait, fetch, download, text2img and generate_many."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
)
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import anyio
import anyio.abc
import attrs

from . import _constants as C
from ._convert import coerce_request, request_to_wire
from ._download import Downloader, DownloadPolicy
from ._errors import (
    ClientStateError,
    ConfigurationError,
    GenerationTimeout,
    JobId,
    RequestValidationError,
)
from ._poller import Poller, PollerStats, PollPolicy, _Tracked
from ._redact import mask
from ._transport import RetryPolicy, SubmitWatch, Timeouts, Transport
from ._types import GeneratedImage, Generation, Job, Text2ImgRequest
from ._webhook import WebhookReceiver

if TYPE_CHECKING:
    from ._batch import BatchProgress
    from ._types import BatchResult

MaxInFlight = int | Literal["auto"]


class InFlightLimiter:
    """Caps jobs submitted and not yet resolved; optionally learns the cap (AIMD).

    With ``adaptive=True`` the limit starts at ``initial`` and grows by one for every
    ``limit`` submits accepted in a row (additive increase, about +1 per round of jobs);
    a queue-limit / rate-limit answer halves it (multiplicative decrease, at most once
    per ``cooldown`` seconds, never below 1). ``limit`` is the current value.

    Slots are handed out first come, first served: a submit waits behind earlier ones.
    (A counter and a queue of waiters rather than ``anyio.CapacityLimiter``, whose
    bookkeeping cost more than the rest of a slot's life on a batch's hot path.)
    """

    def __init__(
        self,
        limit: int,
        *,
        adaptive: bool = False,
        maximum: int = 256,
        cooldown: float = 1.0,
    ) -> None:
        self._limit = limit
        self._holders: set[object] = set()
        self._waiters: deque[tuple[object, asyncio.Future[None]]] = deque()
        self.adaptive = adaptive
        self.maximum = maximum
        self.cooldown = cooldown
        self._credit = 0.0
        self._last_decrease = -math.inf
        self.decreases = 0

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def in_flight(self) -> int:
        return len(self._holders)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def try_acquire(self, token: object) -> bool:
        """Take a slot for *token* if one is free and nobody waits for one; else False."""
        if len(self._holders) < self._limit and not self._waiters:
            self._holders.add(token)
            return True
        return False

    async def acquire(self, token: object) -> None:
        """Take a slot for *token*, waiting behind earlier waiters when none is free."""
        if self.try_acquire(token):
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((token, future))
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                self.release(token)  # granted, then cancelled before it could run
            else:
                future.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove((token, future))
            raise

    def release(self, token: object) -> None:
        """Give back *token*'s slot (a no-op when it holds none)."""
        if token in self._holders:
            self._holders.discard(token)
            self._grant()

    def _set_limit(self, limit: int) -> None:
        self._limit = limit
        self._grant()

    def _grant(self) -> None:
        waiters = self._waiters
        while waiters and len(self._holders) < self._limit:
            token, future = waiters.popleft()
            if not future.done():
                self._holders.add(token)
                future.set_result(None)

    def on_accepted(self) -> None:
        if not self.adaptive or self.limit >= self.maximum:
            return
        self._credit += 1.0 / self.limit
        if self._credit >= 1.0:
            self._credit = 0.0
            self._set_limit(min(self.maximum, self.limit + 1))

    def on_rate_limited(self, wait: float) -> None:
        if not self.adaptive:
            return
        now = time.monotonic()
        if now - self._last_decrease < max(self.cooldown, wait):
            return
        self._last_decrease = now
        self._credit = 0.0
        self.decreases += 1
        self._set_limit(max(1, self.limit // 2))


@attrs.frozen
class ClientStats:
    """A snapshot: jobs in flight and waiting for a slot, the current limit, poller state,
    and the calls made (submits, fetches, downloads, retries)."""

    in_flight: int
    waiting_for_slot: int
    in_flight_limit: int
    poller: PollerStats
    calls: Mapping[str, int]
    rate_limit_pauses: int


class Client:
    """An asynchronous ModelsLab text2img client; use it as ``async with Client() as c:``.

    ``api_key`` defaults to ``$MODELSLAB_API_KEY`` and ``base_url`` to
    ``$MODELSLAB_BASE_URL`` or the public API. ``max_in_flight`` caps jobs submitted and
    not yet resolved (what the account's plan limits); ``"auto"`` learns the cap.
    ``timeout`` is a :class:`Timeouts` or a number (the total per request). One poller task
    resolves every processing job (see :class:`PollPolicy`).
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        max_in_flight: MaxInFlight = C.DEFAULT_MAX_IN_FLIGHT,
        max_retries: int = C.DEFAULT_MAX_RETRIES,
        timeout: Timeouts | float | None = None,
        poll: PollPolicy | None = None,
        retry: RetryPolicy | None = None,
        download: DownloadPolicy | None = None,
        retry_ambiguous_submits: bool = False,
        webhook: WebhookReceiver | None = None,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get(C.ENV_API_KEY)
        if not key or not key.strip():
            raise ConfigurationError(
                f"no API key: pass api_key=... or set the {C.ENV_API_KEY} environment variable"
            )
        url = base_url or os.environ.get(C.ENV_BASE_URL) or C.DEFAULT_BASE_URL
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(f"base_url: got {url!r}, allowed an http(s) URL")
        if max_in_flight == "auto":
            limiter = InFlightLimiter(4, adaptive=True)
        elif (
            isinstance(max_in_flight, int)
            and not isinstance(max_in_flight, bool)
            and max_in_flight >= 1
        ):
            limiter = InFlightLimiter(max_in_flight)
        else:
            raise ConfigurationError(
                f"max_in_flight: got {max_in_flight!r}, allowed an integer >= 1 or 'auto'"
            )
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
        self._limiter = limiter
        self._transport = Transport(
            api_key=key,
            base_url=self.base_url,
            timeouts=timeouts,
            retry=retry,
            on_rate_limit=limiter.on_rate_limited,
        )
        self.poll_policy = poll or PollPolicy()
        self._poller = Poller(self._fetch_for_poller, self.poll_policy)
        self._downloader = Downloader(self._transport, download)
        self._finished: OrderedDict[JobId, _Tracked] = OrderedDict()
        self._tg: anyio.abc.TaskGroup | None = None
        self._state: Literal["new", "open", "closed"] = "new"
        self._webhook = webhook

    def __repr__(self) -> str:
        return (
            f"Client(base_url={self.base_url!r}, api_key={mask(self._transport._key)}, "
            f"max_in_flight={self._limiter.limit}{' (auto)' if self._limiter.adaptive else ''})"
        )

    # --- lifetime ---------------------------------------------------------------------------

    async def __aenter__(self) -> Client:
        if self._state != "new":
            raise ClientStateError(f"a client can be entered once (it is {self._state})")
        await self._transport.__aenter__()
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        self._state = "open"
        try:
            await tg.start(self._poller.run)
        except BaseException as exc:
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        tg, self._tg = self._tg, None
        self._state = "closed"
        try:
            if tg is not None:
                tg.cancel_scope.cancel()
                # Not *exc_info: the body's own exception must propagate as itself, not
                # wrapped in an ExceptionGroup by the task group.
                await tg.__aexit__(None, None, None)
        finally:
            await self._transport.__aexit__(*exc_info)
        return None

    def _check_open(self) -> None:
        if self._state != "open":
            raise ClientStateError(
                "the client is not open: use it inside `async with Client(...) as client:`"
                if self._state == "new"
                else "the client is closed"
            )

    # --- properties -------------------------------------------------------------------------

    @property
    def in_flight_limit(self) -> int:
        """The current cap on jobs in flight (learned when ``max_in_flight="auto"``)."""
        return self._limiter.limit

    def statistics(self) -> ClientStats:
        """Counters for progress bars and benchmarks."""
        return ClientStats(
            in_flight=self._limiter.in_flight,
            waiting_for_slot=self._limiter.waiting,
            in_flight_limit=self._limiter.limit,
            poller=self._poller.statistics(),
            calls=dict(self._transport.counters),
            rate_limit_pauses=self._transport.gate.pauses,
        )

    # --- the API ----------------------------------------------------------------------------

    async def submit(
        self, request: Text2ImgRequest | Mapping[str, Any] | None = None, /, **fields: Any
    ) -> Job | Generation:
        """Submit one request: a :class:`Job` (processing) or a finished :class:`Generation`.

        Waits for an in-flight slot first; the slot is held until the job resolves. A
        processing job is tracked by the poller from here on. Raises
        :class:`RequestValidationError` before any network call on bad input.
        """
        req = coerce_request(request, fields)
        return await self._submit(req)

    async def _submit(
        self,
        req: Text2ImgRequest,
        *,
        webhook: WebhookReceiver | None = None,
        watch: SubmitWatch | None = None,
        wire: dict[str, Any] | None = None,
        job_meta: bool = True,
    ) -> Job | Generation:
        """*wire*, when given, is ``request_to_wire(req)`` already made by the caller;
        ``job_meta=False``: the caller never shows the :class:`Job`, so its ``meta`` is not
        built (``generate_many``: only the finished generation, with its own meta, is)."""
        self._check_open()
        if wire is None:
            wire = request_to_wire(req)
        receiver = webhook if webhook is not None else self._webhook
        if receiver is not None and req.webhook is None:
            track_id = req.track_id if req.track_id is not None else f"mla-{uuid.uuid4().hex}"
            req = attrs.evolve(req, webhook=receiver.url, track_id=track_id)
            wire = {**wire, "webhook": receiver.url, "track_id": track_id}
            receiver.pending(track_id)
        else:
            receiver = None
        token = object()
        if not self._limiter.try_acquire(token):  # (no coroutine when a slot is free)
            await self._limiter.acquire(token)
        try:
            answer = await self._transport.submit(req, wire, watch=watch, job_meta=job_meta)
        except BaseException:
            self._limiter.release(token)
            if receiver is not None:
                receiver.forget(req.track_id or "")
            raise
        self._limiter.on_accepted()
        if isinstance(answer, Generation):
            self._limiter.release(token)
            if receiver is not None:
                receiver.forget(req.track_id or "")
            return answer
        first_check = None
        if receiver is not None:
            first_check = max(0.0, answer.eta) + self.poll_policy.webhook_grace
        self._poller.track(
            answer,
            on_resolved=self._releaser(token, receiver, req.track_id),
            first_check=first_check,
        )
        if receiver is not None and req.track_id is not None:
            # (A partial: a lambda here would make a cell of self on every submit.)
            receiver.expect(req.track_id, functools.partial(self._poller.wake, answer.id))
        return answer

    def _releaser(
        self, token: object, receiver: WebhookReceiver | None, track_id: str | int | None
    ) -> Callable[[_Tracked], None]:
        # A partial, not a closure: one object per job instead of a function and its cells.
        return functools.partial(self._release, token, receiver, track_id)

    def _release(
        self,
        token: object,
        receiver: WebhookReceiver | None,
        track_id: str | int | None,
        entry: _Tracked,
    ) -> None:
        self._limiter.release(token)
        if receiver is not None and track_id is not None:
            receiver.forget(track_id)
        self._keep_finished(entry)

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
        self._check_open()
        assert self._tg is not None
        receiver = WebhookReceiver()
        await receiver.serve(self._tg, host=host, port=port, path=path, public_url=public_url)
        self._webhook = receiver
        return receiver

    def _keep_finished(self, entry: _Tracked) -> None:
        if entry.resolved and entry.waiters == 0:
            self._finished[entry.job_id] = entry
            while len(self._finished) > 4096:
                self._finished.popitem(last=False)

    async def wait(self, job: Job | Generation, *, timeout: float | None = None) -> Generation:
        """Wait until *job* resolves; a :class:`Generation` is returned as is.

        Raises :class:`GenerationFailed` if the job failed and :class:`GenerationTimeout`
        after *timeout* seconds (the job goes on and can be fetched later by id).
        Cancelling one waiter leaves every other job alone.
        """
        self._check_open()
        if isinstance(job, Generation):
            return job
        done = self._finished.pop(job.id, None)
        entry = done or self._poller._tracked.get(job.id) or self._poller.track(job)
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
            self._poller.track(answer, on_resolved=self._keep_finished)
        elif request is not None:
            answer = attrs.evolve(answer, request=request)
        return answer

    async def download(
        self, generation: Generation, dest: str | os.PathLike[str] | None = None
    ) -> list[GeneratedImage]:
        """Download (or base64-decode) every image of *generation*.

        With *dest*, files ``{job_id}-{n}.{ext}`` are written atomically there and each
        image has ``path``; without, each image holds its bytes in ``data``. Raises
        :class:`DownloadError` when an image cannot be had.
        """
        self._check_open()
        return await self._downloader.download(generation, dest)

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
        requests: Iterable[Text2ImgRequest | Mapping[str, Any] | str | tuple[int, Any]]
        | AsyncIterable[Text2ImgRequest | Mapping[str, Any] | str | tuple[int, Any]],
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
        """Generate many requests concurrently; yields a :class:`BatchResult` per item as it
        completes (not in input order: ``result.index`` is the input position).

        *requests*: any iterable or async iterable of requests, field mappings or prompt
        strings, read lazily (an item is taken only when a slot is free). *dest*: folder
        for the images (None: bytes in ``result.generation.images``). *manifest*: a JSONL
        file; rerunning with it skips done items, resumes submitted ones by job id and
        retries failed ones only with *retry_failed*. *max_in_flight*: items in progress
        (default: the client's limit plus room for downloads). *on_progress*: called with
        a :class:`BatchProgress` on every change. *max_resubmits*: resubmissions of a job
        that failed with the API's transient "Failed, Try Again". *webhook*: a
        :class:`WebhookReceiver` to be told when jobs finish. *indexed*: each item is an
        ``(index, request)`` pair, and results and manifest records carry that index
        instead of the item's position (indices unique, >= 0, gaps allowed): a caller that
        resumes part of a larger job, such as a dataset skipping its finished shards,
        feeds only the items it still needs under their own indices.

        One item's failure is reported on its result and never stops the batch. Leaving
        the loop early cancels the rest; wrap the call in ``contextlib.aclosing`` for that
        to happen at once.
        """
        from ._batch import run_batch

        return run_batch(
            self,
            requests,
            dest=dest,
            manifest=manifest,
            max_in_flight=max_in_flight,
            on_progress=on_progress,
            retry_failed=retry_failed,
            max_resubmits=max_resubmits,
            webhook=webhook,
            indexed=indexed,
        )

    # --- internals --------------------------------------------------------------------------

    def _fetch_for_poller(self, job_id: JobId, job: Job) -> Awaitable[Job | Generation]:
        return self._transport.fetch(job_id, job.request)

    @property
    def transport(self) -> Transport:
        return self._transport

    @property
    def limiter(self) -> InFlightLimiter:
        return self._limiter

    @property
    def poller(self) -> Poller:
        return self._poller


__all__ = ["Client", "ClientStats", "InFlightLimiter"]
