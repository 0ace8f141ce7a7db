"""Every example runs against the embedded emulator (no key, no network) and exits 0."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from ._emulator_process import EmulatorProcess
from ._redis_server import RedisServer, free_port

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSLAB_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


async def _run(*argv: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    with anyio.fail_after(120):
        result = await anyio.run_process(list(argv), cwd=cwd, env=_env(), check=False)
    assert result.returncode == 0, result.stderr.decode()
    return result


def _assert_pngs(paths: list[Path], count: int) -> None:
    assert len(paths) == count
    for path in paths:
        assert path.read_bytes()[:8] == PNG_SIGNATURE, path


async def test_readme_demo_command_writes_pngs(tmp_path: Path) -> None:
    prompts = EXAMPLES / "prompts.txt"
    result = await _run(
        sys.executable, "-m", "modelslab_async", "batch", str(prompts), "--out", "out",
        cwd=tmp_path,
    )  # fmt: skip
    items = [line for line in prompts.read_text().splitlines() if line.strip() and line[0] != "#"]
    assert 10 <= len(items) <= 14
    _assert_pngs(sorted((tmp_path / "out").glob("*.png")), len(items))
    assert b"--local" in result.stderr


async def test_quickstart(tmp_path: Path) -> None:
    result = await _run(sys.executable, str(EXAMPLES / "quickstart.py"), "out", cwd=tmp_path)
    paths = [tmp_path / p for p in result.stdout.decode().split()]
    _assert_pngs(paths, 1)


async def test_web_backend_selftest(tmp_path: Path) -> None:
    result = await _run(
        sys.executable, str(EXAMPLES / "web_backend.py"), "--selftest", "out", cwd=tmp_path
    )
    paths = [tmp_path / p for p in result.stdout.decode().split()]
    _assert_pngs(paths, 1)


async def test_pipeline_writes_images_manifest_and_dataset(tmp_path: Path) -> None:
    await _run(sys.executable, str(EXAMPLES / "pipeline.py"), "out", cwd=tmp_path)
    rows = [
        json.loads(line) for line in (tmp_path / "out" / "dataset.jsonl").read_text().splitlines()
    ]
    assert sorted(r["index"] for r in rows) == list(range(12))
    assert all(r["error"] is None for r in rows)
    _assert_pngs([tmp_path / f for r in rows for f in r["files"]], 12)
    assert (tmp_path / "out" / "manifest.jsonl").stat().st_size > 0


async def test_webhook_aiohttp_selftest(tmp_path: Path) -> None:
    result = await _run(
        sys.executable, str(EXAMPLES / "webhook_aiohttp.py"), "--selftest", "out", cwd=tmp_path
    )
    paths = [tmp_path / p for p in result.stdout.decode().split()]
    _assert_pngs(paths, 1)
    assert b"announced by webhook" in result.stderr


async def test_webhook_fastapi_selftest(tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    result = await _run(
        sys.executable, str(EXAMPLES / "webhook_fastapi.py"), "--selftest", "out", cwd=tmp_path
    )
    paths = [tmp_path / p for p in result.stdout.decode().split()]
    _assert_pngs(paths, 1)
    assert b"announced by webhook" in result.stderr


async def test_multiworker_fastapi_workers_share_one_cap(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Two servers of the example (3 uvicorn workers) take 24 concurrent requests: the shared
    cap of 5 holds, so the emulator (capped at 5 per key too) never refuses a submit."""
    import aiohttp

    with EmulatorProcess(
        ["--max-queued-per-key", "5", "--workers", "2", "--duration", "0.2,0.4"]
    ) as emu:
        env = _env() | {
            "MODELSLAB_API_KEY": "local-key",
            "MODELSLAB_BASE_URL": emu.base_url,
            "REDIS_URL": redis_server.url.rsplit("/", 1)[0] + "/5",  # a db of its own
            "QUEUE_CAP": "5",
        }
        ports = [free_port(), free_port()]
        servers = []
        for port, workers in [(ports[0], 2), (ports[1], 1)]:
            argv = [sys.executable, str(EXAMPLES / "multiworker_fastapi.py")]
            argv += ["--port", str(port), "--workers", str(workers)]
            servers.append(
                await anyio.open_process(argv, cwd=tmp_path, env=env, stdout=None, stderr=None)
            )
        try:
            async with aiohttp.ClientSession() as session:
                with anyio.fail_after(60):  # a hang guard: the servers start in seconds
                    for port in ports:
                        while True:
                            with contextlib.suppress(aiohttp.ClientError):
                                async with session.get(f"http://127.0.0.1:{port}/slots") as r:
                                    if r.status == 200:
                                        assert (await r.json())["limit"] == 5
                                        break
                            await anyio.sleep(0.2)
                answers: list[tuple[int, bytes, str]] = []

                async def one(port: int, i: int) -> None:
                    url = f"http://127.0.0.1:{port}/images"
                    body = {"prompt": f"fox {port} {i}", "width": 64, "height": 64}
                    async with session.post(url, json=body) as r:
                        answers.append((r.status, await r.read(), r.headers["X-Worker-Pid"]))

                with anyio.fail_after(120):
                    async with anyio.create_task_group() as tg:
                        for port in ports:
                            for i in range(12):
                                tg.start_soon(one, port, i)
        finally:
            for server in servers:
                server.terminate()
            with anyio.fail_after(30):
                for server in servers:
                    await server.wait()
        assert [status for status, _, _ in answers] == [200] * 24
        assert all(body[:8] == PNG_SIGNATURE for _, body, _ in answers)
        assert len({pid for _, _, pid in answers}) >= 2  # at least one worker of each server
        stats = emu.stats()
        assert stats["total_jobs"] == 24
        assert stats["duplicate_submissions"] == 0
        assert stats["queue_limited"] == 0  # the cap held across the processes
