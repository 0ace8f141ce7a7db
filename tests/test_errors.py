"""The exception hierarchy, its attributes, and that no error, repr or log line leaks the key."""

from __future__ import annotations

import json
import logging
import pickle
import traceback
from collections.abc import Callable
from typing import Any

import pytest

import modelslab_async as m
from modelslab_async import (
    AmbiguousSubmitError,
    APIError,
    AuthenticationError,
    BadRequestError,
    ClientStateError,
    ConfigurationError,
    DownloadError,
    GenerationFailed,
    GenerationTimeout,
    InsufficientCreditsError,
    JobNotFoundError,
    ManifestLockedError,
    ModelsLabError,
    RateLimitError,
    RedirectError,
    RequestValidationError,
    ResponseFormatError,
    RetryPolicy,
    ServerError,
    Text2ImgRequest,
    Timeouts,
    TransportError,
)
from modelslab_async._convert import request_to_wire
from modelslab_async._redact import (
    MASK,
    RedactingFilter,
    excerpt,
    mask,
    redact,
    register_secret,
    unregister_secret,
)
from modelslab_async._transport import Transport
from tests._scripted_server import Action, answer, echo, raw, reset, scripted, stall

CANARY = "sk-LEAKCANARY-123"

# --- the tree of README.md, "Errors" (and _errors.py's docstring) ---------------------------

TREE: list[tuple[type[BaseException], tuple[type[BaseException], ...]]] = [
    (ModelsLabError, (Exception,)),
    (RequestValidationError, (ModelsLabError, ValueError)),
    (ConfigurationError, (ModelsLabError, ValueError)),
    (ManifestLockedError, (ConfigurationError,)),
    (ClientStateError, (ModelsLabError, RuntimeError)),
    (APIError, (ModelsLabError,)),
    (AuthenticationError, (APIError,)),
    (RateLimitError, (APIError,)),
    (InsufficientCreditsError, (APIError,)),
    (BadRequestError, (APIError,)),
    (JobNotFoundError, (BadRequestError,)),
    (RedirectError, (APIError,)),
    (ServerError, (APIError,)),
    (GenerationFailed, (ModelsLabError,)),
    (GenerationTimeout, (ModelsLabError, TimeoutError)),
    (TransportError, (ModelsLabError,)),
    (AmbiguousSubmitError, (TransportError,)),
    (ResponseFormatError, (ModelsLabError,)),
    (DownloadError, (ModelsLabError,)),
]


@pytest.mark.parametrize(("cls", "bases"), TREE, ids=[c.__name__ for c, _ in TREE])
def test_exception_tree(cls: type[BaseException], bases: tuple[type[BaseException], ...]) -> None:
    for base in bases:
        assert issubclass(cls, base)


def test_every_exported_exception_is_in_the_tree() -> None:
    exported = {
        obj
        for name in m.__all__
        if isinstance(obj := getattr(m, name), type) and issubclass(obj, BaseException)
    }
    assert exported == {cls for cls, _ in TREE}


def _examples() -> list[ModelsLabError]:
    return [
        RequestValidationError("width", 2048, "an integer in 1..1024"),
        ConfigurationError("no API key: set MODELSLAB_API_KEY"),
        ManifestLockedError("out/manifest.jsonl", 4242),
        ClientStateError("the client is not open"),
        APIError("API error (HTTP 200): odd", status_code=200, api_message="odd", url="http://h"),
        AuthenticationError("authentication failed", status_code=401, api_message="Invalid"),
        RateLimitError("rate limited", retry_after=30.0, status_code=429),
        BadRequestError("request rejected", status_code=200, api_message="Model id not found"),
        RedirectError("submit: HTTP 307 redirect to evil.example", status_code=307, location="x"),
        ServerError("server error", status_code=503, body="<html>"),
        GenerationFailed(123, "Failed, Try Again", transient=True),
        GenerationTimeout(123, 600.0),
        TransportError("fetch: timed out", url="http://h/x", kind="timeout"),
        AmbiguousSubmitError("submit: reset after sending", url="http://h/x", kind="reset"),
        ResponseFormatError("expected JSON", status_code=200, body="<html>", path="$.status"),
        DownloadError("not an image", url="http://h/a.png", job_id=123, status_code=200),
    ]


