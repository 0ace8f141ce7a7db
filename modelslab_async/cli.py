"""The ``modelslab-async`` command line: ``generate``, ``batch``, ``fetch``, ``emulator``.

Built on click, with rich for the progress bar and the summary (the ``cli`` extra:
``pip install 'modelslab-async[cli]'``). Everything a command does goes through the public
client (``Client.submit/wait/download/resume/generate_many``); ``docs/cli.md`` documents
every option.

Exit codes: 0 every item done; 1 some item failed; 2 usage or configuration error (a bad
option value, no key, the key rejected); 128 + the signal number after a clean stop on
SIGINT (130, Ctrl-C) or SIGTERM (143). The API key is never printed.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import math
import os
import secrets
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractContextManager, asynccontextmanager, nullcontext
from pathlib import Path
from typing import IO, Any, NoReturn, TypeVar

try:
    import click
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TaskID,
        TextColumn,
    )
    from rich.table import Table
except ModuleNotFoundError as _missing:  # pragma: no cover - tested in a subprocess
    if (_missing.name or "").split(".")[0] not in ("click", "rich"):
        raise
    sys.stderr.write(
        f"modelslab-async: the command line needs the 'cli' extra ({_missing.name} is not "
        "installed): pip install 'modelslab-async[cli]'\n"
    )
    raise SystemExit(2) from None

import anyio
import anyio.abc
import anyio.lowlevel
import attrs
from anyio.streams.memory import MemoryObjectSendStream

from . import _constants as C
from ._batch import BatchProgress
from ._client import Client, MaxInFlight
from ._convert import fingerprint, request_from_wire
from ._errors import (
    AuthenticationError,
    ConfigurationError,
    GenerationTimeout,
    JobId,
    ModelsLabError,
    RequestValidationError,
)
from ._manifest import ManifestRecord, error_record
from ._redact import redact, register_secret
from ._types import DOCUMENTED_FIELDS, SAFETY_CHECKER_TYPES, BatchResult, Job, Text2ImgRequest
from ._version import __version__

__all__ = ["main"]

_log = logging.getLogger("modelslab_async.cli")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 128 + 13  # stdout closed by its reader, as a shell reports SIGPIPE

#: The throwaway key used against the embedded emulator (never the user's key).
LOCAL_KEY = "local-emulator"
#: Timings of the embedded emulator: the README demo of a dozen prompts takes a few seconds.
LOCAL_WORKERS = 4
LOCAL_DURATION = (0.3, 1.0)

#: Lines between two plain progress reports when stderr is not a terminal (seconds).
PLAIN_INTERVAL = 5.0
#: Failures printed one by one before the rest are only counted.
MAX_FAILURE_LINES = 20

_JSONL_SUFFIXES = (".jsonl", ".ndjson")

F = TypeVar("F", bound=Callable[..., Any])


class _Seconds(click.ParamType):  # type: ignore[type-arg]  # generic from click 8.2 on
    """A positive, finite number of seconds (``nan``, ``inf``, 0 and negatives are refused
    when the command line is read, before anything is submitted)."""

    name = "seconds"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            seconds = math.nan
        if not (math.isfinite(seconds) and seconds > 0):
            self.fail(f"got {value!r}, allowed a finite number of seconds > 0", param, ctx)
        return seconds


class UsageFailure(click.ClickException):
    """A usage or configuration error found before anything was sent: exit code 2."""

    exit_code = EXIT_USAGE


def _stderr() -> Console:
    return Console(stderr=True, highlight=False)


def _say(console: Console, text: str) -> None:
    """One line on stderr, without rich markup (messages may contain brackets)."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


# --- request options ---------------------------------------------------------------------

_DEFAULTS = {f.name: f.default for f in attrs.fields(Text2ImgRequest)}


def _help(text: str, field: str | None = None) -> str:
    if field is None:
        return text
    default = _DEFAULTS[field]
    shown = "random" if default is None and field == "seed" else default
    if isinstance(shown, bool):
        shown = "yes" if shown else "no"
    return f"{text} [default: {shown}]" if shown is not None else text


