"""The poller: the learned schedule (unit tests) and ONE task per client (against the emulator).

The schedule functions are pure and tested directly, with hypothesis for the space of
samples. The task-count tests run the emulator on its own event loop in another thread, so
that every asyncio task of the test's loop belongs to the test or to the client.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import anyio.from_thread
import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelslab_async import (
    Client,
    ConfigurationError,
    Generation,
    Job,
    PollPolicy,
    RetryPolicy,
)
from modelslab_async._schedule import (
    FIRST_REFRESH,
    SUBMIT,
    ScheduleModel,
    _density,
    _prior_intervals,
    optimal_offsets,
)
from modelslab_async.emulator import Emulator, EmulatorConfig

KEY = "test-key-poller"
FAST_RETRY = RetryPolicy(initial=0.01, max_wait=0.05, max_retries=3)
GUARD = 20.0  # seconds: a hang guard, never an assertion on speed
EPS = 1e-9


def spread_samples(n: int = 60) -> list[tuple[float, float]]:
    """Ready intervals of jobs that finish between 1 s early and 1.5 s late, 0.2 s wide."""
    return [(-1.0 + 2.5 * i / n, -0.8 + 2.5 * i / n) for i in range(n)]


def offsets_for(policy: PollPolicy, samples: list[tuple[float, float]]) -> list[float]:
    return optimal_offsets(samples, fetch_cost=policy.fetch_cost, max_gap=policy.max_gap)


# --- the density estimate ---------------------------------------------------------------------


def _density_per_sample(
    samples: list[tuple[float, float]], lo: float, step: float, n: int, rounds: int = 4
) -> list[float]:
    """The Turnbull EM of ``_density`` written out sample by sample (the reference)."""
    spans = []
    for a, b in samples:
        i1 = min(max(math.ceil((b - lo) / step - 1e-9), 0), n - 1)
        i0 = min(max(math.floor((a - lo) / step + 1e-9) + 1, 0), i1) if b > a else i1
        spans.append((i0, i1))
    weight = 1.0 / len(spans)
    seeds = [s for s in spans if s[1] - s[0] <= max(2, int(1.0 / step))] or spans
    mass = [0.0] * n
    for i0, i1 in seeds:
        for i in range(i0, i1 + 1):
            mass[i] += 1.0 / (i1 - i0 + 1)
    if len(seeds) == len(spans):
        return [m * weight for m in mass]
    for _ in range(rounds):
        new = [0.0] * n
        for i0, i1 in spans:
            seg = mass[i0 : i1 + 1]
            for k, m in enumerate(seg):
                new[i0 + k] += weight * (m / sum(seg) if sum(seg) > 0 else 1.0 / len(seg))
        mass = new
    return mass


@settings(max_examples=80, deadline=None)
@given(
    samples=st.lists(
        st.tuples(
            st.floats(min_value=-2.0, max_value=3.0, allow_nan=False),
            st.sampled_from([0.0, 0.04, 0.1, 0.3, 1.5, 3.0]),
        ).map(lambda t: (t[0], t[0] + t[1])),
        min_size=1,
        max_size=200,
    )
)
def test_density_over_distinct_spans_equals_the_per_sample_estimate(
    samples: list[tuple[float, float]],
) -> None:
    lo = min(samples)[0]
    step = max(0.05, (max(b for _, b in samples) - lo) / 400)
    n = math.ceil(max(max(b for _, b in samples) - lo, 0.05) / step) + 1
    got = _density(samples, lo, step, n)
    assert got == pytest.approx(_density_per_sample(samples, lo, step, n), abs=1e-12)
    assert sum(got) == pytest.approx(1.0)


# --- optimal_offsets --------------------------------------------------------------------------

intervals = st.lists(
    st.tuples(
        st.floats(min_value=-5.0, max_value=20.0, allow_nan=False),
        st.floats(min_value=0.0, max_value=6.0, allow_nan=False),
    ).map(lambda t: (t[0], t[0] + t[1])),
    min_size=1,
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(
    samples=intervals,
    fetch_cost=st.floats(min_value=0.01, max_value=5.0),
    max_gap=st.one_of(st.none(), st.floats(min_value=0.1, max_value=3.0)),
)
def test_optimal_offsets_increase_respect_the_gap_cap_and_cover_every_sample(
    samples: list[tuple[float, float]], fetch_cost: float, max_gap: float | None
) -> None:
    offsets = optimal_offsets(samples, fetch_cost=fetch_cost, max_gap=max_gap)
    assert offsets
    assert all(b > a for a, b in itertools.pairwise(offsets))
    if max_gap is not None:
        gaps = [b - a for a, b in itertools.pairwise(offsets)]
        assert all(g <= max_gap + EPS for g in gaps), (max_gap, gaps)
    # Checks stop only once every sampled job could have been ready.
    assert offsets[-1] >= max(a for a, _ in samples) - 1e-6
    # ... and all lie within the samples' range (on a grid of at most one step).
    lo, hi = min(a for a, _ in samples), max(b for _, b in samples)
    step = max(0.05, (hi - lo) / 400)
    assert lo - EPS <= offsets[0]
    assert offsets[-1] <= hi + step + EPS


def test_optimal_offsets_of_no_samples_is_empty() -> None:
    assert optimal_offsets([], fetch_cost=0.2, max_gap=0.45) == []


def test_the_gap_cap_holds_on_realistic_samples() -> None:
    offsets = offsets_for(PollPolicy(), spread_samples())
    gaps = [b - a for a, b in itertools.pairwise(offsets)]
    assert len(offsets) >= 3
    assert max(gaps) <= 0.45 + EPS


def test_frugal_checks_fewer_times_than_the_default_and_eager_more() -> None:
    samples = spread_samples()
    frugal = offsets_for(PollPolicy.frugal(), samples)
    default = offsets_for(PollPolicy(), samples)
    eager = offsets_for(PollPolicy.eager(), samples)
    assert 1 <= len(frugal) < len(default) <= len(eager)


def test_a_higher_fetch_cost_never_adds_checks() -> None:
    samples = spread_samples()
    counts = [
        len(optimal_offsets(samples, fetch_cost=c, max_gap=None)) for c in (0.05, 0.2, 1.0, 4.0)
    ]
    assert counts == sorted(counts, reverse=True)
    assert counts[0] > counts[-1]


def test_checks_gather_where_jobs_finish() -> None:
    # Most jobs finish in a narrow window 2 s after the anchor, a few much later.
    samples = [(2.0, 2.1)] * 40 + [(6.0, 6.1)] * 2
    offsets = optimal_offsets(samples, fetch_cost=0.2, max_gap=None)
    assert any(2.0 - EPS <= x <= 2.15 for x in offsets)
    assert not any(2.2 < x < 5.9 for x in offsets)  # no checks where nothing finishes


# --- ScheduleModel ----------------------------------------------------------------------------


def test_schedule_model_uses_the_prior_below_min_samples() -> None:
    policy = PollPolicy(min_samples=10)
    model = ScheduleModel(policy)
    prior = optimal_offsets(
        _prior_intervals(2.0, policy.lead), fetch_cost=policy.fetch_cost, max_gap=policy.max_gap
    )
    assert model.offsets(SUBMIT, 2.0) == prior
    for _ in range(9):
        model.observe(SUBMIT, 2.0, 3.0, 3.1)
    assert model.total_samples == 9
    assert model.offsets(SUBMIT, 2.0) == prior
    model.observe(SUBMIT, 2.0, 3.0, 3.1)
    learned = model.offsets(SUBMIT, 2.0)
    assert learned != prior
    assert learned == optimal_offsets(
        [(3.0, 3.1)] * 10, fetch_cost=policy.fetch_cost, max_gap=policy.max_gap
    )


def test_schedule_model_keeps_anchor_kinds_apart_and_lets_sparse_buckets_borrow() -> None:
    policy = PollPolicy(min_samples=4)
    model = ScheduleModel(policy)
    prior_refresh = model.offsets(FIRST_REFRESH, 2.0)
    prior_other = model.offsets(SUBMIT, 8.0)
    for _ in range(4):
        model.observe(SUBMIT, 2.0, 3.0, 3.1)
    assert model.offsets(SUBMIT, 2.0) != model.offsets(FIRST_REFRESH, 2.0)
    assert model.offsets(FIRST_REFRESH, 2.0) == prior_refresh
    # An empty submit bucket borrows the others' samples, stretched by sqrt(eta ratio).
    borrowed = model.offsets(SUBMIT, 8.0)
    assert borrowed != prior_other
    stretch = math.sqrt(9.0 / 3.0)
    assert borrowed[-1] == pytest.approx(3.1 * stretch, abs=0.1)


def test_a_long_eta_is_checked_at_three_fifths_and_re_planned() -> None:
    model = ScheduleModel(PollPolicy(min_samples=1))
    model.observe(SUBMIT, 60.0, -1.0, -0.5)
    assert model.offsets(SUBMIT, 60.0) == [pytest.approx(-24.0)]
    assert model.offsets(FIRST_REFRESH, 30.0) == [pytest.approx(-12.0)]


def test_schedule_model_without_learning_and_with_bad_samples_stays_on_the_prior() -> None:
    model = ScheduleModel(PollPolicy(min_samples=2, learn=False))
    prior = model.offsets(SUBMIT, 1.0)
    for _ in range(5):
        model.observe(SUBMIT, 1.0, 0.0, 0.1)
    assert model.total_samples == 0
    assert model.offsets(SUBMIT, 1.0) == prior
    model = ScheduleModel(PollPolicy(min_samples=1))
    model.observe(SUBMIT, 1.0, 0.5, 0.1)  # hi < lo
    model.observe(SUBMIT, 1.0, -math.inf, 0.1)
    model.observe(SUBMIT, 1.0, 0.0, math.nan)
    assert model.total_samples == 0


def test_the_prior_starts_before_the_eta_by_the_lead() -> None:
    model = ScheduleModel(PollPolicy(lead=1.0))
    offsets = model.offsets(SUBMIT, 0.0)
    assert offsets[0] < 0.0
    assert offsets[0] >= -1.0 - EPS


# --- PollPolicy -------------------------------------------------------------------------------


#: For every PollPolicy field, values out of its range (or of the wrong type).
OUT_OF_RANGE: dict[str, list[Any]] = {
    "fetch_cost": [0, -1.0, math.nan, math.inf, "0.2"],
    "max_gap": [0.0, -0.5, math.nan],
    "lead": [-0.1, math.inf],
    "initial_backoff": [0, -1.0],
    "backoff_factor": [0.5, 0, math.nan],
    "max_backoff": [0, -3.0],
    "jitter": [-0.1, 1.5],
    "max_wait": [0, -1.0, math.inf],
    "webhook_grace": [-1.0, math.nan],
    "fetch_concurrency": [0, -1, 1.5, True, None],
    "max_fetch_errors": [0, 2.0],
    "min_samples": [0, None],
    "history": [0, -400],
    "learn": ["yes", 1, None],
    "explore": [-0.1, 1.01],
    "relative_cost": [-0.25, math.nan],
}


def test_the_range_table_covers_every_poll_policy_field() -> None:
    assert set(OUT_OF_RANGE) == set(attrs.fields_dict(PollPolicy))


@pytest.mark.parametrize(
    ("field", "value"), [(f, v) for f, values in OUT_OF_RANGE.items() for v in values]
)
def test_poll_policy_refuses_values_out_of_range_naming_the_field_and_range(
    field: str, value: Any
) -> None:
    with pytest.raises(ConfigurationError, match=rf"^PollPolicy\.{field}: got .*, allowed "):
        PollPolicy(**{field: value})


def test_fetch_concurrency_zero_is_refused() -> None:
    # It used to be accepted, and then no fetch ever ran: wait() hung even past max_wait.
    with pytest.raises(
        ConfigurationError, match=r"PollPolicy\.fetch_concurrency: got 0, allowed an integer >= 1"
    ):
        PollPolicy(fetch_concurrency=0)


def test_poll_policy_accepts_the_edges_of_every_range() -> None:
    PollPolicy(
        max_gap=None,
        lead=0,
        backoff_factor=1,
        jitter=0,
        max_wait=None,
        webhook_grace=0,
        fetch_concurrency=1,
        max_fetch_errors=1,
        min_samples=1,
        history=1,
        learn=False,
        explore=1,
        relative_cost=0,
    )
    PollPolicy(jitter=1, explore=0)


def test_presets_take_overrides() -> None:
    assert PollPolicy.frugal(max_wait=5.0).max_wait == 5.0
    assert PollPolicy.frugal().fetch_cost > PollPolicy().fetch_cost > PollPolicy.eager().fetch_cost
    assert PollPolicy.eager(fetch_concurrency=3).fetch_concurrency == 3


# --- against the emulator: one poller task ----------------------------------------------------


@contextmanager
def emulator_thread(config: EmulatorConfig) -> Iterator[Emulator]:
    """The emulator on its own event loop in another thread (its tasks are not ours)."""
    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(Emulator(config)) as emu,
    ):
        yield emu


@asynccontextmanager
async def client_on(emu: Emulator, **kw: Any) -> AsyncIterator[Client]:
    kw.setdefault("retry", FAST_RETRY)
    async with Client(KEY, base_url=emu.base_url, **kw) as client:
        with anyio.fail_after(GUARD):
            yield client


async def sample_tasks(until: Callable[[], bool]) -> list[int]:
    """The number of asyncio tasks of this loop, every 2 ms until *until()* holds."""
    samples: list[int] = []
    while not until():
        samples.append(len(asyncio.all_tasks()))
        await anyio.sleep(0.002)
    return samples


@pytest.mark.anyio
@pytest.mark.parametrize("concurrent_submits", [False, True], ids=["staggered", "all-at-once"])
async def test_one_poller_task_however_many_jobs_wait(concurrent_submits: bool) -> None:
    concurrency = 2
    config = EmulatorConfig(workers=50, duration=(0.3, 0.5))
    with emulator_thread(config) as emu:
        before = len(asyncio.all_tasks())
        async with client_on(
            emu, max_in_flight=50, poll=PollPolicy(fetch_concurrency=concurrency)
        ) as client:
            idle = len(asyncio.all_tasks())
            assert idle == before + 1  # the poller, nothing else
            jobs: list[Job | Generation] = []

            async def submit(i: int) -> None:
                jobs.append(await client.submit(prompt=f"job {i}", seed=i))

            if concurrent_submits:
                async with anyio.create_task_group() as tg:
                    for i in range(50):
                        tg.start_soon(submit, i)
            else:
                for i in range(50):
                    await submit(i)
            assert client.statistics().poller.tracked == 50
            samples = await sample_tasks(until=lambda: client.statistics().poller.tracked == 0)
            stats = client.statistics()
        after = len(asyncio.all_tasks())
    assert all(isinstance(j, Job) for j in jobs)
    assert stats.poller.resolved == 50
    assert len(samples) > 10
    # Besides the test's task and the poller: at most `concurrency` fetches at a time, each
    # with aiohttp's own body-writer task while its request is on the wire. Not one per job.
    assert max(samples) <= idle + 2 * concurrency, samples
    assert after == before  # closing the client leaves no task behind


@pytest.mark.anyio
async def test_the_poller_learns_from_resolved_jobs_and_counts_its_fetches() -> None:
    config = EmulatorConfig(workers=8, duration=(0.05, 0.2))
    with emulator_thread(config) as emu:
        async with client_on(emu, max_in_flight=8) as client:
            jobs = [await client.submit(prompt=f"job {i}", seed=i) for i in range(8)]
            for job in jobs:
                await client.wait(job)
            stats = client.statistics()
    assert stats.poller.resolved == 8
    assert stats.poller.learned_samples >= 8
    assert stats.poller.fetches == stats.calls["fetch"]
    assert stats.poller.fetches == sum(j.fetch_calls for j in emu.stats.jobs.values())
    assert stats.poller.tracked == 0
    assert stats.poller.fetching == 0


@pytest.mark.anyio
async def test_an_idle_poller_makes_no_calls() -> None:
    with emulator_thread(EmulatorConfig()) as emu:
        async with client_on(emu) as client:
            await anyio.sleep(0.2)
            stats = client.statistics()
    assert stats.poller.fetches == 0
    assert sum(emu.stats.requests_by_endpoint.values()) == 0
