"""Answer bodies in the real service's shapes (see the fixtures) and the HTML pages."""

from __future__ import annotations

import json
from typing import Any

from ._queue import Job

__all__ = [
    "HTML_404",
    "HTML_CLOUDFLARE",
    "INSUFFICIENT_CREDITS",
    "INVALID_KEY_TIP",
    "dumps",
    "encode",
    "fetch_url",
    "dumps_with_meta",
    "failed_body",
    "links",
    "processing_fetch_body",
    "processing_submit_body",
    "success_body",
    "webhook_body",
]

_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)

INVALID_KEY_TIP = (
    "1. Make sure you are passing Content-Type: application/json in header. "
    "2. Make sure you are doing POST request with valid JSON. "
    "3. Make sure your JSON does not have error, use jsonlint to validate json array. "
    "4. Make sure you have valid API key."
)
PROCESSING_MESSAGE = "Try to fetch request after seconds estimated"
FAILED_MESSAGE = "Failed, Try Again"
# HTTP 402 of the API's error-codes page (docs.modelslab.com/error-codes).
INSUFFICIENT_CREDITS = "Insufficient credits. Please add more credits to continue."

HTML_404 = (
    b'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>404 Not Found</title></head>'
    b"<body><h1>404 Not Found</h1><p>The requested object does not exist (yet).</p></body>"
    b"</html>\n"
)
HTML_CLOUDFLARE = (
    b'<!DOCTYPE html>\n<html lang="en-US"><head><title>Just a moment...</title>'
    b'<meta http-equiv="Content-Type" content="text/html; charset=UTF-8"></head><body>'
    b'<div class="main-wrapper" role="main"><h1>modelslab.com</h1>'
    b"<h2>Checking if the site connection is secure</h2>"
    b"<p>Enable JavaScript and cookies to continue</p></div>"
    b'<div class="footer">Performance &amp; security by Cloudflare</div></body></html>\n'
)


def encode(value: Any) -> str:
    """Compact JSON text."""
    return _encoder.encode(value)


def dumps(payload: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON."""
    return _encoder.encode(payload).encode()


def dumps_with_meta(payload: dict[str, Any], meta_json: str) -> bytes:
    """``payload`` plus a trailing ``"meta"`` member whose JSON is already serialised."""
    head = _encoder.encode(payload)
    return (head[:-1] + ',"meta":' + meta_json + "}").encode()


def links(job: Job) -> tuple[list[str], list[str]]:
    """``(future_links/output, proxy_links)`` of a job; the emulator serves both."""
    prefix = f"{job.root}/temp/" if job.temp or job.base64 else f"{job.root}/generations/"
    proxy = f"{job.root}/cdn/temp/" if job.temp or job.base64 else f"{job.root}/cdn/generations/"
    ext = "base64" if job.base64 else "png"
    names = [f"{job.file_prefix}-{n}.{ext}" for n in range(job.samples)]
    return [prefix + n for n in names], [proxy + n for n in names]


def fetch_url(job: Job) -> str:
    """The job's ``fetch_result`` URL."""
    return f"{job.root}/api/v6/images/fetch/{job.id}"


def processing_submit_body(job: Job, eta: int, message_key: str) -> bytes:
    """text2img ``processing`` (fixtures/text2img-processing.json)."""
    future, proxy = links(job)
    payload: dict[str, Any] = {
        "status": "processing",
        "eta": eta,
        message_key: PROCESSING_MESSAGE,
        "fetch_result": fetch_url(job),
        "id": job.id,
        "output": [],
        "future_links": future,
        "proxy_links": proxy,
    }
    return dumps_with_meta(payload, job.meta_json)


def processing_fetch_body(job: Job, eta: int, message_key: str) -> bytes:
    """fetch ``processing`` (fixtures/fetch-processing-inferred.json)."""
    future, _ = links(job)
    return dumps(
        {
            "status": "processing",
            "id": job.id,
            "eta": eta,
            message_key: PROCESSING_MESSAGE,
            "fetch_result": fetch_url(job),
            "output": [],
            "future_links": future,
        }
    )


def success_body(job: Job) -> bytes:
    """``success`` of text2img or fetch (fixtures/text2img-success.json + ``proxy_links``)."""
    output, proxy = links(job)
    payload: dict[str, Any] = {
        "status": "success",
        "generationTime": job.generation_time,
        "id": job.id,
        "output": output,
        "proxy_links": proxy,
    }
    return dumps_with_meta(payload, job.meta_json)


def failed_body(message_key: str) -> bytes:
    """``failed`` (fixtures/fetch-failed.json)."""
    return dumps({"status": "failed", "id": "", message_key: FAILED_MESSAGE, "output": ""})


def webhook_body(job: Job) -> bytes:
    """The webhook POST body (fixtures/webhook-payload.json / webhook-payload-failed.json)."""
    if job.failed:
        return dumps(
            {
                "status": "failed",
                "id": job.id,
                "message": FAILED_MESSAGE,
                "track_id": job.track_id,
            }
        )
    output, _ = links(job)
    payload: dict[str, Any] = {
        "status": "success",
        "id": job.id,
        "output": output,
        "generationTime": job.generation_time,
        "track_id": job.track_id,
    }
    return dumps_with_meta(payload, job.meta_json)
