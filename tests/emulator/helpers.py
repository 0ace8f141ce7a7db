"""Helpers for the emulator tests: talk to it over real HTTP with a bare aiohttp session."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import anyio
from multidict import CIMultiDictProxy

from modelslab_async.emulator import Emulator

KEY = "test-key"


@asynccontextmanager
async def running(**config: Any) -> AsyncIterator[tuple[Emulator, aiohttp.ClientSession]]:
    """An emulator (keyword config) plus a client session that opens a connection per request.

    ``force_close`` keeps aiohttp from retrying on a reused keep-alive connection, so each
    request the test makes is exactly one request the emulator sees.
    """
    async with Emulator(**config) as emu:
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            yield emu, session


async def post_json(
    session: aiohttp.ClientSession, url: str, body: Any
) -> tuple[int, Any, CIMultiDictProxy[str]]:
    """POST JSON; ``(status, parsed body or raw text, headers)``."""
    async with session.post(url, json=body) as resp:
        text = await resp.text()
        try:
            data: Any = json.loads(text)
        except ValueError:
            data = text
        return resp.status, data, resp.headers


async def submit(
    emu: Emulator, session: aiohttp.ClientSession, key: str | None = KEY, **fields: Any
) -> tuple[int, Any, CIMultiDictProxy[str]]:
    """POST text2img with a default prompt; ``key=None`` omits the key."""
    body: dict[str, Any] = {"prompt": "a red fox in the snow"}
    if key is not None:
        body["key"] = key
    body.update(fields)
    return await post_json(session, emu.base_url + "/images/text2img", body)


async def fetch(
    emu: Emulator, session: aiohttp.ClientSession, job_id: Any, key: str = KEY
) -> tuple[int, Any, CIMultiDictProxy[str]]:
    """POST fetch/{id}."""
    return await post_json(session, f"{emu.base_url}/images/fetch/{job_id}", {"key": key})


async def wait_done(emu: Emulator, session: aiohttp.ClientSession, job_id: Any) -> Any:
    """Fetch until the job is no longer ``processing``; the final body."""
    while True:
        _, body, _ = await fetch(emu, session, job_id)
        if body["status"] != "processing":
            return body
        await anyio.sleep(0.02)


async def get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    """GET a JSON answer; ``(status, parsed body)``."""
    async with session.get(url) as resp:
        return resp.status, await resp.json()


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, bytes, str]:
    """GET; ``(status, body, content type)``."""
    async with session.get(url) as resp:
        return resp.status, await resp.read(), resp.headers.get("Content-Type", "")


def shape_errors(ours: Any, fixture: Any, path: str = "$") -> list[str]:
    """Keys of ``fixture`` missing from ``ours`` and JSON type mismatches, recursively.

    ``null`` in the fixture matches anything (nullable field); int and float are both numbers.
    """
    if fixture is None:
        return []
    if isinstance(fixture, dict):
        if not isinstance(ours, dict):
            return [f"{path}: expected object, got {type(ours).__name__}"]
        errors: list[str] = []
        for k, v in fixture.items():
            if k not in ours:
                errors.append(f"{path}.{k}: missing")
            else:
                errors += shape_errors(ours[k], v, f"{path}.{k}")
        return errors
    if isinstance(fixture, list):
        if not isinstance(ours, list):
            return [f"{path}: expected list, got {type(ours).__name__}"]
        if fixture and ours:
            return shape_errors(ours[0], fixture[0], path + "[0]")
        return []
    if isinstance(fixture, bool) or isinstance(ours, bool):
        ok = isinstance(fixture, bool) and isinstance(ours, bool)
    elif isinstance(fixture, (int, float)):
        ok = isinstance(ours, (int, float))
    else:
        ok = type(ours) is type(fixture)
    return [] if ok else [f"{path}: {type(ours).__name__} != fixture {type(fixture).__name__}"]
