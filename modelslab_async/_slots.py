"""The account's queue slots: the :class:`Slots` protocol and its in-process default.

A ModelsLab account may hold at most N unfinished (queued or processing) jobs, N = 5, 10
or 15 by plan. A *slot* is the right to hold one of them. A client acquires a
:class:`Lease` before each submit and releases it the moment the job resolves (success or
failure, before its images are downloaded). Implementations whose state outlives a
process (Redis, a Ray actor) give leases an expiry: the client renews its leases every
``renew_interval`` seconds while their jobs run, so a crashed holder's slots come back
after ``lease`` seconds.

Implementations: :class:`LocalSlots` (this process only, the default),
``RedisSlots`` (extra ``[redis]``) and ``RaySlots`` (extra ``[ray]``).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable, Collection
from types import TracebackType
from typing import Protocol, runtime_checkable

import anyio
import attrs

from . import _constants as C
from ._errors import ClientStateError, ConfigurationError

__all__ = ["AdaptiveLimit", "Lease", "LocalSlots", "SlotStatistics", "Slots"]

log = logging.getLogger("modelslab_async")


@attrs.frozen
class Lease:
    """One held slot. ``holder`` is unique to this acquire (and process); opaque to callers."""

    holder: str


@attrs.frozen
class SlotStatistics:
    """A snapshot of the slots.

    ``limit`` is the current cap, ``held`` the slots held by every holder the
    implementation can see (all processes, for shared slots), ``held_here`` those held by
    this object, and ``waiting`` the acquires of this object that wait for a slot.
    """

    limit: int
    held: int
    held_here: int
    waiting: int


@runtime_checkable
class Slots(Protocol):
    """At most ``limit`` leases held at once, by everyone who shares this object's state.

    The client enters the slots with its own lifetime (``async with``), then for each job:
    ``acquire()`` before the submit, ``renew()`` every ``renew_interval`` seconds while the
    job runs (when that is not ``None``), ``release()`` when the job resolves or its submit
    fails. ``set_limit()`` changes the cap for every sharer (the learned limit of
    ``max_in_flight="auto"``). Waiters are served first come, first served as far as the
    implementation can tell. An implementation that cannot reach its backing store raises
    :class:`~modelslab_async.ConfigurationError` or ``TransportError``; it never lets a
    caller through unlimited.
    """

    @property
    def limit(self) -> int:
        """The current cap (the last value this object has seen)."""
        ...

    @property
    def renew_interval(self) -> float | None:
        """Seconds between renewals of a held lease; ``None``: leases never expire."""
        ...

    async def __aenter__(self) -> Slots: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None: ...

    async def acquire(self) -> Lease:
        """Wait for a free slot and take it. Cancellation leaves no slot taken."""
        ...

    async def release(self, lease: Lease) -> None:
        """Give *lease*'s slot back; a lease already released or expired is a no-op."""
        ...

    async def renew(self, leases: Collection[Lease]) -> None:
        """Extend *leases* by another lease period (no-op for slots without expiry)."""
        ...

    async def set_limit(self, limit: int) -> None:
        """Set the cap for every sharer (>= 1). Holders above a lowered cap keep their
        slots until they release them; new acquires wait until fewer are held."""
        ...

    def statistics(self) -> SlotStatistics:
        """Counters for progress bars and benchmarks (may be a little stale when shared)."""
        ...


def check_limit(limit: object, name: str = "limit") -> int:
    """*limit* if it is an integer >= 1, else :class:`ConfigurationError` naming *name*."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigurationError(f"{name}: got {limit!r}, allowed an integer >= 1")
    return limit


class SharedSlots:
    """What :class:`~modelslab_async.RedisSlots` and :class:`~modelslab_async.RaySlots`
    share: their arguments checked alike, leases that live ``lease`` seconds unless renewed
    (every ``lease / 3``), holder ids unique across processes, and counts as of this
    object's last exchange with the shared store. Not a :class:`Slots` on its own."""

    def __init__(self, limit: int, *, name: str, lease: float) -> None:
        self._limit = check_limit(limit)
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"name: got {name!r}, allowed a non-empty string")
        if (
            isinstance(lease, bool)
            or not isinstance(lease, int | float)
            or not math.isfinite(lease)
            or lease < C.MIN_SLOT_LEASE
        ):
            raise ConfigurationError(
                f"lease: got {lease!r}, allowed seconds >= {C.MIN_SLOT_LEASE} (finite)"
            )
        self._name = name
        self._lease = float(lease)
        self._held = 0  # every process's count, as of the last exchange
        self._sent = self._applied = 0  # exchanges sent, and the newest one applied
        self._token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._ids = itertools.count(1)
        self._mine: set[str] = set()  # holders of this object's leases
        self._waiting = 0
        self._entered = 0

    @property
    def limit(self) -> int:
        """The cap as this object last saw it in the shared store."""
        return self._limit

    @property
    def renew_interval(self) -> float:
        """``lease / 3``: a lease survives two missed renewals."""
        return self._lease / 3

    @property
    def lease(self) -> float:
        """Seconds a lease lives without renewal."""
        return self._lease

    @property
    def name(self) -> str:
        """What the processes sharing these slots know them by (the Redis keys' namespace,
        the Ray actor's name)."""
        return self._name

    def statistics(self) -> SlotStatistics:
        """``held`` is every process's count as of this object's latest exchange."""
        return SlotStatistics(
            limit=self._limit, held=self._held, held_here=len(self._mine), waiting=self._waiting
        )

    def _new_holder(self) -> str:
        return f"{self._token}:{next(self._ids)}"

    def _check_entered(self) -> None:
        if not self._entered:
            raise ClientStateError(f"{type(self).__name__} is used outside its `async with` block")

    def _exchange(self) -> int:
        """The number of an exchange with the store about to be sent (for :meth:`_saw`)."""
        self._sent += 1
        return self._sent

    def _saw(self, exchange: int, held: int, limit: int) -> None:
        """Counts from the answer to *exchange*: every process's holders and the cap (< 1:
        unset). Concurrent exchanges can be answered out of order: the answer to an
        exchange sent before the newest one applied is stale, and left out."""
        if exchange < self._applied:
            return
        self._applied = exchange
        self._held = held
        if limit >= 1:
            self._limit = limit


