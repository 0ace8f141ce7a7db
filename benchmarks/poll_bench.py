"""Poll lag and fetch calls of the poller, measured by the emulator.

1,000 jobs, 64 in flight, generation time uniform 1–3 s per image, 16 GPU workers (so the
queue, not the client, sets the pace). For each scenario a fresh emulator (same seed)
runs the batch through ``generate_many``; the emulator's stats give, per job, the true
ready time and the first time a ``success`` for it was served:

- poll lag = first success served − true ready time (p50 / p90 / p99);
- fetch calls per job;
- makespan = the client's wall time from first submit to last result, compared with the
  emulator's schedule (last ready − first submit, given the client's submit times).

Scenarios: the default PollPolicy with an accurate eta, an eta that underestimates by
50 %, one that overestimates by 50 %; the frugal preset; the eager preset. Then webhook
mode (``client.webhooks()``: the emulator POSTs each job's webhook at its ready time, the
client confirms with one fetch, the poller is only the safety net), with every webhook
delivered and with 10 % of them dropped (those resolve through the poller after
``eta + PollPolicy.webhook_grace``). Same workload, same seed, one table.

    python benchmarks/poll_bench.py [--jobs 1000] [--quick] [--webhook] [--only NAME ...]

``--webhook`` runs only the default polling row and the webhook rows (written to
``results/poll_bench_webhook.json``; a full run writes ``results/poll_bench.json``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import percentile, table, write_json

from modelslab_async import Client, PollPolicy, Text2ImgRequest
from modelslab_async.emulator import Emulator, EmulatorConfig

#: (policy name, eta mode, policy, how results arrive: "poll", "webhook" or "webhook-drop10")
SCENARIOS: list[tuple[str, str, PollPolicy, str]] = [
    ("default", "accurate", PollPolicy(), "poll"),
    ("default", "under", PollPolicy(), "poll"),
    ("default", "over", PollPolicy(), "poll"),
    ("frugal", "accurate", PollPolicy.frugal(), "poll"),
    ("eager", "accurate", PollPolicy.eager(), "poll"),
    ("default", "accurate", PollPolicy(), "webhook"),
    ("default", "accurate", PollPolicy(), "webhook-drop10"),
]
#: The emulator's webhook drop rate per mode.
DROP_RATES = {"poll": 0.0, "webhook": 0.0, "webhook-drop10": 0.1}


async def run_one(
    name: str,
    eta_mode: str,
    policy: PollPolicy,
    mode: str = "poll",
    *,
    jobs: int,
    in_flight: int,
    workers: int,
    duration: tuple[float, float],
    seed: int,
) -> dict[str, Any]:
    config = EmulatorConfig(
        workers=workers,
        duration=duration,
        seed=seed,
        eta_mode=eta_mode,
        eta_error=0.5,
        draw_prompt=False,
        webhook_drop_rate=DROP_RATES[mode],
    )
    requests = (
        Text2ImgRequest(prompt=f"benchmark prompt {i}", width=256, height=256, seed=i)
        for i in range(jobs)
    )
    async with Emulator(config) as emu:
        with tempfile.TemporaryDirectory() as out:
            async with Client(
                "bench-key", base_url=emu.base_url, max_in_flight=in_flight, poll=policy
            ) as client:
                if mode != "poll":
                    # A receiver served in the client's task group; every submit uses it.
                    await client.webhooks("127.0.0.1", 0)
                started = time.monotonic()
                failed = 0
                async for result in client.generate_many(
                    requests, dest=out, max_in_flight=in_flight + 16
                ):
                    failed += result.error is not None
                wall = time.monotonic() - started
        stats = emu.stats
        lags = stats.poll_lags()
        ideal = stats.ideal_makespan()
        durations = sum(j.ready_at - j.started_at for j in stats.jobs.values())
        return {
            "policy": name,
            "eta": eta_mode,
            "mode": mode,
            "jobs": jobs,
            "failed": failed,
            "lag_p50_ms": percentile(lags, 0.5) * 1000,
            "lag_p90_ms": percentile(lags, 0.9) * 1000,
            "lag_p99_ms": percentile(lags, 0.99) * 1000,
            "fetch_per_job": stats.fetches_per_job(),
            "makespan_s": wall,
            "schedule_s": ideal,
            "makespan_ratio": wall / ideal if ideal else float("nan"),
            "gpu_bound_s": durations / workers,
            "duplicates": stats.duplicate_submissions(),
            "webhooks_dropped": stats.faults_served["webhook.drop"],
        }


async def main(args: argparse.Namespace) -> None:
    rows = []
    for name, eta_mode, policy, mode in SCENARIOS:
        if args.only and name not in args.only and mode not in args.only:
            continue
        if args.webhook and not (mode != "poll" or (name, eta_mode) == ("default", "accurate")):
            continue
        row = await run_one(
            name,
            eta_mode,
            policy,
            mode,
            jobs=args.jobs,
            in_flight=args.in_flight,
            workers=args.workers,
            duration=(args.min, args.max),
            seed=args.seed,
        )
        rows.append(row)
        print(
            f"{name:8} eta={eta_mode:8} {mode:14} p50={row['lag_p50_ms']:.0f}ms "
            f"p99={row['lag_p99_ms']:.0f}ms fetch/job={row['fetch_per_job']:.2f} "
            f"makespan/schedule={row['makespan_ratio']:.3f}",
            flush=True,
        )
    columns = [
        ("policy", "policy"),
        ("eta", "eta"),
        ("mode", "results by"),
        ("lag_p50_ms", "lag p50 ms"),
        ("lag_p90_ms", "lag p90 ms"),
        ("lag_p99_ms", "lag p99 ms"),
        ("fetch_per_job", "fetch/job"),
        ("makespan_s", "makespan s"),
        ("schedule_s", "emulator schedule s"),
        ("makespan_ratio", "makespan / schedule"),
        ("gpu_bound_s", "GPU-bound s"),
        ("failed", "failed"),
        ("duplicates", "dup submits"),
        ("webhooks_dropped", "webhooks dropped"),
    ]
    print()
    print(
        f"{args.jobs} jobs, {args.in_flight} in flight, {args.workers} GPU workers, "
        f"{args.min:g}–{args.max:g} s per image"
    )
    print(table(rows, columns))
    path = write_json(
        "poll_bench_webhook" if args.webhook else "poll_bench",
        {
            "config": {
                "jobs": args.jobs,
                "in_flight": args.in_flight,
                "workers": args.workers,
                "duration": [args.min, args.max],
                "seed": args.seed,
                "webhook_grace": PollPolicy().webhook_grace,
            },
            "rows": rows,
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--min", type=float, default=1.0)
    parser.add_argument("--max", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--only",
        nargs="*",
        help="policies or modes to run (default, frugal, eager, poll, webhook, webhook-drop10)",
    )
    parser.add_argument(
        "--webhook",
        action="store_true",
        help="only polling (default policy, accurate eta) next to the webhook rows",
    )
    parser.add_argument("--quick", action="store_true", help="200 jobs")
    ns = parser.parse_args()
    if ns.quick:
        ns.jobs = 200
    anyio.run(main, ns)
