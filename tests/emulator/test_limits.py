"""Rate limits: HTTP 429 + Retry-After with the API's own rate-limit message."""

from __future__ import annotations

import anyio
import pytest

from .helpers import fetch, running, submit

pytestmark = pytest.mark.anyio


async def test_max_queued_per_key() -> None:
    async with running(workers=4, duration=(0.3, 0.3), max_queued_per_key=2, retry_after=0.5) as (
        emu,
        s,
    ):
        assert (await submit(emu, s))[1]["status"] == "processing"
        assert (await submit(emu, s))[1]["status"] == "processing"
        status, body, headers = await submit(emu, s)
        assert status == 429
        assert headers["Retry-After"] == "1"  # integer seconds, rounded up
        assert body == {
            "status": "error",
            "message": "Rate limit exceeded. Maximum 2 queued requests allowed.",
            "retry_after": 0.5,
        }
        assert (await submit(emu, s, key="another-key"))[0] == 200
        await anyio.sleep(0.35)  # the first two jobs are done: room again
        assert (await submit(emu, s))[0] == 200
        assert emu.stats.rate_limited == 1
        assert emu.stats.rate_limited_by_reason["queue"] == 1
        assert emu.stats.total_jobs == 4


async def test_max_concurrent_requests() -> None:
    async with running(
        workers=1, duration=(0.3, 0.3), sync_threshold=5, max_concurrent_requests=1
    ) as (emu, s):
        results: list[int] = []

        async def one() -> None:
            results.append((await submit(emu, s))[0])

        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
            await anyio.sleep(0.1)  # the first submit is held until its job is done
            status, body, headers = await fetch(emu, s, 1)
            assert status == 429
            assert "Retry-After" in headers
            assert body["message"].startswith("Rate limit exceeded")
        assert results == [200]
        assert emu.stats.rate_limited_by_reason["concurrent"] == 1
        assert emu.stats.peak_concurrent_requests == 2


async def test_rate_limit_token_bucket_per_key() -> None:
    async with running(duration=(5, 5), rate_limit=2, retry_after=2) as (emu, s):
        statuses = [(await submit(emu, s))[0] for _ in range(3)]
        assert statuses == [200, 200, 429]
        assert (await submit(emu, s, key="other"))[0] == 200
        await anyio.sleep(0.55)  # one token back at 2/s
        status, _, headers = await submit(emu, s)
        assert status == 200
        status, body, headers = await submit(emu, s)
        assert status == 429
        assert headers["Retry-After"] == "2"
        assert body["retry_after"] == 2
        assert emu.stats.rate_limited == 2
