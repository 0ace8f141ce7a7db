"""Webhook mode: the API pushes "job done" to the application, the SDK confirms by fetching.

A :class:`WebhookReceiver` is mounted in the application's web server (an aiohttp route or
sub-application, or an ASGI app for FastAPI/Starlette), or runs its own small server in
the client's task group (``await client.webhooks(host, port, public_url)``). A client with
a receiver sends ``webhook`` (the receiver's public URL, with a secret token) and a unique
``track_id`` with each submit. When a POST for a known ``track_id`` arrives, the job's
waiter is woken by one fetch from the API: the payload is a wake-up signal and is never
trusted as the result, so a forged POST cannot inject image URLs.

The poller stays the safety net: a webhook job's first check is pushed back to
``eta + PollPolicy.webhook_grace``, so a lost webhook only delays a result.

Answers: 200 for a known ``track_id``; 403 without the receiver's token; 404 for an
unknown ``track_id``; 400 for a body that is not a JSON object; 413 over ``max_body``;
408 for a body not received within ``read_timeout``; 405 for other methods.

The token is checked before a byte of the body is read (compared as bytes, in constant
time), and reading stops at ``max_body``: a client without the token, or with an endless
body, costs neither memory nor more than ``read_timeout`` seconds of a handler.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import aiohttp
import anyio
from aiohttp import web

from ._errors import ConfigurationError

if TYPE_CHECKING:
    import anyio.abc

log = logging.getLogger("modelslab_async")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class WebhookReceiver:
    """Receives the API's webhook POSTs and wakes the matching waiters.

    ``public_url`` is the URL the API can reach the receiver at (set later with
    :meth:`set_public_url` when the port is not known yet). ``token`` (default: a random
    one) is added to it as ``?token=...`` and required on every POST; pass
    ``token=None`` to accept POSTs without one. Bodies over ``max_body`` bytes are refused,
    and so are bodies that take over ``read_timeout`` seconds to arrive.
    """

    def __init__(
        self,
        public_url: str | None = None,
        *,
        token: str | None = "",
        max_body: int = 256 * 1024,
        min_wake_interval: float = 0.25,
        read_timeout: float = 10.0,
    ) -> None:
        for name, value in (("max_body", max_body), ("read_timeout", read_timeout)):
            if isinstance(value, bool) or not (
                isinstance(value, int | float) and math.isfinite(value) and value > 0
            ):
                raise ConfigurationError(f"{name}: got {value!r}, allowed a finite number > 0")
        self.token = secrets.token_urlsafe(18) if token == "" else token
        self._token_bytes = self.token.encode() if self.token is not None else None
        self.max_body = max_body
        self.read_timeout = read_timeout
        self.min_wake_interval = min_wake_interval
        self._public_url: str | None = None
        self._expected: dict[str, Callable[[], None]] = {}
        self._early: set[str] = set()
        self._last_wake: dict[str, float] = {}
        self.stats: dict[str, int] = {
            "accepted": 0,
            "unknown": 0,
            "forbidden": 0,
            "bad_json": 0,
            "too_large": 0,
            "too_slow": 0,
        }
        if public_url is not None:
            self.set_public_url(public_url)

    def __repr__(self) -> str:
        return f"WebhookReceiver(url={self._public_url!r}, expected={len(self._expected)})"

    # --- configuration -------------------------------------------------------------------

    def set_public_url(self, public_url: str) -> None:
        """Set the URL the API posts to (the token is appended as a query parameter)."""
        _check_url(public_url)
        self._public_url = public_url

    @property
    def url(self) -> str:
        """The webhook URL sent with each request (with the token)."""
        if self._public_url is None:
            raise ConfigurationError("the webhook receiver has no public_url yet")
        if self.token is None:
            return self._public_url
        parts = urlsplit(self._public_url)
        query = parse_qs(parts.query, keep_blank_values=True)
        query["token"] = [self.token]
        return urlunsplit(parts._replace(query=urlencode(query, doseq=True)))

    # --- bookkeeping used by the client --------------------------------------------------

    def expect(self, track_id: str | int, wake: Callable[[], None]) -> None:
        """Wake *wake* when a POST for *track_id* arrives (at once if one already came)."""
        key = str(track_id)
        self._expected[key] = wake
        if key in self._early:
            self._early.discard(key)
            wake()

    def pending(self, track_id: str | int) -> None:
        """Note that a submit with *track_id* is on its way (an early POST is kept)."""
        self._expected.setdefault(str(track_id), _noop)

    def forget(self, track_id: str | int) -> None:
        key = str(track_id)
        self._expected.pop(key, None)
        self._early.discard(key)
        self._last_wake.pop(key, None)

    @property
    def expected(self) -> int:
        """Track ids waited for."""
        return len(self._expected)

    # --- the one decision, shared by both servers ----------------------------------------

    def token_ok(self, query_token: str | bytes | None) -> bool:
        """Whether *query_token* is the receiver's token (compared as bytes, in constant
        time; any text, ASCII or not, is a fair guess that is simply wrong)."""
        if self._token_bytes is None:
            return True
        if query_token is None:
            return False
        given = (
            query_token
            if isinstance(query_token, bytes)
            else query_token.encode("utf-8", "surrogateescape")
        )
        return hmac.compare_digest(given, self._token_bytes)

    def _forbidden(self) -> tuple[int, str]:
        self.stats["forbidden"] += 1
        return 403, "forbidden"

    def _too_large(self) -> tuple[int, str]:
        self.stats["too_large"] += 1
        return 413, "payload too large"

    def _too_slow(self) -> tuple[int, str]:
        self.stats["too_slow"] += 1
        return 408, "body not received in time"

    def handle(self, body: bytes, query_token: str | bytes | None) -> tuple[int, str]:
        """Decide the answer to one POST: (HTTP status, short reason)."""
        if not self.token_ok(query_token):
            return self._forbidden()
        if len(body) > self.max_body:
            return self._too_large()
        return self._decide(body)

    def _decide(self, body: bytes) -> tuple[int, str]:
        """The answer to a POST whose token was checked, from its body (within the cap)."""
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            self.stats["bad_json"] += 1
            return 400, "body is not JSON"
        if not isinstance(payload, dict):
            self.stats["bad_json"] += 1
            return 400, "body is not a JSON object"
        track_id = payload.get("track_id")
        if track_id is None or isinstance(track_id, dict | list):
            self.stats["unknown"] += 1
            return 404, "no track_id"
        key = str(track_id)
        wake = self._expected.get(key)
        if wake is None:
            self.stats["unknown"] += 1
            return 404, "unknown track_id"
        self.stats["accepted"] += 1
        now = time.monotonic()
        if now - self._last_wake.get(key, -1e9) < self.min_wake_interval:
            return 200, "ok"
        self._last_wake[key] = now
        if wake is _noop:
            self._early.add(key)
        else:
            wake()
        return 200, "ok"

    # --- aiohttp -------------------------------------------------------------------------

    async def aiohttp_handler(self, request: web.Request) -> web.Response:
        """An aiohttp.web handler: ``app.router.add_post("/hook", receiver.aiohttp_handler)``."""
        if request.method != "POST":
            return web.Response(status=405, text="method not allowed")
        status, reason = await self._aiohttp_answer(request)
        return web.Response(status=status, text=reason)

    async def _aiohttp_answer(self, request: web.Request) -> tuple[int, str]:
        if not self.token_ok(request.query.get("token")):
            return self._forbidden()  # before a byte of the body is read
        if request.content_length is not None and request.content_length > self.max_body:
            return self._too_large()
        # content.read(n) returns what has arrived so far (one chunk), not n bytes: read
        # until EOF, stopping once past the cap.
        body = bytearray()
        try:
            with anyio.fail_after(self.read_timeout):
                async for chunk in request.content.iter_any():
                    body += chunk
                    if len(body) > self.max_body:
                        return self._too_large()
        except TimeoutError:
            return self._too_slow()
        except (aiohttp.ClientError, ConnectionError) as exc:
            log.debug("webhook: unreadable body (%s)", type(exc).__name__)
            return 400, "unreadable body"
        return self._decide(bytes(body))

    def aiohttp_app(self) -> web.Application:
        """A sub-application answering POST ``/``: ``app.add_subapp("/hook", r.aiohttp_app())``."""
        app = web.Application(client_max_size=self.max_body + 1024)
        app.router.add_route("*", "/", self.aiohttp_handler)
        return app

    # --- ASGI ----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The receiver as an ASGI app (``app.mount("/hook", receiver)`` in FastAPI)."""
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope.get("method") != "POST":
            await _asgi_answer(send, 405, "method not allowed")
            return
        # latin-1 both ways: the token's bytes exactly as sent (percent-decoded), whatever they are.
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), encoding="latin-1")
        token = query.get("token", [None])[0]
        if not self.token_ok(token.encode("latin-1") if token is not None else None):
            await _asgi_answer(send, *self._forbidden())  # before a byte of the body is read
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        try:
            with anyio.fail_after(self.read_timeout):
                while more:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_body:  # stop reading: the rest is never received
                        await _asgi_answer(send, *self._too_large())
                        return
                    chunks.append(chunk)
                    more = message.get("more_body", False)
        except TimeoutError:
            await _asgi_answer(send, *self._too_slow())
            return
        await _asgi_answer(send, *self._decide(b"".join(chunks)))

    # --- standalone ----------------------------------------------------------------------

    async def serve(
        self,
        tg: anyio.abc.TaskGroup,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = "/modelslab/webhook",
        public_url: str | None = None,
    ) -> str:
        """Serve the receiver in *tg* (until it is cancelled); returns the URL listened on.

        The public URL becomes *public_url*, or the local one (a wildcard *host* shows as
        the loopback address).
        """
        if public_url is not None:
            _check_url(public_url)  # before anything is bound
        app = web.Application(client_max_size=self.max_body + 1024)
        app.router.add_route("*", path, self.aiohttp_handler)
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        # Idle connections are dropped after read_timeout too (the API posts once and goes).
        runner = web.AppRunner(app, access_log=None, keepalive_timeout=self.read_timeout)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            await runner.setup()
            site = web.SockSite(runner, sock)
            await site.start()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await runner.cleanup()
            sock.close()
            raise
        bound = sock.getsockname()[1]
        shown = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host)
        if shown is None:
            shown = f"[{host}]" if ":" in host else host
        local = f"http://{shown}:{bound}{path}"
        self.set_public_url(public_url or local)

        async def hold() -> None:
            try:
                await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True):
                    await runner.cleanup()

        tg.start_soon(hold)
        return local


def _noop() -> None:
    return None


def _check_url(public_url: str) -> None:
    parts = urlsplit(public_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"public_url: got {public_url!r}, allowed an http(s) URL")


async def _asgi_answer(send: Send, status: int, text: str) -> None:
    body = text.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
