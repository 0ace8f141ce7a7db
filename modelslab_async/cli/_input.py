"""Reading the batch's input (PROMPTS): text or JSONL lines, or dataset rows, lazily.

A line of the input never stops the batch: a line that is too long (over 1 MiB, skipped
without ever being held whole), not UTF-8, not JSON, nested too deeply, or not a JSON object
becomes an item that fails with a :class:`RequestValidationError` naming its line. Only an
input that cannot be opened or read at all is an :class:`InputError` (exit code 2).
"""

from __future__ import annotations

import concurrent.futures
import importlib
import json
import logging
import os
import sys
import threading
from collections.abc import AsyncGenerator, Iterator, Mapping
from typing import IO, Any

import anyio
import anyio.from_thread
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectSendStream

from .._errors import RequestValidationError

_log = logging.getLogger("modelslab_async.cli")

#: The formats ``--input-format`` names; csv and parquet are read by ``modelslab_async.datasets``.
INPUT_FORMATS = ("auto", "text", "jsonl", "csv", "parquet")
#: Longest line read, in bytes (a prompt is at most 10,000 characters; a JSONL request with
#: its undocumented fields fits easily).
MAX_LINE_BYTES = 1 << 20
#: Items read ahead of the batch.
READ_AHEAD = 64

_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}


class InputError(Exception):
    """The input cannot be opened or read, or its format cannot be read here (exit code 2)."""


class Unreadable(Mapping[str, Any]):
    """An input line that is not an item: reading it raises its RequestValidationError.

    Handed to ``generate_many`` like any item, so that it fails (and is recorded in the
    manifest) as its own item without stopping the batch.
    """

    def __init__(self, where: str, shown: str, allowed: str) -> None:
        self.error = RequestValidationError(where, shown, allowed)

    def __getitem__(self, key: str) -> Any:
        raise self.error

    def __iter__(self) -> Iterator[str]:
        raise self.error

    def __len__(self) -> int:
        return 0


def capped_lines(stream: IO[bytes]) -> Iterator[bytes | None]:
    """The lines of a binary stream, each at most ``MAX_LINE_BYTES`` long (without its end
    of line); a longer line is read past in pieces of that size and yields None."""
    while True:
        line = stream.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        if line.endswith(b"\n") or len(line) <= MAX_LINE_BYTES:
            yield line
            continue
        while line and not line.endswith(b"\n"):
            line = stream.readline(MAX_LINE_BYTES)
        yield None


def input_format(source: str, given: str) -> str:
    """The format of *source*: *given*, or for ``auto`` the one its file name says (``text``
    stands for "text or JSONL, as the first item says" when the name says nothing)."""
    if given != "auto":
        return given
    return _SUFFIXES.get(os.path.splitext(source)[1].lower(), "auto")


def _open_binary(source: str) -> IO[bytes]:
    if source == "-":
        # Our own reader of fd 0, so that a read blocked at exit holds no lock of sys.stdin.
        return open(sys.stdin.fileno(), "rb", closefd=False)
    return open(source, "rb")


def dataset_rows(
    source: str, fmt: str, prompt_column: str = "prompt"
) -> Iterator[Mapping[str, Any]]:
    """The items of a csv or parquet file, read by ``modelslab_async.datasets.read_rows``
    (imported only here), its prompt in *prompt_column*: each row's request fields as given
    (an empty cell leaves the command line's default; metadata columns are not request
    fields and are not sent), or an :class:`Unreadable` for a row that could not be read."""
    try:
        datasets = importlib.import_module("modelslab_async.datasets")
    except ImportError as exc:
        raise InputError(f"{fmt} input needs modelslab_async.datasets ({exc})") from None
    for row in datasets.read_rows(source, input_format=fmt, prompt_column=prompt_column):
        if row.error is not None and not row.fields:  # e.g. more values than columns
            error = row.error
            yield Unreadable(error.field, error.value, error.allowed)
            continue
        yield {
            name: value
            for name, value in row.fields.items()
            if name == "prompt" or not (value is None or value == "")
        }


Chunk = tuple[int, bytes | None] | Mapping[str, Any] | BaseException | None


