"""Shared fixtures: the anyio backend (asyncio), fixtures directory, blocking-call guard."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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
