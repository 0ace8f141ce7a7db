"""Client against the emulator over 127.0.0.1: submit, wait, fetch, download, text2img.

No mocks: every test starts a real :class:`Emulator` and talks to it over HTTP. Nothing
asserts on elapsed time; the tests count calls (the client's own counters and the
emulator's ``stats``) instead. ``fail_after`` bounds are hang guards only.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import Callable, Collection
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from modelslab_async import (
    AuthenticationError,
    Client,
    ClientStateError,
    ConfigurationError,
    DownloadError,
    DownloadPolicy,
    Generation,
    GenerationFailed,
    GenerationTimeout,
    Job,
    Lease,
    LocalSlots,
    ModelsLabError,
    PollPolicy,
    RetryPolicy,
    Slots,
    SlotStatistics,
    Text2ImgRequest,
    TransportError,
)
from modelslab_async._slots import AdaptiveLimit
from modelslab_async.emulator import Emulator, EmulatorConfig
from modelslab_async.emulator._config import EtaMode
from tests._emulated import GUARD, emulated_client, job_stats
from tests._redis_server import RedisServer

pytestmark = pytest.mark.anyio

#: A recognisable canary: it must never show up in a message, a repr or a log line.
KEY = "sk-CANARY-7f3c9e21-do-not-print"
PNG = b"\x89PNG\r\n\x1a\n"
FAST_RETRY = RetryPolicy(initial=0.01, max_wait=0.05, max_retries=3)


def emulated(
    config: EmulatorConfig | None = None, /, **client_kw: Any
) -> AbstractAsyncContextManager[tuple[Emulator, Client]]:
    """An emulator (fast jobs unless *config* says otherwise) and an open client on it."""
    client_kw.setdefault("retry", FAST_RETRY)
    config = config or EmulatorConfig(workers=4, duration=(0.05, 0.15))
    return emulated_client(KEY, config, **client_kw)


# --- submit / wait ----------------------------------------------------------------------------


async def test_immediate_success_submit_returns_a_generation_without_fetching() -> None:
    config = EmulatorConfig(workers=2, duration=0.05, sync_threshold=1.0)
    async with emulated(config) as (emu, client):
        gen = await client.submit(prompt="a red fox", seed=3)
        assert isinstance(gen, Generation)
        assert await client.wait(gen) is gen
        stats = client.statistics()
    assert gen.status == "success"
    assert gen.id in emu.stats.jobs
    assert len(gen.output) == 1
    assert emu.stats.requests_by_endpoint["fetch"] == 0
    assert stats.calls["fetch"] == 0
    assert stats.in_flight == 0
    assert stats.poller.tracked == 0


async def test_processing_then_success() -> None:
    async with emulated(EmulatorConfig(workers=2, duration=0.2)) as (emu, client):
        job = await client.submit(Text2ImgRequest(prompt="a red fox", seed=1, samples=2))
        assert isinstance(job, Job)
        assert client.statistics().poller.tracked == 1
        assert client.statistics().in_flight == 1
        gen = await client.wait(job)
        stats = client.statistics()
    assert gen.id == job.id
    assert gen.status == "success"
    assert len(gen.output) == 2
    assert gen.request == job.request
    js = job_stats(emu, job.id)
    assert js.first_success_at is not None
    assert js.fetch_calls >= 1
    assert stats.calls["fetch"] == js.fetch_calls
    assert stats.in_flight == 0
    assert stats.poller.tracked == 0


@pytest.mark.parametrize("eta_mode", ["accurate", "under", "over"])
async def test_a_wrong_eta_still_resolves_every_job_with_a_bounded_number_of_fetches(
    eta_mode: EtaMode,
) -> None:
    # One worker and 8 queued jobs of 0.25 s: etas of 1-2 s that are halved or 1.5x.
    config = EmulatorConfig(workers=1, duration=0.25, eta_mode=eta_mode, eta_error=0.5)
    async with emulated(config, max_in_flight=8) as (emu, client):
        jobs = [await client.submit(prompt=f"job {i}", seed=i) for i in range(8)]
        gens = [await client.wait(job) for job in jobs]
        stats = client.statistics()
    assert [g.id for g in gens] == [j.id for j in jobs]
    assert {j.eta_given for j in emu.stats.jobs.values()} != {0}
    per_job = [j.fetch_calls for j in emu.stats.jobs.values()]
    assert all(j.first_success_at is not None for j in emu.stats.jobs.values())
    # Every fetch the client made is one the emulator counted, and no job was polled
    # like a busy loop: a job takes at most 2 s here, a 0.1 s poller would need ~20 calls.
    assert stats.calls["fetch"] == sum(per_job)
    assert max(per_job) <= 10, per_job
    assert sum(per_job) / len(per_job) <= 6, per_job


async def test_a_failed_job_raises_generation_failed_with_its_id() -> None:
    async with emulated(EmulatorConfig(duration=0.1, fail_rate=1.0)) as (_emu, client):
        job = await client.submit(prompt="doomed")
        assert isinstance(job, Job)
        with pytest.raises(GenerationFailed) as info:
            await client.wait(job)
        with pytest.raises(GenerationFailed):
            await client.text2img(prompt="doomed too")
        stats = client.statistics()
    assert info.value.job_id == job.id
    assert str(job.id) in str(info.value)
    assert info.value.api_message == "Failed, Try Again"
    assert stats.in_flight == 0
    assert stats.poller.tracked == 0


async def test_a_job_failed_at_submit_raises_generation_failed() -> None:
    config = EmulatorConfig(duration=0.05, sync_threshold=1.0, fail_rate=1.0)
    async with emulated(config) as (_emu, client):
        with pytest.raises(GenerationFailed):
            await client.submit(prompt="doomed")
        assert client.statistics().in_flight == 0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1, 0, True, "5"])
async def test_a_timeout_that_is_not_a_finite_number_above_zero_is_refused(bad: Any) -> None:
    # A NaN deadline never passes and a negative one has passed already: both are refused
    # naming the argument, and text2img refuses before anything is submitted.
    async with emulated(EmulatorConfig(duration=0.05)) as (emu, client):
        job = await client.submit(prompt="timeouts")
        with pytest.raises(ConfigurationError, match=r"timeout: got .*finite number of sec"):
            await client.wait(job, timeout=bad)
        with pytest.raises(ConfigurationError, match=r"timeout: got "):
            await client.text2img(prompt="never sent", timeout=bad)
        assert emu.stats.total_jobs == 1
        await client.wait(job, timeout=30)


async def test_wait_timeout_raises_generation_timeout_and_the_job_can_be_fetched_later() -> None:
    async with emulated(EmulatorConfig(duration=0.5)) as (emu, client):
        job = await client.submit(prompt="slow")
        assert isinstance(job, Job)
        with pytest.raises(GenerationTimeout) as info:
            await client.wait(job, timeout=0.05)
        assert info.value.job_id == job.id
        assert isinstance(info.value, TimeoutError)
        assert client.statistics().poller.tracked == 0
        assert client.statistics().in_flight == 0
        again = await client.fetch(job.id)
        assert again.id == job.id
        gen = await client.wait(job)  # waiting again picks the job up by id
    assert isinstance(gen, Generation)
    assert gen.id == job.id
    assert emu.stats.total_jobs == 1  # nothing was resubmitted


async def test_poll_policy_max_wait_raises_generation_timeout_with_the_job_id() -> None:
    async with emulated(EmulatorConfig(duration=0.5), poll=PollPolicy(max_wait=0.05)) as (
        emu,
        client,
    ):
        job = await client.submit(prompt="slow")
        assert isinstance(job, Job)
        with pytest.raises(GenerationTimeout) as info:
            await client.wait(job)
        assert info.value.job_id == job.id
        assert client.statistics().in_flight == 0
        processing = await client.fetch(job.id)
        # Past the emulator's true ready time the same id answers success.
        await anyio.sleep(job_stats(emu, job.id).ready_at - time.monotonic() + 0.01)
        done = await client.fetch(job.id)
    assert isinstance(processing, Job)
    assert processing.id == job.id
    assert isinstance(done, Generation)
    assert done.id == job.id
    assert emu.stats.total_jobs == 1


async def test_text2img_timeout_raises_generation_timeout_with_the_job_id() -> None:
    async with emulated(EmulatorConfig(duration=0.5)) as (emu, client):
        with pytest.raises(GenerationTimeout) as info:
            await client.text2img(prompt="slow", timeout=0.1)
        assert client.statistics().in_flight == 0
    [job_id] = emu.stats.jobs
    assert info.value.job_id == job_id


async def test_cancelling_one_waiter_leaves_the_others_alone() -> None:
    async with emulated(EmulatorConfig(workers=5, duration=0.4), max_in_flight=5) as (emu, client):
        jobs = [await client.submit(prompt=f"job {i}") for i in range(5)]
        assert all(isinstance(j, Job) for j in jobs)
        victim = jobs[2]
        results: dict[int, Generation] = {}
        fetches_at_cancel = 0

        scopes = [anyio.CancelScope() for _ in jobs]
        left = [anyio.Event() for _ in jobs]

        async def waiter(i: int) -> None:
            try:
                with scopes[i]:
                    results[i] = await client.wait(jobs[i])
            finally:
                left[i].set()

        async with anyio.create_task_group() as tg:
            for i in range(len(jobs)):
                tg.start_soon(waiter, i)
            await anyio.sleep(0.02)
            assert client.statistics().poller.tracked == 5
            scopes[2].cancel()
            await left[2].wait()
            stats = client.statistics()
            assert stats.poller.tracked == 4
            assert stats.in_flight == 4
            fetches_at_cancel = job_stats(emu, victim.id).fetch_calls
        assert client.statistics().poller.tracked == 0
    assert sorted(results) == [0, 1, 3, 4]
    assert all(results[i].id == jobs[i].id for i in results)
    assert scopes[2].cancelled_caught
    # At most one fetch of the cancelled job was already on the wire when it left.
    assert job_stats(emu, victim.id).fetch_calls <= fetches_at_cancel + 1


# --- rate limits and the in-flight bound ------------------------------------------------------


async def test_a_queue_limit_answer_lowers_a_higher_limit_to_the_cap_and_waits_for_a_slot() -> None:
    # The documented retry_after (here 600 s) is not slept through: the refused items wait
    # for one of the client's own jobs to resolve (a hang guard would stop a 600 s sleep).
    config = EmulatorConfig(workers=2, duration=0.1, max_queued_per_key=2, queue_retry_after=600)
    async with emulated(config, max_in_flight=6) as (emu, client):
        gens: list[Generation] = []

        async def one(i: int) -> None:
            gens.append(await client.text2img(prompt=f"item {i}", seed=i))

        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:
                for i in range(6):
                    tg.start_soon(one, i)
        stats = client.statistics()
    assert len(gens) == 6
    assert 1 <= emu.stats.queue_limited() <= 4  # only the first wave, before the cap is known
    assert stats.in_flight_limit == 2
    assert stats.rate_limit_pauses == 0  # a queue-limit answer pauses no other submit
    assert emu.stats.total_jobs == 6
    assert emu.stats.duplicate_submissions() == 0


async def test_auto_sets_the_limit_to_exactly_the_cap_the_answer_names() -> None:
    config = EmulatorConfig(workers=3, duration=0.05, max_queued_per_key=3, queue_retry_after=600)
    async with emulated(config, max_in_flight="auto") as (emu, client):
        assert client.in_flight_limit == 4
        limits: list[int] = []

        async def one(i: int) -> None:
            await client.text2img(prompt=f"item {i}", seed=i)
            limits.append(client.in_flight_limit)

        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:
                for i in range(24):
                    tg.start_soon(one, i)
        stats = client.statistics()
    assert set(limits) == {3}  # not a halving to 2, and no growth past the named cap
    assert emu.stats.queue_limited() == 1  # the one submit over the cap, then never again
    assert stats.rate_limit_pauses == 0
    assert emu.stats.total_jobs == 24
    assert emu.stats.duplicate_submissions() == 0


async def test_a_queue_limit_while_others_hold_the_account_waits_the_advised_retry_after() -> None:
    # Another client (another process) holds one of the account's 2 slots for a while:
    # this client, holding 1, is refused although it holds fewer than the cap, so its
    # refused submit waits the answer's retry_after (it keeps its limit and its slot).
    config = EmulatorConfig(workers=3, duration=0.5, max_queued_per_key=2, queue_retry_after=0.05)
    async with emulated(config, max_in_flight=2) as (emu, client):
        async with Client(KEY, base_url=emu.base_url, max_in_flight=1) as other:
            blocker = await other.submit(prompt="the other process's job")
            with anyio.fail_after(GUARD):
                async with anyio.create_task_group() as tg:
                    for i in range(2):
                        tg.start_soon(functools.partial(client.text2img, prompt=f"item {i}"))
            await other.wait(blocker)
        stats = client.statistics()
    assert emu.stats.queue_limited() >= 1
    assert stats.in_flight_limit == 2
    assert emu.stats.total_jobs == 3
    assert emu.stats.duplicate_submissions() == 0


async def test_auto_backs_off_on_a_rate_limit_naming_no_queue_cap_and_grows_back() -> None:
    config = EmulatorConfig(workers=3, duration=0.05, rate_limit=10, retry_after=0.05)
    async with emulated(config, max_in_flight="auto") as (emu, client):
        start = client.in_flight_limit
        limits: list[int] = []

        async def one(i: int) -> None:
            await client.text2img(prompt=f"item {i}", seed=i)
            limits.append(client.in_flight_limit)

        async with anyio.create_task_group() as tg:
            for i in range(48):
                tg.start_soon(one, i)
        pauses = client.statistics().rate_limit_pauses
    assert emu.stats.rate_limited_by_reason["rate"] > 0
    assert pauses > 0
    low = min(limits)
    assert low < start  # multiplicative decrease after the 429s ...
    assert max(limits[limits.index(low) :]) > low  # ... and additive increase after
    assert emu.stats.total_jobs == 48


async def test_a_slot_is_free_again_before_its_job_is_downloaded() -> None:
    config = EmulatorConfig(workers=1, duration=0.05)
    async with emulated(config, max_in_flight=1) as (_emu, client):
        job = await client.submit(prompt="one")
        assert client.statistics().in_flight == 1
        gen = await client.wait(job)
        held_after_wait = client.statistics().in_flight
        await client.download(gen)
    assert held_after_wait == 0


# --- slots: LocalSlots, the learned limit, and any Slots a client is given ----------------------


async def wait_until(condition: Callable[[], bool]) -> None:
    """Let other tasks run until *condition* holds (a few loop turns at most)."""
    for _ in range(100):
        if condition():
            return
        await anyio.lowlevel.checkpoint()
    raise AssertionError("condition never held")


async def test_adaptive_limit_halves_on_429_and_adds_one_per_round() -> None:
    slots = LocalSlots(4)
    auto = AdaptiveLimit(slots, cooldown=0.0)
    await auto.rate_limited(0.0)
    assert slots.limit == 2
    await auto.accepted()
    assert slots.limit == 2
    await auto.accepted()
    assert slots.limit == 3  # +1 after `limit` accepted submits in a row
    for _ in range(3):
        await auto.accepted()
    assert slots.limit == 4
    for _ in range(5):
        await auto.rate_limited(0.0)
    assert slots.limit == 1  # never below one
    assert auto.decreases == 6


async def test_adaptive_limit_halves_at_most_once_per_retry_after() -> None:
    now = [100.0]
    slots = LocalSlots(8)
    auto = AdaptiveLimit(slots, cooldown=1.0, clock=lambda: now[0])
    await auto.rate_limited(5.0)
    await auto.rate_limited(5.0)  # the same wave of 429s
    assert slots.limit == 4
    now[0] += 5.0
    await auto.rate_limited(5.0)
    assert slots.limit == 2


@pytest.mark.parametrize("limit", [0, -1, 1.5, True, "8", None])
def test_local_slots_refuse_a_limit_below_one_or_not_an_integer(limit: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"limit: got .*, allowed an integer >= 1"):
        LocalSlots(limit)


async def test_local_slots_are_first_come_first_served_and_survive_cancelled_waiters() -> None:
    slots = LocalSlots(1)
    assert isinstance(slots, Slots)
    assert slots.renew_interval is None
    first = await slots.acquire()
    order: list[str] = []
    taken: dict[str, Lease] = {}

    async def take(name: str) -> None:
        taken[name] = await slots.acquire()
        order.append(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(take, "cancelled")
        await wait_until(lambda: slots.statistics().waiting == 1)
        tg.cancel_scope.cancel()
    assert slots.statistics() == SlotStatistics(limit=1, held=1, held_here=1, waiting=0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(take, "second")
        await wait_until(lambda: slots.statistics().waiting == 1)
        tg.start_soon(take, "third")
        await wait_until(lambda: slots.statistics().waiting == 2)
        await slots.release(first)  # the slot goes to the earliest live waiter
        await wait_until(lambda: order == ["second"])
        await slots.release(taken["second"])
        await slots.release(taken["second"])  # a second release of the same lease: no-op
    assert order == ["second", "third"]
    assert slots.statistics().held == 1
    await slots.release(taken["third"])
    assert slots.statistics().held == 0
    assert len({first, *taken.values()}) == 3  # every lease is its own


async def test_local_slots_set_limit_wakes_waiters_and_lets_holders_keep_their_slots() -> None:
    slots = LocalSlots(2)
    held = [await slots.acquire(), await slots.acquire()]
    got: list[Lease] = []

    async def take() -> None:
        got.append(await slots.acquire())

    async with anyio.create_task_group() as tg:
        tg.start_soon(take)
        await wait_until(lambda: slots.statistics().waiting == 1)
        await slots.set_limit(3)  # a raised limit lets the waiter in at once
    assert len(got) == 1
    await slots.set_limit(1)  # lowered: the three holders keep their slots ...
    assert slots.statistics() == SlotStatistics(limit=1, held=3, held_here=3, waiting=0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(take)
        await wait_until(lambda: slots.statistics().waiting == 1)
        for lease in [*held, got[0]]:  # ... and a new acquire waits until fewer than 1 hold
            assert slots.statistics().waiting == 1
            await slots.release(lease)
    assert len(got) == 2
    with pytest.raises(ConfigurationError, match="limit"):
        await slots.set_limit(0)


class RecordingSlots:
    """LocalSlots that record what the client does with them; ``renew_interval`` is set as
    if leases expired (as shared slots' do)."""

    def __init__(self, limit: int, renew_interval: float | None = None) -> None:
        self.inner = LocalSlots(limit)
        self._renew_interval = renew_interval
        self.entered = self.exited = 0
        self.acquired: list[Lease] = []
        self.released: list[Lease] = []
        self.renewed: list[frozenset[Lease]] = []
        self.renewed_twice = anyio.Event()
        self.limits: list[int] = []

    @property
    def limit(self) -> int:
        return self.inner.limit

    @property
    def renew_interval(self) -> float | None:
        return self._renew_interval

    @property
    def held(self) -> set[Lease]:
        return set(self.acquired) - set(self.released)

    async def __aenter__(self) -> RecordingSlots:
        self.entered += 1
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.exited += 1

    async def acquire(self) -> Lease:
        lease = await self.inner.acquire()
        self.acquired.append(lease)
        return lease

    async def release(self, lease: Lease) -> None:
        self.released.append(lease)
        await self.inner.release(lease)

    async def renew(self, leases: Collection[Lease]) -> None:
        self.renewed.append(frozenset(leases))
        if len(self.renewed) >= 2:
            self.renewed_twice.set()

    async def set_limit(self, limit: int) -> None:
        self.limits.append(limit)
        await self.inner.set_limit(limit)

    def statistics(self) -> SlotStatistics:
        return self.inner.statistics()


async def test_a_client_holds_a_lease_of_its_slots_from_submit_until_the_job_resolves() -> None:
    slots = RecordingSlots(1)
    async with Emulator(EmulatorConfig(workers=2, duration=0.2)) as emu:
        client = Client(KEY, base_url=emu.base_url, slots=slots, retry=FAST_RETRY)
        assert slots.entered == 0
        async with client:
            assert (slots.entered, slots.exited) == (1, 0)
            first = await client.submit(prompt="first")
            assert isinstance(first, Job)
            assert len(slots.held) == 1
            assert client.statistics().in_flight == 1
            assert client.in_flight_limit == 1
            second: list[Job | Generation] = []

            async def submit_second() -> None:
                second.append(await client.submit(prompt="second"))

            async with anyio.create_task_group() as tg:
                tg.start_soon(submit_second)
                await wait_until(lambda: client.statistics().waiting_for_slot == 1)
                assert emu.stats.total_jobs == 1  # the second waits for the first's slot
                await client.wait(first)
            assert len(slots.held) == 1
            await client.wait(second[0])
            assert slots.held == set()
        assert (slots.entered, slots.exited) == (1, 1)
    assert len(slots.acquired) == len(slots.released) == 2
    assert emu.stats.total_jobs == 2


async def test_a_failed_submit_and_a_failed_job_give_their_slot_back() -> None:
    slots = RecordingSlots(2)
    async with emulated(EmulatorConfig(duration=0.05, keys=["another-key"]), slots=slots) as (
        _emu,
        client,
    ):
        with pytest.raises(AuthenticationError):
            await client.submit(prompt="a red fox")
        assert slots.held == set()
    config = EmulatorConfig(duration=0.1, fail_rate=1.0)
    async with emulated(config, slots=slots) as (_emu, client):
        job = await client.submit(prompt="doomed")
        with pytest.raises(GenerationFailed):
            await client.wait(job)
        assert slots.held == set()
    assert len(slots.acquired) == len(slots.released) == 2


async def test_one_task_renews_every_held_lease_when_the_slots_expire_them() -> None:
    slots = RecordingSlots(4, renew_interval=0.01)
    async with emulated(EmulatorConfig(workers=2, duration=3.0), slots=slots) as (_emu, client):
        jobs = [await client.submit(prompt=f"slow {i}") for i in range(2)]
        names = [task.get_name() for task in asyncio.all_tasks()]
        assert names.count("modelslab_async._client.Client._renew_leases") == 1
        await slots.renewed_twice.wait()
        assert slots.renewed[-1] == set(slots.acquired)  # both jobs' leases
        assert all(isinstance(job, Job) for job in jobs)
    assert slots.held == set()  # closing released the slots of the jobs still running


async def test_local_slots_need_no_renewal_task() -> None:
    async with emulated():
        names = [task.get_name() for task in asyncio.all_tasks()]
    assert not [n for n in names if "renew" in n]


async def test_auto_learns_the_limit_of_the_slots_it_is_given() -> None:
    slots = RecordingSlots(8)
    config = EmulatorConfig(workers=2, duration=0.05, max_queued_per_key=2, queue_retry_after=0.05)
    async with emulated(config, slots=slots, max_in_flight="auto") as (emu, client):
        assert "(auto)" in repr(client)
        assert "slots=RecordingSlots" in repr(client)

        async def one(i: int) -> None:
            await client.text2img(prompt=f"item {i}", seed=i)

        async with anyio.create_task_group() as tg:
            for i in range(12):
                tg.start_soon(one, i)
    assert emu.stats.rate_limited > 0
    assert slots.limits
    assert slots.limits[-1] == 2  # the cap the queue-limit answer names, on the given slots


async def test_clients_sharing_redis_slots_stay_under_the_shared_cap_while_leases_renew(
    redis_server: RedisServer,
) -> None:
    # Two clients (as two processes would) share a cap of 2 through Redis. Leases live
    # 1 s and jobs 1.5 s: only the clients' renewals keep a running job's slot held, so
    # without them a third job would be submitted and refused for the queue limit.
    from modelslab_async import RedisSlots

    name = f"test-client-{uuid.uuid4().hex}"
    config = EmulatorConfig(
        workers=4, duration=1.5, max_queued_per_key=2, retry_after=0.05, queue_retry_after=0.05
    )
    async with Emulator(config) as emu:
        clients = [
            Client(
                KEY,
                base_url=emu.base_url,
                slots=RedisSlots(redis_server.url, 2, name=name, lease=1.0),
                retry=FAST_RETRY,
            )
            for _ in range(2)
        ]
        with anyio.fail_after(GUARD):
            async with clients[0], clients[1], anyio.create_task_group() as tg:
                for i in range(4):
                    tg.start_soon(functools.partial(clients[i % 2].text2img, prompt=f"job {i}"))
        stats = [c.statistics() for c in clients]
    assert emu.stats.total_jobs == 4
    assert emu.stats.queue_limited() == 0
    assert all(s.in_flight == 0 for s in stats)


def test_slots_and_an_explicit_max_in_flight_are_refused_together() -> None:
    with pytest.raises(ConfigurationError, match=r"max_in_flight: got 3 together with slots"):
        Client(KEY, slots=LocalSlots(2), max_in_flight=3)
    with pytest.raises(ConfigurationError, match=r"slots: got a object, allowed a Slots"):
        Client(KEY, slots=object())  # type: ignore[arg-type]
    assert Client(KEY, slots=LocalSlots(2)).in_flight_limit == 2
    assert Client(KEY, slots=LocalSlots(2), max_in_flight="auto").in_flight_limit == 2
    assert Client(KEY).in_flight_limit == 8
    assert Client(KEY, max_in_flight="auto").in_flight_limit == 4
    for bad in (0, -1, 2.5, True, "many"):
        with pytest.raises(ConfigurationError, match="max_in_flight"):
            Client(KEY, max_in_flight=bad)  # type: ignore[arg-type]


async def test_a_submit_waiting_for_a_slot_when_the_client_closes_submits_nothing() -> None:
    outcome: list[BaseException] = []
    async with Emulator(EmulatorConfig(duration=60.0)) as emu:
        client = Client(KEY, base_url=emu.base_url, max_in_flight=1, retry=FAST_RETRY)
        with anyio.fail_after(10):  # a hang guard
            async with anyio.create_task_group() as tg, client:
                await client.submit(prompt="first")

                async def second() -> None:
                    try:
                        await client.submit(prompt="second")
                    except ClientStateError as exc:
                        outcome.append(exc)

                tg.start_soon(second)
                await wait_until(lambda: client.statistics().waiting_for_slot == 1)
    [error] = outcome
    assert "closed" in str(error)
    assert emu.stats.total_jobs == 1  # the waiting submit was not sent at shutdown


async def test_a_wait_pending_when_the_client_closes_raises_client_state_error() -> None:
    # A web backend shutting down while requests still wait for their images: every
    # waiter must be told, not left hanging (the job itself goes on, fetchable by id).
    outcome: list[BaseException] = []
    async with Emulator(EmulatorConfig(duration=60.0)) as emu:
        client = Client(KEY, base_url=emu.base_url, retry=FAST_RETRY)
        # fail_after is a hang guard: before the fix the waiter never returned.
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg, client:
                job = await client.submit(prompt="slow")
                assert isinstance(job, Job)

                async def waiter() -> None:
                    try:
                        await client.wait(job)
                    except ClientStateError as exc:
                        outcome.append(exc)

                tg.start_soon(waiter)
                for _ in range(5):  # let the waiter reach its wait
                    await anyio.lowlevel.checkpoint()
        assert client.statistics().in_flight == 0
    [error] = outcome
    assert str(job.id) in str(error)
    assert "closed" in str(error)


# --- the key never leaks ----------------------------------------------------------------------


async def test_the_key_appears_in_no_error_message_repr_or_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="modelslab_async")
    errors: list[ModelsLabError] = []
    # An emulator that rejects the canary: the invalid-key answer.
    async with emulated(EmulatorConfig(duration=0.05, keys=["another-key"])) as (_emu, client):
        assert KEY not in repr(client)
        with pytest.raises(AuthenticationError) as auth:
            await client.submit(prompt="a red fox")
        errors.append(auth.value)
    # A timeout, a queue-limit 429, failed jobs, and the links of a failed job (never ready).
    config = EmulatorConfig(
        duration=0.2, fail_rate=1.0, max_queued_per_key=1, queue_retry_after=0.05
    )
    download = DownloadPolicy(not_ready_timeout=0.05, not_ready_initial=0.01)
    async with emulated(config, download=download) as (_emu, client):
        first = await client.submit(prompt="first")
        assert isinstance(first, Job)
        with pytest.raises(GenerationTimeout) as timeout:
            await client.wait(first, timeout=0.01)
        errors.append(timeout.value)
        second = await client.submit(prompt="second")  # 429 until the first is done
        for job in (first, second):
            with pytest.raises(GenerationFailed) as failed:
                await client.wait(job)
            errors.append(failed.value)
        with pytest.raises(DownloadError) as dl:
            await client.download(Generation(id=first.id, output=first.future_links))
        errors.append(dl.value)
        assert _emu.stats.queue_limited() > 0
        assert KEY not in repr(client)
        assert KEY not in repr(client.statistics())
    # Nothing listening.
    async with Client(KEY, base_url="http://127.0.0.1:9/api/v6", retry=FAST_RETRY) as client:
        with pytest.raises(TransportError) as conn:
            await client.fetch(1)
        errors.append(conn.value)
    kinds = {type(e).__name__ for e in errors}
    assert kinds == {
        "AuthenticationError",
        "GenerationTimeout",
        "GenerationFailed",
        "DownloadError",
        "TransportError",
    }
    for err in errors:
        for text in (str(err), repr(err), repr(err.args), repr(vars(err))):
            assert KEY not in text
    assert caplog.records
    for record in caplog.records:
        assert KEY not in record.getMessage()
    assert KEY not in caplog.text


