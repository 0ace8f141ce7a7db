"""The manifest's optional report fields (``prompt``, ``seed``, ``generation_time``): written
only when set, read back as written, redacted like the error, and never a reason for a
record to be unreadable."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelslab_async._manifest import Manifest, ManifestRecord, read_records
from modelslab_async._redact import register_secret, unregister_secret

CANARY = "canary-key-report-manifest-77e1c2"

prompts = st.text(min_size=0, max_size=200)
seeds = st.integers(min_value=0, max_value=2**32 - 1)
seconds = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(prompt=st.none() | prompts, seed=st.none() | seeds, time=st.none() | seconds)
def test_the_optional_fields_round_trip_through_json(
    prompt: str | None, seed: int | None, time: float | None
) -> None:
    record = ManifestRecord(
        index=3,
        state="done",
        fingerprint="f",
        time=1.5,
        prompt=prompt,
        seed=seed,
        generation_time=time,
    )
    data = json.loads(json.dumps(record.to_json()))
    assert ManifestRecord.from_json(data) == record
    for name, value in (("prompt", prompt), ("seed", seed), ("generation_time", time)):
        assert (name in data) is (value is not None)


@pytest.mark.parametrize(
    ("given_fields", "read"),
    [
        ({}, (None, None, None)),
        ({"prompt": None, "seed": None, "generation_time": None}, (None, None, None)),
        ({"prompt": 12, "seed": "7", "generation_time": "1.5"}, ("12", 7, 1.5)),
        ({"seed": "many", "generation_time": [1], "prompt": True}, (None, None, None)),
        ({"seed": True, "generation_time": False}, (None, None, None)),
    ],
)
def test_absent_or_malformed_optional_fields_read_as_none(
    given_fields: dict[str, object], read: tuple[object, object, object]
) -> None:
    record = ManifestRecord.from_json({"index": 0, "state": "done", **given_fields})
    assert (record.prompt, record.seed, record.generation_time) == read


@pytest.mark.anyio
async def test_a_recorded_prompt_never_holds_the_key(tmp_path: Path) -> None:
    register_secret(CANARY)
    try:
        manifest = await Manifest(tmp_path / "m.jsonl").open()
        try:
            await manifest.append(
                ManifestRecord(index=0, state="done", fingerprint="f", prompt=f"a {CANARY} cat")
            )
        finally:
            await manifest.close()
    finally:
        unregister_secret(CANARY)
    text = await anyio.Path(tmp_path / "m.jsonl").read_text()
    assert CANARY not in text
    [record] = list(read_records(tmp_path / "m.jsonl"))
    assert record.prompt == "a *** cat"
