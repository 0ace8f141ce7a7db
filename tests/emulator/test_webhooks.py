"""Webhook delivery to a tiny aiohttp.web receiver on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from aiohttp import web

from tests.conftest import load_fixture

from .helpers import running, shape_errors, submit

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def receiver(fail_first: int = 0) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A webhook receiver URL and the list of bodies it accepted."""
    received: list[dict[str, Any]] = []
    calls = {"n": 0}

    async def hook(request: web.Request) -> web.Response:
        calls["n"] += 1
        if calls["n"] <= fail_first:
            return web.Response(status=500)
        received.append(json.loads(await request.read()))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/hook", received
    finally:
        await runner.cleanup()


async def _until(predicate: Any, timeout: float = 3.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110 - polling the emulator's stats
            await anyio.sleep(0.01)


async def test_success_webhook_payload() -> None:
    async with receiver() as (url, got), running(duration=(0.1, 0.1)) as (emu, s):
        _, job, _ = await submit(emu, s, webhook=url, track_id="track-7", samples=2)
        await _until(lambda: got)
        js = emu.stats.jobs[job["id"]]
        assert js.webhook_sent_at is not None
        assert js.webhook_sent_at >= js.ready_at
        assert js.webhook_attempts == 1
    payload = got[0]
    fixture = load_fixture("webhook-payload.json")
    assert set(payload) == set(fixture)
    assert shape_errors(payload, {k: v for k, v in fixture.items() if k != "id"}) == []
    assert payload["id"] == job["id"]
    assert payload["status"] == "success"
    assert payload["track_id"] == "track-7"
    assert payload["output"] == job["future_links"]
    assert payload["meta"] == job["meta"]


async def test_failed_webhook_payload() -> None:
    async with receiver() as (url, got), running(duration=(0.05, 0.05), fail_rate=1) as (emu, s):
        _, job, _ = await submit(emu, s, webhook=url, track_id=99)
        await _until(lambda: got)
    fixture = load_fixture("webhook-payload-failed.json")
    assert set(got[0]) == set(fixture)
    assert got[0]["status"] == "failed"
    assert got[0]["track_id"] == 99
    assert got[0]["id"] == job["id"]


async def test_webhook_is_retried() -> None:
    async with (
        receiver(fail_first=2) as (url, got),
        running(duration=(0.05, 0.05), webhook_retries=3) as (emu, s),
    ):
        _, job, _ = await submit(emu, s, webhook=url)
        await _until(lambda: got)
        assert emu.stats.jobs[job["id"]].webhook_attempts == 3
        assert emu.stats.requests_by_endpoint["webhook"] == 3


async def test_webhook_gives_up_and_drops() -> None:
    async with (
        receiver(fail_first=100) as (url, _),
        running(duration=(0.01, 0.01), webhook_retries=2) as (emu, s),
    ):
        _, job, _ = await submit(emu, s, webhook=url)
        await _until(lambda: emu.stats.webhook_failures == 1)
        assert emu.stats.jobs[job["id"]].webhook_attempts == 2
    async with (
        receiver() as (url, got),
        running(duration=(0.01, 0.01), webhook_drop_rate=1.0) as (emu, s),
    ):
        await submit(emu, s, webhook=url)
        await _until(lambda: emu.stats.faults_served["webhook.drop"] == 1)
        await anyio.sleep(0.1)
        assert got == []


async def test_webhook_to_nowhere_and_exit_cancels_pending_deliveries() -> None:
    with anyio.fail_after(5):
        async with running(duration=(0.01, 0.01), webhook_retries=2) as (emu, s):
            await submit(emu, s, webhook="http://127.0.0.1:9/hook")  # connection refused
            await _until(lambda: emu.stats.webhook_failures == 1)
            for _ in range(20):
                await submit(emu, s, webhook="http://10.255.255.1:81/never", samples=1)
            await anyio.sleep(0.05)  # deliveries are in flight (unroutable address)
        # leaving the block cancelled them promptly
