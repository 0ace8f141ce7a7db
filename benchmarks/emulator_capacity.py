"""Capacity of the local emulator: many concurrent jobs, raw aiohttp clients (not the SDK).

Each simulated client submits a job, waits ``eta`` seconds, polls ``fetch`` every
``--poll-interval`` seconds until ``success`` and downloads every image. By default the
emulator runs in a child process (``python -m modelslab_async.emulator``) so that it has a
core of its own and its CPU time can be measured separately from the load generator.

    python benchmarks/emulator_capacity.py                      # 2,000 concurrent jobs
    python benchmarks/emulator_capacity.py --jobs 10000 --concurrency 64   # SDK-like load
    python benchmarks/emulator_capacity.py --in-process         # emulator in this process

Prints a markdown table (requests/s served, latency percentiles per endpoint, emulator CPU
per request) and writes JSON to ``benchmarks/results/emulator_capacity.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modelslab_async.emulator import Emulator, EmulatorConfig  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "emulator_capacity.json"

# What the SDK benchmarks need (see docs/emulator.md): 10,000 jobs of 0.05-0.2 s with 64 in
# flight on enough GPU workers is at most 64 / 0.125 s = 512 jobs/s; each job costs about
# 1 submit + ~2 fetches + 1 download = ~4 requests.
SDK_JOBS_PER_S = 64 / 0.125
SDK_REQUESTS_PER_JOB = 4.0


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


class Load:
    """Simulated clients and their observations."""

    def __init__(self, base_url: str, poll_interval: float) -> None:
        self.base_url = base_url
        self.poll_interval = poll_interval
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, int] = defaultdict(int)
        self.jobs_done = 0

    async def _call(
        self, session: aiohttp.ClientSession, endpoint: str, method: str, url: str, body: Any
    ) -> tuple[int, bytes]:
        start = time.perf_counter()
        try:
            async with session.request(method, url, json=body) as resp:
                data = await resp.read()
                status = resp.status
        except aiohttp.ClientError:
            self.errors[endpoint] += 1
            raise
        self.latency[endpoint].append(time.perf_counter() - start)
        if status >= 400 and not (endpoint == "download" and status == 404):
            self.errors[endpoint] += 1
        return status, data

    async def job(self, session: aiohttp.ClientSession, index: int) -> None:
        body = {"key": "bench", "prompt": f"benchmark image {index}", "width": 512, "height": 512}
        _, raw = await self._call(
            session, "submit", "POST", self.base_url + "/images/text2img", body
        )
        answer = json.loads(raw)
        if answer["status"] == "processing":
            await asyncio.sleep(float(answer.get("eta") or 0))
            while True:
                _, raw = await self._call(
                    session, "fetch", "POST", answer["fetch_result"], {"key": "bench"}
                )
                result = json.loads(raw)
                if result["status"] != "processing":
                    answer = result
                    break
                await asyncio.sleep(self.poll_interval)
        for link in answer.get("output") or []:
            while (await self._call(session, "download", "GET", link, None))[0] == 404:  # noqa: ASYNC110
                await asyncio.sleep(self.poll_interval)
        self.jobs_done += 1

    async def run(self, jobs: int, concurrency: int, connections: int) -> float:
        connector = aiohttp.TCPConnector(limit=connections)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            queue = iter(range(jobs))

            async def worker() -> None:
                for index in queue:
                    await self.job(session, index)

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(min(concurrency, jobs))))
            return time.perf_counter() - start


def _cpu_of(pid: int) -> float:
    try:
        import psutil
    except ImportError:  # pragma: no cover
        return float("nan")
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def _emulator_args(ns: argparse.Namespace) -> list[str]:
    return [
        "--workers",
        str(ns.workers),
        "--duration",
        ns.duration,
        "--seed",
        "1",
    ]


async def _stats(root: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(root + "/__emulator/stats?jobs=0") as r:
        data: dict[str, Any] = await r.json()
        return data


async def _run_in_process(ns: argparse.Namespace) -> dict[str, Any]:
    lo, hi = (float(x) for x in ns.duration.split(","))
    config = EmulatorConfig(workers=ns.workers, duration=(lo, hi), seed=1)
    async with Emulator(config) as emu:
        load = Load(emu.base_url, ns.poll_interval)
        cpu0 = time.process_time()
        wall = await load.run(ns.jobs, ns.concurrency, ns.connections)
        cpu = time.process_time() - cpu0
        stats = emu.stats.to_dict(include_jobs=False)
    return {"load": load, "wall": wall, "server_cpu": cpu, "stats": stats, "mode": "in-process"}


def _run_subprocess(ns: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "modelslab_async.emulator", "--port", "0", *_emulator_args(ns)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        assert proc.stdout is not None
        match = re.search(r"(http://\S+)/api/v6", proc.stdout.readline())
        if not match:
            raise SystemExit("the emulator did not start")
        root = match.group(1)
        load = Load(root + "/api/v6", ns.poll_interval)
        cpu0 = _cpu_of(proc.pid)
        wall = asyncio.run(load.run(ns.jobs, ns.concurrency, ns.connections))
        cpu = _cpu_of(proc.pid) - cpu0
        stats = asyncio.run(_stats(root))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return {"load": load, "wall": wall, "server_cpu": cpu, "stats": stats, "mode": "subprocess"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=2000, help="simulated clients")
    parser.add_argument("--connections", type=int, default=512, help="client connection pool")
    parser.add_argument("--workers", type=int, default=256, help="emulated GPU workers")
    parser.add_argument("--duration", default="0.05,0.2", help="seconds per image LO,HI")
    parser.add_argument("--poll-interval", type=float, default=0.1)
    parser.add_argument("--in-process", action="store_true", help="emulator in this process")
    parser.add_argument("--output", type=Path, default=RESULTS)
    ns = parser.parse_args()

    run = asyncio.run(_run_in_process(ns)) if ns.in_process else _run_subprocess(ns)
    load: Load = run["load"]
    wall: float = run["wall"]
    total = sum(len(v) for v in load.latency.values())
    cpu = run["server_cpu"]
    cpu_per_request = cpu / total if total else float("nan")
    capacity = 1.0 / cpu_per_request if cpu_per_request > 0 else float("nan")
    needed = SDK_JOBS_PER_S * SDK_REQUESTS_PER_JOB
    endpoints: dict[str, Any] = {}
    for name in ("submit", "fetch", "download"):
        values = load.latency.get(name, [])
        endpoints[name] = {
            "requests": len(values),
            "errors": load.errors.get(name, 0),
            "p50_ms": _percentile(values, 50) * 1000,
            "p99_ms": _percentile(values, 99) * 1000,
            "max_ms": max(values) * 1000 if values else float("nan"),
        }
    all_values = [v for values in load.latency.values() for v in values]
    result: dict[str, Any] = {
        "mode": run["mode"],
        "jobs": ns.jobs,
        "jobs_done": load.jobs_done,
        "concurrency": ns.concurrency,
        "connections": ns.connections,
        "gpu_workers": ns.workers,
        "duration": ns.duration,
        "wall_s": wall,
        "requests": total,
        "requests_per_s": total / wall,
        "jobs_per_s": load.jobs_done / wall,
        "p50_ms": _percentile(all_values, 50) * 1000,
        "p99_ms": _percentile(all_values, 99) * 1000,
        "cpu_measured": "emulator process" if run["mode"] == "subprocess" else "whole process",
        "emulator_cpu_s": cpu,
        "emulator_cpu_us_per_request": cpu_per_request * 1e6,
        "emulator_capacity_requests_per_cpu_s": capacity,
        "sdk_benchmark_need_requests_per_s": needed,
        "headroom": capacity / needed,
        "endpoints": endpoints,
        "emulator_stats": run["stats"],
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
    }
    ns.output.parent.mkdir(parents=True, exist_ok=True)
    ns.output.write_text(json.dumps(result, indent=2) + "\n")

    print(
        f"## Emulator capacity ({run['mode']}, {ns.jobs} jobs, {ns.concurrency} concurrent, "
        f"{ns.workers} GPU workers, {ns.duration} s/image)\n"
    )
    print("| endpoint | requests | errors | p50 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, e in endpoints.items():
        print(
            f"| {name} | {e['requests']} | {e['errors']} | {e['p50_ms']:.1f} | "
            f"{e['p99_ms']:.1f} | {e['max_ms']:.1f} |"
        )
    print(
        f"| **all** | {total} | {sum(load.errors.values())} | {result['p50_ms']:.1f} | "
        f"{result['p99_ms']:.1f} | |\n"
    )
    print("| metric | value |")
    print("|---|---:|")
    print(f"| wall time | {wall:.2f} s |")
    print(f"| requests/s served | {result['requests_per_s']:.0f} |")
    print(f"| jobs/s | {result['jobs_per_s']:.0f} |")
    who = "emulator" if run["mode"] == "subprocess" else "emulator + load generator"
    print(f"| {who} CPU per request | {cpu_per_request * 1e6:.0f} µs |")
    print(f"| capacity ({who}, requests per CPU-second) | {capacity:.0f} |")
    print(f"| SDK benchmarks need (512 jobs/s x ~4 requests) | {needed:.0f} requests/s |")
    print(f"| headroom | {capacity / needed:.1f}x |")
    print(f"\nJSON: {ns.output}")


if __name__ == "__main__":
    main()
