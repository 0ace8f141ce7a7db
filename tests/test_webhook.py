"""Webhook mode against the real emulator on 127.0.0.1.

The receiver runs four ways: standalone (``client.webhooks()``), as a route and as a
sub-application of an aiohttp.web app of the test's own, and as an ASGI app under a real
uvicorn server (mounted in FastAPI, and bare). The emulator POSTs each job's webhook at its
ready time; its per-job stats tell how many fetch calls the client made.

Most tests give the poller's safety net a long grace (``WAIT_GRACE``), so a job that
resolves well before it was woken by its webhook, not found by polling.
"""

from __future__ import annotations

import json
import math
import socket
from collections.abc import AsyncIterator, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import anyio
import anyio.lowlevel
import pytest
from aiohttp import web

from modelslab_async import (
    Client,
    ConfigurationError,
    Generation,
    GenerationTimeout,
    Job,
    PollPolicy,
    Text2ImgRequest,
    WebhookReceiver,
)
from modelslab_async.emulator import Emulator, EmulatorConfig

pytestmark = pytest.mark.anyio

KEY = "test-key"
#: The safety-net grace of most tests: far longer than any of them waits for a result.
WAIT_GRACE = 30.0
#: Bounds every wait for results; a job that resolves inside it came by webhook.
DEADLINE = 15.0
#: Generous bound on the result lag of a webhook job (typically a few milliseconds).
LAG_BOUND = 1.0

KINDS = ["standalone", "aiohttp-route", "aiohttp-subapp", "fastapi-uvicorn", "asgi-uvicorn"]


def config(**changes: Any) -> EmulatorConfig:
    base = {"workers": 8, "duration": (0.15, 0.3), "seed": 11, "draw_prompt": False}
    return EmulatorConfig(**{**base, **changes})


# --- servers -----------------------------------------------------------------------------


