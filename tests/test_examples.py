"""Every example runs against the embedded emulator (no key, no network) and exits 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

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
