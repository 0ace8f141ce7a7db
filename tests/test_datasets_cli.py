"""The CLI's csv and parquet input goes through ``modelslab_async.datasets.read_rows``:
request-field columns set fields per row (an empty cell leaves the command line's
default), metadata columns are never sent to the API, a row that cannot be read fails as
its own item. ``batch --output-format imagefolder|webdataset|parquet`` writes a dataset with
``write_dataset`` (its layouts are tested in test_datasets_formats.py): here, what the
command adds (options, exit codes, report, resume through the same command)."""

from __future__ import annotations

import json
import os
import sys
import tarfile
from collections import Counter
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


async def run_cli(emu: Emulator, cwd: Path, source: Path, *extra: str) -> tuple[int, str]:
    """``batch SOURCE --out out`` against *emu*, without --json: exit code and stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSLAB_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["MODELSLAB_API_KEY"] = KEY
    command = [sys.executable, "-m", "modelslab_async", "batch", str(source), "--out", "out"]
    command += ["--base-url", emu.base_url, *extra]
    with anyio.fail_after(120):
        result = await anyio.run_process(command, cwd=cwd, env=env, check=False)
    stderr = result.stderr.decode()
    assert "Traceback" not in stderr, stderr
    return result.returncode, stderr


BAD_ROWS = {17: "prompt", 140: "width"}


def input_parquet(path: Path, rows: int = 250) -> Path:
    """prompt, seed, width, height and a metadata column; row 17 has no prompt, row 140
    a width of 4096."""
    pq.write_table(
        pa.table(
            {
                "prompt": ["" if i == 17 else f"row {i}" for i in range(rows)],
                "seed": [1000 + i for i in range(rows)],
                "width": [4096 if i == 140 else 32 for i in range(rows)],
                "height": [32] * rows,
                "source": [f"src-{i}" for i in range(rows)],
            }
        ),
        path,
    )
    return path


def good_keys(rows: int = 250) -> set[str]:
    return {f"{i:09d}" for i in range(rows) if i not in BAD_ROWS}


def assert_failures_name_fields(out: Path) -> None:
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert {f["index"]: f["error"]["field"] for f in failures} == BAD_ROWS
    assert all(f"row {f['index']}" in f["error"]["message"] for f in failures)


async def test_webdataset_output_shards_exit_1_for_bad_rows_and_a_rerun_submits_nothing(
    emu: Emulator, tmp_path: Path
) -> None:
    source = input_parquet(tmp_path / "in.parquet")
    args = ("--output-format", "webdataset", "--shard-size", "100")
    code, stderr = await run_cli(emu, tmp_path, source, *args)
    assert code == 1, stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("*.tar")) == ["00000.tar", "00001.tar", "00002.tar"]
    assert len(list(out.glob("*_stats.json"))) == 3
    keys: Counter[str] = Counter()
    for tar in sorted(out.glob("*.tar")):
        with tarfile.open(tar) as archive:
            for member in archive.getmembers():
                key, ext = member.name.split(".", 1)
                if ext == "json":
                    keys[key] += 1
                    data = json.loads(archive.extractfile(member).read())  # type: ignore[union-attr]
                    index = int(key)
                    assert (data["seed"], data["source"]) == (1000 + index, f"src-{index}")
    assert set(keys) == good_keys()
    assert set(keys.values()) == {1}
    assert_failures_name_fields(out)
    assert (out / "report.html").is_file()
    assert "248 done, 2 failed" in stderr
    submitted = emu.stats.total_jobs
    assert submitted == 248

    # The same command again: the dataset is complete, nothing is submitted.
    code, stderr = await run_cli(emu, tmp_path, source, *args)
    assert code == 1, stderr
    assert emu.stats.total_jobs == submitted
    assert "0 jobs submitted" in stderr


async def test_parquet_output_loads_with_datasets_as_an_image_feature(
    emu: Emulator, tmp_path: Path, hf_datasets: Any
) -> None:
    source = input_parquet(tmp_path / "in.parquet", rows=150)
    code, stderr = await run_cli(
        emu, tmp_path, source, "--output-format", "parquet", "--shard-size", "100"
    )
    assert code == 1, stderr
    out = tmp_path / "out"
    files = sorted(str(p) for p in out.glob("*.parquet"))
    assert [Path(f).name for f in files] == ["00000.parquet", "00001.parquet"]
    dataset = hf_datasets.load_dataset(
        "parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf-cache")
    )
    assert isinstance(dataset.features["image"], hf_datasets.Image)
    assert Counter(dataset["key"]) == Counter(good_keys(150))
    row = dataset[0]
    assert row["image"].size == (32, 32)
    assert (row["seed"], row["source"]) == (1000 + int(row["key"]), f"src-{int(row['key'])}")
    assert (out / "report.html").is_file()


async def test_an_unknown_extension_exits_2_naming_the_supported_ones(
    emu: Emulator, tmp_path: Path
) -> None:
    source = tmp_path / "prompts.xlsx"
    source.write_text("a fox\n")
    code, stderr = await run_cli(emu, tmp_path, source, "--output-format", "webdataset")
    assert code == 2
    for suffix in (".txt", ".jsonl", ".csv", ".parquet"):
        assert suffix in stderr
    assert emu.stats.total_jobs == 0


async def test_a_dataset_without_its_prompt_column_exits_2_naming_the_columns(
    emu: Emulator, tmp_path: Path
) -> None:
    source = input_parquet(tmp_path / "in.parquet", rows=3)
    code, stderr = await run_cli(
        emu, tmp_path, source, "--output-format", "imagefolder", "--prompt-column", "caption"
    )
    assert code == 2
    assert "'caption'" in stderr
    assert "'prompt', 'seed', 'width', 'height', 'source'" in stderr
    assert emu.stats.total_jobs == 0


async def test_another_output_format_on_an_existing_dataset_exits_2(
    emu: Emulator, tmp_path: Path
) -> None:
    source = tmp_path / "prompts.csv"
    source.write_text("caption,id\na fox,1\na cat,2\n")
    common = ("--prompt-column", "caption", "--width", "32", "--height", "32")
    code, stderr = await run_cli(emu, tmp_path, source, "--output-format", "imagefolder", *common)
    assert code == 0, stderr
    assert emu.stats.total_jobs == 2
    code, stderr = await run_cli(emu, tmp_path, source, "--output-format", "parquet", *common)
    assert code == 2
    assert "imagefolder" in stderr
    assert emu.stats.total_jobs == 2


async def test_the_prompt_column_names_the_prompt_of_files_output_too(
    emu: Emulator, tmp_path: Path
) -> None:
    csv_source = tmp_path / "prompts.csv"
    csv_source.write_text("caption,seed\na red fox,7\n")
    code, records, _ = await batch(
        emu, tmp_path, csv_source, "--prompt-column", "caption", "--width", "32", "--height", "32"
    )
    assert code == 0
    assert (await sent_meta(emu, records[0]["job_id"])).seed == 7
    jsonl_source = tmp_path / "prompts.jsonl"
    jsonl_source.write_text('{"caption": "a grey cat", "seed": 9}\n')
    code, records, _ = await batch(
        emu,
        tmp_path,
        jsonl_source,
        "--prompt-column",
        "caption",
        "--out",
        "out2",
        "--width",
        "32",
        "--height",
        "32",
    )
    assert code == 0
    meta = await sent_meta(emu, records[0]["job_id"])
    assert (meta.prompt, meta.seed) == ("a grey cat", 9)


async def test_a_dataset_from_stdin_or_with_json_exits_2(emu: Emulator, tmp_path: Path) -> None:
    source = input_parquet(tmp_path / "in.parquet", rows=3)
    code, stderr = await run_cli(emu, tmp_path, source, "--output-format", "parquet", "--json")
    assert code == 2
    assert "--json" in stderr
    code, stderr = await run_cli(emu, tmp_path, Path("-"), "--output-format", "webdataset")
    assert code == 2
    assert "standard input" in stderr
    assert emu.stats.total_jobs == 0
