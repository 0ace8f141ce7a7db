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
import time
from collections.abc import Callable, Collection
from types import TracebackType
from typing import Protocol, runtime_checkable

import anyio
import attrs

from . import _constants as C
from ._errors import ConfigurationError

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
    below 1), at most once per ``max(cooldown, retry_after)`` seconds. The new limit goes to
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
