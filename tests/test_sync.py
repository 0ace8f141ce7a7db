"""The blocking facade runs the same engine against the emulator (in its own thread)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from anyio.from_thread import start_blocking_portal

from modelslab_async import ClientStateError, Generation, RequestValidationError
from modelslab_async.emulator import Emulator, EmulatorConfig
from modelslab_async.sync import Client

KEY = "sync-test-key"


@pytest.fixture
def emulator_url() -> Iterator[str]:
    """An emulator served from its own event loop thread."""
    with start_blocking_portal() as portal:
        emu = Emulator(EmulatorConfig(workers=8, duration=(0.05, 0.15), seed=3))
        with portal.wrap_async_context_manager(emu):
            yield emu.base_url


def test_text2img_blocks_and_writes_files(emulator_url: str, tmp_path: Path) -> None:
    with Client(KEY, base_url=emulator_url) as client:
        gen = client.text2img(prompt="a red fox", dest=str(tmp_path))
    assert isinstance(gen, Generation)
    assert len(gen.images) == 1
    path = gen.images[0].path
    assert path is not None
    assert path.read_bytes().startswith(b"\x89PNG")
    assert KEY not in repr(client)


def test_submit_wait_fetch_download(emulator_url: str) -> None:
    with Client(KEY, base_url=emulator_url) as client:
        job = client.submit(prompt="a blue fox", seed=1)
        gen = client.wait(job, timeout=30)
        again = client.fetch(gen.id if gen.id is not None else "")
        images = client.download(gen)
    assert isinstance(again, Generation)
    assert images[0].data is not None
    assert images[0].data.startswith(b"\x89PNG")


def test_generate_many_yields_every_index_and_stops_early(emulator_url: str) -> None:
    before = set(threading.enumerate())
    with Client(KEY, base_url=emulator_url, max_in_flight=4) as client:
        seen = sorted(r.index for r in client.generate_many([f"p{i}" for i in range(10)]))
        assert seen == list(range(10))
        for result in client.generate_many(f"q{i}" for i in range(1000)):
            assert result.ok
            break
        # Leaving the loop closed the generator, which cancelled the rest of the batch.
        stats = client._async.statistics()
        assert stats.in_flight == 0
        assert stats.poller.tracked == 0
        assert stats.calls["submit"] < 100
    # Closing the client stopped its event loop thread.
    assert not [t for t in set(threading.enumerate()) - before if "portal" in t.name.lower()]


def test_validation_happens_before_any_call_and_state_is_checked(emulator_url: str) -> None:
    client = Client(KEY, base_url=emulator_url)
    with pytest.raises(ClientStateError):
        client.text2img(prompt="x")
    with client, pytest.raises(RequestValidationError, match="width"):
        client.text2img(prompt="x", width=5000)
