"""Shared fixtures: the anyio backend (asyncio), fixtures directory, blocking-call guard,
a real redis-server."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ._redis_server import RedisServer, start_redis

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def blockbuster() -> Iterator[None]:
    """Fail the test if it makes a blocking call (time.sleep, sync file I/O) on the loop."""
    from blockbuster import blockbuster_ctx

    with blockbuster_ctx("modelslab_async") as bb:
        yield bb


def load_fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


def fixture_names() -> list[str]:
    return sorted(p.name for p in FIXTURES.glob("*.json"))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port for the whole session (fails if missing)."""
    try:
        server = start_redis(tmp_path_factory.mktemp("redis"))
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def hf_datasets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The ``datasets`` package, offline, with its home under a temporary folder."""
    home = tmp_path_factory.mktemp("hf")
    saved = {k: os.environ.get(k) for k in ("HF_HOME", "HF_DATASETS_OFFLINE")}
    os.environ["HF_HOME"] = str(home)
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    try:
        import datasets

        yield datasets
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
