"""Statistics: per-job timeline, duplicates by fingerprint, helpers, the HTTP endpoints."""

from __future__ import annotations

import anyio
import pytest

from modelslab_async.emulator._stats import fingerprint

from .helpers import fetch, get, post_json, running, submit

pytestmark = pytest.mark.anyio


def test_fingerprint_canonical() -> None:
    assert fingerprint("a", 42, None) == fingerprint("a", "42", None)
    assert fingerprint("a", None, None) != fingerprint("a", 0, None)
    assert fingerprint("a", 1, "t1") != fingerprint("a", 1, "t2")
    assert len(fingerprint("a", 1, None)) == 64


async def test_duplicates_by_fingerprint() -> None:
    async with running(duration=(5, 5)) as (emu, s):
        await submit(emu, s, seed=42)
        await submit(emu, s, seed="42")
        await submit(emu, s, seed=42, track_id="other")
        await submit(emu, s, seed=None)
        await submit(emu, s, seed=None)
        await submit(emu, s, width=5000)  # rejected: not a submission
    stats = emu.stats
    assert stats.total_jobs == 5
    assert stats.duplicate_submissions() == 2
    assert sorted(stats.submissions_by_fingerprint.values()) == [1, 2, 2]


async def test_job_timeline_and_helpers() -> None:
    async with running(workers=1, duration=(0.1, 0.1)) as (emu, s):
        _, a, _ = await submit(emu, s)
        _, b, _ = await submit(emu, s)
        for job in (a, b):
            while (await fetch(emu, s, job["id"]))[1]["status"] != "success":  # noqa: ASYNC110
                await anyio.sleep(0.02)
            await get(s, job["future_links"][0])
        stats = emu.stats
        ja, jb = stats.jobs[a["id"]], stats.jobs[b["id"]]
        assert ja.submitted_at <= jb.submitted_at
        assert jb.started_at == pytest.approx(ja.ready_at)
        assert ja.eta_given == a["eta"]
        assert jb.eta_given == b["eta"]
        assert ja.first_success_at is not None
        assert ja.first_success_at >= ja.ready_at
        lags = stats.poll_lags()
        assert len(lags) == 2
        assert all(0 <= lag < 0.1 for lag in lags)
        assert stats.fetches_per_job() == pytest.approx((ja.fetch_calls + jb.fetch_calls) / 2)
        assert stats.ideal_makespan() == pytest.approx(jb.ready_at - ja.submitted_at)
        assert 0 in ja.downloads
        assert ja.download_attempts == 1
        assert stats.requests_by_endpoint["submit"] == 2
        assert stats.requests_by_endpoint["download"] == 2
        status, _body, _ = await post_json(s, emu.root_url + "/__emulator/stats", None)
        assert status == 404  # GET only
        async with s.get(emu.root_url + "/__emulator/stats") as resp:
            data = await resp.json()
        assert data["total_jobs"] == 2
        assert data["jobs"][str(a["id"])]["fetch_calls"] == ja.fetch_calls
        assert data["jobs"][str(a["id"])]["downloads"] == {"0": ja.downloads[0]}
        assert data["poll_lag_max"] == pytest.approx(max(lags))
        async with s.get(emu.root_url + "/__emulator/stats?jobs=0") as resp:
            assert "jobs" not in await resp.json()
        async with s.post(emu.root_url + "/__emulator/reset") as resp:
            assert resp.status == 200
        assert stats.total_jobs == 0
        assert stats.jobs == {}
        assert (await fetch(emu, s, a["id"]))[1]["status"] == "error"


async def test_peak_concurrency_and_queue() -> None:
    async with running(workers=2, duration=(0.2, 0.2), sync_threshold=10) as (emu, s):
        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(submit, emu, s)
        assert emu.stats.peak_concurrent_requests == 6
        assert emu.stats.peak_queue == 4
        assert len(emu.stats.poll_lags()) == 6
        assert max(emu.stats.poll_lags()) < 0.1  # sync answers come at ready time


async def test_emulator_reset_method_and_url_properties() -> None:
    async with running(duration=(5, 5)) as (emu, s):
        await submit(emu, s)
        emu.reset()
        assert emu.stats.total_jobs == 0
        assert emu.base_url == emu.root_url + "/api/v6"
        assert emu.root_url.startswith("http://127.0.0.1:")
        assert "workers=4" in repr(emu)
