"""The in-process emulator: ``async with Emulator(config) as emu: emu.base_url``."""

from __future__ import annotations

import contextlib
from types import TracebackType
from typing import Any

import aiohttp
import anyio
import attrs
from aiohttp import web

from ._app import EmulatorApp
from ._config import EmulatorConfig
from ._stats import EmulatorStats

__all__ = ["Emulator"]


class Emulator:
    """A running local ModelsLab API server, owned by an ``async with`` block.

    ``Emulator(config)`` or ``Emulator(workers=8, duration=(0.05, 0.2))`` (keyword overrides
    build or evolve the config). ``port=0`` picks a free port. On exit the HTTP server stops,
    in-flight answers are cut after ``shutdown_timeout`` seconds and webhook deliveries are
    cancelled.
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        /,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        shutdown_timeout: float = 0.5,
        **overrides: Any,
    ) -> None:
        if config is None:
            config = EmulatorConfig(**overrides)
        elif overrides:
            config = attrs.evolve(config, **overrides)
        self._config = config
        self._host = host
        self._port = port
        self._shutdown_timeout = shutdown_timeout
        self._stats = EmulatorStats()
        self._app = EmulatorApp(config, self._stats)
        self._stack: contextlib.AsyncExitStack | None = None
        self._bound_port: int | None = None

    @property
    def config(self) -> EmulatorConfig:
        """The configuration in use."""
        return self._config

    @property
    def stats(self) -> EmulatorStats:
        """Live statistics (updated as requests are served)."""
        return self._stats

    @property
    def host(self) -> str:
        """The host name used in URLs (``0.0.0.0``/``::`` bind addresses map to loopback)."""
        if self._host in ("0.0.0.0", ""):
            return "127.0.0.1"
        if self._host == "::":
            return "[::1]"
        if ":" in self._host and not self._host.startswith("["):
            return f"[{self._host}]"
        return self._host

    @property
    def port(self) -> int:
        """The bound TCP port (known once started; kept after exit)."""
        if self._bound_port is None:
            raise RuntimeError("the emulator is not running; use `async with Emulator(...)`")
        return self._bound_port

    @property
    def root_url(self) -> str:
        """``http://host:port``."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://host:port/api/v6``: what an SDK uses as its base URL."""
        return self.root_url + "/api/v6"

    def reset(self) -> None:
        """Forget all jobs and statistics (same as ``POST /__emulator/reset``)."""
        self._app.reset()

    def add_credits(self, key: str, credits: int) -> int | None:
        """Top *key* up by *credits* images (``POST /__emulator/credits``); the new balance.

        ``None`` when the emulator runs without ``credits`` (every key is unlimited).
        """
        if isinstance(credits, bool) or not isinstance(credits, int) or credits < 1:
            raise ValueError(f"credits must be an int >= 1, got {credits!r}")
        return self._app.add_credits(key, credits)

    def credits_left(self, key: str) -> int | None:
        """Images *key* may still create (``None``: unlimited)."""
        return self._app.credits_left(key)

    async def __aenter__(self) -> Emulator:
        if self._stack is not None:
            raise RuntimeError("this Emulator is already running")
        async with contextlib.AsyncExitStack() as stack:
            session = await stack.enter_async_context(aiohttp.ClientSession())
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tg.cancel_scope.cancel)
            tg.start_soon(self._app.webhooks.run, session, tg)
            runner = web.AppRunner(
                self._app.make_app(),
                access_log=None,
                handle_signals=False,
                shutdown_timeout=self._shutdown_timeout,
            )
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            site = web.TCPSite(runner, self._host, self._port, backlog=4096)
            await site.start()
            address = runner.addresses[0]
            self._bound_port = int(address[1])
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    def __repr__(self) -> str:
        where = self.root_url if self._stack is not None else "not running"
        return f"<Emulator {where} workers={self._config.workers}>"
