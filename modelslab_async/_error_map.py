"""Error answers -> exceptions: which class an error answer or HTTP error status raises.

The API answers most errors with HTTP 200 and ``"status": "error"`` (or ``"failed"``), its
message under ``message`` or ``messege``, as text, a list, or an object of per-field errors;
it may also answer 401/403/404/429/5xx. :func:`error_from_answer` reads both, by this table
(the first matching row wins):

=====================================================  ===========================
answer                                                 exception
=====================================================  ===========================
HTTP 401/403, or "api key", "invalid key", "unauthor"  AuthenticationError
HTTP 429, or "rate limit", "too many", "queue full",   RateLimitError (retry_after
"queued requests"                                      from the body, else header)
status ``failed``, or "try again"                      GenerationFailed (transient
                                                       when "try again")
HTTP 5xx                                               ServerError
a per-field message object, HTTP 400/404/405/413/422,  BadRequestError
"not found", "required", "invalid", "must be"
anything else                                          APIError
=====================================================  ===========================
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ._errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    GenerationFailed,
    JobId,
    ModelsLabError,
    RateLimitError,
    ServerError,
)
from ._redact import excerpt
from ._scalars import to_float, to_job_id_or_none


def api_message(data: Mapping[str, Any]) -> str | None:
    """The API's message as text, whatever its spelling or shape."""
    raw = data.get("message", data.get("messege"))
    if raw is None:
        raw = data.get("error")
    if raw is None:
        return None
    if isinstance(raw, Mapping):
        parts = []
        for field, errors in raw.items():
            if isinstance(errors, list | tuple):
                errors = "; ".join(str(e) for e in errors)
            parts.append(f"{field}: {errors}")
        return " | ".join(parts)
    if isinstance(raw, list | tuple):
        return "; ".join(str(e) for e in raw)
    return str(raw)


def _retry_after(data: Mapping[str, Any], header: float | None) -> float | None:
    """The body's ``retry_after`` when it is a number >= 0, else the header's value."""
    value = data.get("retry_after")
    try:
        parsed = to_float(value) if value is not None else None
    except ValueError:
        parsed = None
    if parsed is not None and math.isfinite(parsed) and parsed >= 0:
        return parsed
    return header


def _any_in(text: str, words: tuple[str, ...]) -> bool:
    return any(word in text for word in words)


def error_from_answer(
    data: Mapping[str, Any] | None,
    *,
    status_code: int | None,
    url: str | None = None,
    job_id: JobId | None = None,
    retry_after: float | None = None,
    body: bytes = b"",
) -> ModelsLabError:
    """The exception for an error answer (JSON ``error``/``failed`` or an HTTP error status).

    *data* is the decoded answer (None or a non-object when there was none); *retry_after*
    is the ``Retry-After`` header's value; *body* the raw bytes, quoted in a short excerpt.
    """
    data = data if isinstance(data, Mapping) else {}
    message = api_message(data)
    text = (message or "").lower()
    status = str(data.get("status", "")).lower()
    shown = excerpt(body) if body else None
    if job_id is None:
        job_id = to_job_id_or_none(data.get("id"))
    http = f"HTTP {status_code}" if status_code is not None else "answer"
    said = message or "no message"
    kw: dict[str, Any] = {
        "status_code": status_code,
        "api_message": message,
        "url": url,
        "job_id": job_id,
        "body": shown,
    }
    if status_code in (401, 403) or _any_in(text, ("api key", "invalid key", "unauthor")):
        return AuthenticationError(f"authentication failed ({http}): {said}", **kw)
    if status_code == 429 or _any_in(
        text, ("rate limit", "too many", "queue full", "queued requests")
    ):
        wait = _retry_after(data, retry_after)
        after = f"; retry after {wait:g}s" if wait is not None else ""
        return RateLimitError(f"rate limited ({http}): {said}{after}", retry_after=wait, **kw)
    if status == "failed" or "try again" in text:
        return GenerationFailed(job_id, message, transient="try again" in text)
    if status_code is not None and status_code >= 500:
        return ServerError(f"server error ({http}): {message or shown or 'no body'}", **kw)
    if (
        isinstance(data.get("message", data.get("messege")), Mapping)
        or status_code in (400, 404, 405, 413, 422)
        or _any_in(text, ("not found", "required", "invalid", "must be"))
    ):
        return BadRequestError(f"request rejected ({http}): {said}", **kw)
    return APIError(f"API error ({http}): {message or shown or 'no message'}", **kw)


__all__ = ["api_message", "error_from_answer"]
