"""Command-line front end: every ``EmulatorConfig`` field is an option.

Reusable by other CLIs: ``add_arguments(parser)``, ``config_from_args(namespace)`` and the
``run(config, host, port)`` coroutine (serves until cancelled).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import attrs

from ._config import ETA_MODES, MESSAGE_KEYS, EmulatorConfig, EndpointFaults, Faults
from ._emulator import Emulator

__all__ = ["add_arguments", "config_from_args", "main", "run"]

_ENDPOINTS = ("submit", "fetch", "download")


def _duration(text: str) -> tuple[float, float]:
    parts = [p for p in text.replace(":", ",").split(",") if p.strip()]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI seconds, got {text!r}") from None
    if len(values) == 1:
        return (values[0], values[0])
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"expected LO,HI seconds, got {text!r}")
    return (values[0], values[1])


_HELP: dict[str, str] = {
    "workers": "parallel GPU workers draining one FIFO queue",
    "duration": "seconds per image, uniform in LO,HI (a job takes one draw per sample)",
    "seed": "seeds every random choice (durations, failures, faults, ids, image colours)",
    "sync_threshold": "answer `success` directly when the job is ready within this many seconds",
    "eta_mode": "eta estimate: accurate, under (eta*(1-e)) or over (eta*(1+e))",
    "eta_error": "the fraction e used by --eta-mode under/over",
    "link_delay": "seconds after ready before image links stop answering 404",
    "fail_rate": "fraction of jobs that end `failed`",
    "message_key": "spelling of the message key: messege (as the fixtures), message or mixed",
    "error_http_status": "answer errors with 401/422/400/404 instead of HTTP 200",
    "keys": "comma-separated allow-list of API keys (default: any non-empty key)",
    "max_queued_per_key": "HTTP 429 when a key already has N unfinished jobs",
    "max_concurrent_requests": "HTTP 429 when more than N API requests are in flight",
    "rate_limit": "requests per second per key (token bucket) before HTTP 429",
    "retry_after": "seconds advertised in Retry-After / retry_after (rate and concurrency 429s)",
    "queue_retry_after": "retry_after of the queue-limit 429 (the API documents 30)",
    "credits": "images each key may create, then HTTP 402 (default: unlimited)",
    "base64_prefix": "prefix base64 link bodies with data:image/png;base64,",
    "webhook_retries": "webhook delivery attempts",
    "webhook_drop_rate": "fraction of webhooks silently never sent",
    "draw_prompt": "draw the prompt on the PNG (needs Pillow)",
}


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--host``, ``--port`` and one option per config field (and per fault rate)."""
    defaults = EmulatorConfig()
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port, 0 = any (default 8000)")
    group = parser.add_argument_group("emulator")
    for field in attrs.fields(EmulatorConfig):
        name = field.name
        if name == "faults":
            continue
        default = getattr(defaults, name)
        text = f"{_HELP.get(name, name)} (default: {default})"
        flag = _option(name)
        if isinstance(default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
            continue
        kind: Callable[[str], Any]
        choices: Sequence[str] | None = None
        if name == "duration":
            kind = _duration
            text = f"{_HELP[name]} (default: {default[0]},{default[1]})"
        elif name == "keys":
            kind, text = str, _HELP[name]
        elif name == "eta_mode":
            kind, choices = str, ETA_MODES
        elif name == "message_key":
            kind, choices = str, MESSAGE_KEYS
        elif name in ("workers", "seed", "webhook_retries", "credits") or name.startswith("max_"):
            kind = int
        else:
            kind = float
        group.add_argument(flag, type=kind, choices=choices, default=None, help=text)
    faults = parser.add_argument_group("fault injection (rates 0..1, seeded)")
    for endpoint in _ENDPOINTS:
        for field in attrs.fields(EndpointFaults):
            what = "seconds of delay for" if field.name == "slow_delay" else "rate of"
            faults.add_argument(
                _option(f"{endpoint}_{field.name}"),
                type=float,
                default=None,
                help=f"{what} {field.name} on {endpoint} (default: {field.default})",
            )
    faults.add_argument(
        "--late-links",
        type=float,
        default=None,
        help="fraction of jobs whose links stay 404 longer",
    )
    faults.add_argument(
        "--late-links-delay", type=float, default=None, help="extra 404 seconds (default: 3.0)"
    )


def config_from_args(ns: argparse.Namespace) -> EmulatorConfig:
    """Build an ``EmulatorConfig`` from parsed options (unset options keep the defaults)."""
    kwargs: dict[str, Any] = {}
    for field in attrs.fields(EmulatorConfig):
        value = getattr(ns, field.name, None)
        if field.name != "faults" and value is not None:
            kwargs[field.name] = value
    endpoint_faults: dict[str, EndpointFaults] = {}
    for endpoint in _ENDPOINTS:
        rates = {
            f.name: getattr(ns, f"{endpoint}_{f.name}")
            for f in attrs.fields(EndpointFaults)
            if getattr(ns, f"{endpoint}_{f.name}", None) is not None
        }
        endpoint_faults[endpoint] = EndpointFaults(**rates)
    faults = Faults(
        submit=endpoint_faults["submit"],
        fetch=endpoint_faults["fetch"],
        download=endpoint_faults["download"],
    )
    for name in ("late_links", "late_links_delay"):
        if getattr(ns, name, None) is not None:
            faults = attrs.evolve(faults, **{name: getattr(ns, name)})
    kwargs["faults"] = faults
    return EmulatorConfig(**kwargs)


async def run(config: EmulatorConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until cancelled, printing the base URL once listening."""
    async with Emulator(config, host=host, port=port) as emu:
        print(f"ModelsLab emulator listening: base URL {emu.base_url}", flush=True)
        print(f"stats: {emu.root_url}/__emulator/stats  (Ctrl-C to stop)", flush=True)
        await anyio.sleep_forever()


async def _serve_until_signalled(config: EmulatorConfig, host: str, port: int) -> None:
    """:func:`run` until SIGINT or SIGTERM. The handlers are the event loop's own, so a stop
    signal works even when the parent started the process with SIGINT ignored (as a shell
    does for a background job)."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run, config, host, port)
            async for _ in signals:
                tg.cancel_scope.cancel()
                break
    print("stopped", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m modelslab_async.emulator``."""
    parser = argparse.ArgumentParser(
        prog="python -m modelslab_async.emulator",
        description="Local emulator of the ModelsLab text2img API.",
    )
    add_arguments(parser)
    ns = parser.parse_args(argv)
    try:
        config = config_from_args(ns)
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
    try:
        asyncio.run(_serve_until_signalled(config, ns.host, ns.port))
    except KeyboardInterrupt:  # a second Ctrl-C while stopping
        print("stopped", file=sys.stderr)
    return 0
