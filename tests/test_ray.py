"""RaySlots on a real local Ray (started once for this module: it takes seconds)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import ray

from modelslab_async import ConfigurationError, RaySlots
from modelslab_async._slots import Lease, Slots, SlotStatistics

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    # The workers import this module (for the actor classes below) from the checkout.
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )
    yield
    ray.shutdown()


def fresh() -> str:
    return "t-" + uuid.uuid4().hex[:10]


@ray.remote(num_cpus=0)
class Probe:
    """Counts the holders inside their slot, independently of the slots' own books."""

    def __init__(self) -> None:
        self.inside = 0
        self.peak = 0

    def enter(self) -> None:
        self.inside += 1
        self.peak = max(self.peak, self.inside)

    def exit(self) -> None:
        self.inside -= 1

    def result(self) -> tuple[int, int]:
        return self.inside, self.peak


@ray.remote(num_cpus=0)
class Worker:
    """An actor of a pipeline: several coroutines sharing the cluster's slots."""

    async def run(self, limit: int, name: str, tasks: int, rounds: int, probe: Any) -> int:
        done = 0

        async def one(slots: RaySlots) -> None:
            nonlocal done
            for _ in range(rounds):
                lease = await slots.acquire()
                try:
                    await probe.enter.remote()
                    await anyio.sleep(0.005)
                    await probe.exit.remote()
                    done += 1
                finally:
                    await slots.release(lease)

        async with RaySlots(limit, name=name) as slots, anyio.create_task_group() as tg:
            for _ in range(tasks):
                tg.start_soon(one, slots)
        return done

    async def hold(self, limit: int, name: str, n: int, lease: float) -> int:
        slots = RaySlots(limit, name=name, lease=lease)
        await slots.__aenter__()  # never left, never renewed: the actor is killed holding them
        for _ in range(n):
            await slots.acquire()
        return slots.statistics().held


async def test_the_limit_holds_across_actors() -> None:
    name, limit = fresh(), 2
    probe = Probe.remote()  # type: ignore[attr-defined]
    workers = [Worker.remote() for _ in range(3)]  # type: ignore[attr-defined]
    done = await _gather([w.run.remote(limit, name, 4, 6, probe) for w in workers])
    assert done == [24, 24, 24]
    inside, peak = await probe.result.remote()
    assert (inside, peak) == (0, limit)  # used fully, never exceeded
    async with RaySlots(limit, name=name) as slots:
        assert isinstance(slots, Slots)
        assert slots.statistics() == SlotStatistics(limit=2, held=0, held_here=0, waiting=0)


async def test_a_dead_holder_loses_its_slots_when_its_lease_expires() -> None:
    name = fresh()
    holder = Worker.remote()  # type: ignore[attr-defined]
    assert await holder.hold.remote(2, name, 2, 1.0) == 2
    ray.kill(holder)
    async with RaySlots(2, name=name) as slots:
        with anyio.fail_after(60):  # a hang guard: the dead holder's leases expire after 1 s
            leases = [await slots.acquire(), await slots.acquire()]
        assert slots.statistics().held == 2
        for lease in leases:
            await slots.release(lease)


async def test_set_limit_is_shared_and_a_cancelled_acquire_takes_nothing() -> None:
    name = fresh()
    async with RaySlots(3, name=name) as a, RaySlots(9, name=name) as b:
        assert b.limit == 3  # the slots are in use: b adopts the current limit
        await b.set_limit(1)
        first = await a.acquire()
        assert a.limit == 1
        with anyio.move_on_after(0.5) as scope:
            await b.acquire()
        assert scope.cancelled_caught
        got: list[Lease] = []
        async with anyio.create_task_group() as tg:

            async def wait_b() -> None:
                got.append(await b.acquire())

            tg.start_soon(wait_b)
            while b.statistics().waiting == 0:  # noqa: ASYNC110
                await anyio.sleep(0.01)
            await a.set_limit(2)  # a raised cap lets the waiter in
        assert b.statistics().held == 2  # the cancelled acquire holds nothing
        await b.release(got[0])
        await a.release(first)
        await a.release(first)  # twice: a no-op
        await a.renew([first])
        assert a.statistics().held == 0


def test_bad_options_name_the_field() -> None:
    for kwargs, field in [
        ({"limit": 0}, "limit"),
        ({"limit": 2, "lease": -1}, "lease"),
        ({"limit": 2, "name": ""}, "name"),
    ]:
        with pytest.raises(ConfigurationError, match=f"^{field}: "):
            RaySlots(**kwargs)  # type: ignore[arg-type]


async def _gather(refs: list[Any]) -> list[Any]:
    results: list[Any] = [None] * len(refs)

    async def one(i: int) -> None:
        results[i] = await refs[i]

    async with anyio.create_task_group() as tg:
        for i in range(len(refs)):
            tg.start_soon(one, i)
    return results
