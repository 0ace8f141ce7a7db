"""The key-leak test: a canary key through every failure path, end to end.

The canary is the client's key against a running emulator that accepts only it (so every
answered call proves the canary was sent). For each error class it must appear in no
message, repr, argument, attribute, chained cause or traceback, nor in the locals of any
frame of those tracebacks (``capture_locals``); nor in the repr of any
public object; nor in any log record at DEBUG; nor in a manifest; nor in anything the CLI
prints, as text or as ``--json``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest

from modelslab_async import (
    AmbiguousSubmitError,
    AuthenticationError,
    BadRequestError,
    BatchProgress,
    BatchResult,
    Client,
    ClientStateError,
    ConfigurationError,
    DownloadError,
    DownloadPolicy,
    GenerationFailed,
    GenerationTimeout,
    ModelsLabError,
    PollPolicy,
    RateLimitError,
    RequestValidationError,
    ResponseFormatError,
    RetryPolicy,
    ServerError,
    Text2ImgRequest,
    Timeouts,
    TransportError,
    WebhookReceiver,
)
from modelslab_async.emulator import Emulator, EmulatorConfig, EndpointFaults, Faults
from modelslab_async.sync import Client as SyncClient

pytestmark = pytest.mark.anyio

CANARY = "sk-canary-9Qe4LEAK7b1d"
ROOT = Path(__file__).resolve().parents[1]
FAST_RETRIES = RetryPolicy(initial=0.001, max_wait=0.005, max_retries=2)
SMALL = {"prompt": "a red fox", "width": 64, "height": 64}


# --- where a key could hide --------------------------------------------------------------


def exception_texts(exc: BaseException, frame_locals: bool = True) -> Iterator[str]:
    """Every text an exception shows: message, repr, args, attributes, its chain, traceback,
    and (with *frame_locals*) its traceback with every frame's locals."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield str(e)
        yield repr(e)
        yield from (repr(a) for a in e.args)
        yield repr(vars(e))
        stack += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]
    yield "".join(traceback.format_exception(exc))
    if not frame_locals or isinstance(exc, RequestValidationError):
        return  # an error about the user's input: the frames that check it hold it
    # What error reporters (Sentry, pytest --showlocals, rich) show: every frame's locals,
    # along the whole chain of causes and contexts; the SDK's frames (a test's own frames
    # hold the canary as test data).
    yield from _sdk_frame_locals(exc)


def _sdk_frame_locals(exc: BaseException) -> Iterator[str]:
    report = traceback.TracebackException.from_exception(exc, capture_locals=True)
    stack: list[traceback.TracebackException | None] = [report]
    while stack:
        te = stack.pop()
        if te is None:
            continue
        for frame in te.stack:
            if f"{os.sep}modelslab_async{os.sep}" in frame.filename:
                yield f"{frame.filename}:{frame.lineno} {frame.locals}"
        stack += [te.__cause__, te.__context__, *(te.exceptions or ())]


def assert_clean(*things: object, frame_locals: bool = True) -> None:
    """No text of *things* (exceptions in depth, other objects by repr and str) has the key.

    ``frame_locals=False`` leaves out the locals of the SDK's frames of the traceback, for
    an error about the user's own input that holds the key (the frames that check the input
    hold it).
    """
    for thing in things:
        texts: Iterable[str]
        if isinstance(thing, BaseException):
            texts = exception_texts(thing, frame_locals)
        elif isinstance(thing, str | bytes):
            texts = [thing.decode(errors="replace") if isinstance(thing, bytes) else thing]
        else:
            texts = [repr(thing), str(thing)]
        for text in texts:
            assert CANARY not in text, f"the key leaked through {type(thing).__name__}: {text}"


def assert_logs_clean(caplog: pytest.LogCaptureFixture) -> None:
    assert caplog.records, "nothing was logged: the log check would prove nothing"
    for record in caplog.records:
        assert CANARY not in record.getMessage(), record.name
        assert CANARY not in repr(record.args)
    assert CANARY not in caplog.text  # formatted, with any exception tracebacks


@pytest.fixture(autouse=True)
def debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, the SDK's ("modelslab_async") included
    caplog.set_level(logging.DEBUG, logger="modelslab_async")


@asynccontextmanager
async def running(**config: Any) -> AsyncIterator[Emulator]:
    """An emulator that accepts only the canary key (unless ``keys`` says otherwise)."""
    config.setdefault("keys", [CANARY])
    config.setdefault("duration", (0.01, 0.03))
    async with Emulator(EmulatorConfig(**config)) as emu:
        yield emu


def client(emu: Emulator, **options: Any) -> Client:
    options.setdefault("retry", FAST_RETRIES)
    return Client(CANARY, base_url=emu.base_url, **options)


# --- every error class, through the client ------------------------------------------------

