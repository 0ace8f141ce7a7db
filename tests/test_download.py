"""Downloads against the emulator over 127.0.0.1: late links, faults, base64, atomic files.

Every test runs under the blockbuster fixture: a blocking call on the event loop (file I/O
outside a worker thread, ``time.sleep``) fails it. Each file the SDK leaves in a
destination folder is checked as a whole PNG (Pillow decodes it), and no ``.part`` or
hidden file may stay behind.
"""

from __future__ import annotations

import io
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest
from PIL import Image

from modelslab_async import (
    Client,
    DownloadError,
    DownloadPolicy,
    Generation,
    RetryPolicy,
    Text2ImgRequest,
)
from modelslab_async._download import verify_image_file
from modelslab_async.emulator import Emulator, EmulatorConfig, EndpointFaults, Faults
from tests._emulated import emulated_client, job_stats, record_fsyncs

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("blockbuster")]

KEY = "test-key-downloads"
PNG = b"\x89PNG\r\n\x1a\n"
RETRY = RetryPolicy(initial=0.01, max_wait=0.05, max_retries=8)
FAST_NOT_READY = DownloadPolicy(not_ready_initial=0.02, not_ready_max=0.1)


def emulated(
    config: EmulatorConfig | None = None, /, **client_kw: Any
) -> AbstractAsyncContextManager[tuple[Emulator, Client]]:
    """An emulator (fast jobs unless *config* says otherwise) and an open client on it."""
    client_kw.setdefault("retry", RETRY)
    client_kw.setdefault("download", FAST_NOT_READY)
    config = config or EmulatorConfig(workers=4, duration=(0.05, 0.1))
    return emulated_client(KEY, config, **client_kw)


def is_whole_png(data: bytes) -> bool:
    """True when *data* is a PNG that decodes to the last pixel."""
    if not data.startswith(PNG):
        return False
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
    except (OSError, SyntaxError):
        return False
    return True


async def text2img_many(client: Client, n: int, dest: Path, **fields: Any) -> list[Generation]:
    """*n* concurrent ``text2img`` calls into *dest*."""
    gens: list[Generation] = []

    async def one(i: int) -> None:
        gens.append(await client.text2img(prompt=f"item {i}", dest=dest, **fields))

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(one, i)
    return gens


def names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def assert_clean_folder(folder: Path, expected: set[str]) -> None:
    """Exactly *expected* files, each a whole PNG; no ``.part`` and no hidden file."""
    found = names(folder)
    assert not [n for n in found if n.startswith(".") or n.endswith(".part")], found
    assert found == expected
    for name in found:
        assert is_whole_png((folder / name).read_bytes()), name


# --- where files are written -------------------------------------------------------------------


async def test_images_are_written_in_a_thread_and_fsynced_before_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A manifest's ``done`` record is fsynced and a rerun trusts it: the image it names
    # must be on disk first, not only in the page cache.
    import os
    import threading

    events: list[tuple[str, str, int]] = []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"), threading.get_ident()))
        fsync(fd)

    def recording_replace(src: Any, dst: Any) -> None:
        events.append(("replace", str(src), threading.get_ident()))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    async with emulated() as (_, client):
        gens = await text2img_many(client, 3, tmp_path)
    monkeypatch.undo()
    assert_clean_folder(tmp_path, {f"{g.id}-0.png" for g in gens})
    renamed = [path for what, path, _ in events if what == "replace" and path.endswith(".part")]
    assert len(renamed) == 3
    for part in renamed:
        synced = events.index(next(e for e in events if e[:2] == ("fsync", part)))
        assert synced < events.index(next(e for e in events if e[:2] == ("replace", part)))
    assert threading.get_ident() not in {thread for *_, thread in events}


async def test_fsync_false_renames_into_place_without_an_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    synced = record_fsyncs(monkeypatch)
    async with emulated() as (_, client):
        gen = await client.text2img(prompt="no fsync", width=64, height=64)
        images = await client.download(gen, tmp_path / "scratch", fsync=False)
        await client.download(gen, tmp_path / "kept")
    monkeypatch.undo()
    assert images[0].path is not None
    assert is_whole_png(images[0].path.read_bytes())
    assert not [p for p in synced if "/scratch/" in p]
    assert [p for p in synced if "/kept/" in p]  # the default stays durable
    assert sorted(os.listdir(tmp_path / "scratch")) == [f"{gen.id}-0.png"]


