"""The account's queue cap: how close each client comes to the best use of 5 slots.

The emulator runs as a separate process with ``--max-queued-per-key 5`` and the documented
``--queue-retry-after 30`` (every 6th unfinished job of the key is refused with HTTP 429
"Rate limit exceeded. Maximum 5 queued requests allowed."), 8 GPU workers (so the cap,
not the GPUs, bounds the run). Two workloads: 1-2 s jobs (100 prompts) and 4-8 s jobs
(40 prompts). Clients:

- ``ours auto``: ``Client(max_in_flight="auto")`` + ``generate_many`` (starts at 4, grows,
  learns 5 from the first queue-limit answer);
- ``ours auto, no busy polling``: the same with ``PollPolicy(busy_fetch_cost=fetch_cost,
  busy_max_gap=max_gap)`` (the slot-aware schedule off), to measure what it buys and costs;
- ``ours fixed 5``: ``Client(max_in_flight=5)``;
- ``CLI auto``: ``modelslab-async batch --concurrency auto`` in a child process;
- ``hand loop 5``: ``benchmarks/hand_loop.py`` with a semaphore of 5.

For each run: makespan (the emulator's first submit to its last image download) divided
by the 5-slot ideal, which is the makespan of a perfect client (zero lag: the next job
submitted the instant one is ready, 5 in flight, the same per-job durations in the same
order; ``_harness.best_makespan``); the sum of durations / 5 is shown as a lower bound too.
Also: queue-limit answers, fetch calls per job, poll lag (ready -> first success served),
and fetch calls per second (the request rate the polling asks of the API).

    python benchmarks/planlimit.py            # both workloads, every client
    python benchmarks/planlimit.py --quick    # 1-2 s jobs only
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import hand_loop
from _common import percentile, table, write_json
from _harness import ROOT, EmulatorProcess, best_makespan

from modelslab_async import Client, PollPolicy, Text2ImgRequest

CAP = 5
WORKERS = 8
KEY = "bench-key"
SIZE = 64


def prompts(n: int) -> list[str]:
    return [hand_loop.prompt_for(i) for i in range(n)]


async def run_ours(base_url: str, n: int, dest: Path, **client_kw: Any) -> None:
    requests = [
        Text2ImgRequest(prompt=p, width=SIZE, height=SIZE, seed=i) for i, p in enumerate(prompts(n))
    ]
    async with Client(KEY, base_url=base_url, **client_kw) as client:
        async for result in client.generate_many(requests, dest=dest):
            if not result.ok:
                raise SystemExit(f"item {result.index} failed: {result.error}")


def run_cli(base_url: str, n: int, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    source = dest / "prompts.txt"
    source.write_text("\n".join(prompts(n)) + "\n")
    env = {**os.environ, "MODELSLAB_API_KEY": KEY, "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable, "-m", "modelslab_async", "batch", str(source), "--out", str(dest / "out"),
        "--concurrency", "auto", "--base-url", base_url, "--width", str(SIZE),
        "--height", str(SIZE),
    ]  # fmt: skip
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"the CLI exited {result.returncode}: {result.stderr[-2000:]}")


def measure(emu: EmulatorProcess, name: str, n: int, started: float) -> dict[str, Any]:
    stats = emu.stats()
    jobs = sorted(stats["jobs"].values(), key=lambda j: j["submitted_at"])
    durations = [j["ready_at"] - j["started_at"] for j in jobs]
    first = jobs[0]["submitted_at"]
    last = max(t for j in jobs for t in j["downloads"].values())
    makespan = last - first
    ideal = best_makespan(durations, WORKERS, CAP)
    lags = [
        j["first_success_at"] - j["ready_at"] for j in jobs if j["first_success_at"] is not None
    ]
    fetches = stats["requests_by_endpoint"].get("fetch", 0)
    return {
        "client": name,
        "jobs": len(jobs),
        "duplicates": stats["duplicate_submissions"],
        "makespan_s": makespan,
        "ideal_s": ideal,
        "sum_over_cap_s": sum(durations) / CAP,
        "ratio": makespan / ideal,
        "queue_limited": stats["rate_limited_by_reason"].get("queue", 0),
        "fetch_per_job": fetches / max(1, len(jobs)),
        "fetch_per_s": fetches / makespan,
        "lag_mean_ms": 1000 * sum(lags) / max(1, len(lags)),
        "lag_p90_ms": 1000 * percentile(lags, 0.9),
        "wall_s": time.monotonic() - started,
    }


def run_one(emu: EmulatorProcess, name: str, n: int) -> dict[str, Any]:
    emu.reset()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp)
        if name == "ours auto":
            asyncio.run(run_ours(emu.base_url, n, dest, max_in_flight="auto"))
        elif name == "ours auto, no busy polling":
            policy = PollPolicy()
            off = PollPolicy(busy_fetch_cost=policy.fetch_cost, busy_max_gap=policy.max_gap)
            asyncio.run(run_ours(emu.base_url, n, dest, max_in_flight="auto", poll=off))
        elif name == "ours fixed 5":
            asyncio.run(run_ours(emu.base_url, n, dest, max_in_flight=CAP))
        elif name == "CLI auto":
            run_cli(emu.base_url, n, dest)
        elif name == "hand loop 5":
            summary = asyncio.run(
                hand_loop.run(emu.base_url, prompts(n), dest, concurrency=CAP, key=KEY, size=SIZE)
            )
            if summary.failed:
                raise SystemExit(f"hand loop: {summary.failed} failed: {dict(summary.errors)}")
        else:
            raise ValueError(name)
    row = measure(emu, name, n, started)
    print(
        f"  {name:28s} {row['ratio']:.3f}x ideal, {row['queue_limited']} queue-limited, "
        f"{row['fetch_per_job']:.2f} fetch/job, lag {row['lag_mean_ms']:.0f} ms",
        flush=True,
    )
    return row


CLIENTS = ("ours auto", "ours auto, no busy polling", "ours fixed 5", "CLI auto", "hand loop 5")
WORKLOADS = (("1-2 s jobs", "1,2", 100), ("4-8 s jobs", "4,8", 40))
COLUMNS = [
    ("workload", "workload"),
    ("client", "client"),
    ("ratio", "makespan / ideal"),
    ("makespan_s", "makespan s"),
    ("ideal_s", "ideal s"),
    ("queue_limited", "queue-limit 429s"),
    ("fetch_per_job", "fetches/job"),
    ("fetch_per_s", "fetches/s"),
    ("lag_mean_ms", "lag mean ms"),
    ("lag_p90_ms", "lag p90 ms"),
    ("duplicates", "dup"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="the 1-2 s workload only")
    parser.add_argument("--clients", nargs="*", default=list(CLIENTS), choices=CLIENTS)
    ns = parser.parse_args()
    rows = []
    for label, duration, n in WORKLOADS[:1] if ns.quick else WORKLOADS:
        options = [
            "--workers", str(WORKERS), "--duration", duration, "--max-queued-per-key", str(CAP),
            "--queue-retry-after", "30", "--seed", "7",
        ]  # fmt: skip
        print(f"{label}, {n} prompts, cap {CAP}, queue retry_after 30 s", flush=True)
        with EmulatorProcess(options) as emu:
            for name in ns.clients:
                rows.append({"workload": label, **run_one(emu, name, n)})
    print()
    print(table(rows, COLUMNS))
    path = write_json("planlimit", {"cap": CAP, "workers": WORKERS, "rows": rows})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