@asynccontextmanager
async def aiohttp_server(app: web.Application) -> AsyncIterator[int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


@asynccontextmanager
async def uvicorn_server(app: Any) -> AsyncIterator[int]:
    """A real uvicorn server for *app* on a free port of 127.0.0.1."""
    uvicorn = pytest.importorskip("uvicorn")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="auto"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        try:
            with anyio.fail_after(10):
                while not server.started:  # noqa: ASYNC110 - uvicorn offers no event
                    await anyio.sleep(0.01)
            yield port
        finally:
            server.should_exit = True


@asynccontextmanager
async def mounted(kind: str, receiver: WebhookReceiver) -> AsyncIterator[str]:
    """Serve *receiver* the *kind* way; yields the URL the API should POST to."""
    if kind == "aiohttp-route":

        async def health(request: web.Request) -> web.Response:
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_get("/health", health)
        app.router.add_post("/hooks/modelslab", receiver.aiohttp_handler)
        async with aiohttp_server(app) as port:
            yield f"http://127.0.0.1:{port}/hooks/modelslab"
    elif kind == "aiohttp-subapp":
        app = web.Application()
        app.add_subapp("/modelslab/webhook", receiver.aiohttp_app())
        async with aiohttp_server(app) as port:
            yield f"http://127.0.0.1:{port}/modelslab/webhook/"
    elif kind == "fastapi-uvicorn":
        fastapi = pytest.importorskip("fastapi")
        api = fastapi.FastAPI()

        @api.get("/health")
        async def health_api() -> dict[str, str]:
            return {"status": "ok"}

        api.mount("/modelslab/webhook", receiver)
        async with uvicorn_server(api) as port:
            yield f"http://127.0.0.1:{port}/modelslab/webhook/"
    elif kind == "asgi-uvicorn":
        async with uvicorn_server(receiver) as port:
            yield f"http://127.0.0.1:{port}/any/path"
    else:
        raise AssertionError(kind)


@asynccontextmanager
async def webhook_client(
    emu: Emulator, kind: str, *, grace: float = WAIT_GRACE, **client_kw: Any
) -> AsyncIterator[tuple[Client, WebhookReceiver]]:
    """A client of *emu* whose jobs are announced by webhook to a receiver served *kind*."""
    poll = PollPolicy(webhook_grace=grace)
    if kind == "standalone":
        async with Client(KEY, base_url=emu.base_url, poll=poll, **client_kw) as client:
            receiver = await client.webhooks("127.0.0.1", 0)
            yield client, receiver
        return
    receiver = WebhookReceiver()
    async with mounted(kind, receiver) as url:
        receiver.set_public_url(url)
        async with Client(
            KEY, base_url=emu.base_url, poll=poll, webhook=receiver, **client_kw
        ) as client:
            yield client, receiver


async def post(
    url: str, data: Any = None, *, json_body: Any = None, method: str = "POST"
) -> tuple[int, str]:
    """One request on a fresh connection: (status, body text)."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.request(method, url, data=data, json=json_body, allow_redirects=False) as resp,
    ):
        return resp.status, await resp.text()


def with_token(receiver: WebhookReceiver, token: str | None) -> str:
    """The receiver's URL with *token* instead of its own (None: no token)."""
    base = receiver.url.split("?", 1)[0]
    return base if token is None else f"{base}?token={token}"


def track_id_of(job: Job) -> str:
    assert job.request is not None
    assert job.request.track_id is not None
    return str(job.request.track_id)


def assert_real_links(emu: Emulator, gen: Generation, job: Job) -> None:
    assert gen.status == "success"
    assert gen.output == job.future_links
    assert gen.output
    assert all(url.startswith(emu.root_url + "/") for url in gen.output)


# --- resolved by webhook -----------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_jobs_resolve_by_webhook_with_at_most_one_fetch(kind: str) -> None:
    async with Emulator(config()) as emu, webhook_client(emu, kind) as (client, receiver):
        results: dict[int, Generation] = {}

        async def one(i: int) -> None:
            results[i] = await client.text2img(prompt=f"a fox #{i}", width=256, height=256)

        with anyio.fail_after(DEADLINE):
            async with anyio.create_task_group() as tg:
                for i in range(6):
                    tg.start_soon(one, i)
        assert receiver.expected == 0
        assert receiver.stats["accepted"] >= 6
        jobs = emu.stats.jobs
        assert len(jobs) == 6
        assert {gen.id for gen in results.values()} == set(jobs)
        for gen in results.values():
            assert gen.images
            assert gen.images[0].data
            assert gen.images[0].data[:8] == b"\x89PNG\r\n\x1a\n"
        for js in jobs.values():
            assert js.webhook_attempts >= 1
            assert js.fetch_calls <= 1, js
            assert js.first_success_at is not None
            assert js.first_success_at - js.ready_at < LAG_BOUND
        assert emu.stats.requests_by_endpoint["fetch"] <= 6


async def test_the_submit_carries_the_receiver_url_and_a_unique_track_id() -> None:
    async with (
        Emulator(config()) as emu,
        webhook_client(emu, "standalone") as (client, receiver),
    ):
        jobs = [await client.submit(prompt=f"p{i}") for i in range(4)]
        assert all(isinstance(job, Job) for job in jobs)
        sent = [job.request for job in jobs if isinstance(job, Job)]
        assert all(r is not None and r.webhook == receiver.url for r in sent)
        assert len({r.track_id for r in sent if r is not None}) == 4
        assert receiver.token is not None
        assert f"token={receiver.token}" in receiver.url
        with anyio.fail_after(DEADLINE):
            for job in jobs:
                await client.wait(job)
        assert receiver.expected == 0


async def test_a_request_with_its_own_track_id_keeps_it() -> None:
    async with (
        Emulator(config()) as emu,
        webhook_client(emu, "standalone") as (client, receiver),
    ):
        job = await client.submit(Text2ImgRequest(prompt="mine", track_id="order-42"))
        assert isinstance(job, Job)
        assert track_id_of(job) == "order-42"
        with anyio.fail_after(DEADLINE):
            gen = await client.wait(job)
        assert_real_links(emu, gen, job)
        assert emu.stats.jobs[int(str(job.id))].fetch_calls <= 1
        assert receiver.expected == 0


# --- the poller as the safety net ----------------------------------------------------------


async def test_dropped_webhooks_still_resolve_through_the_poller_after_the_grace() -> None:
    grace = 0.3
    async with (
        Emulator(config(webhook_drop_rate=1.0)) as emu,
        webhook_client(emu, "standalone", grace=grace) as (client, receiver),
    ):
        jobs = [await client.submit(prompt=f"lost {i}") for i in range(4)]
        with anyio.fail_after(DEADLINE):
            gens = [await client.wait(job) for job in jobs]
        assert receiver.stats["accepted"] == 0
        assert receiver.expected == 0
        assert emu.stats.faults_served["webhook.drop"] == 4
        for job, gen in zip(jobs, gens, strict=True):
            assert isinstance(job, Job)
            assert_real_links(emu, gen, job)
            js = emu.stats.jobs[int(str(job.id))]
            assert js.webhook_sent_at is None
            assert js.fetch_calls >= 1
            assert js.first_success_at is not None
            # The first check comes no sooner than eta + grace after the submit.
            assert js.first_success_at - js.submitted_at >= js.eta_given + grace - 0.01


async def test_a_webhook_receiver_that_is_down_only_delays_the_result() -> None:
    """The emulator's deliveries fail (connection refused): the poller resolves the jobs."""
    receiver = WebhookReceiver()
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        receiver.set_public_url(f"http://127.0.0.1:{unused.getsockname()[1]}/hook")
    async with (
        Emulator(config(webhook_retries=2)) as emu,
        Client(
            KEY, base_url=emu.base_url, webhook=receiver, poll=PollPolicy(webhook_grace=0.2)
        ) as client,
    ):
        job = await client.submit(prompt="nobody listens")
        assert isinstance(job, Job)
        with anyio.fail_after(DEADLINE):
            gen = await client.wait(job)
        assert_real_links(emu, gen, job)
        assert receiver.expected == 0


# --- forged and rejected POSTs ------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_a_forged_webhook_does_not_change_the_result(kind: str) -> None:
    async with (
        Emulator(config(duration=(0.8, 0.8))) as emu,
        webhook_client(emu, kind) as (client, receiver),
    ):
        job = await client.submit(prompt="the real one")
        assert isinstance(job, Job)
        forged = {
            "status": "success",
            "id": job.id,
            "output": ["https://attacker.example/evil.png"],
            "generationTime": 0.1,
            "track_id": track_id_of(job),
            "meta": {"prompt": "forged"},
        }
        # The right token and a known track_id: accepted as a wake-up signal only.
        assert (await post(receiver.url, json_body=forged))[0] == 200
        with anyio.fail_after(DEADLINE):
            gen = await client.wait(job)
        assert_real_links(emu, gen, job)
        assert "attacker" not in json.dumps(list(gen.output))
        assert gen.meta is not None
        assert gen.meta.prompt == "the real one"
        js = emu.stats.jobs[int(str(job.id))]
        # One fetch for the forged wake-up (answered "processing"), one for the real one.
        assert js.fetch_calls <= 2, js
        assert js.first_success_at is not None
        assert js.first_success_at - js.ready_at < LAG_BOUND
        # Once resolved the track id is forgotten: a late forgery is an unknown one.
        assert receiver.expected == 0
        assert (await post(receiver.url, json_body=forged))[0] == 404
        assert emu.stats.jobs[int(str(job.id))].fetch_calls == js.fetch_calls


async def test_a_forged_failure_does_not_fail_the_job() -> None:
    async with (
        Emulator(config(duration=(0.6, 0.6))) as emu,
        webhook_client(emu, "standalone") as (client, receiver),
    ):
        job = await client.submit(prompt="fine")
        assert isinstance(job, Job)
        forged = {"status": "failed", "id": job.id, "message": "no", "track_id": track_id_of(job)}
        assert (await post(receiver.url, json_body=forged))[0] == 200
        with anyio.fail_after(DEADLINE):
            gen = await client.wait(job)
        assert_real_links(emu, gen, job)
        assert receiver.expected == 0


@pytest.mark.parametrize("kind", KINDS)
async def test_rejected_posts_answer_4xx_and_change_nothing(kind: str) -> None:
    async with (
        Emulator(config(duration=(1.0, 1.0))) as emu,
        webhook_client(emu, kind) as (client, receiver),
    ):
        job = await client.submit(prompt="untouched")
        assert isinstance(job, Job)
        track_id = track_id_of(job)
        url = receiver.url
        cap = receiver.max_body
        real = {"status": "success", "id": job.id, "track_id": track_id, "output": ["x"]}

        async def chunked(body: bytes) -> AsyncIterator[bytes]:
            for i in range(0, len(body), 16384):
                yield body[i : i + 16384]

        padding = "a" * (cap - 1000)
        cases: list[tuple[str, Callable[[], Any], int]] = [
            ("unknown track_id", lambda: post(url, json_body={**real, "track_id": "nope"}), 404),
            ("no track_id", lambda: post(url, json_body={"status": "success"}), 404),
            ("bad JSON", lambda: post(url, data=b'{"track_id": '), 400),
            ("not UTF-8", lambda: post(url, data=b"\xff\xfe{}"), 400),
            ("JSON array", lambda: post(url, json_body=[real]), 400),
            ("oversized", lambda: post(url, data=b"{" + b" " * cap + b"}"), 413),
            ("oversized chunked", lambda: post(url, data=chunked(b" " * (cap + 10))), 413),
            # A large body under the cap is read whole (then judged: here an unknown id).
            (
                "large, under the cap",
                lambda: post(url, json_body={"track_id": "nope", "pad": padding}),
                404,
            ),
            (
                "large chunked, under the cap",
                lambda: post(
                    url,
                    data=chunked(json.dumps({"track_id": "nope", "pad": padding}).encode()),
                ),
                404,
            ),
            ("no token", lambda: post(with_token(receiver, None), json_body=real), 403),
            ("wrong token", lambda: post(with_token(receiver, "guess"), json_body=real), 403),
            (
                "wrong token, oversized",
                lambda: post(with_token(receiver, "guess"), data=b" " * (cap + 1)),
                403,
            ),
            ("GET", lambda: post(url, method="GET"), 405),
        ]
        for name, send, expected in cases:
            status, text = await send()
            assert status == expected, (name, status, text)
        assert receiver.stats["accepted"] == 0
        assert receiver.stats["forbidden"] == 3
        assert receiver.stats["too_large"] == 2
        js = emu.stats.jobs[int(str(job.id))]
        assert js.fetch_calls == 0  # nothing woke the poller
        assert receiver.expected == 1
        with anyio.fail_after(DEADLINE):
            gen = await client.wait(job)
        assert_real_links(emu, gen, job)
        assert js.fetch_calls == 1
        assert receiver.expected == 0


async def test_repeated_webhooks_for_one_job_make_one_confirming_fetch() -> None:
    """Retries of the same webhook right after one another do not each cost a fetch."""
    async with (
        Emulator(config(duration=(0.5, 0.5))) as emu,
        webhook_client(emu, "standalone") as (client, receiver),
    ):
        job = await client.submit(prompt="once")
        assert isinstance(job, Job)
        body = {"status": "success", "id": job.id, "track_id": track_id_of(job)}
        with anyio.fail_after(DEADLINE):
            while emu.stats.jobs[int(str(job.id))].first_success_at is None:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        for _ in range(3):
            status, _ = await post(receiver.url, json_body=body)
            assert status in (200, 404)  # 404 once the job resolved and was forgotten
        with anyio.fail_after(DEADLINE):
            gen = await client.wait(job)
        assert_real_links(emu, gen, job)
        assert emu.stats.jobs[int(str(job.id))].fetch_calls == 1
        assert receiver.expected == 0


# --- batches ------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["generate_many(webhook=)", "Client(webhook=)"])
async def test_generate_many_resolves_every_item_by_webhook(where: str) -> None:
    receiver = WebhookReceiver()
    async with Emulator(config(workers=4)) as emu, mounted("aiohttp-route", receiver) as url:
        receiver.set_public_url(url)
        poll = PollPolicy(webhook_grace=WAIT_GRACE)
        if where == "Client(webhook=)":
            client = Client(KEY, base_url=emu.base_url, poll=poll, webhook=receiver)
            hook: WebhookReceiver | None = None
        else:
            client = Client(KEY, base_url=emu.base_url, poll=poll)
            hook = receiver
        async with client:
            prompts = [f"batch item {i}" for i in range(12)]
            results = []
            with anyio.fail_after(DEADLINE):
                async for result in client.generate_many(prompts, max_in_flight=6, webhook=hook):
                    results.append(result)
            # A plain submit of a client without a receiver is not announced by webhook.
            if hook is not None:
                plain = await client.submit(prompt="polled")
                assert isinstance(plain, Job)
                assert plain.request is not None
                assert plain.request.webhook is None
                assert receiver.expected == 0
                await client.wait(plain)
        assert sorted(r.index for r in results) == list(range(12))
        assert all(r.error is None and r.generation is not None for r in results)
        assert receiver.expected == 0
        assert receiver.stats["accepted"] >= 12
        batch_ids = {r.job_id for r in results}
        for job_id in batch_ids:
            js = emu.stats.jobs[int(str(job_id))]
            assert js.webhook_attempts >= 1
            assert js.fetch_calls <= 1, js


# --- track ids are forgotten --------------------------------------------------------------


async def test_a_sync_answer_leaves_no_track_id_behind() -> None:
    async with (
        Emulator(config(sync_threshold=5.0, duration=(0.05, 0.05))) as emu,
        webhook_client(emu, "standalone") as (client, receiver),
    ):
        answer = await client.submit(prompt="instant")
        assert isinstance(answer, Generation)
        assert receiver.expected == 0


async def test_a_waiter_that_gives_up_and_the_client_exit_forget_track_ids() -> None:
    async with Emulator(config(duration=(5.0, 5.0))) as emu:
        async with webhook_client(emu, "standalone") as (client, receiver):
            job = await client.submit(prompt="slow")
            assert receiver.expected == 1
            with pytest.raises(GenerationTimeout):
                await client.wait(job, timeout=0.2)
            assert receiver.expected == 0
            await client.submit(prompt="left behind")
            assert receiver.expected == 1
        assert receiver.expected == 0


# --- the ASGI callable, driven directly ---------------------------------------------------


class ASGICall:
    """Feeds *messages* to an ASGI app and records what it sends."""

    def __init__(self, *messages: dict[str, Any]) -> None:
        self.incoming = list(messages)
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        if not self.incoming:
            await anyio.sleep_forever()
        return self.incoming.pop(0)

    async def send(self, message: MutableMapping[str, Any]) -> None:
        self.sent.append(dict(message))

    @property
    def status(self) -> int | None:
        starts = [m for m in self.sent if m["type"] == "http.response.start"]
        return int(starts[0]["status"]) if starts else None


def http_scope(receiver: WebhookReceiver, method: str = "POST", token: str | None = "") -> Any:
    token = receiver.token if token == "" else token
    query = b"" if token is None else f"token={token}".encode()
    return {"type": "http", "method": method, "path": "/", "query_string": query, "headers": []}


async def test_asgi_lifespan_is_answered() -> None:
    receiver = WebhookReceiver("http://127.0.0.1:1/hook")
    call = ASGICall({"type": "lifespan.startup"}, {"type": "lifespan.shutdown"})
    with anyio.fail_after(5):
        await receiver({"type": "lifespan"}, call.receive, call.send)
    assert [m["type"] for m in call.sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]


async def test_asgi_body_in_chunks_and_answers() -> None:
    receiver = WebhookReceiver("http://127.0.0.1:1/hook", max_body=100)
    woken: list[str] = []
    receiver.expect("t-1", lambda: woken.append("t-1"))
    body = json.dumps({"track_id": "t-1", "status": "success"}).encode()
    call = ASGICall(
        {"type": "http.request", "body": body[:10], "more_body": True},
        {"type": "http.request", "body": body[10:], "more_body": False},
    )
    await receiver(http_scope(receiver), call.receive, call.send)
    assert call.status == 200
    assert woken == ["t-1"]

    big = ASGICall(
        {"type": "http.request", "body": b" " * 60, "more_body": True},
        {"type": "http.request", "body": b" " * 60, "more_body": False},
    )
    await receiver(http_scope(receiver), big.receive, big.send)
    assert big.status == 413

    for method, token, expected in [("GET", "", 405), ("POST", None, 403), ("POST", "x", 403)]:
        call = ASGICall({"type": "http.request", "body": body, "more_body": False})
        await receiver(http_scope(receiver, method, token), call.receive, call.send)
        assert call.status == expected, (method, token)
    assert woken == ["t-1"]


async def test_asgi_client_gone_mid_body_gets_no_answer() -> None:
    receiver = WebhookReceiver("http://127.0.0.1:1/hook")
    call = ASGICall(
        {"type": "http.request", "body": b'{"track', "more_body": True},
        {"type": "http.disconnect"},
    )
    await receiver(http_scope(receiver), call.receive, call.send)
    assert call.sent == []


async def test_a_webhook_before_the_submit_answer_is_kept() -> None:
    """A POST that beats the submit's answer wakes the job as soon as it is expected."""
    receiver = WebhookReceiver("http://127.0.0.1:1/hook")
    receiver.pending("early")
    status, _ = receiver.handle(json.dumps({"track_id": "early"}).encode(), receiver.token)
    assert status == 200
    woken: list[int] = []
    receiver.expect("early", lambda: woken.append(1))
    assert woken == [1]
    receiver.forget("early")
    assert receiver.expected == 0


# --- the standalone server ----------------------------------------------------------------


async def test_standalone_on_a_wildcard_host_posts_to_loopback() -> None:
    async with Emulator(config()) as emu, Client(KEY, base_url=emu.base_url) as client:
        receiver = await client.webhooks("0.0.0.0", 0)
        assert receiver.url.startswith("http://127.0.0.1:")
        with anyio.fail_after(DEADLINE):
            gen = await client.text2img(prompt="anywhere")
        assert emu.stats.jobs[int(str(gen.id))].fetch_calls <= 1
        assert receiver.stats["accepted"] >= 1


@pytest.mark.filterwarnings("error::ResourceWarning")
async def test_standalone_on_a_busy_port_raises_and_the_client_polls_on() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        async with Emulator(config()) as emu, Client(KEY, base_url=emu.base_url) as client:
            with pytest.raises(OSError):  # noqa: PT011 - EADDRINUSE, errno differs by platform
                await client.webhooks("127.0.0.1", port)
            with pytest.raises(ConfigurationError):
                await client.webhooks("127.0.0.1", 0, public_url="ftp://example.com/hook")
            job = await client.submit(prompt="polled")
            assert isinstance(job, Job)
            assert job.request is not None
            assert job.request.webhook is None
            with anyio.fail_after(DEADLINE):
                await client.wait(job)


# --- configuration ------------------------------------------------------------------------


def test_public_url_must_be_http() -> None:
    with pytest.raises(ConfigurationError):
        WebhookReceiver("ftp://example.com/hook")
    receiver = WebhookReceiver()
    with pytest.raises(ConfigurationError):
        _ = receiver.url
    receiver.set_public_url("https://api.example.com/hook?tenant=7&flag=")
    assert receiver.url.startswith("https://api.example.com/hook?")
    assert "tenant=7" in receiver.url
    assert "flag=" in receiver.url
    assert f"token={receiver.token}" in receiver.url


def test_token_none_accepts_posts_without_one() -> None:
    receiver = WebhookReceiver("https://api.example.com/hook", token=None)
    assert receiver.url == "https://api.example.com/hook"
    receiver.expect("a", lambda: None)
    assert receiver.handle(b'{"track_id": "a"}', None) == (200, "ok")


def test_tokens_are_random_per_receiver() -> None:
    a, b = WebhookReceiver(), WebhookReceiver()
    assert a.token is not None
    assert b.token is not None
    assert a.token != b.token
    assert len(a.token) >= 20


# --- hostile clients: no token, endless bodies, odd tokens, slow bodies --------------------


class EndlessBody:
    """ASGI receive() of a client that sends 1 MiB messages for ever; counts what was read."""

    def __init__(self) -> None:
        self.read = 0
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        await anyio.lowlevel.checkpoint()  # a real server yields between messages
        self.read += 2**20
        return {"type": "http.request", "body": b" " * 2**20, "more_body": True}

    async def send(self, message: MutableMapping[str, Any]) -> None:
        self.sent.append(dict(message))

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])


