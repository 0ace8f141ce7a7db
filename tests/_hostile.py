"""Small hostile servers on 127.0.0.1 (aiohttp.web) and the measures the hardening tests take.

:func:`hostile` serves one handler on every path and method and records each request as it
arrived (raw path, headers, body), so a test can tell what a client sent where. The
bodies here are what a malicious or broken server can answer: redirects, gzip bombs,
endless JSON.
"""

from __future__ import annotations

import functools
import struct
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

import attrs
from aiohttp import web
from aiohttp.test_utils import TestServer

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@functools.cache
def png(size: int = 8) -> bytes:
    """A small, whole PNG (Pillow)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (200, 40, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


@attrs.define
class Arrival:
    """One request as the hostile server received it."""

    at: float
    method: str
    raw_path: str
    headers: dict[str, str]
    body: bytes


@attrs.define
class Hostile:
    base_url: str
    host_port: str
    seen: list[Arrival]


@asynccontextmanager
async def hostile(handler: Handler) -> AsyncIterator[Hostile]:
    """Serve *handler* for every path and method on 127.0.0.1 (a free port)."""
    seen: list[Arrival] = []

    async def record(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen.append(
            Arrival(time.monotonic(), request.method, request.raw_path, dict(request.headers), body)
        )
        return await handler(request)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", record)
    async with TestServer(app, host="127.0.0.1", port=0) as server:
        base = str(server.make_url("/")).rstrip("/")
        yield Hostile(base, f"127.0.0.1:{server.port}", seen)


@functools.cache
def gzip_bomb(mib: int = 1024) -> bytes:
    """A valid gzip stream of *mib* MiB of zeros in about 1 MB: the compressed form of one
    MiB repeated (its deflate blocks end on a sync flush, so they repeat byte for byte)."""
    block = bytes(1 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    head = compressor.compress(block) + compressor.flush(zlib.Z_SYNC_FLUSH)
    repeat = compressor.compress(block) + compressor.flush(zlib.Z_SYNC_FLUSH)
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(block, crc)
    final_empty_block = b"\x03\x00"
    trailer = struct.pack("<II", crc, (mib << 20) & 0xFFFFFFFF)
    return head + repeat * (mib - 1) + final_empty_block + trailer


async def stream_json(request: web.Request, total: int, status: int = 200) -> web.StreamResponse:
    """A JSON-looking answer of *total* bytes, written in 64 KiB chunks until the client
    stops reading (no Content-Length)."""
    response = web.StreamResponse(status=status, headers={"Content-Type": "application/json"})
    await response.prepare(request)
    await response.write(b'{"status": "success", "output": ["')
    chunk = b"a" * 65536
    sent = 0
    try:
        while sent < total:
            await response.write(chunk)
            sent += len(chunk)
        await response.write(b'"]}')
    except (ConnectionError, RuntimeError):
        pass  # the client hung up: what the test wants
    return response


@contextmanager
def peak_python_memory() -> Iterator[list[float]]:
    """Yields a list that holds, after the block, the peak growth in MB of the memory Python
    allocated during it (tracemalloc: bytes objects, buffers, parsed JSON)."""
    result: list[float] = []
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        yield result
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        if started:
            tracemalloc.stop()
        result.append((peak - base) / 2**20)
