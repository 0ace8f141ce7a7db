"""An emulator and an open client on it, for tests that talk to the API over 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from modelslab_async import Client
from modelslab_async._errors import JobId
from modelslab_async.emulator import Emulator, EmulatorConfig
from modelslab_async.emulator._stats import JobStats

GUARD = 20.0  # seconds: a hang guard, never an assertion on speed


@asynccontextmanager
async def emulated_client(
    key: str, config: EmulatorConfig, /, **client_kw: Any
) -> AsyncIterator[tuple[Emulator, Client]]:
    """Start an emulator with *config*, open ``Client(key, ...)`` on it, guard against hangs."""
    async with (
        Emulator(config) as emu,
        Client(key, base_url=emu.base_url, **client_kw) as client,
    ):
        with anyio.fail_after(GUARD):
            yield emu, client


def job_stats(emu: Emulator, job_id: JobId | None) -> JobStats:
    """What the emulator saw of one job (its ids are integers)."""
    return emu.stats.jobs[int(str(job_id))]


def record_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """From now until *monkeypatch* is undone, the path of every file ``os.fsync`` is
    called on (from any thread), in order."""
    import os

    synced: list[str] = []
    fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    return synced
