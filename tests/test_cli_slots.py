"""``batch --concurrency N --slots redis://...``: CLI processes (subprocesses) that name the
same real ``redis-server`` share one cap of N jobs in flight against one emulator with the
API's queue cap; the errors of a missing extra, a bad URL and an unreachable Redis."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import anyio
import pytest
import redis.asyncio as aioredis

from modelslab_async.emulator import Emulator, EmulatorConfig

from ._redis_server import RedisServer, free_port
from .test_cli import _check_no_key, _command, _env, _last_records, run_cli

pytestmark = pytest.mark.anyio

PROCESSES = 3
PROMPTS_EACH = 8
CAP = 5


def _prompt_file(directory: Path, worker: int) -> Path:
    path = directory / f"prompts-{worker}.txt"
    path.write_text("\n".join(f"worker {worker} picture {i}" for i in range(PROMPTS_EACH)) + "\n")
    return path


async def _run_workers(
    emu: Emulator, tmp_path: Path, *extra: str
) -> list[subprocess.CompletedProcess[bytes]]:
    results: list[subprocess.CompletedProcess[bytes]] = []

    async def one(worker: int) -> None:
        prompts = _prompt_file(tmp_path, worker)
        args = ("batch", str(prompts), "--out", f"out-{worker}", "--base-url", emu.base_url)
        with anyio.fail_after(120):
            result = await anyio.run_process(
                _command(*args, *extra), cwd=tmp_path, env=_env(), check=False
            )
        _check_no_key(result.stdout, result.stderr)
        results.append(result)

    async with anyio.create_task_group() as tg:
        for worker in range(PROCESSES):
            tg.start_soon(one, worker)
    return results


def _all_done(tmp_path: Path) -> None:
    for worker in range(PROCESSES):
        records = _last_records(tmp_path / f"out-{worker}" / "manifest.jsonl")
        assert sorted(records) == list(range(PROMPTS_EACH))
        assert all(r["state"] == "done" for r in records.values())


async def test_processes_naming_one_redis_share_the_cap(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # The API's queue cap, with its documented retry_after of 30 s: one queue-limit answer
    # would cost a process 30 s. Shared slots keep the three processes at 5 jobs together.
    config = EmulatorConfig(workers=CAP, duration=(0.2, 0.5), max_queued_per_key=CAP, seed=3)
    name = f"cli-{uuid.uuid4().hex[:8]}"
    async with Emulator(config) as emu:
        results = await _run_workers(
            emu, tmp_path, "--concurrency", str(CAP), "--slots", redis_server.url,
            "--slots-name", name,
        )  # fmt: skip
        queue_limited = emu.stats.queue_limited()
        duplicates = emu.stats.duplicate_submissions()
        jobs = emu.stats.total_jobs
    assert [r.returncode for r in results] == [0] * PROCESSES, [r.stderr for r in results]
    _all_done(tmp_path)
    assert jobs == PROCESSES * PROMPTS_EACH
    assert duplicates == 0
    assert queue_limited == 0


async def test_without_shared_slots_the_same_processes_overrun_the_cap(tmp_path: Path) -> None:
    # The control: each process alone keeps to 5, together they pass the queue cap
    # (a short retry_after keeps this test quick).
    config = EmulatorConfig(
        workers=CAP, duration=(0.2, 0.5), max_queued_per_key=CAP, queue_retry_after=0.2, seed=3
    )
    async with Emulator(config) as emu:
        results = await _run_workers(emu, tmp_path, "--concurrency", str(CAP))
        queue_limited = emu.stats.queue_limited()
    assert [r.returncode for r in results] == [0] * PROCESSES
    _all_done(tmp_path)
    assert queue_limited > 0


async def test_concurrency_auto_with_slots_stores_the_limit_in_redis(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    name = f"cli-auto-{uuid.uuid4().hex[:8]}"
    config = EmulatorConfig(
        workers=4, duration=(0.05, 0.2), max_queued_per_key=3, queue_retry_after=0.2, seed=4
    )
    async with Emulator(config) as emu:
        prompts = _prompt_file(tmp_path, 0)
        result = await run_cli(
            "batch", str(prompts), "--out", "out", "--base-url", emu.base_url,
            "--concurrency", "auto", "--slots", redis_server.url, "--slots-name", name,
            cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        stored = await client.get(f"{name}:limit")  # kept for a lease after the last use
    finally:
        await client.aclose()
    assert stored is not None
    assert 1 <= int(stored) <= 4  # the starting limit (4), or less after a queue-limit answer


async def test_an_unreachable_redis_exits_2_naming_the_host(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    prompts = _prompt_file(tmp_path, 0)
    url = f"redis://:s3cret-pass@127.0.0.1:{port}/0"
    result = await run_cli(
        "batch", str(prompts), "--out", "out", "--local", "-c", "5", "--slots", url, cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr.decode()
    assert f"127.0.0.1:{port}".encode() in result.stderr
    assert b"--slots" in result.stderr
    assert b"s3cret-pass" not in result.stderr
    assert b"Traceback" not in result.stderr
    assert not (tmp_path / "out" / "manifest.jsonl").exists()  # nothing ran


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--slots", "http://127.0.0.1:6379", b"--slots: url: got http://127.0.0.1:6379"),
        ("--slots-name", "", b"--slots: name: got ''"),
    ],
)
async def test_a_bad_slots_option_exits_2(
    tmp_path: Path, option: str, value: str, says: bytes
) -> None:
    prompts = _prompt_file(tmp_path, 0)
    args = {"--slots": "redis://127.0.0.1:1/0", option: value}
    result = await run_cli(
        "batch", str(prompts), "--out", "out", "--local",
        *(part for pair in args.items() for part in pair), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr.decode()
    assert says in result.stderr


async def test_a_missing_redis_extra_is_explained(tmp_path: Path) -> None:
    prompts = _prompt_file(tmp_path, 0)
    code = (
        "import runpy, sys; sys.modules['redis'] = None; "
        "sys.argv = ['modelslab-async', 'batch', sys.argv[1], '--out', 'out', '--local', "
        "'--slots', 'redis://127.0.0.1:6379/0']; "
        "runpy.run_module('modelslab_async', run_name='__main__')"
    )
    result = await anyio.run_process(
        [sys.executable, "-c", code, str(prompts)], cwd=tmp_path, env=_env(), check=False
    )
    assert result.returncode == 2, result.stderr.decode()
    assert b"pip install 'modelslab-async[redis]'" in result.stderr
    assert b"Traceback" not in result.stderr
