"""The JSONL manifest: reading back after a crash, last record wins, group-committed fsynced
appends, and no key in it."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from modelslab_async import (
    APIError,
    GenerationFailed,
    ModelsLabError,
    RequestValidationError,
)
from modelslab_async._manifest import (
    Manifest,
    ManifestRecord,
    error_from_record,
    error_record,
    load_state,
    read_records,
)
from modelslab_async._redact import register_secret, unregister_secret

CANARY = "canary-key-manifest-9b41e07d3c"


@pytest.fixture
def secret() -> Iterator[str]:
    """The canary key, registered as a client's key is."""
    register_secret(CANARY)
    try:
        yield CANARY
    finally:
        unregister_secret(CANARY)


def record(index: int, state: Any = "submitted", **fields: Any) -> ManifestRecord:
    fields.setdefault("fingerprint", f"fp{index}")
    fields.setdefault("job_id", 10_000_000 + index)
    fields.setdefault("time", 1764000000.25)
    return ManifestRecord(index=index, state=state, **fields)


def line(rec: ManifestRecord) -> str:
    return json.dumps(rec.to_json()) + "\n"


async def append_all(path: Path, *records: ManifestRecord) -> Manifest:
    manifest = await Manifest(path).open()
    try:
        for rec in records:
            await manifest.append(rec)
    finally:
        await manifest.close()
    return manifest


# --- reading back ---------------------------------------------------------------------------


def test_a_missing_manifest_is_an_empty_state(tmp_path: Path) -> None:
    assert load_state(tmp_path / "none.jsonl") == {}
    assert list(read_records(tmp_path / "none.jsonl")) == []


def test_a_torn_last_line_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    done = record(1, "done", files=("out/1-0.png",))
    torn = line(record(2))[:25]  # the crash cut the last write short
    path.write_text(line(record(0)) + line(done) + torn)
    assert [r.index for r in read_records(path)] == [0, 1]
    assert load_state(path) == {0: record(0), 1: done}


def test_lines_that_are_not_records_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    path.write_text(
        "\n"
        + line(record(0))
        + "not json\n"
        + json.dumps({"index": 1, "state": "exploded"})
        + "\n"
        + json.dumps({"state": "done"})  # no index
        + "\n"
        + json.dumps({"index": "x", "state": "done"})
        + "\n"
        + "   \n"
        + line(record(3, "done"))
    )
    assert [(r.index, r.state) for r in read_records(path)] == [(0, "submitted"), (3, "done")]