_REQUEST_OPTIONS: list[Callable[[Any], Any]] = [
    click.option(
        "--width",
        type=int,
        help=_help("Image width, 1..1024 (multiples of 8 recommended).", "width"),
    ),
    click.option(
        "--height",
        type=int,
        help=_help("Image height, 1..1024 (multiples of 8 recommended).", "height"),
    ),
    click.option("--samples", type=int, help=_help("Images per prompt, 1..4.", "samples")),
    click.option(
        "--steps",
        "--num-inference-steps",
        "num_inference_steps",
        type=int,
        help=_help(
            "Inference steps, >= 1 (the server caps values above 20 at 20).",
            "num_inference_steps",
        ),
    ),
    click.option("--seed", type=int, help=_help("Seed, 0..2**32-1.", "seed")),
    click.option(
        "--guidance-scale", type=float, help=_help("Guidance scale, 1..20.", "guidance_scale")
    ),
    click.option("--negative-prompt", help="What to keep out of the image."),
    click.option("--model-id", help=_help("Model to run.", "model_id")),
    click.option(
        "--safety-checker/--no-safety-checker",
        default=None,
        help=_help("Run the NSFW safety checker.", "safety_checker"),
    ),
    click.option(
        "--safety-checker-type",
        metavar="TYPE",
        help=_help(
            "What the safety checker does: " + ", ".join(SAFETY_CHECKER_TYPES) + ".",
            "safety_checker_type",
        ),
    ),
    click.option(
        "--base64/--no-base64",
        default=None,
        help=_help("Ask for base64 output (decoded and written as image files).", "base64"),
    ),
    click.option(
        "--temp/--no-temp", default=None, help=_help("Ask for temporary image links.", "temp")
    ),
    click.option("--webhook", metavar="URL", help="http(s) URL the API calls when a job is done."),
    click.option(
        "--track-id",
        help="Id echoed back in webhook calls (batch: one per item is made when not given).",
    ),
    click.option(
        "--injected-noise-alpha",
        type=float,
        help=_help("Flux: injected noise alpha, 0..1.", "injected_noise_alpha"),
    ),
    click.option(
        "--sigma-threshold",
        type=float,
        help=_help("Flux: sigma threshold, 0..1.", "sigma_threshold"),
    ),
    click.option(
        "--true-cfg-scale",
        type=float,
        help=_help("Flux: true CFG scale, 0..10.", "true_cfg_scale"),
    ),
    click.option(
        "--use-cfg-zero-star/--no-use-cfg-zero-star",
        default=None,
        help=_help("Flux: CFG-Zero*.", "use_cfg_zero_star"),
    ),
    click.option(
        "--use-zero-init/--no-use-zero-init",
        default=None,
        help=_help("Flux: zero init.", "use_zero_init"),
    ),
    click.option(
        "--zero-steps",
        type=int,
        help=_help("Flux: zero steps, 0..steps.", "zero_steps"),
    ),
    click.option(
        "--set",
        "set_fields",
        multiple=True,
        metavar="FIELD=VALUE",
        help="Any request field by its API name, documented or not "
        "(--set enhance_prompt=yes --set scheduler=DPMSolverMultistepScheduler). Repeatable; "
        "the options above win over --set.",
    ),
]
_REQUEST_FIELDS: tuple[str, ...] = (
    "width",
    "height",
    "samples",
    "num_inference_steps",
    "seed",
    "guidance_scale",
    "negative_prompt",
    "model_id",
    "safety_checker",
    "safety_checker_type",
    "base64",
    "temp",
    "webhook",
    "track_id",
    "injected_noise_alpha",
    "sigma_threshold",
    "true_cfg_scale",
    "use_cfg_zero_star",
    "use_zero_init",
    "zero_steps",
)


def _request_options(func: F) -> F:
    for option in reversed(_REQUEST_OPTIONS):
        func = option(func)
    return func


def _connection_options(func: F) -> F:
    func = click.option(
        "--base-url",
        metavar="URL",
        help=f"API base URL [default: ${C.ENV_BASE_URL} or {C.DEFAULT_BASE_URL}].",
    )(func)
    func = click.option(
        "--local",
        is_flag=True,
        help="Run against an emulator started in this process (no key, no network). "
        f"The default when ${C.ENV_API_KEY} is not set and no base URL is given.",
    )(func)
    return func