def _pump(
    source: str,
    fmt: str,
    prompt_column: str,
    send: MemoryObjectSendStream[Chunk],
    token: Any,
) -> None:
    """Thread body: read lines (or rows) and hand them over one by one; the stream's
    buffer bounds the read-ahead. Ends with None, or with the error that stopped it."""

    def put(item: Chunk) -> None:
        anyio.from_thread.run(send.send, item, token=token)

    try:
        try:
            if fmt in ("csv", "parquet"):
                for row in dataset_rows(source, fmt, prompt_column):
                    put(row)
            else:
                with _open_binary(source) as stream:
                    for lineno, line in enumerate(capped_lines(stream), 1):
                        put((lineno, line))
            end: Chunk = None
        except (OSError, InputError) as exc:
            end = exc
        except Exception as exc:  # a dataset reader's own error: reported, never a traceback
            end = InputError(f"{type(exc).__name__}: {exc}")
        put(end)
    except (
        anyio.BrokenResourceError,
        anyio.ClosedResourceError,
        anyio.RunFinishedError,
        concurrent.futures.CancelledError,
    ):
        return  # the consumer stopped reading or the loop ended: nothing to report
    except Exception:  # a bug: never swallowed silently
        _log.exception("the input reader thread failed")


def _meaningful(line: str) -> str | None:
    text = line.strip()
    return text if text and not text.startswith("#") else None


def count_items(source: str, fmt: str) -> int | None:
    """How many items *source* holds (for the progress bar), or None when not countable."""
    if fmt in ("csv", "parquet"):
        return None
    count = 0
    with open(source, "rb") as stream:
        for line in capped_lines(stream):
            if line is None or _meaningful(line.decode("utf-8", errors="replace")) is not None:
                count += 1
    return count


def _decode(line: bytes, lineno: int) -> str:
    # A byte order mark at the start of the input is not part of the first item.
    return line.decode("utf-8-sig" if lineno == 1 else "utf-8")


async def read_items(
    source: str, fmt: str, defaults: Mapping[str, Any], prompt_column: str = "prompt"
) -> AsyncGenerator[Mapping[str, Any], None]:
    """Items of the input, read lazily by a daemon thread: text lines become ``{"prompt":
    line}``, JSONL lines their objects, dataset rows themselves; the command line's fields
    are defaults under each item. A JSONL object's or a dataset row's prompt is its
    *prompt_column*."""
    mode = input_format(source, fmt)
    send, receive = anyio.create_memory_object_stream[Chunk](READ_AHEAD)
    thread = threading.Thread(
        target=_pump,
        args=(source, mode, prompt_column, send, anyio.lowlevel.current_token()),
        name="modelslab-async input reader",
        daemon=True,
    )
    thread.start()
    name = "<stdin>" if source == "-" else source
    with receive, send:
        while True:
            chunk = await receive.receive()
            if chunk is None:
                return
            if isinstance(chunk, BaseException):
                raise InputError(f"cannot read {name}: {chunk}")
            if isinstance(chunk, Unreadable):  # a dataset row that could not be read
                yield chunk
                continue
            if isinstance(chunk, Mapping):
                yield {**defaults, **chunk}
                continue
            lineno, line = chunk
            where = f"{name} line {lineno}"
            if line is None:
                yield Unreadable(
                    where, "<a longer line>", f"a line of at most {MAX_LINE_BYTES:,} bytes"
                )
                continue
            try:
                text = _meaningful(_decode(line, lineno))
            except UnicodeDecodeError as exc:
                shown = f"<byte 0x{line[exc.start]:02x} at column {exc.start + 1}>"
                yield Unreadable(where, shown, "UTF-8 text")
                continue
            if text is None:
                continue
            if mode == "auto":  # the first item decides
                mode = "jsonl" if text.startswith("{") else "text"
            if mode == "text":
                yield {**defaults, "prompt": text}
            else:
                yield _json_item(text, where, defaults, prompt_column)


def _json_item(
    text: str, where: str, defaults: Mapping[str, Any], prompt_column: str = "prompt"
) -> Mapping[str, Any]:
    try:
        data = json.loads(text)
    except RecursionError:
        return Unreadable(where, "<nested too deeply>", "a JSON object of request fields")
    except ValueError:
        data = None
    if isinstance(data, dict) and prompt_column != "prompt" and prompt_column in data:
        if "prompt" in data:
            return Unreadable(
                f"{where} prompt",
                "<both 'prompt' and the prompt column>",
                f"only {prompt_column!r}",
            )
        data["prompt"] = data.pop(prompt_column)
    if isinstance(data, dict):
        return {**defaults, **data}
    shown = text if len(text) <= 60 else text[:57] + "..."
    return Unreadable(where, shown, "a JSON object of request fields")


__all__ = [
    "INPUT_FORMATS",
    "MAX_LINE_BYTES",
    "InputError",
    "Unreadable",
    "count_items",
    "input_format",
    "read_items",
]
