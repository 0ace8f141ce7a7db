"""Fault soak: 1,000 jobs through ``generate_many`` with every emulator fault on at once.

5 % 5xx and 2 % connection resets on submit, fetch and download, 3 % truncated downloads,
5 % of jobs with links late by 3 s, 2 % of jobs failing, 429 beyond 32 concurrent API
requests. Every item must resolve exactly once (done, or failed with a specific error class
that names its job id where there is one), nothing may be submitted twice, every file on
disk must be a complete image, and memory must stay flat.

Run with ``pytest -s`` to see the figures; with ``MODELSLAB_SOAK_RESULTS=benchmarks/results/
soak.json`` they are also merged into that file (otherwise the tests write only under
temporary folders).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

from modelslab_async import (
    AmbiguousSubmitError,
    BatchResult,
    Client,
    ModelsLabError,
    ServerError,
)

from ._soak import (
    JOBS,
    ROOT,
    check_failures,
    counts,
    disk_problems,
    emulator_process,
    image_problem,
    memory_growth,
    record,
    requests,
    samples_of,
    write_jsonl,
)

pytestmark = pytest.mark.anyio

KEY = "soak-key-0c1d2e3f"
MAX_RSS_GROWTH_MB = 30.0


async def test_soak_1000_jobs_under_every_fault(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    manifest = tmp_path / "run.jsonl"
    process = psutil.Process()
    rss: list[tuple[float, int]] = []
    results: list[BatchResult] = []

    async def sample_memory() -> None:
        while True:
            rss.append((time.monotonic(), process.memory_info().rss))
            await anyio.sleep(0.05)

    started = time.monotonic()
    async with emulator_process(seed=20240611) as emu:
        async with (
            Client(KEY, base_url=emu.base_url, max_in_flight=64) as client,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(sample_memory)
            with anyio.fail_after(240):
                async for result in client.generate_many(requests(), dest=dest, manifest=manifest):
                    results.append(result)
            tg.cancel_scope.cancel()
            calls = dict(client.statistics().calls)
        stats = await emu.stats()
    elapsed = time.monotonic() - started

    # Every index resolved exactly once: nothing lost, nothing twice.
    seen = Counter(r.index for r in results)
    assert sorted(seen) == list(range(JOBS)), "lost items"
    assert [i for i, n in seen.items() if n > 1] == [], "items resolved twice"

    done = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    # Failed items: a specific error class naming the job id where one exists.
    failures = {}
    for r in failed:
        assert isinstance(r.error, ModelsLabError)
        job_id = r.job_id if r.job_id not in (None, "") else getattr(r.error, "job_id", None)
        failures[r.index] = (type(r.error).__name__, str(r.error), job_id)
    assert check_failures(failures) == []
    # A submit cut off after the server accepted it fails as ambiguous (not resubmitted):
    # one AmbiguousSubmitError per reset served on submit.
    ambiguous = sum(isinstance(r.error, AmbiguousSubmitError) for r in failed)
    assert ambiguous == stats["faults_served"].get("submit.reset", 0)
    server_errors = sum(isinstance(r.error, ServerError) for r in failed)
    assert server_errors <= stats["faults_served"].get("submit.http_5xx", 0)

    # No fingerprint was submitted twice.
    assert stats["duplicate_submissions"] == 0

    # Done items: all their images, complete, on disk; nothing else there.
    expected_files: set[Path] = set()
    for r in done:
        assert len(r.files) == samples_of(r.index)
        assert r.job_id is not None
        job = stats["jobs"][str(r.job_id)]
        assert not job["failed"]
        assert sorted(job["downloads"]) == [str(n) for n in range(samples_of(r.index))]
        expected_files.update(r.files)
    assert disk_problems(dest, expected_files) == []

    # The manifest agrees with what was yielded.
    records = _records(manifest)
    last = {entry["index"]: entry for entry in records}
    assert sorted(last) == list(range(JOBS))
    for r in results:
        assert last[r.index]["state"] == ("done" if r.ok else "failed")
        assert last[r.index]["job_id"] == r.job_id
    # No job is lost: each one the server made is known by id, except one per submit whose
    # answer was cut off (reported as ambiguous).
    assert len(_unknown_jobs(stats, records)) == ambiguous

    # Memory flat: the last quarter of the run peaks at most 30 MB above the first.
    first_mb, last_mb = memory_growth(rss)
    figures = {
        "jobs": JOBS,
        "seconds": round(elapsed, 1),
        "done": len(done),
        "failed": len(failed),
        "failed_by_class": counts(kind for kind, _, _ in failures.values()),
        "duplicate_submissions": stats["duplicate_submissions"],
        "faults_served": dict(sorted(stats["faults_served"].items())),
        "rate_limited_429": stats["rate_limited"],
        "peak_concurrent_requests": stats["peak_concurrent_requests"],
        "emulator_jobs": stats["total_jobs"],
        "emulator_jobs_failed": sum(j["failed"] for j in stats["jobs"].values()),
        "requests_by_endpoint": dict(sorted(stats["requests_by_endpoint"].items())),
        "client_calls": calls,
        "files": len(expected_files),
        "rss_first_quarter_max_mb": round(first_mb, 1),
        "rss_last_quarter_max_mb": round(last_mb, 1),
        "rss_samples": len(rss),
    }
    record("generate_many", figures)
    assert last_mb - first_mb <= MAX_RSS_GROWTH_MB, figures
    assert stats["rate_limited"] > 0, "the 429 limit was never reached: the soak is too gentle"


# --- the same soak through the CLI, killed twice -------------------------------------------


def _records(manifest: Path) -> list[dict[str, Any]]:
    """The manifest's complete records (a SIGKILL may have torn the last line)."""
    records = []
    for line in manifest.read_text().splitlines():
        with contextlib.suppress(ValueError):
            records.append(json.loads(line))
    return records