def _set_value(name: str, text: str) -> Any:
    """A ``--set`` value: documented fields as text (the converter reads "512", "yes"), other
    fields as JSON when they parse (``2``, ``true``, ``{...}``) and as text otherwise."""
    if name in DOCUMENTED_FIELDS:
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _request_fields(options: dict[str, Any], set_fields: tuple[str, ...]) -> dict[str, Any]:
    """The request fields given on the command line: ``--set`` first, then the options."""
    fields: dict[str, Any] = {}
    for item in set_fields:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise click.BadParameter(f"expected FIELD=VALUE, got {item!r}", param_hint="'--set'")
        if name == "prompt":
            raise click.BadParameter(
                "the prompt is the PROMPT argument (generate) or a line of PROMPTS (batch)",
                param_hint="'--set'",
            )
        fields[name] = _set_value(name, value)
    for name in _REQUEST_FIELDS:
        value = options.pop(name, None)
        if value is not None:
            fields[name] = value
    return fields


def _validated(fields: Mapping[str, Any]) -> Text2ImgRequest:
    """The request the fields make, or exit 2 with the library's message (names the field)."""
    try:
        return request_from_wire(fields)
    except RequestValidationError as exc:
        raise UsageFailure(str(exc)) from None


# --- where requests go -------------------------------------------------------------------


@attrs.frozen
class _Target:
    local: bool
    base_url: str | None = None
    notice: bool = False


def _target(local: bool, base_url: str | None) -> _Target:
    """Real API, a given server, or the embedded emulator (decided before anything runs)."""
    if local and base_url:
        raise UsageFailure("--local and --base-url exclude each other")
    if local:
        return _Target(local=True)
    key = os.environ.get(C.ENV_API_KEY, "").strip()
    if not key and not base_url and not os.environ.get(C.ENV_BASE_URL):
        return _Target(local=True, notice=True)
    if not key:
        raise UsageFailure(
            f"no API key: set {C.ENV_API_KEY} (any non-empty value works with a local emulator)"
        )
    return _Target(local=False, base_url=base_url)


@asynccontextmanager
async def _open_client(
    target: _Target, console: Console, max_in_flight: MaxInFlight = C.DEFAULT_MAX_IN_FLIGHT
) -> AsyncIterator[Client]:
    if target.notice:
        _say(
            console,
            f"modelslab-async: {C.ENV_API_KEY} is not set, so this runs against the embedded "
            "local emulator (--local); set it to use the real API.",
        )
    if not target.local:
        async with Client(base_url=target.base_url, max_in_flight=max_in_flight) as client:
            yield client
        return
    from .emulator import Emulator, EmulatorConfig

    # A fresh seed per run: job ids (and so file names) differ from the last run's.
    config = EmulatorConfig(
        workers=LOCAL_WORKERS, duration=LOCAL_DURATION, seed=secrets.randbelow(2**31)
    )
    async with (
        Emulator(config) as emu,
        Client(LOCAL_KEY, base_url=emu.base_url, max_in_flight=max_in_flight) as client,
    ):
        yield client


# --- signals -----------------------------------------------------------------------------


