"""The aiohttp.web application: text2img, fetch, image links, stats, reset and credits."""

from __future__ import annotations

import asyncio
import base64
import heapq
import json
import math
import time
from typing import Any

from aiohttp import web

from . import _answers as A
from ._config import EmulatorConfig
from ._faults import pick_fault, serve_5xx, serve_html_200, serve_mangled, serve_reset
from ._png import PngCache
from ._queue import GpuModel, Job
from ._rand import integer, uniform, unit, uuid4
from ._stats import EmulatorStats, JobStats, fingerprint
from ._validate import Text2Img, parse_int_id, validate_text2img
from ._webhooks import WebhookDispatcher

__all__ = ["EmulatorApp"]

_JSON = "application/json"
_HTML = "text/html; charset=utf-8"
_PNG = "image/png"
_TEXT = "text/plain; charset=utf-8"
_DATA_PREFIX = b"data:image/png;base64,"
_PREFIX_LEN = 36  # a UUID


class _Answer:
    """A computed answer before fault post-processing."""

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self,
        body: bytes,
        status: int = 200,
        content_type: str = _JSON,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.body = body
        self.status = status
        self.content_type = content_type
        self.headers = headers


class EmulatorApp:
    """All server state plus the request handlers. One instance per running emulator."""

    def __init__(self, config: EmulatorConfig, stats: EmulatorStats) -> None:
        self.config = config
        self.stats = stats
        self.webhooks = WebhookDispatcher(config, stats)
        self.png = PngCache(maxsize=128, draw_prompt=config.draw_prompt)
        self._id_base = 10_000_000 + integer(config.seed, "id-base", 0, 1_000_000)
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget all jobs, limits and statistics (a fresh emulator with the same config)."""
        cfg = self.config
        self.gpu = GpuModel(cfg.workers, cfg.duration)
        self.jobs: dict[int, Job] = {}
        self.by_prefix: dict[str, Job] = {}
        self._seq = 0
        self._unresolved: dict[str, list[float]] = {}
        self._buckets: dict[str, list[float]] = {}
        self._inflight = 0
        self._inflight_api = 0
        self._counters: dict[str, int] = {}
        self._credits: dict[str, int] = {}
        self.stats.reset()
        self.png.clear()
        self.webhooks.clear()

    def _next(self, name: str) -> int:
        n = self._counters.get(name, 0)
        self._counters[name] = n + 1
        return n

    def _mk(self, fixture_spelling: str) -> str:
        """The message key of an answer whose fixture uses ``fixture_spelling``."""
        mode = self.config.message_key
        if mode == "mixed":
            n = self._next("message-key")
            return "messege" if unit(self.config.seed, "message-key", n) < 0.5 else "message"
        if mode == "message":
            return "message"
        return fixture_spelling

    def _eta(self, job: Job, now: float) -> int:
        est = self.gpu.estimate(job, now)
        cfg = self.config
        if cfg.eta_mode == "under":
            est *= max(0.0, 1.0 - cfg.eta_error)
        elif cfg.eta_mode == "over":
            est *= 1.0 + cfg.eta_error
        return int(est + 0.5)

    # ------------------------------------------------------------------ app
    def make_app(self) -> web.Application:
        """The aiohttp application with every route."""
        app = web.Application(client_max_size=1024**2)
        r = app.router
        r.add_post("/api/v6/images/text2img", self.submit)
        for path in (
            "/api/v6/images/fetch/{id}",
            "/api/v6/images/fetch",
            "/api/v3/fetch/{id}",
            "/api/v3/dreambooth/fetch/{id}",
        ):
            r.add_post(path, self.fetch)
        for path in ("/generations/{name}", "/cdn/generations/{name}"):
            r.add_get(path, self.download)
        for path in ("/temp/{name}", "/cdn/temp/{name}"):
            r.add_get(path, self.download)
        r.add_get("/__emulator/stats", self.stats_handler)
        r.add_post("/__emulator/reset", self.reset_handler)
        r.add_post("/__emulator/credits", self.credits_handler)
        r.add_route("*", "/{tail:.*}", self.other)
        return app

    # ------------------------------------------------------------------ helpers
    def _error_status(self, status: int) -> int:
        return status if self.config.error_http_status else 200

    def _invalid_key(self) -> _Answer:
        body = A.dumps({"status": "error", "message": "Invalid Api Key", "tip": A.INVALID_KEY_TIP})
        return _Answer(body, self._error_status(401))

    def _generic_error(self, message: str, status: int) -> _Answer:
        body = A.dumps({"status": "error", self._mk("messege"): message})
        return _Answer(body, self._error_status(status))

    def _rate_limited(self, reason: str, message: str, retry_after: float | None = None) -> _Answer:
        self.stats.rate_limited += 1
        self.stats.rate_limited_by_reason[reason] += 1
        ra = self.config.retry_after if retry_after is None else retry_after
        body = A.dumps(
            {
                "status": "error",
                "message": message,
                "retry_after": int(ra) if ra == int(ra) else ra,
            }
        )
        return _Answer(body, 429, headers={"Retry-After": str(math.ceil(ra))})

    async def _body(self, request: web.Request) -> dict[str, Any] | None:
        raw = await request.read()
        if not raw:
            return {}
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return None
        return body if isinstance(body, dict) else None

    def _auth(self, body: dict[str, Any]) -> tuple[str, _Answer | None]:
        key = body.get("key")
        if not isinstance(key, str) or not key.strip():
            return "", self._invalid_key()
        allowed = self.config.keys
        if allowed is not None and key not in allowed:
            return key, self._invalid_key()
        return key, None

    def _rate_check(self, key: str, now: float) -> _Answer | None:
        rate = self.config.rate_limit
        if rate is None:
            return None
        capacity = max(1.0, rate)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = [capacity, now]
        tokens = min(capacity, bucket[0] + (now - bucket[1]) * rate)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return self._rate_limited(
                "rate", f"Rate limit exceeded. Maximum {rate:g} requests per second allowed."
            )
        bucket[0] = tokens - 1.0
        return None

    def _enter(self, endpoint: str, api: bool) -> _Answer | None:
        """Count a request in; a 429 answer when it exceeds ``max_concurrent_requests``."""
        self.stats.requests_by_endpoint[endpoint] += 1
        self._inflight += 1
        if self._inflight > self.stats.peak_concurrent_requests:
            self.stats.peak_concurrent_requests = self._inflight
        if api:
            self._inflight_api += 1
            limit = self.config.max_concurrent_requests
            if limit is not None and self._inflight_api > limit:
                return self._rate_limited(
                    "concurrent",
                    f"Rate limit exceeded. Maximum {limit} concurrent requests allowed.",
                )
        return None

    def _leave(self, api: bool) -> None:
        self._inflight -= 1
        if api:
            self._inflight_api -= 1

    async def _pre_faults(self, endpoint: str) -> tuple[str | None, web.StreamResponse | None]:
        """Draw this request's fault; serve 5xx / HTML-200 right away (no work done)."""
        ef = getattr(self.config.faults, endpoint)
        if not ef.any:
            return None, None
        n = self._next("fault." + endpoint)
        fault, slow = pick_fault(ef, self.config.seed, endpoint, n)
        if slow:
            self.stats.faults_served[endpoint + ".slow"] += 1
            await asyncio.sleep(ef.slow_delay)
        if fault == "http_5xx":
            self.stats.faults_served[endpoint + ".http_5xx"] += 1
            return fault, serve_5xx(self.config.seed, endpoint, n, self.config.retry_after)
        if fault == "html_200":
            self.stats.faults_served[endpoint + ".html_200"] += 1
            return fault, serve_html_200()
        return fault, None

    async def _respond(
        self, request: web.Request, endpoint: str, fault: str | None, answer: _Answer
    ) -> web.StreamResponse:
        """The answer as sent, mangled by a ``reset``/``truncated``/``malformed_json`` fault."""
        if fault is None:
            headers = {"Content-Type": answer.content_type}
            if answer.headers:
                headers.update(answer.headers)
            return web.Response(status=answer.status, body=answer.body, headers=headers)
        self.stats.faults_served[f"{endpoint}.{fault}"] += 1
        if fault == "reset":
            return serve_reset(request)
        return await serve_mangled(request, fault, answer.status, answer.body, answer.content_type)

    # ------------------------------------------------------------------ submit
    def _create_job(self, req: Text2Img, key: str, root: str, now: float) -> Job:
        cfg = self.config
        seq = self._seq
        self._seq += 1
        job_id = self._id_base + seq
        seed = req.seed if req.seed is not None else integer(cfg.seed, "seed", seq, 2**32)
        prefix = uuid4(cfg.seed, "file-prefix", seq)
        lo, hi = cfg.duration
        duration = sum(uniform(cfg.seed, "duration", seq, lo, hi, k) for k in range(req.samples))
        failed = cfg.fail_rate > 0 and unit(cfg.seed, "fail", seq) < cfg.fail_rate
        meta = req.meta(seed=seed, file_prefix=prefix, job_id=job_id)
        job = Job(
            id=job_id,
            seq=seq,
            key=key,
            samples=req.samples,
            width=req.width,
            height=req.height,
            seed=seed,
            prompt=req.prompt,
            file_prefix=prefix,
            base64=req.base64,
            temp=req.temp,
            webhook=req.webhook,
            track_id=req.track_id,
            meta_json=A.encode(meta),
            root=root,
            submitted_at=now,
            failed=failed,
        )
        self.gpu.schedule(job, now, duration)
        late = cfg.faults.late_links > 0 and unit(cfg.seed, "late-links", seq) < (
            cfg.faults.late_links
        )
        job.links_ready_at = job.ready_at + cfg.link_delay
        if late:
            job.links_ready_at += cfg.faults.late_links_delay
            self.stats.faults_served["late_links"] += 1
        self.jobs[job_id] = job
        self.by_prefix[prefix] = job
        if cfg.max_queued_per_key is not None:
            heapq.heappush(self._unresolved.setdefault(key, []), job.ready_at)
        queued = self.gpu.queued(now)
        stats = self.stats
        if queued > stats.peak_queue:
            stats.peak_queue = queued
        stats.total_jobs += 1
        fp = fingerprint(req.prompt, req.seed_sent, req.track_id)
        stats.submissions_by_fingerprint[fp] = stats.submissions_by_fingerprint.get(fp, 0) + 1
        stats.jobs[job_id] = JobStats(
            id=job_id,
            fingerprint=fp,
            samples=job.samples,
            submitted_at=now,
            started_at=job.started_at,
            ready_at=job.ready_at,
            links_ready_at=job.links_ready_at,
            failed=failed,
            eta_given=self._eta(job, now),
        )
        if job.webhook is not None:
            self.webhooks.schedule(job)
        return job

    def _queue_full(self, key: str, now: float) -> _Answer | None:
        limit = self.config.max_queued_per_key
        if limit is None:
            return None
        heap = self._unresolved.get(key)
        if heap is None:
            return None
        while heap and heap[0] <= now:
            heapq.heappop(heap)
        if len(heap) >= limit:
            return self._rate_limited(
                "queue",
                f"Rate limit exceeded. Maximum {limit} queued requests allowed.",
                self.config.queue_retry_after,
            )
        return None

    # ------------------------------------------------------------------ credits
    def credits_left(self, key: str) -> int | None:
        """Images *key* may still create; ``None``: unlimited (no ``credits`` configured)."""
        if self.config.credits is None:
            return None
        return self._credits.get(key, self.config.credits)

    def add_credits(self, key: str, credits: int) -> int | None:
        """Top up *key* by *credits* images; the balance after (``None``: unlimited)."""
        left = self.credits_left(key)
        if left is None:
            return None
        self._credits[key] = left + credits
        return left + credits

    def _charge(self, key: str, samples: int) -> _Answer | None:
        """Take ``samples`` credits from *key*; the HTTP 402 answer when it has too few."""
        left = self.credits_left(key)
        if left is None:
            return None
        if left < samples:
            self.stats.insufficient_credits += 1
            return _Answer(A.dumps({"status": "error", "message": A.INSUFFICIENT_CREDITS}), 402)
        self._credits[key] = left - samples
        return None

    async def _submit_answer(self, request: web.Request) -> tuple[_Answer, Job | None]:
        body = await self._body(request)
        if body is None:
            return self._bad_json(), None
        key, denied = self._auth(body)
        if denied is not None:
            return denied, None
        now = time.monotonic()
        limited = self._rate_check(key, now)
        if limited is not None:
            return limited, None
        req = validate_text2img(body)
        if isinstance(req, dict):
            payload = A.dumps({"status": "error", "message": req})
            return _Answer(payload, self._error_status(422)), None
        full = self._queue_full(key, now)
        if full is not None:
            return full, None
        broke = self._charge(key, req.samples)
        if broke is not None:
            return broke, None
        job = self._create_job(req, key, "http://" + request.host, now)
        wait = job.ready_at - now
        if wait > self.config.sync_threshold:
            return _Answer(
                A.processing_submit_body(job, self._eta(job, now), self._mk("messege"))
            ), None
        if wait > 0:
            await asyncio.sleep(wait)
        if job.failed:
            return _Answer(A.failed_body(self._mk("message"))), job
        return _Answer(A.success_body(job)), job

    def _bad_json(self) -> _Answer:
        body = A.dumps(
            {"status": "error", self._mk("messege"): "Invalid JSON body", "tip": A.INVALID_KEY_TIP}
        )
        return _Answer(body, self._error_status(400))

    def _served(self, job: Job | None, fault: str | None) -> None:
        """Record that a final answer for ``job`` reached the client intact."""
        if job is None or fault is not None:
            return
        js = self.stats.jobs.get(job.id)
        if js is None:
            return
        now = time.monotonic()
        if job.failed:
            if js.first_failed_at is None:
                js.first_failed_at = now
        elif js.first_success_at is None:
            js.first_success_at = now

    async def submit(self, request: web.Request) -> web.StreamResponse:
        """``POST /api/v6/images/text2img``."""
        limited = self._enter("submit", api=True)
        try:
            if limited is not None:
                return await self._respond(request, "submit", None, limited)
            fault, early = await self._pre_faults("submit")
            if early is not None:
                return early
            answer, final = await self._submit_answer(request)
            resp = await self._respond(request, "submit", fault, answer)
            self._served(final, fault)
            return resp
        finally:
            self._leave(api=True)

    # ------------------------------------------------------------------ fetch
    async def _fetch_answer(self, request: web.Request) -> tuple[_Answer, Job | None]:
        body = await self._body(request)
        if body is None:
            return self._bad_json(), None
        key, denied = self._auth(body)
        if denied is not None:
            return denied, None
        now = time.monotonic()
        limited = self._rate_check(key, now)
        if limited is not None:
            return limited, None
        raw_id = request.match_info.get("id")
        if raw_id is None:
            raw_id = body.get("request_id", body.get("id"))
        job_id = parse_int_id(raw_id)
        job = self.jobs.get(job_id) if job_id is not None else None
        if job is None or job.key != key:
            return self._generic_error("Request not found", 404), None
        js = self.stats.jobs.get(job.id)
        if js is not None:
            js.fetch_calls += 1
        if now < job.ready_at:
            return _Answer(
                A.processing_fetch_body(job, self._eta(job, now), self._mk("messege"))
            ), None
        if job.failed:
            return _Answer(A.failed_body(self._mk("message"))), job
        return _Answer(A.success_body(job)), job

    async def fetch(self, request: web.Request) -> web.StreamResponse:
        """``POST /api/v6/images/fetch/{id}`` (and ``/fetch`` with ``request_id``, v3 paths)."""
        limited = self._enter("fetch", api=True)
        try:
            if limited is not None:
                return await self._respond(request, "fetch", None, limited)
            fault, early = await self._pre_faults("fetch")
            if early is not None:
                return early
            answer, final = await self._fetch_answer(request)
            resp = await self._respond(request, "fetch", fault, answer)
            self._served(final, fault)
            return resp
        finally:
            self._leave(api=True)

    # ------------------------------------------------------------------ download
    def _not_found(self) -> _Answer:
        return _Answer(A.HTML_404, 404, _HTML)

    def _download_answer(self, request: web.Request) -> tuple[_Answer, Job | None, int]:
        name = request.match_info["name"]
        stem, dot, ext = name.rpartition(".")
        prefix, dash, index_text = stem.rpartition("-")
        job = self.by_prefix.get(prefix) if dot and dash else None
        if job is None or not index_text.isdigit():
            return self._not_found(), None, 0
        index = int(index_text)
        js = self.stats.jobs.get(job.id)
        if js is not None:
            js.download_attempts += 1
        if (
            index >= job.samples
            or ext != ("base64" if job.base64 else "png")
            or job.failed
            or time.monotonic() < job.links_ready_at
        ):
            return self._not_found(), None, 0
        png = self.png.get(job.seed, job.prompt, job.width, job.height, index)
        if not job.base64:
            return _Answer(png, 200, _PNG), job, index
        text = base64.b64encode(png)
        if self.config.base64_prefix:
            text = _DATA_PREFIX + text
        return _Answer(text, 200, _TEXT), job, index

    async def download(self, request: web.Request) -> web.StreamResponse:
        """``GET /generations/{name}`` and friends: 404 (HTML) until ready, then the image."""
        self._enter("download", api=False)
        try:
            fault, early = await self._pre_faults("download")
            if early is not None:
                return early
            answer, job, index = self._download_answer(request)
            resp = await self._respond(request, "download", fault, answer)
            if job is not None and fault is None and request.method == "GET":
                js = self.stats.jobs.get(job.id)
                if js is not None and index not in js.downloads:
                    js.downloads[index] = time.monotonic()
            return resp
        finally:
            self._leave(api=False)

    # ------------------------------------------------------------------ control
    async def stats_handler(self, request: web.Request) -> web.Response:
        """``GET /__emulator/stats`` (``?jobs=0`` omits the per-job table)."""
        self.stats.requests_by_endpoint["other"] += 1
        include = request.query.get("jobs", "1") not in ("0", "false", "no")
        return web.json_response(self.stats.to_dict(include_jobs=include))

    async def reset_handler(self, request: web.Request) -> web.Response:
        """``POST /__emulator/reset``: forget all jobs and statistics."""
        self.reset()
        return web.json_response({"status": "success"})

    async def credits_handler(self, request: web.Request) -> web.Response:
        """``POST /__emulator/credits`` with ``{"key": ..., "credits": N}``: top *key* up by N."""
        self.stats.requests_by_endpoint["other"] += 1
        body = await self._body(request)
        key = body.get("key") if body else None
        credits = body.get("credits") if body else None
        if (
            not isinstance(key, str)
            or not key.strip()
            or not isinstance(credits, int)
            or isinstance(credits, bool)
            or credits < 1
        ):
            message = 'expected a JSON object {"key": "<non-empty string>", "credits": <int >= 1>}'
            return web.json_response({"status": "error", "message": message}, status=400)
        return web.json_response({"status": "success", "credits": self.add_credits(key, credits)})

    async def other(self, request: web.Request) -> web.Response:
        """Any other path: an HTML 404 like the real site."""
        self.stats.requests_by_endpoint["other"] += 1
        return web.Response(status=404, body=A.HTML_404, headers={"Content-Type": _HTML})
