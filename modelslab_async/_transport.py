"""HTTP transport: one aiohttp session per client, timeouts, retries, rate-limit pacing.

Which failures are retried is one table of data, :data:`RETRY_RULES` (the README's retry
table is made from it, and a test holds the two equal). :meth:`Transport.with_retries` is
the one retry loop, for submits, fetches and downloads: it runs an attempt, looks up the
first rule that matches the attempt's outcome, and retries, waits out a rate limit, or
raises.

Backoff is exponential with full jitter: ``uniform(0, min(max_wait, initial * base**n))``
for retry ``n`` (0-based); a ``Retry-After`` (header or ``retry_after`` in the body) sets
the wait instead, capped at ``max_retry_after``. Rate-limit waits do not use up
``max_retries``: they are bounded by ``rate_limit_patience`` seconds in all.

API calls never follow redirects (the key is in the body, which a 307/308 would carry to
the host the answer names): a 3xx answer is a :class:`RedirectError`. An answer larger
than ``MAX_ANSWER_BYTES`` is refused before it is parsed.

Why no retry library (stamina, tenacity): the core dependencies are limited to aiohttp,
attrs, cattrs and anyio, and what needs care here is not the backoff arithmetic (one
line) but the per-outcome decision, which depends on whether the request's bytes may
have reached a GPU and feeds a client-wide pause; a library would wrap only the line.
"""

from __future__ import annotations

import contextlib
import email.utils
import enum
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, TypeVar
from urllib.parse import quote, urlsplit

import aiohttp
import anyio
import attrs
from yarl import URL

from . import _constants as C
from ._convert import parse_answer
from ._errors import (
    AmbiguousSubmitError,
    APIError,
    ClientStateError,
    ConfigurationError,
    InsufficientCreditsError,
    JobId,
    ModelsLabError,
    RateLimitError,
    RedirectError,
    ResponseFormatError,
    ServerError,
    TransportError,
)
from ._redact import Secret, mask, register_secret, unregister_secret
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


# --- checked numbers ----------------------------------------------------------------------