class _Interrupt:
    """Turns the first SIGINT/SIGTERM into a cancel of ``scope`` (a clean stop); a second
    one quits at once."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.scope = anyio.CancelScope()
        self.signum: int | None = None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)

    async def watch(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        started = False
        try:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                task_status.started()
                started = True
                await self._handle(signals)
        except NotImplementedError:  # pragma: no cover - Windows: KeyboardInterrupt instead
            if not started:
                task_status.started()

    async def _handle(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            if self.signum is not None:
                _say(self.console, "modelslab-async: stopped at once.")
                os._exit(128 + signum)
            self.signum = signum
            _say(
                self.console,
                "modelslab-async: interrupted, stopping cleanly "
                "(in-flight requests finish first; press Ctrl-C again to quit at once).",
            )
            self.scope.cancel()


Body = Callable[["_Interrupt", Console], Awaitable[int]]


def _exit_code_for(error: BaseException) -> int:
    usage = (ConfigurationError, RequestValidationError, AuthenticationError, OSError, InputError)
    if isinstance(error, usage):
        return EXIT_USAGE
    return EXIT_FAILED


async def _guarded(body: Body) -> int:
    console = _stderr()
    interrupt = _Interrupt(console)
    async with anyio.create_task_group() as tg:
        await tg.start(interrupt.watch)
        try:
            code = await body(interrupt, console)
        except (ModelsLabError, OSError) as exc:
            _say(console, f"Error: {type(exc).__name__}: {exc}")
            code = _exit_code_for(exc)
        finally:
            tg.cancel_scope.cancel()
    return code


def _run(body: Body) -> NoReturn:
    """Run *body* on an asyncio loop with signal handling; exit with its code."""
    try:
        code = anyio.run(_guarded, body, backend="asyncio")
    except KeyboardInterrupt:  # a signal before the handler was installed
        code = 128 + signal.SIGINT
    sys.stdout.flush()
    raise SystemExit(code)


# --- the PROMPTS input -------------------------------------------------------------------


class InputError(Exception):
    """The PROMPTS input cannot be read (exit code 2)."""


class _Unreadable(Mapping[str, Any]):
    """A JSONL line that is not a JSON object of fields.

    Handed to ``generate_many`` like any item: reading it raises the RequestValidationError,
    so the item fails (and is recorded) without stopping the batch.
    """

    def __init__(self, error: RequestValidationError) -> None:
        self.error = error

    def __getitem__(self, key: str) -> Any:
        raise self.error

    def __iter__(self) -> Iterator[str]:
        raise self.error

    def __len__(self) -> int:
        return 0


Line = str | BaseException | None


def _open_source(source: str) -> IO[str]:
    if source == "-":
        # Our own reader of fd 0, so that a read blocked at exit holds no lock of sys.stdin.
        return open(sys.stdin.fileno(), encoding="utf-8", closefd=False)
    return open(source, encoding="utf-8")


def _pump(source: str, send: MemoryObjectSendStream[Line], token: Any) -> None:
    """Thread body: read lines and hand them over one by one (the stream bounds read-ahead)."""
    try:
        try:
            with _open_source(source) as stream:
                for line in stream:
                    anyio.from_thread.run(send.send, line, token=token)
            end: Line = None
        except (OSError, UnicodeDecodeError) as exc:
            end = exc
        anyio.from_thread.run(send.send, end, token=token)
    except (
        anyio.BrokenResourceError,
        anyio.ClosedResourceError,
        anyio.RunFinishedError,
        concurrent.futures.CancelledError,
    ):
        return  # the consumer stopped reading or the loop ended: nothing to report
    except Exception:  # a bug: never swallowed silently (the reader then sees no end)
        _log.exception("the input reader thread failed")


def _meaningful(line: str) -> str | None:
    text = line.strip()
    return text if text and not text.startswith("#") else None


def _count_items(source: str) -> int:
    with open(source, encoding="utf-8", errors="replace") as stream:
        return sum(1 for line in stream if _meaningful(line) is not None)


async def _read_items(
    source: str, fmt: str, defaults: Mapping[str, Any]
) -> AsyncGenerator[Mapping[str, Any], None]:
    """Items of PROMPTS, read lazily by a daemon thread: text lines become ``{"prompt":
    line}``, JSONL lines their objects; command-line fields are defaults under each item."""
    send, receive = anyio.create_memory_object_stream[Line](64)
    thread = threading.Thread(
        target=_pump,
        args=(source, send, anyio.lowlevel.current_token()),
        name="modelslab-async PROMPTS reader",
        daemon=True,
    )
    thread.start()
    mode = fmt if fmt != "auto" else None
    if mode is None and source.lower().endswith(_JSONL_SUFFIXES):
        mode = "jsonl"
    name = "<stdin>" if source == "-" else source
    lineno = 0
    with receive, send:
        while True:
            line = await receive.receive()
            if line is None:
                return
            if isinstance(line, BaseException):
                raise InputError(f"cannot read {name}: {line}")
            lineno += 1
            text = _meaningful(line)
            if text is None:
                continue
            if mode is None:  # auto: the first item decides
                mode = "jsonl" if text.startswith("{") else "text"
            if mode == "text":
                yield {**defaults, "prompt": text}
                continue
            try:
                data = json.loads(text)
            except ValueError as exc:
                data = exc
            if isinstance(data, dict):
                yield {**defaults, **data}
            else:
                shown = text if len(text) <= 60 else text[:57] + "..."
                yield _Unreadable(
                    RequestValidationError(
                        f"{name} line {lineno}", shown, "a JSON object of request fields"
                    )
                )


# --- progress ----------------------------------------------------------------------------


@attrs.define
class _Tally:
    """What the batch did, from its results (and the live counts of ``on_progress``)."""

    started: float = attrs.field(factory=time.monotonic)
    total: int | None = None
    submitted: int = 0
    processing: int = 0
    done: int = 0
    failed: int = 0
    instant: int = 0  # results taken from the manifest (no work this run)
    resumed_done: int = 0
    files: int = 0
    new_images: int = 0
    errors: Counter[str] = attrs.field(factory=Counter)
    failure_lines: int = 0
    input_exhausted: bool = False

    @property
    def finished(self) -> int:
        return self.done + self.failed

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def images_per_minute(self) -> float:
        elapsed = self.elapsed
        return self.new_images / elapsed * 60.0 if elapsed > 0 else 0.0

    @property
    def seconds_left(self) -> float | None:
        if self.total is None:
            return None
        worked = self.finished - self.instant
        remaining = max(0, self.total - self.finished)
        if remaining == 0:
            return 0.0
        if worked <= 0:
            return None
        return remaining * self.elapsed / worked

    def counts(self) -> str:
        return (
            f"submitted {self.submitted} · processing {self.processing} · "
            f"done {self.done} · failed {self.failed}"
        )

    def rate(self) -> str:
        return f"{self.images_per_minute:.0f} img/min"

    def left(self) -> str:
        seconds = self.seconds_left
        return f"~{_duration(seconds)} left" if seconds is not None else ""


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class _Display:
    """A rich progress bar on a terminal, periodic plain lines otherwise (both on stderr)."""

    def __init__(self, console: Console, tally: _Tally) -> None:
        self.console = console
        self.tally = tally
        self.live = console.is_terminal
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        self._last_line = ""

    def __enter__(self) -> _Display:
        if self.live:
            self.progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]batch"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[counts]}"),
                TextColumn("{task.fields[rate]}"),
                TextColumn("{task.fields[left]}"),
                console=self.console,
                auto_refresh=False,
                redirect_stdout=False,
                redirect_stderr=False,
                transient=False,
            )
            self.progress.start()
            self.task = self.progress.add_task("batch", total=None, counts="", rate="", left="")
            self.refresh()
        return self

    def __exit__(self, *exc: object) -> None:
        self.refresh(final=True)
        if self.progress is not None:
            self.progress.stop()

    def say(self, text: str) -> None:
        _say(self.console, text)
        if self.progress is not None:
            self.progress.refresh()

    def refresh(self, *, final: bool = False) -> None:
        t = self.tally
        if self.progress is not None and self.task is not None:
            self.progress.update(
                self.task,
                total=t.total,
                completed=t.finished,
                counts=t.counts(),
                rate=t.rate(),
                left=t.left() if not final else "",
                refresh=True,
            )
            return
        line = f"{t.finished}/{t.total if t.total is not None else '?'} finished: {t.counts()}"
        if line == self._last_line and not final:
            return
        self._last_line = line
        extra = ", ".join(part for part in (t.rate(), "" if final else t.left()) if part)
        _say(self.console, f"[{_duration(t.elapsed)}] {line}, {extra}")

    async def tick(self) -> None:
        interval = 0.125 if self.live else PLAIN_INTERVAL
        while True:
            await anyio.sleep(interval)
            self.refresh()


def _summary(console: Console, tally: _Tally, out: Path, manifest: Path, interrupted: bool) -> None:
    table = Table(title="modelslab-async batch", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_column()
    previous = f"{tally.resumed_done} from a previous run" if tally.resumed_done else ""
    table.add_row("done", str(tally.done), previous)
    table.add_row("failed", str(tally.failed), "")
    for kind, count in sorted(tally.errors.items(), key=lambda kv: (-kv[1], kv[0])):
        table.add_row(f"  {kind}", str(count), "")
    table.add_row("files", str(tally.files), f"in {out}")
    table.add_row("images/min", f"{tally.images_per_minute:.0f}", "written in this run")
    table.add_row("wall time", _duration(tally.elapsed), f"{tally.elapsed:.1f} s")
    table.add_row("manifest", "", str(manifest))
    console.print(table)
    if interrupted:
        _say(
            console,
            "Interrupted: rerun the same command to resume (done items are kept and submitted "
            "jobs are picked up by id, nothing is submitted twice).",
        )
    elif tally.failed:
        _say(
            console,
            f"{tally.failed} item(s) failed: see the manifest; rerun with --retry-failed "
            "to try them again.",
        )


def _result_record(result: BatchResult) -> dict[str, Any]:
    """The ``--json`` object of a result: the manifest's record fields."""
    record = ManifestRecord(
        index=result.index,
        state="done" if result.ok else "failed",
        fingerprint=fingerprint(result.request) if result.request is not None else "",
        job_id=result.job_id,
        files=tuple(str(f) for f in result.files),
        error=error_record(result.error) if result.error is not None else None,
    ).to_json()
    keys = ("index", "state", "fingerprint", "job_id", "files", "error", "time")
    return {k: record[k] for k in keys}


