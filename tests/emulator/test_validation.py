"""Auth and validation answers like the real service (HTTP 200 by default, codes optional)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import load_fixture

from .helpers import KEY, fetch, post_json, running, submit

pytestmark = pytest.mark.anyio

INVALID_KEY = load_fixture("text2img-error-invalid-key.json")


@pytest.mark.parametrize("key", [None, "", "   ", 123])
async def test_missing_or_empty_key(key: Any) -> None:
    async with running() as (emu, s):
        body = {"prompt": "a fox"} if key is None else {"prompt": "a fox", "key": key}
        status, body, _ = await post_json(s, emu.base_url + "/images/text2img", body)
    assert (status, body) == (200, INVALID_KEY)
    assert emu.stats.total_jobs == 0


async def test_allow_list_for_submit_and_fetch() -> None:
    async with running(keys="k1,k2", duration=(5, 5)) as (emu, s):
        assert (await submit(emu, s, key="k3"))[1] == INVALID_KEY
        _, job, _ = await submit(emu, s, key="k2")
        assert job["status"] == "processing"
        assert (await fetch(emu, s, job["id"], key="k3"))[1] == INVALID_KEY
        assert (await fetch(emu, s, job["id"], key="k2"))[1]["status"] == "processing"


async def test_error_http_status_option() -> None:
    async with running(keys=["good"], error_http_status=True, duration=(5, 5)) as (emu, s):
        assert (await submit(emu, s, key="bad"))[0] == 401
        assert (await submit(emu, s, key="good", width=4096))[0] == 422
        assert (await fetch(emu, s, 1, key="good"))[0] == 404
        async with s.post(emu.base_url + "/images/text2img", data=b"{not json") as resp:
            assert resp.status == 400
            assert (await resp.json())["status"] == "error"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("width", 1025, "The width must not be greater than 1024."),
        ("width", "0", "The width must be at least 1."),
        ("height", 2048, "The height must not be greater than 1024."),
        ("width", "abc", "The width must be an integer."),
        ("width", 512.5, "The width must be an integer."),
        ("samples", 5, "The samples must not be greater than 4."),
        ("samples", 0, "The samples must be at least 1."),
        ("num_inference_steps", 0, "The num inference steps must be at least 1."),
        ("guidance_scale", 0.5, "The guidance scale must be at least 1."),
        ("guidance_scale", "21", "The guidance scale must not be greater than 20."),
        ("guidance_scale", "x", "The guidance scale must be a number."),
        ("injected_noise_alpha", 1.5, "The injected noise alpha must not be greater than 1."),
        ("sigma_threshold", -0.1, "The sigma threshold must be at least 0."),
        ("true_cfg_scale", 10.5, "The true cfg scale must not be greater than 10."),
        ("safety_checker_type", "nope", "The selected safety checker type is invalid."),
        ("safety_checker", "maybe", "The selected safety checker is invalid."),
        ("seed", -1, "The seed must be at least 0."),
        ("webhook", "ftp://x", "The webhook must be a valid URL."),
        ("prompt", "", "The prompt field is required."),
        ("prompt", 5, "The prompt must be a string."),
    ],
)
async def test_validation_errors(field: str, value: Any, message: str) -> None:
    async with running() as (emu, s):
        status, body, _ = await submit(emu, s, **{field: value})
    assert status == 200
    assert body == {"status": "error", "message": {field: [message]}}
    assert emu.stats.total_jobs == 0


async def test_several_errors_at_once_and_valid_edges() -> None:
    async with running(duration=(5, 5)) as (emu, s):
        _, body, _ = await submit(emu, s, width=0, samples=9)
        assert set(body["message"]) == {"width", "samples"}
        _, ok, _ = await submit(
            emu,
            s,
            width="1024",
            height=1,
            samples="4",
            guidance_scale=1,
            injected_noise_alpha="0",
            sigma_threshold=1.0,
            true_cfg_scale="10",
            num_inference_steps=100,
            safety_checker=True,
            base64=False,
            zero_steps="3",
            seed="",
            webhook=None,
        )
    assert ok["status"] == "processing", ok
    assert ok["meta"]["num_inference_steps"] == 20


async def test_invalid_json_bodies() -> None:
    async with running() as (emu, s):
        async with s.post(emu.base_url + "/images/text2img", data=b"[1, 2]") as resp:
            body = await resp.json(content_type=None)
        assert resp.status == 200
        assert body["status"] == "error"
        _status, body, _ = await post_json(s, f"{emu.base_url}/images/fetch/abc", {"key": KEY})
        assert body["status"] == "error"
