"""A child process for tests/test_redis_slots.py: one of several processes sharing slots.

``hammer URL NAME LIMIT TASKS ROUNDS``: TASKS coroutines each take a slot ROUNDS times; while
a slot is held they count themselves in a probe counter in Redis (``probe:NAME:in``) and
record its peak (``probe:NAME:peak``), an observer independent of the slots' own keys.
Prints ``{"done": N, "round_trips": R}``.

``hold URL NAME LIMIT N LEASE``: takes N slots, prints ``held`` and sleeps (never renewing)
until it is killed.
"""

from __future__ import annotations

import json
import random
import sys

import anyio
import redis.asyncio as aioredis

from modelslab_async._redis_slots import RedisSlots

PEAK = """
local n = redis.call('INCR', KEYS[1])
if n > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], n) end
return n
"""


async def hammer(url: str, name: str, limit: int, tasks: int, rounds: int) -> None:
    probe = aioredis.Redis.from_url(url)
    enter = probe.register_script(PEAK)
    keys = [f"probe:{name}:in", f"probe:{name}:peak"]
    done = 0

    async def worker(slots: RedisSlots) -> None:
        nonlocal done
        for _ in range(rounds):
            lease = await slots.acquire()
            try:
                await enter(keys=keys)
                await anyio.sleep(random.uniform(0.0, 0.01))
                await probe.decr(keys[0])
                done += 1
            finally:
                await slots.release(lease)

    async with RedisSlots(url, limit, name=name) as slots:
        async with anyio.create_task_group() as tg:
            for _ in range(tasks):
                tg.start_soon(worker, slots)
        round_trips = slots.round_trips
    await probe.aclose()
    print(json.dumps({"done": done, "round_trips": round_trips}), flush=True)


async def hold(url: str, name: str, limit: int, n: int, lease: float) -> None:
    async with RedisSlots(url, limit, name=name, lease=lease) as slots:
        for _ in range(n):
            await slots.acquire()
        print("held", flush=True)
        await anyio.sleep_forever()


def main() -> None:
    mode, url, name, limit, *rest = sys.argv[1:]
    if mode == "hammer":
        anyio.run(hammer, url, name, int(limit), int(rest[0]), int(rest[1]))
    elif mode == "hold":
        anyio.run(hold, url, name, int(limit), int(rest[0]), float(rest[1]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