# --- lifetime and configuration ---------------------------------------------------------------


async def test_use_outside_async_with_is_a_client_state_error() -> None:
    client = Client(KEY, base_url="http://127.0.0.1:9/api/v6")
    with pytest.raises(ClientStateError, match="async with"):
        await client.submit(prompt="a red fox")
    with pytest.raises(ClientStateError):
        await client.fetch(1)
    with pytest.raises(ClientStateError):
        await client.download(Generation(id=1, output=("http://127.0.0.1:9/x.png",)))
    async with Emulator(EmulatorConfig(duration=0.05)) as emu:
        client = Client(KEY, base_url=emu.base_url)
        async with client:
            with pytest.raises(ClientStateError):
                await client.__aenter__()
        with pytest.raises(ClientStateError, match="closed"):
            await client.text2img(prompt="a red fox")
        with pytest.raises(ClientStateError):
            async with client:
                pass
        assert emu.stats.requests_by_endpoint["submit"] == 0


@pytest.mark.parametrize("key", [None, "", "   "])
def test_no_key_is_a_configuration_error_naming_the_variable(
    key: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MODELSLAB_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="MODELSLAB_API_KEY"):
        Client(key)


async def test_key_and_base_url_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with Emulator(EmulatorConfig(duration=0.05, keys=[KEY])) as emu:
        monkeypatch.setenv("MODELSLAB_API_KEY", KEY)
        monkeypatch.setenv("MODELSLAB_BASE_URL", emu.base_url)
        async with Client(retry=FAST_RETRY) as client:
            assert client.base_url == emu.base_url
            gen = await client.text2img(prompt="a red fox")
        assert KEY not in repr(client)
    assert gen.id in emu.stats.jobs
    assert emu.stats.total_jobs == 1


