"""Every fault kind over real HTTP, per endpoint; seeded and counted in the stats."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import aiohttp
import anyio
import pytest
from PIL import Image

from modelslab_async.emulator import EndpointFaults, Faults

from .helpers import KEY, fetch, running, submit

pytestmark = pytest.mark.anyio

BODY = {"key": KEY, "prompt": "a red fox"}


def _faults(endpoint: str, **rates: float) -> Faults:
    return Faults(**{endpoint: EndpointFaults(**rates)})  # type: ignore[arg-type]


async def _raw(s: aiohttp.ClientSession, method: str, url: str, body: object = None) -> Any:
    """(status, content type, body) or the client exception raised."""
    try:
        async with s.request(method, url, json=body) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), await resp.read()
    except aiohttp.ClientError as exc:
        return exc


@pytest.mark.parametrize("endpoint", ["submit", "fetch"])
async def test_http_5xx(endpoint: str) -> None:
    async with running(faults=_faults(endpoint, http_5xx=1.0), duration=(5, 5)) as (emu, s):
        results = []
        for _ in range(6):
            if endpoint == "submit":
                results.append(await _raw(s, "POST", emu.base_url + "/images/text2img", BODY))
            else:
                results.append(await _raw(s, "POST", emu.base_url + "/images/fetch/1", BODY))
        assert {r[0] for r in results} <= {500, 502, 503}
        assert len({r[0] for r in results}) >= 2
        if endpoint == "submit":
            assert emu.stats.total_jobs == 0  # no job behind a 5xx
        assert emu.stats.faults_served[f"{endpoint}.http_5xx"] == 6


async def test_submit_reset_creates_the_job() -> None:
    async with running(faults=_faults("submit", reset=1.0), duration=(5, 5)) as (emu, s):
        result = await _raw(s, "POST", emu.base_url + "/images/text2img", BODY)
        assert isinstance(result, aiohttp.ClientError)
        assert emu.stats.total_jobs == 1  # an ambiguous failure: the GPU got the job
        assert emu.stats.faults_served["submit.reset"] == 1


async def test_truncated_and_malformed_submit_create_the_job() -> None:
    async with running(faults=_faults("submit", truncated=1.0), duration=(5, 5)) as (emu, s):
        result = await _raw(s, "POST", emu.base_url + "/images/text2img", BODY)
        assert isinstance(result, aiohttp.ClientPayloadError)
        assert emu.stats.total_jobs == 1
    async with running(faults=_faults("submit", malformed_json=1.0), duration=(5, 5)) as (emu, s):
        status, ctype, body = await _raw(s, "POST", emu.base_url + "/images/text2img", BODY)
        assert status == 200
        assert ctype.startswith("application/json")
        with pytest.raises(json.JSONDecodeError):
            json.loads(body)
        assert emu.stats.total_jobs == 1


@pytest.mark.parametrize("endpoint", ["submit", "fetch"])
async def test_html_200(endpoint: str) -> None:
    async with running(faults=_faults(endpoint, html_200=1.0), duration=(5, 5)) as (emu, s):
        url = emu.base_url + ("/images/text2img" if endpoint == "submit" else "/images/fetch/1")
        status, ctype, body = await _raw(s, "POST", url, BODY)
        assert status == 200
        assert ctype.startswith("text/html")
        assert body.startswith(b"<!DOCTYPE html>")
        assert emu.stats.total_jobs == 0


async def test_slow_answers() -> None:
    faults = _faults("fetch", slow=1.0, slow_delay=0.3)
    async with running(faults=faults, duration=(5, 5)) as (emu, s):
        _, job, _ = await submit(emu, s)
        start = time.monotonic()
        _, body, _ = await fetch(emu, s, job["id"])
        assert time.monotonic() - start >= 0.3
        assert body["status"] == "processing"
        assert emu.stats.faults_served["fetch.slow"] == 1


@pytest.mark.parametrize("kind", ["reset", "truncated", "malformed_json"])
async def test_fetch_mangled_success_is_not_counted_as_served(kind: str) -> None:
    async with running(faults=_faults("fetch", **{kind: 1.0}), duration=(0.01, 0.01)) as (
        emu,
        s,
    ):
        _, job, _ = await submit(emu, s)
        await anyio.sleep(0.05)
        result = await _raw(s, "POST", f"{emu.base_url}/images/fetch/{job['id']}", BODY)
        if kind == "malformed_json":
            assert not isinstance(result, Exception)
            with pytest.raises(json.JSONDecodeError):
                json.loads(result[2])
        else:
            assert isinstance(result, aiohttp.ClientError)
        js = emu.stats.jobs[job["id"]]
        assert js.fetch_calls == 1
        assert js.first_success_at is None
        assert emu.stats.faults_served[f"fetch.{kind}"] == 1


@pytest.mark.parametrize(
    "kind", ["http_5xx", "reset", "truncated", "html_200", "malformed_json", "slow"]
)
async def test_download_faults(kind: str) -> None:
    rates = {kind: 1.0, "slow_delay": 0.2} if kind == "slow" else {kind: 1.0}
    async with running(faults=_faults("download", **rates), duration=(0.01, 0.01)) as (emu, s):
        _, job, _ = await submit(emu, s, width=64, height=64)
        await anyio.sleep(0.05)
        result = await _raw(s, "GET", job["future_links"][0])
        js = emu.stats.jobs[job["id"]]
        if kind in ("reset", "truncated"):
            assert isinstance(result, aiohttp.ClientError)
        else:
            assert not isinstance(result, Exception)
            status, ctype, body = result
            if kind == "http_5xx":
                assert status >= 500
            elif kind == "html_200":
                assert (status, ctype.split(";")[0]) == (200, "text/html")
            elif kind == "malformed_json":  # a corrupt image with a consistent length
                assert status == 200
                assert ctype == "image/png"
                with pytest.raises(Exception):  # noqa: B017, PT011
                    Image.open(io.BytesIO(body)).load()
            else:
                assert status == 200
                Image.open(io.BytesIO(body)).load()
        assert (js.downloads != {}) == (kind == "slow")
        # aiohttp itself retries an idempotent GET once when the server resets it
        expected = {1, 2} if kind == "reset" else {1}
        assert emu.stats.faults_served[f"download.{kind}"] in expected


async def test_faults_are_seeded() -> None:
    async def sequence(seed: int) -> list[object]:
        faults = Faults(fetch=EndpointFaults(http_5xx=0.3, html_200=0.3))
        async with running(faults=faults, seed=seed, duration=(5, 5)) as (emu, s):
            out: list[object] = []
            for _ in range(20):
                r = await _raw(s, "POST", emu.base_url + "/images/fetch/1", BODY)
                out.append(r[0] if isinstance(r, tuple) else "exc")
            return out

    a = await sequence(3)
    assert a == await sequence(3)
    assert a != await sequence(4)
    assert {200} < set(a)  # a mix of clean answers and faults


def test_exclusive_rates_must_sum_to_at_most_one() -> None:
    with pytest.raises(ValueError, match="sum"):
        EndpointFaults(http_5xx=0.6, reset=0.6)
    with pytest.raises(ValueError, match="slow"):
        EndpointFaults(slow=1.5)