def test_verify_image_file_refuses_empty_cut_short_and_foreign_files(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buffer, format="PNG")
    png = buffer.getvalue()
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buffer, format="WEBP")
    webp = buffer.getvalue()
    cases = {
        "whole.png": (png, True),
        "cut.png": (png[:-5], False),
        "empty.png": (b"", False),
        "whole.webp": (webp, True),
        "cut.webp": (webp[:-3], False),
        "text.png": (b"<html>not an image</html>", False),
    }
    for name, (data, _) in cases.items():
        (tmp_path / name).write_bytes(data)
    found = {name: verify_image_file(tmp_path / name) for name in cases}
    assert found == {name: ok for name, (_, ok) in cases.items()}
    assert verify_image_file(tmp_path / "missing.png") is False


async def test_links_that_404_for_a_while_after_success_are_retried(tmp_path: Path) -> None:
    # sync_threshold: the submit answers success, and the download starts at once.
    config = EmulatorConfig(duration=0.05, sync_threshold=1.0, link_delay=0.5)
    async with emulated(config) as (emu, client):
        gen = await client.text2img(prompt="a red fox", samples=2, dest=tmp_path)
    js = job_stats(emu, gen.id)
    assert sorted(js.downloads) == [0, 1]
    assert js.download_attempts > 2  # some attempts met the 404 page first
    assert_clean_folder(tmp_path, {f"{gen.id}-0.png", f"{gen.id}-1.png"})


async def test_late_links_fault_is_retried(tmp_path: Path) -> None:
    config = EmulatorConfig(
        duration=0.05, sync_threshold=1.0, faults=Faults(late_links=1.0, late_links_delay=0.5)
    )
    async with emulated(config) as (emu, client):
        gen = await client.text2img(prompt="a red fox", dest=tmp_path)
    assert emu.stats.faults_served["late_links"] == 1
    assert job_stats(emu, gen.id).download_attempts > 1
    assert_clean_folder(tmp_path, {f"{gen.id}-0.png"})


async def test_links_that_never_come_raise_download_error_and_leave_nothing(
    tmp_path: Path,
) -> None:
    config = EmulatorConfig(duration=0.05, link_delay=60.0)
    policy = DownloadPolicy(not_ready_timeout=0.2, not_ready_initial=0.02, not_ready_max=0.05)
    async with emulated(config, download=policy) as (emu, client):
        job = await client.submit(prompt="a red fox")
        gen = await client.wait(job)
        with pytest.raises(DownloadError) as info:
            await client.download(gen, tmp_path)
    assert info.value.job_id == gen.id
    assert info.value.url in (*gen.output, *gen.proxy_links)
    assert info.value.status_code == 404
    assert job_stats(emu, gen.id).downloads == {}
    assert names(tmp_path) == set()


# --- faults on the wire -----------------------------------------------------------------------


#: Images are written from memory, or streamed to a ``.part`` file 1 KiB at a time.
WRITE_MODES = pytest.mark.parametrize(
    "policy",
    [FAST_NOT_READY, attrs.evolve(FAST_NOT_READY, chunk_size=1024)],
    ids=["in-memory", "streamed"],
)


@WRITE_MODES
async def test_truncated_downloads_are_retried_and_leave_no_part_or_corrupt_file(
    policy: DownloadPolicy, tmp_path: Path
) -> None:
    config = EmulatorConfig(
        workers=4, duration=0.05, seed=3, faults=Faults(download=EndpointFaults(truncated=0.3))
    )
    async with emulated(config, download=policy) as (emu, client):
        gens = await text2img_many(client, 4, tmp_path, samples=2)
        retries = client.statistics().calls["retries"]
    assert emu.stats.faults_served["download.truncated"] > 0
    assert retries >= emu.stats.faults_served["download.truncated"]
    assert_clean_folder(tmp_path, {f"{g.id}-{n}.png" for g in gens for n in (0, 1)})


@WRITE_MODES
async def test_a_corrupt_image_with_a_matching_length_is_retried_not_kept(
    policy: DownloadPolicy, tmp_path: Path
) -> None:
    # The emulator's "malformed" download: half of the PNG, with a Content-Length to match.
    config = EmulatorConfig(
        workers=4, duration=0.05, seed=5, faults=Faults(download=EndpointFaults(malformed_json=0.3))
    )
    async with emulated(config, download=policy) as (emu, client):
        gens = await text2img_many(client, 6, tmp_path)
    assert emu.stats.faults_served["download.malformed_json"] > 0
    assert_clean_folder(tmp_path, {f"{g.id}-0.png" for g in gens})