# --- commands ----------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="modelslab-async")
def cli() -> None:
    """Generate images with the ModelsLab text2img API, from a prompt or a file of prompts.

    Without MODELSLAB_API_KEY every command runs against an embedded local emulator, so
    `modelslab-async batch examples/prompts.txt --out out/` works with no key and no network.

    Exit codes: 0 all done, 1 some items failed, 2 usage or configuration error,
    130 interrupted (Ctrl-C) after a clean stop.
    """


@cli.command()
@click.argument("prompt")
@click.option(
    "--out",
    "-o",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Directory for the images.",
)
@click.option(
    "--timeout",
    type=_Seconds(),
    metavar="SECONDS",
    help="Stop waiting after SECONDS (the job goes on: get it later with `fetch`).",
)
@_connection_options
@_request_options
def generate(
    prompt: str,
    out: Path,
    timeout: float | None,
    local: bool,
    base_url: str | None,
    set_fields: tuple[str, ...],
    **options: Any,
) -> None:
    """Generate images for one PROMPT; print the paths of the files written."""
    request = _validated({**_request_fields(options, set_fields), "prompt": prompt})
    target = _target(local, base_url)

    async def body(interrupt: _Interrupt, console: Console) -> int:
        job_id: JobId | None = None
        hint = "" if target.local else " (the job goes on: modelslab-async fetch {id} --out {out})"
        async with _open_client(target, console) as client:
            with interrupt.scope:
                status: AbstractContextManager[Any] = (
                    console.status("generating…") if console.is_terminal else nullcontext()
                )
                with status:
                    answer = await client.submit(request)
                    if isinstance(answer, Job):
                        job_id = answer.id
                        if not console.is_terminal:
                            _say(console, f"job {job_id} submitted (eta {answer.eta:.0f} s)")
                    try:
                        generation = await client.wait(answer, timeout=timeout)
                    except GenerationTimeout as exc:
                        _say(console, f"Error: {exc}" + hint.format(id=job_id, out=out))
                        return EXIT_FAILED
                    images = await client.download(generation, out)
                for image in images:
                    click.echo(str(image.path))
                return EXIT_OK
        if job_id is not None and hint:
            _say(console, hint.format(id=job_id, out=out).strip(" ()").capitalize())
        return interrupt.exit_code

    _run(body)