Scenario = Callable[[Client, Path], Awaitable[object]]


async def _submit_twice(c: Client, _: Path) -> object:
    await c.submit(**SMALL)
    return await c.submit(**SMALL)


async def _submit_then_fetch(c: Client, _: Path) -> object:
    job = await c.submit(**SMALL)
    return await c.fetch(job.id)


async def _wait_briefly(c: Client, _: Path) -> object:
    return await c.wait(await c.submit(**SMALL), timeout=0.05)


async def _text2img_to(c: Client, tmp: Path) -> object:
    return await c.text2img(**SMALL, dest=tmp / "out")


async def _after_close(c: Client, _: Path) -> object:
    await c.__aexit__(None, None, None)
    return await c.submit(**SMALL)


def _faults(**endpoint: EndpointFaults) -> Faults:
    return Faults(**endpoint)


ERRORS: list[Any] = [
    pytest.param(
        AuthenticationError,
        {"keys": ["someone-else"]},
        {},
        lambda c, _: c.submit(**SMALL),
        id="AuthenticationError on submit",
    ),
    pytest.param(
        AuthenticationError,
        {"keys": ["someone-else"]},
        {},
        lambda c, _: c.fetch(10_000_001),
        id="AuthenticationError on fetch",
    ),
    pytest.param(
        AuthenticationError,
        {"keys": ["someone-else"]},
        {},
        _text2img_to,
        id="AuthenticationError in text2img",
    ),
    pytest.param(
        RateLimitError,
        {"max_queued_per_key": 1, "duration": 5.0},
        {"retry": attrs.evolve(FAST_RETRIES, rate_limit_patience=0)},
        _submit_twice,
        id="RateLimitError (queue limit)",
    ),
    pytest.param(GenerationFailed, {"fail_rate": 1.0}, {}, _text2img_to, id="GenerationFailed"),
    pytest.param(
        GenerationTimeout, {"duration": 5.0}, {}, _wait_briefly, id="GenerationTimeout in wait"
    ),
    pytest.param(
        GenerationTimeout,
        {"duration": 5.0},
        {},
        lambda c, _: c.text2img(**SMALL, timeout=0.05),
        id="GenerationTimeout in text2img",
    ),
    pytest.param(
        AmbiguousSubmitError,
        {"faults": _faults(submit=EndpointFaults(reset=1.0))},
        {},
        lambda c, _: c.submit(**SMALL),
        id="AmbiguousSubmitError (reset on submit)",
    ),
    pytest.param(
        TransportError,
        {"faults": _faults(fetch=EndpointFaults(reset=1.0))},
        {},
        _submit_then_fetch,
        id="TransportError (reset on fetch)",
    ),
    pytest.param(
        DownloadError,
        {"faults": _faults(download=EndpointFaults(truncated=1.0))},
        {},
        _text2img_to,
        id="DownloadError (every download cut off)",
    ),
    pytest.param(
        ResponseFormatError,
        {"faults": _faults(submit=EndpointFaults(html_200=1.0))},
        {},
        lambda c, _: c.submit(**SMALL),
        id="ResponseFormatError (HTML 200)",
    ),
    pytest.param(
        ResponseFormatError,
        {"faults": _faults(submit=EndpointFaults(malformed_json=1.0))},
        {},
        lambda c, _: c.submit(**SMALL),
        id="ResponseFormatError (malformed JSON)",
    ),
    pytest.param(
        ResponseFormatError,
        {"faults": _faults(fetch=EndpointFaults(html_200=1.0))},
        {},
        _submit_then_fetch,
        id="ResponseFormatError (HTML 200 on fetch)",
    ),
    pytest.param(
        ServerError,
        {"faults": _faults(submit=EndpointFaults(http_5xx=1.0))},
        {},
        lambda c, _: c.submit(**SMALL),
        id="ServerError (5xx on submit)",
    ),
    pytest.param(
        DownloadError,
        {"link_delay": 30.0},
        {"download": DownloadPolicy(not_ready_timeout=0.3)},
        _text2img_to,
        id="DownloadError (links never ready)",
    ),
    pytest.param(
        BadRequestError,
        {},
        {},
        lambda c, _: c.fetch(999),
        id="BadRequestError (unknown job)",
    ),
    pytest.param(
        RequestValidationError,
        {},
        {},
        lambda c, _: c.submit(prompt="a red fox", extra={"key": CANARY}),
        id="RequestValidationError (key in extra)",
    ),
    pytest.param(
        RequestValidationError,
        {},
        {},
        lambda c, _: c.submit(prompt="a red fox", key=CANARY),
        id="RequestValidationError (key as a field)",
    ),
    pytest.param(
        RequestValidationError,
        {},
        {},
        lambda c, _: c.submit({"prompt": "a red fox", "key": CANARY}),
        id="RequestValidationError (key in a mapping)",
    ),
    pytest.param(ClientStateError, {}, {}, _after_close, id="ClientStateError (closed client)"),
]