async def test_a_reset_connection_is_retried(tmp_path: Path) -> None:
    config = EmulatorConfig(
        duration=0.05, seed=1, faults=Faults(download=EndpointFaults(reset=0.3, http_5xx=0.2))
    )
    async with emulated(config) as (emu, client):
        gens = await text2img_many(client, 5, tmp_path)
    served = emu.stats.faults_served
    assert served["download.reset"] + served["download.http_5xx"] > 0
    assert_clean_folder(tmp_path, {f"{g.id}-0.png" for g in gens})


# --- base64 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", [False, True], ids=["plain", "data-uri"])
async def test_base64_output_decodes_to_the_same_png_as_a_normal_link(
    prefix: bool, tmp_path: Path
) -> None:
    request = Text2ImgRequest(prompt="a red fox", seed=42, width=256, height=192, samples=2)
    config = EmulatorConfig(duration=0.05, base64_prefix=prefix)
    async with emulated(config) as (_emu, client):
        normal = await client.text2img(request, dest=tmp_path / "normal")
        encoded = await client.text2img(request.replace(base64=True), dest=tmp_path / "b64")
        in_memory = await client.text2img(request.replace(base64=True))
    assert all(url.endswith(".base64") for url in encoded.output)
    assert not any(url.endswith(".base64") for url in normal.output)
    for a, b, c in zip(normal.images, encoded.images, in_memory.images, strict=True):
        assert a.path is not None
        assert b.path is not None
        assert b.path.suffix == ".png"
        assert b.content_type == "image/png"
        assert b.path.read_bytes() == a.path.read_bytes()
        assert c.data == a.path.read_bytes()
    assert len(normal.images) == 2
    assert_clean_folder(tmp_path / "b64", {f"{encoded.id}-0.png", f"{encoded.id}-1.png"})
    with Image.open(tmp_path / "b64" / f"{encoded.id}-0.png") as img:
        assert img.size == (256, 192)


# --- what lands where -------------------------------------------------------------------------


async def test_download_without_dest_returns_the_bytes_a_file_would_hold(tmp_path: Path) -> None:
    async with emulated() as (_emu, client):
        job = await client.submit(prompt="a red fox", seed=9)
        gen = await client.wait(job)
        [in_memory] = await client.download(gen)
        [on_disk] = await client.download(gen, tmp_path)
    assert in_memory.path is None
    assert in_memory.data is not None
    assert is_whole_png(in_memory.data)
    assert on_disk.data is None
    assert on_disk.path is not None
    assert on_disk.path.read_bytes() == in_memory.data
    assert in_memory.size == len(in_memory.data)


async def test_downloading_again_overwrites_the_same_files(tmp_path: Path) -> None:
    async with emulated() as (emu, client):
        gen = await client.text2img(prompt="a red fox", samples=2, dest=tmp_path)
        again = await client.download(gen, tmp_path)
        assert job_stats(emu, gen.id).download_attempts == 4
    assert [img.path for img in again] == [img.path for img in gen.images]
    assert_clean_folder(tmp_path, {f"{gen.id}-0.png", f"{gen.id}-1.png"})


@WRITE_MODES
async def test_a_removed_dest_folder_is_created_again(
    policy: DownloadPolicy, tmp_path: Path
) -> None:
    dest = tmp_path / "out"
    async with emulated(download=policy) as (_emu, client):
        first = await client.text2img(prompt="one", dest=dest)
        for path in dest.iterdir():
            path.unlink()
        dest.rmdir()
        second = await client.text2img(prompt="two", dest=dest)
    assert_clean_folder(dest, {f"{second.id}-0.png"})
    assert first.id != second.id


async def test_the_proxy_link_is_used_when_the_primary_keeps_failing(tmp_path: Path) -> None:
    policy = DownloadPolicy(not_ready_timeout=0.1, not_ready_initial=0.02, not_ready_max=0.05)
    async with emulated(download=policy) as (emu, client):
        job = await client.submit(prompt="a red fox")
        gen = await client.wait(job)
        assert gen.proxy_links
        broken = Generation(
            id=gen.id,
            output=(emu.root_url + "/generations/no-such-image-0.png",),
            proxy_links=gen.proxy_links,
        )
        [img] = await client.download(broken, tmp_path)
    assert img.url == gen.proxy_links[0]
    assert "/cdn/" in img.url
    assert_clean_folder(tmp_path, {f"{gen.id}-0.png"})


