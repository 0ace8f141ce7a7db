"""What the emulator observed: per-job timings and aggregate counters.

All times are ``time.monotonic()`` seconds of the emulator's process (the same clock as
``asyncio``'s loop time), so an in-process client can compare them with its own clock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections import Counter
from typing import Any

import attrs

__all__ = ["EmulatorStats", "JobStats", "fingerprint"]


def fingerprint(prompt: object, seed: object, track_id: object) -> str:
    """sha256 of the canonical JSON ``[prompt, seed, track_id]`` (seed as sent, None if null).

    Numeric strings in ``seed`` count as the number (``"42"`` and ``42`` are the same request).
    """
    if isinstance(seed, str):
        with contextlib.suppress(ValueError):
            seed = int(seed.strip())
    canonical = json.dumps([prompt, seed, track_id], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@attrs.define(slots=True, eq=False)
class JobStats:
    """Timeline of one job. Contains no API key."""

    id: int
    fingerprint: str
    samples: int
    submitted_at: float
    started_at: float
    ready_at: float
    links_ready_at: float
    failed: bool
    eta_given: int
    first_success_at: float | None = None
    first_failed_at: float | None = None
    fetch_calls: int = 0
    downloads: dict[int, float] = attrs.field(factory=dict)
    download_attempts: int = 0
    webhook_sent_at: float | None = None
    webhook_attempts: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping (``downloads`` keys become strings)."""
        d = attrs.asdict(self, recurse=False)
        d["downloads"] = {str(k): v for k, v in self.downloads.items()}
        return d


@attrs.define(slots=True, eq=False)
class EmulatorStats:
    """Live statistics of one emulator (``emu.stats``, ``GET /__emulator/stats``)."""

    jobs: dict[int, JobStats] = attrs.field(factory=dict)
    submissions_by_fingerprint: dict[str, int] = attrs.field(factory=dict)
    requests_by_endpoint: Counter[str] = attrs.field(factory=Counter)
    faults_served: Counter[str] = attrs.field(factory=Counter)
    rate_limited: int = 0
    rate_limited_by_reason: Counter[str] = attrs.field(factory=Counter)
    insufficient_credits: int = 0
    peak_concurrent_requests: int = 0
    peak_queue: int = 0
    total_jobs: int = 0
    webhook_failures: int = 0

    def duplicate_submissions(self) -> int:
        """Accepted submissions beyond the first per fingerprint (duplicate paid generations)."""
        return sum(n - 1 for n in self.submissions_by_fingerprint.values() if n > 1)

    def poll_lags(self) -> list[float]:
        """``first_success_at - ready_at`` of every job whose success was served."""
        return [
            j.first_success_at - j.ready_at
            for j in self.jobs.values()
            if j.first_success_at is not None and not j.failed
        ]

    def ideal_makespan(self) -> float:
        """Last ``ready_at`` minus first ``submitted_at``: the schedule the GPU model produced.

        Given the submit times the client chose, no client could have had all jobs ready
        sooner; compare a client's wall time with it.
        """
        if not self.jobs:
            return 0.0
        first = min(j.submitted_at for j in self.jobs.values())
        last = max(j.ready_at for j in self.jobs.values())
        return last - first

    def queue_limited(self) -> int:
        """Submits refused with the queue-limit answer (HTTP 429 "Maximum N queued ...")."""
        return self.rate_limited_by_reason["queue"]

    def fetches_per_job(self) -> float:
        """Mean number of fetch calls per job (0.0 when there are no jobs)."""
        if not self.jobs:
            return 0.0
        return sum(j.fetch_calls for j in self.jobs.values()) / len(self.jobs)

    def reset(self) -> None:
        """Forget everything."""
        self.jobs.clear()
        self.submissions_by_fingerprint.clear()
        self.requests_by_endpoint.clear()
        self.faults_served.clear()
        self.rate_limited_by_reason.clear()
        self.rate_limited = 0
        self.insufficient_credits = 0
        self.peak_concurrent_requests = 0
        self.peak_queue = 0
        self.total_jobs = 0
        self.webhook_failures = 0

    def to_dict(self, include_jobs: bool = True) -> dict[str, Any]:
        """JSON-ready mapping of everything, plus the derived helpers' values."""
        lags = self.poll_lags()
        out: dict[str, Any] = {
            "total_jobs": self.total_jobs,
            "submissions_by_fingerprint": dict(self.submissions_by_fingerprint),
            "duplicate_submissions": self.duplicate_submissions(),
            "requests_by_endpoint": dict(self.requests_by_endpoint),
            "faults_served": dict(self.faults_served),
            "rate_limited": self.rate_limited,
            "rate_limited_by_reason": dict(self.rate_limited_by_reason),
            "queue_limited": self.queue_limited(),
            "insufficient_credits": self.insufficient_credits,
            "peak_concurrent_requests": self.peak_concurrent_requests,
            "peak_queue": self.peak_queue,
            "webhook_failures": self.webhook_failures,
            "ideal_makespan": self.ideal_makespan(),
            "fetches_per_job": self.fetches_per_job(),
            "poll_lag_mean": sum(lags) / len(lags) if lags else None,
            "poll_lag_max": max(lags) if lags else None,
        }
        if include_jobs:
            out["jobs"] = {str(k): j.to_dict() for k, j in self.jobs.items()}
        return out