@pytest.mark.parametrize("token", [None, "guess", "é-not-ascii"])
async def test_asgi_without_the_token_answers_403_before_reading_the_body(
    token: str | None,
) -> None:
    receiver = WebhookReceiver("http://127.0.0.1:1/hook")
    client = EndlessBody()
    scope = http_scope(receiver, token=token)
    if token is not None:
        scope["query_string"] = b"token=" + token.encode("utf-8")
    with anyio.fail_after(5):
        await receiver(scope, client.receive, client.send)
    assert client.status == 403
    assert client.read == 0


async def test_asgi_stops_reading_an_endless_body_at_max_body() -> None:
    receiver = WebhookReceiver("http://127.0.0.1:1/hook", max_body=3 * 2**20)
    client = EndlessBody()
    with anyio.fail_after(5):
        await receiver(http_scope(receiver), client.receive, client.send)
    assert client.status == 413
    assert client.read <= 4 * 2**20


async def test_asgi_answers_408_to_a_body_that_does_not_come() -> None:
    receiver = WebhookReceiver("http://127.0.0.1:1/hook", read_timeout=0.2)
    call = ASGICall({"type": "http.request", "body": b'{"track', "more_body": True})
    with anyio.fail_after(5):
        await receiver(http_scope(receiver), call.receive, call.send)
    assert call.status == 408


