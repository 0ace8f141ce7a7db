"""The ``modelslab-async`` command line, run in a subprocess against an in-process emulator."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from PIL import Image

from modelslab_async import Client
from modelslab_async.emulator import Emulator, EmulatorConfig

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]
ALLOC = ROOT / "modelslab_async" / "cli" / "_alloc.py"
CANARY = "canary-key-7f3a9c51d2e8"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RECORD_KEYS = {"index", "state", "fingerprint", "job_id", "files", "error", "time"}


def _env(key: str | None = CANARY, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSLAB_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if key is not None:
        env["MODELSLAB_API_KEY"] = key
    env.update(extra)
    return env


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "modelslab_async", *args]


def _check_no_key(*outputs: bytes | str) -> None:
    for output in outputs:
        text = output.decode() if isinstance(output, bytes) else output
        assert CANARY not in text


async def run_cli(
    *args: str,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run the CLI to completion; the canary key must not appear in what it prints."""
    with anyio.fail_after(60):
        result = await anyio.run_process(
            _command(*args), cwd=cwd, env=env or _env(), input=stdin, check=False
        )
    _check_no_key(result.stdout, result.stderr)
    return result


def _prompts(directory: Path, count: int) -> Path:
    path = directory / "prompts.txt"
    lines = ["# prompts for the CLI tests", ""]
    lines += [f"a small test picture number {i}" for i in range(count)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _last_records(manifest: Path) -> dict[int, dict[str, object]]:
    last: dict[int, dict[str, object]] = {}
    for line in manifest.read_text().splitlines():
        record = json.loads(line)  # every line is a complete JSON object
        last[record["index"]] = record
    return last


def _assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(EmulatorConfig(workers=4, duration=(0.05, 0.2))) as emulator:
        yield emulator


async def test_batch_writes_decodable_pngs_and_exits_0(emu: Emulator, tmp_path: Path) -> None:
    prompts = _prompts(tmp_path, 6)
    result = await run_cli(
        "batch", str(prompts), "--out", "out", "--base-url", emu.base_url, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr.decode()
    records = _last_records(tmp_path / "out" / "manifest.jsonl")
    assert sorted(records) == list(range(6))
    for record in records.values():
        assert record["state"] == "done"
        files = record["files"]
        assert isinstance(files, list)
        assert len(files) == 1
        _assert_png(tmp_path / files[0])
    assert emu.stats.requests_by_endpoint["submit"] == 6
    assert b"done" in result.stderr  # the summary table


async def test_rerun_resumes_with_no_new_submissions(emu: Emulator, tmp_path: Path) -> None:
    prompts = _prompts(tmp_path, 5)
    args = ("batch", str(prompts), "--out", "out", "--base-url", emu.base_url)
    first = await run_cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr.decode()
    submits = emu.stats.requests_by_endpoint["submit"]
    second = await run_cli(*args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr.decode()
    assert emu.stats.requests_by_endpoint["submit"] == submits == 5
    assert emu.stats.duplicate_submissions() == 0
    assert b"Resuming from" in second.stderr


async def test_json_prints_one_manifest_record_per_item(emu: Emulator, tmp_path: Path) -> None:
    prompts = _prompts(tmp_path, 4)
    result = await run_cli(
        "batch", str(prompts), "--out", "out", "--json", "--base-url", emu.base_url, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr.decode()
    objects = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert sorted(o["index"] for o in objects) == [0, 1, 2, 3]
    manifest = _last_records(tmp_path / "out" / "manifest.jsonl")
    for obj in objects:
        assert set(obj) == RECORD_KEYS
        assert obj["state"] == "done"
        assert obj["error"] is None
        expected = manifest[obj["index"]]
        assert (obj["fingerprint"], obj["job_id"], obj["files"]) == (
            expected["fingerprint"],
            expected["job_id"],
            expected["files"],
        )


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("batch", "PROMPTS", "--out", "out", "--width", "5000"), "width"),
        (("generate", "a fox", "--guidance-scale", "50"), "guidance_scale"),
        (("batch", "PROMPTS", "--out", "out", "--set", "samples=9"), "samples"),
    ],
)
async def test_a_bad_option_value_exits_2_naming_the_field(
    emu: Emulator, tmp_path: Path, args: Sequence[str], field: str
) -> None:
    prompts = str(_prompts(tmp_path, 2))
    argv = [prompts if a == "PROMPTS" else a for a in args]
    result = await run_cli(*argv, "--base-url", emu.base_url, cwd=tmp_path)
    assert result.returncode == 2
    assert f"{field}: got" in result.stderr.decode()
    assert sum(emu.stats.requests_by_endpoint.values()) == 0  # nothing was sent


async def test_jsonl_from_stdin_fails_bad_lines_without_stopping(
    emu: Emulator, tmp_path: Path
) -> None:
    lines = [
        json.dumps({"prompt": "a blue square", "width": "256", "height": 256}),
        "not json at all",
        json.dumps({"prompt": "a green circle", "samples": 2, "enhance_prompt": "yes"}),
        json.dumps({"width": 64}),
    ]
    result = await run_cli(
        "batch", "-", "--out", "out", "--json", "--base-url", emu.base_url,
        cwd=tmp_path,
        stdin=("\n".join(lines) + "\n").encode(),
    )  # fmt: skip
    assert result.returncode == 1, result.stderr.decode()
    by_index = {o["index"]: o for o in map(json.loads, result.stdout.decode().splitlines())}
    assert [by_index[i]["state"] for i in range(4)] == ["done", "failed", "done", "failed"]
    assert by_index[1]["error"]["type"] == "RequestValidationError"
    assert "line 2" in by_index[1]["error"]["message"]
    assert by_index[3]["error"]["message"].startswith("prompt:")
    assert len(by_index[2]["files"]) == 2
    with Image.open(tmp_path / by_index[0]["files"][0]) as image:
        assert image.size == (256, 256)


async def test_sigint_stops_cleanly_and_a_rerun_completes_without_duplicates(
    tmp_path: Path,
) -> None:
    # Submits answered only when the image is ready (sync answers): a Ctrl-C lands while
    # jobs exist on the server whose submit has not been answered yet.
    config = EmulatorConfig(workers=2, duration=(0.25, 0.4), sync_threshold=5.0)
    prompts = _prompts(tmp_path, 16)
    manifest = tmp_path / "out" / "manifest.jsonl"
    async with Emulator(config) as emu:
        argv = _command(
            "batch", str(prompts), "--out", "out", "-c", "4", "--base-url", emu.base_url
        )
        with anyio.fail_after(30):
            async with await anyio.open_process(argv, cwd=tmp_path, env=_env()) as process:
                # the manifest is written by another process: poll it
                while sum(r["state"] == "done" for r in _safe_records(manifest)) < 3:  # noqa: ASYNC110
                    await anyio.sleep(0.05)
                process.send_signal(signal.SIGINT)
                code = await process.wait()
                assert process.stderr is not None
                stderr = b"".join([chunk async for chunk in process.stderr])
        _check_no_key(stderr)
        assert code == 130, stderr.decode()
        assert b"interrupted" in stderr
        records = _last_records(manifest)  # every line parses
        assert any(r["state"] != "done" for r in records.values()) or len(records) < 16
        rerun = await run_cli(
            "batch", str(prompts), "--out", "out", "-c", "4", "--json", "--base-url", emu.base_url,
            cwd=tmp_path,
        )  # fmt: skip
        assert rerun.returncode == 0, rerun.stderr.decode()
        done = [json.loads(line) for line in rerun.stdout.decode().splitlines()]
        assert sorted(o["index"] for o in done if o["state"] == "done") == list(range(16))
        assert emu.stats.duplicate_submissions() == 0
        assert emu.stats.total_jobs == 16


def _safe_records(manifest: Path) -> list[dict[str, object]]:
    try:
        text = manifest.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.endswith("}")]


