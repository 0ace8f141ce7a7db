"""Client against the emulator over 127.0.0.1: submit, wait, fetch, download, text2img.

No mocks: every test starts a real :class:`Emulator` and talks to it over HTTP. Nothing
asserts on elapsed time; the tests count calls (the client's own counters and the
emulator's ``stats``) instead. ``fail_after`` bounds are hang guards only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
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
    ModelsLabError,
    PollPolicy,
    RetryPolicy,
    Text2ImgRequest,
    TransportError,
)
from modelslab_async._client import InFlightLimiter
from modelslab_async.emulator import Emulator, EmulatorConfig
from modelslab_async.emulator._config import EtaMode
from tests._emulated import emulated_client, job_stats

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


async def test_a_queue_limit_429_pauses_submits_and_fails_no_item() -> None:
    config = EmulatorConfig(workers=2, duration=0.1, max_queued_per_key=2, queue_retry_after=0.05)
    async with emulated(config, max_in_flight=6) as (emu, client):
        gens: list[Generation] = []

        async def one(i: int) -> None:
            gens.append(await client.text2img(prompt=f"item {i}", seed=i))

        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(one, i)
        stats = client.statistics()
    assert len(gens) == 6
    assert emu.stats.rate_limited_by_reason["queue"] > 0
    assert stats.rate_limit_pauses > 0
    assert emu.stats.total_jobs == 6
    assert emu.stats.duplicate_submissions() == 0


async def test_auto_in_flight_backs_off_on_429_and_grows_back() -> None:
    config = EmulatorConfig(workers=3, duration=0.05, max_queued_per_key=3, queue_retry_after=0.05)
    async with emulated(config, max_in_flight="auto") as (emu, client):
        start = client.in_flight_limit
        limits: list[int] = []

        async def one(i: int) -> None:
            await client.text2img(prompt=f"item {i}", seed=i)
            limits.append(client.in_flight_limit)

        async with anyio.create_task_group() as tg:
            for i in range(24):
                tg.start_soon(one, i)
        pauses = client.statistics().rate_limit_pauses
    assert emu.stats.rate_limited > 0
    assert pauses > 0
    assert client.limiter.decreases > 0
    low = min(limits)
    assert low < start  # multiplicative decrease after the 429s ...
    assert max(limits[limits.index(low) :]) > low  # ... and additive increase after
    assert emu.stats.total_jobs == 24


def test_in_flight_limiter_aimd_halves_on_429_and_adds_one_per_round() -> None:
    limiter = InFlightLimiter(4, adaptive=True, cooldown=0.0)
    limiter.on_rate_limited(0.0)
    assert limiter.limit == 2
    limiter.on_accepted()
    assert limiter.limit == 2
    limiter.on_accepted()
    assert limiter.limit == 3  # +1 after `limit` accepted submits in a row
    for _ in range(3):
        limiter.on_accepted()
    assert limiter.limit == 4
    for _ in range(5):
        limiter.on_rate_limited(0.0)
    assert limiter.limit == 1  # never below one
    fixed = InFlightLimiter(4)
    fixed.on_rate_limited(0.0)
    fixed.on_accepted()
    assert fixed.limit == 4


async def wait_until(condition: Callable[[], bool]) -> None:
    """Let other tasks run until *condition* holds (a few loop turns at most)."""
    for _ in range(100):
        if condition():
            return
        await anyio.lowlevel.checkpoint()
    raise AssertionError("condition never held")


@pytest.mark.anyio
async def test_in_flight_limiter_is_first_come_first_served_and_survives_cancelled_waiters() -> (
    None
):
    limiter = InFlightLimiter(1)
    first, second, third = object(), object(), object()
    await limiter.acquire(first)
    order: list[str] = []

    async def take(token: object, name: str) -> None:
        await limiter.acquire(token)
        order.append(name)

    async with anyio.create_task_group() as tg:
        with anyio.CancelScope() as gone:
            tg.start_soon(take, second, "second")
            await wait_until(lambda: limiter.waiting == 1)
            gone.cancel()
        tg.cancel_scope.cancel()  # the waiting "second" is cancelled
    assert limiter.waiting == 0
    assert limiter.in_flight == 1
    async with anyio.create_task_group() as tg:
        tg.start_soon(take, third, "third")
        await wait_until(lambda: limiter.waiting == 1)
        limiter.release(first)  # the slot goes to the live waiter
    assert order == ["third"]
    assert limiter.in_flight == 1
    limiter.release(third)
    limiter.release(third)  # a second release of the same token is a no-op
    assert limiter.in_flight == 0

    # Granted, then cancelled before it ran: the slot is given back, not lost.
    await limiter.acquire(first)
    waiter = asyncio.get_running_loop().create_task(limiter.acquire(second))
    await wait_until(lambda: limiter.waiting == 1)
    limiter.release(first)  # grants `second` ...
    waiter.cancel()  # ... which is cancelled before it resumes
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert limiter.in_flight == 0
    assert limiter.waiting == 0
    await limiter.acquire(third)
    assert limiter.in_flight == 1


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
        assert client.statistics().rate_limit_pauses > 0
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
