"""The single poller: one coroutine resolves every ``processing`` job of a client.

It keeps a deadline heap of tracked jobs. Each job's checks follow a schedule of offsets
from its *anchor* (answer time + the API's ``eta``). The schedule is learned online: the
poller records, for every job it resolves, the interval in which the job became ready
(between its last ``processing`` answer and its ``success``), relative to the anchor, in a
per-``eta`` bucket. From that distribution it computes, by dynamic programming on a 50 ms
grid, the check times minimising

    expected fetches + expected lag / fetch_cost

with no gap longer than ``max_gap`` where the distribution has mass, so most checks fall
where jobs actually finish. Before enough jobs were seen a prior spread around the eta is
used. A ``processing`` answer with a new eta re-anchors the job when it moves the expected
ready time past the schedule. Once the schedule is used up, checks back off from
``initial_backoff`` by ``backoff_factor`` to ``max_backoff``, with jitter.

Due jobs are fetched concurrently by at most ``fetch_concurrency`` worker tasks in the
poller's task group; a worker with nothing to do waits for the next due job instead of
ending, so the poller starts few tasks. There is no task per waiting job and no busy loop.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import itertools
import logging
import math
import operator
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import attrs

from ._errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    GenerationFailed,
    GenerationTimeout,
    JobId,
    ModelsLabError,
)
from ._types import Generation, Job

log = logging.getLogger("modelslab_async")

_GRID = 0.05  # seconds


def _positive(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is None and attr.name in ("max_wait", "max_gap"):
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ConfigurationError(f"PollPolicy.{attr.name}: got {value!r}, allowed a number >= 0")


@attrs.frozen(kw_only=True)
class PollPolicy:
    """When the poller checks a processing job.

    - ``fetch_cost``: seconds of result lag one fetch call is worth; lower = more checks
      and less lag. ``relative_cost`` caps it at that share of the typical wait, for jobs
      of a fraction of a second (0 turns the cap off). ``max_gap``: the longest gap
      between two checks where jobs are expected to finish (None: no cap). They shape the
      learned schedule.
    - ``lead``: with no history yet, how much before ``eta`` the prior schedule may start.
    - ``initial_backoff``, ``backoff_factor``, ``max_backoff``, ``jitter``: the checks after
      the schedule is used up (a job later than every job seen so far).
    - ``max_wait``: per-job limit in seconds (None: none); past it ``wait`` raises
      :class:`GenerationTimeout`, and the job can still be fetched by id.
    - ``fetch_concurrency``: fetch calls in flight at once. ``max_fetch_errors``:
      consecutive failed fetches (after the transport's own retries) before the job fails.
    - ``learn``: learn the schedule from resolved jobs (False: prior + backoff only).
      ``explore``: the share of jobs given one extra, earlier check, so that the schedule
      keeps seeing how early jobs can finish.
    - ``webhook_grace``: for a job whose completion a webhook announces, the first check
      (the safety net for a lost webhook) comes ``eta + webhook_grace`` seconds after submit.
    """

    fetch_cost: float = attrs.field(default=0.2, validator=_positive)
    max_gap: float | None = attrs.field(default=0.45, validator=_positive)
    lead: float = attrs.field(default=1.0, validator=_positive)
    initial_backoff: float = attrs.field(default=0.25, validator=_positive)
    backoff_factor: float = attrs.field(default=1.5, validator=_positive)
    max_backoff: float = attrs.field(default=3.0, validator=_positive)
    jitter: float = attrs.field(default=0.1, validator=_positive)
    max_wait: float | None = attrs.field(default=1800.0, validator=_positive)
    webhook_grace: float = attrs.field(default=3.0, validator=_positive)
    fetch_concurrency: int = attrs.field(default=32, validator=_positive)
    max_fetch_errors: int = attrs.field(default=8, validator=_positive)
    min_samples: int = attrs.field(default=24, validator=_positive)
    history: int = attrs.field(default=400, validator=_positive)
    learn: bool = True
    explore: float = attrs.field(default=0.1, validator=_positive)
    relative_cost: float = attrs.field(default=0.25, validator=_positive)

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


# --- the learned schedule -------------------------------------------------------------------

_BUCKET_EDGES = (1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144)
_LONG = 10.0  # seconds of eta above which an unlearned schedule re-plans on fresh etas


def _bucket(eta: float) -> int:
    return bisect.bisect_left(_BUCKET_EDGES, max(0.0, eta))


def _prior_intervals(
    eta: float, lead: float, early: float = 0.4, late: float = 0.5
) -> list[tuple[float, float]]:
    """A flat prior over [-(lead + early*eta), +(1 + late*eta)] around the anchor."""
    lo = -(lead + early * eta)
    hi = 1.0 + late * eta
    n = 40
    step = (hi - lo) / n
    return [(lo + i * step, lo + (i + 1) * step) for i in range(n)]


def _scale(eta_from: float, eta_to: float) -> float:
    """How a ready-offset spread observed at one eta stretches to another (~sqrt)."""
    return math.sqrt((max(0.0, eta_to) + 1.0) / (max(0.0, eta_from) + 1.0))


def _density(
    intervals: Sequence[tuple[float, float]], lo: float, step: float, n: int, rounds: int = 4
) -> list[float]:
    """Mass on the grid from interval-censored samples (self-consistent / Turnbull EM).

    A sample (a, b] says only that the job became ready somewhere in it; its mass is
    spread in proportion to the current estimate inside the interval, so a few wide
    intervals (jobs already ready at their first check) follow the shape the narrow ones
    show instead of smearing mass evenly.
    """
    # Samples on the same grid cells weigh alike: the EM runs over distinct spans, each
    # with its count (a history of hundreds of jobs falls on a few dozen of them).
    spans: dict[tuple[int, int], int] = {}
    top = n - 1
    ceil, floor = math.ceil, math.floor
    for a, b in intervals:
        # (a, b] is open on the left: a check at a found the job not ready.
        i1 = ceil((b - lo) / step - 1e-9)
        i1 = 0 if i1 < 0 else top if i1 > top else i1
        if b > a:
            i0 = floor((a - lo) / step + 1e-9) + 1
            i0 = 0 if i0 < 0 else i1 if i0 > i1 else i0
        else:
            i0 = i1
        spans[i0, i1] = spans.get((i0, i1), 0) + 1
    weight = 1.0 / len(intervals)
    mass = [0.0] * n
    # Start from the narrow intervals alone: the wide ones then follow their shape.
    narrow = max(2, int(1.0 / step))
    seeds = {span: k for span, k in spans.items() if span[1] - span[0] <= narrow} or spans
    for (i0, i1), k in seeds.items():
        share = k / (i1 - i0 + 1)
        for i in range(i0, i1 + 1):
            mass[i] += share
    if len(seeds) == len(spans):
        return [m * weight for m in mass]
    for _ in range(rounds):
        new = [0.0] * n
        for (i0, i1), k in spans.items():
            w = weight * k
            if i0 == i1:
                new[i0] += w
                continue
            seg = mass[i0 : i1 + 1]
            total = sum(seg)
            if total <= 0:
                share = w / (i1 - i0 + 1)
                for i in range(i0, i1 + 1):
                    new[i] += share
            else:
                scale = w / total
                for j, m in enumerate(seg):
                    new[i0 + j] += m * scale
        mass = new
    return mass


def optimal_offsets(
    intervals: Sequence[tuple[float, float]],
    *,
    fetch_cost: float,
    max_gap: float | None,
    tail: float = 0.005,
) -> list[float]:
    """Check offsets minimising E[fetches] + E[lag]/fetch_cost over interval-censored samples.

    No gap between checks is longer than ``max_gap`` where mass lies; the first check
    may leave up to ``tail`` of the mass waiting longer than ``max_gap``.
    """
    if not intervals:
        return []
    lo = min(intervals)[0]
    hi = max(map(operator.itemgetter(1), intervals))
    span = max(hi - lo, _GRID)
    step = max(_GRID, span / 400)
    n = math.ceil(span / step) + 1
    xs = [lo + i * step for i in range(n)]
    mass = _density(intervals, lo, step, n)
    cum_p = list(itertools.accumulate(mass))
    cum_q = list(itertools.accumulate(m * x for m, x in zip(mass, xs, strict=True)))
    total = cum_p[-1]
    lam = 1.0 / max(fetch_cost, 1e-6)
    gap_steps = n if max_gap is None else max(1, int(max_gap / step + 1e-9))
    inf = float("inf")
    best = [inf] * n
    nxt = [-1] * n
    last = n - 1
    while last > 0 and mass[last] <= 1e-12:
        last -= 1
    best[last] = 0.0
    for i in range(last - 1, -1, -1):
        survive = total - cum_p[i]
        if survive <= 1e-12:
            best[i] = 0.0
            continue
        for j in range(i + 1, min(last, i + gap_steps) + 1):
            p = cum_p[j] - cum_p[i]
            lag = xs[j] * p - (cum_q[j] - cum_q[i])
            cost = survive + lam * lag + best[j]
            if cost < best[i]:
                best[i] = cost
                nxt[i] = j
    # The first check: any j, as long as little mass waits longer than max_gap before it.
    first, first_cost = -1, inf
    for j in range(0, last + 1):
        if max_gap is not None:
            k = bisect.bisect_left(xs, xs[j] - max_gap) - 1
            if k >= 0 and cum_p[k] > tail * total:
                break
        lag = xs[j] * cum_p[j] - cum_q[j]
        cost = total + lam * lag + best[j]
        if cost < first_cost:
            first, first_cost = j, cost
    offsets: list[float] = []
    j = first
    while j != -1 and len(offsets) < 10_000:
        offsets.append(xs[j])
        if j >= last:
            break
        j = nxt[j]
    return offsets


#: The kind of anchor a schedule is for: the submit answer, the first fetch answer, later ones.
SUBMIT, FIRST_REFRESH, REFRESH = 0, 1, 2


class ScheduleModel:
    """Histories of ready offsets and the schedules computed from them.

    A history is kept per (anchor kind, eta bucket): offsets from a fetch answer's anchor
    are conditioned on the job not being ready at that fetch, so they are learned apart
    from offsets from the submit answer. A bucket with too few samples borrows those of
    the other buckets of its kind, stretched by the square root of the eta ratio; with
    none at all, a flat prior around the eta is used. An eta over 10 s is checked at three
    fifths of it and re-planned on the fresh eta.
    """

    def __init__(self, policy: PollPolicy) -> None:
        self.policy = policy
        self._samples: dict[tuple[int, int], deque[tuple[float, float, float]]] = {}
        self._cache: dict[tuple[int, int], tuple[int, list[float]]] = {}
        self._prior: dict[tuple[int, int], list[float]] = {}
        self._added: dict[tuple[int, int], int] = {}
        self._kind_added: dict[int, int] = {}

    def observe(self, kind: int, eta: float, lo: float, hi: float) -> None:
        """Record that a job anchored with *eta* became ready between offsets lo and hi."""
        if not self.policy.learn or not (math.isfinite(lo) and math.isfinite(hi)) or hi < lo:
            return
        key = (kind, _bucket(eta))
        history = self._samples.get(key)
        if history is None:
            history = self._samples[key] = deque(maxlen=self.policy.history)
        history.append((lo, hi, eta))
        self._added[key] = self._added.get(key, 0) + 1
        self._kind_added[kind] = self._kind_added.get(kind, 0) + 1

    def _cost(self, kind: int, history: deque[tuple[float, float, float]]) -> float:
        """The fetch cost for a bucket: ``fetch_cost``, but at most ``relative_cost`` of the
        typical wait, so that jobs of a fraction of a second are not left waiting longer
        than they ran (the lag holds an in-flight slot, which costs throughput)."""
        policy = self.policy
        if kind != SUBMIT or policy.relative_cost <= 0:
            return policy.fetch_cost
        waits = sorted(hi + eta for _, hi, eta in history)
        typical = waits[len(waits) // 2]
        return max(0.005, min(policy.fetch_cost, policy.relative_cost * typical))

    def _pooled(self, kind: int) -> int:
        """Samples of *kind* in all buckets (a method for the same reason as _borrowed)."""
        return sum(len(h) for (k, _), h in self._samples.items() if k == kind)

    def _borrowed(self, kind: int, eta: float) -> list[tuple[float, float]]:
        """Every sample of *kind*, stretched to *eta*. (Apart from :meth:`offsets`, whose
        every call would otherwise make cells of the names this comprehension reads.)"""
        return [
            (lo * f, hi * f)
            for (k, _), other in self._samples.items()
            if k == kind
            for lo, hi, seen in other
            for f in (_scale(seen, eta),)
        ]

    @property
    def total_samples(self) -> int:
        return sum(len(h) for h in self._samples.values())

    def offsets(self, kind: int, eta: float) -> list[float]:
        """The check offsets for a job anchored with *eta* (learned, borrowed or prior)."""
        policy = self.policy
        if eta > _LONG:
            # A long wait: check at three fifths of the eta, then re-plan on the fresh eta
            # that answer brings (the end of the schedule re-anchors the job), so the dense,
            # learned checks are spent only on the last few seconds, where they pay.
            return [-0.4 * eta]
        key = (kind, _bucket(eta))
        history = self._samples.get(key)
        if history is not None and len(history) >= policy.min_samples:
            added = self._added.get(key, 0)
            cached = self._cache.get(key)
            if cached is None or added - cached[0] >= max(8, len(history) // 8):
                intervals = [(lo, hi) for lo, hi, _ in history]
                offsets = optimal_offsets(
                    intervals, fetch_cost=self._cost(kind, history), max_gap=policy.max_gap
                )
                cached = (added, offsets)
                self._cache[key] = cached
            return cached[1]
        if kind == SUBMIT and self._pooled(kind) >= policy.min_samples:
            # Re-planned as the kind's history grows (cheaply: every 8 new samples).
            stamp = self._kind_added.get(kind, 0) // 8
            cache_key = (kind, 10_000 + round(eta * 4))
            cached = self._cache.get(cache_key)
            if cached is None or cached[0] != stamp:
                offsets = optimal_offsets(
                    self._borrowed(kind, eta)[-policy.history :],
                    fetch_cost=policy.fetch_cost,
                    max_gap=policy.max_gap,
                )
                cached = (stamp, offsets)
                self._cache[cache_key] = cached
            return cached[1]
        prior_key = (kind, round(eta * 4))
        known = self._prior.get(prior_key)
        if known is None:
            lead = policy.lead if kind == SUBMIT else policy.lead / 2
            known = optimal_offsets(
                _prior_intervals(eta, lead),
                fetch_cost=policy.fetch_cost,
                max_gap=policy.max_gap,
            )
            self._prior[prior_key] = known
        return known


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


# --- tracked jobs ---------------------------------------------------------------------------


@attrs.define(eq=False)
class _Tracked:
    job_id: JobId
    job: Job
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
    wakers: list[asyncio.Future[None]] = attrs.field(factory=list)  # one per waiter
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
    on_resolved: Callable[[_Tracked], None] | None = None


@attrs.frozen
class PollerStats:
    """A snapshot of the poller: jobs waiting, fetches in flight and made, schedule state."""

    tracked: int
    fetching: int
    fetches: int
    resolved: int
    learned_samples: int


class Poller:
    """Resolves processing jobs; run :meth:`run` in the client's task group."""

    def __init__(
        self,
        fetch: Callable[[JobId, Job], Any],
        policy: PollPolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self.policy = policy or PollPolicy()
        self.model = ScheduleModel(self.policy)
        self._clock = clock
        self._heap: list[tuple[float, int, int, _Tracked]] = []
        self._seq = itertools.count()
        self._tracked: dict[JobId, _Tracked] = {}
        self._wakeup: asyncio.Future[None] | None = None
        self._due: deque[_Tracked] = deque()
        self._workers = 0
        self._parked: list[asyncio.Future[None]] = []  # idle workers, waiting for due jobs
        self._fetching = 0
        self._fetches = 0
        self._resolved = 0
        self._running = False

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
        on_resolved: Callable[[_Tracked], None] | None = None,
        first_check: float | None = None,
    ) -> _Tracked:
        """Start tracking *job* (idempotent per job id); returns its entry.

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
        offsets = self.model.offsets(SUBMIT, job.eta)
        if offsets and self.policy.learn and random.random() < self.policy.explore:
            # One early check on a few jobs keeps the left tail of the ready times in view
            # (jobs ready before the first check say only "somewhere before it").
            reach = max(1.0, 0.25 * job.eta + self.policy.lead)
            earliest = max(-max(0.0, job.eta), offsets[0] - reach)
            if earliest < offsets[0]:
                offsets = [random.uniform(earliest, offsets[0]), *offsets]
        deadline = None if self.policy.max_wait is None else answered + self.policy.max_wait
        entry = _Tracked(
            job_id=job.id,
            job=job,
            anchor=anchor,
            eta=job.eta,
            kind=SUBMIT,
            offsets=offsets,
            first_anchor=anchor,
            first_eta=job.eta,
            next_index=0,
            last_check=answered,
            deadline=deadline,
            on_resolved=on_resolved,
        )
        self._tracked[job.id] = entry
        if first_check is not None:
            entry.hold_until = now + first_check
            self._arm(entry, now + first_check)
        else:
            self._arm_next(entry, now)
        return entry

    async def wait(self, entry: _Tracked, timeout: float | None = None) -> Generation:
        """Wait for *entry* to resolve; raises its error. Cancelling leaves the others be."""
        entry.waiters += 1
        try:
            if not entry.resolved:
                waker: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                entry.wakers.append(waker)
                try:
                    if timeout is None:
                        await waker
                    else:
                        with anyio.move_on_after(timeout) as scope:
                            await waker
                        if scope.cancelled_caught and not entry.resolved:
                            raise GenerationTimeout(entry.job_id, timeout)
                finally:
                    if not entry.resolved:
                        entry.wakers.remove(waker)
        finally:
            entry.waiters -= 1
            if not entry.resolved and entry.waiters == 0:
                self._drop(entry)
        if entry.error is not None:
            raise entry.error
        assert entry.result is not None  # resolved with a result when no error
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

    def forget(self, job_id: JobId) -> None:
        """Stop tracking *job_id* (its waiters are woken with a cancellation-free timeout)."""
        entry = self._tracked.get(job_id)
        if entry is not None and not entry.resolved:
            self._drop(entry)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """The poller loop; runs until cancelled (the client's exit cancels it)."""
        self._running = True
        loop = asyncio.get_running_loop()
        try:
            async with anyio.create_task_group() as tg:
                task_status.started()
                while True:
                    now = self._clock()
                    while self._heap and self._heap[0][0] <= now:
                        _, _, version, entry = heapq.heappop(self._heap)
                        if version != entry.version or entry.resolved or entry.in_fetch:
                            continue
                        if entry.deadline is not None and now >= entry.deadline:
                            waited = now - (entry.deadline - (self.policy.max_wait or 0.0))
                            self._resolve(entry, error=GenerationTimeout(entry.job_id, waited))
                            continue
                        entry.in_fetch = True
                        self._due.append(entry)
                        # An idle worker takes it; else a new one, up to fetch_concurrency.
                        # Workers stay, so a busy poller starts few tasks.
                        if not self._unpark() and self._workers < self.policy.fetch_concurrency:
                            self._workers += 1
                            tg.start_soon(self._worker)
                    self._wakeup = wakeup = loop.create_future()
                    timer = None
                    if self._heap:
                        timer = loop.call_later(
                            max(0.0, self._heap[0][0] - self._clock()), _set_done, wakeup
                        )
                    try:
                        await wakeup
                    finally:
                        if timer is not None:
                            timer.cancel()
        finally:
            self._running = False
            for entry in list(self._tracked.values()):
                if not entry.resolved:
                    self._drop(entry)

    # --- internals ------------------------------------------------------------------------

    def _arm(self, entry: _Tracked, when: float) -> None:
        entry.version += 1
        heapq.heappush(self._heap, (when, next(self._seq), entry.version, entry))
        if self._heap[0][3] is entry and self._wakeup is not None:
            _set_done(self._wakeup)

    def _arm_next(self, entry: _Tracked, now: float) -> None:
        """Arm the next scheduled check after *now*, or the next backoff step."""
        offsets = entry.offsets
        i = entry.next_index
        while i < len(offsets) and entry.anchor + offsets[i] <= now + 0.01:
            i += 1
        if i < len(offsets):
            entry.next_index = i + 1
            gap = entry.anchor + offsets[i] - now
            jitter = min(0.02, self.policy.jitter * gap) * random.random()  # uniform(0, ...)
            self._arm(entry, now + gap + jitter)
            return
        entry.next_index = len(offsets)
        self._arm_backoff(entry, now)
        entry.backoffs += 1

    def _unpark(self) -> bool:
        """Wake one idle worker; False if none is idle."""
        while self._parked:
            parked = self._parked.pop()
            if not parked.done():
                parked.set_result(None)
                return True
        return False

    async def _worker(self) -> None:
        """Check due jobs, oldest first; when none is left, wait idle for more."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                while self._due:
                    await self._check(self._due.popleft())
                parked = loop.create_future()
                self._parked.append(parked)
                await parked
        finally:
            self._workers -= 1

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
                self._resolve(entry, error=exc)
                return
            except (APIError, ModelsLabError) as exc:
                entry.errors += 1
                log.debug("fetch %s failed (%d): %s", entry.job_id, entry.errors, exc)
                if entry.errors >= self.policy.max_fetch_errors:
                    self._resolve(entry, error=exc)
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
                self._resolve(entry, result=answer)
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
            entry.offsets = self.model.offsets(entry.kind, answer.eta)
            entry.next_index = 0
            entry.backoffs = 0
        self._arm_next(entry, self._clock())

    def _resolve(
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
        for waker in entry.wakers:
            _set_done(waker)
        entry.wakers.clear()
        if entry.on_resolved is not None:
            entry.on_resolved(entry)

    def _drop(self, entry: _Tracked) -> None:
        """Stop tracking without a result (its last waiter left, or the poller stopped)."""
        entry.version += 1
        if self._tracked.get(entry.job_id) is entry:
            del self._tracked[entry.job_id]
        if entry.on_resolved is not None:
            callback, entry.on_resolved = entry.on_resolved, None
            callback(entry)
