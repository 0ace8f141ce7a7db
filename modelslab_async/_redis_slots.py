"""Slots shared through Redis: one account cap for every process that names the same Redis.

The state is two keys and one channel, all named after ``name``:

- ``{name}:holders``, a sorted set of holder id -> lease expiry (Redis server time, ms);
- ``{name}:limit``, the cap every sharer obeys (the first sharer's ``limit``, then whatever
  :meth:`RedisSlots.set_limit` stores: the learned limit of ``max_in_flight="auto"``);
- ``{name}:freed``, a pub/sub channel that announces a freed slot.

Acquire, release, renew and set_limit are Lua scripts, so each is one atomic round trip.
Acquire first drops expired leases (a crashed holder's slots come back ``lease`` seconds
after its last renewal). Every key expires ``lease`` seconds after its last use, so nothing
is left behind. Times come from the Redis server's clock: hosts need not agree on the time.

Only holder ids (``host:pid:token:n``) and the limit are written: never the API key.
redis-py is imported when the slots are entered (extra ``[redis]``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Collection
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio

from ._constants import DEFAULT_SLOT_LEASE
from ._errors import ConfigurationError, TransportError
from ._redact import register_secret, unregister_secret
from ._slots import Lease, SharedSlots, Slots

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub
    from redis.commands.core import AsyncScript

__all__ = ["RedisSlots"]

log = logging.getLogger("modelslab_async.slots")

_SCHEMES = ("redis", "rediss", "unix")
_CLEANUP_SECONDS = 5.0

# KEYS: holders, limit. ARGV: lease ms, then per script. Every script answers
# {..., held, limit} so each round trip refreshes what statistics() shows.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
"""

# ARGV: lease ms, holder, default limit, channel.
# Answers {taken (0/1), held, limit, ms until the earliest lease expires (-1: none)}.
_ACQUIRE = (
    _NOW
    + """
local reclaimed = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local limit = tonumber(redis.call('GET', KEYS[2]))
if not limit then
  limit = tonumber(ARGV[3])
  redis.call('SET', KEYS[2], limit)
end
local taken = 0
if redis.call('ZSCORE', KEYS[1], ARGV[2]) or redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now + lease, ARGV[2])
  taken = 1
end
local held = redis.call('ZCARD', KEYS[1])
if reclaimed > 0 and held < limit then
  redis.call('PUBLISH', ARGV[4], 'expired')
end
redis.call('PEXPIRE', KEYS[2], lease)
local next_expiry = -1
if held > 0 then
  redis.call('PEXPIRE', KEYS[1], lease)
  next_expiry = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]) - now
end
return {taken, held, limit, next_expiry}
"""
)

# ARGV: lease ms, holder, channel. Answers {released (0/1), held, limit}.
_RELEASE = (
    _NOW
    + """
local released = redis.call('ZREM', KEYS[1], ARGV[2])
if released > 0 then
  redis.call('PUBLISH', ARGV[3], 'released')
end
redis.call('PEXPIRE', KEYS[2], lease)
return {released, redis.call('ZCARD', KEYS[1]), tonumber(redis.call('GET', KEYS[2])) or -1}
"""
)

# ARGV: lease ms, holder... Extends the leases still present (an expired lease that was
# already reclaimed is lost). Answers {renewed, held, limit}.
_RENEW = (
    _NOW
    + """
local renewed = 0
for i = 2, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], now + lease, ARGV[i])
    renewed = renewed + 1
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('PEXPIRE', KEYS[1], lease)
end
redis.call('PEXPIRE', KEYS[2], lease)
return {renewed, redis.call('ZCARD', KEYS[1]), tonumber(redis.call('GET', KEYS[2])) or -1}
"""
)

# ARGV: lease ms, limit, channel, only_if_absent (0/1). Answers {0, held, limit}.
_SET_LIMIT = (
    _NOW
    + """
if ARGV[4] == '1' then
  redis.call('SET', KEYS[2], ARGV[2], 'NX')
else
  redis.call('SET', KEYS[2], ARGV[2])
  redis.call('PUBLISH', ARGV[3], 'limit')
end
redis.call('PEXPIRE', KEYS[2], lease)
return {0, redis.call('ZCARD', KEYS[1]), tonumber(redis.call('GET', KEYS[2]))}
"""
)


