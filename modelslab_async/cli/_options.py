"""The command line's options: one per request field (made from ``REQUEST_FIELDS``),
``--set FIELD=VALUE``, where requests go, and the batch's concurrency and input format."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import click

from .. import _constants as C
from .._client import MaxInFlight
from .._convert import request_from_wire
from .._errors import ConfigurationError, RequestValidationError
from .._slots import Slots
from .._types import DOCUMENTED_FIELDS, REQUEST_FIELDS, RequestField, Text2ImgRequest
from ._input import INPUT_FORMATS
from ._run import UsageFailure

F = TypeVar("F", bound=Callable[..., Any])


class Seconds(click.ParamType):  # type: ignore[type-arg]  # generic from click 8.2 on
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


#: The request fields with an option of their own (the prompt is an argument or an input).
OPTION_FIELDS: tuple[RequestField, ...] = tuple(f for f in REQUEST_FIELDS if f.name != "prompt")
_CLICK_TYPES: dict[str, Any] = {"int": int, "float": float}
_METAVARS = {"choice": "TYPE", "url": "URL", "id": "ID"}


def _shown_default(field: RequestField) -> str | None:
    default = field.default
    if field.name == "seed" and default is None:
        return "random"
    if isinstance(default, bool):
        return "yes" if default else "no"
    return None if default is None else str(default)


def _option_help(field: RequestField) -> str:
    text = field.help
    if field.kind in ("int", "float"):
        text = f"{text} Range {field.bounds}."
    elif field.kind == "choice":
        text = f"{text} One of {field.bounds}."
    default = _shown_default(field)
    return f"{text} [default: {default}]" if default is not None else text


def _field_option(field: RequestField) -> Callable[[F], F]:
    """The option of one request field: ``--width N``, ``--base64/--no-base64``..."""
    flag = "--" + field.name.replace("_", "-")
    if field.kind == "bool":
        return click.option(
            f"{flag}/--no-{flag[2:]}", field.name, default=None, help=_option_help(field)
        )
    return click.option(
        *field.cli_aliases,
        flag,
        field.name,
        type=_CLICK_TYPES.get(field.kind),
        metavar=_METAVARS.get(field.kind),
        help=_option_help(field),
    )


_SET_OPTION = click.option(
    "--set",
    "set_fields",
    multiple=True,
    metavar="FIELD=VALUE",
    help="Any request field by its API name, documented or not "
    "(--set enhance_prompt=yes --set scheduler=DPMSolverMultistepScheduler). Repeatable; "
    "the options above win over --set.",
)


def request_options(func: F) -> F:
    """Decorate a command with an option for every request field, and ``--set``."""
    func = _SET_OPTION(func)
    for field in reversed(OPTION_FIELDS):
        func = _field_option(field)(func)
    return func


def connection_options(func: F) -> F:
    """Decorate a command with ``--base-url`` and ``--local``."""
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


input_format_option = click.option(
    "--input-format",
    "--format",
    "input_format",
    type=click.Choice(INPUT_FORMATS),
    default="auto",
    show_default=True,
    help="Format of PROMPTS (--format is its older name). auto: by the file name (.jsonl, "
    ".ndjson, .csv, .parquet); any other input is JSONL when its first item starts with `{`, "
    "else one prompt per line. csv and parquet need modelslab_async.datasets.",
)


#: The formats ``--output-format`` names (``modelslab_async.datasets`` writes all but files).
OUTPUT_FORMATS = ("files", "imagefolder", "webdataset", "parquet")


def dataset_options(func: F) -> F:
    """``--output-format``, ``--shard-size`` and ``--prompt-column`` (``docs/datasets.md``)."""
    func = click.option(
        "--prompt-column",
        default="prompt",
        show_default=True,
        metavar="NAME",
        help="The column (csv, parquet) or JSONL key holding the prompt.",
    )(func)
    func = click.option(
        "--shard-size",
        type=click.IntRange(min=1),
        default=1000,
        show_default=True,
        metavar="N",
        help="Rows per shard (not for files): shard k holds input rows [k*N, (k+1)*N).",
    )(func)
    func = click.option(
        "--output-format",
        type=click.Choice(OUTPUT_FORMATS),
        default="files",
        show_default=True,
        help="files: the images in OUT as today; imagefolder, webdataset, parquet: a dataset "
        "in shards, with the input's other columns as metadata (needs modelslab_async.datasets).",
    )(func)
    return func


def _set_value(name: str, text: str) -> Any:
    """A ``--set`` value: documented fields as text (the converter reads "512", "yes"), other
    fields as JSON when they parse (``2``, ``true``, ``{...}``) and as text otherwise."""
    if name in DOCUMENTED_FIELDS:
        return text
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


def request_fields(options: dict[str, Any], set_fields: tuple[str, ...]) -> dict[str, Any]:
    """The request fields given on the command line: ``--set`` first, then the options
    (which are popped from *options*)."""
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
    for field in OPTION_FIELDS:
        value = options.pop(field.name, None)
        if value is not None:
            fields[field.name] = value
    return fields


def validated(fields: Mapping[str, Any]) -> Text2ImgRequest:
    """The request the fields make, or exit 2 with the library's message (names the field)."""
    try:
        return request_from_wire(fields)
    except RequestValidationError as exc:
        raise UsageFailure(str(exc)) from None


def slots_options(func: F) -> F:
    """Decorate a command with ``--slots URL`` and ``--slots-name NAME``."""
    func = click.option(
        "--slots-name",
        default="modelslab",
        show_default=True,
        metavar="NAME",
        help="Namespace of the shared slots in Redis: processes share a cap when they "
        "name the same Redis and NAME.",
    )(func)
    func = click.option(
        "--slots",
        "slots_url",
        metavar="URL",
        help="Share the --concurrency cap with every process that names the same Redis "
        "(redis://[:password@]host[:port][/db], rediss://... for TLS). Needs the redis "
        "extra.",
    )(func)
    return func


def shared_slots(url: str, name: str, concurrency: MaxInFlight) -> Callable[[], Slots]:
    """``--slots``: a maker of the :class:`RedisSlots` sharing *concurrency* (a starting
    limit, learned by every sharer, for ``auto``), checked here: exit 2 when the redis
    extra is missing or the URL or name is bad, before anything runs."""
    try:
        import redis.asyncio  # noqa: F401  # the extra, checked before anything runs
    except ImportError:
        raise UsageFailure(
            "--slots needs redis-py, which is not installed: pip install 'modelslab-async[redis]'"
        ) from None
    from .._redis_slots import RedisSlots

    limit = C.AUTO_INITIAL_IN_FLIGHT if concurrency == "auto" else concurrency
    make = functools.partial(RedisSlots, url, limit, name=name)
    try:
        make()
    except ConfigurationError as exc:
        raise UsageFailure(f"--slots: {exc}") from None
    return make


def max_in_flight(value: str) -> MaxInFlight:
    """``--concurrency``: an integer >= 1 or ``auto``."""
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


__all__ = [
    "OPTION_FIELDS",
    "OUTPUT_FORMATS",
    "connection_options",
    "dataset_options",
    "input_format_option",
    "max_in_flight",
    "request_fields",
    "request_options",
    "shared_slots",
    "slots_options",
    "validated",
]
