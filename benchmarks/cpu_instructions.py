"""CPU per job in instructions, not seconds: each client's batch under valgrind's callgrind.

``batch_bench.py`` measures CPU seconds, which on a shared 2-core machine move by ±20–30 %
between runs (other tenants, CPU frequency, the filesystem's state, the allocator's state).
Callgrind counts the instructions a process executes, which do not depend on what else the
machine does. Each client runs the same batch at two sizes, and the difference of the two
counts over the difference of the sizes is its instructions per job: interpreter start-up,
imports and every other fixed cost cancel out.

Under callgrind a client runs some 50 times slower, so every job is done by its first
fetch: each client makes one submit, one fetch and one download per job. The count is thus
the cost of the same HTTP work in both clients plus what each does around it (the typed
models, the poller and the batch engine for the SDK). It leaves out what seconds include
and instructions do not: system calls' kernel time, cache misses, and the extra fetches of
each client's real polling (the hand loop's ~1.6 per job against the SDK's ~1.4). Read the
ratio beside ``batch_bench.py``'s, not instead of it.

    python benchmarks/cpu_instructions.py                # 100 and 400 jobs per client
    python benchmarks/cpu_instructions.py --jobs 200 800

Needs ``valgrind`` (Debian: ``apt-get install valgrind``). Prints a markdown table and
writes ``benchmarks/results/cpu_instructions.json``; takes about 5 minutes.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import table, write_json
from _harness import CLIENT_PROC, ROOT, EmulatorProcess, _env

CLIENTS = ("modelslab_async", "hand_loop")


def instructions(emu: EmulatorProcess, client: str, jobs: int, scratch: Path) -> dict[str, Any]:
    """One client run under callgrind on a freshly reset emulator: its instruction count."""
    emu.reset()
    run = Path(tempfile.mkdtemp(prefix=f"{client}-{jobs}-", dir=scratch))
    report = run / "report.json"
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        str(CLIENT_PROC),
        client,
        "--base-url",
        emu.base_url,
        "--jobs",
        str(jobs),
        "--dest",
        str(run / "out"),
        "--report",
        str(report),
    ]
    # A fixed hash seed: the same dict layouts, hence the same count, run after run.
    env = {**_env(), "PYTHONHASHSEED": "0"}
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    found = re.search(r"Collected\s*:\s*([\d,]+)", done.stderr)
    if done.returncode != 0 or found is None or not report.exists():
        raise SystemExit(f"{client} under callgrind failed: {done.stderr[-2000:]}")
    data = json.loads(report.read_text())
    if data["ok"] != jobs:
        raise SystemExit(f"{client}: {data['ok']} of {jobs} jobs done under callgrind")
    calls = data.get("calls", {})
    return {
        "client": client,
        "jobs": jobs,
        "instructions": int(found.group(1).replace(",", "")),
        "fetch_per_job": calls.get("fetch", 0) / jobs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, nargs=2, default=[100, 400], metavar=("N1", "N2"))
    parser.add_argument("--workers", type=int, default=64, help="emulated GPU workers")
    parser.add_argument("--duration", default="0.05,0.2", help="seconds per image LO,HI")
    ns = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    small, large = sorted(ns.jobs)
    options = ["--workers", str(ns.workers), "--duration", ns.duration, "--seed", "7"]
    options.append("--no-draw-prompt")
    runs: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="cpu-instructions-") as scratch,
        EmulatorProcess(options) as emu,
    ):
        for client in CLIENTS:
            for jobs in (small, large):
                run = instructions(emu, client, jobs, Path(scratch))
                print(
                    f"  {client:16} {jobs:5} jobs: {run['instructions']:,} instructions, "
                    f"{run['fetch_per_job']:.2f} fetch/job",
                    flush=True,
                )
                runs.append(run)
    rows: list[dict[str, Any]] = []
    for client in CLIENTS:
        a, b = (r for r in runs if r["client"] == client)
        per_job = (b["instructions"] - a["instructions"]) / (large - small)
        rows.append(
            {
                "client": client,
                "per_job_k": per_job / 1000,
                "fixed_m": (a["instructions"] - per_job * small) / 1e6,
                "fetch_per_job": b["fetch_per_job"],
            }
        )
    for row in rows:
        row["ratio"] = row["per_job_k"] / rows[-1]["per_job_k"]
    columns = [
        ("client", "client"),
        ("per_job_k", "instructions per job (thousands)"),
        ("ratio", "vs hand loop"),
        ("fixed_m", "fixed (millions: start-up, imports)"),
        ("fetch_per_job", "fetch/job under callgrind"),
    ]
    print(f"\n### Instructions per job ({small} and {large} jobs per client under callgrind)\n")
    print(table(rows, columns))
    path = write_json(
        "cpu_instructions",
        {
            "config": {"jobs": [small, large], "workers": ns.workers, "duration": ns.duration},
            "summary": rows,
            "runs": runs,
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
