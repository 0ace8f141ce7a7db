"""RedisSlots against a real redis-server: one cap for several processes, leases, wake-ups."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest
import redis.asyncio as aioredis

from modelslab_async import (
    Client,
    ClientStateError,
    ConfigurationError,
    RedisSlots,
    TransportError,
)
from modelslab_async._slots import Lease, Slots, SlotStatistics
from modelslab_async.emulator import Emulator

from ._redis_server import RedisServer, free_port, start_redis

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
CHILD = Path(__file__).resolve().parent / "_slots_child.py"
API_KEY = "sk-test-3f9a1c0d7e5b4a2f8c6d"


def fresh() -> str:
    """A namespace of its own for each test (they share one server)."""
    return "t-" + uuid.uuid4().hex[:10]


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


def child(*args: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, str(CHILD), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


@pytest.fixture
def password_server(tmp_path: Path) -> Iterator[RedisServer]:
    try:
        server = start_redis(tmp_path / "redis-auth", password="s3cret-redis-pw")
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield server
    server.stop()


# --- the limit holds -----------------------------------------------------------------------


async def test_four_processes_never_hold_more_than_the_limit(
    redis_server: RedisServer, raw: aioredis.Redis
) -> None:
    name, limit, tasks, rounds = fresh(), 3, 6, 15
    procs = [child("hammer", redis_server.url, name, limit, tasks, rounds) for _ in range(4)]
    outputs = [await anyio.to_thread.run_sync(p.communicate) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert json.loads(out)["done"] == tasks * rounds
    assert int(await raw.get(f"probe:{name}:peak")) == limit  # used fully, never exceeded
    assert int(await raw.get(f"probe:{name}:in")) == 0
    assert await raw.zcard(f"{name}:holders") == 0


async def test_one_process_many_tasks_never_exceed_the_limit(redis_server: RedisServer) -> None:
    name = fresh()
    inside = peak = 0
    async with RedisSlots(redis_server.url, 2, name=name) as slots:

        async def worker() -> None:
            nonlocal inside, peak
            for _ in range(10):
                lease = await slots.acquire()
                inside += 1
                peak = max(peak, inside)
                assert slots.statistics().held_here <= 2
                await anyio.sleep(0.001)
                inside -= 1
                await slots.release(lease)

        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(worker)
        assert slots.statistics() == SlotStatistics(limit=2, held=0, held_here=0, waiting=0)
    assert peak == 2


async def test_it_is_a_slots_and_enforces_the_context(redis_server: RedisServer) -> None:
    slots = RedisSlots(redis_server.url, 1, name=fresh())
    assert isinstance(slots, Slots)
    assert slots.renew_interval == pytest.approx(10.0)
    with pytest.raises(ClientStateError):
        await slots.acquire()
    async with slots, slots:  # re-entrant: the outer block owns the connection
        lease = await slots.acquire()
    with pytest.raises(ClientStateError):
        await slots.release(lease)


# --- waking and fairness ---------------------------------------------------------------------


async def test_a_waiter_wakes_on_release_with_one_round_trip_and_never_polls(
    redis_server: RedisServer,
) -> None:
    name = fresh()
    async with (
        RedisSlots(redis_server.url, 1, name=name) as a,
        RedisSlots(redis_server.url, 1, name=name) as b,
    ):
        lease = await a.acquire()
        got: list[Lease] = []
        base = b.round_trips  # the limit stored on entry

        async def wait_b() -> None:
            got.append(await b.acquire())

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_b)
            while b.round_trips < base + 3:  # try, SUBSCRIBE, try again: waiting  # noqa: ASYNC110
                await anyio.sleep(0.01)
            assert b.statistics().waiting == 1
            await anyio.sleep(1.0)
            assert b.round_trips == base + 3  # idle while waiting: no polling (10 s re-check)
            await a.release(lease)
        assert b.statistics().held_here == 1
        # the successful try; then UNSUBSCRIBE, as nobody else waits
        assert b.round_trips == base + 5
        await b.release(got[0])


async def test_waiters_of_one_process_are_served_first_come_first_served(
    redis_server: RedisServer,
) -> None:
    name = fresh()
    order: list[int] = []
    async with RedisSlots(redis_server.url, 1, name=name) as slots:
        first = await slots.acquire()

        async def waiter(i: int) -> None:
            lease = await slots.acquire()
            order.append(i)
            await slots.release(lease)

        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(waiter, i)
                while slots.statistics().waiting < i + 1:  # noqa: ASYNC110
                    await anyio.sleep(0.001)
            await slots.release(first)
    assert order == [0, 1, 2, 3, 4]


async def test_cancelling_a_waiting_acquire_takes_no_slot(
    redis_server: RedisServer, raw: aioredis.Redis
) -> None:
    name = fresh()
    async with RedisSlots(redis_server.url, 1, name=name) as slots:
        lease = await slots.acquire()
        with anyio.move_on_after(0.3) as scope:
            await slots.acquire()
        assert scope.cancelled_caught
        assert slots.statistics().waiting == 0
        await slots.release(lease)
        assert await raw.zcard(f"{name}:holders") == 0
        with anyio.fail_after(10):  # the slot is free again (a hang guard, not a timing)
            await slots.release(await slots.acquire())


async def test_cancellation_at_any_moment_leaves_no_slot_taken(
    redis_server: RedisServer, raw: aioredis.Redis
) -> None:
    name = fresh()
    kept: list[Lease] = []
    async with RedisSlots(redis_server.url, 3, name=name) as slots:
        for i in range(150):
            with anyio.move_on_after(i % 15 * 0.0002):
                kept.append(await slots.acquire())
            if len(kept) == 3:
                for lease in kept:
                    await slots.release(lease)
                kept.clear()
        assert await raw.zcard(f"{name}:holders") == len(kept)
        assert slots.statistics().held_here == len(kept)


# --- leases ----------------------------------------------------------------------------------


async def test_a_killed_process_loses_its_slots_when_its_lease_expires(
    redis_server: RedisServer, raw: aioredis.Redis
) -> None:
    name = fresh()
    holder = child("hold", redis_server.url, name, 2, 2, 1.0)
    try:
        assert holder.stdout is not None
        assert (await anyio.to_thread.run_sync(holder.stdout.readline)).strip() == "held"
        assert await raw.zcard(f"{name}:holders") == 2
        os.kill(holder.pid, signal.SIGKILL)
        await anyio.to_thread.run_sync(holder.wait)
        async with RedisSlots(redis_server.url, 2, name=name) as slots:
            base = slots.round_trips
            with anyio.fail_after(30):  # a hang guard: the leases expire after 1 s
                leases = [await slots.acquire(), await slots.acquire()]
            # try, SUBSCRIBE, try, then one try when the earliest lease expires (both, at
            # once), the second acquire at once, UNSUBSCRIBE: no fixed-interval polling
            assert slots.round_trips - base <= 7
            for lease in leases:
                await slots.release(lease)
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.communicate()


async def test_renewed_leases_hold_their_slots(redis_server: RedisServer) -> None:
    name = fresh()
    async with (
        RedisSlots(redis_server.url, 1, name=name, lease=1.0) as a,
        RedisSlots(redis_server.url, 1, name=name, lease=1.0) as b,
    ):
        lease = await a.acquire()
        got: list[Lease] = []
        async with anyio.create_task_group() as tg:

            async def wait_b() -> None:
                got.append(await b.acquire())

            tg.start_soon(wait_b)
            for _ in range(15):  # 1.5 s, past the lease: renewals keep the slot
                await anyio.sleep(0.1)
                await a.renew([lease])
            assert not got
            await a.release(lease)
        assert len(got) == 1


async def test_a_lease_reclaimed_by_another_process_is_lost_and_logged(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    name = fresh()
    async with (
        RedisSlots(redis_server.url, 1, name=name, lease=0.2) as a,
        RedisSlots(redis_server.url, 1, name=name) as b,
    ):
        lost = await a.acquire()
        with anyio.fail_after(30):
            taken = await b.acquire()  # after a's lease expired
        with caplog.at_level(logging.WARNING, logger="modelslab_async.slots"):
            await a.renew([lost])
        assert "1 of 1 slot leases" in caplog.text
        await a.release(lost)  # a no-op: b keeps its slot
        assert b.statistics().held_here == 1
        assert a.statistics().held == 1
        await b.release(taken)


async def test_the_keys_expire_after_the_last_use(
    redis_server: RedisServer, raw: aioredis.Redis
) -> None:
    name = fresh()
    async with RedisSlots(redis_server.url, 2, name=name, lease=5.0) as slots:
        lease = await slots.acquire()
        assert 0 < await raw.pttl(f"{name}:holders") <= 5000
        assert 0 < await raw.pttl(f"{name}:limit") <= 5000
        await slots.release(lease)
    assert await raw.exists(f"{name}:holders") == 0


# --- the limit is shared ---------------------------------------------------------------------


async def test_set_limit_is_shared_and_wakes_waiters(
    redis_server: RedisServer, raw: aioredis.Redis
) -> None:
    name = fresh()
    async with (
        RedisSlots(redis_server.url, 3, name=name) as a,
        RedisSlots(redis_server.url, 8, name=name) as b,
    ):
        assert b.limit == 3  # the stored limit wins over a later sharer's own
        await a.set_limit(1)
        assert int(await raw.get(f"{name}:limit")) == 1
        first = await b.acquire()
        assert b.limit == 1
        got: list[Lease] = []
        base = a.round_trips
        async with anyio.create_task_group() as tg:

            async def wait_a() -> None:
                got.append(await a.acquire())

            tg.start_soon(wait_a)
            while a.statistics().waiting == 0 or a.round_trips < base + 3:  # noqa: ASYNC110
                await anyio.sleep(0.01)
            await b.set_limit(2)  # a raised cap lets the waiter in, through pub/sub
        assert a.limit == 2
        assert a.statistics().held == 2
        await a.release(got[0])
        await b.release(first)
    with pytest.raises(ConfigurationError, match="limit"):
        await a.set_limit(0)


# --- connections, passwords, secrets ---------------------------------------------------------


async def test_a_password_url_works_and_is_masked(password_server: RedisServer) -> None:
    slots = RedisSlots(password_server.url, 2, name=fresh())
    assert "s3cret-redis-pw" not in repr(slots)
    assert ":***@127.0.0.1" in repr(slots)
    async with slots:
        await slots.release(await slots.acquire())


@pytest.mark.parametrize("auth", ["", ":wrong-password@"])
async def test_a_missing_or_wrong_password_is_a_configuration_error(
    password_server: RedisServer, auth: str
) -> None:
    url = f"redis://{auth}127.0.0.1:{password_server.port}/0"
    with pytest.raises(ConfigurationError) as info:
        async with RedisSlots(url, 2, name=fresh()):
            pass
    assert f"127.0.0.1:{password_server.port}" in str(info.value)
    assert "wrong-password" not in str(info.value)


async def test_unreachable_redis_raises_naming_the_host() -> None:
    port = free_port()  # nothing listens there
    slots = RedisSlots(f"redis://:hidden-pw@127.0.0.1:{port}/0", 2)
    with pytest.raises(TransportError) as info:
        async with slots:
            pass
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "unreachable" in str(info.value)
    assert "hidden-pw" not in str(info.value)
    assert info.value.url is not None
    assert "hidden-pw" not in info.value.url


async def test_redis_going_away_mid_run_raises_and_never_lets_through(tmp_path: Path) -> None:
    server = start_redis(tmp_path / "redis-dies")
    try:
        async with RedisSlots(server.url, 1, name=fresh()) as slots:
            await slots.acquire()
            server.stop()
            with pytest.raises(TransportError, match=f"127.0.0.1:{server.port}"):
                await slots.acquire()
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"url": "http://127.0.0.1:6379"}, "url"),
        ({"url": "127.0.0.1:6379"}, "url"),
        ({"limit": 0}, "limit"),
        ({"limit": True}, "limit"),
        ({"limit": 2.5}, "limit"),
        ({"lease": 0}, "lease"),
        ({"lease": float("inf")}, "lease"),
        ({"name": ""}, "name"),
    ],
)
def test_bad_options_name_the_field(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"url": "redis://:pw@127.0.0.1:6379/0", "limit": 2, **kwargs}
    with pytest.raises(ConfigurationError, match=f"^{field}: ") as info:
        RedisSlots(**args)  # type: ignore[arg-type]
    assert "pw@" not in str(info.value)


async def test_the_api_key_never_reaches_redis(
    redis_server: RedisServer, raw: aioredis.Redis
) -> None:
    name = fresh()
    async with (
        Emulator(duration=0.05) as emu,
        Client(API_KEY, base_url=emu.base_url) as client,
        RedisSlots(redis_server.url, 2, name=name) as slots,
    ):

        async def one(i: int) -> None:
            lease = await slots.acquire()
            try:
                await slots.renew([lease])
                await client.text2img(prompt=f"fox {i}", seed=i)
            finally:
                await slots.release(lease)

        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(one, i)
        lease = await slots.acquire()  # something is in Redis while we look
        found = 0
        async for key in raw.scan_iter("*"):
            found += 1
            assert API_KEY.encode() not in key
            kind = (await raw.type(key)).decode()
            if kind == "string":
                values = [await raw.get(key)]
            elif kind == "zset":
                values = [m for m, _ in await raw.zrange(key, 0, -1, withscores=True)]
            else:
                values = []
            assert all(API_KEY.encode() not in (v or b"") for v in values)
        assert found >= 2
        await slots.release(lease)


def test_an_answer_older_than_the_newest_one_applied_leaves_the_counts_alone() -> None:
    # Concurrent round trips can be answered out of order: a release sent first and
    # answered last must not bring back the count it saw (a stale `held` after every
    # lease was released, seen once under a loaded CI).
    slots = RedisSlots("redis://127.0.0.1:1/0", 2, name=fresh())
    first, second = slots._exchange(), slots._exchange()
    slots._saw(second, 0, 2)
    slots._saw(first, 1, 2)
    assert slots.statistics() == SlotStatistics(limit=2, held=0, held_here=0, waiting=0)
