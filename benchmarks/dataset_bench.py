"""Datasets at scale: peak RSS and wall time of ``write_dataset`` per output format (issue 20).

N rows (10,000 by default) in a parquet file (prompt, seed, width = height = 64, and an
``id`` metadata column) go through ``modelslab_async.datasets.write_dataset`` with
``read_rows``, once per output format (``files``, ``imagefolder``, ``webdataset``,
``parquet``; shards of 1,000 rows), and once through plain ``Client.generate_many(dest=...,
manifest=...)`` (no dataset layer, the CLI's ``batch`` of today) for reference. 64 jobs
in flight; the emulator (its own process: 64 GPU workers, 0.02–0.08 s per image, so the GPU
never queues) is reset between runs, so every run gets the same seeded job durations.

Each run is a process of its own (this script with ``--child``):

- peak RSS: ``ru_maxrss`` of that process (``os.wait4``), interpreter and pyarrow included;
  target ≤ 250 MB, flat in N;
- wall time: ``write_dataset`` called → returned (reading the input, the batch, packing the
  last shard, removing the staging folder); target ≤ 1.1 × ``files``;
- CPU: user + sys seconds of the process (``os.wait4``), start-up and imports included:
  the machine's other load moves it less than wall time;
- samples: what the output holds, counted from the output itself (tar members, parquet
  rows, imagefolder files, PNG files), and duplicate submissions from the emulator.

    python benchmarks/dataset_bench.py                 # 10,000 rows
    python benchmarks/dataset_bench.py --rows 5000 --repeat 3
    python benchmarks/dataset_bench.py --quick         # 1,000 rows

Prints a markdown table and writes ``benchmarks/results/dataset_bench.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import table, write_json
from _harness import ROOT, EmulatorProcess, _env

FORMATS = ("files", "imagefolder", "webdataset", "parquet")
RUNS = (*FORMATS, "generate_many")
RSS_TARGET_MB = 250.0
WALL_RATIO_TARGET = 1.1
SIZE = 64
IN_FLIGHT = 64

COLUMNS = [
    ("run", "output"),
    ("rows", "rows"),
    ("samples", "samples written"),
    ("failed", "failed"),
    ("peak_rss_mb", "peak RSS MB"),
    ("wall_s", "wall s"),
    ("wall_ratio", "wall / files"),
    ("cpu_s", "CPU s"),
    ("cpu_ratio", "CPU / files"),
    ("duplicates", "dup submits"),
]


# --- the measured process --------------------------------------------------------------------


async def _child(ns: argparse.Namespace) -> dict[str, Any]:
    from modelslab_async import Client
    from modelslab_async.datasets import read_rows, write_dataset

    async with Client("bench-key", base_url=ns.base_url, max_in_flight=IN_FLIGHT) as client:
        started = time.monotonic()
        if ns.child == "generate_many":
            done = failed = 0
            rows = read_rows(ns.input)
            requests = (row.request for row in rows)
            manifest = Path(ns.out) / "manifest.jsonl"  # as the CLI's batch has one
            async for result in client.generate_many(requests, dest=ns.out, manifest=manifest):
                done += result.ok
                failed += not result.ok
            return {"wall_s": time.monotonic() - started, "done": done, "failed": failed}
        summary = await write_dataset(
            client, read_rows(ns.input), ns.out, output_format=ns.child, shard_size=ns.shard
        )
        return {
            "wall_s": time.monotonic() - started,
            "done": summary.done,
            "failed": summary.failed,
            "complete": summary.complete,
        }


def child_main(ns: argparse.Namespace) -> None:
    import anyio

    report = anyio.run(_child, ns)
    Path(ns.report).write_text(json.dumps(report))


# --- the parent ------------------------------------------------------------------------------


def make_input(path: Path, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = list(range(rows))
    table_ = pa.table(
        {
            "prompt": [f"dataset benchmark picture {i}: a lighthouse at dusk" for i in ids],
            "seed": ids,
            "width": [SIZE] * rows,
            "height": [SIZE] * rows,
            "id": [f"item-{i}" for i in ids],
        }
    )
    pq.write_table(table_, path, row_group_size=2048)


def count_samples(run: str, out: Path) -> int:
    if run in ("files", "generate_many"):
        return sum(1 for p in out.glob("*.png"))
    if run == "imagefolder":
        return sum(1 for p in out.glob("*/*.png"))
    if run == "webdataset":
        total = 0
        for tar in out.glob("*.tar"):
            with tarfile.open(tar) as handle:
                total += sum(1 for m in handle.getmembers() if m.name.endswith(".png"))
        return total
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(p).num_rows for p in out.glob("*.parquet"))


def measure(
    emu: EmulatorProcess, run: str, source: Path, scratch: Path, ns: argparse.Namespace
) -> dict[str, Any]:
    emu.reset()
    out = Path(tempfile.mkdtemp(prefix=f"{run}-", dir=scratch)) / "out"
    report_path = out.parent / "report.json"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        run,
        "--base-url",
        emu.base_url,
        "--input",
        str(source),
        "--out",
        str(out),
        "--report",
        str(report_path),
        "--shard",
        str(ns.shard),
    ]
    proc = subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdin=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0 or not report_path.exists():
        raise SystemExit(f"run {run} failed with exit status {status}")
    report: dict[str, Any] = json.loads(report_path.read_text())
    stats = emu.stats(jobs=False)
    return {
        "run": run,
        "rows": ns.rows,
        "samples": count_samples(run, out),
        "failed": report["failed"],
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "wall_s": report["wall_s"],
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "duplicates": stats["duplicate_submissions"],
        "jobs": stats["total_jobs"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--shard", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=1, help="runs per output (median kept)")
    parser.add_argument("--quick", action="store_true", help="1,000 rows, shards of 100")
    parser.add_argument("--child", choices=RUNS, help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--report", help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.child:
        child_main(ns)
        return
    if ns.quick:
        ns.rows, ns.shard = 1000, 100
    emulator = ["--workers", "64", "--duration", "0.02,0.08", "--seed", "0", "--no-draw-prompt"]
    with tempfile.TemporaryDirectory(prefix="dataset-bench-") as tmp:
        scratch = Path(tmp)
        source = scratch / "input.parquet"
        make_input(source, ns.rows)
        runs: dict[str, list[dict[str, Any]]] = {run: [] for run in RUNS}
        with EmulatorProcess(emulator) as emu:
            for _ in range(ns.repeat):
                for run in RUNS:  # interleaved: slow drifts of the machine hit every output
                    row = measure(emu, run, source, scratch, ns)
                    runs[run].append(row)
                    print(
                        f"  {run}: {row['wall_s']:.1f} s, CPU {row['cpu_s']:.1f} s, "
                        f"{row['peak_rss_mb']:.0f} MB",
                        flush=True,
                    )
    rows = []
    for measured in runs.values():
        row = dict(measured[0])
        row["wall_s"] = statistics.median(m["wall_s"] for m in measured)
        row["peak_rss_mb"] = max(m["peak_rss_mb"] for m in measured)
        row["cpu_s"] = statistics.median(m["cpu_s"] for m in measured)
        row["wall_all_s"] = [round(m["wall_s"], 3) for m in measured]
        rows.append(row)
    files = next(r for r in rows if r["run"] == "files")
    for row in rows:
        row["wall_ratio"] = row["wall_s"] / files["wall_s"]
        row["cpu_ratio"] = row["cpu_s"] / files["cpu_s"]
    print()
    print(f"{ns.rows} rows of {SIZE}x{SIZE} images, shards of {ns.shard}, {IN_FLIGHT} in flight:")
    print(table(rows, COLUMNS))
    met = all(
        r["peak_rss_mb"] <= RSS_TARGET_MB
        and r["samples"] == ns.rows
        and r["duplicates"] == 0
        and (r["run"] == "generate_many" or r["wall_ratio"] <= WALL_RATIO_TARGET)
        for r in rows
    )
    print(
        f"targets (RSS <= {RSS_TARGET_MB:.0f} MB, wall <= {WALL_RATIO_TARGET} x files): "
        + ("met" if met else "NOT met")
    )
    path = write_json(
        "dataset_bench",
        {
            "rows": ns.rows,
            "shard_size": ns.shard,
            "size": SIZE,
            "in_flight": IN_FLIGHT,
            "repeat": ns.repeat,
            "emulator": emulator,
            "targets": {"peak_rss_mb": RSS_TARGET_MB, "wall_ratio": WALL_RATIO_TARGET},
            "met": met,
            "results": rows,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