async def test_a_non_http_link_is_refused_without_a_request(tmp_path: Path) -> None:
    async with emulated() as (emu, client):
        gen = Generation(id=7, output=("file:///etc/passwd",))
        with pytest.raises(DownloadError, match="non-http") as info:
            await client.download(gen, tmp_path)
    assert info.value.url == "file:///etc/passwd"
    assert info.value.job_id == 7
    assert emu.stats.requests_by_endpoint["download"] == 0
    assert names(tmp_path) == set()


async def test_an_image_over_the_size_cap_is_refused_and_not_kept(tmp_path: Path) -> None:
    async with emulated(download=DownloadPolicy(max_bytes=64)) as (_emu, client):
        job = await client.submit(prompt="a red fox")
        gen = await client.wait(job)
        with pytest.raises(DownloadError, match="cap") as info:
            await client.download(gen, tmp_path)
    assert info.value.job_id == gen.id
    assert names(tmp_path) == set()


# --- hostile servers: redirects, encodings, names, write errors, other writers' parts ----------


def _serving(routes: dict[str, Any]) -> Any:
    """A handler answering GET paths from *routes*: bytes (a PNG), or (status, Location)."""
    from aiohttp import web

    async def handle(request: web.Request) -> web.StreamResponse:
        what = routes.get(request.path)
        if isinstance(what, bytes):
            return web.Response(body=what, content_type="image/png")
        if isinstance(what, tuple):
            return web.Response(status=what[0], headers={"Location": what[1]})
        return web.Response(status=410)

    return handle


async def test_a_download_follows_up_to_three_http_redirects_without_the_key(
    tmp_path: Path,
) -> None:
    from tests._hostile import hostile, png

    routes: dict[str, Any] = {"/a": (302, "/b"), "/b": (307, "/c"), "/c": (301, "/d"), "/d": png()}
    async with hostile(_serving(routes)) as cdn, Client(KEY, base_url=cdn.base_url) as client:
        [img] = await client.download(Generation(id=5, output=(cdn.base_url + "/a",)), tmp_path)
    assert img.path == tmp_path / "5-0.png"
    assert [a.raw_path for a in cdn.seen] == ["/a", "/b", "/c", "/d"]
    for arrival in cdn.seen:
        assert KEY not in repr(arrival)
        assert arrival.headers.get("Accept-Encoding") == "identity"
    assert_clean_folder(tmp_path, {"5-0.png"})


async def test_a_fourth_redirect_is_not_followed(tmp_path: Path) -> None:
    from tests._hostile import hostile, png

    routes: dict[str, Any] = {
        "/a": (302, "/b"),
        "/b": (302, "/c"),
        "/c": (302, "/d"),
        "/d": (302, "/e"),
        "/e": png(),
    }
    async with hostile(_serving(routes)) as cdn, Client(KEY, base_url=cdn.base_url) as client:
        with pytest.raises(DownloadError, match="more than 3 redirects"):
            await client.download(Generation(id=5, output=(cdn.base_url + "/a",)), tmp_path)
    assert "/e" not in [a.raw_path for a in cdn.seen]
    assert names(tmp_path) == set()


@pytest.mark.parametrize(
    ("current", "location", "allowed"),
    [
        ("https://cdn.example/a.png", "https://other.example/b.png", True),
        ("http://cdn.example/a.png", "https://cdn.example/a.png", True),
        ("http://cdn.example/a.png", "/b.png", True),
        ("https://cdn.example/a.png", "http://cdn.example/a.png", False),
        ("https://cdn.example/a.png", "file:///etc/passwd", False),
        ("http://cdn.example/a.png", "ftp://cdn.example/a.png", False),
        ("http://cdn.example/a.png", None, False),
    ],
)
def test_redirects_stay_on_http_s_and_never_go_from_https_to_http(
    current: str, location: str | None, allowed: bool
) -> None:
    from modelslab_async._download import redirect_target

    if allowed:
        assert redirect_target(current, location, url=current, job_id=1).startswith("http")
    else:
        with pytest.raises(DownloadError):
            redirect_target(current, location, url=current, job_id=1)


