"""Transport against a real aiohttp.web server on 127.0.0.1: retries, timeouts, safety."""

from __future__ import annotations

import email.utils
import math
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import anyio
import pytest

from modelslab_async import (
    AmbiguousSubmitError,
    AuthenticationError,
    BadRequestError,
    ClientStateError,
    ConfigurationError,
    Generation,
    GenerationFailed,
    Job,
    RateLimitError,
    ResponseFormatError,
    RetryPolicy,
    ServerError,
    Text2ImgRequest,
    Timeouts,
    TransportError,
    set_testing,
)
from modelslab_async._convert import request_to_wire
from modelslab_async._errors import ModelsLabError
from modelslab_async._transport import (
    RateLimitGate,
    Transport,
    _Outcome,
    is_testing,
    parse_retry_after,
    retry_decision,
)
from tests._scripted_server import (
    PROCESSING,
    SUCCESS,
    ScriptedServer,
    answer,
    raw,
    reset,
    scripted,
    stall,
)

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("blockbuster")]

KEY = "test-key-0123456789"
FAST = RetryPolicy(initial=0.01, max_wait=0.05, max_retries=2)
REQUEST = Text2ImgRequest(prompt="a red fox", seed=7)
HTML = "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"


@asynccontextmanager
async def transport(
    server: ScriptedServer | str,
    *,
    retry: RetryPolicy = FAST,
    timeouts: Timeouts | None = None,
    **kw: Any,
) -> AsyncIterator[Transport]:
    base = server if isinstance(server, str) else server.base_url
    async with Transport(api_key=KEY, base_url=base, retry=retry, timeouts=timeouts, **kw) as t:
        yield t


async def submit(t: Transport, request: Text2ImgRequest = REQUEST) -> Job | Generation:
    return await t.submit(request, request_to_wire(request))


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port on 127.0.0.1 that is bound but not listening: connections are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


# --- the happy path and what goes over the wire ----------------------------------------------


async def test_submit_posts_the_wire_body_with_the_key_and_parses_the_answer() -> None:
    async with scripted(submit=[answer(PROCESSING)]) as server, transport(server) as t:
        job = await submit(t)
    assert isinstance(job, Job)
    assert job.id == 13441520
    assert job.request is REQUEST
    [seen] = server.seen
    assert seen.path == "/images/text2img"
    assert seen.json() == {"key": KEY, **request_to_wire(REQUEST)}
    assert seen.headers["Content-Type"].startswith("application/json")
    assert seen.headers["User-Agent"].startswith("modelslab-async/")


async def test_the_key_travels_only_in_the_body() -> None:
    async with scripted() as server, transport(server) as t:
        await submit(t)
        await t.fetch(5)
    for seen in server.seen:
        assert KEY not in seen.path
        assert all(KEY not in v for v in seen.headers.values())
        assert seen.json()["key"] == KEY


async def test_fetch_posts_the_key_to_the_fetch_path_of_the_job() -> None:
    async with scripted(fetch=[answer(SUCCESS)]) as server, transport(server) as t:
        gen = await t.fetch(12384052, request=REQUEST)
    assert isinstance(gen, Generation)
    assert gen.request is REQUEST
    assert gen.meta is not None
    assert gen.meta.width == 512
    [seen] = server.seen
    assert seen.path == "/images/fetch/12384052"
    assert seen.json() == {"key": KEY}


async def test_fetch_of_a_null_id_success_keeps_the_fetched_id() -> None:
    body = {**SUCCESS, "id": None}
    async with scripted(fetch=[answer(body)]) as server, transport(server) as t:
        gen = await t.fetch(99)
    assert gen.id == 99


async def test_a_success_body_with_an_error_status_is_trusted() -> None:
    async with scripted(fetch=[answer(SUCCESS, status=404)]) as server, transport(server) as t:
        gen = await t.fetch(1)
    assert isinstance(gen, Generation)
    assert server.count() == 1


async def test_session_has_pool_limits_and_separate_timeouts() -> None:
    timeouts = Timeouts(connect=1.5, read=2.5, total=30.0)
    async with transport(
        "http://127.0.0.1:1", timeouts=timeouts, pool_limit=7, pool_limit_per_host=3
    ) as t:
        session = t.session
        assert isinstance(session.connector, aiohttp.TCPConnector)
        assert session.connector.limit == 7
        assert session.connector.limit_per_host == 3
        assert session.timeout.sock_connect == 1.5
        # API calls: read bounds the whole (small) answer; downloads: between chunks.
        assert session.timeout.sock_read is None
        assert session.timeout.total == 2.5
        assert timeouts.for_download().sock_read == 2.5
        assert timeouts.for_download().total == 30.0
    assert session.closed