@pytest.mark.parametrize("exc", _examples(), ids=lambda e: type(e).__name__)
def test_every_error_is_one_line_and_survives_pickling(exc: ModelsLabError) -> None:
    assert "\n" not in str(exc)
    assert str(exc) == exc.message
    again = pickle.loads(pickle.dumps(exc))
    assert type(again) is type(exc)
    assert str(again) == str(exc)
    assert vars(again) == vars(exc)


def test_api_errors_carry_status_message_url_and_job_id() -> None:
    exc = AuthenticationError(
        "authentication failed (HTTP 401): Invalid Api Key",
        status_code=401,
        api_message="Invalid Api Key",
        url="https://modelslab.com/api/v6/images/fetch/5",
        job_id=5,
        body='{"status":"error"}',
    )
    assert exc.status_code == 401
    assert exc.api_message == "Invalid Api Key"
    assert exc.url == "https://modelslab.com/api/v6/images/fetch/5"
    assert exc.job_id == 5
    assert exc.body == '{"status":"error"}'


def test_rate_limit_error_carries_retry_after() -> None:
    assert RateLimitError("x", retry_after=30.0).retry_after == 30.0
    assert RateLimitError("x").retry_after is None
    assert RateLimitError("x", queue_limit=5).queue_limit == 5
    assert RateLimitError("x").queue_limit is None


def test_job_scoped_errors_carry_the_job_id() -> None:
    assert GenerationFailed(7).job_id == 7
    assert "job 7 failed" in str(GenerationFailed(7))
    assert str(GenerationFailed(None)) == "job failed: no message from the API"
    timeout = GenerationTimeout("abc", 12.345)
    assert timeout.job_id == "abc"
    assert timeout.waited == 12.345
    assert "12.3s" in str(timeout)
    assert "client.fetch('abc')" in str(timeout)


def test_request_validation_error_cuts_a_long_value() -> None:
    exc = RequestValidationError("negative_prompt", "n" * 500, "at most 10 characters")
    assert len(str(exc)) < 200
    assert str(exc).endswith("allowed at most 10 characters")


# --- redaction helpers -------------------------------------------------------------------------


@pytest.fixture
def canary() -> Any:
    register_secret(CANARY)
    yield CANARY
    unregister_secret(CANARY)


def test_redact_masks_registered_secrets_only_while_registered() -> None:
    assert redact(f"key={CANARY}") == f"key={CANARY}"
    register_secret(CANARY)
    register_secret(CANARY)
    try:
        assert redact(f"key={CANARY}!") == f"key={MASK}!"
        unregister_secret(CANARY)
        assert CANARY not in redact(CANARY)  # still registered once
    finally:
        unregister_secret(CANARY)
    assert redact(CANARY) == CANARY
    register_secret("")  # an empty key is never registered (it would mask everything)
    assert redact("abc") == "abc"


def test_redact_masks_the_longest_secret_first(canary: str) -> None:
    register_secret("sk-LEAK")
    try:
        assert redact(CANARY) == MASK
    finally:
        unregister_secret("sk-LEAK")


def test_mask_shows_only_the_length() -> None:
    assert mask(CANARY) == f"{MASK}({len(CANARY)} chars)"
    assert mask(None) == "<none>"
    assert mask("") == "<none>"


def test_excerpt_is_short_single_line_and_redacted(canary: str) -> None:
    body = f"<html>\n  <p>key {CANARY}</p>\n" + "x" * 5000
    text = excerpt(body.encode())
    assert CANARY not in text
    assert "\n" not in text
    assert len(text) <= 200
    assert excerpt(b"\xff\xfe ok") == "\ufffd\ufffd ok"


def test_log_records_of_the_package_logger_are_redacted(
    canary: str, caplog: pytest.LogCaptureFixture
) -> None:
    log = logging.getLogger("modelslab_async")
    with caplog.at_level(logging.DEBUG, logger="modelslab_async"):
        log.debug("body %s", {"key": CANARY})
        log.warning(f"inline {CANARY}")
    assert len(caplog.records) == 2
    for record in caplog.records:
        assert CANARY not in record.getMessage()
    assert CANARY not in caplog.text


