"""HTTP transport: one aiohttp session per client, timeouts, retries, rate-limit pacing.

Retry rules (README.md, "Retries and duplicate charges"), a table in :func:`retry_decision`:

==========================  ==============  =================================
outcome                     fetch/download  submit
==========================  ==============  =================================
connection refused/connect  retry           retry (never reached the server)
429 / API rate-limit answer retry after     retry after Retry-After, pausing
                            Retry-After     every submit of the client
503                         retry           retry (refused before processing)
other 5xx                   retry           no: ServerError (may have run)
reset / read timeout        retry           no: AmbiguousSubmitError
HTML / malformed JSON       retry           no (the server may have run it)
401/403, API errors         no              no
==========================  ==============  =================================

Backoff is exponential with full jitter: ``uniform(0, min(max_wait, initial * base**n))``
for retry ``n`` (0-based); a ``Retry-After`` (header or ``retry_after`` in the body) sets
the wait instead, capped at ``max_retry_after``. Rate-limit waits do not use up
``max_retries``: they are bounded by ``rate_limit_patience`` seconds in all.

Why no retry library (stamina, tenacity): the core dependencies are limited to aiohttp,
attrs, cattrs and anyio, and what needs care here is not the backoff arithmetic (one
line) but the per-outcome decision, which depends on whether the request's bytes may
have reached a GPU and feeds a client-wide pause; a library would wrap only the line.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, Literal, TypeVar

import aiohttp
import anyio
import attrs

from . import _constants as C
from ._convert import parse_answer
from ._errors import (
    AmbiguousSubmitError,
    APIError,
    AuthenticationError,
    ClientStateError,
    ConfigurationError,
    GenerationFailed,
    JobId,
    ModelsLabError,
    RateLimitError,
    ResponseFormatError,
    ServerError,
    TransportError,
)
from ._redact import mask, register_secret, unregister_secret
from ._types import Generation, Job, Text2ImgRequest
from ._version import __version__

log = logging.getLogger("modelslab_async")

T = TypeVar("T")
Operation = Literal["submit", "fetch", "download"]

_testing = False


def set_testing(enabled: bool = True) -> None:
    """Turn every retry wait into zero (for users' own test suites), or back on."""
    global _testing
    _testing = enabled


def is_testing() -> bool:
    """True while :func:`set_testing` is on."""
    return _testing


@attrs.frozen(kw_only=True)
class Timeouts:
    """Per-request timeouts in seconds: ``connect`` (TCP + TLS), ``read`` (between bytes
    of the answer), ``total`` (one attempt, whole). None disables one.

    An API answer is a few kB that arrives in one piece, so for submit and fetch calls
    ``read`` bounds the whole call, like ``total`` (the smaller wins): aiohttp's per-packet
    read timer costs about a third of the CPU of such a call. Image downloads stream, and
    get ``read`` between chunks.
    """

    connect: float | None = C.DEFAULT_CONNECT_TIMEOUT
    read: float | None = C.DEFAULT_READ_TIMEOUT
    total: float | None = C.DEFAULT_TOTAL_TIMEOUT

    def to_aiohttp(self) -> aiohttp.ClientTimeout:
        """The timeouts of an API call (submit, fetch)."""
        bounds = [t for t in (self.total, self.read) if t is not None]
        return aiohttp.ClientTimeout(
            total=min(bounds) if bounds else None, sock_connect=self.connect
        )

    def for_download(self) -> aiohttp.ClientTimeout:
        """The timeouts of an image download."""
        return aiohttp.ClientTimeout(
            total=self.total, sock_connect=self.connect, sock_read=self.read
        )


def _check_non_negative(inst: Any, attr: attrs.Attribute[Any], value: float) -> None:
    if not isinstance(value, int | float) or value < 0 or math.isnan(value):
        raise ConfigurationError(f"{attr.name}: got {value!r}, allowed a number >= 0")


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How failed requests are retried (see the module docstring for which are).

    ``max_retries`` retries after the first attempt; waits grow as
    ``initial * exp_base**n`` up to ``max_wait``, with full jitter. ``Retry-After`` is
    honoured up to ``max_retry_after``. ``rate_limit_patience`` bounds the total time
    spent waiting out rate limits. ``retry_ambiguous_submits`` opts into resubmitting when
    a submit's answer was lost after it was sent (a possible duplicate charge).
    """

    max_retries: int = attrs.field(default=C.DEFAULT_MAX_RETRIES, validator=_check_non_negative)
    initial: float = attrs.field(default=C.DEFAULT_BACKOFF_INITIAL, validator=_check_non_negative)
    max_wait: float = attrs.field(default=C.DEFAULT_BACKOFF_MAX, validator=_check_non_negative)
    exp_base: float = attrs.field(default=2.0, validator=_check_non_negative)
    jitter: bool = True
    max_retry_after: float = attrs.field(default=C.MAX_RETRY_AFTER, validator=_check_non_negative)
    rate_limit_patience: float = attrs.field(default=900.0, validator=_check_non_negative)
    retry_ambiguous_submits: bool = False

    def backoff(self, retry: int) -> float:
        """The wait before retry number *retry* (0-based)."""
        if _testing:
            return 0.0
        ceiling = min(self.max_wait, self.initial * self.exp_base**retry)
        return random.uniform(0, ceiling) if self.jitter else ceiling


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


@attrs.frozen
class _Outcome:
    """What one attempt produced, for the retry decision."""

    error: ModelsLabError
    sent: bool  # the request's bytes may have reached the server
    retry_after: float | None = None


def retry_decision(op: Operation, outcome: _Outcome, policy: RetryPolicy) -> bool:
    """Whether to retry *op* after *outcome* (the decision table of the module docstring)."""
    err = outcome.error
    if isinstance(err, RateLimitError):
        log.debug("%s: rate limited -> retry after the advised wait", op)
        return True
    if isinstance(err, AuthenticationError | GenerationFailed):
        log.debug("%s: %s -> no retry", op, type(err).__name__)
        return False
    if isinstance(err, ServerError) and err.status_code == 503:
        log.debug("%s: 503 (refused before processing) -> retry", op)
        return True
    if op != "submit":
        retry = isinstance(err, ServerError | TransportError | ResponseFormatError)
        log.debug("%s: %s -> %s", op, type(err).__name__, "retry" if retry else "no retry")
        return retry
    if isinstance(err, TransportError) and not outcome.sent:
        log.debug("submit: not sent (%s) -> retry", err.kind)
        return True
    if (
        outcome.sent
        and policy.retry_ambiguous_submits
        and isinstance(err, TransportError | ServerError | ResponseFormatError)
    ):
        log.debug("submit: ambiguous failure, retry_ambiguous_submits=True -> retry")
        return True
    log.debug("submit: %s after sending -> no retry (duplicate charge risk)", type(err).__name__)
    return False


class SubmitWatch:
    """Hooks around the attempts of one submit (the batch's write-ahead records)."""

    async def sending(self) -> None:
        """Called right before an attempt goes on the wire."""

    def refused(self) -> None:
        """Called after an attempt that surely created no job (not sent, 429, 503)."""


def _surely_not_created(outcome: _Outcome) -> bool:
    err = outcome.error
    if not outcome.sent or isinstance(err, RateLimitError):
        return True
    return isinstance(err, ServerError) and err.status_code == 503


class RateLimitGate:
    """A client-wide pause: a rate-limit answer holds back every submit until it expires."""

    def __init__(self) -> None:
        self._until = 0.0
        self.pauses = 0

    def pause(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        if until > self._until:
            self._until = until
            self.pauses += 1

    @property
    def remaining(self) -> float:
        return max(0.0, self._until - time.monotonic())

    async def wait(self) -> None:
        # The deadline can move later while we sleep, so re-check after each sleep.
        while (left := self.remaining) > 0:  # noqa: ASYNC110
            await anyio.sleep(left)


class Transport:
    """The client's HTTP layer: opens one ``aiohttp.ClientSession`` in ``__aenter__``.

    The key is held here and written only into request bodies; ``repr`` masks it.
    """

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        pool_limit: int = C.DEFAULT_POOL_LIMIT,
        pool_limit_per_host: int = C.DEFAULT_POOL_LIMIT_PER_HOST,
        on_rate_limit: Callable[[float], None] | None = None,
    ) -> None:
        self._key = api_key
        self.base_url = base_url.rstrip("/")
        self.timeouts = timeouts or Timeouts()
        self.retry = retry or RetryPolicy()
        self.pool_limit = pool_limit
        self.pool_limit_per_host = pool_limit_per_host
        self.gate = RateLimitGate()
        self.on_rate_limit = on_rate_limit
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self.counters: dict[str, int] = {"submit": 0, "fetch": 0, "download": 0, "retries": 0}
        register_secret(api_key)

    def __repr__(self) -> str:
        return f"Transport(base_url={self.base_url!r}, api_key={mask(self._key)})"

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            unregister_secret(self._key)

    async def __aenter__(self) -> Transport:
        if self._session is not None:
            raise ClientStateError("the client is already open")
        if self._closed:
            raise ClientStateError("the client was closed; create a new one")
        connector = aiohttp.TCPConnector(
            limit=self.pool_limit, limit_per_host=self.pool_limit_per_host, ttl_dns_cache=300
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self.timeouts.to_aiohttp(),
            headers={"User-Agent": C.USER_AGENT.format(version=__version__)},
            raise_for_status=False,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        session, self._session = self._session, None
        self._closed = True
        if session is not None:
            with anyio.CancelScope(shield=True):
                await session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        """The open session; outside ``async with`` raises ClientStateError."""
        if self._session is None:
            raise ClientStateError(
                "the client is not open: use it inside `async with Client(...) as client:`"
            )
        return self._session

    # --- API calls ---------------------------------------------------------------------

    def submit(
        self,
        request: Text2ImgRequest,
        wire: Mapping[str, Any],
        *,
        watch: SubmitWatch | None = None,
        job_meta: bool = True,
    ) -> Coroutine[Any, Any, Job | Generation]:
        """POST text2img; retried only where the job surely was not created.

        *watch* is told before each attempt goes on the wire (after any rate-limit pause)
        and after each attempt that surely created no job: the batch records the submit
        ahead, and takes the record back when a stop finds the job surely not created.
        ``job_meta=False`` leaves a processing answer's ``meta`` out of the :class:`Job`
        (for a caller that never shows the job to anyone). (A plain function returning the
        call's coroutine, as :meth:`fetch`.)
        """
        url = self.base_url + C.SUBMIT_PATH
        return self._call("submit", url, wire, request=request, watch=watch, job_meta=job_meta)

    def fetch(
        self, job_id: JobId, request: Text2ImgRequest | None = None
    ) -> Coroutine[Any, Any, Job | Generation]:
        """POST fetch/{id}; idempotent, so retried on any transient failure. (A plain
        function returning the call's coroutine: one frame less on every poll.)"""
        url = self.base_url + C.FETCH_PATH.format(id=job_id)
        return self._call("fetch", url, {}, request=request, job_id=job_id)

    async def _call(
        self,
        op: Literal["submit", "fetch"],
        url: str,
        fields: Mapping[str, Any],
        *,
        request: Text2ImgRequest | None = None,
        job_id: JobId | None = None,
        watch: SubmitWatch | None = None,
        job_meta: bool = True,
    ) -> Job | Generation:
        body = {"key": self._key, **fields}
        if watch is not None:
            attempt = self._attempt(op, url, body, request, job_id, watch, job_meta)
            return await self.with_retries(op, attempt)
        # The usual call: the first attempt without the retry loop's frames (the loop takes
        # over from its failure, with the same policy), and no pause to wait out.
        if op == "submit" and self.gate.remaining > 0:
            await self.gate.wait()
        self.counters[op] += 1
        try:
            return await self._post_once(
                op, url, body, request=request, job_id=job_id, job_meta=job_meta
            )
        except _AttemptFailed as failed:
            attempt = self._attempt(op, url, body, request, job_id, watch, job_meta)
            return await self._retry(op, attempt, failed.outcome)

    def _attempt(
        self,
        op: Literal["submit", "fetch"],
        url: str,
        body: Mapping[str, Any],
        request: Text2ImgRequest | None,
        job_id: JobId | None,
        watch: SubmitWatch | None,
        job_meta: bool,
    ) -> Callable[[], Awaitable[Job | Generation]]:
        """One attempt of a call, for the retry loop. (Made only when needed: the closure's
        cells would otherwise be allocated on every call.)

        A watched submit (the batch's write-ahead record: a manifest will hold the job's
        id) is shielded from cancellation: the job may already exist, and only its answer
        lets a rerun resume it instead of paying for it twice. Bounded by the timeouts.
        Without a watch nothing could record the id, so nothing is gained by finishing.
        """
        shield = watch is not None

        async def attempt() -> Job | Generation:
            if watch is not None:
                await watch.sending()
            self.counters[op] += 1
            try:
                return await self._post_once(
                    op, url, body, request=request, job_id=job_id, job_meta=job_meta, shield=shield
                )
            except _AttemptFailed as failed:
                if watch is not None and _surely_not_created(failed.outcome):
                    watch.refused()
                raise

        return attempt

    async def with_retries(self, op: Operation, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run *attempt* under the retry policy; it raises ``_Attempt`` wrappers or errors."""
        if op == "submit":
            await self.gate.wait()
        try:
            return await attempt()
        except _AttemptFailed as failed:
            return await self._retry(op, attempt, failed.outcome)

    async def _retry(
        self, op: Operation, attempt: Callable[[], Awaitable[T]], outcome: _Outcome
    ) -> T:
        """After a failed first attempt: retry under the policy, or raise its error."""
        retries = 0
        rate_waited = 0.0
        while True:
            if not retry_decision(op, outcome, self.retry):
                raise outcome.error
            if isinstance(outcome.error, RateLimitError):
                wait = (
                    outcome.retry_after
                    if outcome.retry_after is not None
                    else max(C.DEFAULT_RETRY_AFTER, self.retry.backoff(retries))
                )
                wait = min(wait, self.retry.max_retry_after)
                if _testing:
                    wait = 0.0
                if rate_waited + wait > self.retry.rate_limit_patience:
                    raise outcome.error
                rate_waited += wait
                if op == "submit":
                    self.gate.pause(wait)
                    if self.on_rate_limit is not None:
                        self.on_rate_limit(wait)
                    # the gate holds every submit, this one included
                else:
                    await anyio.sleep(wait)
            else:
                if retries >= self.retry.max_retries:
                    raise outcome.error
                delay = self.retry.backoff(retries)
                if outcome.retry_after is not None and not _testing:
                    delay = max(delay, min(outcome.retry_after, self.retry.max_retry_after))
                retries += 1
                self.counters["retries"] += 1
                log.debug(
                    "%s: retry %d in %.2fs after %s",
                    op,
                    retries,
                    delay,
                    type(outcome.error).__name__,
                )
                await anyio.sleep(delay)
            if op == "submit":
                await self.gate.wait()
            try:
                return await attempt()
            except _AttemptFailed as failed:
                outcome = failed.outcome

    async def _post_once(
        self,
        op: Literal["submit", "fetch"],
        url: str,
        body: Mapping[str, Any],
        *,
        request: Text2ImgRequest | None,
        job_id: JobId | None,
        job_meta: bool = True,
        shield: bool = False,
    ) -> Job | Generation:
        if shield:
            with anyio.CancelScope(shield=True):
                return await self._post_once(
                    op, url, body, request=request, job_id=job_id, job_meta=job_meta
                )
        session = self.session
        error: TransportError
        try:
            async with session.post(url, json=body) as resp:
                raw = await resp.read()
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
            header_wait = parse_retry_after(retry_after) if retry_after else None
        except aiohttp.InvalidURL:
            # Nothing was sent: a bad base URL is a configuration error, not a lost submit.
            # (No chained cause: aiohttp's message quotes the URL unredacted.)
            raise ConfigurationError(f"{op}: invalid URL {url!r}") from None
        except aiohttp.ClientConnectorError as exc:
            error = TransportError(
                f"{op}: cannot connect to {url}: {exc.os_error}", url=url, kind="connect"
            )
            raise _AttemptFailed(_Outcome(error, sent=False)) from exc
        except aiohttp.ConnectionTimeoutError as exc:
            error = TransportError(f"{op}: connect timeout to {url}", url=url, kind="connect")
            raise _AttemptFailed(_Outcome(error, sent=False)) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            kind = "timeout" if isinstance(exc, TimeoutError) else "reset"
            what = "timed out" if kind == "timeout" else f"connection failed ({type(exc).__name__})"
            message = f"{op}: {what} after sending to {url}"
            if op == "submit":
                message += (
                    "; the job may have been created, so it was not resubmitted "
                    "(a duplicate would be charged twice)"
                )
                error = AmbiguousSubmitError(message, url=url, kind=kind)
            else:
                error = TransportError(message, url=url, kind=kind)
            raise _AttemptFailed(_Outcome(error, sent=True)) from exc
        if status >= 400 and not _looks_like_json(raw):
            error2 = _http_error(status, raw, url=url, retry_after=header_wait, job_id=job_id)
            raise _AttemptFailed(_Outcome(error2, sent=status != 503, retry_after=header_wait))
        try:
            result = parse_answer(
                raw,
                status_code=status,
                url=url,
                request=request,
                job_id=job_id,
                retry_after=header_wait,
                job_meta=job_meta,
            )
        except RateLimitError as exc:
            raise _AttemptFailed(_Outcome(exc, sent=True, retry_after=exc.retry_after)) from exc
        except (ResponseFormatError, ServerError) as exc:
            raise _AttemptFailed(_Outcome(exc, sent=True, retry_after=header_wait)) from exc
        except APIError as exc:
            if status >= 500:
                raise _AttemptFailed(_Outcome(exc, sent=True, retry_after=header_wait)) from exc
            raise
        if status >= 400:
            # A success/processing body with an error status: trust the body, log the oddity.
            log.debug("%s: HTTP %d with a %s body", op, status, type(result).__name__)
        return result


class _AttemptFailed(Exception):
    """Internal: carries one attempt's outcome to the retry loop."""

    def __init__(self, outcome: _Outcome) -> None:
        super().__init__(str(outcome.error))
        self.outcome = outcome


def _looks_like_json(raw: bytes) -> bool:
    return raw.lstrip()[:1] in (b"{", b"[")


def _http_error(
    status: int,
    raw: bytes,
    *,
    url: str,
    retry_after: float | None,
    job_id: JobId | None,
) -> ModelsLabError:
    """An HTTP error status with a non-JSON body -> its error class."""
    from ._error_map import error_from_answer

    return error_from_answer(
        None, status_code=status, url=url, job_id=job_id, retry_after=retry_after, body=raw
    )


__all__ = [
    "RateLimitGate",
    "RetryPolicy",
    "Timeouts",
    "Transport",
    "is_testing",
    "parse_retry_after",
    "retry_decision",
    "set_testing",
]