def test_default_timeouts_are_finite_and_none_disables_one() -> None:
    default = Timeouts().to_aiohttp()
    assert default.total is not None
    assert default.sock_connect is not None
    assert Timeouts().for_download().sock_read is not None
    assert Timeouts(total=None).to_aiohttp().total == Timeouts().read
    assert Timeouts(total=None, read=None).to_aiohttp().total is None
    assert Timeouts(total=None, read=None).for_download().total is None


# --- lifecycle ---------------------------------------------------------------------------


async def test_use_outside_async_with_is_a_client_state_error() -> None:
    t = Transport(api_key=KEY, base_url="http://127.0.0.1:1")
    with pytest.raises(ClientStateError, match="async with"):
        await t.fetch(1)
    with pytest.raises(ClientStateError, match="async with"):
        await submit(t)
    with pytest.raises(ClientStateError):
        _ = t.session


async def test_use_after_close_and_reopening_are_client_state_errors() -> None:
    async with scripted() as server:
        t = Transport(api_key=KEY, base_url=server.base_url, retry=FAST)
        async with t:
            with pytest.raises(ClientStateError, match="already open"):
                await t.__aenter__()
        with pytest.raises(ClientStateError):
            await t.fetch(1)
        with pytest.raises(ClientStateError, match="closed"):
            async with t:
                pass
    assert server.count() == 0


async def test_an_invalid_base_url_is_a_configuration_error_not_a_lost_submit() -> None:
    async with transport("not a url") as t:
        with pytest.raises(ConfigurationError, match="invalid URL"):
            await submit(t)
        assert t.counters["retries"] == 0


# --- 5xx -----------------------------------------------------------------------------------


async def test_fetch_is_retried_after_5xx_then_succeeds() -> None:
    fetch = [raw(HTML, status=500), answer({"message": "Server Error"}, status=502)]
    async with (
        scripted(fetch=[*fetch, answer(SUCCESS)]) as server,
        transport(server) as t,
    ):
        gen = await t.fetch(12384052)
        assert t.counters["retries"] == 2
    assert isinstance(gen, Generation)
    assert server.count() == 3


@pytest.mark.parametrize(
    "unavailable",
    [
        raw("<html>503 Service Temporarily Unavailable</html>", status=503),
        answer({"status": "error", "message": "Service Unavailable"}, status=503),
    ],
    ids=["html", "json"],
)
async def test_submit_is_retried_after_503_then_succeeds(unavailable: Any) -> None:
    async with scripted(submit=[unavailable, answer(SUCCESS)]) as server, transport(server) as t:
        gen = await submit(t)
    assert isinstance(gen, Generation)
    assert server.count() == 2


@pytest.mark.parametrize("status", [500, 502, 504])
async def test_submit_is_not_retried_after_another_5xx(status: int) -> None:
    async with (
        scripted(submit=[raw(HTML, status=status), answer(SUCCESS)]) as server,
        transport(server) as t,
    ):
        with pytest.raises(ServerError) as info:
            await submit(t)
    assert info.value.status_code == status
    assert server.count() == 1


async def test_submit_is_retried_after_500_when_ambiguous_submits_are_allowed() -> None:
    policy = RetryPolicy(initial=0.01, max_wait=0.05, retry_ambiguous_submits=True)
    async with (
        scripted(submit=[raw(HTML, status=500), answer(SUCCESS)]) as server,
        transport(server, retry=policy) as t,
    ):
        gen = await submit(t)
    assert isinstance(gen, Generation)
    assert server.count() == 2


async def test_fetch_gives_up_after_max_retries_with_the_last_error() -> None:
    async with scripted(fetch=[raw(HTML, status=500)]) as server, transport(server) as t:
        with pytest.raises(ServerError) as info:
            await t.fetch(1)
        assert t.counters["retries"] == 2
        assert t.counters["fetch"] == 3
    assert server.count() == 3
    assert info.value.status_code == 500
    assert info.value.body is not None
    assert "502 Bad Gateway" in info.value.body


async def test_max_retries_zero_makes_one_attempt() -> None:
    policy = RetryPolicy(max_retries=0)
    async with (
        scripted(fetch=[raw(HTML, status=500)]) as server,
        transport(server, retry=policy) as t,
    ):
        with pytest.raises(ServerError):
            await t.fetch(1)
    assert server.count() == 1


# --- rate limits -----------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["submit", "fetch"])
async def test_429_retry_after_header_is_honoured(op: str) -> None:
    limited = raw(
        "Too Many Requests", status=429, content_type="text/plain", headers={"Retry-After": "1"}
    )
    script = [limited, answer(SUCCESS)]
    async with (
        scripted(submit=script if op == "submit" else None, fetch=script) as server,
        transport(server) as t,
    ):
        result = await (submit(t) if op == "submit" else t.fetch(1))
    assert isinstance(result, Generation)
    assert server.count() == 2
    [gap] = server.gaps()
    assert gap >= 1.0