def test_the_last_record_of_an_index_wins(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    records = [
        record(0),
        record(1),
        record(0, "done", files=("out/a.png",)),
        record(1, "failed", error={"type": "GenerationFailed", "message": "m"}),
        record(1, attempt=1, job_id=10_000_009),
    ]
    path.write_text("".join(line(r) for r in records))
    state = load_state(path)
    assert state[0].state == "done"
    assert state[0].files == ("out/a.png",)
    assert state[1].state == "submitted"
    assert state[1].attempt == 1
    assert state[1].job_id == 10_000_009


def test_a_record_round_trips_through_json() -> None:
    rec = record(
        7,
        "failed",
        files=("out/x-0.png", "out/x-1.png"),
        error={"type": "ServerError", "message": "boom"},
        attempt=2,
        track_id="mla-abc-7-r2",
        time=1764000000.123456,
    )
    data = json.loads(json.dumps(rec.to_json()))
    assert set(data) == {
        "index",
        "state",
        "fingerprint",
        "job_id",
        "files",
        "error",
        "time",
        "attempt",
        "track_id",
    }
    assert ManifestRecord.from_json(data) == rec


# --- appending ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_appended_records_are_read_back_by_the_next_run(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "run.jsonl"  # parents are created
    written = [record(0), record(1), record(0, "done", files=("out/0.png",))]
    await append_all(path, *written)
    manifest = await Manifest(path).open()
    await manifest.close()
    assert manifest.previous == {0: written[2], 1: written[1]}


@pytest.mark.anyio
async def test_an_append_after_a_torn_line_starts_on_a_line_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    path.write_text(line(record(0)) + line(record(1))[:30])
    manifest = await append_all(path, record(2, "done"))
    assert set(manifest.previous) == {0}
    assert [r.index for r in read_records(path)] == [0, 2]
    assert len(path.read_text().splitlines()) == 3  # the torn line stays, on its own


@pytest.mark.anyio
async def test_group_commit_writes_every_record_and_returns_once_it_is_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "run.jsonl"
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    n = 50
    manifest = await Manifest(path).open()
    on_disk_at_return: list[bool] = []

    async def writer(i: int) -> None:
        await manifest.append(record(i))
        text = await anyio.Path(path).read_text()
        on_disk_at_return.append(f'"index":{i},' in text)

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(writer, i)
    fd = manifest._handle.fileno()
    await manifest.close()
    assert on_disk_at_return == [True] * n
    assert sorted(r.index for r in read_records(path)) == list(range(n))
    assert manifest.written == n
    assert 1 <= len(synced) < n  # fsynced, in groups rather than once per record
    assert set(synced) == {fd}


@pytest.mark.anyio
async def test_each_append_is_fsynced_before_it_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "run.jsonl"
    synced: list[tuple[int, int]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append((os.fstat(fd).st_ino, os.fstat(fd).st_size))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    manifest = await Manifest(path).open()
    try:
        await manifest.append(record(0))
        assert synced == [(path.stat().st_ino, path.stat().st_size)]
        await manifest.append(record(1))
        assert len(synced) == 2
        assert synced[-1] == (path.stat().st_ino, path.stat().st_size)
    finally:
        await manifest.close()


@pytest.mark.anyio
async def test_an_append_completes_even_when_its_caller_is_cancelled(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    manifest = await Manifest(path).open()
    with anyio.CancelScope() as scope:
        scope.cancel()
        await manifest.append(record(0, "done"))
    await manifest.close()
    assert [r.index for r in read_records(path)] == [0]


@pytest.mark.anyio
async def test_a_failed_write_fails_every_append_it_carried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record that is not on disk must not look written: each caller whose line was in
    the failed group gets the error, and so does any later append."""

    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)
    manifest = await Manifest(tmp_path / "run.jsonl").open()
    outcomes: dict[int, str] = {}

    async def writer(i: int) -> None:
        try:
            await manifest.append(record(i))
        except OSError as exc:
            outcomes[i] = errno.errorcode.get(exc.errno or 0, "?")
        else:
            outcomes[i] = "ok"

    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(writer, i)
    await writer(5)
    await manifest.close()
    assert outcomes == dict.fromkeys(range(6), "ENOSPC")


@pytest.mark.anyio
async def test_append_needs_an_open_manifest(tmp_path: Path) -> None:
    manifest = Manifest(tmp_path / "run.jsonl")
    with pytest.raises(RuntimeError):
        await manifest.append(record(0))
    await manifest.open()
    await manifest.close()
    with pytest.raises(RuntimeError):
        await manifest.append(record(0))


# --- no key ---------------------------------------------------------------------------------


def test_error_record_names_the_class_and_redacts_the_key(secret: str) -> None:
    error = APIError(f"API error: bad key {secret}", job_id=10_000_001)
    info = error_record(error)
    assert info["type"] == "APIError"
    assert secret not in info["message"]
    assert "***" in info["message"]
    assert info["job_id"] == "10000001"
    failed = error_record(GenerationFailed(10_000_002, "Failed, Try Again", transient=True))
    assert failed == {
        "type": "GenerationFailed",
        "message": "job 10000002 failed: Failed, Try Again",
        "job_id": "10000002",
    }
    invalid = error_record(RequestValidationError("width", 5000, "1..1024"))
    assert invalid["type"] == "RequestValidationError"
    assert "job_id" not in invalid


@pytest.mark.anyio
async def test_the_key_never_reaches_the_file(tmp_path: Path, secret: str) -> None:
    path = tmp_path / "run.jsonl"
    leaky = record(
        0,
        "failed",
        error={"type": "APIError", "message": f"echoed {secret}"},  # not via error_record
        track_id=f"user-track-{secret}",
    )
    await append_all(path, leaky, record(1, "failed", error=error_record(APIError(secret))))
    text = path.read_text()
    assert secret not in text
    assert [r.index for r in read_records(path)] == [0, 1]


@pytest.mark.anyio
async def test_a_short_key_does_not_corrupt_the_records(tmp_path: Path) -> None:
    """Masking works on the values that can hold free text, not on the JSON line: a key
    such as ``"1"`` must not turn numbers, names and paths into ``***``."""
    path = tmp_path / "run.jsonl"
    done = record(1, "done", job_id=10_000_001, files=("out/10000001-0.png",), time=1.5)
    register_secret("1")
    try:
        await append_all(path, done)
    finally:
        unregister_secret("1")
    assert load_state(path) == {1: done}


def test_error_from_record_rebuilds_the_class_message_and_job_id() -> None:
    failed = record(
        3,
        "failed",
        job_id=10_000_003,
        error={"type": "GenerationFailed", "message": "job 10000003 failed: Failed, Try Again"},
    )
    error = error_from_record(failed)
    assert isinstance(error, GenerationFailed)
    assert str(error) == "job 10000003 failed: Failed, Try Again"
    assert error.job_id == 10_000_003
    unknown = error_from_record(record(4, "failed", error={"type": "ValueError"}))
    assert type(unknown) is ModelsLabError  # only SDK error classes are rebuilt
    assert str(unknown) == "failed in a previous run"


# --- one run per manifest ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_second_open_is_refused_naming_the_holder_pid(tmp_path: Path) -> None:
    from modelslab_async import ConfigurationError, ManifestLockedError

    path = tmp_path / "run.jsonl"
    first = await Manifest(path).open()
    try:
        with pytest.raises(ManifestLockedError) as info:
            await Manifest(path).open()
    finally:
        await first.close()
    error = info.value
    assert isinstance(error, ConfigurationError)  # the CLI's exit code 2
    assert error.pid == os.getpid()
    assert f"process {os.getpid()}" in str(error)
    assert str(path) in str(error)


@pytest.mark.anyio
async def test_closing_releases_the_lock_and_removes_the_lock_file(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    manifest = await Manifest(path).open()
    assert manifest.locked
    assert manifest.lock_path.read_text().strip() == str(os.getpid())
    await manifest.close()
    assert not manifest.locked
    assert not manifest.lock_path.exists()
    again = await Manifest(path).open()
    await again.close()


_HOLD_THE_MANIFEST = """
import sys, anyio
from modelslab_async._manifest import Manifest

async def main():
    await Manifest(sys.argv[1]).open()
    print("locked", flush=True)
    await anyio.sleep_forever()

anyio.run(main)
"""


@pytest.mark.anyio
async def test_the_lock_of_a_killed_run_is_released_by_the_os(tmp_path: Path) -> None:
    import signal
    import sys

    from modelslab_async import ManifestLockedError

    path = tmp_path / "run.jsonl"
    async with await anyio.open_process([sys.executable, "-c", _HOLD_THE_MANIFEST, path]) as holder:
        try:
            assert holder.stdout is not None
            said = b""
            while not said.endswith(b"\n"):
                said += await holder.stdout.receive()
            assert said == b"locked\n"
            with pytest.raises(ManifestLockedError) as info:
                await Manifest(path).open()
            assert info.value.pid == holder.pid
        finally:
            holder.send_signal(signal.SIGKILL)
            await holder.wait()
    # The lock file stays (nobody closed it), but its lock went with the process.
    manifest = await Manifest(path).open()
    await manifest.close()


@pytest.mark.anyio
async def test_two_runs_on_one_folder_create_each_job_once(tmp_path: Path) -> None:
    from modelslab_async import Client, ManifestLockedError
    from modelslab_async.emulator import Emulator, EmulatorConfig

    prompts = [f"prompt {i}" for i in range(20)]
    outcomes: list[Any] = []

    async def run(client: Client) -> None:
        try:
            outcomes.append(
                [
                    r
                    async for r in client.generate_many(
                        prompts, dest=tmp_path / "out", manifest=tmp_path / "out/manifest.jsonl"
                    )
                ]
            )
        except ManifestLockedError as exc:
            outcomes.append(exc)

    config = EmulatorConfig(workers=4, duration=(0.05, 0.1))
    async with (
        Emulator(config) as emu,
        Client("two-runs-key-3b9e", base_url=emu.base_url) as one,
        Client("two-runs-key-3b9e", base_url=emu.base_url) as two,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(run, one)
        tg.start_soon(run, two)
    refused = [o for o in outcomes if isinstance(o, ManifestLockedError)]
    finished = [o for o in outcomes if isinstance(o, list)]
    assert len(refused) == 1
    assert refused[0].pid == os.getpid()
    [results] = finished
    assert sorted(r.index for r in results if r.ok) == list(range(20))
    assert emu.stats.requests_by_endpoint["submit"] == 20
    done = [r for r in read_records(tmp_path / "out/manifest.jsonl") if r.state == "done"]
    assert len(done) == 20


@pytest.mark.anyio
async def test_the_cli_refuses_a_second_run_on_a_folder_with_exit_2(tmp_path: Path) -> None:
    import sys

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\na grey wolf\n")
    out = tmp_path / "out"
    held = await Manifest(out / "manifest.jsonl").open()
    try:
        with anyio.fail_after(120):
            done = await anyio.run_process(
                [
                    sys.executable,
                    "-m",
                    "modelslab_async",
                    "batch",
                    prompts,
                    "--out",
                    out,
                    "--local",
                ],
                check=False,
                env={k: v for k, v in os.environ.items() if k != "MODELSLAB_API_KEY"},
            )
    finally:
        await held.close()
    stderr = done.stderr.decode()
    assert done.returncode == 2, stderr
    assert f"process {os.getpid()}" in stderr
    assert "Traceback" not in stderr
    # Nothing written by the refused run (the manifest is the one this test opened).
    assert [p.name for p in out.iterdir()] == ["manifest.jsonl"]
    assert (out / "manifest.jsonl").read_bytes() == b""


@pytest.mark.parametrize(
    "error",
    [
        GenerationFailed(7, "m" * (5 * 2**20)),
        OSError(5, "e" * (5 * 2**20)),
        ValueError("v" * (5 * 2**20)),
    ],
    ids=["api-message", "os-error", "any-error"],
)
def test_a_huge_error_message_is_cut_in_its_record(error: BaseException) -> None:
    info = error_record(error)
    assert len(info["message"]) <= 4000
    assert "characters in all" in info["message"]
