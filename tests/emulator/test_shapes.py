"""Every answer has the real service's shape (keys and JSON types of the fixtures)."""

from __future__ import annotations

import re
import uuid

import pytest

from tests.conftest import load_fixture

from .helpers import KEY, fetch, get, post_json, running, shape_errors, submit

pytestmark = pytest.mark.anyio

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


async def test_submit_processing_shape() -> None:
    async with running(workers=1, duration=(5.0, 5.0)) as (emu, s):
        status, body, _ = await submit(emu, s, width="512", height="512", samples="1")
    assert status == 200
    fixture = load_fixture("text2img-processing.json")
    assert shape_errors(body, fixture) == []
    assert set(body) == set(fixture)
    assert set(body["meta"]) >= set(fixture["meta"])
    assert body["status"] == "processing"
    assert type(body["id"]) is int
    assert body["id"] >= 10_000_000
    assert type(body["eta"]) is int
    assert body["messege"] == "Try to fetch request after seconds estimated"
    assert body["fetch_result"] == f"{emu.base_url}/images/fetch/{body['id']}"
    assert body["output"] == []
    prefix = body["meta"]["file_prefix"]
    assert UUID_RE.match(prefix)
    assert body["future_links"] == [f"{emu.root_url}/generations/{prefix}-0.png"]
    assert body["proxy_links"] == [f"{emu.root_url}/cdn/generations/{prefix}-0.png"]
    assert body["meta"]["id"] == str(body["id"])


async def test_fetch_processing_and_success_shapes() -> None:
    async with running(workers=1, duration=(0.2, 0.2)) as (emu, s):
        _, job, _ = await submit(emu, s)
        status, processing, _ = await fetch(emu, s, job["id"])
        assert status == 200
        fixture = load_fixture("fetch-processing-inferred.json")
        assert set(processing) == set(fixture)
        assert shape_errors(processing, fixture) == []
        assert processing["future_links"] == job["future_links"]
        while processing["status"] == "processing":
            _, processing, _ = await fetch(emu, s, job["id"])
        success = processing
    assert success["status"] == "success"
    full = load_fixture("fetch-success-full.json")
    assert shape_errors(success, {k: full[k] for k in ("status", "generationTime", "id")}) == []
    assert shape_errors(success, load_fixture("fetch-success.json")) == []
    v6 = load_fixture("text2img-success.json")
    assert shape_errors(success, v6) == []
    assert set(success) == set(v6) | {"proxy_links"}
    assert success["output"] == job["future_links"]
    assert success["proxy_links"] == job["proxy_links"]
    assert success["meta"] == job["meta"]
    assert success["generationTime"] == pytest.approx(0.2)


async def test_sync_success_shape() -> None:
    async with running(workers=1, duration=(0.05, 0.05), sync_threshold=1.0) as (emu, s):
        status, body, _ = await submit(emu, s, samples=2)
        assert emu.stats.jobs[body["id"]].first_success_at is not None
    assert status == 200
    fixture = load_fixture("text2img-success.json")
    assert shape_errors(body, fixture) == []
    assert shape_errors(body, load_fixture("text2img-success-recorded-realtime.json")) == []
    assert set(body) == set(fixture) | {"proxy_links"}
    assert len(body["output"]) == 2
    assert len(body["proxy_links"]) == 2


async def test_failed_shape_on_fetch_and_sync() -> None:
    async with running(workers=1, duration=(0.05, 0.05), fail_rate=1.0) as (emu, s):
        _, job, _ = await submit(emu, s)
        body = job
        while body["status"] == "processing":
            _, body, _ = await fetch(emu, s, job["id"])
        assert body == load_fixture("fetch-failed.json")
        assert emu.stats.jobs[job["id"]].failed
        assert emu.stats.jobs[job["id"]].first_failed_at is not None
        assert emu.stats.poll_lags() == []
    async with running(duration=(0.05, 0.05), fail_rate=1.0, sync_threshold=1) as (emu, s):
        _, body, _ = await submit(emu, s)
    assert body == load_fixture("fetch-failed.json")


async def test_invalid_key_and_validation_bodies_equal_fixtures() -> None:
    async with running(keys=["good"]) as (emu, s):
        status, body, _ = await submit(emu, s, key="bad")
        assert (status, body) == (200, load_fixture("text2img-error-invalid-key.json"))
        status, body, _ = await post_json(
            s, emu.base_url + "/images/text2img", {"key": "good", "width": 512}
        )
        assert (status, body) == (200, load_fixture("text2img-error-validation.json"))