def _mask_url(url: str) -> str:
    """*url* with its password (in the authority or the query) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            user, _, host = netloc.rpartition("@")
            name = user.partition(":")[0]
            netloc = f"{name}:***@{host}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode([(k, "***" if k == "password" else v) for k, v in pairs])
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "<unparsable URL>"


def _where(url: str) -> str:
    """``host:port`` (or the socket path) of *url*, for messages; never the password."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path or "?"
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{parts.port or 6379}"


class RedisSlots(SharedSlots):
    """The account's queue slots, shared by every process that uses the same Redis and name.

    ``RedisSlots("redis://:password@host:6379/0", 5)``: at most 5 leases held at once by
    all processes together (``rediss://`` for TLS, ``unix:///path.sock`` for a socket).
    ``limit`` is the cap a first sharer stores; a sharer that joins while the cap is stored
    adopts it, and :meth:`set_limit` changes it for everyone. Leases expire after ``lease``
    seconds unless renewed (the client renews every ``lease / 3``), so the slots of a
    process that dies come back within ``lease`` seconds. Waiters are woken through
    pub/sub when a slot frees, with a re-check at least every ``lease / 3`` seconds (and
    when the earliest lease expires) in case a notification is lost; they are served
    first come, first served within a process. Use it inside ``async with`` (asyncio only).

    Raises :class:`~modelslab_async.ConfigurationError` for a bad URL or option, or when
    Redis refuses the password; :class:`~modelslab_async.TransportError` (naming the host)
    when Redis cannot be reached. It never lets a caller through unlimited.
    """

    def __init__(
        self,
        url: str,
        limit: int,
        *,
        name: str = "modelslab",
        lease: float = DEFAULT_SLOT_LEASE,
    ) -> None:
        if not isinstance(url, str) or urlsplit(url).scheme not in _SCHEMES:
            shown = _mask_url(url) if isinstance(url, str) else repr(url)
            raise ConfigurationError(
                f"url: got {shown}, allowed redis://[:password@]host[:port][/db], "
                "rediss://... (TLS) or unix:///path/to/socket"
            )
        super().__init__(limit, name=name, lease=lease)
        self._url = url
        self._password = urlsplit(url).password or dict(parse_qsl(urlsplit(url).query)).get(
            "password", ""
        )
        self._lease_ms = max(1, int(self._lease * 1000))
        self._keys = [f"{name}:holders", f"{name}:limit"]
        self._channel = f"{name}:freed"
        self._turn = anyio.Lock()
        self._round_trips = 0
        self._redis: Redis | None = None
        self._pubsub: PubSub | None = None
        self._subscribed = False
        self._scripts: dict[str, AsyncScript] = {}

    # ------------------------------------------------------------------ properties
    @property
    def round_trips(self) -> int:
        """Commands this object sent to Redis (scripts, SUBSCRIBE/UNSUBSCRIBE), for benchmarks."""
        return self._round_trips

    def __repr__(self) -> str:
        return (
            f"RedisSlots({_mask_url(self._url)!r}, {self._limit}, name={self._name!r}, "
            f"lease={self._lease})"
        )

    # ------------------------------------------------------------------ lifetime
    async def __aenter__(self) -> RedisSlots:
        if self._entered:
            self._entered += 1
            return self
        try:
            import redis.asyncio as aioredis
        except ImportError:
            raise ConfigurationError(
                "RedisSlots needs redis-py: pip install 'modelslab-async[redis]'"
            ) from None
        register_secret(self._password)
        client: Redis = aioredis.Redis.from_url(
            self._url, socket_connect_timeout=5.0, socket_timeout=10.0
        )
        self._redis = client
        self._scripts = {
            "acquire": client.register_script(_ACQUIRE),
            "release": client.register_script(_RELEASE),
            "renew": client.register_script(_RENEW),
            "set_limit": client.register_script(_SET_LIMIT),
        }
        self._entered = 1
        try:
            await self._run("set_limit", self._lease_ms, self._limit, self._channel, 1)
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._entered > 1:
            self._entered -= 1
            return
        with _shielded():
            for holder in list(self._mine):  # leases nobody released: give them back now
                await self._release_quietly(holder)
        with anyio.CancelScope(shield=True):
            await self._close()

    async def _close(self) -> None:
        self._entered = 0
        pubsub, self._pubsub, self._subscribed = self._pubsub, None, False
        client, self._redis = self._redis, None
        try:
            if pubsub is not None:
                await pubsub.aclose()
            if client is not None:
                await client.aclose()
        finally:
            unregister_secret(self._password)

    # ------------------------------------------------------------------ the protocol
    async def acquire(self) -> Lease:
        """Wait for a free slot and take it (see the class docstring for the wake-ups)."""
        self._check_entered()
        holder = self._new_holder()
        self._waiting += 1
        try:
            async with self._turn:  # FIFO: one waiter of this process talks to Redis
                try:
                    await self._take(holder)
                finally:
                    if self._waiting == 1 and self._subscribed:  # nobody waits behind us
                        with _shielded():
                            await self._unsubscribe()
        finally:
            self._waiting -= 1
        return Lease(holder)

    async def release(self, lease: Lease) -> None:
        """Give the slot back and wake a waiter; a lease already released is a no-op."""
        self._check_entered()
        if lease.holder not in self._mine:
            return
        self._mine.discard(lease.holder)
        await self._run("release", self._lease_ms, lease.holder, self._channel)

    async def renew(self, leases: Collection[Lease]) -> None:
        """Extend *leases* by ``lease`` seconds (one round trip for all of them).

        A lease that expired and was reclaimed by another process is lost (its process
        stalled for longer than ``lease``): it is logged, and its release is a no-op.
        """
        self._check_entered()
        holders = [lease.holder for lease in leases if lease.holder in self._mine]
        if not holders:
            return
        renewed = await self._run("renew", self._lease_ms, *holders)
        if renewed < len(holders):
            log.warning(
                "%d of %d slot leases in %r expired before they were renewed",
                len(holders) - renewed,
                len(holders),
                self._name,
            )

    async def set_limit(self, limit: int) -> None:
        """Store *limit* for every sharer and wake the waiters (a raised cap lets them in)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigurationError(f"limit: got {limit!r}, allowed an integer >= 1")
        self._check_entered()
        await self._run("set_limit", self._lease_ms, limit, self._channel, 0)

    # ------------------------------------------------------------------ internals
    async def _take(self, holder: str) -> None:
        """Try, then subscribe and wait for a freed slot until the script grants one."""
        while True:
            wait = await self._try(holder)
            if wait is None:
                return
            if not self._subscribed:
                await self._subscribe()
                continue  # a slot may have freed before the subscription: try again at once
            await self._wait_for_news(wait)

    async def _try(self, holder: str) -> float | None:
        """One acquire script call: ``None`` when taken, else how long to wait at most."""
        try:
            answer = await self._call("acquire", self._lease_ms, holder, self._limit, self._channel)
        except BaseException:
            # Cancelled or failed mid-call: the script may have run. Give the slot back
            # (if that fails too, the lease expires by itself).
            with _shielded():
                await self._release_quietly(holder)
            raise
        taken, next_expiry = int(answer[0]), int(answer[3])
        if taken:
            self._mine.add(holder)
            return None
        wait = self.renew_interval
        if next_expiry >= 0:  # wake when the earliest lease expires, if that comes sooner
            wait = min(wait, next_expiry / 1000 + 0.005)
        return wait

    async def _subscribe(self) -> None:
        """SUBSCRIBE and wait for its confirmation (messages published after it are seen)."""
        assert self._redis is not None
        if self._pubsub is None:
            self._pubsub = self._redis.pubsub()
        pubsub = self._pubsub
        deadline = anyio.current_time() + self._lease
        with self._errors():
            self._round_trips += 1
            await pubsub.subscribe(self._channel)
            while (left := deadline - anyio.current_time()) > 0:
                message = await pubsub.get_message(timeout=left)
                if message is not None and message["type"] == "subscribe":
                    self._subscribed = True
                    return
        raise TransportError(
            f"Redis at {_where(self._url)} did not confirm the subscription to "
            f"{self._channel!r} within {self._lease} s",
            url=_mask_url(self._url),
        )

    async def _unsubscribe(self) -> None:
        self._subscribed = False
        if self._pubsub is None:
            return
        try:
            self._round_trips += 1
            await self._pubsub.unsubscribe(self._channel)
        except Exception as exc:  # the next _subscribe starts from a fresh connection
            log.debug("unsubscribe from %r failed: %r", self._channel, exc)
            pubsub, self._pubsub = self._pubsub, None
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _wait_for_news(self, timeout: float) -> None:
        """Until a slot is announced freed (or the limit changed), or *timeout* seconds."""
        assert self._pubsub is not None
        deadline = anyio.current_time() + timeout
        with self._errors():
            while (left := deadline - anyio.current_time()) > 0:
                message = await self._pubsub.get_message(timeout=left)
                if message is not None and message["type"] == "message":
                    break
        # Announcements that queued up meanwhile concern the same freed slots: drop them,
        # so the next wait does not wake for nothing.
        with self._errors():
            while await self._pubsub.get_message(timeout=0) is not None:
                pass

    async def _release_quietly(self, holder: str) -> None:
        self._mine.discard(holder)
        try:
            await self._call("release", self._lease_ms, holder, self._channel)
        except Exception as exc:  # the lease then expires by itself
            log.debug("could not release slot lease %s: %r", holder, exc)

    async def _run(self, script: str, *args: Any) -> int:
        """Run *script*; the first number of its answer."""
        answer = await self._call(script, *args)
        return int(answer[0])

    async def _call(self, script: str, *args: Any) -> list[int]:
        exchange = self._exchange()
        with self._errors():
            self._round_trips += 1
            answer = await self._scripts[script](keys=self._keys, args=list(args))
        self._saw(exchange, int(answer[1]), int(answer[2]))
        return [int(x) for x in answer]

    def _errors(self) -> _RedisErrors:
        return _RedisErrors(self._url, self._name)


def _shielded() -> anyio.CancelScope:
    """A scope that outer cancellation cannot interrupt, for clean-up of at most 5 s."""
    return anyio.CancelScope(shield=True, deadline=anyio.current_time() + _CLEANUP_SECONDS)


class _RedisErrors:
    """Turns redis-py's exceptions into ours, naming the host and never the password."""

    def __init__(self, url: str, name: str) -> None:
        self._url = url
        self._name = name

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            return
        from redis import exceptions as rx

        where = _where(self._url)
        if isinstance(exc, rx.AuthenticationError) or (
            isinstance(exc, rx.ResponseError) and str(exc).startswith(("NOAUTH", "WRONGPASS"))
        ):
            raise ConfigurationError(
                f"Redis at {where} refused the credentials of the slots URL "
                f"({type(exc).__name__}): check the password in the URL"
            ) from exc
        if isinstance(exc, (rx.ConnectionError, rx.TimeoutError, OSError)):
            raise TransportError(
                f"Redis at {where} is unreachable for the shared slots {self._name!r}: "
                f"{type(exc).__name__}: {exc}",
                url=_mask_url(self._url),
                kind="connect",
            ) from exc
        if isinstance(exc, rx.RedisError):
            raise TransportError(
                f"Redis at {where} failed a shared-slots command: {type(exc).__name__}: {exc}",
                url=_mask_url(self._url),
            ) from exc


if TYPE_CHECKING:

    def _follows_the_protocol(slots: RedisSlots) -> Slots:  # checked by mypy, never run
        return slots
