"""A real aiohttp.web server on 127.0.0.1 that answers from a script (no mocks of aiohttp).

Each endpoint plays its list of actions in order, repeating the last one; every request is
recorded (arrival time, path, headers, body) so tests can count attempts and measure waits.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import attrs
from aiohttp import web
from aiohttp.test_utils import TestServer

Action = Callable[[web.Request, bytes], Awaitable[web.StreamResponse]]

SUBMIT = "/images/text2img"
RELEASE = web.AppKey("release", anyio.Event)
FETCH = "/images/fetch/{id}"


@attrs.define
class Seen:
    """One request as the server received it."""

    at: float
    path: str
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@attrs.define
class ScriptedServer:
    base_url: str
    seen: list[Seen]
    release: anyio.Event

    def count(self, endpoint: str = "") -> int:
        return sum(1 for s in self.seen if endpoint in s.path)

    def gaps(self) -> list[float]:
        """Seconds between consecutive requests' arrivals."""
        return [b.at - a.at for a, b in zip(self.seen, self.seen[1:], strict=False)]


def answer(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Action:
    """A JSON answer."""

    async def act(request: web.Request, body: bytes) -> web.StreamResponse:
        return web.json_response(data, status=status, headers=headers)

    return act


def raw(
    text: str | bytes,
    status: int = 200,
    content_type: str = "text/html",
    headers: Mapping[str, str] | None = None,
) -> Action:
    """A non-JSON (or broken JSON) answer."""
    payload = text.encode() if isinstance(text, str) else text

    async def act(request: web.Request, body: bytes) -> web.StreamResponse:
        return web.Response(body=payload, status=status, content_type=content_type, headers=headers)

    return act


def reset() -> Action:
    """Read the request, then abort the connection without an answer."""

    async def act(request: web.Request, body: bytes) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.abort()
        return web.Response(status=500)

    return act


def stall() -> Action:
    """Never answer (until the test ends): the client's read timeout fires."""

    async def act(request: web.Request, body: bytes) -> web.StreamResponse:
        await request.app[RELEASE].wait()
        return web.Response(status=500)

    return act


def echo(build: Callable[[bytes], Action]) -> Action:
    """An action built from the request body (to echo it back in an error page)."""

    async def act(request: web.Request, body: bytes) -> web.StreamResponse:
        return await build(body)(request, body)

    return act


SUCCESS = {
    "status": "success",
    "generationTime": 1.5,
    "id": 12384052,
    "output": ["https://cdn.example/generations/a-0.png"],
    "meta": {"seed": 7, "W": 512, "H": 512},
}
PROCESSING = {
    "status": "processing",
    "eta": 3,
    "messege": "Try to fetch request after seconds estimated",
    "fetch_result": "https://modelslab.com/api/v6/images/fetch/13441520",
    "id": 13441520,
    "output": [],
    "future_links": ["https://cdn.example/generations/b-0.png"],
}


@asynccontextmanager
async def scripted(
    submit: list[Action] | None = None, fetch: list[Action] | None = None
) -> AsyncIterator[ScriptedServer]:
    """Serve *submit* and *fetch* scripts on 127.0.0.1 (a free port) for one test."""
    seen: list[Seen] = []
    release = anyio.Event()
    scripts = {
        "submit": list(submit or [answer(SUCCESS)]),
        "fetch": list(fetch or [answer(SUCCESS)]),
    }

    def handler(name: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            seen.append(Seen(time.monotonic(), request.path_qs, dict(request.headers), body))
            script = scripts[name]
            act = script.pop(0) if len(script) > 1 else script[0]
            return await act(request, body)

        return handle

    app = web.Application()
    app[RELEASE] = release
    app.router.add_post(SUBMIT, handler("submit"))
    app.router.add_post(FETCH, handler("fetch"))
    async with TestServer(app, host="127.0.0.1", port=0) as server:
        try:
            yield ScriptedServer(str(server.make_url("/")).rstrip("/"), seen, release)
        finally:
            release.set()
