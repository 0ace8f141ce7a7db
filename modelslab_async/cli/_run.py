"""Running a command: where its requests go, its event loop, signals and exit codes.

Exit codes: 0 every item done; 1 some item failed; 2 usage or configuration error (a bad
option value, no key, the key rejected, an input or manifest that cannot be read); 3 out of
credits (top up and rerun the same command); 128 + the signal number after a clean stop on
SIGINT (130, Ctrl-C) or SIGTERM (143).
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import NoReturn

import anyio
import anyio.abc
import attrs
import click
from rich.console import Console

from .. import _constants as C
from .._client import Client, MaxInFlight
from .._errors import (
    AuthenticationError,
    ConfigurationError,
    ModelsLabError,
    RequestValidationError,
    TransportError,
)
from .._slots import Slots
from ._display import say, stderr_console
from ._input import InputError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CREDITS = 3
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_BROKEN_PIPE = 128 + 13  # stdout closed by its reader (SIGPIPE), as a shell reports it

#: The throwaway key used against the embedded emulator (never the user's key).
LOCAL_KEY = "local-emulator"
#: Timings of the embedded emulator: the README demo of a dozen prompts takes a few seconds.
LOCAL_WORKERS = 4
LOCAL_DURATION = (0.3, 1.0)


class UsageFailure(click.ClickException):
    """A usage or configuration error found before anything was sent: exit code 2."""

    exit_code = EXIT_USAGE


# --- where requests go -------------------------------------------------------------------


@attrs.frozen
class Target:
    """The real API or a given server (``local=False``), or the embedded emulator."""

    local: bool
    base_url: str | None = None
    notice: bool = False


def target(local: bool, base_url: str | None) -> Target:
    """Real API, a given server, or the embedded emulator (decided before anything runs)."""
    if local and base_url:
        raise UsageFailure("--local and --base-url exclude each other")
    if local:
        return Target(local=True)
    key = os.environ.get(C.ENV_API_KEY, "").strip()
    if not key and not base_url and not os.environ.get(C.ENV_BASE_URL):
        return Target(local=True, notice=True)
    if not key:
        raise UsageFailure(
            f"no API key: set {C.ENV_API_KEY} (any non-empty value works with a local emulator)"
        )
    return Target(local=False, base_url=base_url)


@asynccontextmanager
async def open_client(
    where: Target,
    console: Console,
    max_in_flight: MaxInFlight = C.DEFAULT_MAX_IN_FLIGHT,
    *,
    slots: Slots | None = None,
    lags: list[float] | None = None,
) -> AsyncIterator[Client]:
    """A client of *where*; for the embedded emulator, the emulator too, for as long.

    *slots* (``--slots``) are entered first, so that an unreachable Redis is a
    configuration error (exit 2) before anything is sent; the client then takes its limit
    from them (learning it when *max_in_flight* is ``"auto"``). *lags*, when given, gets
    the embedded emulator's poll lags (seconds from a job being ready to its result served)
    when it stops."""
    if where.notice:
        say(
            console,
            f"modelslab-async: {C.ENV_API_KEY} is not set, so this runs against the embedded "
            "local emulator (--local); set it to use the real API.",
        )
    limit: MaxInFlight | None = max_in_flight
    async with AsyncExitStack() as stack:
        if slots is not None:
            await _enter_slots(stack, slots)
            limit = "auto" if max_in_flight == "auto" else None  # the slots' own limit
        if not where.local:
            yield await stack.enter_async_context(
                Client(base_url=where.base_url, max_in_flight=limit, slots=slots)
            )
            return
        # Imported only here: commands that talk to a real server never load the emulator.
        from ..emulator import Emulator, EmulatorConfig

        # A fresh seed per run: job ids (and so file names) differ from the last run's.
        config = EmulatorConfig(
            workers=LOCAL_WORKERS, duration=LOCAL_DURATION, seed=secrets.randbelow(2**31)
        )
        emu = await stack.enter_async_context(Emulator(config))
        if lags is not None:
            stack.callback(lambda: lags.extend(emu.stats.poll_lags()))
        yield await stack.enter_async_context(
            Client(LOCAL_KEY, base_url=emu.base_url, max_in_flight=limit, slots=slots)
        )


async def _enter_slots(stack: AsyncExitStack, slots: Slots) -> None:
    """Enter the shared slots; a store that cannot be reached is a configuration error."""
    try:
        await stack.enter_async_context(slots)
    except TransportError as exc:
        raise ConfigurationError(f"--slots: {exc}") from None


# --- signals and exit codes --------------------------------------------------------------


class Interrupt:
    """Turns the first SIGINT/SIGTERM into a cancel of ``scope`` (a clean stop); a second
    one quits at once."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.scope = anyio.CancelScope()
        self.signum: int | None = None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)

    async def watch(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        started = False
        try:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                task_status.started()
                started = True
                await self._handle(signals)
        except NotImplementedError:  # pragma: no cover - Windows: KeyboardInterrupt instead
            if not started:
                task_status.started()

    async def _handle(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            if self.signum is not None:
                say(self.console, "modelslab-async: stopped at once.")
                os._exit(128 + signum)
            self.signum = signum
            say(
                self.console,
                "modelslab-async: interrupted, stopping cleanly "
                "(in-flight requests finish first; press Ctrl-C again to quit at once).",
            )
            self.scope.cancel()


Body = Callable[[Interrupt, Console], Awaitable[int]]

#: Errors that mean "fix the command, the configuration or the files", not "an item failed".
USAGE_ERRORS = (
    ConfigurationError,
    RequestValidationError,
    AuthenticationError,
    OSError,
    InputError,
    UnicodeDecodeError,
)
#: What reading the manifest raises on a line it cannot read (batch only: exit code 2).
FILE_ERRORS = (UnicodeDecodeError, RecursionError)


def exit_code_for(error: BaseException) -> int:
    return EXIT_USAGE if isinstance(error, USAGE_ERRORS + FILE_ERRORS) else EXIT_FAILED


def error_line(error: BaseException, manifest: Path | None = None) -> str:
    """The one line that reports an error that stopped a command (*manifest*: the run's
    manifest, the one file a batch reads besides its input, which never raises these)."""
    where = str(manifest) if manifest is not None else "a file of this run"
    if isinstance(error, UnicodeDecodeError):
        return (
            f"Error: {where} is not UTF-8 text ({error.reason} at byte {error.start}); "
            "repair or move it, then rerun"
        )
    if isinstance(error, RecursionError):
        return f"Error: {where} holds a line nested too deeply to read; repair or move it"
    return f"Error: {type(error).__name__}: {error}"


async def _guarded(body: Body) -> int:
    console = stderr_console()
    interrupt = Interrupt(console)
    async with anyio.create_task_group() as tg:
        await tg.start(interrupt.watch)
        try:
            code = await body(interrupt, console)
        except (ModelsLabError, *USAGE_ERRORS) as exc:
            say(console, error_line(exc))
            code = exit_code_for(exc)
        finally:
            tg.cancel_scope.cancel()
    return code


def run(body: Body) -> NoReturn:
    """Run *body* on an asyncio loop with signal handling; exit with its code."""
    try:
        code = anyio.run(_guarded, body, backend="asyncio")
    except KeyboardInterrupt:  # a signal before the handler was installed
        code = EXIT_INTERRUPTED
    sys.stdout.flush()
    raise SystemExit(code)


__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_CREDITS",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "FILE_ERRORS",
    "Body",
    "Interrupt",
    "Target",
    "USAGE_ERRORS",
    "UsageFailure",
    "error_line",
    "exit_code_for",
    "open_client",
    "run",
    "target",
]
