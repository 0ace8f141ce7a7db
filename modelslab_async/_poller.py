"""The single poller: one coroutine resolves every ``processing`` job of a client.

It keeps a deadline heap of tracked jobs. Each job's checks follow a schedule of offsets
from its *anchor* (answer time + the API's ``eta``), learned online from the jobs it
resolves (see :mod:`._schedule`). A ``processing`` answer with a new eta re-anchors the
job when it moves the expected ready time past the schedule. Once the schedule is used
up, checks back off from ``initial_backoff`` by ``backoff_factor`` to ``max_backoff``,
with jitter. A job past ``max_wait`` is resolved with :class:`GenerationTimeout`.

Due jobs go to at most ``fetch_concurrency`` worker tasks in the poller's task group,
through a memory object stream; a worker with nothing to do waits for the next due job
instead of ending, so the poller starts few tasks. There is no task per waiting job and
no busy loop. When the poller stops (its client closes), every job still tracked is
resolved with :class:`ClientStateError`, so no waiter is left hanging.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio
import anyio.abc
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    ClientStateError,
    GenerationFailed,
    GenerationTimeout,
    JobId,
    ModelsLabError,
)
from ._schedule import FIRST_REFRESH, REFRESH, SUBMIT, ScheduleModel
from ._transport import flag, number
from ._types import Generation, Job

__all__ = ["PollPolicy", "Poller", "PollerStats"]

log = logging.getLogger("modelslab_async")


@attrs.frozen(kw_only=True)
class PollPolicy:
    """When the poller checks a processing job. Every field is checked at construction
    (:class:`ConfigurationError` names the field and its allowed range).

    - ``fetch_cost`` (> 0): seconds of result lag one fetch call is worth; lower = more
      checks and less lag. ``relative_cost`` (>= 0) caps it at that share of the typical
      wait, for jobs of a fraction of a second (0 turns the cap off). ``max_gap`` (> 0 or
      None): the longest gap between two checks where jobs are expected to finish (None:
      no cap). They shape the learned schedule.
    - ``lead`` (>= 0): with no history yet, how much before ``eta`` the prior schedule may
      start.
    - ``initial_backoff`` (> 0), ``backoff_factor`` (>= 1), ``max_backoff`` (> 0),
      ``jitter`` (0..1): the checks after the schedule is used up (a job later than every
      job seen so far).
    - ``max_wait`` (> 0 or None): per-job limit in seconds (None: none); past it ``wait``
      raises :class:`GenerationTimeout`, and the job can still be fetched by id.
    - ``fetch_concurrency`` (>= 1): fetch calls in flight at once. ``max_fetch_errors``
      (>= 1): consecutive failed fetches (after the transport's own retries) before the job
      fails.
    - ``learn``: learn the schedule from resolved jobs (False: prior + backoff only).
      ``min_samples`` (>= 1): resolved jobs an eta bucket needs before its own schedule
      is used; ``history`` (>= 1): jobs kept per bucket. ``explore`` (0..1): the share of
      jobs given one extra, earlier check, so that the schedule keeps seeing how early
      jobs can finish.
    - ``busy_fetch_cost`` (> 0) and ``busy_max_gap`` (> 0 or None) replace ``fetch_cost``
      and ``max_gap`` (when tighter) while submits wait for a slot: the account's queue
      cap binds, and each second between a job's end and its check leaves a paid slot
      idle, so checks come denser where jobs finish (a slot handed on about 0.1 s after
      its job ends, at about 1.5 to 2 times the fetches; ``benchmarks/planlimit.py``).
    - ``webhook_grace`` (>= 0): for a job whose completion a webhook announces, the first
      check (the safety net for a lost webhook) comes ``eta + webhook_grace`` seconds after
      submit.
    """

    fetch_cost: float = attrs.field(default=0.2, validator=number(minimum=0, above=True))
    max_gap: float | None = attrs.field(
        default=0.45, validator=number(minimum=0, above=True, optional=True)
    )
    lead: float = attrs.field(default=1.0, validator=number(minimum=0))
    initial_backoff: float = attrs.field(default=0.25, validator=number(minimum=0, above=True))
    backoff_factor: float = attrs.field(default=1.5, validator=number(minimum=1))
    max_backoff: float = attrs.field(default=3.0, validator=number(minimum=0, above=True))
    jitter: float = attrs.field(default=0.1, validator=number(minimum=0, maximum=1))
    max_wait: float | None = attrs.field(
        default=1800.0, validator=number(minimum=0, above=True, optional=True)
    )
    webhook_grace: float = attrs.field(default=3.0, validator=number(minimum=0))
    fetch_concurrency: int = attrs.field(default=32, validator=number(minimum=1, integer=True))
    max_fetch_errors: int = attrs.field(default=8, validator=number(minimum=1, integer=True))
    min_samples: int = attrs.field(default=24, validator=number(minimum=1, integer=True))
    history: int = attrs.field(default=400, validator=number(minimum=1, integer=True))
    learn: bool = attrs.field(default=True, validator=flag)
    explore: float = attrs.field(default=0.1, validator=number(minimum=0, maximum=1))
    relative_cost: float = attrs.field(default=0.25, validator=number(minimum=0))
    busy_fetch_cost: float = attrs.field(default=0.05, validator=number(minimum=0, above=True))
    busy_max_gap: float | None = attrs.field(
        default=0.2, validator=number(minimum=0, above=True, optional=True)
    )

    @classmethod
    def frugal(cls, **changes: Any) -> PollPolicy:
        """Few fetch calls (about 1.3 per job), at the cost of more lag."""
        base = cls(
            fetch_cost=4.0,
            max_gap=None,
            lead=0.0,
            initial_backoff=0.5,
            max_backoff=5.0,
            relative_cost=0.0,
        )
        return attrs.evolve(base, **changes)

    @classmethod
    def eager(cls, **changes: Any) -> PollPolicy:
        """Lowest lag, more fetch calls (web backends waiting on one image)."""
        return attrs.evolve(cls(fetch_cost=0.05, max_gap=0.25), **changes)


# --- tracked jobs ---------------------------------------------------------------------------


@attrs.define(eq=False)
class _Tracked:
    job_id: JobId
    job: Job
    answered: float  # the poller's clock when the API answered the submit
    anchor: float
    eta: float
    kind: int
    offsets: list[float]
    first_anchor: float
    first_eta: float
    next_index: int
    last_check: float
    deadline: float | None
    resolved: bool = False
    done: anyio.Event | None = None  # made by the first waiter, set when resolved
    result: Generation | None = None
    error: ModelsLabError | None = None
    waiters: int = 0
    fetches: int = 0
    errors: int = 0
    backoffs: int = 0
    version: int = 0
    in_fetch: bool = False
    wake_pending: bool = False
    hold_until: float | None = None  # a webhook job's safety-net check (a wake keeps it)
    on_resolved: OnResolved | None = None
    busy: bool = False  # its offsets are the busy schedule's (submits wait for a slot)


@attrs.frozen
class PollerStats:
    """A snapshot of the poller: jobs waiting, fetches in flight and made, schedule state."""

    tracked: int
    fetching: int
    fetches: int
    resolved: int
    learned_samples: int


Fetch = Callable[[JobId, Job], Coroutine[Any, Any, Job | Generation]]
OnResolved = Callable[["_Tracked"], Awaitable[None]]


class Poller:
    """Resolves processing jobs; run :meth:`run` in the client's task group."""

    def __init__(
        self,
        fetch: Fetch,
        policy: PollPolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        self._fetch = fetch
        # True while submits wait for a slot: checks then follow the busy schedule.
        self._busy = busy or (lambda: False)
        self.policy = policy or PollPolicy()
        self.model = ScheduleModel(self.policy)
        self._clock = clock
        self._heap: list[tuple[float, int, int, _Tracked]] = []
        self._seq = itertools.count()
        self._tracked: dict[JobId, _Tracked] = {}
        self._wakeup: anyio.Event | None = None
        self._workers = 0
        self._fetching = 0
        self._fetches = 0
        self._resolved = 0

    # --- public ---------------------------------------------------------------------------

    def statistics(self) -> PollerStats:
        return PollerStats(
            tracked=len(self._tracked),
            fetching=self._fetching,
            fetches=self._fetches,
            resolved=self._resolved,
            learned_samples=self.model.total_samples,
        )

    def track(
        self,
        job: Job,
        *,
        on_resolved: OnResolved | None = None,
        first_check: float | None = None,
    ) -> _Tracked:
        """Start tracking *job*; a job already tracked keeps its entry, which is returned.

        *on_resolved* is awaited once (shielded from cancellation), when the job resolves,
        after its waiters are woken, or when it stops being tracked (its last waiter left).
        ``first_check`` (seconds from now) overrides the schedule's first check, e.g. for
        webhook jobs whose poll is only a safety net.
        """
        existing = self._tracked.get(job.id)
        if existing is not None and not existing.resolved:
            return existing
        now = self._clock()
        elapsed = max(0.0, time.time() - job.submitted_at)
        answered = now - min(elapsed, 3600.0)
        anchor = answered + max(0.0, job.eta)
        busy = self._busy()
        offsets = self.model.offsets(SUBMIT, job.eta, busy)
        if offsets and self.policy.learn and random.random() < self.policy.explore:
            # One early check on a few jobs keeps the left tail of the ready times in view
            # (jobs ready before the first check say only "somewhere before it").
            reach = max(1.0, 0.25 * job.eta + self.policy.lead)
            earliest = max(-max(0.0, job.eta), offsets[0] - reach)
            if earliest < offsets[0]:
                offsets = [random.uniform(earliest, offsets[0]), *offsets]
        max_wait = self.policy.max_wait
        entry = _Tracked(
            job_id=job.id,
            job=job,
            answered=answered,
            anchor=anchor,
            eta=job.eta,
            kind=SUBMIT,
            offsets=offsets,
            first_anchor=anchor,
            first_eta=job.eta,
            next_index=0,
            last_check=answered,
            deadline=None if max_wait is None else answered + max_wait,
            on_resolved=on_resolved,
            busy=busy,
        )
        self._tracked[job.id] = entry
        if first_check is not None:
            entry.hold_until = now + first_check
            self._arm(entry, now + first_check)
        else:
            self._arm_next(entry, now)
        return entry

    async def wait(self, entry: _Tracked, timeout: float | None = None) -> Generation:
        """Wait for *entry* to resolve; raises its error, or :class:`GenerationTimeout`
        after *timeout* seconds. Cancelling one waiter leaves the others be; when the last
        waiter leaves an unresolved job, the job is no longer tracked."""
        entry.waiters += 1
        try:
            if not entry.resolved:
                if entry.done is None:
                    entry.done = anyio.Event()
                if timeout is None:
                    await entry.done.wait()
                else:
                    with anyio.move_on_after(timeout):
                        await entry.done.wait()
                    if not entry.resolved:
                        raise GenerationTimeout(entry.job_id, timeout)
        finally:
            entry.waiters -= 1
            if not entry.resolved and entry.waiters == 0:
                await self._drop(entry)
        if entry.error is not None:
            raise entry.error
        assert entry.result is not None  # resolved: a result or an error
        return entry.result

    def wake(self, job_id: JobId) -> None:
        """Check *job_id* now (a webhook said it is done); the fetch confirms it."""
        entry = self._tracked.get(job_id)
        if entry is None or entry.resolved:
            return
        if entry.in_fetch:
            entry.wake_pending = True
            return
        self._arm(entry, self._clock())

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """The poller loop; runs until cancelled (the client's exit cancels it). Jobs still
        tracked then are resolved with :class:`ClientStateError`."""
        send, receive = anyio.create_memory_object_stream[_Tracked](math.inf)
        try:
            async with anyio.create_task_group() as tg, send, receive:
                task_status.started()
                while True:
                    await self._dispatch_due(tg, send, receive)
                    self._wakeup = wakeup = anyio.Event()
                    delay = self._heap[0][0] - self._clock() if self._heap else math.inf
                    with anyio.move_on_after(delay):
                        await wakeup.wait()
        finally:
            self._wakeup = None
            for entry in list(self._tracked.values()):
                await self._resolve(
                    entry,
                    error=ClientStateError(
                        f"the client closed while job {entry.job_id} was still processing "
                        "(it goes on: fetch or resume it by id with another client)"
                    ),
                )

    # --- internals ------------------------------------------------------------------------

    async def _dispatch_due(
        self,
        tg: anyio.abc.TaskGroup,
        send: MemoryObjectSendStream[_Tracked],
        receive: MemoryObjectReceiveStream[_Tracked],
    ) -> None:
        """Hand every due job to a worker (an idle one, or a new one up to
        ``fetch_concurrency``); resolve those past their deadline."""
        now = self._clock()
        while self._heap and self._heap[0][0] <= now:
            _, _, version, entry = heapq.heappop(self._heap)
            if version != entry.version or entry.resolved or entry.in_fetch:
                continue
            if entry.deadline is not None and now >= entry.deadline:
                waited = now - entry.answered
                await self._resolve(entry, error=GenerationTimeout(entry.job_id, waited))
                continue
            entry.in_fetch = True
            send.send_nowait(entry)
            # Still in the buffer: no worker was idle to take it.
            if (
                receive.statistics().current_buffer_used
                and self._workers < self.policy.fetch_concurrency
            ):
                self._workers += 1
                tg.start_soon(self._worker, receive)

    async def _worker(self, receive: MemoryObjectReceiveStream[_Tracked]) -> None:
        """Check due jobs in the order they fell due; between them, wait idle."""
        try:
            async for entry in receive:
                await self._check(entry)
        finally:
            self._workers -= 1

    def _arm(self, entry: _Tracked, when: float) -> None:
        """Schedule *entry*'s next check at *when* (never after its deadline)."""
        if entry.deadline is not None and when > entry.deadline:
            when = entry.deadline
        entry.version += 1
        heapq.heappush(self._heap, (when, next(self._seq), entry.version, entry))
        if self._heap[0][3] is entry and self._wakeup is not None:
            self._wakeup.set()

    def _arm_next(self, entry: _Tracked, now: float) -> None:
        """Arm the next scheduled check after *now*, or the next backoff step."""
        busy = self._busy()
        if busy != entry.busy and entry.next_index < len(entry.offsets):
            # Slots started (or stopped) being waited for: the rest of the schedule
            # follows the other one.
            entry.busy = busy
            entry.offsets = self.model.offsets(entry.kind, entry.eta, busy)
            entry.next_index = 0
        offsets = entry.offsets
        i = entry.next_index
        while i < len(offsets) and entry.anchor + offsets[i] <= now + 0.01:
            i += 1
        if i < len(offsets):
            entry.next_index = i + 1
            gap = entry.anchor + offsets[i] - now
            jitter = random.uniform(0.0, min(0.02, self.policy.jitter * gap))
            self._arm(entry, now + gap + jitter)
            return
        entry.next_index = len(offsets)
        self._arm_backoff(entry, now)
        entry.backoffs += 1

    async def _check(self, entry: _Tracked) -> None:
        try:
            if entry.resolved or self._tracked.get(entry.job_id) is not entry:
                return  # resolved or dropped while it waited for a worker
            self._fetching += 1
            sent = self._clock()
            try:
                entry.fetches += 1
                self._fetches += 1
                answer = await self._fetch(entry.job_id, entry.job)
            except (GenerationFailed, AuthenticationError, BadRequestError) as exc:
                await self._resolve(entry, error=exc)
                return
            except (APIError, ModelsLabError) as exc:
                entry.errors += 1
                log.debug("fetch %s failed (%d): %s", entry.job_id, entry.errors, exc)
                if entry.errors >= self.policy.max_fetch_errors:
                    await self._resolve(entry, error=exc)
                elif not entry.resolved:
                    entry.backoffs += 1
                    self._arm_backoff(entry, self._clock())
                return
            finally:
                self._fetching -= 1
            entry.errors = 0
            if isinstance(answer, Generation):
                self.model.observe(
                    entry.kind, entry.eta, entry.last_check - entry.anchor, sent - entry.anchor
                )
                if entry.kind != SUBMIT:  # the submit schedule learns from every job
                    self.model.observe(
                        SUBMIT,
                        entry.first_eta,
                        entry.last_check - entry.first_anchor,
                        sent - entry.first_anchor,
                    )
                await self._resolve(entry, result=answer)
                return
            self._on_processing(entry, answer, sent)
        finally:
            entry.in_fetch = False

    def _arm_backoff(self, entry: _Tracked, now: float) -> None:
        """Arm the check after backoff step ``entry.backoffs``, with jitter."""
        wait = min(
            self.policy.max_backoff,
            self.policy.initial_backoff * self.policy.backoff_factor ** min(entry.backoffs, 30),
        )
        self._arm(entry, now + wait * (1 + random.uniform(0, self.policy.jitter)))

    def _on_processing(self, entry: _Tracked, answer: Job, sent: float) -> None:
        """Keep the schedule unless the fresh eta puts the job past its end; then re-anchor
        on the fresh eta, with a schedule learned from jobs in the same state."""
        entry.last_check = sent
        if entry.wake_pending:
            entry.wake_pending = False
            self._arm(entry, self._clock())
            return
        if entry.hold_until is not None and entry.hold_until > self._clock():
            self._arm(entry, entry.hold_until)  # an early wake-up: back to the safety net
            return
        anchor = sent + max(0.0, answer.eta)
        end = entry.anchor + (entry.offsets[-1] if entry.offsets else 0.0)
        if anchor > end and answer.eta > 0:
            entry.anchor = anchor
            entry.eta = answer.eta
            entry.kind = FIRST_REFRESH if entry.kind == SUBMIT else REFRESH
            entry.busy = self._busy()
            entry.offsets = self.model.offsets(entry.kind, answer.eta, entry.busy)
            entry.next_index = 0
            entry.backoffs = 0
        self._arm_next(entry, self._clock())

    async def _resolve(
        self,
        entry: _Tracked,
        *,
        result: Generation | None = None,
        error: ModelsLabError | None = None,
    ) -> None:
        if entry.resolved:
            return
        entry.result = result
        entry.error = error
        entry.version += 1
        self._resolved += 1
        if self._tracked.get(entry.job_id) is entry:
            del self._tracked[entry.job_id]
        entry.resolved = True
        if entry.done is not None:
            entry.done.set()
        await self._call_back(entry)

    async def _drop(self, entry: _Tracked) -> None:
        """Stop tracking without a result (its last waiter left)."""
        entry.version += 1
        if self._tracked.get(entry.job_id) is entry:
            del self._tracked[entry.job_id]
        await self._call_back(entry)

    @staticmethod
    async def _call_back(entry: _Tracked) -> None:
        callback, entry.on_resolved = entry.on_resolved, None
        if callback is not None:
            with anyio.CancelScope(shield=True):  # it frees the job's slot
                await callback(entry)