async def test_429_with_a_json_body_without_status_is_a_rate_limit_and_retried() -> None:
    limited = answer({"message": "Too Many Attempts."}, status=429, headers={"Retry-After": "0.1"})
    async with scripted(submit=[limited, answer(SUCCESS)]) as server, transport(server) as t:
        gen = await submit(t)
    assert isinstance(gen, Generation)
    assert server.count() == 2


async def test_api_rate_limit_answer_with_http_200_waits_retry_after_and_retries() -> None:
    limited = answer(
        {
            "status": "error",
            "message": "Rate limit exceeded. Maximum 5 queued requests allowed.",
            "retry_after": 0.2,
        }
    )
    waits: list[float] = []
    async with (
        scripted(submit=[limited, answer(PROCESSING)]) as server,
        transport(server, on_rate_limit=waits.append) as t,
    ):
        job = await submit(t)
        assert t.gate.pauses == 1
    assert isinstance(job, Job)
    assert server.count() == 2
    assert waits == [0.2]
    [gap] = server.gaps()
    assert gap >= 0.2


async def test_rate_limit_waits_do_not_use_up_max_retries() -> None:
    limited = answer({"status": "error", "message": "Rate limit exceeded", "retry_after": 0.01})
    policy = RetryPolicy(initial=0.01, max_wait=0.05, max_retries=1)
    async with (
        scripted(fetch=[limited, limited, limited, answer(SUCCESS)]) as server,
        transport(server, retry=policy) as t,
    ):
        gen = await t.fetch(1)
    assert isinstance(gen, Generation)
    assert server.count() == 4


async def test_rate_limit_beyond_patience_raises_rate_limit_error() -> None:
    limited = answer({"status": "error", "message": "Rate limit exceeded", "retry_after": 0.05})
    policy = RetryPolicy(initial=0.01, max_wait=0.05, rate_limit_patience=0.12)
    async with scripted(submit=[limited]) as server, transport(server, retry=policy) as t:
        with pytest.raises(RateLimitError) as info:
            await submit(t)
    assert info.value.retry_after == 0.05
    assert server.count() == 3  # waited 0.05 + 0.05; a third wait would pass 0.12


async def test_retry_after_is_capped_by_max_retry_after() -> None:
    limited = answer({"status": "error", "message": "Rate limit exceeded", "retry_after": 3600})
    policy = RetryPolicy(initial=0.01, max_wait=0.05, max_retry_after=0.05)
    async with (
        scripted(fetch=[limited, answer(SUCCESS)]) as server,
        transport(server, retry=policy) as t,
    ):
        gen = await t.fetch(1)
    assert isinstance(gen, Generation)
    assert server.count() == 2


