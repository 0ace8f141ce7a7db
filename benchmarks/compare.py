"""modelslab_async vs the official modelslab-py SDK vs a hand-written loop (issue 8).

One emulator per timing, in a process of its own; the same batch (item i = prompt i, seed i,
one 512x512 image, 64 jobs in flight) goes through each client in turn, each client in a
process of its own, the emulator reset (same seeded job durations, fresh statistics) before
each:

(a) ``modelslab_async``: ``Client(max_in_flight=64)`` + ``generate_many(..., dest=DIR)``;
(b) ``official``: the official SDK (``pip install modelslab-py``): its async client
    (``Community.async_text_to_image``) with ``client.base_url`` pointed at the emulator and
    its own fetch helper ``async_fetch(id)``, ``asyncio.Semaphore(64)`` around submit +
    fetch, downloads with aiohttp (the SDK has none); see ``_client_proc.py``;
(c) ``hand_loop``: aiohttp + asyncio.gather + Semaphore(64), polling every ``eta`` seconds
    (``hand_loop.py``).

Two timings:

- **fast**: 1–3 s per image, 16 GPU workers, 1,000 jobs. The official SDK's fetch interval
  (``fetch_timeout``, 60 s as shipped) is scaled like the job durations: realistic jobs take
  6 s on average and fast ones 2 s, so the interval becomes 60 s × 2/6 = 20 s (the ratio of
  fetch interval to job duration stays that of the realistic run); ``fetch_retry`` stays 10.
- **realistic**: 4–8 s per image, 4 GPU workers, the official SDK exactly at its shipped
  defaults (``fetch_timeout=60``, ``fetch_retry=10``): what its users get. 1,000 jobs would
  take 25 min per client (1,000 × 6 s / 4 workers), so this run uses 200 jobs by default
  (``--realistic-jobs``); the table header says how many.

For each client: makespan (first submit seen by the emulator to the last file written by
the client) against the emulator's schedule for the client's own submit times (last
ready − first submit) and against a perfect client (64 in flight, zero lag, same
durations); poll lag p50/p99 (``first_success_at − ready_at`` from the emulator's stats);
fetch calls per job; duplicate submissions; client CPU per job (batch only, from the
child's ``resource.getrusage``); peak RSS of the client process (``os.wait4``); images
written and verified (every PNG parsed and inflated by the harness).

    pip install -e '.[bench]'
    python benchmarks/compare.py                 # fast 1,000 jobs + realistic 200 jobs
    python benchmarks/compare.py --quick         # fast 200 jobs + realistic 16 jobs
    python benchmarks/compare.py --only fast --jobs 500

Prints a markdown table, writes ``benchmarks/results/compare.json`` and draws
``benchmarks/results/compare.png`` (poll-lag distribution and makespan per client;
needs matplotlib, skipped with a note without it).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, table, write_json
from _harness import EmulatorProcess, best_makespan, job_metrics, run_client

CLIENTS = ("modelslab_async", "official", "hand_loop")
LABELS = {
    "modelslab_async": "modelslab_async",
    "official": "official modelslab-py",
    "hand_loop": "hand-written loop",
}
OFFICIAL_DEFAULT_INTERVAL = 60.0  # modelslab_py.core.client.Client(fetch_timeout=60)
OFFICIAL_DEFAULT_RETRIES = 10  # modelslab_py.core.client.Client(fetch_retry=10)

COLUMNS = [
    ("client", "client"),
    ("jobs", "jobs"),
    ("makespan_s", "makespan s"),
    ("makespan_ratio", "makespan / schedule"),
    ("best_ratio", "makespan / perfect"),
    ("lag_p50_ms", "lag p50 ms"),
    ("lag_p99_ms", "lag p99 ms"),
    ("fetch_per_job", "fetch/job"),
    ("duplicates", "dup submits"),
    ("cpu_ms_per_job", "CPU ms/job"),
    ("cpu_ratio", "CPU vs hand loop"),
    ("peak_rss_mb", "peak RSS MB"),
    ("images", "images written / verified"),
    ("failed", "failed"),
]


def timings(ns: argparse.Namespace) -> list[dict[str, Any]]:
    """The two runs: name, emulator options, jobs and the official SDK's settings."""
    fast_lo, fast_hi = ns.fast_duration
    real_lo, real_hi = ns.realistic_duration
    scale = ((fast_lo + fast_hi) / 2) / ((real_lo + real_hi) / 2)
    runs = [
        {
            "name": "fast",
            "jobs": ns.jobs,
            "workers": ns.fast_workers,
            "duration": (fast_lo, fast_hi),
            "official_interval": OFFICIAL_DEFAULT_INTERVAL * scale,
            "official_retries": OFFICIAL_DEFAULT_RETRIES,
            "official_note": (
                f"fetch interval scaled {OFFICIAL_DEFAULT_INTERVAL:g} s × "
                f"{(fast_lo + fast_hi) / 2:g}/{(real_lo + real_hi) / 2:g} = "
                f"{OFFICIAL_DEFAULT_INTERVAL * scale:g} s"
            ),
        },
        {
            "name": "realistic",
            "jobs": ns.realistic_jobs,
            "workers": ns.realistic_workers,
            "duration": (real_lo, real_hi),
            "official_interval": None,  # shipped default
            "official_retries": None,
            "official_note": "shipped defaults (fetch every 60 s, 10 tries)",
        },
    ]
    return [r for r in runs if not ns.only or r["name"] in ns.only]


