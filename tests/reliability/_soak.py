"""Shared parts of the fault soaks: the faults, the prompts, the checks and the record."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import attrs
from PIL import Image

import modelslab_async
from modelslab_async import AmbiguousSubmitError, APIError, ModelsLabError
from modelslab_async.emulator import EmulatorConfig, EndpointFaults, Faults

ROOT = Path(__file__).resolve().parents[2]
#: Where :func:`record` merges the figures: only when this variable names a file (tests
#: write nowhere else than under temporary folders). To refresh the tracked figures:
#: ``MODELSLAB_SOAK_RESULTS=benchmarks/results/soak.json pytest tests/reliability -s``.
RESULTS_ENV = "MODELSLAB_SOAK_RESULTS"

JOBS = 1000
SIZE = 128  # pixels; small images keep 1,000 jobs within a CI budget
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

#: The issue's fault mix, all on at once. Every API request is also held for 100 ms
#: (submit) or 50 ms (fetch), a real service's latency: without it the emulator answers
#: each request before the next one arrives, and the 32-concurrent-requests limit could
#: never be reached.
FAULTS = Faults(
    submit=EndpointFaults(http_5xx=0.05, reset=0.02, slow=1.0, slow_delay=0.1),
    fetch=EndpointFaults(http_5xx=0.05, reset=0.02, slow=1.0, slow_delay=0.05),
    download=EndpointFaults(http_5xx=0.05, reset=0.02, truncated=0.03),
    late_links=0.05,
    late_links_delay=3.0,
)


def soak_config(seed: int) -> EmulatorConfig:
    """Fast timings (0.05-0.2 s per image, 64 GPU workers), 2 % failed jobs, 429 beyond 32
    concurrent API requests, and every fault of :data:`FAULTS`."""
    return EmulatorConfig(
        workers=64,
        duration=(0.05, 0.2),
        seed=seed,
        fail_rate=0.02,
        max_concurrent_requests=32,
        retry_after=0.2,
        faults=FAULTS,
    )


def emulator_args(seed: int) -> list[str]:
    """The same configuration as command-line options of ``python -m modelslab_async.emulator``."""
    args = [
        "--workers=64",
        "--duration=0.05,0.2",
        f"--seed={seed}",
        "--fail-rate=0.02",
        "--max-concurrent-requests=32",
        "--retry-after=0.2",
        f"--late-links={FAULTS.late_links}",
        f"--late-links-delay={FAULTS.late_links_delay}",
    ]
    for endpoint in ("submit", "fetch", "download"):
        faults: EndpointFaults = getattr(FAULTS, endpoint)
        for name in ("http_5xx", "reset", "truncated", "slow"):
            rate = getattr(faults, name)
            if rate:
                args.append(f"--{endpoint}-{name.replace('_', '-')}={rate}")
        if faults.slow:
            args.append(f"--{endpoint}-slow-delay={faults.slow_delay}")
    return args


@attrs.frozen
class EmulatorProcess:
    """An emulator serving from a child process (so its requests really overlap)."""

    base_url: str
    root_url: str
    process: subprocess.Popen[str]

    async def stats(self, jobs: bool = True) -> dict[str, Any]:
        url = f"{self.root_url}/__emulator/stats" + ("" if jobs else "?jobs=0")
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            data: dict[str, Any] = await resp.json()
        return data


@asynccontextmanager
async def emulator_process(seed: int) -> AsyncIterator[EmulatorProcess]:
    """``python -m modelslab_async.emulator --port 0`` with :func:`emulator_args`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "modelslab_async.emulator", "--port=0", *emulator_args(seed)]
    with subprocess.Popen(  # noqa: ASYNC220 - a child process that outlives awaits
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT
    ) as proc:
        try:
            assert proc.stdout is not None
            with anyio.fail_after(30):
                line = await anyio.to_thread.run_sync(proc.stdout.readline)
            match = re.search(r"(http://\S+)(/api/v6)", line)
            assert match, line
            yield EmulatorProcess(match.group(1) + match.group(2), match.group(1), proc)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    await anyio.to_thread.run_sync(lambda: proc.wait(timeout=10))
                except subprocess.TimeoutExpired:
                    proc.kill()


