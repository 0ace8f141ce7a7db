"""The GPU model: ``workers`` parallel workers draining one FIFO queue, solved analytically.

No task or timer exists per job. When a job is enqueued its start time is the later of "now"
and the earliest time a worker becomes free (a heap of worker-free times), and its ready time
is start + duration. For a FIFO queue this is the exact schedule. A job is *queued* while
``now < started_at``, *running* while ``started_at <= now < ready_at`` and *done* afterwards.
"""

from __future__ import annotations

import heapq
from collections import deque

__all__ = ["GpuModel", "Job"]


class Job:
    """Server-side record of one text2img job (the key is kept for per-key limits only)."""

    __slots__ = (
        "base64",
        "cum_before",
        "failed",
        "file_prefix",
        "height",
        "id",
        "key",
        "links_ready_at",
        "meta_json",
        "prompt",
        "ready_at",
        "root",
        "samples",
        "seed",
        "seq",
        "started_at",
        "submitted_at",
        "temp",
        "track_id",
        "webhook",
        "width",
    )

    def __init__(
        self,
        *,
        id: int,
        seq: int,
        key: str,
        samples: int,
        width: int,
        height: int,
        seed: int,
        prompt: str,
        file_prefix: str,
        base64: bool,
        temp: bool,
        webhook: str | None,
        track_id: object,
        meta_json: str,
        root: str,
        submitted_at: float,
        failed: bool,
    ) -> None:
        self.id = id
        self.seq = seq
        self.key = key
        self.samples = samples
        self.width = width
        self.height = height
        self.seed = seed
        self.prompt = prompt
        self.file_prefix = file_prefix
        self.base64 = base64
        self.temp = temp
        self.webhook = webhook
        self.track_id = track_id
        self.meta_json = meta_json
        self.root = root
        self.submitted_at = submitted_at
        self.failed = failed
        self.started_at = submitted_at
        self.ready_at = submitted_at
        self.links_ready_at = submitted_at
        self.cum_before = 0

    @classmethod
    def for_queue(cls, seq: int, submitted_at: float, samples: int = 1) -> Job:
        """A job with only what :class:`GpuModel` reads set (simulations, queue tests)."""
        return cls(
            id=seq,
            seq=seq,
            key="k",
            samples=samples,
            width=512,
            height=512,
            seed=seq,
            prompt="",
            file_prefix=str(seq),
            base64=False,
            temp=False,
            webhook=None,
            track_id=None,
            meta_json="{}",
            root="",
            submitted_at=submitted_at,
            failed=False,
        )

    @property
    def generation_time(self) -> float:
        """Seconds the job spent on a GPU worker."""
        return self.ready_at - self.started_at


class GpuModel:
    """FIFO queue over ``workers`` workers with per-image durations uniform in ``duration``."""

    def __init__(self, workers: int, duration: tuple[float, float]) -> None:
        self.workers = workers
        self.lo, self.hi = duration
        self.mean = (self.lo + self.hi) / 2.0
        self._free: list[float] = [0.0] * workers
        self._waiting: deque[Job] = deque()  # jobs not started at the last prune, FIFO
        self._samples_total = 0

    def schedule(self, job: Job, now: float, duration: float) -> None:
        """Place ``job`` in the queue: fills ``cum_before``, ``started_at`` and ``ready_at``."""
        free = heapq.heappop(self._free)
        start = max(now, free)
        job.started_at = start
        job.ready_at = start + duration
        heapq.heappush(self._free, job.ready_at)
        job.cum_before = self._samples_total
        self._samples_total += job.samples
        if start > now:
            self._waiting.append(job)

    def queued(self, now: float) -> int:
        """Number of jobs waiting for a worker at ``now``."""
        waiting = self._waiting
        while waiting and waiting[0].started_at <= now:
            waiting.popleft()
        return len(waiting)

    def estimate(self, job: Job, now: float) -> float:
        """Honest expected seconds until ``job`` is ready, from queue position and mean times.

        Running job: the conditional mean of a uniform total duration given the time already
        spent. Queued job: the (sample-weighted) work ahead of it shared by all workers, plus
        half a job for the busy worker it waits for, plus its own mean duration.
        """
        if now >= job.ready_at:
            return 0.0
        lo, hi = self.lo * job.samples, self.hi * job.samples
        if now >= job.started_at:
            elapsed = now - job.started_at
            return max(0.0, (max(elapsed, lo) + hi) / 2.0 - elapsed)
        self.queued(now)
        first = self._waiting[0] if self._waiting else job
        ahead = job.cum_before - first.cum_before
        return (ahead + 0.5) * self.mean / self.workers + self.mean * job.samples

    def reset(self) -> None:
        """Forget every job (all workers free)."""
        self._free = [0.0] * self.workers
        self._waiting.clear()
        self._samples_total = 0
