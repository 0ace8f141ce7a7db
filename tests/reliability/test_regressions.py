"""Deterministic reproductions of what the fault soak found, against a scripted server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelslab_async import Client, ServerError
from tests._scripted_server import PROCESSING, answer, scripted

pytestmark = pytest.mark.anyio

TRANSIENT_FAILURE = {"status": "failed", "id": "", "message": "Failed, Try Again", "output": ""}


async def test_a_resubmit_that_fails_does_not_carry_the_previous_jobs_id(tmp_path: Path) -> None:
    # Job 13441520 fails with "Failed, Try Again"; the batch resubmits, and that submit gets
    # an HTTP 500 (no job). The item's error is the ServerError, which concerns no job: the
    # result and the manifest must not pair it with the dead job's id (a --retry-failed run
    # would "resume" that failed job instead of submitting anew).
    processing = {**PROCESSING, "eta": 0}
    server_error = answer({"status": "error", "message": "Server Error"}, status=500)
    async with (
        scripted(submit=[answer(processing), server_error], fetch=[answer(TRANSIENT_FAILURE)])
        as server,
        Client("k", base_url=server.base_url) as client,
    ):
        manifest = tmp_path / "run.jsonl"
        results = [r async for r in client.generate_many(["a red fox"], manifest=manifest)]
    assert server.count("text2img") == 2
    [result] = results
    assert isinstance(result.error, ServerError)
    assert result.job_id is None
    last = json.loads(manifest.read_text().splitlines()[-1])
    assert (last["state"], last["job_id"]) == ("failed", None)