async def test_a_gzip_bomb_image_is_refused_before_it_is_inflated(tmp_path: Path) -> None:
    from aiohttp import web

    from tests._hostile import gzip_bomb, hostile, peak_python_memory

    bomb = gzip_bomb()

    async def gzipped(request: web.Request) -> web.Response:
        return web.Response(
            body=bomb, headers={"Content-Encoding": "gzip"}, content_type="image/png"
        )

    async with hostile(gzipped) as cdn, Client(KEY, base_url=cdn.base_url) as client:
        gen = Generation(id=6, output=(cdn.base_url + "/bomb.png",))
        with peak_python_memory() as growth, pytest.raises(DownloadError, match="Content-Encoding"):
            await client.download(gen, tmp_path)
    assert growth[0] < 200
    assert names(tmp_path) == set()


def _api_with_images(ids: list[str | int]) -> Any:
    """Submits answer ``success`` with the next id of *ids* and one image link on this
    server; images are small PNGs."""
    from aiohttp import web

    from tests._hostile import png

    queue = list(ids)

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            job_id = queue.pop(0)
            link = f"{request.scheme}://{request.host}/img/{len(queue)}.png"
            return web.json_response({"status": "success", "id": job_id, "output": [link]})
        return web.Response(body=png(), content_type="image/png")

    return handle


async def test_a_300_character_job_id_gets_a_short_name_and_the_batch_goes_on(
    tmp_path: Path,
) -> None:
    from modelslab_async._download import file_stem
    from tests._hostile import hostile

    long_id = "j" * 300
    async with (
        hostile(_api_with_images([1, long_id, 3])) as api,
        Client(KEY, base_url=api.base_url, max_in_flight=1) as client,
    ):
        results = [r async for r in client.generate_many(["a", "b", "c"], dest=tmp_path)]
    assert all(r.ok for r in results), [r.error for r in results]
    stem = file_stem(Generation(id=long_id, output=("http://x/y.png",)), 0)
    assert len(stem) <= 110
    assert stem == file_stem(Generation(id=long_id, output=("http://x/z.png",)), 0)
    assert_clean_folder(tmp_path, {"1-0.png", f"{stem}.png", "3-0.png"})


async def test_a_file_that_cannot_be_written_fails_its_item_only(tmp_path: Path) -> None:
    from tests._hostile import hostile

    (tmp_path / "2-0.png").mkdir()  # the final name is taken by a folder
    async with (
        hostile(_api_with_images([1, 2, 3])) as api,
        Client(KEY, base_url=api.base_url, max_in_flight=1) as client,
    ):
        results = [r async for r in client.generate_many(["a", "b", "c"], dest=tmp_path)]
    by_job = {r.job_id: r for r in results}
    assert by_job[1].ok
    assert by_job[3].ok
    error = by_job[2].error
    assert isinstance(error, DownloadError)
    assert "cannot write" in str(error)
    assert error.job_id == 2
    (tmp_path / "2-0.png").rmdir()
    assert_clean_folder(tmp_path, {"1-0.png", "3-0.png"})


_HOLD_A_PART = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o666)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""


def test_stale_parts_are_removed_but_not_another_process_s_download(tmp_path: Path) -> None:
    import subprocess
    import sys

    from modelslab_async._download import remove_stale_parts

    live = tmp_path / ".77-0.0000beef.part"
    stale = tmp_path / ".78-0.0000dead.part"
    stale.write_bytes(b"left by a killed run")
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_A_PART, str(live)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        assert remove_stale_parts(tmp_path) == 1
        assert live.exists()
        assert not stale.exists()
    finally:
        holder.kill()
        holder.wait()
    # Its writer is gone (however it ended): now it is stale.
    assert remove_stale_parts(tmp_path) == 1
    assert names(tmp_path) == set()


@pytest.mark.parametrize(
    "bad",
    [
        {"max_bytes": 0},
        {"max_bytes": 1.5},
        {"not_ready_timeout": -1},
        {"not_ready_initial": 0},
        {"not_ready_max": float("nan")},
        {"chunk_size": 0},
        {"concurrency": 0},
        {"concurrency": True},
    ],
)
def test_download_policy_refuses_every_field_out_of_range(bad: dict[str, Any]) -> None:
    from modelslab_async import ConfigurationError

    with pytest.raises(ConfigurationError, match=rf"DownloadPolicy\.{next(iter(bad))}: got"):
        DownloadPolicy(**bad)
