"""The honest baseline: the aiohttp + asyncio.gather + Semaphore loop a user writes by hand.

For every prompt: submit ``POST {base_url}/images/text2img``; while the answer is
``processing``, sleep ``eta`` seconds (the latest ``eta`` the API gave, at least
``min_interval`` so that an ``eta`` of 0 does not turn into a busy loop) and fetch
``POST {fetch_result}``; then download every ``output`` link (retrying a 404, which the
real CDN answers for a moment after ``success``) and write it to ``{dest}/{index}-{n}.png``.
One ``asyncio.Semaphore(concurrency)`` bounds the jobs submitted and not yet resolved
(what the account's plan limits); downloads run after the slot is freed. All tasks are
created up front by ``asyncio.gather``, as such loops usually are.

It has no retries beyond the 404 one, no manifest and no resume: it is what the
benchmarks compare the SDK's CPU time, memory and poll lag with, not a recommended client.
Both ``batch_bench.py`` and ``compare.py`` run it (through ``_client_proc.py``). Standalone:

    python benchmarks/hand_loop.py --base-url http://127.0.0.1:8000/api/v6 --jobs 100 --dest out
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

PROMPT = "benchmark prompt {index}: a lighthouse on a cliff at dusk, oil on canvas"


def prompt_for(index: int) -> str:
    """The prompt of item ``index`` (every benchmarked client gets the same batch)."""
    return PROMPT.format(index=index)


class HandLoopError(Exception):
    """A job that did not end in ``success`` (or a link that never became ready)."""


@dataclass
class HandLoopSummary:
    """What one run of :func:`run` did."""

    ok: int = 0
    failed: int = 0
    images: int = 0
    fetch_calls: int = 0
    errors: Counter[str] = field(default_factory=Counter)


async def post_json(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Any:
    """POST a JSON body, return the decoded JSON answer (raises on a non-2xx status)."""
    async with session.post(url, json=body) as resp:
        resp.raise_for_status()
        return await resp.json(content_type=None)


async def download(
    session: aiohttp.ClientSession,
    url: str,
    path: Path,
    *,
    not_ready_interval: float = 0.25,
    not_ready_tries: int = 40,
    durable: bool = False,
) -> None:
    """GET ``url`` into ``path``; a 404 means "not there yet": wait and try again.
    ``durable``: write as the SDK does (a temporary file, fsynced and renamed, in a worker
    thread) instead of a plain blocking write."""
    for _ in range(not_ready_tries):
        async with session.get(url) as resp:
            if resp.status == 404:
                await asyncio.sleep(not_ready_interval)
                continue
            resp.raise_for_status()
            data = await resp.read()
        if durable:
            await asyncio.to_thread(_write_durable, path, data)
        else:
            # A plain blocking write, as such loops usually do (cheaper than a thread hop).
            path.write_bytes(data)  # noqa: ASYNC240
        return
    raise HandLoopError(f"{url} still 404 after {not_ready_tries} tries")


def _write_durable(path: Path, data: bytes) -> None:
    part = path.with_name(f".{path.name}.part")
    with open(part, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(part, path)


async def generate_one(
    session: aiohttp.ClientSession,
    sem: asyncio.Semaphore,
    summary: HandLoopSummary,
    *,
    base_url: str,
    key: str,
    index: int,
    prompt: str,
    size: int,
    dest: Path,
    min_interval: float,
    durable: bool = False,
) -> int:
    """Submit, poll every ``eta`` seconds, download; returns the number of images written."""
    async with sem:
        body = {
            "key": key,
            "prompt": prompt,
            "width": size,
            "height": size,
            "samples": 1,
            "seed": index,
        }
        data = await post_json(session, f"{base_url}/images/text2img", body)
        fetch_url = data.get("fetch_result") or f"{base_url}/images/fetch/{data.get('id')}"
        while data.get("status") == "processing":
            await asyncio.sleep(max(float(data.get("eta") or 0), min_interval))
            summary.fetch_calls += 1
            data = await post_json(session, fetch_url, {"key": key})
        if data.get("status") != "success":
            message = data.get("message") or data.get("messege")
            raise HandLoopError(f"job {index}: {data.get('status')}: {message}")
    links = data.get("output") or []
    for n, url in enumerate(links):
        await download(session, url, dest / f"{index}-{n}.png", durable=durable)
    return len(links)


async def run(
    base_url: str,
    prompts: Sequence[str],
    dest: Path,
    *,
    concurrency: int = 64,
    key: str = "bench-key",
    size: int = 512,
    min_interval: float = 0.1,
    durable: bool = False,
) -> HandLoopSummary:
    """Generate one image per prompt with at most ``concurrency`` jobs in flight
    (``durable``: see :func:`download`)."""
    dest.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
    summary = HandLoopSummary()
    sem = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        results = await asyncio.gather(
            *(
                generate_one(
                    session,
                    sem,
                    summary,
                    base_url=base_url.rstrip("/"),
                    key=key,
                    index=i,
                    prompt=prompt,
                    size=size,
                    dest=dest,
                    min_interval=min_interval,
                    durable=durable,
                )
                for i, prompt in enumerate(prompts)
            ),
            return_exceptions=True,
        )
    for result in results:
        if isinstance(result, BaseException):
            summary.failed += 1
            summary.errors[type(result).__name__] += 1
        else:
            summary.ok += 1
            summary.images += result
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0] if __doc__ else None,
    )
    parser.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8000/api/v6")
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--min-interval", type=float, default=0.1)
    parser.add_argument("--dest", type=Path, default=Path("hand-loop-out"))
    ns = parser.parse_args()
    prompts = [prompt_for(i) for i in range(ns.jobs)]
    started = time.monotonic()
    summary = asyncio.run(
        run(
            ns.base_url,
            prompts,
            ns.dest,
            concurrency=ns.concurrency,
            size=ns.size,
            min_interval=ns.min_interval,
        )
    )
    print(
        f"{summary.ok} ok, {summary.failed} failed, {summary.images} images, "
        f"{summary.fetch_calls} fetch calls in {time.monotonic() - started:.1f} s"
        + (f"; errors: {dict(summary.errors)}" if summary.errors else "")
    )


if __name__ == "__main__":
    main()