def measure(
    emu: EmulatorProcess, client: str, run: dict[str, Any], ns: argparse.Namespace
) -> dict[str, Any]:
    """One client through one timing's batch on a freshly reset emulator."""
    emu.reset()
    extra = ["--min-interval", str(ns.min_interval)]
    if client == "official":
        if run["official_interval"] is not None:
            extra += ["--official-interval", f"{run['official_interval']:g}"]
        if run["official_retries"] is not None:
            extra += ["--official-retries", str(run["official_retries"])]
    cpu0 = emu.cpu_seconds()
    report = run_client(
        client, emu.base_url, jobs=run["jobs"], in_flight=ns.in_flight, size=ns.size, extra=extra
    )
    emulator_cpu = emu.cpu_seconds() - cpu0
    metrics = job_metrics(emu.stats())
    durations = metrics.pop("durations")
    best = best_makespan(durations, run["workers"], ns.in_flight)
    makespan = report["t_end"] - metrics["first_submit"]
    jobs = run["jobs"]
    row: dict[str, Any] = {
        **report,
        **metrics,
        "timing": run["name"],
        "lags": [round(x, 4) for x in metrics["lags"]],
        "makespan_s": makespan,
        "makespan_ratio": makespan / metrics["schedule_s"],
        "best_s": best,
        "best_ratio": makespan / best,
        "gpu_seconds": sum(durations),
        "cpu_ms_per_job": report["cpu_batch_s"] / jobs * 1000,
        "cpu_total_ms_per_job": report["cpu_total_s"] / jobs * 1000,
        "images": f"{report['images_written']} / {report['images_verified']}",
        "emulator_cpu_s": emulator_cpu,
    }
    print(
        f"  {run['name']:9} {client:16} makespan {makespan:.1f} s "
        f"(schedule {metrics['schedule_s']:.1f} s, perfect {best:.1f} s), "
        f"lag p50 {row['lag_p50_ms']:.0f} ms p99 {row['lag_p99_ms']:.0f} ms, "
        f"{row['fetch_per_job']:.2f} fetch/job, CPU {row['cpu_ms_per_job']:.2f} ms/job, "
        f"RSS {row['peak_rss_mb']:.0f} MB, {report['images_verified']}/{jobs} verified, "
        f"{report['failed']} failed",
        flush=True,
    )
    return row


