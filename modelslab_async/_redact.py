"""Keeps API keys out of messages, reprs, tracebacks and log records, and bounds messages.

Every client registers its key here; every exception message and body excerpt is passed
through :func:`redact`, and :class:`RedactingFilter` scrubs log records of the package's
loggers. The key itself is held as a :class:`Secret`, whose ``repr`` masks it, so error
reporters that capture the locals of every frame of a traceback (Sentry, ``pytest
--showlocals``, ``traceback.TracebackException(capture_locals=True)``) never see it. Keys
are held only in memory, in this process. :func:`truncate` bounds the text an error
carries (an API's error message can be megabytes).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

_lock = threading.Lock()
_secrets: dict[str, int] = {}
MASK = "***"
#: The longest message an exception, a log record or a manifest record carries.
MAX_MESSAGE_LENGTH = 4000


class Secret(str):
    """A string (the API key) whose ``repr`` masks it.

    It is still a ``str``: JSON serialisation writes its characters, which is where the key
    must appear (the request body). A dict holding it, such as a request body before it is
    serialised, shows ``***(N chars)`` in reprs and in the frame locals of tracebacks.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return mask(self)


def truncate(text: str, limit: int = MAX_MESSAGE_LENGTH) -> str:
    """*text* cut to at most *limit* characters, with a marker saying how much was cut."""
    if len(text) <= limit:
        return text
    marker = f" ... [cut: {len(text)} characters in all]"
    return text[: limit - len(marker)] + marker


def register_secret(secret: str) -> None:
    """Remember *secret* so that :func:`redact` masks it (reference counted)."""
    if not secret:
        return
    with _lock:
        _secrets[secret] = _secrets.get(secret, 0) + 1


def unregister_secret(secret: str) -> None:
    """Forget one registration of *secret*."""
    with _lock:
        count = _secrets.get(secret, 0)
        if count <= 1:
            _secrets.pop(secret, None)
        else:
            _secrets[secret] = count - 1


def redact(text: str) -> str:
    """Return *text* with every registered secret replaced by ``***``."""
    if not _secrets or not text:
        return text
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def mask(secret: str | None) -> str:
    """A printable stand-in for a key: ``'***'`` plus its length, never its characters."""
    if not secret:
        return "<none>"
    return f"{MASK}({len(secret)} chars)"


class RedactingFilter(logging.Filter):
    """A logging filter that masks registered secrets in the message and its arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is the caller's bug; keep the record
            return True
        record.msg = truncate(redact(message))
        record.args = None
        return True


def _install() -> None:
    logger = logging.getLogger("modelslab_async")
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        logger.addFilter(RedactingFilter())
    logger.addHandler(logging.NullHandler())


_install()


def excerpt(body: bytes | str | Any, limit: int = 200) -> str:
    """A short, redacted, single-line excerpt of a response body for error messages."""
    if isinstance(body, bytes):
        text = body[: limit * 4].decode("utf-8", errors="replace")
    else:
        text = str(body)
    text = " ".join(redact(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
