"""Account limits: HTTP 429 + Retry-After with the API's own messages; credits and HTTP 402."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from modelslab_async.emulator import EmulatorConfig

from .helpers import KEY, fetch, get_json, post_json, running, submit

INSUFFICIENT_CREDITS = {
    "status": "error",
    "message": "Insufficient credits. Please add more credits to continue.",
}

pytestmark = pytest.mark.anyio


async def test_max_queued_per_key() -> None:
    async with running(
        workers=4, duration=(0.3, 0.3), max_queued_per_key=2, queue_retry_after=0.5, retry_after=9
    ) as (emu, s):
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
        assert emu.stats.queue_limited() == 1
        assert emu.stats.total_jobs == 4


async def test_the_queue_limit_advertises_the_documented_30_seconds_by_default() -> None:
    async with running(duration=(5, 5), max_queued_per_key=1, rate_limit=1000) as (emu, s):
        await submit(emu, s)
        status, body, headers = await submit(emu, s)
    assert status == 429
    assert body["retry_after"] == 30
    assert headers["Retry-After"] == "30"
    # the other 429s keep ``retry_after`` (default 1)
    assert EmulatorConfig().retry_after == 1.0


async def test_a_key_may_create_its_credits_in_images_then_gets_402() -> None:
    async with running(duration=(5, 5), credits=3) as (emu, s):
        assert (await submit(emu, s, samples=2))[0] == 200
        assert emu.credits_left(KEY) == 1
        status, body, _ = await submit(emu, s, samples=2)  # 2 images, 1 credit: refused whole
        assert (status, body) == (402, INSUFFICIENT_CREDITS)
        assert emu.credits_left(KEY) == 1
        assert (await submit(emu, s))[0] == 200
        assert emu.credits_left(KEY) == 0
        assert (await submit(emu, s))[0] == 402
        assert (await submit(emu, s, key="another-key", samples=3))[0] == 200  # per key
        assert emu.stats.total_jobs == 3
        assert emu.stats.insufficient_credits == 2
        stats = (await get_json(s, emu.root_url + "/__emulator/stats?jobs=0"))[1]
        assert stats["insufficient_credits"] == 2
        assert stats["rate_limited"] == 0


async def test_402_is_answered_whatever_error_http_status_says() -> None:
    async with running(duration=(5, 5), credits=0, error_http_status=False) as (emu, s):
        assert (await submit(emu, s))[:2] == (402, INSUFFICIENT_CREDITS)


async def test_a_top_up_adds_credits_to_one_key() -> None:
    async with running(duration=(5, 5), credits=1) as (emu, s):
        assert (await submit(emu, s))[0] == 200
        assert (await submit(emu, s))[0] == 402
        status, body, _ = await post_json(
            s, emu.root_url + "/__emulator/credits", {"key": KEY, "credits": 2}
        )
        assert (status, body) == (200, {"status": "success", "credits": 2})
        assert [(await submit(emu, s))[0] for _ in range(3)] == [200, 200, 402]
        assert emu.add_credits("another-key", 5) == 6
        assert emu.credits_left("another-key") == 6
        assert emu.credits_left(KEY) == 0
        emu.reset()
        assert emu.credits_left(KEY) == 1


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"key": KEY},
        {"credits": 2},
        {"key": "", "credits": 2},
        {"key": KEY, "credits": 0},
        {"key": KEY, "credits": "2"},
        {"key": KEY, "credits": True},
        [1],
    ],
)
async def test_a_bad_top_up_is_400_and_changes_nothing(body: Any) -> None:
    async with running(credits=1) as (emu, s):
        status, answer, _ = await post_json(s, emu.root_url + "/__emulator/credits", body)
        assert status == 400
        assert answer["status"] == "error"
        assert "credits" in answer["message"]
        assert emu.credits_left(KEY) == 1
    with pytest.raises(ValueError, match="credits"):
        emu.add_credits(KEY, 0)


async def test_without_credits_every_key_is_unlimited() -> None:
    async with running(duration=(5, 5)) as (emu, s):
        assert [(await submit(emu, s, samples=4))[0] for _ in range(5)] == [200] * 5
        status, body, _ = await post_json(
            s, emu.root_url + "/__emulator/credits", {"key": KEY, "credits": 2}
        )
        assert (status, body) == (200, {"status": "success", "credits": None})
        assert emu.credits_left(KEY) is None


async def test_a_submit_refused_for_the_queue_limit_costs_no_credit() -> None:
    async with running(duration=(5, 5), credits=2, max_queued_per_key=1) as (emu, s):
        assert (await submit(emu, s))[0] == 200
        assert (await submit(emu, s))[0] == 429
        assert emu.credits_left(KEY) == 1
        assert emu.stats.queue_limited() == 1
        assert emu.stats.insufficient_credits == 0


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
