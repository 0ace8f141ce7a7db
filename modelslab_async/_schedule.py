"""The learned polling schedule: when to check a job so that few fetches find it late.

Pure computation (no I/O, no clock, no event loop): the poller feeds it the interval in
which each resolved job became ready, relative to its *anchor* (answer time + the API's
``eta``), and asks it for the check offsets of the next job.

The intervals are kept per (anchor kind, ``eta`` bucket). From them :func:`optimal_offsets`
computes, by dynamic programming on a grid of at least 50 ms, the check times minimising

    expected fetches + expected lag / fetch_cost

with no gap longer than ``max_gap`` where jobs are expected to finish, so most checks fall
where jobs actually finish. Before enough jobs were seen, a flat prior spread around the
eta stands in for the history.
"""

from __future__ import annotations

import bisect
import itertools
import math
import operator
from collections import deque
from collections.abc import Sequence
from typing import Protocol

__all__ = [
    "FIRST_REFRESH",
    "REFRESH",
    "SUBMIT",
    "ScheduleModel",
    "SchedulePolicy",
    "optimal_offsets",
]

_GRID = 0.05  # seconds: the finest step of the schedule's grid


class SchedulePolicy(Protocol):
    """The knobs of the schedule (:class:`~modelslab_async.PollPolicy` has them all)."""

    @property
    def fetch_cost(self) -> float: ...
    @property
    def max_gap(self) -> float | None: ...
    @property
    def lead(self) -> float: ...
    @property
    def min_samples(self) -> int: ...
    @property
    def history(self) -> int: ...
    @property
    def learn(self) -> bool: ...
    @property
    def relative_cost(self) -> float: ...


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
    for a, b in intervals:
        # (a, b] is open on the left: a check at a found the job not ready.
        i1 = min(max(math.ceil((b - lo) / step - 1e-9), 0), n - 1)
        i0 = min(max(math.floor((a - lo) / step + 1e-9) + 1, 0), i1)
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


# The kind of anchor a schedule is for:
SUBMIT = 0  # the submit answer,
FIRST_REFRESH = 1  # the first fetch answer that re-anchored the job,
REFRESH = 2  # a later one.


class ScheduleModel:
    """Histories of ready offsets and the schedules computed from them.

    A history is kept per (anchor kind, eta bucket): offsets from a fetch answer's anchor
    are conditioned on the job not being ready at that fetch, so they are learned apart
    from offsets from the submit answer. A bucket with too few samples borrows those of
    the other buckets of its kind, stretched by the square root of the eta ratio; with
    none at all, a flat prior around the eta is used. An eta over 10 s is checked at three
    fifths of it and re-planned on the fresh eta.
    """

    def __init__(self, policy: SchedulePolicy) -> None:
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
        """Samples of *kind* in all buckets."""
        return sum(len(h) for (k, _), h in self._samples.items() if k == kind)

    def _borrowed(self, kind: int, eta: float) -> list[tuple[float, float]]:
        """Every sample of *kind*, stretched to *eta*."""
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
            # Re-planned every 8 new samples of the kind, not on every job.
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