async def test_queue_limit_shape() -> None:
    async with running(duration=(5, 5), max_queued_per_key=1) as (emu, s):  # default 30 s
        await submit(emu, s)
        status, body, headers = await submit(emu, s)
    assert status == 429
    fixture = load_fixture("text2img-error-queue-limit-429.json")
    assert set(body) == set(fixture)
    assert shape_errors(body, fixture) == []
    assert body["message"] == "Rate limit exceeded. Maximum 1 queued requests allowed."
    assert body["retry_after"] == 30
    assert headers["Retry-After"] == "30"


async def test_base64_shapes() -> None:
    async with running(workers=1, duration=(0.1, 0.1)) as (emu, s):
        _, job, _ = await submit(emu, s, base64="yes")
        fixture = load_fixture("text2img-processing-base64-inferred.json")
        assert shape_errors(job, fixture) == []
        prefix = job["meta"]["file_prefix"]
        assert job["future_links"] == [f"{emu.root_url}/temp/{prefix}-0.base64"]
        assert job["meta"]["base64"] == "yes"
        body = job
        while body["status"] == "processing":
            _, body, _ = await fetch(emu, s, job["id"])
    assert shape_errors(body, load_fixture("text2img-success-base64-inferred.json")) == []
    assert body["output"][0].endswith("-0.base64")
    assert "/temp/" in body["output"][0]


async def test_meta_echoes_request_with_string_numbers_and_caps_steps() -> None:
    async with running(duration=(5, 5)) as (emu, s):
        _, body, _ = await submit(
            emu,
            s,
            width="768",
            height="256",
            samples="3",
            num_inference_steps="31",
            guidance_scale="7.5",
            seed="1234",
            safety_checker="no",
            safety_checker_type="blur",
            use_cfg_zero_star=False,
            use_zero_init="yes",
            enhance_prompt="yes",
            temp="yes",
            track_id="t-1",
            scheduler="UniPCMultistepScheduler",
        )
        _, random_seed, _ = await submit(emu, s, seed=None)
    meta = body["meta"]
    assert (meta["width"], meta["height"], meta["n_samples"]) == (768, 256, 3)
    assert meta["num_inference_steps"] == 20
    assert meta["guidance_scale"] == 7.5
    assert meta["seed"] == 1234
    assert meta["safety_checker"] == "no"
    assert meta["safety_checker_type"] == "blur"
    assert meta["use_cfg_zero_star"] is False
    assert meta["use_zero_init"] is True
    assert meta["temp"] == "yes"
    assert meta["track_id"] == "t-1"
    assert meta["scheduler"] == "UniPCMultistepScheduler"
    assert "key" not in meta
    assert len(body["future_links"]) == 3
    assert all("/temp/" in link for link in body["future_links"])
    assert isinstance(random_seed["meta"]["seed"], int)
    uuid.UUID(random_seed["meta"]["file_prefix"])


@pytest.mark.parametrize("mode", ["message", "mixed"])
async def test_message_key_modes(mode: str) -> None:
    async with running(duration=(5, 5), message_key=mode) as (emu, s):
        keys = set()
        for _ in range(12):
            _, body, _ = await submit(emu, s)
            keys |= {"messege", "message"} & set(body)
            assert len({"messege", "message"} & set(body)) == 1
    assert keys == ({"message"} if mode == "message" else {"messege", "message"})


async def test_fetch_variants_and_not_found() -> None:
    async with running(duration=(5, 5), message_key="messege") as (emu, s):
        _, job, _ = await submit(emu, s)
        _, body, _ = await post_json(
            s, emu.base_url + "/images/fetch", {"key": KEY, "request_id": str(job["id"])}
        )
        assert body["id"] == job["id"]
        _, body, _ = await post_json(s, f"{emu.root_url}/api/v3/fetch/{job['id']}", {"key": KEY})
        assert body["status"] == "processing"
        status, body, _ = await fetch(emu, s, 1)
        assert (status, body) == (200, {"status": "error", "messege": "Request not found"})
        _, body, _ = await fetch(emu, s, job["id"], key="someone-else")
        assert body["status"] == "error"
        status, _, ctype = await get(s, emu.root_url + "/nope")
        assert status == 404
        assert ctype.startswith("text/html")