def test_an_explicit_base_url_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELSLAB_BASE_URL", "http://127.0.0.1:1/api/v6")
    assert Client(KEY, base_url="http://127.0.0.1:2/api/v6/").base_url == (
        "http://127.0.0.1:2/api/v6"
    )
    monkeypatch.delenv("MODELSLAB_BASE_URL")
    assert Client(KEY).base_url == "https://modelslab.com/api/v6"


# --- fetch, download, text2img ----------------------------------------------------------------


async def test_fetch_is_one_call_without_waiting() -> None:
    async with emulated(EmulatorConfig(duration=0.5)) as (emu, client):
        job = await client.submit(prompt="slow")
        assert isinstance(job, Job)
        before = job_stats(emu, job.id).fetch_calls
        answer = await client.fetch(job.id)
        after = job_stats(emu, job.id).fetch_calls
    assert isinstance(answer, Job)
    assert answer.id == job.id
    assert after == before + 1


async def test_text2img_with_dest_returns_images_with_paths(tmp_path: Path) -> None:
    async with emulated() as (_emu, client):
        gen = await client.text2img(prompt="a red fox", samples=2, seed=5, dest=tmp_path / "out")
    assert [img.index for img in gen.images] == [0, 1]
    for n, img in enumerate(gen.images):
        assert img.path == tmp_path / "out" / f"{gen.id}-{n}.png"
        assert img.data is None
        assert img.job_id == gen.id
        assert img.path.read_bytes()[:8] == PNG
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        f"{gen.id}-0.png",
        f"{gen.id}-1.png",
    ]


async def test_download_without_dest_returns_bytes() -> None:
    async with emulated() as (_emu, client):
        job = await client.submit(prompt="a red fox", samples=2)
        gen = await client.wait(job)
        images = await client.download(gen)
    assert [img.index for img in images] == [0, 1]
    for img, url in zip(images, gen.output, strict=True):
        assert img.path is None
        assert img.url == url
        assert img.data is not None
        assert img.data[:8] == PNG
        assert img.content_type == "image/png"


async def test_text2img_without_dest_holds_the_bytes() -> None:
    async with emulated() as (emu, client):
        gen = await client.text2img(prompt="a red fox")
    [img] = gen.images
    assert img.data is not None
    assert img.data[:8] == PNG
    assert job_stats(emu, gen.id).downloads
