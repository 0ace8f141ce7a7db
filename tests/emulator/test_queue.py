"""The GPU model: FIFO over N workers, honest integer eta, updated eta on fetch."""

from __future__ import annotations

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelslab_async.emulator._queue import GpuModel, Job

from .helpers import fetch, running, submit

pytestmark = pytest.mark.anyio


@settings(max_examples=200, deadline=None)
@given(
    workers=st.integers(1, 6),
    arrivals=st.lists(
        st.tuples(st.floats(0, 2), st.floats(0.01, 1), st.integers(1, 4)), min_size=1, max_size=40
    ),
)
def test_schedule_is_fifo_and_never_exceeds_workers(
    workers: int, arrivals: list[tuple[float, float, int]]
) -> None:
    gpu = GpuModel(workers, (0.1, 0.3))
    now = 0.0
    jobs = []
    for seq, (gap, duration, samples) in enumerate(arrivals):
        now += gap
        job = Job.for_queue(seq, now, samples)
        gpu.schedule(job, now, duration)
        jobs.append(job)
        assert job.started_at >= job.submitted_at
        assert job.ready_at == pytest.approx(job.started_at + duration)
        assert gpu.estimate(job, now) > 0
    starts = [j.started_at for j in jobs]
    assert starts == sorted(starts)  # FIFO
    for j in jobs:  # at any start instant at most `workers` jobs are running
        running_jobs = [o for o in jobs if o.started_at <= j.started_at < o.ready_at]
        assert len(running_jobs) <= workers
    # work-conserving: a job waits only while every worker is busy
    for j in jobs:
        if j.started_at > j.submitted_at:
            busy = [o for o in jobs if o.started_at < j.started_at and o.ready_at >= j.started_at]
            assert len(busy) >= workers


async def test_eta_is_an_honest_integer_estimate_from_queue_position() -> None:
    async with running(workers=1, duration=(1.0, 1.0)) as (emu, s):
        etas = []
        for _ in range(4):
            _, body, _ = await submit(emu, s)
            etas.append(body["eta"])
        ready = [j.ready_at - j.submitted_at for j in emu.stats.jobs.values()]
    assert all(type(e) is int for e in etas)
    # running job: ~1 s; queued job k waits (k - 0.5) jobs on average plus its own second
    assert etas == [1, 2, 3, 4]
    for eta, true in zip(etas, ready, strict=False):
        assert abs(eta - true) <= 1.0  # an estimate, close to the truth
    assert [round(r) for r in ready] == [1, 2, 3, 4]


@pytest.mark.parametrize(("mode", "factor"), [("accurate", 1.0), ("under", 0.5), ("over", 1.5)])
async def test_eta_modes(mode: str, factor: float) -> None:
    # accurate estimates: 1 s (running), then 0.5 + k jobs of wait + 1 s own run
    expected = [int(est * factor + 0.5) for est in (1.0, 1.5, 2.5, 3.5)]
    async with running(workers=1, duration=(1.0, 1.0), eta_mode=mode, eta_error=0.5) as (
        emu,
        s,
    ):
        etas = [(await submit(emu, s))[1]["eta"] for _ in range(4)]
    assert etas == expected


async def test_fetch_eta_is_recomputed() -> None:
    async with running(workers=1, duration=(2.0, 2.0)) as (emu, s):
        _, first, _ = await submit(emu, s)
        _, second, _ = await submit(emu, s)
        assert (first["eta"], second["eta"]) == (2, 3)  # 2 s run; 1 s (half a job) + 2 s
        await anyio.sleep(1.0)
        _, again, _ = await fetch(emu, s, second["id"])
        assert again["status"] == "processing"
        # first job has ~1 s left (estimated as half a job), then its own 2 s
        assert again["eta"] == 3
        _, now_first, _ = await fetch(emu, s, first["id"])
        assert now_first["eta"] == 1


async def test_workers_run_in_parallel_and_ideal_makespan() -> None:
    async with running(workers=2, duration=(0.1, 0.1)) as (emu, s):
        for _ in range(6):
            await submit(emu, s)
        stats = emu.stats
        jobs = sorted(stats.jobs.values(), key=lambda j: j.id)
        first = jobs[0].submitted_at
        offsets = [round(j.ready_at - first, 1) for j in jobs]
        assert offsets == [0.1, 0.1, 0.2, 0.2, 0.3, 0.3]
        assert stats.ideal_makespan() == pytest.approx(0.3, abs=0.03)
        assert stats.peak_queue == 4


async def test_durations_are_seeded() -> None:
    async def durations(seed: int) -> list[float]:
        async with running(workers=8, duration=(0.5, 1.5), seed=seed) as (emu, s):
            for _ in range(5):
                await submit(emu, s, samples=2)
            return [j.ready_at - j.started_at for j in emu.stats.jobs.values()]

    a, b, c = await durations(1), await durations(1), await durations(2)
    assert a == pytest.approx(b)
    assert a != pytest.approx(c)
    assert all(1.0 <= d <= 3.0 for d in a)