def test_a_non_ascii_token_is_a_wrong_token_not_an_error() -> None:
    receiver = WebhookReceiver("http://127.0.0.1:1/hook", token="s3cret")
    assert receiver.handle(b"{}", "sécret") == (403, "forbidden")
    assert receiver.handle(b"{}", "s3cret\udcff") == (403, "forbidden")
    assert receiver.handle(b"{}", b"\xff\xfe") == (403, "forbidden")
    assert receiver.token_ok("s3cret")


@pytest.mark.parametrize("bad", [{"max_body": 0}, {"read_timeout": -1}, {"read_timeout": math.nan}])
def test_receiver_limits_are_checked(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match=next(iter(bad))):
        WebhookReceiver("http://127.0.0.1:1/hook", **bad)


async def _stalled_post(url: str, first: bytes) -> int:
    """POST *url* a chunked body that sends *first* and then nothing until the answer."""
    answered = anyio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield first
        await answered.wait()

    async with aiohttp.ClientSession() as session, session.post(url, data=body()) as resp:
        answered.set()
        return resp.status


@asynccontextmanager
async def served(where: str, receiver: WebhookReceiver) -> AsyncIterator[str]:
    """*receiver* on its own server or as a route of an aiohttp app; yields its URL without
    the token."""
    if where == "standalone":
        async with anyio.create_task_group() as tg:
            yield await receiver.serve(tg)
            tg.cancel_scope.cancel()
    else:
        app = web.Application()
        app.router.add_post("/hook", receiver.aiohttp_handler)
        async with aiohttp_server(app) as port:
            yield f"http://127.0.0.1:{port}/hook"


@pytest.mark.parametrize("where", ["standalone", "aiohttp-route"])
async def test_aiohttp_server_refuses_a_tokenless_post_without_waiting_for_its_body(
    where: str,
) -> None:
    receiver = WebhookReceiver(read_timeout=30.0)
    async with served(where, receiver) as url:
        with anyio.fail_after(5):
            assert await _stalled_post(url + "?token=%C3%A9", b"x" * 1000) == 403
            assert await _stalled_post(url, b"x" * 1000) == 403
    assert receiver.stats["forbidden"] == 2


async def test_the_standalone_server_answers_408_to_a_stalled_body() -> None:
    receiver = WebhookReceiver(read_timeout=0.3)
    async with anyio.create_task_group() as tg:
        await receiver.serve(tg)
        with anyio.fail_after(5):
            assert await _stalled_post(receiver.url, b'{"track_id": ') == 408
        tg.cancel_scope.cancel()
    assert receiver.stats["too_slow"] == 1