async def test_a_rate_limited_submit_holds_back_the_other_submits_of_the_client() -> None:
    limited = raw("slow down", status=429, content_type="text/plain", headers={"Retry-After": "1"})
    async with (
        scripted(submit=[limited, answer(SUCCESS)]) as server,
        transport(server) as t,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(submit, t)
        while server.count() < 1:  # noqa: ASYNC110 (waiting for the server to see the first)
            await anyio.sleep(0.005)
        while t.gate.remaining == 0:  # noqa: ASYNC110
            await anyio.sleep(0.005)
        first = server.seen[0].at
        await submit(t)
    assert server.count() == 3
    assert all(s.at - first >= 1.0 for s in server.seen[1:])


async def test_set_testing_turns_retry_waits_off() -> None:
    limited = raw("slow", status=429, content_type="text/plain", headers={"Retry-After": "3600"})
    policy = RetryPolicy(initial=3600, max_wait=3600)
    set_testing(True)
    try:
        assert is_testing()
        assert policy.backoff(5) == 0.0
        async with (
            scripted(submit=[limited, raw(HTML, status=503), answer(SUCCESS)]) as server,
            transport(server, retry=policy) as t,
        ):
            with anyio.fail_after(30):  # a hang guard, not a timing assertion
                gen = await submit(t)
    finally:
        set_testing(False)
    assert not is_testing()
    assert isinstance(gen, Generation)
    assert server.count() == 3


# --- connection reset ----------------------------------------------------------------------


async def test_fetch_is_retried_after_a_connection_reset_then_succeeds() -> None:
    async with (
        scripted(fetch=[reset(), reset(), answer(SUCCESS)]) as server,
        transport(server) as t,
    ):
        gen = await t.fetch(1)
    assert isinstance(gen, Generation)
    assert server.count() == 3


async def test_fetch_reset_every_time_is_a_transport_error_after_the_retries() -> None:
    async with scripted(fetch=[reset()]) as server, transport(server) as t:
        with pytest.raises(TransportError) as info:
            await t.fetch(1)
    assert not isinstance(info.value, AmbiguousSubmitError)
    assert info.value.kind == "reset"
    assert server.count() == 3


async def test_submit_is_not_retried_after_a_connection_reset() -> None:
    async with scripted(submit=[reset(), answer(SUCCESS)]) as server, transport(server) as t:
        with pytest.raises(AmbiguousSubmitError) as info:
            await submit(t)
    assert server.count() == 1
    assert info.value.kind == "reset"
    assert "duplicate" in str(info.value)
    assert info.value.url == server.base_url + "/images/text2img"


async def test_submit_is_retried_after_a_reset_when_ambiguous_submits_are_allowed() -> None:
    policy = RetryPolicy(initial=0.01, max_wait=0.05, retry_ambiguous_submits=True)
    async with (
        scripted(submit=[reset(), answer(SUCCESS)]) as server,
        transport(server, retry=policy) as t,
    ):
        gen = await submit(t)
    assert isinstance(gen, Generation)
    assert server.count() == 2


# --- HTML page and malformed JSON with status 200 -------------------------------------------


async def test_fetch_is_retried_after_an_html_page_then_succeeds() -> None:
    async with (
        scripted(fetch=[raw(HTML), answer(SUCCESS)]) as server,
        transport(server) as t,
    ):
        gen = await t.fetch(1)
    assert isinstance(gen, Generation)
    assert server.count() == 2


async def test_fetch_html_page_every_time_is_a_response_format_error_with_an_excerpt() -> None:
    page = HTML + "<p>" + "filler " * 2000 + "</p>"
    async with scripted(fetch=[raw(page)]) as server, transport(server) as t:
        with pytest.raises(ResponseFormatError) as info:
            await t.fetch(1)
    assert server.count() == 3
    exc = info.value
    assert exc.status_code == 200
    assert exc.body is not None
    assert "502 Bad Gateway" in exc.body
    assert len(exc.body) <= 200
    assert "HTML" in str(exc)
    assert len(str(exc)) < 400
    assert "\n" not in str(exc)


async def test_submit_is_not_retried_after_an_html_page() -> None:
    async with scripted(submit=[raw(HTML), answer(SUCCESS)]) as server, transport(server) as t:
        with pytest.raises(ResponseFormatError):
            await submit(t)
    assert server.count() == 1


@pytest.mark.parametrize(
    "body", ['{"status": "success", "id": 1, "output": [', "OK", '{"status": "processing"']
)
async def test_fetch_is_retried_after_malformed_json_then_raises(body: str) -> None:
    async with (
        scripted(fetch=[raw(body, content_type="application/json")]) as server,
        transport(server) as t,
    ):
        with pytest.raises(ResponseFormatError) as info:
            await t.fetch(1)
    assert server.count() == 3
    assert "malformed JSON" in str(info.value)
    assert info.value.body is not None
    assert body[:10] in info.value.body


async def test_submit_is_not_retried_after_malformed_json() -> None:
    broken = raw('{"status": "processing", "id": 1', content_type="application/json")
    async with scripted(submit=[broken, answer(SUCCESS)]) as server, transport(server) as t:
        with pytest.raises(ResponseFormatError, match="malformed JSON"):
            await submit(t)
    assert server.count() == 1


async def test_unknown_status_on_fetch_is_a_response_format_error() -> None:
    async with (
        scripted(fetch=[answer({"status": "queued", "id": 1})]) as server,
        transport(server) as t,
    ):
        with pytest.raises(ResponseFormatError, match="unknown status 'queued'"):
            await t.fetch(1)


# --- read timeout ----------------------------------------------------------------------------


async def test_fetch_is_retried_after_a_read_timeout_then_succeeds() -> None:
    async with (
        scripted(fetch=[stall(), answer(SUCCESS)]) as server,
        transport(server, timeouts=Timeouts(read=0.2)) as t,
    ):
        gen = await t.fetch(1)
    assert isinstance(gen, Generation)
    assert server.count() == 2


async def test_fetch_read_timeout_every_time_is_a_timeout_transport_error() -> None:
    async with (
        scripted(fetch=[stall()]) as server,
        transport(server, timeouts=Timeouts(read=0.2)) as t,
    ):
        with pytest.raises(TransportError) as info:
            await t.fetch(1)
    assert info.value.kind == "timeout"
    assert server.count() == 3


async def test_submit_is_not_retried_after_a_read_timeout() -> None:
    async with (
        scripted(submit=[stall(), answer(SUCCESS)]) as server,
        transport(server, timeouts=Timeouts(read=0.2)) as t,
    ):
        with pytest.raises(AmbiguousSubmitError) as info:
            await submit(t)
        assert t.counters["submit"] == 1
    assert server.count() == 1
    assert info.value.kind == "timeout"
    assert isinstance(info.value, TransportError)


async def test_submit_is_retried_after_a_read_timeout_when_ambiguous_submits_are_allowed() -> None:
    policy = RetryPolicy(initial=0.01, max_wait=0.05, retry_ambiguous_submits=True)
    async with (
        scripted(submit=[stall(), answer(SUCCESS)]) as server,
        transport(server, retry=policy, timeouts=Timeouts(read=0.2)) as t,
    ):
        gen = await submit(t)
    assert isinstance(gen, Generation)
    assert server.count() == 2


# --- connection refused --------------------------------------------------------------------


async def test_submit_is_retried_when_the_connection_is_refused(refused_port: int) -> None:
    async with transport(f"http://127.0.0.1:{refused_port}") as t:
        with pytest.raises(TransportError) as info:
            await submit(t)
        assert t.counters["submit"] == 3
        assert t.counters["retries"] == 2
    assert not isinstance(info.value, AmbiguousSubmitError)
    assert info.value.kind == "connect"
    assert "cannot connect" in str(info.value)


async def test_submit_succeeds_once_a_refusing_server_comes_up() -> None:
    from aiohttp import web

    from tests._scripted_server import SUBMIT

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        policy = RetryPolicy(initial=0.05, max_wait=0.05, jitter=False, max_retries=100)
        arrived: list[float] = []

        async def handle(request: web.Request) -> web.Response:
            arrived.append(time.monotonic())
            return web.json_response(SUCCESS)

        app = web.Application()
        app.router.add_post(SUBMIT, handle)
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            async with transport(f"http://127.0.0.1:{port}", retry=policy) as t:

                async def come_up() -> None:
                    while t.counters["submit"] < 2:  # noqa: ASYNC110 (until refused twice)
                        await anyio.sleep(0.01)
                    sock.listen()
                    await web.SockSite(runner, sock).start()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(come_up)
                    gen = await submit(t)
                assert t.counters["submit"] >= 3
        finally:
            await runner.cleanup()
    assert isinstance(gen, Generation)
    assert len(arrived) == 1


# --- errors that are never retried -----------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "kind"),
    [
        (raw("<html>401 Unauthorized</html>", status=401), AuthenticationError),
        (answer({"message": "Unauthenticated."}, status=401), AuthenticationError),
        (answer({"status": "error", "message": "Invalid Api Key"}), AuthenticationError),
        (answer({"status": "error", "message": "Model id not found"}), BadRequestError),
        (answer({"status": "failed", "id": 1, "message": "Failed, Try Again"}), GenerationFailed),
        (raw("<html>404 Not Found</html>", status=404), BadRequestError),
    ],
)
@pytest.mark.parametrize("op", ["submit", "fetch"])
async def test_answers_that_will_not_change_are_not_retried(
    op: str, action: Any, kind: type[ModelsLabError]
) -> None:
    script = [action, answer(SUCCESS)]
    async with scripted(submit=script, fetch=script) as server, transport(server) as t:
        with pytest.raises(kind):
            await (submit(t) if op == "submit" else t.fetch(1))
    assert server.count() == 1


