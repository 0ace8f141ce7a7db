"""The CLI's csv and parquet input goes through ``modelslab_async.datasets.read_rows``:
request-field columns set fields per row (an empty cell leaves the command line's
default), metadata columns are never sent to the API, a row that cannot be read fails as
its own item."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modelslab_async import Client
from modelslab_async.emulator import Emulator, EmulatorConfig

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]
KEY = "datasets-cli-key"


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(EmulatorConfig(workers=4, duration=(0.01, 0.05))) as emulator:
        yield emulator


async def batch(
    emu: Emulator, cwd: Path, source: Path, *extra: str
) -> tuple[int, dict[int, Any], bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSLAB_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["MODELSLAB_API_KEY"] = KEY
    command = [sys.executable, "-m", "modelslab_async", "batch", str(source), "--out", "out"]
    command += ["--json", "--base-url", emu.base_url, *extra]
    with anyio.fail_after(60):
        result = await anyio.run_process(command, cwd=cwd, env=env, check=False)
    assert b"Traceback" not in result.stderr, result.stderr.decode()
    records = {o["index"]: o for o in map(json.loads, result.stdout.decode().splitlines())}
    return result.returncode, records, result.stderr


async def sent_meta(emu: Emulator, job_id: Any) -> Any:
    async with Client(KEY, base_url=emu.base_url) as client:
        generation = await client.fetch(job_id)
    return generation.meta  # type: ignore[union-attr]


async def test_csv_rows_set_their_fields_and_their_metadata_is_not_sent(
    emu: Emulator, tmp_path: Path
) -> None:
    source = tmp_path / "prompts.csv"
    source.write_text(
        "prompt,seed,width,source\n"
        "a red fox,7,64,wiki\n"
        "a grey cat,,,web\n"  # empty cells: the command line's defaults
        ",3,64,x\n"  # no prompt: fails as its own item
        "a dog,1,64,y,one value too many\n"
    )
    code, records, _ = await batch(emu, tmp_path, source, "--width", "32", "--height", "32")
    assert code == 1
    assert [records[i]["state"] for i in range(4)] == ["done", "done", "failed", "failed"]
    assert "prompt" in records[2]["error"]["message"]
    assert "line 5" in records[3]["error"]["message"]
    first, second = (
        await sent_meta(emu, records[0]["job_id"]),
        await sent_meta(emu, records[1]["job_id"]),
    )
    assert (first.seed, first.width, first.height) == (7, 64, 32)
    assert (second.width, second.height) == (32, 32)
    assert "source" not in first.extra
    assert "source" not in second.extra
    assert emu.stats.total_jobs == 2


async def test_parquet_input_through_the_cli(emu: Emulator, tmp_path: Path) -> None:
    source = tmp_path / "rows.parquet"
    pq.write_table(
        pa.table({"prompt": ["a fox", "a cat"], "seed": [1, None], "id": ["a", "b"]}), source
    )
    code, records, _ = await batch(emu, tmp_path, source, "--width", "32", "--height", "32")
    assert code == 0
    assert sorted(records) == [0, 1]
    assert all(r["state"] == "done" for r in records.values())
    assert (await sent_meta(emu, records[0]["job_id"])).seed == 1


async def test_a_missing_prompt_column_exits_2_naming_the_columns(
    emu: Emulator, tmp_path: Path
) -> None:
    source = tmp_path / "prompts.csv"
    source.write_text("text,seed\na fox,1\n")
    code, _, stderr = await batch(emu, tmp_path, source)
    assert code == 2
    assert b"'text', 'seed'" in stderr
    assert emu.stats.total_jobs == 0
