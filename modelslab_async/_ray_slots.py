"""Slots shared through a named, detached Ray actor: one account cap for a whole Ray cluster.

The actor (``_SlotsActor``) is an asyncio actor: an ``acquire`` that finds no free slot
waits inside the actor (first come, first served across the cluster) until a release, a
raised limit or the expiry of a lease frees one. Every holder's lease expires unless it is
renewed, so the slots of a worker, actor or driver that dies come back after ``lease``
seconds. Ray is imported when the slots are entered (extra ``[ray]``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Collection
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio

from ._constants import DEFAULT_SLOT_LEASE
from ._errors import ConfigurationError, TransportError
from ._slots import Lease, SharedSlots, Slots

__all__ = ["RaySlots"]

log = logging.getLogger("modelslab_async.slots")

#: Concurrent calls the actor serves: every waiting acquire of the cluster is one call.
_ACTOR_CONCURRENCY = 10_000


class _SlotsActor:
    """The state behind every ``RaySlots`` of one name (runs as a Ray asyncio actor).

    Answers are ``(taken or renewed count, held, limit)`` so that callers keep their
    statistics fresh. Times are this actor's ``time.monotonic()``: one clock for everyone.
    """

    def __init__(self) -> None:
        self._limit = 0
        self._holders: dict[str, float] = {}  # holder -> expiry
        self._waiters: OrderedDict[str, tuple[float, asyncio.Future[bool]]] = OrderedDict()
        self._released: dict[str, float] = {}  # released before their acquire ran -> expiry
        self._idle_since = time.monotonic()

    def _state(self, first: int = 0) -> tuple[int, int, int]:
        return (first, len(self._holders), self._limit)

    def _reclaim(self, now: float) -> None:
        for holder in [h for h, expiry in self._holders.items() if expiry <= now]:
            del self._holders[holder]
        for holder in [h for h, expiry in self._released.items() if expiry <= now]:
            del self._released[holder]
        if not self._holders and not self._waiters:
            self._idle_since = min(self._idle_since, now)

    def _grant(self, now: float) -> None:
        """Hand free slots to the waiters, first come first served."""
        self._reclaim(now)
        while self._waiters and len(self._holders) < self._limit:
            holder, (lease, future) = self._waiters.popitem(last=False)
            self._holders[holder] = now + lease
            if not future.done():
                future.set_result(True)

    def _touch(self, now: float) -> None:
        self._idle_since = math.inf if (self._holders or self._waiters) else now

    async def join(self, limit: int, lease: float) -> tuple[int, int, int]:
        """A new sharer: its *limit* applies when the slots have been idle for *lease*."""
        now = time.monotonic()
        self._reclaim(now)
        if self._limit == 0 or now - self._idle_since >= lease:
            self._limit = limit
        self._grant(now)
        return self._state()

    async def acquire(self, holder: str, lease: float) -> tuple[int, int, int]:
        now = time.monotonic()
        self._reclaim(now)
        if self._released.pop(holder, None) is not None:  # its caller gave up already
            return self._state(0)
        if holder in self._holders or (not self._waiters and len(self._holders) < self._limit):
            self._holders[holder] = now + lease
            self._touch(now)
            return self._state(1)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters[holder] = (lease, future)
        self._touch(now)
        try:
            while not future.done():
                expiries = self._holders.values()
                timeout = max(0.0, min(expiries) - time.monotonic()) if expiries else None
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(future), timeout)
                self._grant(time.monotonic())
            return self._state(1 if future.result() else 0)
        finally:
            self._waiters.pop(holder, None)
            self._touch(time.monotonic())

    async def release(self, holder: str, lease: float) -> tuple[int, int, int]:
        now = time.monotonic()
        if self._holders.pop(holder, None) is not None:
            self._grant(now)
        elif holder in self._waiters:
            _, future = self._waiters.pop(holder)
            if not future.done():
                future.set_result(False)
        else:  # the acquire has not run yet: remember, so that it takes nothing
            self._released[holder] = now + lease
        self._touch(now)
        return self._state()

    async def renew(self, holders: list[str], lease: float) -> tuple[int, int, int]:
        now = time.monotonic()
        renewed = 0
        for holder in holders:
            if holder in self._holders:
                self._holders[holder] = now + lease
                renewed += 1
        self._grant(now)
        return self._state(renewed)

    async def set_limit(self, limit: int) -> tuple[int, int, int]:
        self._limit = limit
        self._grant(time.monotonic())
        return self._state()

    async def state(self) -> tuple[int, int, int]:
        self._grant(time.monotonic())
        return self._state(len(self._waiters))


class RaySlots(SharedSlots):
    """The account's queue slots, shared by every task and actor of a Ray cluster.

    ``RaySlots(5)`` finds or creates the detached actor ``name`` in ``namespace`` (so every
    driver and job of the cluster shares it): at most 5 leases held at once, cluster-wide.
    The first sharer's ``limit`` applies, a sharer that joins while slots are in use adopts
    the current one, and :meth:`set_limit` changes it for everyone. Leases expire after
    ``lease`` seconds unless renewed (every ``lease / 3``). Waiters wait inside the actor
    and are served first come, first served. Needs a running Ray (``ray.init()`` or a Ray
    worker); the actor takes no CPU. Raises :class:`~modelslab_async.TransportError` when
    the actor cannot be reached.
    """

    def __init__(
        self,
        limit: int,
        *,
        name: str = "modelslab-slots",
        lease: float = DEFAULT_SLOT_LEASE,
        namespace: str = "modelslab_async",
    ) -> None:
        super().__init__(limit, name=name, lease=lease)
        if not isinstance(namespace, str) or not namespace:
            raise ConfigurationError(f"namespace: got {namespace!r}, allowed a non-empty string")
        self._namespace = namespace
        self._actor: Any = None

    def __repr__(self) -> str:
        return (
            f"RaySlots({self._limit}, name={self._name!r}, lease={self._lease}, "
            f"namespace={self._namespace!r})"
        )

    async def __aenter__(self) -> RaySlots:
        if self._entered:
            self._entered += 1
            return self
        try:
            import ray
        except ImportError:
            raise ConfigurationError(
                "RaySlots needs Ray: pip install 'modelslab-async[ray]'"
            ) from None
        if not ray.is_initialized():
            raise ConfigurationError(
                "RaySlots needs a running Ray: call ray.init() first (or use it in a Ray task)"
            )

        def find_or_create() -> Any:
            actor_class = ray.remote(_SlotsActor)
            return actor_class.options(
                name=self._name,
                namespace=self._namespace,
                get_if_exists=True,
                lifetime="detached",
                num_cpus=0,
                max_concurrency=_ACTOR_CONCURRENCY,
            ).remote()

        with self._errors():
            self._actor = await anyio.to_thread.run_sync(find_or_create)
        self._entered = 1
        try:
            await self._call("join", self._limit, self._lease)
        except BaseException:
            self._entered, self._actor = 0, None
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
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            for holder in list(self._mine):  # leases nobody released: give them back now
                with contextlib.suppress(Exception):
                    await self._release(holder)
        self._entered, self._actor = 0, None
        self._mine.clear()

    async def acquire(self) -> Lease:
        """Wait (inside the actor) for a free slot and take it."""
        self._check_entered()
        holder = self._new_holder()
        self._waiting += 1
        try:
            taken = await self._call("acquire", holder, self._lease)
        except BaseException:
            # Cancelled or failed while the actor may still grant it: give it back; the
            # actor remembers a release that overtakes its acquire.
            with contextlib.suppress(Exception):
                self._actor.release.remote(holder, self._lease)
            raise
        finally:
            self._waiting -= 1
        if not taken:  # only when released meanwhile, which only acquire's failure does
            raise TransportError(f"the Ray slots actor {self._name!r} refused {holder}")
        self._mine.add(holder)
        return Lease(holder)

    async def release(self, lease: Lease) -> None:
        """Give the slot back; the actor hands it to the first waiter."""
        self._check_entered()
        if lease.holder in self._mine:
            await self._release(lease.holder)

    async def renew(self, leases: Collection[Lease]) -> None:
        """Extend *leases* by ``lease`` seconds (one call for all of them)."""
        self._check_entered()
        holders = [lease.holder for lease in leases if lease.holder in self._mine]
        if not holders:
            return
        renewed = await self._call("renew", holders, self._lease)
        if renewed < len(holders):
            log.warning(
                "%d of %d slot leases in %r expired before they were renewed",
                len(holders) - renewed,
                len(holders),
                self._name,
            )

    async def set_limit(self, limit: int) -> None:
        """Set the cap for the whole cluster (waiters are let in at once if it rose)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigurationError(f"limit: got {limit!r}, allowed an integer >= 1")
        self._check_entered()
        await self._call("set_limit", limit)

    async def _release(self, holder: str) -> None:
        self._mine.discard(holder)
        await self._call("release", holder, self._lease)

    async def _call(self, method: str, *args: Any) -> int:
        exchange = self._exchange()
        with self._errors():
            first, held, limit = await getattr(self._actor, method).remote(*args)
        self._saw(exchange, held, limit)
        return int(first)

    def _errors(self) -> _RayErrors:
        return _RayErrors(self._name)


class _RayErrors:
    """Turns Ray's errors about the actor into a :class:`TransportError` naming it."""

    def __init__(self, name: str) -> None:
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
        from ray import exceptions as rx

        if isinstance(exc, rx.RayError):
            raise TransportError(
                f"the Ray slots actor {self._name!r} is unreachable: {type(exc).__name__}: {exc}"
            ) from exc


if TYPE_CHECKING:

    def _follows_the_protocol(slots: RaySlots) -> Slots:  # checked by mypy, never run
        return slots
