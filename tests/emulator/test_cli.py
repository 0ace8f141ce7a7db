"""``python -m modelslab_async.emulator``, config options and the ``Emulator`` constructor."""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import anyio
import pytest

from modelslab_async.emulator import (
    Emulator,
    EmulatorConfig,
    EndpointFaults,
    Faults,
    add_arguments,
    config_from_args,
)

ROOT = Path(__file__).resolve().parents[2]


def _parse(*argv: str) -> EmulatorConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_from_args(parser.parse_args(list(argv)))


def test_defaults_match_the_config_defaults() -> None:
    assert _parse() == EmulatorConfig()


def test_every_option_maps_to_the_config() -> None:
    cfg = _parse(
        "--workers=2",
        "--duration=0.1,0.3",
        "--seed=5",
        "--sync-threshold=1.5",
        "--eta-mode=over",
        "--eta-error=0.2",
        "--link-delay=0.4",
        "--fail-rate=0.1",
        "--message-key=mixed",
        "--error-http-status",
        "--keys=a,b",
        "--max-queued-per-key=3",
        "--max-concurrent-requests=9",
        "--rate-limit=2.5",
        "--retry-after=0.5",
        "--queue-retry-after=2.5",
        "--credits=40",
        "--base64-prefix",
        "--webhook-retries=5",
        "--webhook-drop-rate=0.3",
        "--no-draw-prompt",
        "--submit-reset=0.2",
        "--fetch-slow=0.1",
        "--fetch-slow-delay=1",
        "--download-truncated=0.3",
        "--late-links=0.5",
        "--late-links-delay=2",
    )
    assert cfg == EmulatorConfig(
        workers=2,
        duration=(0.1, 0.3),
        seed=5,
        sync_threshold=1.5,
        eta_mode="over",
        eta_error=0.2,
        link_delay=0.4,
        fail_rate=0.1,
        message_key="mixed",
        error_http_status=True,
        keys=frozenset({"a", "b"}),
        max_queued_per_key=3,
        max_concurrent_requests=9,
        rate_limit=2.5,
        retry_after=0.5,
        queue_retry_after=2.5,
        credits=40,
        base64_prefix=True,
        webhook_retries=5,
        webhook_drop_rate=0.3,
        draw_prompt=False,
        faults=Faults(
            submit=EndpointFaults(reset=0.2),
            fetch=EndpointFaults(slow=0.1, slow_delay=1.0),
            download=EndpointFaults(truncated=0.3),
            late_links=0.5,
            late_links_delay=2.0,
        ),
    )


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="workers"):
        EmulatorConfig(workers=0)
    with pytest.raises(ValueError, match="duration"):
        EmulatorConfig(duration=(2, 1))
    with pytest.raises(ValueError, match="eta_mode"):
        EmulatorConfig(eta_mode="exact")  # type: ignore[arg-type]
    assert EmulatorConfig(duration=0.5).duration == (0.5, 0.5)
    assert EmulatorConfig(keys=["x"]).keys == frozenset({"x"})
    with pytest.raises(ValueError, match="credits"):
        EmulatorConfig(credits=-1)
    with pytest.raises(ValueError, match="queue_retry_after"):
        EmulatorConfig(queue_retry_after=-1)
    assert EmulatorConfig(credits=0).credits == 0


@pytest.mark.anyio
async def test_constructor_overrides() -> None:
    base = EmulatorConfig(workers=3)
    assert Emulator(base, seed=9).config == EmulatorConfig(workers=3, seed=9)
    assert Emulator(workers=7).config.workers == 7
    emu = Emulator()
    with pytest.raises(RuntimeError):
        _ = emu.base_url


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("stop", "sigint_ignored"),
    [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGINT, True)],
    ids=["sigint", "sigterm", "sigint-ignored-by-the-parent"],
)
async def test_python_dash_m_serves_until_interrupted(stop: int, sigint_ignored: bool) -> None:
    # A shell starts a background job with SIGINT ignored, which Python keeps: the server
    # must stop on Ctrl-C (and SIGTERM) all the same.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "modelslab_async.emulator", "--port", "0", "--duration", "0.01"]
    with subprocess.Popen(  # noqa: ASYNC220 - a child process that outlives awaits
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=ROOT,
        preexec_fn=_ignore_sigint if sigint_ignored else None,
    ) as proc:
        try:
            assert proc.stdout is not None
            line = await anyio.to_thread.run_sync(proc.stdout.readline)
            match = re.search(r"(http://\S+/api/v6)", line)
            assert match, line
            base = match.group(1)
            async with aiohttp.ClientSession() as s:
                body = {"key": "k", "prompt": "cli"}
                async with s.post(base + "/images/text2img", json=body) as resp:
                    assert (await resp.json())["status"] == "processing"
            proc.send_signal(stop)
            assert await anyio.to_thread.run_sync(lambda: proc.wait(timeout=10)) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
