"""``Client.generate_many`` against the emulator over 127.0.0.1: coverage of every index,
failures that do not stop the batch, clean stops (break, cancellation), lazy input,
progress, the manifest and resume (also after SIGKILL) without paying twice."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.lowlevel
import psutil
import pytest
from PIL import Image

from modelslab_async import (
    BadRequestError,
    BatchProgress,
    BatchResult,
    Client,
    ClientStateError,
    ConfigurationError,
    GenerationFailed,
    RequestValidationError,
    Text2ImgRequest,
)
from modelslab_async._convert import fingerprint
from modelslab_async.emulator import Emulator, EmulatorConfig

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).resolve().parent / "_batch_child.py"
KEY = "canary-key-batch-3f9d2c7e81a4b6"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FAILED_MESSAGE = "Failed, Try Again"  # the emulator's (and the API's) only `failed` answer


# --- helpers ------------------------------------------------------------------------------


def emulator(**config: Any) -> Emulator:
    """A fast emulator: 0.05-0.3 s per image unless told otherwise."""
    config.setdefault("workers", 4)
    config.setdefault("duration", (0.05, 0.3))
    return Emulator(EmulatorConfig(**config))


def client(emu: Emulator, max_in_flight: int = 4) -> Client:
    return Client(KEY, base_url=emu.base_url, max_in_flight=max_in_flight)


def small(prompt: str, **fields: Any) -> Text2ImgRequest:
    return Text2ImgRequest(prompt=prompt, width=64, height=64, **fields)


async def collect(batch: AsyncIterator[BatchResult]) -> list[BatchResult]:
    async with contextlib.aclosing(batch):
        return [result async for result in batch]


def by_index(results: Iterable[BatchResult]) -> dict[int, BatchResult]:
    results = list(results)
    indices = [r.index for r in results]
    assert len(indices) == len(set(indices)), f"an index was yielded twice: {sorted(indices)}"
    return {r.index: r for r in results}


def read_manifest(path: Path) -> list[dict[str, Any]]:
    """Every line of the manifest; each must be one complete JSON record."""
    records = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        assert record["state"] in ("submitted", "done", "failed"), record
        assert {"index", "fingerprint", "job_id", "files", "error", "time", "attempt"} <= set(
            record
        )
        records.append(record)
    return records


def last_records(path: Path) -> dict[int, dict[str, Any]]:
    return {r["index"]: r for r in read_manifest(path)}


def is_answered_submit(record: dict[str, Any]) -> bool:
    """A ``submitted`` record with the job id the API gave (a record written ahead of
    the submit, if the engine writes one, has none)."""
    return record["state"] == "submitted" and record["job_id"] is not None


def submitted_records(path: Path) -> list[dict[str, Any]]:
    """The answered submits, in order: one per job the API created."""
    return [r for r in read_manifest(path) if is_answered_submit(r)]


def unanswered_submits(records: Sequence[dict[str, Any]]) -> set[tuple[int, int]]:
    """(index, attempt) of submits written ahead whose answer is not recorded."""
    ahead = {(r["index"], r["attempt"]) for r in records if r["state"] == "submitted"}
    return ahead - {(r["index"], r["attempt"]) for r in records if is_answered_submit(r)}


def sdk_tasks() -> Counter[str]:
    """Names of the running tasks that belong to the SDK (not the in-process emulator).

    The poller's fetch workers are left out: they are the poller's, and an idle one stays
    (waiting for the next due job) as long as the client is open."""
    names = (task.get_name() for task in asyncio.all_tasks() if not task.done())
    return Counter(
        n
        for n in names
        if n.startswith("modelslab_async.")
        and not n.startswith("modelslab_async.emulator")
        and n != "modelslab_async._poller.Poller._worker"
    )


def open_sockets(emu: Emulator) -> int:
    """TCP connections of this process to the emulator."""
    port = int(emu.root_url.rsplit(":", 1)[1])
    return sum(
        1
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


# --- options ----------------------------------------------------------------------------------


async def test_generate_many_checks_its_options_at_the_call_before_any_network_call() -> None:
    async with emulator() as emu, client(emu) as c:
        with pytest.raises(TypeError, match="unexpected keyword argument 'dset'"):
            c.generate_many(["a red fox"], dset="out")  # type: ignore[call-arg]
        with pytest.raises(
            ConfigurationError, match=r"max_in_flight: got 0, allowed an integer >= 1"
        ):
            c.generate_many(["a red fox"], max_in_flight=0)
        with pytest.raises(
            ConfigurationError, match=r"max_resubmits: got -1, allowed an integer >= 0"
        ):
            c.generate_many(["a red fox"], max_resubmits=-1)
        assert all(n == 0 for n in c.statistics().calls.values())


async def test_generate_many_on_a_closed_client_is_a_client_state_error() -> None:
    async with emulator() as emu:
        c = client(emu)
        async with c:
            pass
        with pytest.raises(ClientStateError, match="closed"):
            await collect(c.generate_many(["a red fox"]))
    assert emu.stats.total_jobs == 0


def traffic(emu: Emulator) -> tuple[int, dict[str, int]]:
    return emu.stats.total_jobs, dict(emu.stats.requests_by_endpoint)


def assert_no_duplicate_submissions(emu: Emulator) -> None:
    assert emu.stats.duplicate_submissions() == 0
    assert set(emu.stats.submissions_by_fingerprint.values()) <= {1}


def assert_png(path: Path, size: tuple[int, int]) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    with Image.open(path) as image:
        image.load()  # decodes the whole file: a truncated PNG raises here
        assert image.size == size


# --- every index exactly once -------------------------------------------------------------


def _prompts(n: int) -> list[str]:
    return [f"a small test picture number {i}" for i in range(n)]


def _as_strings(n: int) -> Iterable[str]:
    return _prompts(n)


def _as_dicts(n: int) -> Iterable[dict[str, Any]]:
    return ({"prompt": p, "width": "64", "height": 64} for p in _prompts(n))


def _as_requests(n: int) -> Iterable[Text2ImgRequest]:
    return iter([small(p) for p in _prompts(n)])


async def _as_async_requests(n: int) -> AsyncIterator[Text2ImgRequest]:
    for p in _prompts(n):
        await anyio.lowlevel.checkpoint()
        yield small(p)


def _as_mixed(n: int) -> Iterable[Any]:
    kinds = itertools.cycle([str, dict, Text2ImgRequest])
    out: list[Any] = []
    for p, kind in zip(_prompts(n), kinds, strict=False):
        out.append(p if kind is str else {"prompt": p} if kind is dict else small(p))
    return tuple(out)


@pytest.mark.parametrize(
    "make",
    [_as_strings, _as_dicts, _as_requests, _as_async_requests, _as_mixed],
    ids=["strings", "dicts", "requests", "async-generator", "mixed-tuple"],
)
async def test_results_cover_every_index_exactly_once(make: Any, tmp_path: Path) -> None:
    n = 10
    async with emulator(seed=1) as emu, client(emu) as c:
        results = by_index(await collect(c.generate_many(make(n), dest=tmp_path)))
    assert sorted(results) == list(range(n))
    for i, r in results.items():
        assert r.ok, r.error
        assert r.request is not None
        assert r.request.prompt == f"a small test picture number {i}"
        assert r.generation is not None
        assert r.job_id == r.generation.id
        assert len(r.files) == 1
        assert r.files[0].parent == tmp_path
        assert r.files[0].read_bytes()[:8] == PNG_SIGNATURE
    assert len({r.job_id for r in results.values()}) == n
    assert emu.stats.total_jobs == n
    assert_no_duplicate_submissions(emu)


async def test_at_most_max_in_flight_item_tasks_however_long_the_input(tmp_path: Path) -> None:
    """Items run in worker tasks, one per slot, each taking the next item when free: not a
    task per item."""

    def workers() -> int:
        return sum(1 for t in asyncio.all_tasks() if t.get_name().endswith("_Batch._worker"))

    seen: list[int] = []
    async with emulator(seed=3) as emu, client(emu, max_in_flight=8) as c:
        batch = c.generate_many(
            (small(f"item {i}") for i in range(24)), dest=tmp_path, max_in_flight=3
        )
        async with contextlib.aclosing(batch):
            async for result in batch:
                assert result.ok, result.error
                seen.append(workers())
        assert workers() == 0
    assert len(seen) == 24
    assert 1 <= max(seen) <= 3, seen


async def test_results_come_as_items_complete_not_in_input_order(tmp_path: Path) -> None:
    # Item 0 takes four images of at least 0.25 s on one worker (>= 1 s); the others one.
    requests = [small("slow", samples=4), small("quick 1"), small("quick 2"), small("quick 3")]
    async with emulator(seed=2, duration=(0.25, 0.3)) as emu, client(emu) as c:
        order = [r.index for r in await collect(c.generate_many(requests, dest=tmp_path))]
    assert sorted(order) == [0, 1, 2, 3]
    assert order[-1] == 0


async def test_an_invalid_item_is_yielded_first_without_waiting_for_the_network() -> None:
    requests: list[Any] = ["one", "two", {"width": 64}]
    async with emulator(seed=3) as emu, client(emu) as c:
        order = [r.index for r in await collect(c.generate_many(requests))]
    assert order[0] == 2
    assert emu.stats.total_jobs == 2


async def test_results_without_dest_hold_the_image_bytes() -> None:
    async with emulator(seed=4) as emu, client(emu) as c:
        results = by_index(await collect(c.generate_many(_as_requests(3))))
    for r in results.values():
        assert r.ok
        assert r.files == ()
        assert r.generation is not None
        (image,) = r.generation.images
        assert image.data is not None
        assert image.data[:8] == PNG_SIGNATURE


# --- failures never stop the batch -------------------------------------------------------


async def test_invalid_items_are_failed_results_and_the_batch_goes_on(tmp_path: Path) -> None:
    manifest = tmp_path / "run.jsonl"
    requests: list[Any] = [
        "good 0",
        {"width": 64},  # no prompt
        {"prompt": "too wide", "width": 5000},
        small("good 3"),
        42,  # not a request at all
        {"prompt": "good 5"},
    ]
    async with emulator(seed=5) as emu, client(emu) as c:
        results = by_index(
            await collect(c.generate_many(requests, dest=tmp_path / "out", manifest=manifest))
        )
    assert sorted(results) == list(range(6))
    assert {i for i, r in results.items() if r.ok} == {0, 3, 5}
    for i in (1, 2, 4):
        assert isinstance(results[i].error, RequestValidationError)
        assert results[i].request is None
        assert results[i].generation is None
    assert "width" in str(results[2].error)
    assert emu.stats.total_jobs == 3  # the invalid items never reached the network
    last = last_records(manifest)
    assert {i for i, r in last.items() if r["state"] == "failed"} == {1, 2, 4}
    assert last[2]["error"]["type"] == "RequestValidationError"
    assert "width" in last[2]["error"]["message"]


async def test_a_failed_generation_is_a_failed_result_and_the_batch_goes_on(
    tmp_path: Path,
) -> None:
    """fail_rate jobs end with the API's only failure, "Failed, Try Again" (transient);
    with ``max_resubmits=0`` it is final."""
    n = 10
    async with emulator(seed=11, fail_rate=0.3) as emu, client(emu) as c:
        results = by_index(
            await collect(c.generate_many(_as_requests(n), dest=tmp_path, max_resubmits=0))
        )
        failed_jobs = {j.id for j in emu.stats.jobs.values() if j.failed}
    assert sorted(results) == list(range(n))
    errors = {r.job_id: r.error for r in results.values() if not r.ok}
    assert 0 < len(errors) < n  # the seed makes some of the ten jobs fail, not all
    assert set(errors) == failed_jobs
    for job_id, error in errors.items():
        assert isinstance(error, GenerationFailed)
        assert error.job_id == job_id
        assert error.transient
        assert FAILED_MESSAGE in str(error)
    assert sum(r.ok for r in results.values()) == n - len(failed_jobs)
    assert emu.stats.total_jobs == n  # nothing resubmitted


# --- transient failures are resubmitted ---------------------------------------------------


async def test_transient_failures_are_resubmitted_up_to_max_resubmits_and_recorded(
    tmp_path: Path,
) -> None:
    n, max_resubmits = 8, 2
    manifest = tmp_path / "run.jsonl"
    async with emulator(seed=11, fail_rate=0.5) as emu, client(emu) as c:
        batch = c.generate_many(
            _as_requests(n), dest=tmp_path / "out", manifest=manifest, max_resubmits=max_resubmits
        )
        results = by_index(await collect(batch))
        jobs = dict(emu.stats.jobs)
        assert_no_duplicate_submissions(emu)
    assert sorted(results) == list(range(n))
    submitted = submitted_records(manifest)
    assert len(submitted) == len(jobs)  # every submission the emulator saw is recorded
    assert {r["job_id"] for r in submitted} == set(jobs)
    resubmitted = 0
    for i in range(n):
        mine = [r for r in submitted if r["index"] == i]
        attempts = [r["attempt"] for r in mine]
        assert attempts == list(range(len(mine)))
        assert len(mine) <= max_resubmits + 1
        assert len({r["track_id"] for r in mine}) == len(mine)  # a track id per attempt
        for earlier in mine[:-1]:
            assert jobs[earlier["job_id"]].failed  # only a failure is resubmitted
        final = jobs[mine[-1]["job_id"]]
        result = results[i]
        assert result.job_id == final.id
        if result.ok:
            assert not final.failed
        else:
            assert final.failed
            assert len(mine) == max_resubmits + 1
            assert isinstance(result.error, GenerationFailed)
            assert result.error.transient
        last = last_records(manifest)[i]
        assert last["state"] == ("done" if result.ok else "failed")
        assert last["attempt"] == len(mine) - 1
        resubmitted += len(mine) - 1
    assert resubmitted >= 1  # the seed fails some first attempts


# --- stopping early leaves nothing behind -------------------------------------------------


async def _assert_nothing_left_running(
    emu: Emulator, c: Client, tasks_before: Counter[str]
) -> set[int]:
    """Right after the stop: no slot taken, no job tracked, no task of the batch, and no
    submit or download reaches the emulator from then on. A fetch the shared poller had
    already sent may finish; then nothing at all moves and no SDK task but the poller runs.
    Returns the ids of the jobs the emulator made (before the final socket check's job).
    """
    stats = c.statistics()
    assert stats.in_flight == 0
    assert stats.waiting_for_slot == 0
    assert stats.poller.tracked == 0
    assert not [name for name in sdk_tasks() if name.startswith("modelslab_async._batch")]
    jobs, requests = traffic(emu)
    await anyio.sleep(0.4)  # longer than a job: anything still running would show
    assert c.statistics().poller.fetching == 0
    assert sdk_tasks() == tasks_before  # the poller (and what ran before the batch)
    settled = traffic(emu)
    assert settled[0] == jobs
    assert settled[1]["submit"] == requests["submit"]
    assert settled[1]["download"] == requests["download"]
    await anyio.sleep(0.2)
    assert traffic(emu) == settled
    # What remains are idle keep-alive connections of the pool: a new request reuses one
    # instead of opening a socket of its own.
    idle = open_sockets(emu)
    jobs_made = set(emu.stats.jobs)
    assert idle <= c.transport.pool_limit_per_host
    await c.text2img(small("after the stop"))
    assert open_sockets(emu) <= max(idle, 1)
    return jobs_made


def _endless() -> Iterator[Text2ImgRequest]:
    for i in itertools.count():
        yield small(f"endless {i}")


async def test_break_with_aclosing_stops_everything(tmp_path: Path) -> None:
    async with emulator(seed=6) as emu:
        async with client(emu) as c:
            tasks_before = sdk_tasks()
            assert tasks_before  # the poller
            seen = 0
            batch = c.generate_many(_endless(), dest=tmp_path, max_in_flight=6)
            async with contextlib.aclosing(batch):
                async for _ in batch:
                    seen += 1
                    if seen == 3:
                        break
            await _assert_nothing_left_running(emu, c, tasks_before)
        assert open_sockets(emu) == 0  # closing the client closed the pool


async def test_plain_break_stops_everything_once_the_generator_is_collected(
    tmp_path: Path,
) -> None:
    async with emulator(seed=6) as emu:
        async with client(emu) as c:
            tasks_before = sdk_tasks()
            seen = 0
            async for _ in c.generate_many(_endless(), dest=tmp_path, max_in_flight=6):
                seen += 1
                if seen == 3:
                    break
            await anyio.sleep(0.05)  # asyncio closes the abandoned generator in a task
            await _assert_nothing_left_running(emu, c, tasks_before)
        assert open_sockets(emu) == 0


async def test_cancelling_the_consumer_stops_everything_and_keeps_the_manifest_whole(
    tmp_path: Path,
) -> None:
    manifest = tmp_path / "run.jsonl"
    async with emulator(seed=7, workers=2) as emu:
        async with client(emu) as c:
            tasks_before = sdk_tasks()
            got: list[BatchResult] = []
            three = anyio.Event()

            async def consume() -> None:
                batch = c.generate_many(_endless(), dest=tmp_path / "out", manifest=manifest)
                async for result in batch:
                    got.append(result)
                    if len(got) == 3:
                        three.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                await three.wait()
                tg.cancel_scope.cancel()
            jobs_made = await _assert_nothing_left_running(emu, c, tasks_before)
            # Every job the emulator created is in the manifest: none can be paid twice.
            assert {r["job_id"] for r in submitted_records(manifest)} == jobs_made
            last = last_records(manifest)
            assert {r.index for r in got} <= {i for i, r in last.items() if r["state"] == "done"}
            for record in last.values():
                if record["state"] == "done":
                    for f in record["files"]:
                        assert_png(Path(f), (64, 64))
        assert open_sockets(emu) == 0


# --- lazy input -----------------------------------------------------------------------------


@pytest.mark.parametrize("consumer_delay", [0.0, 0.1], ids=["fast-consumer", "slow-consumer"])
async def test_an_endless_async_generator_is_pulled_only_as_slots_free(
    consumer_delay: float,
) -> None:
    limit = 4
    pulled = yielded = worst = 0

    async def endless() -> AsyncIterator[Text2ImgRequest]:
        nonlocal pulled, worst
        for i in itertools.count():
            pulled += 1
            worst = max(worst, pulled - yielded)
            yield small(f"endless {i}")

    async with emulator(seed=8, workers=8) as emu, client(emu, max_in_flight=8) as c:
        batch = c.generate_many(endless(), max_in_flight=limit)
        async with contextlib.aclosing(batch):
            async for _ in batch:
                yielded += 1
                worst = max(worst, pulled - yielded)
                await anyio.sleep(consumer_delay)
                worst = max(worst, pulled - yielded)
                if yielded == 16:
                    break
    assert worst <= limit
    assert pulled <= yielded + limit


async def test_a_sync_iterator_is_pulled_only_as_slots_free() -> None:
    limit = 3
    pulled = yielded = worst = 0

    def endless() -> Iterator[str]:
        nonlocal pulled, worst
        for i in itertools.count():
            pulled += 1
            worst = max(worst, pulled - yielded)
            yield f"endless {i}"

    async with emulator(seed=9) as emu, client(emu) as c:
        batch = c.generate_many(endless(), max_in_flight=limit)
        async with contextlib.aclosing(batch):
            async for _ in batch:
                yielded += 1
                await anyio.sleep(0.05)
                if yielded == 9:
                    break
    assert worst <= limit
    assert pulled <= yielded + limit


# --- progress -----------------------------------------------------------------------------


def _check_progress(calls: Sequence[BatchProgress], results: Sequence[BatchResult]) -> None:
    assert calls
    for before, after in itertools.pairwise(calls):
        assert after.done >= before.done
        assert after.failed >= before.failed
        assert after.finished - before.finished <= 1
        assert after.submitted >= before.submitted
        assert after.input_exhausted >= before.input_exhausted
    for p in calls:
        assert min(p.queued, p.submitted, p.processing, p.done, p.failed) >= 0
        assert p.from_manifest <= p.done
        assert p.throughput >= 0
        assert p.elapsed >= 0
    final = calls[-1]
    assert final.input_exhausted
    assert final.queued == 0
    assert final.processing == 0
    assert final.done + final.failed == len(results)
    assert final.done == sum(r.ok for r in results)
    assert final.failed == sum(not r.ok for r in results)
    assert final.images == sum(len(r.files) for r in results)


async def test_on_progress_counts_add_up(tmp_path: Path) -> None:
    n = 12
    manifest = tmp_path / "run.jsonl"
    requests: list[Any] = [small(f"progress {i}") for i in range(n - 1)] + [{"width": 64}]
    calls: list[BatchProgress] = []
    results: list[BatchResult] = []
    async with emulator(seed=11, fail_rate=0.3) as emu:
        async with client(emu) as c:
            batch = c.generate_many(
                requests,
                dest=tmp_path / "out",
                manifest=manifest,
                on_progress=calls.append,
                max_resubmits=0,
            )
            async with contextlib.aclosing(batch):
                async for result in batch:
                    results.append(result)
                    # The counts are never behind the results handed out.
                    assert calls[-1].finished >= len(results)
        _check_progress(calls, results)
        assert calls[-1].submitted == emu.stats.total_jobs == n - 1
        assert calls[-1].failed >= 2  # the invalid item and at least one failed job
        assert max(p.processing for p in calls) >= 2
        # The rerun: done items come from the manifest and are counted as such.
        calls.clear()
        async with client(emu) as c:
            rerun = await collect(
                c.generate_many(
                    requests, dest=tmp_path / "out", manifest=manifest, on_progress=calls.append
                )
            )
        _check_progress(calls, rerun)
        assert calls[-1].from_manifest == calls[-1].done == sum(r.ok for r in results)
        assert calls[-1].submitted == 0


# --- the manifest ---------------------------------------------------------------------------


async def test_manifest_records_each_state_change_and_never_the_key(tmp_path: Path) -> None:
    manifest = tmp_path / "run.jsonl"
    requests: list[Any] = [small(f"manifest {i}") for i in range(8)] + [{"width": 64}]
    async with emulator(seed=11, fail_rate=0.3) as emu, client(emu) as c:
        results = by_index(
            await collect(
                c.generate_many(requests, dest=tmp_path / "out", manifest=manifest, max_resubmits=0)
            )
        )
    assert KEY not in manifest.read_text()
    records = read_manifest(manifest)
    for i, r in results.items():
        mine = [rec for rec in records if rec["index"] == i]
        if r.request is None:  # the invalid item: one failed record, no job
            (only,) = mine
            assert only["state"] == "failed"
            assert only["job_id"] is None
            assert only["error"]["type"] == "RequestValidationError"
            continue
        fp = fingerprint(r.request)
        ahead = [rec for rec in mine if rec["state"] == "submitted" and rec["job_id"] is None]
        mine = [rec for rec in mine if rec not in ahead]
        assert [rec["state"] for rec in mine] == ["submitted", "done" if r.ok else "failed"]
        assert [rec["track_id"] for rec in ahead] in ([], [mine[0]["track_id"]])
        assert {rec["fingerprint"] for rec in mine} == {fp}
        assert {rec["job_id"] for rec in mine} == {r.job_id}
        assert mine[0]["track_id"]
        assert str(mine[0]["track_id"]).startswith("mla-" + fp[:20])
        if r.ok:
            assert mine[1]["files"] == [str(f) for f in r.files]
            assert mine[1]["error"] is None
            assert_png(Path(mine[1]["files"][0]), (64, 64))
        else:
            assert mine[1]["files"] == []
            assert mine[1]["error"]["type"] == "GenerationFailed"
            assert FAILED_MESSAGE in mine[1]["error"]["message"]
    assert any(not r.ok for i, r in results.items() if i < 8)


async def test_a_user_track_id_is_kept(tmp_path: Path) -> None:
    manifest = tmp_path / "run.jsonl"
    async with emulator(seed=12) as emu, client(emu) as c:
        await collect(c.generate_many([small("mine", track_id="my-own-7")], manifest=manifest))
    assert submitted_records(manifest)[0]["track_id"] == "my-own-7"


async def test_a_rerun_yields_done_items_from_the_manifest_without_network_calls(
    tmp_path: Path,
) -> None:
    manifest, out = tmp_path / "run.jsonl", tmp_path / "out"
    requests = [small(f"rerun {i}") for i in range(6)]
    async with emulator(seed=13) as emu:
        async with client(emu) as c:
            first = by_index(await collect(c.generate_many(requests, dest=out, manifest=manifest)))
        before = traffic(emu)
        lines = len(read_manifest(manifest))
        async with client(emu) as c:
            second = by_index(await collect(c.generate_many(requests, dest=out, manifest=manifest)))
            assert all(n == 0 for n in c.statistics().calls.values())
        assert traffic(emu) == before
    assert sorted(second) == list(range(6))
    for i, r in second.items():
        assert r.ok
        assert r.from_manifest
        assert r.job_id == first[i].job_id
        assert r.files == first[i].files
    assert len(read_manifest(manifest)) == lines  # nothing new to record


async def test_a_changed_request_at_an_index_is_not_taken_from_the_manifest(
    tmp_path: Path,
) -> None:
    manifest, out = tmp_path / "run.jsonl", tmp_path / "out"
    async with emulator(seed=14) as emu:
        async with client(emu) as c:
            await collect(c.generate_many([small("a"), small("b")], dest=out, manifest=manifest))
        async with client(emu) as c:
            results = by_index(
                await collect(
                    c.generate_many([small("a"), small("c")], dest=out, manifest=manifest)
                )
            )
    assert results[0].from_manifest
    assert not results[1].from_manifest
    assert results[1].request is not None
    assert results[1].request.prompt == "c"
    assert emu.stats.total_jobs == 3


async def _run_until_first_result(c: Client, requests: Any, out: Path, manifest: Path) -> None:
    """Start the batch and cancel the consumer at its first result (mid-batch)."""
    with anyio.CancelScope() as scope:
        async for _ in c.generate_many(requests, dest=out, manifest=manifest, max_in_flight=8):
            scope.cancel()
            await anyio.sleep(1)  # cancelled right here


async def test_submitted_items_are_resumed_by_job_id_never_resubmitted(tmp_path: Path) -> None:
    manifest, out = tmp_path / "run.jsonl", tmp_path / "out"
    requests = [small(f"resume {i}") for i in range(8)]
    async with emulator(seed=15, workers=2, duration=(0.2, 0.3)) as emu:
        async with client(emu, max_in_flight=8) as c:
            await _run_until_first_result(c, requests, out, manifest)
        unfinished = {i: r for i, r in last_records(manifest).items() if is_answered_submit(r)}
        assert unfinished  # the interruption left jobs in flight
        async with client(emu, max_in_flight=8) as c:
            results = by_index(
                await collect(
                    c.generate_many(requests, dest=out, manifest=manifest, max_in_flight=8)
                )
            )
        assert_no_duplicate_submissions(emu)
        assert emu.stats.total_jobs == 8  # each index submitted once over both runs
    assert sorted(results) == list(range(8))
    for i, record in unfinished.items():
        assert results[i].ok
        assert not results[i].from_manifest
        assert results[i].job_id == record["job_id"]
        assert_png(results[i].files[0], (64, 64))
    assert all(r["state"] == "done" for r in last_records(manifest).values())


async def test_failed_items_are_retried_only_with_retry_failed(tmp_path: Path) -> None:
    manifest, out = tmp_path / "run.jsonl", tmp_path / "out"
    requests = [small(f"retry {i}") for i in range(8)]
    async with emulator(seed=11, fail_rate=0.4) as emu:
        async with client(emu) as c:
            first = by_index(
                await collect(
                    c.generate_many(requests, dest=out, manifest=manifest, max_resubmits=0)
                )
            )
        failed = {i for i, r in first.items() if not r.ok}
        assert failed
        assert len(failed) < 8
        before = traffic(emu)
        async with client(emu) as c:
            second = by_index(await collect(c.generate_many(requests, dest=out, manifest=manifest)))
        assert traffic(emu) == before  # neither the done nor the failed items went out
    for i, r in second.items():
        assert r.from_manifest
        if i in failed:
            assert isinstance(r.error, GenerationFailed)
            assert r.job_id == first[i].job_id
            assert FAILED_MESSAGE in str(r.error)
        else:
            assert r.ok
    async with emulator(seed=16) as healthy:
        async with client(healthy) as c:
            third = by_index(
                await collect(
                    c.generate_many(requests, dest=out, manifest=manifest, retry_failed=True)
                )
            )
        assert healthy.stats.total_jobs == len(failed)
        assert_no_duplicate_submissions(healthy)
    assert all(r.ok for r in third.values())
    assert {i for i, r in third.items() if not r.from_manifest} == failed
    last = last_records(manifest)
    for i in failed:
        assert last[i]["state"] == "done"
        assert last[i]["attempt"] == 1
        retry = [r for r in submitted_records(manifest) if r["index"] == i]
        assert [r["attempt"] for r in retry] == [0, 1]


async def test_a_done_item_whose_file_is_gone_is_downloaded_again_by_job_id(
    tmp_path: Path,
) -> None:
    manifest, out = tmp_path / "run.jsonl", tmp_path / "out"
    requests = [small(f"redownload {i}") for i in range(4)]
    async with emulator(seed=17) as emu:
        async with client(emu) as c:
            first = by_index(await collect(c.generate_many(requests, dest=out, manifest=manifest)))
        first[2].files[0].unlink()
        jobs, before = traffic(emu)
        async with client(emu) as c:
            second = by_index(await collect(c.generate_many(requests, dest=out, manifest=manifest)))
            assert c.statistics().calls["submit"] == 0
        jobs_after, after = traffic(emu)
        assert jobs_after == jobs
        assert after["submit"] == before["submit"]
        assert after["download"] == before["download"] + 1
        assert_no_duplicate_submissions(emu)
    assert {i for i, r in second.items() if not r.from_manifest} == {2}
    assert second[2].ok
    assert second[2].job_id == first[2].job_id
    assert second[2].files == first[2].files
    assert_png(second[2].files[0], (64, 64))


async def test_a_resumed_job_unknown_to_the_server_is_submitted_again(tmp_path: Path) -> None:
    """The emulator of the first run is gone (as when a ``--local`` run dies): its job ids
    mean nothing to the new one, which answers "Request not found"."""
    manifest, out = tmp_path / "run.jsonl", tmp_path / "out"
    requests = [small(f"lost {i}") for i in range(6)]
    async with emulator(seed=1, workers=2, duration=(0.2, 0.3)) as first_emu:
        async with client(first_emu, max_in_flight=8) as c:
            await _run_until_first_result(c, requests, out, manifest)
        old_jobs = set(first_emu.stats.jobs)
    unfinished = {i: r for i, r in last_records(manifest).items() if is_answered_submit(r)}
    assert unfinished
    async with emulator(seed=2) as emu:
        async with client(emu, max_in_flight=8) as c:
            results = by_index(
                await collect(c.generate_many(requests, dest=out, manifest=manifest))
            )
        assert_no_duplicate_submissions(emu)
        new_jobs = set(emu.stats.jobs)
    assert not old_jobs & new_jobs
    assert all(r.ok for r in results.values())
    assert sorted(results) == list(range(6))
    for i, record in unfinished.items():
        assert results[i].job_id in new_jobs
        retry = [r for r in submitted_records(manifest) if r["index"] == i]
        assert [r["attempt"] for r in retry] == [record["attempt"], record["attempt"] + 1]
        assert last_records(manifest)[i]["state"] == "done"


async def test_a_done_item_whose_files_and_job_are_gone_is_not_paid_for_again_unasked(
    tmp_path: Path,
) -> None:
    manifest, out = tmp_path / "run.jsonl", tmp_path / "out"
    requests = [small("paid once")]
    async with emulator(seed=1) as first_emu, client(first_emu) as c:
        (first,) = await collect(c.generate_many(requests, dest=out, manifest=manifest))
    first.files[0].unlink()
    async with emulator(seed=2) as emu:
        async with client(emu) as c:
            (second,) = await collect(c.generate_many(requests, dest=out, manifest=manifest))
        assert emu.stats.total_jobs == 0
        assert isinstance(second.error, BadRequestError)
        assert "not found" in str(second.error).lower()
        async with client(emu) as c:  # asked for: the failed item is submitted again
            (third,) = await collect(
                c.generate_many(requests, dest=out, manifest=manifest, retry_failed=True)
            )
        assert emu.stats.total_jobs == 1
    assert third.ok
    assert third.files
    assert third.files[0].exists()


# --- SIGKILL in the middle of a batch ---------------------------------------------------------


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSLAB_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["MODELSLAB_API_KEY"] = KEY
    return env


@contextlib.asynccontextmanager
async def _emulator_server(*args: str) -> AsyncIterator[str]:
    """The emulator as a server process of its own; yields its base URL."""
    cmd = [sys.executable, "-m", "modelslab_async.emulator", "--port", "0", *args]
    with subprocess.Popen(  # noqa: ASYNC220 - a server that outlives awaits
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=_env(), cwd=ROOT
    ) as proc:
        try:
            assert proc.stdout is not None
            with anyio.fail_after(30):
                line = await anyio.to_thread.run_sync(proc.stdout.readline)
            assert "base URL http://" in line, line
            yield line.split("base URL ", 1)[1].strip()
        finally:
            proc.kill()
            proc.wait()


async def _stats(root: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(root + "/__emulator/stats?jobs=0") as resp,
    ):
        data: dict[str, Any] = await resp.json()
        return data


async def _valid_records(manifest: Path) -> list[dict[str, Any]]:
    """The complete lines only: the child may be writing the last one."""
    text = await anyio.Path(manifest).read_text() if await anyio.Path(manifest).exists() else ""
    records = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            records.append(json.loads(line))
    return records


async def _kill_mid_batch(child: subprocess.Popen[bytes], root: str, manifest: Path) -> int:
    """SIGKILL the child once some items are done, at a moment when every job the emulator
    created is already in the manifest; returns the number of done records then.

    Between the server creating a job and the child's fsync of its ``submitted`` record
    there is a window that no client can close (the API has no lookup by track id): a
    kill inside it loses the job id, so the rerun must either pay again or give the item
    up as ambiguous. The child is frozen (SIGSTOP) while the test compares the emulator's
    job count with the manifest (and looks for a submit written ahead without its answer);
    if a submit is in that window the child runs on a little and the test tries again.
    """
    with anyio.fail_after(30):
        while True:
            await anyio.sleep(0.02)
            assert child.poll() is None, "the batch finished before it could be killed"
            records = await _valid_records(manifest)
            done = sum(r["state"] == "done" for r in records)
            if done < 4:
                continue
            child.send_signal(signal.SIGSTOP)
            await anyio.sleep(0.2)  # requests already sent reach the emulator
            records = await _valid_records(manifest)
            submitted = sum(is_answered_submit(r) for r in records)
            settled = not unanswered_submits(records)
            if settled and (await _stats(root))["total_jobs"] == submitted:
                child.send_signal(signal.SIGKILL)
                await anyio.to_thread.run_sync(child.wait)
                return sum(r["state"] == "done" for r in records)
            child.send_signal(signal.SIGCONT)
            await anyio.sleep(0.03)


async def test_sigkill_mid_batch_then_rerun_completes_without_paying_twice(
    tmp_path: Path,
) -> None:
    count = 30
    dest, manifest = tmp_path / "out", tmp_path / "run.jsonl"
    args = [str(CHILD), "", str(dest), str(manifest), str(count)]
    emu_args = ["--workers", "3", "--duration", "0.05,0.3", "--seed", "21"]
    async with _emulator_server(*emu_args) as base_url:
        root = base_url.rsplit("/api/", 1)[0]
        args[1] = base_url
        with subprocess.Popen(  # noqa: ASYNC220 - killed while the test awaits
            [sys.executable, *args], env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL
        ) as child:
            try:
                done_at_kill = await _kill_mid_batch(child, root, manifest)
            finally:
                if child.poll() is None:
                    child.kill()
        assert child.returncode == -signal.SIGKILL
        assert 4 <= done_at_kill < count  # killed in the middle of the batch

        with anyio.fail_after(60):
            rerun = await anyio.run_process(
                [sys.executable, *args], env=_env(), cwd=ROOT, check=False
            )
        assert rerun.returncode == 0, rerun.stderr.decode()
        summary = json.loads(rerun.stdout.decode().strip().splitlines()[-1])
        stats = await _stats(root)

    assert summary["results"] == summary["done"] == count
    assert summary["from_manifest"] >= done_at_kill
    assert stats["duplicate_submissions"] == 0
    assert set(stats["submissions_by_fingerprint"].values()) == {1}
    assert stats["total_jobs"] == count  # every index submitted exactly once
    assert KEY not in manifest.read_text()
    last = last_records(manifest)
    assert sorted(last) == list(range(count))
    assert all(r["state"] == "done" for r in last.values())
    files = {Path(f) for r in last.values() for f in r["files"]}
    assert len(files) == count
    on_disk = set(dest.iterdir())
    assert on_disk == files  # no .part, hidden or stray file left
    for path in on_disk:
        assert not path.name.startswith(".")
        assert not path.name.endswith(".part")
        assert_png(path, (96, 64))


# --- no blocking call on the event loop ------------------------------------------------------


@pytest.mark.usefixtures("blockbuster")
async def test_a_batch_and_its_rerun_make_no_blocking_call_on_the_event_loop(
    tmp_path: Path,
) -> None:
    manifest, out = tmp_path / "run.jsonl", tmp_path / "out"
    requests = [small(f"non-blocking {i}") for i in range(6)]
    async with emulator(seed=18) as emu:
        async with client(emu) as c:
            first = await collect(c.generate_many(requests, dest=out, manifest=manifest))
        async with client(emu) as c:
            second = await collect(c.generate_many(requests, dest=out, manifest=manifest))
    assert all(r.ok for r in first)
    assert all(r.from_manifest for r in second)


async def test_a_stop_during_a_rate_limit_pause_takes_back_the_write_ahead_record(
    tmp_path: Path,
) -> None:
    """Ctrl-C while a submit waits out a 429: nothing was created, so the rerun submits the
    item (no AmbiguousSubmitError) and nothing is paid twice."""
    manifest = tmp_path / "run.jsonl"
    items = [small(f"paused {i}", seed=i) for i in range(3)]
    async with emulator(max_queued_per_key=1, queue_retry_after=5.0, duration=(0.3, 0.3)) as emu:
        async with client(emu, max_in_flight=3) as c:
            with anyio.move_on_after(1.0):  # stops while two submits wait out their 429
                async with contextlib.aclosing(c.generate_many(items, manifest=manifest)) as run:
                    async for _ in run:
                        pass
        records = read_manifest(manifest)
        taken_back = [r for r in records if (r["error"] or {}).get("type") == "NotSubmitted"]
        assert taken_back, records
        assert all(r["state"] == "failed" and r["job_id"] is None for r in taken_back)
        async with client(emu, max_in_flight=1) as c:
            results = by_index(await collect(c.generate_many(items, manifest=manifest)))
        assert sorted(results) == [0, 1, 2]
        assert all(r.ok for r in results.values()), [r.error for r in results.values()]
        assert emu.stats.duplicate_submissions() == 0
        assert len(emu.stats.jobs) == 3


async def test_the_manifest_records_prompt_seed_and_generation_time(tmp_path: Path) -> None:
    """What the report shows beside each image and failure: a done record has the prompt,
    the seed the server used and its generation time; a failed one the prompt and the
    request's seed; an item that is not a valid request the prompt it gave, if a string."""
    manifest = tmp_path / "run.jsonl"
    requests: list[Any] = [
        *(small(f"picture {i}", seed=500 + i) for i in range(8)),
        {"prompt": "too wide <b>", "width": 5000},
        {"prompt": 7, "width": 64},
        42,
    ]
    async with emulator(seed=11, fail_rate=0.4) as emu, client(emu) as c:
        results = by_index(
            await collect(
                c.generate_many(requests, dest=tmp_path / "out", manifest=manifest, max_resubmits=0)
            )
        )
    last = last_records(manifest)
    done = [i for i in range(8) if results[i].ok]
    failed = [i for i in range(8) if not results[i].ok]
    assert done
    assert failed
    for i in done:
        generation = results[i].generation
        assert generation is not None
        assert generation.generation_time is not None
        assert last[i]["prompt"] == f"picture {i}"
        assert last[i]["seed"] == generation.seed == 500 + i
        assert last[i]["generation_time"] == generation.generation_time
    for i in failed:
        assert last[i]["state"] == "failed"
        assert (last[i]["prompt"], last[i]["seed"]) == (f"picture {i}", 500 + i)
        assert "generation_time" not in last[i]
    assert last[8]["prompt"] == "too wide <b>"
    for i in (9, 10):  # no prompt string to record
        assert last[i]["state"] == "failed"
        assert "prompt" not in last[i]
        assert "seed" not in last[i]