def samples_of(index: int) -> int:
    """Every fifth item asks for two images, the rest for one."""
    return 2 if index % 5 == 0 else 1


def prompt_of(index: int) -> str:
    return f"soak picture number {index}"


def requests() -> Iterable[dict[str, Any]]:
    """The batch, produced lazily (as a JSONL line would be)."""
    for i in range(JOBS):
        yield {
            "prompt": prompt_of(i),
            "seed": i,
            "width": SIZE,
            "height": SIZE,
            "samples": samples_of(i),
        }


def write_jsonl(path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in requests()))
    return path


# --- checks ----------------------------------------------------------------------------------


def image_problem(path: Path) -> str | None:
    """Why *path* is not a complete SIZE x SIZE PNG (None when it is one)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"{path.name}: unreadable ({exc})"
    if not data.startswith(PNG_SIGNATURE):
        return f"{path.name}: no PNG signature"
    try:
        with Image.open(path) as image:
            image.load()  # decodes every row: a cut-off file fails here
            if image.size != (SIZE, SIZE):
                return f"{path.name}: size {image.size}"
    except Exception as exc:
        return f"{path.name}: does not decode ({type(exc).__name__}: {exc})"
    return None


def disk_problems(dest: Path, expected: set[Path]) -> list[str]:
    """Corrupt, partial, stray or missing files under *dest* (an empty list when clean)."""
    problems: list[str] = []
    on_disk = {p for p in dest.iterdir() if p.is_file()}
    for path in sorted(on_disk):
        if path.name.endswith(".part") or path.name.startswith("."):
            problems.append(f"{path.name}: a partial (.part) file")
        elif path.suffix == ".png":
            problem = image_problem(path)
            if problem is not None:
                problems.append(problem)
    images = {p for p in on_disk if p.suffix == ".png"}
    problems += [f"{p.name}: on disk but in no done item" for p in sorted(images - expected)]
    problems += [f"{p.name}: a done item's file is missing" for p in sorted(expected - images)]
    return problems


def typed_error_problem(error_type: str, message: str, job_id: object) -> str | None:
    """Why a failed item's error is not acceptable: the class must be a specific subclass of
    ModelsLabError, and its message must name the job id when the item has one."""
    cls = getattr(modelslab_async, error_type, None)
    if not (isinstance(cls, type) and issubclass(cls, ModelsLabError)):
        return f"{error_type} is not a ModelsLabError"
    if cls in (ModelsLabError, APIError):
        return f"{error_type} is not a specific error class"
    if job_id not in (None, "") and str(job_id) not in message:
        return f"{error_type} of job {job_id} does not name it: {message!r}"
    return None


def check_failures(failures: Mapping[int, tuple[str, str, object]]) -> list[str]:
    """``{index: (error type, message, job id)}`` -> problems."""
    problems = []
    for index, (kind, message, job_id) in sorted(failures.items()):
        problem = typed_error_problem(kind, message, job_id)
        if problem is not None:
            problems.append(f"item {index}: {problem}")
    return problems


def memory_growth(samples: list[tuple[float, int]]) -> tuple[float, float]:
    """(max RSS MB of the first quarter of the run, of the last quarter), by time."""
    start, end = samples[0][0], samples[-1][0]
    quarter = (end - start) / 4
    first = [rss for t, rss in samples if t <= start + quarter]
    last = [rss for t, rss in samples if t >= end - quarter]
    return max(first) / 2**20, max(last) / 2**20


def ambiguous_name() -> str:
    return AmbiguousSubmitError.__name__


def record(section: str, figures: Mapping[str, Any]) -> None:
    """Print *figures*; merge them under *section* into the file ``$MODELSLAB_SOAK_RESULTS``
    names, if it is set (never into a tracked file otherwise)."""
    print(f"\nsoak[{section}]: " + json.dumps(figures, sort_keys=True))
    target = os.environ.get(RESULTS_ENV)
    if not target:
        return
    results = Path(target)
    results.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = json.loads(results.read_text())
    except (OSError, ValueError):
        data = {}
    data[section] = {**figures, "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    tmp = results.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, results)


def counts(values: Iterable[str]) -> dict[str, int]:
    return dict(sorted(Counter(values).items()))
