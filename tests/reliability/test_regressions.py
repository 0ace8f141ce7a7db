"""Deterministic reproductions of what the fault soak found, against a scripted server."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from modelslab_async import (
    AmbiguousSubmitError,
    Client,
    DownloadError,
    DownloadPolicy,
    Job,
    RetryPolicy,
    ServerError,
    Text2ImgRequest,
)
from modelslab_async.emulator import Emulator, EmulatorConfig, EndpointFaults, Faults
from tests._scripted_server import PROCESSING, SUCCESS, answer, scripted

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
        scripted(
            submit=[answer(processing), server_error], fetch=[answer(TRANSIENT_FAILURE)]
        ) as server,
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


def _crashed_mid_submit(manifest: Path, prompt: str) -> None:
    """The manifest a run leaves when it dies while item 0's submit is on the wire."""
    from modelslab_async._convert import fingerprint

    record = {
        "index": 0,
        "state": "submitted",
        "fingerprint": fingerprint(Text2ImgRequest(prompt=prompt)),
        "job_id": None,
        "files": [],
        "error": None,
        "time": 1764000000.0,
        "attempt": 0,
        "track_id": "mla-crashed-0",
    }
    manifest.write_text(json.dumps(record) + "\n")


async def test_a_submit_cut_off_by_a_crash_is_not_paid_for_twice(tmp_path: Path) -> None:
    # Found by the CLI soak: a SIGKILL while submits were on the wire lost their job ids,
    # and the rerun submitted those items again (duplicate charges). Each submit is now
    # recorded ahead; a rerun reports such an item as ambiguous instead of resubmitting.
    manifest = tmp_path / "run.jsonl"
    _crashed_mid_submit(manifest, "a red fox")
    async with scripted() as server, Client("k", base_url=server.base_url) as client:
        results = [r async for r in client.generate_many(["a red fox"], manifest=manifest)]
    assert server.count("text2img") == 0
    [result] = results
    assert isinstance(result.error, AmbiguousSubmitError)
    assert "mla-crashed-0" in str(result.error)
    last = json.loads(manifest.read_text().splitlines()[-1])
    assert (last["state"], last["error"]["type"]) == ("failed", "AmbiguousSubmitError")


@pytest.mark.parametrize("how", ["retry_failed", "retry_ambiguous_submits"])
async def test_a_submit_cut_off_by_a_crash_is_resubmitted_when_asked(
    tmp_path: Path, how: str
) -> None:
    manifest = tmp_path / "run.jsonl"
    _crashed_mid_submit(manifest, "a red fox")
    async with (
        scripted() as server,
        Client(
            "k", base_url=server.base_url, **{how: True} if how != "retry_failed" else {}
        ) as client,
    ):
        batch = client.generate_many(
            ["a red fox"], manifest=manifest, retry_failed=how == "retry_failed"
        )
        results = [r async for r in batch]
    assert server.count("text2img") == 1
    assert results[0].job_id == SUCCESS["id"]  # (its image link is not served here)


async def test_each_submit_is_recorded_ahead_then_with_its_job_id(tmp_path: Path) -> None:
    manifest = tmp_path / "run.jsonl"
    async with scripted() as server, Client("k", base_url=server.base_url) as client:
        results = [r async for r in client.generate_many(["a red fox"], manifest=manifest)]
    assert results[0].job_id == SUCCESS["id"]
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [(r["state"], r["job_id"]) for r in records[:2]] == [
        ("submitted", None),
        ("submitted", SUCCESS["id"]),
    ]
    assert records[0]["track_id"] == records[1]["track_id"]


@pytest.mark.parametrize(
    ("config", "policy"),
    [
        pytest.param(
            EmulatorConfig(duration=0.01, faults=Faults(download=EndpointFaults(truncated=1.0))),
            DownloadPolicy(),
            id="every download cut off",
        ),
        pytest.param(
            EmulatorConfig(duration=0.01, link_delay=30.0),
            DownloadPolicy(not_ready_timeout=0.2, not_ready_initial=0.02, not_ready_max=0.05),
            id="links never ready",
        ),
    ],
)
async def test_an_image_that_cannot_be_had_fails_as_a_download_error_naming_its_job(
    tmp_path: Path, config: EmulatorConfig, policy: DownloadPolicy
) -> None:
    # The soak's rule: a failed item's error names its job id where one exists. A download
    # that failed for good raised a TransportError without the job id (retries used up),
    # or a DownloadError whose message named only the (uuid) link.
    retry = RetryPolicy(initial=0.001, max_wait=0.002)
    async with (
        Emulator(config) as emu,
        Client("k", base_url=emu.base_url, retry=retry, download=policy) as client,
    ):
        job = await client.submit(prompt="a red fox", width=64, height=64)
        with pytest.raises(DownloadError) as info:
            await client.text2img(prompt="a red fox", width=64, height=64, dest=tmp_path)
        results = [r async for r in client.generate_many(["a grey wolf"], dest=tmp_path)]
    assert isinstance(job, Job)
    assert info.value.job_id is not None
    assert f"job {info.value.job_id}" in str(info.value)
    [result] = results
    assert isinstance(result.error, DownloadError)
    assert f"job {result.job_id}" in str(result.error)
    assert [p async for p in anyio.Path(tmp_path).iterdir()] == []


def test_soak_figures_go_to_a_tracked_file_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ._soak import RESULTS_ENV, ROOT, record

    tracked = ROOT / "benchmarks" / "results" / "soak.json"
    before = tracked.read_bytes()
    monkeypatch.delenv(RESULTS_ENV, raising=False)
    record("regression-check", {"lost": 0})
    assert tracked.read_bytes() == before
    asked = tmp_path / "soak.json"
    monkeypatch.setenv(RESULTS_ENV, str(asked))
    record("regression-check", {"lost": 0})
    assert json.loads(asked.read_text())["regression-check"]["lost"] == 0
    assert tracked.read_bytes() == before