_lease_numbers = itertools.count()


class LocalSlots:
    """Slots of this process only: the default, sized by ``Client(max_in_flight=...)``.

    An :class:`anyio.CapacityLimiter` whose borrowers are the leases: waiters are served
    first come, first served, a cancelled acquire leaves no slot taken, and
    :meth:`set_limit` writes the limiter's ``total_tokens`` (a raised limit wakes waiters
    at once, a lowered one lets holders keep their slots). Leases never expire
    (``renew_interval`` is None). One object may be shared by several clients of the
    process, which then share its limit.
    """

    def __init__(self, limit: int) -> None:
        self._limiter = anyio.CapacityLimiter(check_limit(limit))

    def __repr__(self) -> str:
        return f"LocalSlots(limit={self.limit})"

    @property
    def limit(self) -> int:
        return int(self._limiter.total_tokens)

    @property
    def renew_interval(self) -> None:
        return None

    async def __aenter__(self) -> LocalSlots:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def acquire(self) -> Lease:
        lease = Lease(f"local-{next(_lease_numbers)}")
        try:
            self._limiter.acquire_on_behalf_of_nowait(lease)  # a slot is free, nobody waits
        except anyio.WouldBlock:
            await self._limiter.acquire_on_behalf_of(lease)
        return lease

    async def release(self, lease: Lease) -> None:
        with contextlib.suppress(RuntimeError):  # not held (released twice): nothing to do
            self._limiter.release_on_behalf_of(lease)

    async def renew(self, leases: Collection[Lease]) -> None:
        return None

    async def set_limit(self, limit: int) -> None:
        self._limiter.total_tokens = check_limit(limit)

    def statistics(self) -> SlotStatistics:
        stats = self._limiter.statistics()
        return SlotStatistics(
            limit=self.limit,
            held=stats.borrowed_tokens,
            held_here=stats.borrowed_tokens,
            waiting=stats.tasks_waiting,
        )


class AdaptiveLimit:
    """Learns the limit of some :class:`Slots` (``max_in_flight="auto"``) by additive
    increase and multiplicative decrease.

    Every accepted submit adds ``1/limit``, so the limit grows by one per round of
    ``limit`` accepted submits, up to ``maximum``; a rate-limit answer halves it (never
    below 1), at most once per ``max(cooldown, retry_after)`` seconds. A queue-limit
    answer that names the account's cap N ("Maximum N queued requests allowed.") sets the
    limit to exactly N (:meth:`cap_named`), and it never grows past N. The new limit goes to
    :meth:`Slots.set_limit`, so slots shared by several processes learn it for all; a
    failure to set it is logged, never raised (the old limit stays).
    """

    def __init__(
        self,
        slots: Slots,
        *,
        maximum: int = C.AUTO_MAX_IN_FLIGHT,
        cooldown: float = C.AUTO_DECREASE_COOLDOWN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.slots = slots
        self.maximum = maximum
        self.cooldown = cooldown
        self._clock = clock
        self._credit = 0.0
        self._last_decrease = -math.inf
        self.decreases = 0
        self.cap: int | None = None

    async def cap_named(self, cap: int) -> None:
        """The API named the account's queue cap: the limit is *cap* from now on."""
        if cap != self.cap:
            log.info(
                "the account allows %d unfinished jobs: limit %d -> %d", cap, self.slots.limit, cap
            )
            self.cap = self.maximum = cap
            self._credit = 0.0
        if self.slots.limit != cap:
            await self._set(cap)

    async def accepted(self) -> None:
        """One submit was accepted."""
        limit = self.slots.limit
        if limit >= self.maximum:
            return
        self._credit += 1.0 / limit
        if self._credit >= 1.0:
            self._credit = 0.0
            await self._set(min(self.maximum, limit + 1))

    async def rate_limited(self, retry_after: float) -> None:
        """A submit was refused for a rate or queue limit, to be retried after *retry_after*
        seconds."""
        now = self._clock()
        if now - self._last_decrease < max(self.cooldown, retry_after):
            return
        self._last_decrease = now
        self._credit = 0.0
        self.decreases += 1
        await self._set(max(1, self.slots.limit // 2))

    async def _set(self, limit: int) -> None:
        try:
            await self.slots.set_limit(limit)
        except Exception as exc:
            log.warning("could not set the learned limit to %d: %s", limit, exc)
