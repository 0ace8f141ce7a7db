"""Webhook delivery: one scheduler task (a heap of due times), one short task per delivery.

Both run in the emulator's task group and are cancelled when the emulator exits.
"""

from __future__ import annotations

import asyncio
import heapq
import time

import aiohttp
import anyio
from anyio.abc import TaskGroup

from ._answers import webhook_body
from ._config import EmulatorConfig
from ._queue import Job
from ._rand import unit
from ._stats import EmulatorStats

__all__ = ["WebhookDispatcher"]

_HEADERS = {"Content-Type": "application/json", "User-Agent": "modelslab-emulator-webhook/1"}


class WebhookDispatcher:
    """Sends each job's webhook at its ready time, retrying on errors and non-2xx answers."""

    def __init__(self, config: EmulatorConfig, stats: EmulatorStats) -> None:
        self._config = config
        self._stats = stats
        self._heap: list[tuple[float, int, Job]] = []
        self._wake: anyio.Event | None = None
        self._session: aiohttp.ClientSession | None = None

    def schedule(self, job: Job) -> None:
        """Deliver ``job``'s webhook once it is ready."""
        heapq.heappush(self._heap, (job.ready_at, job.seq, job))
        if self._wake is not None and self._heap[0][2] is job:
            self._wake.set()

    def clear(self) -> None:
        """Forget pending deliveries."""
        self._heap.clear()

    async def run(self, session: aiohttp.ClientSession, tg: TaskGroup) -> None:
        """Scheduler loop; runs until cancelled."""
        self._session = session
        while True:
            self._wake = anyio.Event()
            now = time.monotonic()
            while self._heap and self._heap[0][0] <= now:
                _, _, job = heapq.heappop(self._heap)
                tg.start_soon(self._deliver, job)
            delay = self._heap[0][0] - now if self._heap else None
            with anyio.move_on_after(delay):
                await self._wake.wait()

    async def _deliver(self, job: Job) -> None:
        cfg = self._config
        stats = self._stats
        if cfg.webhook_drop_rate > 0 and unit(cfg.seed, "webhook.drop", job.seq) < (
            cfg.webhook_drop_rate
        ):
            stats.faults_served["webhook.drop"] += 1
            return
        url = job.webhook
        session = self._session
        if url is None or session is None:
            return
        job_stats = stats.jobs.get(job.id)
        body = webhook_body(job)
        timeout = aiohttp.ClientTimeout(total=5.0)
        for attempt in range(cfg.webhook_retries):
            if attempt:
                await anyio.sleep(min(0.1 * 2 ** (attempt - 1), 2.0))
            stats.requests_by_endpoint["webhook"] += 1
            if job_stats is not None:
                job_stats.webhook_attempts += 1
            try:
                async with session.post(url, data=body, headers=_HEADERS, timeout=timeout) as r:
                    await r.read()
                    ok = 200 <= r.status < 300
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                ok = False
            if ok:
                if job_stats is not None:
                    job_stats.webhook_sent_at = time.monotonic()
                return
        stats.webhook_failures += 1
