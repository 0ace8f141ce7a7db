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

from collections.abc import Collection
from types import TracebackType
from typing import Protocol, runtime_checkable

import attrs

__all__ = ["Lease", "SlotStatistics", "Slots"]


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
