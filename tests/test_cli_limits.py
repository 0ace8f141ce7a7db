"""The command line against hostile input and servers: refused before anything is paid for,
and bounded output. Run in a subprocess against small servers on 127.0.0.1."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import anyio
import pytest
from aiohttp import web

from tests._hostile import hostile

pytestmark = pytest.mark.anyio

KEY = "cli-limits-key-5e7d"
ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSLAB_")}
    env["MODELSLAB_API_KEY"] = KEY
    return env


async def _cli(*args: str, cwd: Path) -> tuple[int, str, str]:
    with anyio.fail_after(60):
        done = await anyio.run_process(
            [sys.executable, "-m", "modelslab_async", *args], cwd=cwd, env=_env(), check=False
        )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def _never_called(request: web.Request) -> web.Response:
    return web.json_response({"status": "error", "message": "should not have been called"})


@pytest.mark.parametrize("value", ["nan", "-1", "0", "inf", "soon"])
@pytest.mark.parametrize("command", [["generate", "a red fox"], ["fetch", "123"]])
async def test_a_bad_timeout_is_refused_before_any_request(
    tmp_path: Path, command: list[str], value: str
) -> None:
    async with hostile(_never_called) as api:
        code, _out, err = await _cli(
            *command, "--timeout", value, "--base-url", api.base_url, cwd=tmp_path
        )
    assert code == 2, err
    assert "--timeout" in err
    assert "finite number of seconds > 0" in err
    assert api.seen == []


async def test_a_huge_error_message_is_cut_in_the_cli_output(tmp_path: Path) -> None:
    message = "x" * (3 * 2**20)

    async def failing(request: web.Request) -> web.Response:
        return web.json_response({"status": "failed", "id": 9, "message": message})

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one\ntwo\n")
    async with hostile(failing) as api:
        code, out, err = await _cli(
            "batch", str(prompts), "--out", "out", "--json", "--base-url", api.base_url,
            cwd=tmp_path,
        )  # fmt: skip
    assert code == 1, err
    assert len(out) + len(err) < 30_000
    records = [json.loads(line) for line in out.splitlines()]
    assert [len(r["error"]["message"]) <= 4000 for r in records] == [True, True]
    manifest = (tmp_path / "out" / "manifest.jsonl").read_text()
    assert len(manifest) < 30_000
