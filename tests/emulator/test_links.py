"""Image links: 404 (HTML) until ready (+ delays), then real PNGs; base64 mode; temp."""

from __future__ import annotations

import base64
import io
import time

import anyio
import pytest
from PIL import Image

from modelslab_async.emulator import _png

from .helpers import get, running, submit, wait_done

pytestmark = pytest.mark.anyio


async def test_links_404_until_ready_then_png_of_the_right_size() -> None:
    async with running(workers=1, duration=(0.3, 0.3)) as (emu, s):
        _, job, _ = await submit(emu, s, width=320, height=200, samples=2)
        for link in job["future_links"] + job["proxy_links"]:
            status, body, ctype = await get(s, link)
            assert status == 404
            assert ctype.startswith("text/html")
            assert body.startswith(b"<!DOCTYPE html>")
        done = await wait_done(emu, s, job["id"])
        assert done["output"] == job["future_links"]
        images = []
        for link in done["output"] + done["proxy_links"]:
            async with s.get(link) as resp:
                data = await resp.read()
                assert resp.status == 200
                assert resp.headers["Content-Type"] == "image/png"
                assert int(resp.headers["Content-Length"]) == len(data)
            img = Image.open(io.BytesIO(data))
            img.load()
            assert img.size == (320, 200)
            images.append(data)
        assert images[0] == images[2]
        assert images[1] == images[3]
        assert images[0] != images[1]  # sample index differs
        missing = job["future_links"][0].replace("-0.png", "-7.png")
        assert (await get(s, missing))[0] == 404
        js = emu.stats.jobs[job["id"]]
        assert set(js.downloads) == {0, 1}
        assert js.download_attempts == 9  # 4 early 404s, 4 images, 1 bad index
        assert all(t >= js.ready_at for t in js.downloads.values())


async def test_link_delay_and_late_links_fault() -> None:
    from modelslab_async.emulator import Faults

    async with running(
        duration=(0.05, 0.05),
        link_delay=0.3,
        faults=Faults(late_links=1.0, late_links_delay=0.3),
    ) as (emu, s):
        _, job, _ = await submit(emu, s)
        done = await wait_done(emu, s, job["id"])
        assert done["status"] == "success"
        js = emu.stats.jobs[job["id"]]
        assert js.links_ready_at == pytest.approx(js.ready_at + 0.6)
        assert (await get(s, done["output"][0]))[0] == 404
        await anyio.sleep(max(0.0, js.links_ready_at - time.monotonic()) + 0.01)
        assert (await get(s, done["output"][0]))[0] == 200
        assert emu.stats.faults_served["late_links"] == 1


@pytest.mark.parametrize("prefix", [False, True])
async def test_base64_link_body_is_the_png(prefix: bool) -> None:
    async with running(duration=(0.05, 0.05), base64_prefix=prefix) as (emu, s):
        _, job, _ = await submit(emu, s, base64="yes", width=64, height=48, seed=7)
        done = await wait_done(emu, s, job["id"])
        status, text, ctype = await get(s, done["output"][0])
        _, plain_job, _ = await submit(emu, s, width=64, height=48, seed=7)
        await wait_done(emu, s, plain_job["id"])
        _, png, _ = await get(s, plain_job["future_links"][0])
        wrong_ext = done["output"][0].replace(".base64", ".png")
        assert (await get(s, wrong_ext))[0] == 404
    assert status == 200
    assert ctype.startswith("text/plain")
    assert text.startswith(b"data:image/png;base64,") == prefix
    decoded = base64.b64decode(text.split(b",", 1)[1] if prefix else text)
    assert decoded == png
    assert Image.open(io.BytesIO(decoded)).size == (64, 48)


async def test_same_seed_and_prompt_give_identical_bytes_across_emulators() -> None:
    async def image(seed: int, prompt: str, emu_seed: int) -> bytes:
        async with running(duration=(0.01, 0.01), seed=emu_seed) as (emu, s):
            _, job, _ = await submit(emu, s, seed=seed, prompt=prompt)
            await wait_done(emu, s, job["id"])
            return (await get(s, job["future_links"][0]))[1]

    a = await image(42, "a red fox", 0)
    assert a == await image(42, "a red fox", 99)
    assert a != await image(43, "a red fox", 0)
    assert a != await image(42, "a blue fox", 0)


@pytest.mark.parametrize(("width", "height"), [(1, 1), (8, 1024), (1024, 1024), (513, 77)])
@pytest.mark.parametrize("draw", [True, False])
def test_render_png_decodes(width: int, height: int, draw: bool) -> None:
    data = _png.render_png(width, height, 1, "prompt " * 20, 0, draw)
    img = Image.open(io.BytesIO(data))
    img.load()
    assert img.size == (width, height)
    assert data == _png.render_png(width, height, 1, "prompt " * 20, 0, draw)


def test_render_png_without_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_png, "HAVE_PILLOW", False)
    data = _png.render_png(300, 200, 5, "no pillow", 1)
    img = Image.open(io.BytesIO(data))
    img.load()
    assert img.size == (300, 200)
    top, bottom = img.convert("RGB").getpixel((0, 0)), img.convert("RGB").getpixel((0, 199))
    assert top != bottom  # a gradient


def test_png_cache_is_small_lru() -> None:
    cache = _png.PngCache(maxsize=2)
    a = cache.get(1, "p", 16, 16, 0)
    assert cache.get(1, "p", 16, 16, 0) is a
    cache.get(2, "p", 16, 16, 0)
    cache.get(3, "p", 16, 16, 0)
    assert cache.get(1, "p", 16, 16, 0) is not a
    assert cache.get(1, "p", 16, 16, 0) == a


async def test_failed_job_links_never_work() -> None:
    async with running(duration=(0.02, 0.02), fail_rate=1.0) as (emu, s):
        _, job, _ = await submit(emu, s)
        await wait_done(emu, s, job["id"])
        assert (await get(s, job["future_links"][0]))[0] == 404


async def test_head_request_is_not_a_download() -> None:
    async with running(duration=(0.01, 0.01)) as (emu, s):
        _, job, _ = await submit(emu, s, width=32, height=32)
        await wait_done(emu, s, job["id"])
        async with s.head(job["future_links"][0]) as resp:
            assert resp.status == 200
            assert int(resp.headers["Content-Length"]) > 0
        assert emu.stats.jobs[job["id"]].downloads == {}