async def test_a_rejected_key_exits_2_and_is_never_printed(tmp_path: Path) -> None:
    prompts = _prompts(tmp_path, 3)
    async with Emulator(EmulatorConfig(keys=frozenset({"another-key"}))) as emu:
        batch = await run_cli(
            "batch", str(prompts), "--out", "out", "--base-url", emu.base_url, cwd=tmp_path
        )
        generate = await run_cli("generate", "a fox", "--base-url", emu.base_url, cwd=tmp_path)
    for result in (batch, generate):
        assert result.returncode == 2
        assert b"AuthenticationError" in result.stderr


async def test_without_a_key_it_runs_local_and_says_so_in_one_line(tmp_path: Path) -> None:
    result = await run_cli(
        "generate", "a red fox in snow", "--out", "out", "--samples", "2",
        cwd=tmp_path,
        env=_env(key=None),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    notice = [line for line in result.stderr.decode().splitlines() if "--local" in line]
    assert len(notice) == 1
    assert "MODELSLAB_API_KEY" in notice[0]
    paths = result.stdout.decode().split()
    assert len(paths) == 2
    for path in paths:
        _assert_png(tmp_path / path)


async def test_fetch_downloads_a_job_started_elsewhere(emu: Emulator, tmp_path: Path) -> None:
    async with Client(CANARY, base_url=emu.base_url) as client:
        job = await client.submit(prompt="a job started by another program")
    result = await run_cli(
        "fetch", str(job.id), "--out", "got", "--base-url", emu.base_url, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr.decode()
    [path] = result.stdout.decode().split()
    assert Path(path).parent.name == "got"
    _assert_png(tmp_path / path)
    assert emu.stats.requests_by_endpoint["submit"] == 1


async def test_emulator_command_serves_until_ctrl_c(tmp_path: Path) -> None:
    argv = _command("emulator", "--port", "0", "--workers", "2")
    with anyio.fail_after(20):
        async with await anyio.open_process(argv, cwd=tmp_path, env=_env()) as process:
            assert process.stdout is not None
            printed = b""
            while b"\n" not in printed:
                printed += await process.stdout.receive()
            assert "base URL http://127.0.0.1:" in printed.decode()
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 130


async def test_a_missing_cli_extra_is_explained(tmp_path: Path) -> None:
    code = (
        "import runpy, sys; sys.modules['click'] = None; "
        "runpy.run_module('modelslab_async', run_name='__main__')"
    )
    result = await anyio.run_process(
        [sys.executable, "-c", code], cwd=tmp_path, env=_env(), check=False
    )
    assert result.returncode == 2
    assert b"pip install 'modelslab-async[cli]'" in result.stderr


async def test_a_directory_as_prompts_exits_2(emu: Emulator, tmp_path: Path) -> None:
    result = await run_cli(
        "batch", str(tmp_path), "--out", "out", "--base-url", emu.base_url, cwd=tmp_path
    )
    assert result.returncode == 2
    assert b"is a directory" in result.stderr
    assert b"Traceback" not in result.stderr


# --- input that cannot be read: one failed item per line, never a traceback ----------------


async def _batch_json(
    emu: Emulator, tmp_path: Path, prompts: Path, *extra: str
) -> tuple[subprocess.CompletedProcess[bytes], dict[int, dict[str, Any]]]:
    result = await run_cli(
        "batch", str(prompts), "--out", "out", "--json", "--base-url", emu.base_url, *extra,
        cwd=tmp_path,
    )  # fmt: skip
    assert b"Traceback" not in result.stderr, result.stderr.decode()
    records = {o["index"]: o for o in map(json.loads, result.stdout.decode().splitlines())}
    return result, records


async def test_an_undecodable_line_fails_as_its_own_item(emu: Emulator, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"\xef\xbb\xbfa fine prompt\n\xff\xfe not utf-8\nanother fine prompt\n")
    result, records = await _batch_json(emu, tmp_path, prompts)
    assert result.returncode == 1
    assert [records[i]["state"] for i in range(3)] == ["done", "failed", "done"]
    message = records[1]["error"]["message"]
    assert "line 2" in message
    assert "0xff" in message
    assert "UTF-8" in message
    assert emu.stats.requests_by_endpoint["submit"] == 2


def _nested_json(depth: int) -> str:
    return "[" * depth + "]" * depth


async def test_deeply_nested_jsonl_lines_fail_as_their_own_items(
    emu: Emulator, tmp_path: Path
) -> None:
    prompts = tmp_path / "requests.jsonl"
    lines = [
        json.dumps({"prompt": "a fine prompt"}),
        _nested_json(100_000),  # json.loads raises RecursionError
        '{"prompt": "x", "lora": ' + _nested_json(900) + "}",  # parses; too deep to send
        '{"prompt": ' + _nested_json(900) + "}",
        json.dumps({"prompt": "another fine prompt"}),
    ]
    prompts.write_text("\n".join(lines) + "\n")
    result, records = await _batch_json(emu, tmp_path, prompts)
    assert result.returncode == 1
    assert [records[i]["state"] for i in range(5)] == ["done", *["failed"] * 3, "done"]
    assert "line 2" in records[1]["error"]["message"]
    assert "nested" in records[1]["error"]["message"]
    assert records[2]["error"]["message"].startswith("extra['lora']:")
    assert records[3]["error"]["message"].startswith("prompt:")
    assert emu.stats.requests_by_endpoint["submit"] == 2


async def test_a_300_mib_line_fails_as_its_own_item_without_being_held(
    emu: Emulator, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.txt"
    with prompts.open("wb") as f:
        f.write(b"a fine prompt\n")
        chunk = b"x" * (1 << 20)
        for _ in range(300):
            f.write(chunk)
        f.write(b"\nanother fine prompt\n")
    # The command in this interpreter, which prints its peak RSS at exit: VmHWM, the peak of
    # its own memory map (ru_maxrss would start at the forking test process's own peak).
    code = (
        "import atexit, runpy, sys; "
        "atexit.register(lambda: print('maxrss', open('/proc/self/status').read()"
        ".split('VmHWM:')[1].split()[0], file=sys.stderr)); "
        f"sys.argv = ['modelslab-async', 'batch', {str(prompts)!r}, '--out', 'out', '--json', "
        f"'--base-url', {emu.base_url!r}]; "
        "runpy.run_module('modelslab_async', run_name='__main__')"
    )
    with anyio.fail_after(60):
        result = await anyio.run_process(
            [sys.executable, "-c", code], cwd=tmp_path, env=_env(), check=False
        )
    _check_no_key(result.stdout, result.stderr)
    assert b"Traceback" not in result.stderr
    assert result.returncode == 1
    records = {o["index"]: o for o in map(json.loads, result.stdout.decode().splitlines())}
    assert [records[i]["state"] for i in range(3)] == ["done", "failed", "done"]
    assert "line 2" in records[1]["error"]["message"]
    assert "1,048,576 bytes" in records[1]["error"]["message"]
    [maxrss_kib] = [int(line.split()[1]) for line in result.stderr.decode().splitlines()
                    if line.startswith("maxrss ")]  # fmt: skip
    assert maxrss_kib < 150 * 1024  # the line (300 MiB) was never held whole


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b'{"index": 0, "state": "done"}\n\xff\xfe\n', b"is not UTF-8 text"),
        (_nested_json(100_000).encode() + b"\n", b"nested too deeply"),
    ],
    ids=["undecodable", "nested"],
)
async def test_a_manifest_that_cannot_be_read_exits_2_naming_it(
    emu: Emulator, tmp_path: Path, content: bytes, says: bytes
) -> None:
    prompts = _prompts(tmp_path, 2)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "manifest.jsonl").write_bytes(content)
    result = await run_cli(
        "batch", str(prompts), "--out", "out", "--base-url", emu.base_url, cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr.decode()
    assert b"Traceback" not in result.stderr
    assert says in result.stderr
    assert b"manifest.jsonl" in result.stderr
    assert emu.stats.requests_by_endpoint["submit"] == 0


# --- --input-format (and its old name --format) ---------------------------------------------


@pytest.mark.parametrize("option", ["--input-format", "--format"])
async def test_input_format_text_reads_a_brace_line_as_a_prompt(
    emu: Emulator, tmp_path: Path, option: str
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("{curly} braces in a prompt\n")
    result, records = await _batch_json(emu, tmp_path, prompts, option, "text")
    assert result.returncode == 0, result.stderr.decode()
    assert records[0]["state"] == "done"


@pytest.mark.parametrize("how", ["option", "suffix"])
async def test_csv_input_needs_the_datasets_module(emu: Emulator, tmp_path: Path, how: str) -> None:
    prompts = tmp_path / ("prompts.csv" if how == "suffix" else "prompts.txt")
    prompts.write_text("prompt,seed\na red fox,1\n")
    extra = ("--input-format", "csv") if how == "option" else ()
    result, records = await _batch_json(emu, tmp_path, prompts, *extra)
    if importlib.util.find_spec("modelslab_async.datasets") is None:
        assert result.returncode == 2
        assert b"modelslab_async.datasets" in result.stderr
        assert emu.stats.requests_by_endpoint["submit"] == 0
    else:  # read by modelslab_async.datasets.read_rows
        assert result.returncode == 0, result.stderr.decode()
        assert records[0]["state"] == "done"


async def test_csv_input_from_stdin_exits_2(emu: Emulator, tmp_path: Path) -> None:
    result = await run_cli(
        "batch", "-", "--out", "out", "--input-format", "csv", "--base-url", emu.base_url,
        cwd=tmp_path,
        stdin=b"prompt\na red fox\n",
    )  # fmt: skip
    assert result.returncode == 2
    assert b"standard input" in result.stderr


# --- the package, its entry points and the allocator -----------------------------------------


def test_the_console_script_is_the_cli_packages_main() -> None:
    from modelslab_async.cli import main

    [script] = [
        ep
        for ep in importlib.metadata.entry_points(group="console_scripts")
        if ep.name == "modelslab-async"
    ]
    assert script.value == "modelslab_async.cli:main"
    assert script.load() is main


def test_exit_codes_are_those_of_the_docs() -> None:
    from modelslab_async.cli import _run

    codes = (_run.EXIT_OK, _run.EXIT_FAILED, _run.EXIT_USAGE, _run.EXIT_CREDITS)
    assert codes == (0, 1, 2, 3)
    assert _run.EXIT_INTERRUPTED == 130


def test_there_is_an_option_for_every_request_field() -> None:
    from click.testing import CliRunner

    from modelslab_async._types import REQUEST_FIELDS
    from modelslab_async.cli import cli

    for command in ("generate", "batch"):
        shown = CliRunner().invoke(cli, [command, "--help"], terminal_width=200).output
        for field in REQUEST_FIELDS:
            if field.name != "prompt":
                assert "--" + field.name.replace("_", "-") in shown, (command, field.name)
    assert "--steps" in shown


def test_the_options_give_the_request_fields_as_typed_values() -> None:
    import click
    from click.testing import CliRunner

    from modelslab_async.cli._options import request_fields, request_options, validated

    seen: dict[str, Any] = {}

    @click.command()
    @request_options
    def command(set_fields: tuple[str, ...], **options: Any) -> None:
        seen.update(request_fields(options, set_fields))

    argv = [
        "--steps", "31", "--no-safety-checker", "--seed", "5", "--guidance-scale", "3.5",
        "--safety-checker-type", "blur", "--track-id", "t-1", "--set", "width=768",
        "--set", "enhance_prompt=yes", "--set", "lora_strength=0.5",
    ]  # fmt: skip
    result = CliRunner().invoke(command, argv)
    assert result.exit_code == 0, result.output
    assert seen == {
        "num_inference_steps": 31,
        "safety_checker": False,
        "seed": 5,
        "guidance_scale": 3.5,
        "safety_checker_type": "blur",
        "track_id": "t-1",
        "width": "768",  # --set: read by the converter
        "enhance_prompt": "yes",
        "lora_strength": 0.5,
    }
    request = validated({**seen, "prompt": "x"})
    assert (request.num_inference_steps, request.width, request.safety_checker) == (31, 768, False)
    assert dict(request.extra) == {"enhance_prompt": "yes", "lora_strength": 0.5}


_HEAP_PROBE = """
import ctypes, importlib.util, sys
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.sbrk.restype = ctypes.c_void_p

def read_buffer_from_heap():
    # The allocation asyncio's selector transport makes for every recv (256 KiB + header).
    # Not freed: freeing an mmapped block would itself move the threshold.
    return libc.malloc(256 * 1024 + 33) < libc.sbrk(0)

spec = importlib.util.spec_from_file_location("_alloc", sys.argv[1])
alloc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(alloc)
before = read_buffer_from_heap()
alloc.settle_allocator()
alloc.settle_allocator()  # once per process: the second call does nothing
print(before, read_buffer_from_heap())
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not os.confstr("CS_GNU_LIBC_VERSION"),
    reason="glibc's dynamic mmap threshold",
)
def test_settle_allocator_moves_socket_read_buffers_off_mmap() -> None:
    # A bare interpreter (the module alone, no package imports) serves a 256 KiB read
    # buffer with mmap; after settle_allocator, from the heap.
    out = subprocess.run(
        [sys.executable, "-I", "-c", _HEAP_PROBE, str(ALLOC)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["False", "True"]


_WHO_SETTLES = """
import sys, anyio
from modelslab_async import Client

async def use_a_client():
    async with Client("k", base_url="http://127.0.0.1:1"):
        pass

anyio.run(use_a_client)
print("library", "modelslab_async.cli._alloc" in sys.modules)
from modelslab_async.cli import _alloc, main
sys.argv = ["modelslab-async", "--version"]
try:
    main()
except SystemExit:
    pass
print("cli", _alloc._allocator_settled)
"""


def test_only_the_command_line_settles_the_allocator() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _WHO_SETTLES], capture_output=True, text=True, env=_env()
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "library False" in lines
    assert "cli True" in lines