@pytest.mark.parametrize(("expected", "config", "options", "scenario"), ERRORS)
async def test_no_error_class_leaks_the_key(
    expected: type[ModelsLabError],
    config: dict[str, Any],
    options: dict[str, Any],
    scenario: Scenario,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with running(**config) as emu:
        c = client(emu, **options)
        async with c:
            with pytest.raises(expected) as info:
                await scenario(c, tmp_path)
            stats = c.statistics()
        assert_clean(info.value, c, c.transport, stats, stats.poller)
        assert_clean(json.dumps(emu.stats.to_dict(), default=str))
    logging.getLogger("modelslab_async").debug("the key-leak test ran %s", expected.__name__)
    assert_logs_clean(caplog)


async def test_configuration_errors_do_not_leak_the_key(caplog: pytest.LogCaptureFixture) -> None:
    bad: list[dict[str, Any]] = [
        {"base_url": "ftp://api.example/v6"},
        {"base_url": f"http://api.example/{CANARY}/v6", "max_in_flight": 0},
        {"max_in_flight": "many"},
        {"timeout": "soon"},
    ]
    for options in bad:
        with pytest.raises(ConfigurationError) as info:
            Client(CANARY, **options)
        # (A base URL that holds the key is the user's own input: its frame holds it.)
        assert_clean(info.value, frame_locals=CANARY not in repr(options))
    logging.getLogger("modelslab_async").debug("configuration errors checked")
    assert_logs_clean(caplog)


# --- the repr of every public object ------------------------------------------------------


async def test_no_public_object_shows_the_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    progress: list[BatchProgress] = []
    async with running(seed=3) as emu, client(emu) as c:
        job = await c.submit(**SMALL)
        generation = await c.wait(job)
        images = await c.download(generation, tmp_path / "out")
        in_memory = await c.download(generation)
        full = await c.text2img(**SMALL, dest=tmp_path / "out")
        results = [
            r
            async for r in c.generate_many(
                [SMALL, {"prompt": "bad", "key": CANARY}], on_progress=progress.append
            )
        ]
        stats = c.statistics()
        objects: list[object] = [
            c,
            c.transport,
            c.poller,
            c.slots,
            stats,
            stats.poller,
            job,
            job.request,
            job.meta,
            generation,
            generation.meta,
            *images,
            *in_memory,
            full,
            *results,
            *progress,
            *(r.error for r in results if r.error is not None),
        ]
    assert job.request is not None
    assert generation.meta is not None
    assert progress
    objects += [
        SyncClient(CANARY, base_url=emu.base_url),
        Text2ImgRequest(prompt="a red fox", extra={"scheduler": "UniPC"}),
        PollPolicy(),
        PollPolicy.frugal(),
        RetryPolicy(),
        Timeouts(),
        DownloadPolicy(),
        WebhookReceiver("https://app.example/hooks"),
        BatchResult(index=0, request=None),
    ]
    assert_clean(*objects)
    for obj in objects:
        if attrs.has(type(obj)):
            assert_clean(attrs.asdict(obj, recurse=False))
    assert_logs_clean(caplog)


# --- a whole batch under faults: results, progress, manifest, a resumed run ----------------


BATCH_FAULTS = Faults(
    submit=EndpointFaults(reset=0.1, http_5xx=0.1, html_200=0.05, malformed_json=0.05),
    fetch=EndpointFaults(reset=0.1, http_5xx=0.1, html_200=0.05),
    download=EndpointFaults(truncated=0.1, reset=0.1, http_5xx=0.1),
    late_links=0.2,
    late_links_delay=0.5,
)


def batch_items() -> list[Any]:
    items: list[Any] = [{**SMALL, "prompt": f"leak test {i}", "seed": i} for i in range(40)]
    items += [
        {"prompt": "a key in the body", "key": CANARY},
        {"prompt": "a key in extra", "extra": {"key": CANARY}},
        {"prompt": "", "negative_prompt": CANARY},
        "",
    ]
    return items


async def test_a_batch_under_faults_and_its_manifest_never_show_the_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = tmp_path / "run.jsonl"
    out = tmp_path / "out"
    progress: list[BatchProgress] = []
    async with running(seed=5, fail_rate=0.2, faults=BATCH_FAULTS) as emu:
        async with client(emu) as c:
            first = [
                r
                async for r in c.generate_many(
                    batch_items(),
                    dest=out,
                    manifest=manifest,
                    max_resubmits=0,
                    on_progress=progress.append,
                )
            ]
        async with client(emu) as c:  # a rerun: errors rebuilt from the manifest
            second = [
                r
                async for r in c.generate_many(
                    batch_items(), dest=out, manifest=manifest, retry_failed=True
                )
            ]
        faults = dict(emu.stats.faults_served)
    failed_kinds = {type(r.error).__name__ for r in first + second if r.error is not None}
    # The batch went through many failure paths, and every one of them is clean.
    assert {"RequestValidationError", "AmbiguousSubmitError", "GenerationFailed"} <= failed_kinds
    assert sum(faults.values()) > 20
    assert_clean(*first, *second, *progress)
    assert_clean(*(r.error for r in first + second if r.error is not None))
    text = manifest.read_text()
    assert '"state": "failed"' in text or '"state":"failed"' in text
    assert_clean(text)
    assert_logs_clean(caplog)


# --- the CLI: text and --json output -------------------------------------------------------


def _env(key: str = CANARY) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSLAB_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["MODELSLAB_API_KEY"] = key
    return env


async def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    with anyio.fail_after(90):
        return await anyio.run_process(
            [sys.executable, "-m", "modelslab_async", *args], cwd=cwd, env=_env(), check=False
        )


def _jsonl(path: Path) -> Path:
    lines = [json.dumps(item) for item in batch_items() if isinstance(item, dict)]
    lines.append("not json at all")
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_cli_batch_text_and_json_output_never_show_the_key(tmp_path: Path) -> None:
    prompts = _jsonl(tmp_path / "requests.jsonl")
    async with running(seed=7, fail_rate=0.2, faults=BATCH_FAULTS) as emu:
        args = ("batch", str(prompts), "--out", "out", "--base-url", emu.base_url)
        text = await cli(*args, cwd=tmp_path)
        as_json = await cli(*args, "--json", "--retry-failed", cwd=tmp_path)
    assert text.returncode == 1, text.stderr.decode()  # some items failed
    records = [json.loads(line) for line in as_json.stdout.decode().splitlines()]
    assert len(records) == len(batch_items())  # (the "" item is skipped, "not json" is one)
    kinds = {r["error"]["type"] for r in records if r["error"] is not None}
    assert "RequestValidationError" in kinds
    assert len(kinds) >= 2, kinds
    assert_clean(text.stdout, text.stderr, as_json.stdout, as_json.stderr)
    assert_clean((tmp_path / "out" / "manifest.jsonl").read_text())


async def test_cli_error_paths_never_show_the_key(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\na grey wolf\n")
    outputs: list[subprocess.CompletedProcess[bytes]] = []
    async with running(keys=["someone-else"]) as emu:  # the canary is refused
        outputs.append(
            await cli("batch", str(prompts), "-o", "a", "--base-url", emu.base_url, cwd=tmp_path)
        )
        outputs.append(await cli("generate", "a fox", "--base-url", emu.base_url, cwd=tmp_path))
        outputs.append(await cli("fetch", "123", "--base-url", emu.base_url, cwd=tmp_path))
    assert [o.returncode for o in outputs] == [2, 2, 2]
    assert all(b"AuthenticationError" in o.stderr for o in outputs)
    async with running(fail_rate=1.0) as emu:
        outputs.append(await cli("generate", "a fox", "--base-url", emu.base_url, cwd=tmp_path))
        outputs.append(await cli("fetch", "999", "--base-url", emu.base_url, cwd=tmp_path))
    async with running(duration=5.0) as emu:
        outputs.append(
            await cli(
                "generate", "a fox", "--timeout", "0.2", "--base-url", emu.base_url, cwd=tmp_path
            )
        )
    async with running(faults=Faults(submit=EndpointFaults(reset=1.0))) as emu:
        outputs.append(await cli("generate", "a fox", "--base-url", emu.base_url, cwd=tmp_path))
    assert [o.returncode for o in outputs[3:]] == [1, 1, 1, 1]
    # Usage errors that quote a value given on the command line: the key must not be echoed.
    base = ("--base-url", "http://127.0.0.1:9/api/v6")
    outputs.append(
        await cli("batch", str(prompts), "-o", "b", "--set", f"key={CANARY}", *base, cwd=tmp_path)
    )
    outputs.append(await cli("generate", "a fox", "--set", f"key={CANARY}", *base, cwd=tmp_path))
    outputs.append(
        await cli("generate", "a fox", "--webhook", f"ftp://h/?k={CANARY}", *base, cwd=tmp_path)
    )
    outputs.append(await cli("generate", "a fox", "--track-id", CANARY * 20, *base, cwd=tmp_path))
    outputs.append(await cli("generate", "a fox", "--width", CANARY, *base, cwd=tmp_path))
    outputs.append(await cli("batch", str(prompts), "-o", "c", "-c", CANARY, *base, cwd=tmp_path))
    assert [o.returncode for o in outputs[7:]] == [2, 2, 2, 2, 2, 2]
    for output in outputs:
        assert_clean(output.stdout, output.stderr)