def targets(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's targets, checked on this run's rows."""
    lines = []
    for timing in dict.fromkeys(r["timing"] for r in rows):
        by = {r["client"]: r for r in rows if r["timing"] == timing}
        ours = by.get("modelslab_async")
        if ours is None:
            continue
        checks = [
            ("lag p50 ≤ 200 ms", ours["lag_p50_ms"] <= 200),
            ("lag p99 ≤ 500 ms", ours["lag_p99_ms"] <= 500),
            ("≤ 3 fetch/job", ours["fetch_per_job"] <= 3),
            ("makespan ≤ 1.05 × schedule", ours["makespan_ratio"] <= 1.05),
            ("0 duplicate submits", ours["duplicates"] == 0),
        ]
        if "hand_loop" in by:
            checks.append(("CPU ≤ 1.3 × hand loop", ours["cpu_ratio"] <= 1.3))
        text = ", ".join(f"{name}: {'met' if ok else 'NOT met'}" for name, ok in checks)
        lines.append(f"- {timing}: {text}")
    return lines


def chart(rows: list[dict[str, Any]], runs: list[dict[str, Any]], path: Path) -> Path | None:
    """Poll-lag ECDF and makespan bars per client, one row of panels per timing."""
    if importlib.util.find_spec("matplotlib") is None:
        print("matplotlib is not installed (pip install -e '.[bench]'): no chart")
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"modelslab_async": "tab:blue", "official": "tab:red", "hand_loop": "tab:green"}
    fig, axes = plt.subplots(len(runs), 2, figsize=(12, 4.2 * len(runs)), squeeze=False)
    for (lag_ax, bar_ax), run in zip(axes, runs, strict=True):
        these = [r for r in rows if r["timing"] == run["name"]]
        lo, hi = run["duration"]
        title = f"{run['name']}: {lo:g}–{hi:g} s/image, {run['workers']} GPU workers"
        for r in these:
            lags = sorted(max(x, 1e-3) for x in r["lags"])
            if not lags:
                continue
            ys = [(i + 1) / len(lags) for i in range(len(lags))]
            lag_ax.step(
                lags, ys, where="post", color=colours[r["client"]], label=LABELS[r["client"]]
            )
        interval = run["official_interval"] or OFFICIAL_DEFAULT_INTERVAL
        lag_ax.axvline(
            interval,
            color="tab:red",
            linestyle=":",
            linewidth=1,
            label=f"official fetch interval ({interval:g} s)",
        )
        lag_ax.set_xscale("log")
        lag_ax.set_xlabel("poll lag: first success served − job ready (s, log)")
        lag_ax.set_ylabel("fraction of jobs")
        lag_ax.set_title(f"poll lag, {title}", fontsize=10)
        lag_ax.grid(True, which="both", alpha=0.3)
        lag_ax.legend(loc="upper left", fontsize=8)

        names = [LABELS[r["client"]] for r in these]
        spans = [r["makespan_s"] for r in these]
        bars = bar_ax.barh(names, spans, color=[colours[r["client"]] for r in these])
        for bar, r in zip(bars, these, strict=True):
            bar_ax.text(
                bar.get_width(),
                bar.get_y() + bar.get_height() / 2,
                f" {r['makespan_s']:.0f} s ({r['best_ratio']:.2f}× perfect)",
                va="center",
                fontsize=8,
            )
        if these:
            bar_ax.axvline(
                these[0]["best_s"],
                color="black",
                linestyle="--",
                linewidth=1,
                label="perfect client (same in-flight cap, zero lag)",
            )
            bar_ax.legend(loc="lower right", fontsize=8)
        bar_ax.set_xlabel(f"makespan (s), {these[0]['jobs'] if these else 0} jobs")
        bar_ax.set_title(f"makespan, {title}", fontsize=10)
        bar_ax.invert_yaxis()
        bar_ax.set_xlim(0, max(spans, default=1) * 1.45)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pair(text: str) -> tuple[float, float]:
    lo, _, hi = text.partition(",")
    return float(lo), float(hi or lo)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=1000, help="jobs of the fast run")
    parser.add_argument("--realistic-jobs", type=int, default=200, help="jobs of the realistic run")
    parser.add_argument("--quick", action="store_true", help="fast 200 jobs, realistic 16 jobs")
    parser.add_argument("--only", nargs="*", choices=("fast", "realistic"), help="timings to run")
    parser.add_argument("--clients", nargs="*", choices=CLIENTS, help="clients to run")
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--size", type=int, default=512, help="image width = height")
    parser.add_argument("--fast-duration", type=_pair, default=(1.0, 3.0), metavar="LO,HI")
    parser.add_argument("--fast-workers", type=int, default=16)
    parser.add_argument("--realistic-duration", type=_pair, default=(4.0, 8.0), metavar="LO,HI")
    parser.add_argument("--realistic-workers", type=int, default=4)
    parser.add_argument(
        "--min-interval", type=float, default=0.1, help="the hand loop's floor under eta"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-chart", action="store_true")
    ns = parser.parse_args()
    if ns.quick:
        ns.jobs, ns.realistic_jobs = 200, 16
    clients = [c for c in CLIENTS if not ns.clients or c in ns.clients]
    if "official" in clients and importlib.util.find_spec("modelslab_py") is None:
        raise SystemExit("the official SDK is not installed: pip install -e '.[bench]'")

    runs = timings(ns)
    official_version = importlib.metadata.version("modelslab-py") if "official" in clients else None
    rows: list[dict[str, Any]] = []
    for run in runs:
        lo, hi = run["duration"]
        options = ["--workers", str(run["workers"]), "--duration", f"{lo:g},{hi:g}"]
        options += ["--seed", str(ns.seed), "--no-draw-prompt"]
        with EmulatorProcess(options) as emu:
            print(f"{run['name']}: emulator at {emu.root} ({' '.join(options)})", flush=True)
            these = [measure(emu, client, run, ns) for client in clients]
        hand = next((r for r in these if r["client"] == "hand_loop"), None)
        for r in these:
            r["cpu_ratio"] = r["cpu_ms_per_job"] / hand["cpu_ms_per_job"] if hand else float("nan")
        rows += these

    print()
    for run in runs:
        lo, hi = run["duration"]
        print(
            f"### {run['name']} timings: {run['jobs']:,} jobs, {lo:g}–{hi:g} s per image, "
            f"{run['workers']} GPU workers, {ns.in_flight} in flight"
            + (
                f"; official SDK {official_version}: {run['official_note']}"
                if official_version
                else ""
            )
        )
        print()
        these = [r for r in rows if r["timing"] == run["name"]]
        print(table([{**r, "client": LABELS[r["client"]]} for r in these], COLUMNS))
        print()
    for line in targets(rows):
        print(line)

    png = None if ns.no_chart else chart(rows, runs, RESULTS / "compare.png")
    path = write_json(
        "compare",
        {
            "config": {
                "in_flight": ns.in_flight,
                "size": ns.size,
                "seed": ns.seed,
                "hand_loop_min_interval": ns.min_interval,
                "official_sdk_version": official_version,
                "runs": runs,
            },
            "targets": targets(rows),
            "rows": rows,
            "chart": str(png) if png else None,
        },
    )
    print(f"\nwrote {path}" + (f" and {png}" if png else ""))


if __name__ == "__main__":
    main()