def test_redacting_filter_keeps_a_record_with_a_broken_format(canary: str) -> None:
    record = logging.LogRecord("modelslab_async", logging.INFO, __file__, 1, "%d", ("x",), None)
    assert RedactingFilter().filter(record) is True


def test_errors_redact_registered_secrets_in_every_text_field(canary: str) -> None:
    url = f"https://h/fetch?key={CANARY}"
    errors: list[ModelsLabError] = [
        APIError(f"boom {CANARY}", api_message=CANARY, url=url),
        GenerationFailed(1, f"failed for {CANARY}"),
        TransportError(f"reset {url}", url=url),
        ResponseFormatError(f"bad {CANARY}", url=url),
        DownloadError(f"cannot download {url}", url=url),
        ConfigurationError(f"bad key {CANARY}"),
        RequestValidationError("extra", {"k": CANARY}, "no keys"),
    ]
    for exc in errors:
        assert_no_leak(exc)


# --- the key-leak test: every error class, triggered through a Transport -------------------


def assert_no_leak(exc: BaseException, secret: str = CANARY) -> None:
    """The secret is in no message, repr, argument, attribute or traceback of *exc*."""
    assert secret not in str(exc)
    assert secret not in repr(exc)
    assert all(secret not in str(a) and secret not in repr(a) for a in exc.args)
    shown = {k: v for k, v in vars(exc).items() if k != "value"}  # value: the caller's input
    assert secret not in repr(shown)
    assert secret not in "".join(traceback.format_exception(exc))


def echo_json(build: Callable[[str], Any], status: int = 200) -> Action:
    """Answer JSON built from the request body (which holds the key)."""
    return echo(lambda body: answer(build(body.decode()), status=status))


def echo_raw(
    template: str, status: int = 200, content_type: str = "text/html", **kw: Any
) -> Action:
    return echo(
        lambda body: raw(
            template.format(body.decode()), status=status, content_type=content_type, **kw
        )
    )