@cli.command()
@click.argument("prompts", type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "--out",
    "-o",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory for the images (created if missing).",
)
@click.option(
    "--manifest",
    type=click.Path(dir_okay=False, path_type=Path),
    help="JSONL manifest of the run [default: OUT/manifest.jsonl]; rerunning resumes from it.",
)
@click.option(
    "--concurrency",
    "-c",
    default=str(C.DEFAULT_MAX_IN_FLIGHT),
    show_default=True,
    metavar="N|auto",
    help="Jobs in flight at once (what your plan allows); `auto` learns it from 429 answers.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "text", "jsonl"]),
    default="auto",
    show_default=True,
    help="PROMPTS format; auto: .jsonl/.ndjson files and input whose first item starts "
    "with `{` are JSONL, anything else is one prompt per line.",
)
@click.option(
    "--retry-failed", is_flag=True, help="Try again the items a previous run recorded as failed."
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object per finished item on stdout (the manifest's record fields).",
)
@_connection_options
@_request_options
def batch(
    prompts: str,
    out: Path,
    manifest: Path | None,
    concurrency: str,
    fmt: str,
    retry_failed: bool,
    as_json: bool,
    local: bool,
    base_url: str | None,
    set_fields: tuple[str, ...],
    **options: Any,
) -> None:
    """Generate images for every prompt of PROMPTS into OUT, resumably.

    PROMPTS is a text file (one prompt per line; blank lines and # comments are skipped), a
    JSONL file of request-field objects, or - for standard input. It is read lazily. Options
    given here are defaults for every item; a JSONL item's own fields win.
    """
    defaults = _request_fields(options, set_fields)
    _validated({**defaults, "prompt": "a prompt"})
    max_in_flight = _max_in_flight(concurrency)
    if prompts != "-" and not os.path.isfile(prompts):
        raise click.BadParameter(f"{prompts!r} is not a readable file", param_hint="'PROMPTS'")
    manifest_path = manifest if manifest is not None else out / "manifest.jsonl"
    resuming = manifest_path.is_file() and manifest_path.stat().st_size > 0
    target = _target(local, base_url)

    async def body(interrupt: _Interrupt, console: Console) -> int:
        return await _batch(
            prompts,
            fmt,
            defaults,
            out,
            manifest_path,
            max_in_flight,
            retry_failed,
            as_json,
            resuming,
            target,
            interrupt,
            console,
        )

    _run(body)


def _max_in_flight(value: str) -> MaxInFlight:
    if value.strip().lower() == "auto":
        return "auto"
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise click.BadParameter(
            f"expected an integer >= 1 or 'auto', got {value!r}", param_hint="'--concurrency'"
        )
    return number


async def _batch(
    prompts: str,
    fmt: str,
    defaults: Mapping[str, Any],
    out: Path,
    manifest: Path,
    max_in_flight: MaxInFlight,
    retry_failed: bool,
    as_json: bool,
    resuming: bool,
    target: _Target,
    interrupt: _Interrupt,
    console: Console,
) -> int:
    tally = _Tally()
    code = EXIT_OK

    def on_progress(progress: BatchProgress) -> None:
        tally.submitted = progress.submitted
        tally.processing = progress.processing
        if progress.input_exhausted and not tally.input_exhausted:
            tally.input_exhausted = True
            tally.total = progress.queued + progress.processing + progress.done + progress.failed

    async def count() -> None:
        total = await anyio.to_thread.run_sync(_count_items, prompts, abandon_on_cancel=True)
        if not tally.input_exhausted:
            tally.total = total

    items = _read_items(prompts, fmt, defaults)
    async with _open_client(target, console, max_in_flight) as client:
        if resuming:
            _say(console, f"Resuming from {manifest}.")
        with _Display(console, tally) as display, interrupt.scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(display.tick)
                if prompts != "-":
                    tg.start_soon(count)
                try:
                    results = client.generate_many(
                        items,
                        dest=out,
                        manifest=manifest,
                        on_progress=on_progress,
                        retry_failed=retry_failed,
                    )
                    async with _closing(results):
                        async for result in results:
                            _account(tally, result, display)
                            if as_json and not _emit(_result_record(result)):
                                code = EXIT_BROKEN_PIPE  # `--json | head`: stop quietly
                                break
                            error = result.error
                            if (
                                isinstance(error, AuthenticationError | ConfigurationError)
                                and not result.from_manifest
                            ):
                                display.say(f"Error: {type(error).__name__}: {error}")
                                code = EXIT_USAGE
                                break
                except (InputError, OSError, ModelsLabError) as exc:
                    # raised by the batch itself (the input, the manifest), not by an item
                    display.say(f"Error: {type(exc).__name__}: {exc}")
                    code = _exit_code_for(exc)
                finally:
                    tg.cancel_scope.cancel()
        await items.aclose()
    interrupted = interrupt.signum is not None
    _summary(console, tally, out, manifest, interrupted)
    if interrupted:
        return interrupt.exit_code
    if code == EXIT_OK and tally.failed:
        code = EXIT_FAILED
    return code


T = TypeVar("T")


@asynccontextmanager
async def _closing(iterator: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """Close an async generator where the block ends (a ``break`` stops the batch there)."""
    try:
        yield iterator
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


def _emit(record: Mapping[str, Any]) -> bool:
    """Print one JSON line on stdout; False when the reader went away (a broken pipe)."""
    try:
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # Point stdout at /dev/null so that the flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return False
    return True


def _account(tally: _Tally, result: BatchResult, display: _Display) -> None:
    if result.from_manifest:
        tally.instant += 1
    if result.ok:
        tally.done += 1
        tally.files += len(result.files)
        if result.from_manifest:
            tally.resumed_done += 1
        else:
            generation = result.generation
            tally.new_images += len(result.files) or (
                len(generation.images) if generation is not None else 0
            )
        return
    tally.failed += 1
    error = result.error
    tally.errors[type(error).__name__] += 1
    tally.failure_lines += 1
    if tally.failure_lines <= MAX_FAILURE_LINES:
        before = " (in a previous run)" if result.from_manifest else ""
        display.say(f"item {result.index} failed{before}: {type(error).__name__}: {error}")
    elif tally.failure_lines == MAX_FAILURE_LINES + 1:
        display.say("(more failures are only counted: see the manifest)")


@cli.command()
@click.argument("job_id")
@click.option(
    "--out",
    "-o",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Directory for the images.",
)
@click.option("--timeout", type=_Seconds(), metavar="SECONDS", help="Stop waiting after SECONDS.")
@_connection_options
def fetch(job_id: str, out: Path, timeout: float | None, local: bool, base_url: str | None) -> None:
    """Wait for the job JOB_ID (started elsewhere) and download its images; print their paths."""
    target = _target(local, base_url)
    job: JobId = int(job_id) if job_id.strip().isdigit() else job_id.strip()
    if job == "":
        raise click.BadParameter("a job id is required", param_hint="'JOB_ID'")

    async def body(interrupt: _Interrupt, console: Console) -> int:
        async with _open_client(target, console) as client:
            with interrupt.scope:
                answer = await client.resume(job)
                generation = await client.wait(answer, timeout=timeout)
                images = await client.download(generation, out)
                for image in images:
                    click.echo(str(image.path))
                return EXIT_OK
        return interrupt.exit_code

    _run(body)


@cli.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def emulator(args: tuple[str, ...]) -> None:
    """Run the local API emulator in the foreground (--port N, --help for every option).

    The options are those of `python -m modelslab_async.emulator`. Ctrl-C stops it.
    """
    import argparse

    from .emulator import add_arguments, config_from_args, run

    parser = argparse.ArgumentParser(
        prog="modelslab-async emulator",
        description="Local emulator of the ModelsLab text2img API (Ctrl-C stops it).",
    )
    add_arguments(parser)
    namespace = parser.parse_args(list(args))  # exits 2 on a bad option, 0 after --help
    try:
        config = config_from_args(namespace)
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))

    async def body(interrupt: _Interrupt, console: Console) -> int:
        with interrupt.scope:
            await run(config, namespace.host, namespace.port)
        return interrupt.exit_code

    _run(body)


def main() -> None:
    """Entry point of the ``modelslab-async`` console script and ``python -m modelslab_async``."""
    key = os.environ.get(C.ENV_API_KEY)
    if key and key.strip():
        # Masked from every message from here on: values given on the command line are
        # checked, and may be quoted in an error, before any client holds the key.
        register_secret(key)
    try:
        code = cli.main(prog_name="modelslab-async", standalone_mode=False)
    except click.ClickException as exc:  # click quotes a bad value in its usage errors
        exc.message = redact(exc.message)  # type: ignore[misc]  # Final only in the stubs
        exc.show()
        code = exc.exit_code
    except click.Abort:
        click.echo("Aborted!", err=True)
        code = 1
    raise SystemExit(code if isinstance(code, int) else 0)
