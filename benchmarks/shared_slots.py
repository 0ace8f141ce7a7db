"""Four batch processes, one account cap: shared slots in Redis against sharing nothing.

Each scenario runs 4 processes x 25 prompts (``_slots_batch_child.py``: ``generate_many``
with a manifest) against one emulator process with the API's queue cap of 5 per key
(``--max-queued-per-key 5``, the queue-limit 429 carrying ``retry_after`` 30 s), 5 GPU
workers and 1-2 s jobs:

- ``shared``: every process takes its slots from one ``RedisSlots(url, 5, lease=10)``;
- ``killed``: the same, and one process is SIGKILLed when a third of the images are
  downloaded, then its command is run again at once (its manifest resumes it). Its leases
  come back ``lease`` (10 s) after its last renewal at most;
- ``unshared``: every process limits only itself (``max_in_flight="auto"``).

The ideal is the makespan of a perfect client keeping exactly 5 jobs submitted on the same
GPU model with the same job durations (``_harness.best_makespan``). Prints a table and
writes ``benchmarks/results/shared_slots.json``. Needs ``redis-server`` on the PATH.

    python benchmarks/shared_slots.py [--skip-unshared]
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import table, write_json
from _harness import ROOT, EmulatorProcess, best_makespan

sys.path.insert(0, str(ROOT))
from tests._redis_server import start_redis

CHILD = Path(__file__).resolve().parent / "_slots_batch_child.py"
PROCESSES, PROMPTS, CAP, LEASE = 4, 25, 5, 10.0
EMULATOR = ["--max-queued-per-key", str(CAP), "--queue-retry-after", "30", "--workers", "5",
            "--duration", "1,2", "--seed", "7"]  # fmt: skip


def command(base_url: str, out: Path, process: int, slots: list[str]) -> list[str]:
    return [sys.executable, str(CHILD), base_url, str(out / f"p{process}"), str(process),
            str(PROMPTS), *slots]  # fmt: skip


def start(argv: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=ROOT)


def images(out: Path) -> int:
    return sum(1 for _ in out.glob("p*/*.png"))


def scenario(name: str, emu: EmulatorProcess, redis_url: str | None, work: Path) -> dict[str, Any]:
    emu.reset()
    out = work / name
    slots = (
        ["--redis", redis_url, "--limit", str(CAP), "--lease", str(LEASE), "--name", name]
        if redis_url
        else ["--auto"]
    )
    argvs = [command(emu.base_url, out, p, slots) for p in range(PROCESSES)]
    started = time.monotonic()
    procs = {p: start(argv) for p, argv in enumerate(argvs)}
    finished: dict[int, float] = {}
    killed_at = rerun_done = None
    while len(finished) < len(procs):
        for p, proc in procs.items():
            if p not in finished and proc.poll() is not None:
                finished[p] = time.monotonic()
        if name == "killed" and killed_at is None and images(out) >= PROCESSES * PROMPTS // 3:
            procs[0].send_signal(signal.SIGKILL)
            procs[0].wait()
            killed_at = time.monotonic()
            procs[0] = start(argvs[0])  # the same command again: the manifest resumes it
            finished.pop(0, None)
        time.sleep(0.05)
    makespan = max(finished.values()) - started
    reports = {
        p: json.loads(proc.communicate()[0].strip().splitlines()[-1]) for p, proc in procs.items()
    }
    codes = [proc.returncode for proc in procs.values()]
    stats = emu.stats()
    jobs = [stats["jobs"][k] for k in sorted(stats["jobs"], key=int)]
    ideal = best_makespan([j["ready_at"] - j["started_at"] for j in jobs], 5, CAP)
    row: dict[str, Any] = {
        "scenario": name,
        "done": sum(r["done"] for r in reports.values()),
        "exit_codes": codes,
        "makespan_s": makespan,
        "ideal_s": ideal,
        "ratio": makespan / ideal,
        "queue_limited": stats["queue_limited"],
        "duplicates": stats["duplicate_submissions"],
        "jobs": stats["total_jobs"],
        "round_trips_per_job": (
            sum(r["round_trips"] for r in reports.values()) / stats["total_jobs"]
            if redis_url
            else float("nan")
        ),
        "images": images(out),
    }
    if killed_at is not None:
        rerun_done = finished[0]
        others = max(t for p, t in finished.items() if p != 0)
        row["others_after_kill_s"] = others - killed_at
        row["rerun_after_kill_s"] = rerun_done - killed_at
        row["killed_at_s"] = killed_at - started
    return row


RAY_ROWS, RAY_ACTORS = 60, 3
RAY_EMULATOR = ["--max-queued-per-key", str(CAP), "--queue-retry-after", "30", "--workers", "5",
                "--duration", "2,3", "--seed", "7"]  # fmt: skip
RAY_COLUMNS = [
    ("scenario", "scenario"), ("rows", "rows"), ("errors", "errors"), ("wall_s", "wall s"),
    ("ideal_s", "5-slot ideal s"), ("ratio", "÷ ideal"), ("queue_limited", "queue-limit 429s"),
    ("duplicates", "duplicates"),
]  # fmt: skip


def ray_scenario() -> dict[str, Any]:
    """``from_items(60 rows).map_batches(Text2Img, concurrency=3)``, cap 5, 2-3 s jobs; the
    wall time runs from the dataset's execution (actor start included) to its last row."""
    import ray

    from modelslab_async.ray import Text2Img

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with EmulatorProcess(RAY_EMULATOR) as emu:
            items = [{"prompt": f"ray row {i}", "row": i} for i in range(RAY_ROWS)]
            kwargs = {"api_key": "bench-key", "base_url": emu.base_url, "limit": CAP}
            kwargs |= {"slots_name": f"bench-{time.time_ns()}", "width": 64, "height": 64}
            started = time.monotonic()
            rows = (
                ray.data.from_items(items)
                .map_batches(
                    Text2Img,
                    fn_constructor_kwargs=kwargs,
                    concurrency=RAY_ACTORS,
                    num_cpus=0.25,
                    batch_size=10,
                )
                .take_all()
            )
            wall = time.monotonic() - started
            stats = emu.stats()
    finally:
        ray.shutdown()
    jobs = [stats["jobs"][k] for k in sorted(stats["jobs"], key=int)]
    ideal = best_makespan([j["ready_at"] - j["started_at"] for j in jobs], 5, CAP)
    return {
        "scenario": f"ray data ({RAY_ACTORS} actors)",
        "rows": len({r["row"] for r in rows}),
        "errors": sum(r["error"] is not None for r in rows),
        "wall_s": wall,
        "ideal_s": ideal,
        "ratio": wall / ideal,
        "queue_limited": stats["queue_limited"],
        "duplicates": stats["duplicate_submissions"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-unshared", action="store_true", help="(it takes minutes)")
    parser.add_argument("--ray", action="store_true", help="also Ray Data: 60 rows, Text2Img")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmulatorProcess(EMULATOR) as emu:
        work = Path(tmp)
        redis = start_redis(work / "redis")
        try:
            rows = [scenario(n, emu, redis.url, work) for n in ("shared", "killed")]
            if not args.skip_unshared:
                rows.append(scenario("unshared", emu, None, work))
        finally:
            redis.stop()
    columns = [
        ("scenario", "scenario"), ("done", "done"), ("makespan_s", "makespan s"),
        ("ideal_s", "5-slot ideal s"), ("ratio", "÷ ideal"), ("queue_limited", "queue-limit 429s"),
        ("duplicates", "duplicates"), ("round_trips_per_job", "Redis round trips / job"),
        ("others_after_kill_s", "others done after kill s"),
        ("rerun_after_kill_s", "rerun done after kill s"),
    ]  # fmt: skip
    print(table(rows, columns))
    payload = {"processes": PROCESSES, "prompts": PROMPTS, "cap": CAP, "lease": LEASE}
    payload |= {"emulator": EMULATOR, "rows": rows}
    if args.ray:
        ray_row = ray_scenario()
        print(table([ray_row], RAY_COLUMNS))
        payload["ray"] = ray_row
    path = write_json("shared_slots", payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