LEAKS: list[tuple[str, str, Action, type[ModelsLabError]]] = [
    (
        "invalid key (JSON)",
        "submit",
        echo_json(lambda b: {"status": "error", "message": f"Invalid Api Key: {b}", "tip": b}),
        AuthenticationError,
    ),
    (
        "HTTP 401 page",
        "fetch",
        echo_raw("<html>401 for {}</html>", status=401),
        AuthenticationError,
    ),
    (
        "HTTP 403 JSON",
        "submit",
        echo_json(lambda b: {"message": f"Forbidden: {b}"}, status=403),
        AuthenticationError,
    ),
    (
        "rate limit (JSON)",
        "submit",
        echo_json(
            lambda b: {"status": "error", "message": f"Rate limit exceeded {b}", "retry_after": 1}
        ),
        RateLimitError,
    ),
    (
        "HTTP 429 page",
        "fetch",
        echo_raw("too many {}", status=429, content_type="text/plain"),
        RateLimitError,
    ),
    (
        "validation object",
        "submit",
        echo_json(lambda b: {"status": "error", "message": {"prompt": [f"bad {b}"]}}),
        BadRequestError,
    ),
    (
        "model not found",
        "submit",
        echo_json(lambda b: {"status": "error", "message": f"Model id not found in {b}"}),
        BadRequestError,
    ),
    ("HTTP 500 page", "submit", echo_raw("<html>500 {}</html>", status=500), ServerError),
    (
        "HTTP 502 JSON",
        "fetch",
        echo_json(lambda b: {"status": "error", "message": b}, status=502),
        ServerError,
    ),
    (
        "generic error (messege)",
        "submit",
        echo_json(lambda b: {"status": "error", "messege": b}),
        APIError,
    ),
    (
        "failed job",
        "fetch",
        echo_json(lambda b: {"status": "failed", "id": 5, "message": f"Failed {b}"}),
        GenerationFailed,
    ),
    ("HTML page 200", "fetch", echo_raw("<!DOCTYPE html><p>{}</p>"), ResponseFormatError),
    (
        "malformed JSON",
        "submit",
        echo_raw('{{"status": "success", "echo": {}', content_type="application/json"),
        ResponseFormatError,
    ),
    (
        "unknown status",
        "fetch",
        echo_json(lambda b: {"status": b, "id": 5}),
        ResponseFormatError,
    ),
    (
        "wrong shape",
        "submit",
        echo_json(lambda b: {"status": "success", "id": 1, "output": {"echo": b}}),
        ResponseFormatError,
    ),
    (
        "non-numeric eta",
        "submit",
        echo_json(lambda b: {"status": "processing", "id": 1, "eta": b}),
        ResponseFormatError,
    ),
    ("reset on fetch", "fetch", reset(), TransportError),
    ("reset on submit", "submit", reset(), AmbiguousSubmitError),
    ("read timeout on submit", "submit", stall(), AmbiguousSubmitError),
]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("op", "action", "kind"),
    [(op, action, kind) for _, op, action, kind in LEAKS],
    ids=[name for name, *_ in LEAKS],
)
async def test_no_error_through_the_transport_leaks_the_key(
    op: str, action: Action, kind: type[ModelsLabError], caplog: pytest.LogCaptureFixture
) -> None:
    policy = RetryPolicy(initial=0.01, max_wait=0.02, max_retries=1, rate_limit_patience=0)
    request = Text2ImgRequest(prompt="a red fox")
    caplog.set_level(logging.DEBUG, logger="modelslab_async")
    async with scripted(submit=[action], fetch=[action]) as server:
        t = Transport(
            api_key=CANARY,
            base_url=server.base_url,
            retry=policy,
            timeouts=Timeouts(read=0.2),
        )
        async with t:
            call = t.submit(request, request_to_wire(request)) if op == "submit" else t.fetch(5)
            with pytest.raises(kind) as info:
                await call
        assert CANARY not in repr(t)
        assert_no_leak(info.value)
    assert any(CANARY in json.loads(s.body)["key"] for s in server.seen)  # it was sent
    for record in caplog.records:
        assert CANARY not in record.getMessage()
    assert CANARY not in caplog.text


@pytest.mark.anyio
async def test_a_bad_base_url_holding_the_key_does_not_leak_it() -> None:
    async with Transport(api_key=CANARY, base_url=f"{CANARY} not a url") as t:
        with pytest.raises(ConfigurationError) as info:
            await t.fetch(1)
    assert_no_leak(info.value)


def test_validation_errors_do_not_quote_a_key_put_in_extra() -> None:
    unregistered = "sk-NEVERREGISTERED-456"  # no client has been created with this key
    with pytest.raises(RequestValidationError) as info:
        Text2ImgRequest(prompt="x", extra={"key": unregistered})
    assert_no_leak(info.value, unregistered)


def test_validation_errors_redact_a_registered_key(canary: str) -> None:
    with pytest.raises(RequestValidationError) as info:
        Text2ImgRequest(prompt="x", webhook=f"ftp://hooks.example/?key={CANARY}")
    assert_no_leak(info.value)
    assert MASK in str(info.value)


def test_client_state_and_timeout_errors_hold_no_key(canary: str) -> None:
    t = Transport(api_key=CANARY, base_url="http://127.0.0.1:1")
    assert CANARY not in repr(t)
    for exc in (ClientStateError("the client is not open"), GenerationTimeout(5, 1.0)):
        assert_no_leak(exc)


def test_request_validation_error_survives_a_value_whose_repr_fails() -> None:
    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    exc = RequestValidationError("extra", Broken(), "JSON values")
    assert str(exc) == "extra: got <unprintable Broken>, allowed JSON values"


def test_a_huge_log_message_of_the_package_is_cut(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="modelslab_async"):
        logging.getLogger("modelslab_async").debug("answer: %s", "z" * 2**20)
    [record] = [r for r in caplog.records if r.name == "modelslab_async"]
    assert len(record.getMessage()) <= 4000
    assert "characters in all" in record.getMessage()
