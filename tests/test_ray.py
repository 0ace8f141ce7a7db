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

from ._emulator_process import EmulatorProcess

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


# --- modelslab_async.ray.Text2Img on Ray Data ----------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def capped_emulator() -> Iterator[EmulatorProcess]:
    """The emulator in its own process (Ray's workers reach it over loopback): a queue cap of
    5 per key, answered with the API's retry_after of 30 s, and 5 GPU workers."""
    options = ["--max-queued-per-key", "5", "--workers", "5", "--duration", "0.3,0.6"]
    with EmulatorProcess(options) as emu:
        yield emu


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_text2img_generates_every_row_once_under_the_shared_cap(
    capped_emulator: EmulatorProcess,
) -> None:
    from modelslab_async.ray import Text2Img

    items = [{"prompt": f"a red fox #{i}", "row_id": i, "tag": f"t{i % 7}"} for i in range(59)]
    items.append({"prompt": "", "row_id": 59, "tag": "bad"})  # fails as data
    items[7]["width"] = 128  # a request-field column sets its row's field
    items[3]["seed"] = 42
    for item in items:
        item.setdefault("width", None)  # null: the default (64)
        item.setdefault("seed", None)
    ds = ray.data.from_items(items).map_batches(
        Text2Img,
        fn_constructor_kwargs={
            "api_key": "test-key",
            "base_url": capped_emulator.base_url,
            "limit": 5,
            "slots_name": fresh(),
            "width": 64,
            "height": 64,
        },
        concurrency=3,
        num_cpus=0.25,
        batch_size=10,
    )
    rows = ds.take_all()

    assert sorted(r["row_id"] for r in rows) == list(range(60))  # each row once
    by_id = {r["row_id"]: r for r in rows}
    assert all(r["tag"] == items[r["row_id"]]["tag"] for r in rows)  # metadata carried
    bad = by_id.pop(59)
    assert (bad["image"], bad["job_id"]) == (None, None)
    assert bad["error"].startswith("RequestValidationError: prompt")
    assert [r["error"] for r in by_id.values() if r["error"]] == []
    sizes = {i: png_size(r["image"]) for i, r in by_id.items()}  # served PNGs
    assert sizes.pop(7) == (128, 64)
    assert set(sizes.values()) == {(64, 64)}
    stats = capped_emulator.stats()
    jobs = stats["jobs"]
    assert sorted(r["job_id"] for r in by_id.values()) == sorted(jobs)  # 59 jobs, all ours
    assert by_id[3]["seed"] == 42  # a seed column sets the seed; the others are the server's
    assert all(isinstance(r["seed"], int) for r in by_id.values())
    assert stats["duplicate_submissions"] == 0
    assert stats["queue_limited"] <= 3


async def test_text2img_called_directly_takes_any_batch_format_and_one_row_per_image(
    capped_emulator: EmulatorProcess,
) -> None:
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    from modelslab_async.ray import Text2Img

    udf = Text2Img(
        api_key="test-key",
        base_url=capped_emulator.base_url,
        limit=2,
        slots_name=fresh(),
        prompt_column="text",
        width=64,
        height=64,
    )
    try:
        numpy_out = await udf({"text": np.array(["a", "b"]), "n": np.array([1, 2])})
        assert numpy_out.column_names == ["text", "n", "image", "job_id", "seed", "error"]
        assert numpy_out.column("n").to_pylist() == [1, 2]
        pandas_out = await udf(pd.DataFrame({"text": ["c"], "samples": [2], "seed": [7]}))
        assert pandas_out.num_rows == 2  # samples=2: a row per image, same job
        assert len(set(pandas_out.column("job_id").to_pylist())) == 1
        assert pandas_out.column("seed").to_pylist() == [7, 7]
        arrow_out = await udf(pa.table({"text": ["d", None]}))
        assert arrow_out.column("error").to_pylist()[0] is None
        assert arrow_out.column("error").to_pylist()[1].startswith("RequestValidationError")
        for clash in ({"text": ["e"], "image": [b""]}, {"prompt": ["e"]}, {"txt": ["e"]}):
            with pytest.raises(ConfigurationError):
                await udf(pa.table(clash))
    finally:
        await udf.aclose()
    images = [*numpy_out.column("image").to_pylist(), *pandas_out.column("image").to_pylist()]
    assert all(png_size(image) == (64, 64) for image in images)
    assert capped_emulator.stats()["total_jobs"] == 4


def test_text2img_bad_options_name_the_field() -> None:
    from modelslab_async import RequestValidationError
    from modelslab_async.ray import Text2Img

    for kwargs, error, field in [
        ({"limit": 0}, ConfigurationError, "limit"),
        ({"limit": "many"}, ConfigurationError, "limit"),
        ({"prompt_column": ""}, ConfigurationError, "prompt_column"),
        ({"prompt": "a fox"}, ConfigurationError, "prompt"),
        ({"width": 5000}, RequestValidationError, "width"),
        ({"colour": "red"}, RequestValidationError, "colour"),
    ]:
        with pytest.raises(error, match=field):
            Text2Img(api_key="k", **kwargs)


def test_the_ray_pipeline_example_writes_parquet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import runpy

    import pyarrow.parquet as pq

    monkeypatch.delenv("MODELSLAB_API_KEY", raising=False)  # the example's local emulator
    main = runpy.run_path(str(ROOT / "examples/ray_pipeline.py"))["main"]
    source = tmp_path / "prompts.csv"
    source.write_text((ROOT / "examples/prompts.csv").read_text() + ",bad row,\n")
    argv = [str(source), str(tmp_path / "out"), "--width", "64", "--height", "64"]
    assert main(argv) == 0  # on this module's Ray

    rows = pq.read_table(tmp_path / "out").to_pylist()
    assert sorted(r["style"] for r in rows) == sorted(
        ["photo", "oil painting", "photo", "watercolor", "photo", "film noir", "bad row"]
    )
    bad = [r for r in rows if r["style"] == "bad row"]
    assert bad[0]["error"].startswith("RequestValidationError: prompt")
    done = [r for r in rows if r["style"] != "bad row"]
    assert all(r["error"] is None and png_size(r["image"]) == (64, 64) for r in done)
    assert sorted(r["seed"] for r in done if r["prompt"].startswith("a red fox")) == [1]
    assert len({r["job_id"] for r in done}) == 6
