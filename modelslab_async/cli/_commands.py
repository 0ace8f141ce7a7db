"""The commands (``generate``, ``batch``, ``fetch``, ``report``, ``emulator``) and ``main()``.

Everything a command does goes through the public client (``Client.submit/wait/download/
resume/generate_many``); ``docs/cli.md`` documents every option. The API key is read from
the environment only and never printed.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractContextManager, asynccontextmanager, nullcontext
from pathlib import Path
from typing import Any, TypeVar

import anyio
import attrs
import click
from rich.console import Console

from .. import _constants as C
from .._batch import BatchProgress
from .._client import Client, MaxInFlight
from .._errors import (
    APIError,
    AuthenticationError,
    ConfigurationError,
    GenerationTimeout,
    InsufficientCreditsError,
    JobId,
    ManifestLockedError,
    ModelsLabError,
)
from .._redact import redact, register_secret
from .._report import write_report
from .._slots import Slots
from .._types import Job
from .._version import __version__
from ._alloc import settle_allocator
from ._display import Display, Tally, account, emit, result_record, say, summary
from ._input import count_items, input_format, read_items
from ._options import (
    Seconds,
    connection_options,
    dataset_options,
    input_format_option,
    max_in_flight,
    request_fields,
    request_options,
    shared_slots,
    slots_options,
    validated,
)
from ._reporting import REPORT_ERRORS, report_link, run_stats, write_batch_report
from ._run import (
    EXIT_BROKEN_PIPE,
    EXIT_CREDITS,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    FILE_ERRORS,
    USAGE_ERRORS,
    Interrupt,
    Target,
    UsageFailure,
    error_line,
    exit_code_for,
    open_client,
    run,
    target,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="modelslab-async")
def cli() -> None:
    """Generate images with the ModelsLab text2img API, from a prompt or a file of prompts.

    Without MODELSLAB_API_KEY every command runs against an embedded local emulator, so
    `modelslab-async batch examples/prompts.txt --out out/` works with no key and no network.

    Exit codes: 0 all done, 1 some items failed, 2 usage or configuration error,
    3 out of credits, 130 interrupted (Ctrl-C) after a clean stop.
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
    type=Seconds(),
    metavar="SECONDS",
    help="Stop waiting after SECONDS (the job goes on: get it later with `fetch`).",
)
@connection_options
@request_options
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
    request = validated({**request_fields(options, set_fields), "prompt": prompt})
    where = target(local, base_url)

    async def body(interrupt: Interrupt, console: Console) -> int:
        job_id: JobId | None = None
        hint = "" if where.local else " (the job goes on: modelslab-async fetch {id} --out {out})"
        async with open_client(where, console) as client:
            with interrupt.scope:
                status: AbstractContextManager[Any] = (
                    console.status("generating…") if console.is_terminal else nullcontext()
                )
                with status:
                    answer = await client.submit(request)
                    if isinstance(answer, Job):
                        job_id = answer.id
                        if not console.is_terminal:
                            say(console, f"job {job_id} submitted (eta {answer.eta:.0f} s)")
                    try:
                        generation = await client.wait(answer, timeout=timeout)
                    except GenerationTimeout as exc:
                        say(console, f"Error: {exc}" + hint.format(id=job_id, out=out))
                        return EXIT_FAILED
                    images = await client.download(generation, out)
                for image in images:
                    click.echo(str(image.path))
                return EXIT_OK
        if job_id is not None and hint:
            say(console, hint.format(id=job_id, out=out).strip(" ()").capitalize())
        return interrupt.exit_code

    run(body)


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
@slots_options
@input_format_option
@dataset_options
@click.option(
    "--retry-failed", is_flag=True, help="Try again the items a previous run recorded as failed."
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object per finished item on stdout (the manifest's record fields).",
)
@connection_options
@request_options
def batch(
    prompts: str,
    out: Path,
    manifest: Path | None,
    concurrency: str,
    slots_url: str | None,
    slots_name: str,
    input_format: str,
    output_format: str,
    shard_size: int,
    prompt_column: str,
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
    given here are defaults for every item; a JSONL item's own fields win. A line that
    cannot be read (over 1 MiB, not UTF-8, not a JSON object) fails as its own item.

    With --output-format imagefolder, webdataset or parquet, OUT becomes a dataset in shards
    of --shard-size rows (docs/datasets.md): the input's request-field columns set each
    row's fields, its other columns are carried as metadata; a rerun finishes it.

    Every run ends by writing OUT/report.html (the images with their prompts, and the
    failures); its file:// link is printed. With --slots, every process naming the same
    Redis shares one --concurrency cap.
    """
    defaults = request_fields(options, set_fields)
    validated({**defaults, "prompt": "a prompt"})
    if prompts != "-" and not os.path.isfile(prompts):
        raise click.BadParameter(f"{prompts!r} is not a readable file", param_hint="'PROMPTS'")
    fmt = resolve_input_format(prompts, input_format)
    rows = None
    if output_format != "files":
        if as_json:
            raise UsageFailure("--json prints the items of --output-format files only")
        rows = dataset_rows(prompts, input_format, prompt_column, defaults)
    manifest_path = manifest if manifest is not None else out / "manifest.jsonl"
    limit = max_in_flight(concurrency)
    plan = _BatchPlan(
        source=prompts,
        input_format=fmt,
        defaults=defaults,
        out=out,
        manifest=manifest_path,
        max_in_flight=limit,
        slots=shared_slots(slots_url, slots_name, limit) if slots_url is not None else None,
        retry_failed=retry_failed,
        as_json=as_json,
        prompt_column=prompt_column,
        output_format=output_format,
        shard_size=shard_size,
        rows=rows,
        resuming=manifest_path.is_file() and manifest_path.stat().st_size > 0,
        where=target(local, base_url),
    )

    async def body(interrupt: Interrupt, console: Console) -> int:
        if plan.rows is not None:
            return await _run_dataset(plan, plan.rows, interrupt, console)
        return await _run_batch(plan, interrupt, console)

    run(body)


def dataset_rows(source: str, fmt: str, prompt_column: str, defaults: Mapping[str, Any]) -> Any:
    """The rows of a dataset's input (``read_rows``, imported only here); exit 2 at once for
    an input it cannot read (an unknown extension, a missing prompt column, no pyarrow)."""
    if source == "-":
        raise UsageFailure("a dataset's input is read from a file, not from standard input")
    try:
        from ..datasets import DatasetError, read_rows
    except ImportError as exc:  # pragma: no cover - the package is part of the install
        raise UsageFailure(f"--output-format needs modelslab_async.datasets ({exc})") from None
    try:
        return read_rows(source, prompt_column=prompt_column, input_format=fmt, defaults=defaults)  # type: ignore[arg-type]
    except (DatasetError, ImportError) as exc:
        raise UsageFailure(str(exc)) from None


def resolve_input_format(source: str, given: str) -> str:
    """The input's format; exit 2 at once when it is csv or parquet and nothing here can
    read those (``modelslab_async.datasets`` is not installed)."""
    fmt = input_format(source, given)
    if fmt in ("csv", "parquet"):
        if source == "-":
            raise UsageFailure(f"{fmt} input is read from a file, not from standard input")
        if importlib.util.find_spec("modelslab_async.datasets") is None:
            raise UsageFailure(
                f"{fmt} input needs modelslab_async.datasets, which this installation does "
                "not have; give a text or JSONL file"
            )
    return fmt


@attrs.frozen
class _BatchPlan:
    """What a ``batch`` command was asked to do, checked before anything runs."""

    source: str
    input_format: str
    defaults: Mapping[str, Any]
    out: Path
    manifest: Path
    max_in_flight: MaxInFlight
    slots: Callable[[], Slots] | None
    retry_failed: bool
    as_json: bool
    resuming: bool
    where: Target
    prompt_column: str = "prompt"
    output_format: str = "files"
    shard_size: int = 1000
    rows: Any = None  # the dataset's RowReader (output formats other than files)


@asynccontextmanager
async def _session(
    plan: _BatchPlan,
    console: Console,
    tally: Tally,
    interrupt: Interrupt,
    lags: list[float] | None,
) -> AsyncIterator[tuple[Client, Display, anyio.abc.TaskGroup]]:
    """A ``batch`` run's client, its progress display (ticking), and a task group for the
    run's own tasks, inside the run's interrupt scope."""
    slots = plan.slots() if plan.slots is not None else None
    async with open_client(
        plan.where, console, plan.max_in_flight, slots=slots, lags=lags
    ) as client:
        if plan.resuming:
            say(console, f"Resuming from {plan.manifest}.")
        with Display(console, tally) as display, interrupt.scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(display.tick)
                yield client, display, tg


async def _run_batch(plan: _BatchPlan, interrupt: Interrupt, console: Console) -> int:
    tally = Tally()
    code = EXIT_OK
    stopped: APIError | None = None  # an invalid key or empty credits stopped the submits

    def on_progress(progress: BatchProgress) -> None:
        tally.submitted = progress.submitted
        tally.processing = progress.processing
        if progress.input_exhausted and not tally.input_exhausted:
            tally.input_exhausted = True
            tally.total = progress.queued + progress.processing + progress.done + progress.failed

    async def count() -> None:
        total = await anyio.to_thread.run_sync(
            count_items, plan.source, plan.input_format, abandon_on_cancel=True
        )
        if not tally.input_exhausted:
            tally.total = total

    lags: list[float] | None = [] if plan.where.local else None
    locked_out = False
    items = read_items(plan.source, plan.input_format, plan.defaults, plan.prompt_column)
    async with _session(plan, console, tally, interrupt, lags) as (client, display, tg):
        if plan.source != "-":
            tg.start_soon(count)
        try:
            results = client.generate_many(
                items,
                dest=plan.out,
                manifest=plan.manifest,
                on_progress=on_progress,
                retry_failed=plan.retry_failed,
                # the embedded emulator's jobs die with it: a new one is free
                resubmit_lost_jobs=plan.where.local,
            )
            async with _closing(results):
                async for result in results:
                    account(tally, result, display)
                    if plan.as_json and not emit(result_record(result)):
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
        except (AuthenticationError, InsufficientCreditsError) as exc:
            stopped = exc  # reported after the summary, with the counts
            code = EXIT_CREDITS if isinstance(exc, InsufficientCreditsError) else EXIT_USAGE
        except (ModelsLabError, *USAGE_ERRORS, *FILE_ERRORS) as exc:
            # raised by the batch itself (the input, the manifest), not by an item
            display.say(error_line(exc, plan.manifest))
            code = exit_code_for(exc)
            locked_out = isinstance(exc, ManifestLockedError)
        finally:
            tg.cancel_scope.cancel()
    await items.aclose()
    interrupted = interrupt.signum is not None
    summary(console, tally, plan.out, plan.manifest, interrupted)
    if not locked_out:  # the folder is another run's: its report is that run's to write
        await write_batch_report(console, plan.out, plan.manifest, run_stats(tally, lags))
    if stopped is not None and not interrupted:
        say(console, await _stopped_line(stopped, tally, plan))
    if interrupted:
        return interrupt.exit_code
    if code == EXIT_OK and tally.failed:
        code = EXIT_FAILED
    return code


async def _run_dataset(plan: _BatchPlan, rows: Any, interrupt: Interrupt, console: Console) -> int:
    """``batch --output-format imagefolder|webdataset|parquet``: ``write_dataset`` on the
    client of the batch, with the batch's progress display, report and exit codes."""
    from ..datasets import DatasetError, DatasetProgress, DatasetSummary, write_dataset

    tally = Tally()
    stopped: APIError | None = None
    result: DatasetSummary | None = None

    def on_progress(progress: DatasetProgress) -> None:
        tally.done, tally.failed = progress.done, progress.failed
        tally.new_images = progress.images
        if progress.batch is not None:
            tally.submitted = progress.batch.submitted
            tally.processing = progress.batch.processing
            if progress.batch.input_exhausted:
                tally.total = progress.rows_read

    lags: list[float] | None = [] if plan.where.local else None
    async with _session(plan, console, tally, interrupt, lags) as (client, display, tg):
        try:
            result = await write_dataset(
                client,
                rows,
                plan.out,
                output_format=plan.output_format,  # type: ignore[arg-type]
                shard_size=plan.shard_size,
                manifest=plan.manifest,
                on_progress=on_progress,
                retry_failed=plan.retry_failed,
            )
        except DatasetError as exc:  # before anything was submitted
            display.say(f"Error: {exc}")
            return EXIT_USAGE
        except (AuthenticationError, InsufficientCreditsError) as exc:
            stopped = exc
        finally:
            tg.cancel_scope.cancel()
    interrupted = interrupt.signum is not None
    _dataset_summary(console, plan, tally, result)
    await write_batch_report(console, plan.out, plan.manifest, run_stats(tally, lags))
    if interrupted:
        say(console, "Interrupted: rerun the same command to finish the dataset.")
        return interrupt.exit_code
    if stopped is not None:
        say(console, await _stopped_line(stopped, tally, plan))
        return EXIT_CREDITS if isinstance(stopped, InsufficientCreditsError) else EXIT_USAGE
    assert result is not None
    if result.retryable:
        say(
            console,
            f"{result.retryable} row(s) failed and may pass on a retry: rerun with "
            "--retry-failed to try them again.",
        )
    if result.failed:
        say(console, f"{result.failed} row(s) failed: see {result.failures}.")
    return EXIT_FAILED if result.failed or result.retryable else EXIT_OK


def _dataset_summary(console: Console, plan: _BatchPlan, tally: Tally, result: Any) -> None:
    """The counts of a dataset run (those of the whole dataset when it ran to the end)."""
    if result is None:
        say(console, f"{plan.output_format} dataset in {plan.out}: {tally.counts()}")
        return
    say(
        console,
        f"{result.output_format} dataset in {result.out}: {result.rows} rows, "
        f"{result.done} done, {result.failed} failed, {result.retryable} to retry, "
        f"{result.images} images; {result.shards} shards ({result.shards_written} written, "
        f"{result.shards_skipped} complete before), {result.submitted} jobs submitted, "
        f"{result.seconds:.1f} s" + ("" if result.complete else "; not complete"),
    )


async def _stopped_line(error: APIError, tally: Tally, plan: _BatchPlan) -> str:
    """What stopped the batch's submits, the counts, and what to do (never the key)."""
    total = tally.total
    if total is None and plan.source != "-":
        total = await anyio.to_thread.run_sync(count_items, plan.source, plan.input_format)
    rest = "the rest" if total is None else str(max(0, total - tally.done - tally.failed))
    counts = f"{tally.done} done, {tally.failed} failed, {rest} not submitted"
    if isinstance(error, InsufficientCreditsError):
        return (
            f"Error: InsufficientCreditsError: {error}. {counts}. "
            "Top up and rerun the same command: it submits only the items not done."
        )
    return (
        f"Error: AuthenticationError: the API rejected the API key in {C.ENV_API_KEY} "
        f"({error}). {counts}. Set a valid key and rerun the same command."
    )


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
@click.option("--timeout", type=Seconds(), metavar="SECONDS", help="Stop waiting after SECONDS.")
@connection_options
def fetch(job_id: str, out: Path, timeout: float | None, local: bool, base_url: str | None) -> None:
    """Wait for the job JOB_ID (started elsewhere) and download its images; print their paths."""
    where = target(local, base_url)
    job: JobId = int(job_id) if job_id.strip().isdigit() else job_id.strip()
    if job == "":
        raise click.BadParameter("a job id is required", param_hint="'JOB_ID'")

    async def body(interrupt: Interrupt, console: Console) -> int:
        async with open_client(where, console) as client:
            with interrupt.scope:
                answer = await client.resume(job)
                generation = await client.wait(answer, timeout=timeout)
                images = await client.download(generation, out)
                for image in images:
                    click.echo(str(image.path))
                return EXIT_OK
        return interrupt.exit_code

    run(body)


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--manifest",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The run's manifest [default: DIRECTORY/manifest.jsonl].",
)
def report(directory: Path, manifest: Path | None) -> None:
    """Write DIRECTORY/report.html again from the manifest and the images on disk, and
    print its file:// link. No network; wall time is the span of the manifest's records."""
    manifest_path = manifest if manifest is not None else directory / "manifest.jsonl"
    if not manifest_path.is_file():
        raise UsageFailure(f"no manifest at {manifest_path}: nothing to report")
    try:
        path = write_report(directory, manifest=manifest_path)
    except REPORT_ERRORS as exc:
        raise UsageFailure(error_line(exc, manifest_path).removeprefix("Error: ")) from None
    click.echo(report_link(path))


@cli.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def emulator(args: tuple[str, ...]) -> None:
    """Run the local API emulator in the foreground (--port N, --help for every option).

    The options are those of `python -m modelslab_async.emulator`. Ctrl-C stops it.
    """
    # Imported only here: the other commands never load the emulator.
    from ..emulator import add_arguments, config_from_args
    from ..emulator import run as run_emulator

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

    async def body(interrupt: Interrupt, console: Console) -> int:
        with interrupt.scope:
            await run_emulator(config, namespace.host, namespace.port)
        return interrupt.exit_code

    run(body)


def main() -> None:
    """Entry point of the ``modelslab-async`` console script and ``python -m modelslab_async``."""
    settle_allocator()  # a process-wide tweak: the application's choice, never the library's
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


__all__ = ["cli", "main"]
