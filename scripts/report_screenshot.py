"""Make docs/report.png: the README demo batch (examples/prompts.txt) against the emulator,
its report.html, and a screenshot of it in headless Chromium.

    .venv/bin/python scripts/report_screenshot.py [--out /tmp/report-demo] [--png docs/report.png]

Needs the [dev] extra (playwright, driving the system Chromium: scripts/install-test-deps.sh
installs it; never `playwright install`). No network: some jobs are made to fail by the
emulator. The batch engine records each item's prompt, seed and generation time in the
manifest, where the report reads them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio

from modelslab_async import Client, Text2ImgRequest
from modelslab_async._report import write_report
from modelslab_async.emulator import Emulator, EmulatorConfig

ROOT = Path(__file__).resolve().parents[1]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def prompts() -> list[str]:
    lines = (ROOT / "examples" / "prompts.txt").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


async def batch(out: Path) -> dict[str, float]:
    manifest = out / "manifest.jsonl"
    texts = prompts()
    config = EmulatorConfig(workers=4, duration=(0.4, 1.2), fail_rate=0.15, seed=11)
    started = time.monotonic()
    async with Emulator(config) as emu, Client("demo-key", base_url=emu.base_url) as client:
        items = [Text2ImgRequest(prompt=p, seed=1000 + i) for i, p in enumerate(texts)]
        results = [
            r
            async for r in client.generate_many(items, dest=out, manifest=manifest, max_resubmits=0)
        ]
        wall = time.monotonic() - started
        lags = sorted(emu.stats.poll_lags())
    print(f"{sum(r.ok for r in results)} done, {sum(not r.ok for r in results)} failed")
    return {
        "wall_time": wall,
        "lag_p50": statistics.median(lags),
        "lag_p99": lags[min(len(lags) - 1, round(0.99 * (len(lags) - 1)))],
    }


def screenshot(report: Path, png: Path, profile: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        page = context.new_page()
        page.goto(report.resolve().as_uri(), wait_until="load")
        page.evaluate(
            "() => Promise.all([...document.images].map(i => (i.loading = 'eager', i.decode())))"
        )
        page.screenshot(path=str(png), full_page=True)
        context.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="batch folder (default: temp)")
    parser.add_argument("--png", type=Path, default=ROOT / "docs" / "report.png")
    args = parser.parse_args()
    png = args.png.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out
        if out is None:  # `out` as in the README demo (`--out out/`), run from a temp folder
            os.chdir(tmp)
            out = Path("out")
        if out.exists():
            sys.exit(f"{out} exists: pass a new folder")
        stats = anyio.run(batch, out)
        report = write_report(out, title="Batch report: examples/prompts.txt", stats=stats)
        screenshot(report, png, Path(tmp) / "profile")
        print(f"{report} -> {png}")


if __name__ == "__main__":
    main()