# --- cancellation ---------------------------------------------------------------------------


async def test_cancelling_a_call_propagates_and_leaves_the_transport_usable() -> None:
    async with scripted(fetch=[stall(), answer(SUCCESS)]) as server, transport(server) as t:
        with anyio.move_on_after(0.2) as scope:
            await t.fetch(1)
        assert scope.cancelled_caught
        gen = await t.fetch(1)
    assert isinstance(gen, Generation)


# --- the decision table, backoff and Retry-After parsing ------------------------------------

_TRANSPORT = TransportError("x", kind="connect")
_AMBIGUOUS = AmbiguousSubmitError("x", kind="timeout")
_RESET = TransportError("x", kind="reset")


@pytest.mark.parametrize(
    ("op", "error", "sent", "allow_ambiguous", "retry"),
    [
        ("submit", RateLimitError("x", retry_after=1), True, False, True),
        ("fetch", RateLimitError("x"), True, False, True),
        ("submit", AuthenticationError("x", status_code=401), True, True, False),
        ("fetch", AuthenticationError("x", status_code=401), True, False, False),
        ("fetch", GenerationFailed(1, "failed"), True, False, False),
        ("submit", ServerError("x", status_code=503), False, False, True),
        ("submit", ServerError("x", status_code=503), True, False, True),
        ("submit", ServerError("x", status_code=500), True, False, False),
        ("submit", ServerError("x", status_code=500), True, True, True),
        ("fetch", ServerError("x", status_code=500), True, False, True),
        ("download", ServerError("x", status_code=502), True, False, True),
        ("submit", _TRANSPORT, False, False, True),
        ("submit", _AMBIGUOUS, True, False, False),
        ("submit", _AMBIGUOUS, True, True, True),
        ("fetch", _RESET, True, False, True),
        ("download", _RESET, True, False, True),
        ("submit", ResponseFormatError("x"), True, False, False),
        ("submit", ResponseFormatError("x"), True, True, True),
        ("fetch", ResponseFormatError("x"), True, False, True),
        ("fetch", BadRequestError("x", status_code=404), True, False, False),
        ("submit", BadRequestError("x"), True, True, False),
    ],
)
def test_retry_decision_table(
    op: Any, error: ModelsLabError, sent: bool, allow_ambiguous: bool, retry: bool
) -> None:
    policy = RetryPolicy(retry_ambiguous_submits=allow_ambiguous)
    assert retry_decision(op, _Outcome(error, sent=sent), policy) is retry