def number(
    *,
    minimum: float = 0.0,
    maximum: float = math.inf,
    above: bool = False,
    integer: bool = False,
    optional: bool = False,
) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    """An attrs validator: a finite number ``>= minimum`` (``> minimum`` with *above*) and
    ``<= maximum``, an ``int`` with *integer*, or None with *optional*. The error names the
    class, the field and the range.

    NaN, infinities and negative values are refused: aiohttp reads a timeout of 0, a
    negative one or NaN as "no timeout", and a NaN wait sleeps forever.
    """
    kind = "an integer" if integer else "a finite number"
    if maximum < math.inf:
        allowed = f"{kind} in {minimum:g}..{maximum:g}"
    else:
        allowed = f"{kind} {'>' if above else '>='} {minimum:g}"
    allowed += " or None" if optional else ""

    def check(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
        if value is None and optional:
            return
        ok = (
            isinstance(value, int if integer else int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
            and (value > minimum if above else value >= minimum)
            and value <= maximum
        )
        if not ok:
            raise ConfigurationError(
                f"{type(inst).__name__}.{attr.name}: got {value!r}, allowed {allowed}"
            )

    return check


def flag(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    """An attrs validator: a ``bool``."""
    if not isinstance(value, bool):
        raise ConfigurationError(
            f"{type(inst).__name__}.{attr.name}: got {value!r}, allowed True or False"
        )


@attrs.frozen(kw_only=True)
class Timeouts:
    """Per-request timeouts in seconds: ``connect`` (TCP + TLS), ``read`` (between bytes
    of the answer), ``total`` (one attempt, whole). Each is a positive number, or None for
    no limit.

    An API answer is a few kB that arrives in one piece, so for submit and fetch calls
    ``read`` bounds the whole call, like ``total`` (the smaller wins). Image downloads
    stream, and get ``read`` between chunks.
    """

    connect: float | None = attrs.field(
        default=C.DEFAULT_CONNECT_TIMEOUT, validator=number(above=True, optional=True)
    )
    read: float | None = attrs.field(
        default=C.DEFAULT_READ_TIMEOUT, validator=number(above=True, optional=True)
    )
    total: float | None = attrs.field(
        default=C.DEFAULT_TOTAL_TIMEOUT, validator=number(above=True, optional=True)
    )

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


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How failed requests are retried (:data:`RETRY_RULES` says which are).

    ``max_retries`` retries after the first attempt; waits grow as
    ``initial * exp_base**n`` up to ``max_wait``, with full jitter. ``Retry-After`` is
    honoured up to ``max_retry_after``. ``rate_limit_patience`` bounds the total time
    spent waiting out rate limits. ``retry_ambiguous_submits`` opts into resubmitting when
    a submit's answer was lost after it was sent (a possible duplicate charge).
    """

    max_retries: int = attrs.field(default=C.DEFAULT_MAX_RETRIES, validator=number(integer=True))
    initial: float = attrs.field(default=C.DEFAULT_BACKOFF_INITIAL, validator=number())
    max_wait: float = attrs.field(default=C.DEFAULT_BACKOFF_MAX, validator=number())
    exp_base: float = attrs.field(default=2.0, validator=number(minimum=1.0))
    jitter: bool = attrs.field(default=True, validator=flag)
    max_retry_after: float = attrs.field(default=C.MAX_RETRY_AFTER, validator=number())
    rate_limit_patience: float = attrs.field(default=900.0, validator=number())
    retry_ambiguous_submits: bool = attrs.field(default=False, validator=flag)

    def backoff(self, retry: int) -> float:
        """The wait before retry number *retry* (0-based)."""
        if _testing:
            return 0.0
        ceiling = min(self.max_wait, self.initial * self.exp_base ** min(retry, 64))
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


# --- the retry table ----------------------------------------------------------------------


@attrs.frozen
class _Outcome:
    """What one attempt produced, for the retry decision."""

    error: ModelsLabError
    sent: bool  # the request's bytes may have reached the server
    retry_after: float | None = None


class Action(enum.Enum):
    """What the retry loop does after an outcome."""

    RETRY = "retried"
    WAIT = "retried after `Retry-After`"  # and, for a submit, every submit of the client waits
    # Raised to the caller when the transport has ``queue_limits_to_caller`` (the client
    # then waits for one of its own jobs to resolve); else waited out as WAIT.
    TO_CALLER = "retried when one of the client's own jobs resolves"
    AMBIGUOUS = "**not retried**"  # unless retry_ambiguous_submits: a duplicate is charged
    STOP = "not retried"


@attrs.frozen
class RetryRule:
    """One row of the retry table: the outcomes it matches, and the action per operation
    (``fetch`` also stands for downloads, which are as idempotent)."""

    outcome: str
    matches: Callable[[_Outcome], bool] = attrs.field(repr=False)
    fetch: Action
    submit: Action
    why: str = ""  # the reason of the submit column, for the README


def _error_is(*classes: type[ModelsLabError]) -> Callable[[_Outcome], bool]:
    return lambda o: isinstance(o.error, classes)


def _is_503(o: _Outcome) -> bool:
    return isinstance(o.error, ServerError) and o.error.status_code == 503


#: The retry decision, first matching row wins. Rate-limit waits are bounded by
#: ``rate_limit_patience``, the other retries by ``max_retries``.
RETRY_RULES: tuple[RetryRule, ...] = (
    RetryRule(
        "queue-limit answer naming the cap N",
        lambda o: isinstance(o.error, RateLimitError) and o.error.queue_limit is not None,
        fetch=Action.WAIT,
        submit=Action.TO_CALLER,
        why="after `Retry-After` only while the client holds fewer than N",
    ),
    RetryRule(
        "HTTP 402, out of credits",
        _error_is(InsufficientCreditsError),
        fetch=Action.STOP,
        submit=Action.STOP,
        why="a batch stops submitting",
    ),
    RetryRule(
        "HTTP 429, the API's rate-limit answer",
        _error_is(RateLimitError),
        fetch=Action.WAIT,
        submit=Action.WAIT,
        why="pausing every submit of the client",
    ),
    RetryRule(
        "connection refused, connect timeout",
        lambda o: isinstance(o.error, TransportError) and not o.sent,
        fetch=Action.RETRY,
        submit=Action.RETRY,
        why="it never reached the server",
    ),
    RetryRule(
        "HTTP 503",
        _is_503,
        fetch=Action.RETRY,
        submit=Action.RETRY,
        why="refused before processing",
    ),
    RetryRule(
        "other 5xx",
        _error_is(ServerError),
        fetch=Action.RETRY,
        submit=Action.AMBIGUOUS,
        why="`ServerError`",
    ),
    RetryRule(
        "reset, read timeout, cut-off body",
        _error_is(TransportError),
        fetch=Action.RETRY,
        submit=Action.AMBIGUOUS,
        why="`AmbiguousSubmitError`",
    ),
    RetryRule(
        "HTML page, malformed JSON, an answer over the size cap",
        _error_is(ResponseFormatError),
        fetch=Action.RETRY,
        submit=Action.AMBIGUOUS,
        why="`ResponseFormatError`",
    ),
    RetryRule(
        "redirect (3xx), invalid key, rejected request, failed job",
        _error_is(ModelsLabError),
        fetch=Action.STOP,
        submit=Action.STOP,
    ),
)


def rule_for(outcome: _Outcome) -> RetryRule:
    """The first row of :data:`RETRY_RULES` that matches *outcome*."""
    return next(rule for rule in RETRY_RULES if rule.matches(outcome))


def action_for(op: Operation, outcome: _Outcome) -> Action:
    """The action :data:`RETRY_RULES` gives *op* after *outcome*."""
    rule = rule_for(outcome)
    return rule.submit if op == "submit" else rule.fetch


def retry_decision(op: Operation, outcome: _Outcome, policy: RetryPolicy) -> bool:
    """Whether to retry *op* after *outcome*, by :data:`RETRY_RULES` (a queue-limit answer
    raised to the caller is retried there)."""
    rule = rule_for(outcome)
    action = rule.submit if op == "submit" else rule.fetch
    retry = action in (Action.RETRY, Action.WAIT, Action.TO_CALLER) or (
        action is Action.AMBIGUOUS and policy.retry_ambiguous_submits
    )
    log.debug(
        "%s: %s (%s) -> %s",
        op,
        type(outcome.error).__name__,
        rule.outcome,
        "retry" if retry else "no retry",
    )
    return retry


def retry_table() -> str:
    """:data:`RETRY_RULES` as the README's Markdown table."""

    def cell(action: Action, why: str) -> str:
        if action is Action.AMBIGUOUS:
            opt_in = "`retry_ambiguous_submits=True` retries"
            return f"**not retried** (the job may exist): {why}; {opt_in}"
        if action in (Action.WAIT, Action.TO_CALLER):
            return f"{action.value}, {why}" if action is Action.WAIT else f"{action.value} ({why})"
        if action is Action.STOP:
            return f"{action.value}; {why}" if why else action.value
        return f"{action.value} ({why})" if why else action.value

    rows = ["| outcome | fetch, download | submit |", "|---|---|---|"]
    for rule in RETRY_RULES:
        rows.append(f"| {rule.outcome} | {rule.fetch.value} | {cell(rule.submit, rule.why)} |")
    return "\n".join(rows)


class SubmitWatch:
    """Hooks around the attempts of one submit (the batch's write-ahead records).

    ``sending`` may raise to stop the submit before an attempt goes on the wire (a batch
    stopped by an invalid key or empty credits). ``shield``: the attempts of a watched
    submit finish even when cancelled, so that the job id they may bring is recorded.
    """

    shield = True

    async def sending(self) -> None:
        """Called right before an attempt goes on the wire."""

    def refused(self) -> None:
        """Called after an attempt that surely created no job (not sent, 429, 503, 3xx)."""


def _surely_not_created(outcome: _Outcome) -> bool:
    err = outcome.error
    if not outcome.sent or isinstance(err, RateLimitError | RedirectError):
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


def job_path(job_id: JobId) -> str:
    """The fetch path of *job_id*, escaped: the id is one path segment whatever it holds
    (``/``, ``?``, ``#``, ``..``), so an id from the API cannot change the URL's path."""
    segment = quote(str(job_id), safe="")
    if not segment.strip("."):  # "." and ".." would be read as dot-segments
        segment = segment.replace(".", "%2E")
    return C.FETCH_PATH.format(id=segment)


class Transport:
    """The client's HTTP layer: opens one ``aiohttp.ClientSession`` in ``__aenter__``.

    The key is held as a :class:`~modelslab_async._redact.Secret` and written only into
    request bodies; ``repr`` masks it.
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
        queue_limits_to_caller: bool = False,
    ) -> None:
        self._key = Secret(api_key)
        del api_key  # from here on only the masked value is a local of this frame
        self.base_url = base_url.rstrip("/")
        self.timeouts = timeouts or Timeouts()
        self.retry = retry or RetryPolicy()
        self.pool_limit = pool_limit
        self.pool_limit_per_host = pool_limit_per_host
        self.gate = RateLimitGate()
        self.on_rate_limit = on_rate_limit
        # A submit refused for the account's queue cap, with the cap named, is raised to
        # the caller, who knows which of its jobs hold the cap (no client-wide pause).
        self.queue_limits_to_caller = queue_limits_to_caller
        self._session: aiohttp.ClientSession | None = None
        self._encoded_base: str | None = None
        self._closed = False
        self.counters: dict[str, int] = {"submit": 0, "fetch": 0, "download": 0, "retries": 0}
        register_secret(self._key)
        self._registered = True

    def __repr__(self) -> str:
        return f"Transport(base_url={self.base_url!r}, api_key={mask(self._key)})"

    def _forget_key(self) -> None:
        """Take the key out of the redaction registry (once): when the transport closes,
        or is collected without having been opened."""
        if self.__dict__.pop("_registered", False):
            unregister_secret(self._key)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self._forget_key()

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
        try:
            if session is not None:
                with anyio.CancelScope(shield=True):
                    await session.close()
        finally:
            # No request is made after this: nothing more can echo the key back. (Left to
            # the collector, a closed client's key would go on masking text, even parts of
            # words when it is short, for as long as reference cycles keep it alive.)
            self._forget_key()

    @property
    def session(self) -> aiohttp.ClientSession:
        """The open session; outside ``async with`` raises ClientStateError."""
        if self._session is None:
            raise ClientStateError(
                "the client is not open: use it inside `async with Client(...) as client:`"
            )
        return self._session

    # --- API calls ---------------------------------------------------------------------

    async def submit(
        self,
        request: Text2ImgRequest,
        wire: Mapping[str, Any],
        *,
        watch: SubmitWatch | None = None,
        job_meta: bool = True,
    ) -> Job | Generation:
        """POST text2img; retried only where the job surely was not created.

        *watch* is told before each attempt goes on the wire (after any rate-limit pause)
        and after each attempt that surely created no job: the batch records the submit
        ahead, and takes the record back when a stop finds the job surely not created.
        A watched submit is shielded from cancellation: the job may already exist, and only
        its answer lets a rerun resume it instead of paying for it twice (the timeouts
        bound it). ``job_meta=False`` leaves a processing answer's ``meta`` out of the
        :class:`Job` (for a caller that never shows the job to anyone).
        """
        url = self._base() + C.SUBMIT_PATH
        return await self._call(
            "submit", url, wire, request=request, watch=watch, job_meta=job_meta
        )

    async def fetch(
        self, job_id: JobId, request: Text2ImgRequest | None = None
    ) -> Job | Generation:
        """POST fetch/{id} (the id escaped); idempotent, so retried on any transient failure."""
        url = self._base() + job_path(job_id)
        return await self._call("fetch", url, {}, request=request, job_id=job_id)

    def _base(self) -> str:
        """The base URL, percent-encoded once (paths are appended to it as they are)."""
        if self._encoded_base is None:
            try:
                self._encoded_base = str(URL(self.base_url))
            except ValueError:
                raise ConfigurationError(f"invalid base URL {self.base_url!r}") from None
        return self._encoded_base

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
        # The key stays a Secret in this dict (masked in every repr and traceback local)
        # until aiohttp serialises the body.
        body = {"key": self._key, **fields}

        async def attempt() -> Job | Generation:
            if watch is not None:
                await watch.sending()
            self.counters[op] += 1
            post = self._post_once(op, url, body, request, job_id, job_meta)
            try:
                if watch is not None and watch.shield:
                    with anyio.CancelScope(shield=True):
                        return await post
                return await post
            except _AttemptFailed as failed:
                if watch is not None and _surely_not_created(failed.outcome):
                    watch.refused()
                raise

        return await self.with_retries(op, attempt)

    async def with_retries(self, op: Operation, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run *attempt* until it succeeds or :data:`RETRY_RULES` says stop (the one retry
        loop). *attempt* raises ``_AttemptFailed`` for an outcome the table decides on;
        any other exception passes through. Submits wait out the client's rate-limit pause
        before each attempt."""
        retries = 0
        rate_waited = 0.0
        while True:
            if op == "submit":
                await self.gate.wait()
            try:
                return await attempt()
            except _AttemptFailed as failed:
                outcome = failed.outcome
            # Raised here, outside the except block: no internal wrapper in its context.
            if not retry_decision(op, outcome, self.retry):
                raise outcome.error
            if self.queue_limits_to_caller and action_for(op, outcome) is Action.TO_CALLER:
                raise outcome.error
            if isinstance(outcome.error, RateLimitError):
                wait = (
                    outcome.retry_after
                    if outcome.retry_after is not None
                    else max(C.DEFAULT_RETRY_AFTER, self.retry.backoff(retries))
                )
                wait = 0.0 if _testing else min(wait, self.retry.max_retry_after)
                if rate_waited + wait > self.retry.rate_limit_patience:
                    raise outcome.error
                rate_waited += wait
                if op == "submit":  # the gate holds every submit, this one included
                    self.gate.pause(wait)
                    if self.on_rate_limit is not None:
                        self.on_rate_limit(wait)
                else:
                    await anyio.sleep(wait)
                continue
            if retries >= self.retry.max_retries:
                raise outcome.error
            delay = self.retry.backoff(retries)
            if outcome.retry_after is not None and not _testing:
                delay = max(delay, min(outcome.retry_after, self.retry.max_retry_after))
            retries += 1
            self.counters["retries"] += 1
            log.debug(
                "%s: retry %d in %.2fs after %s", op, retries, delay, type(outcome.error).__name__
            )
            await anyio.sleep(delay)

    async def _post_once(
        self,
        op: Literal["submit", "fetch"],
        url: str,
        body: Mapping[str, Any],
        request: Text2ImgRequest | None,
        job_id: JobId | None,
        job_meta: bool,
    ) -> Job | Generation:
        """One POST. aiohttp's own exceptions are not chained to ours (``from None``): the
        frames of its request writer hold the serialised body, key included, as locals."""
        session = self.session
        error: TransportError
        try:
            target = URL(url, encoded=True)  # as built: a requote would undo an id's %2E
        except ValueError:
            raise ConfigurationError(f"{op}: invalid URL {url!r}") from None
        try:
            async with session.post(target, json=body, allow_redirects=False) as resp:
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
                location = resp.headers.get("Location")
                raw = await _read_capped(resp, op, url)
            header_wait = parse_retry_after(retry_after) if retry_after else None
        except aiohttp.InvalidURL:
            # Nothing was sent: a bad base URL is a configuration error, not a lost submit.
            raise ConfigurationError(f"{op}: invalid URL {url!r}") from None
        except aiohttp.ClientConnectorError as exc:
            error = TransportError(
                f"{op}: cannot connect to {url}: {exc.os_error}", url=url, kind="connect"
            )
            raise _AttemptFailed(_Outcome(error, sent=False)) from None
        except aiohttp.ConnectionTimeoutError:
            error = TransportError(f"{op}: connect timeout to {url}", url=url, kind="connect")
            raise _AttemptFailed(_Outcome(error, sent=False)) from None
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
            raise _AttemptFailed(_Outcome(error, sent=True)) from None
        if 300 <= status < 400:
            raise _AttemptFailed(_Outcome(_redirect_error(op, url, status, location), sent=True))
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


async def _read_capped(resp: aiohttp.ClientResponse, op: str, url: str) -> bytes:
    """The answer's body, refused (unparsed, the connection dropped) past MAX_ANSWER_BYTES
    of decoded bytes. Counted as it is read: Content-Length is the size before any
    Content-Encoding is undone, and a gzip body can inflate a thousandfold."""
    cap = C.MAX_ANSWER_BYTES
    body = bytearray()
    async for chunk in resp.content.iter_any():
        body += chunk
        if len(body) > cap:
            resp.close()
            error = ResponseFormatError(
                f"{op}: the answer from {url} is over {cap} bytes (an API answer is a few kB); "
                "refused unparsed",
                status_code=resp.status,
                url=url,
            )
            raise _AttemptFailed(_Outcome(error, sent=True))
    return bytes(body)


def _redirect_error(op: str, url: str, status: int, location: str | None) -> RedirectError:
    host = urlsplit(location).hostname if location else None
    host = host or urlsplit(url).hostname or "?"
    return RedirectError(
        f"{op}: HTTP {status} redirect to {host}, not followed (API calls never follow "
        "redirects: the key is in the body); set base_url to the API's final address",
        status_code=status,
        url=url,
        location=location,
    )


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
    "RETRY_RULES",
    "Action",
    "RateLimitGate",
    "RetryPolicy",
    "RetryRule",
    "SubmitWatch",
    "Timeouts",
    "Transport",
    "action_for",
    "flag",
    "is_testing",
    "job_path",
    "number",
    "parse_retry_after",
    "retry_decision",
    "retry_table",
    "rule_for",
    "set_testing",
]
