"""Fault answers: 5xx, connection reset, truncated body, HTML with 200, malformed JSON.

Which fault (if any) a request gets is drawn per endpoint from ``(seed, endpoint, n)`` where
``n`` counts that endpoint's requests, so a sequential client sees a reproducible sequence.
"""

from __future__ import annotations

import contextlib
import math
import socket
import struct

from aiohttp import web

from ._answers import HTML_CLOUDFLARE, dumps
from ._config import EXCLUSIVE_FAULTS, EndpointFaults
from ._rand import integer, unit

__all__ = ["pick_fault", "serve_5xx", "serve_html_200", "serve_mangled", "serve_reset"]

_HTML_502 = (
    b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head><body>"
    b"<center><h1>502 Bad Gateway</h1></center><hr><center>cloudflare</center></body></html>\n"
)
_HTML_503 = (
    b"<!DOCTYPE html>\n<html><head><title>503 Service Temporarily Unavailable</title></head>"
    b"<body><center><h1>503 Service Temporarily Unavailable</h1></center><hr>"
    b"<center>nginx</center></body></html>\n"
)
_HTML = "text/html; charset=utf-8"


def pick_fault(faults: EndpointFaults, seed: int, endpoint: str, n: int) -> tuple[str | None, bool]:
    """``(exclusive fault name or None, slow?)`` for request number ``n`` of ``endpoint``."""
    if not faults.any:
        return None, False
    slow = faults.slow > 0 and unit(seed, "slow." + endpoint, n) < faults.slow
    u = unit(seed, "fault." + endpoint, n)
    acc = 0.0
    for name in EXCLUSIVE_FAULTS:
        acc += getattr(faults, name)
        if u < acc:
            return name, slow
    return None, slow


def serve_5xx(seed: int, endpoint: str, n: int, retry_after: float) -> web.Response:
    """A 500 (JSON), 502 (HTML) or 503 (HTML + Retry-After) answer, chosen by seed."""
    kind = integer(seed, "5xx." + endpoint, n, 3)
    if kind == 0:
        body = dumps({"status": "error", "message": "Server Error"})
        return web.Response(status=500, body=body, content_type="application/json")
    if kind == 1:
        return web.Response(status=502, body=_HTML_502, headers={"Content-Type": _HTML})
    headers = {"Content-Type": _HTML, "Retry-After": str(math.ceil(retry_after))}
    return web.Response(status=503, body=_HTML_503, headers=headers)


def serve_html_200() -> web.Response:
    """A Cloudflare-like HTML page with status 200."""
    return web.Response(status=200, body=HTML_CLOUDFLARE, headers={"Content-Type": _HTML})


def serve_reset(request: web.Request) -> web.Response:
    """Write part of a status line and headers, then reset the connection (RST)."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: applic")
        transport.abort()
    return web.Response(status=200)  # never written: the connection is gone


async def serve_mangled(
    request: web.Request, kind: str, status: int, body: bytes, content_type: str
) -> web.StreamResponse:
    """``truncated``: announce the full Content-Length, send half, close the connection.

    ``malformed_json``: status 200 and a consistent Content-Length, but the body is cut in
    half (invalid JSON, or a corrupt image for downloads).
    """
    half = body[: max(1, len(body) // 2)]
    if kind == "malformed_json":
        return web.Response(status=200, body=half, headers={"Content-Type": content_type})
    resp = web.StreamResponse(status=status, headers={"Content-Type": content_type})
    resp.content_length = len(body) + 1
    await resp.prepare(request)
    await resp.write(half)
    transport = request.transport
    if transport is not None:
        transport.close()
    return resp