def test_backoff_is_exponential_capped_and_fully_jittered() -> None:
    exact = RetryPolicy(initial=0.5, max_wait=3.0, exp_base=2.0, jitter=False)
    assert [exact.backoff(n) for n in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    jittered = RetryPolicy(initial=0.5, max_wait=3.0, exp_base=2.0)
    for n in range(6):
        for _ in range(50):
            assert 0.0 <= jittered.backoff(n) <= exact.backoff(n)


@pytest.mark.parametrize(
    "bad",
    [
        {"max_retries": -1},
        {"initial": -0.1},
        {"max_wait": math.nan},
        {"rate_limit_patience": -1},
        {"initial": "1"},
    ],
)
def test_retry_policy_refuses_negative_or_non_numbers(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match=next(iter(bad))):
        RetryPolicy(**bad)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("1", 1.0),
        (" 2 ", 2.0),
        ("0.5", 0.5),
        ("-3", 0.0),
        ("", None),
        (None, None),
        ("soon", None),
        ("inf", None),
        ("nan", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past: no wait
    ],
)
def test_parse_retry_after(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds


def test_parse_retry_after_reads_an_http_date_in_the_future() -> None:
    header = email.utils.formatdate(time.time() + 120, usegmt=True)
    seconds = parse_retry_after(header)
    assert seconds is not None
    assert 100 <= seconds <= 121


async def test_rate_limit_gate_only_extends_and_waits_out_the_pause() -> None:
    gate = RateLimitGate()
    assert gate.remaining == 0
    await gate.wait()  # not paused: returns at once
    gate.pause(0.2)
    gate.pause(0.05)  # shorter: does not shorten the pause
    assert gate.pauses == 1
    assert 0 < gate.remaining <= 0.2
    start = time.monotonic()
    await gate.wait()
    assert time.monotonic() - start >= 0.15
    assert gate.remaining == 0


def test_repr_masks_the_key() -> None:
    t = Transport(api_key=KEY, base_url="http://127.0.0.1:1/")
    assert KEY not in repr(t)
    assert "19 chars" in repr(t)
    assert t.base_url == "http://127.0.0.1:1"


async def test_a_retry_after_on_a_503_lengthens_the_backoff() -> None:
    unavailable = raw("busy", status=503, content_type="text/plain", headers={"Retry-After": "0.3"})
    async with (
        scripted(submit=[unavailable, answer(SUCCESS)]) as server,
        transport(server) as t,
    ):
        gen = await submit(t)
    assert isinstance(gen, Generation)
    [gap] = server.gaps()
    assert gap >= 0.3


@pytest.mark.parametrize("op", ["submit", "fetch"])
async def test_an_api_error_with_a_5xx_status_is_not_retried(op: str) -> None:
    invalid = answer({"status": "error", "message": "Invalid Api Key"}, status=500)
    script = [invalid, answer(SUCCESS)]
    async with scripted(submit=script, fetch=script) as server, transport(server) as t:
        with pytest.raises(AuthenticationError) as info:
            await (submit(t) if op == "submit" else t.fetch(1))
    assert info.value.status_code == 500
    assert server.count() == 1


# --- hostile servers: redirects, escaped ids, oversized answers --------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("op", ["submit", "fetch"])
async def test_a_redirect_never_carries_the_key_to_its_target(op: str, status: int) -> None:
    from aiohttp import web

    from modelslab_async import RedirectError
    from tests._hostile import hostile

    async def target(request: web.Request) -> web.Response:
        return web.json_response(SUCCESS)

    async with hostile(target) as thief:
        # Named by another host name than the API's, so the message can be checked for it.
        location = f"http://localhost:{thief.host_port.rpartition(':')[2]}/steal?x=1"

        async def redirect(request: web.Request) -> web.Response:
            return web.Response(status=status, headers={"Location": location})

        async with hostile(redirect) as api, transport(api.base_url) as t:
            with pytest.raises(RedirectError) as info:
                await (submit(t) if op == "submit" else t.fetch(1))
    assert thief.seen == []
    assert len(api.seen) == 1  # a redirect is an answer that will not change: no retry
    error = info.value
    assert error.status_code == status
    assert "localhost" in str(error)
    assert KEY not in str(error)
    assert KEY not in repr(vars(error))


async def test_a_redirect_from_https_to_http_is_refused_the_same_way() -> None:
    from aiohttp import web

    from modelslab_async import RedirectError
    from tests._hostile import hostile

    async def redirect(request: web.Request) -> web.Response:
        return web.Response(status=308, headers={"Location": "http://evil.example/x"})

    async with hostile(redirect) as api, transport(api.base_url) as t:
        with pytest.raises(RedirectError, match=r"evil\.example") as info:
            await submit(t)
    assert info.value.location == "http://evil.example/x"


@pytest.mark.parametrize(
    ("job_id", "segment"),
    [
        ("../../x?y=1", "..%2F..%2Fx%3Fy%3D1"),
        ("..", "%2E%2E"),
        (".", "%2E"),
        ("a/b", "a%2Fb"),
        ("5#frag", "5%23frag"),
        ("id with space", "id%20with%20space"),
        ("%2e%2e", "%252e%252e"),
        (13441520, "13441520"),
    ],
)
async def test_a_job_id_is_one_escaped_path_segment(job_id: Any, segment: str) -> None:
    from aiohttp import web

    from tests._hostile import hostile

    async def ok(request: web.Request) -> web.Response:
        return web.json_response(SUCCESS)

    async with hostile(ok) as api, transport(api.base_url) as t:
        await t.fetch(job_id)
    [seen] = api.seen
    assert seen.raw_path == f"/images/fetch/{segment}"


async def test_an_oversized_answer_is_refused_unparsed_with_bounded_memory() -> None:
    from aiohttp import web

    from tests._hostile import hostile, peak_python_memory, stream_json

    async def huge(request: web.Request) -> web.StreamResponse:
        return await stream_json(request, 64 * 2**20)

    once = RetryPolicy(max_retries=0)
    async with hostile(huge) as api, transport(api.base_url, retry=once) as t:
        with peak_python_memory() as growth, pytest.raises(ResponseFormatError) as info:
            await t.fetch(1)
    assert "over 4194304 bytes" in str(info.value)
    assert growth[0] < 150
    assert len(str(info.value)) < 10_000


async def test_a_gzip_bomb_answer_is_refused_with_bounded_memory() -> None:
    from aiohttp import web

    from tests._hostile import gzip_bomb, hostile, peak_python_memory

    bomb = gzip_bomb()

    async def gzipped(request: web.Request) -> web.Response:
        return web.Response(
            body=bomb,
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )

    once = RetryPolicy(max_retries=0)
    async with hostile(gzipped) as api, transport(api.base_url, retry=once) as t:
        with peak_python_memory() as growth, pytest.raises((ResponseFormatError, TransportError)):
            await t.fetch(1)
    assert growth[0] < 200


async def test_a_huge_error_message_is_cut_in_the_exception() -> None:
    message = "m" * (3 * 2**20)  # under the answer cap, far over the message cap
    failed = answer({"status": "failed", "id": 1, "message": message})
    async with scripted(fetch=[failed]) as server, transport(server) as t:
        with pytest.raises(GenerationFailed) as info:
            await t.fetch(1)
    error = info.value
    assert len(str(error)) < 10_000
    assert "characters in all" in str(error)
    assert error.api_message is not None
    assert len(error.api_message) < 10_000


# --- policies are validated -------------------------------------------------------------------


@pytest.mark.parametrize("field", ["connect", "read", "total"])
@pytest.mark.parametrize("value", [0, -5, math.nan, math.inf, "10", True])
def test_timeouts_refuse_what_aiohttp_would_read_as_no_timeout(field: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=rf"Timeouts\.{field}: got .*, allowed a finite"):
        Timeouts(**{field: value})


def test_timeouts_take_none_for_no_limit_and_positive_numbers() -> None:
    assert Timeouts(connect=None, read=0.5, total=3).total == 3


@pytest.mark.parametrize(
    "bad",
    [
        {"max_retries": 1.5},
        {"max_retries": True},
        {"initial": math.inf},
        {"exp_base": 0.5},
        {"max_retry_after": math.nan},
        {"jitter": "yes"},
        {"retry_ambiguous_submits": 1},
    ],
)
def test_retry_policy_refuses_every_field_out_of_range(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match=rf"RetryPolicy\.{next(iter(bad))}: got"):
        RetryPolicy(**bad)


async def test_a_client_with_a_nan_timeout_is_refused_before_any_call() -> None:
    from modelslab_async import Client

    async with scripted() as server:
        with pytest.raises(ConfigurationError, match="total"):
            Client(KEY, base_url=server.base_url, timeout=math.nan)
    assert server.seen == []


# --- the retry table is data, and the README's table is made from it --------------------------


def test_the_readme_retry_table_is_the_one_the_code_uses() -> None:
    from pathlib import Path

    from modelslab_async._transport import retry_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert retry_table() in readme


@pytest.mark.parametrize("op", ["submit", "fetch", "download"])
def test_every_outcome_has_a_rule(op: Any) -> None:
    from modelslab_async._transport import rule_for

    for error in (ModelsLabError("x"), _TRANSPORT, _RESET, _AMBIGUOUS, BadRequestError("x")):
        assert rule_for(_Outcome(error, sent=True)) is not None
        retry_decision(op, _Outcome(error, sent=True), RetryPolicy())


# --- the key in tracebacks with frame locals ---------------------------------------------------


def _with_locals(exc: BaseException) -> str:
    """The traceback an error reporter shows, every frame's locals along the whole chain,
    less the test's own frames (which hold the key as test data: the server's records)."""
    import traceback

    report = traceback.TracebackException.from_exception(exc, capture_locals=True)
    for te in (report, report.__cause__, report.__context__):
        if te is not None:
            te.stack = traceback.StackSummary.from_list(
                [f for f in te.stack if f"{os.sep}tests{os.sep}" not in f.filename]
            )
    return "".join(report.format())


def _redirect_307() -> Any:
    from aiohttp import web

    async def act(request: web.Request, body: bytes) -> web.StreamResponse:
        return web.Response(status=307, headers={"Location": "http://elsewhere.example/x"})

    return act


@pytest.mark.parametrize(
    "action",
    [reset(), stall(), raw(HTML, status=500), raw("{broken", status=200), _redirect_307()],
    ids=["reset", "timeout", "html-500", "broken-json", "redirect"],
)
@pytest.mark.parametrize("op", ["submit", "fetch"])
async def test_the_key_is_not_in_the_locals_of_any_traceback_frame(op: str, action: Any) -> None:
    async with (
        scripted(submit=[action], fetch=[action]) as server,
        transport(server, timeouts=Timeouts(read=0.2)) as t,
    ):
        with pytest.raises(ModelsLabError) as info:
            await (submit(t) if op == "submit" else t.fetch(1))
    assert server.seen[0].json()["key"] == KEY  # the key was sent: it is in some frame's reach
    report = _with_locals(info.value)
    assert "body = " in report or "fields = " in report  # the locals are shown
    assert KEY not in report


async def test_the_key_is_not_in_the_locals_when_the_connection_is_refused(
    refused_port: int,
) -> None:
    async with transport(f"http://127.0.0.1:{refused_port}") as t:
        with pytest.raises(TransportError) as info:
            await submit(t)
    assert KEY not in _with_locals(info.value)


def test_a_client_that_refuses_its_options_keeps_the_key_out_of_the_traceback() -> None:
    from modelslab_async import Client

    with pytest.raises(ConfigurationError) as info:
        Client(KEY, base_url="http://127.0.0.1:1", max_in_flight=0)
    report = _with_locals(info.value)
    assert "api_key = " in report
    assert KEY not in report


async def test_a_closed_transport_no_longer_masks_its_key() -> None:
    from modelslab_async._redact import redact

    t = Transport(api_key="back", base_url="http://127.0.0.1:1")
    async with t:
        assert redact("initial_backoff") == "initial_***off"
    # Still referenced, not collected: the key is forgotten all the same (a short key left
    # registered cut words in later messages of other clients).
    assert redact("initial_backoff") == "initial_backoff"
    assert "4 chars" in repr(t)


def test_a_queue_limit_answer_goes_to_the_caller_and_credits_stop() -> None:
    from modelslab_async import InsufficientCreditsError
    from modelslab_async._transport import Action, action_for

    queue = _Outcome(RateLimitError("x", queue_limit=5), sent=True)
    assert action_for("submit", queue) is Action.TO_CALLER
    assert action_for("fetch", queue) is Action.WAIT
    assert retry_decision("submit", queue, RetryPolicy())
    credits = _Outcome(InsufficientCreditsError("x", status_code=402), sent=True)
    assert not retry_decision("submit", credits, RetryPolicy(retry_ambiguous_submits=True))