def _unknown_jobs(stats: dict[str, Any], records: list[dict[str, Any]]) -> set[str]:
    """Jobs the emulator created whose id no manifest record holds."""
    known = {str(r["job_id"]) for r in records if r["job_id"] is not None}
    return set(stats["jobs"]) - known


def _manifest_lines(path: Path) -> int:
    try:
        with path.open("rb") as handle:
            return sum(1 for _ in handle)
    except FileNotFoundError:
        return 0


def _final_files_problems(dest: Path) -> list[str]:
    """Files under a final name that are not complete images (right after a SIGKILL)."""
    if not dest.is_dir():
        return []
    problems = []
    for path in sorted(dest.glob("*.png")):
        problem = image_problem(path)
        if problem is not None:
            problems.append(problem)
    return problems


async def test_cli_soak_killed_twice_with_sigkill_then_rerun(tmp_path: Path) -> None:
    rng = random.Random(8)
    prompts = write_jsonl(tmp_path / "prompts.jsonl")
    dest = tmp_path / "out"
    manifest = tmp_path / "manifest.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSLAB_")}
    env["PYTHONPATH"] = str(ROOT)
    env["MODELSLAB_API_KEY"] = KEY
    kills: list[dict[str, object]] = []
    started = time.monotonic()
    async with emulator_process(seed=31337) as emu:
        command = [
            sys.executable,
            "-m",
            "modelslab_async",
            "batch",
            str(prompts),
            "--out",
            str(dest),
            "--manifest",
            str(manifest),
            "--base-url",
            emu.base_url,
            "--concurrency",
            "64",
            "--json",
        ]
        for run in range(2):
            # Kill after a seeded number of manifest records of this run, plus a seeded
            # fraction of a second: anywhere in the submit / poll / download pipeline.
            before = _manifest_lines(manifest)
            target = before + rng.randint(150, 600)
            extra = rng.uniform(0.0, 0.3)
            log = (tmp_path / f"run{run}.out").open("wb")
            with (
                log,
                subprocess.Popen(  # noqa: ASYNC220 - killed from this task
                    command, stdout=log, stderr=log, env=env, cwd=tmp_path
                ) as proc,
            ):
                with anyio.fail_after(120):
                    while _manifest_lines(manifest) < target and proc.poll() is None:  # noqa: ASYNC110
                        await anyio.sleep(0.01)
                    await anyio.sleep(extra)
                assert proc.poll() is None, f"run {run} ended before its kill point"
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            kills.append({"records_before": before, "records_at_kill": _manifest_lines(manifest)})
            # A SIGKILL may leave a hidden .part file, never a partial file under a final name.
            assert _final_files_problems(dest) == []
        with anyio.fail_after(180):
            final = await anyio.run_process(command, env=env, cwd=tmp_path, check=False)
        stats = await emu.stats()
    elapsed = time.monotonic() - started
    (tmp_path / "emulator-stats.json").write_text(json.dumps(stats))  # for a post-mortem
    assert final.returncode in (0, 1), final.stderr.decode()[-2000:]

    # The final run's --json covers the whole input (earlier runs' items included), once each.
    lines = [json.loads(line) for line in final.stdout.decode().splitlines()]
    seen = Counter(line["index"] for line in lines)
    assert sorted(seen) == list(range(JOBS)), "lost items"
    assert [i for i, n in seen.items() if n > 1] == [], "items reported twice"

    # 0 resubmissions across the kills.
    assert stats["duplicate_submissions"] == 0

    failures = {}
    expected_files: set[Path] = set()
    for line in lines:
        assert line["state"] in ("done", "failed"), line
        if line["state"] == "failed":
            error = line["error"]
            failures[line["index"]] = (error["type"], error["message"], line["job_id"])
        else:
            assert len(line["files"]) == samples_of(line["index"])
            expected_files.update(tmp_path / f for f in line["files"])
            job = stats["jobs"][str(line["job_id"])]
            assert not job["failed"]
    assert check_failures(failures) == []
    assert disk_problems(dest, {p.resolve() for p in expected_files}) == []
    # No job is lost: each one the server made is known by id or its item is ambiguous
    # (a reset answer, or a submit on the wire when the CLI was killed).
    ambiguous = [m for kind, m, _ in failures.values() if kind == "AmbiguousSubmitError"]
    assert len(_unknown_jobs(stats, _records(manifest))) <= len(ambiguous)

    done = sum(line["state"] == "done" for line in lines)
    figures = {
        "jobs": JOBS,
        "seconds": round(elapsed, 1),
        "kills": kills,
        "final_exit_code": final.returncode,
        "done": done,
        "failed": len(failures),
        "failed_by_class": counts(kind for kind, _, _ in failures.values()),
        "ambiguous_cut_off_by_the_kills": sum("stopped before the answer" in m for m in ambiguous),
        "duplicate_submissions": stats["duplicate_submissions"],
        "faults_served": dict(sorted(stats["faults_served"].items())),
        "rate_limited_429": stats["rate_limited"],
        "emulator_jobs": stats["total_jobs"],
        "requests_by_endpoint": dict(sorted(stats["requests_by_endpoint"].items())),
        "files": len(expected_files),
    }
    record("cli_killed_twice", figures)
