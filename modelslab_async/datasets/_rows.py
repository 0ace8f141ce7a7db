"""Input rows: prompts, request fields and metadata from .txt, .jsonl, .csv or .parquet.

Files are read as streams (lines, the csv module's reader, pyarrow's ``iter_batches``),
never whole. A column named like a :class:`~modelslab_async.Text2ImgRequest` field sets
that field for its row (``defaults`` fill what a row leaves out; the row wins); the prompt
comes from ``prompt_column``; every other column is metadata, carried to the output as
read. A row whose values make no valid request is a :class:`Row` with ``error`` set.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import attrs

from .. import RequestValidationError, Text2ImgRequest
from .._convert import request_from_wire
from ._common import (
    REQUEST_FIELDS,
    RESERVED_COLUMNS,
    DatasetError,
    MetadataColumn,
    columns_of_kinds,
    kind_of,
    row_key,
    unify_kinds,
)

InputFormat = Literal["auto", "text", "jsonl", "csv", "parquet"]

#: Input formats by file extension (``input_format="auto"``).
INPUT_SUFFIXES: Mapping[str, str] = MappingProxyType(
    {".txt": "text", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
)
_FORMATS = ("text", "jsonl", "csv", "parquet")

#: A longer line of a text or JSONL input is a failed row (it is never held whole).
MAX_LINE_CHARS = 1024 * 1024

_PARQUET_BATCH_ROWS = 512


def _frozen_map(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return value if isinstance(value, MappingProxyType) else MappingProxyType(dict(value))


@attrs.frozen(kw_only=True)
class Row:
    """One input row.

    ``index``: its position in the input (0-based; blank and comment lines of a text file
    and blank lines of a JSONL file do not count). ``fields``: its request fields as read
    (the prompt under ``"prompt"``, whatever its column is called; defaults not applied).
    ``metadata``: every other column, unchanged. ``request``: the request the row makes,
    or None when its values are invalid, and then ``error`` says why.
    """

    index: int
    fields: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_map)
    metadata: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_map)
    request: Text2ImgRequest | None = None
    error: RequestValidationError | None = None

    @classmethod
    def build(
        cls,
        index: int,
        fields: Mapping[str, Any],
        metadata: Mapping[str, Any] | None = None,
        *,
        defaults: Mapping[str, Any] | None = None,
    ) -> Row:
        """The row of these *fields* over *defaults*: its request, or the error that names
        the field. Absent values (None, or an empty string except for the prompt) leave the
        default; numbers and yes/no may be text ("512", "yes"), as in a CSV file."""
        given = {k: v for k, v in fields.items() if k == "prompt" or not _absent(v)}
        try:
            if "prompt" not in given:
                raise RequestValidationError("prompt", None, "a non-empty string (no prompt)")
            request = request_from_wire({**(defaults or {}), **given})
        except RequestValidationError as exc:
            return cls(index=index, fields=fields, metadata=metadata or {}, error=exc)
        return cls(index=index, fields=fields, metadata=metadata or {}, request=request)

    @property
    def key(self) -> str:
        """The row's key in the output: its index, zero-padded to 9 digits."""
        return row_key(self.index)

    @property
    def prompt(self) -> Any:
        return self.request.prompt if self.request is not None else self.fields.get("prompt")

    @property
    def ok(self) -> bool:
        return self.error is None and self.request is not None

    @property
    def error_message(self) -> str | None:
        """The error naming the row and the field: ``row 17: width: got 4096, allowed ...``."""
        return None if self.error is None else f"row {self.index}: {self.error}"


def _absent(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


class RowReader:
    """The rows of an input file; every iteration reads the file again, as a stream.

    Made by :func:`read_rows`, which checks the file's format and columns first.
    """

    def __init__(
        self,
        path: Path,
        input_format: str,
        prompt_column: str,
        defaults: Mapping[str, Any],
        columns: tuple[str, ...],
    ) -> None:
        self.path = path
        self.input_format = input_format
        self.prompt_column = prompt_column
        self.defaults: Mapping[str, Any] = MappingProxyType(dict(defaults))
        #: The columns found (for JSONL: the keys of the first object).
        self.columns = columns
        self._kinds: dict[str, str] | None = None

    def __repr__(self) -> str:
        return (
            f"RowReader({str(self.path)!r}, input_format={self.input_format!r}, "
            f"prompt_column={self.prompt_column!r})"
        )

    @property
    def metadata_columns(self) -> tuple[str, ...]:
        """The columns carried as metadata (for JSONL: those of the first object)."""
        return tuple(c for c in self.columns if c != self.prompt_column and c not in REQUEST_FIELDS)

    def __iter__(self) -> Iterator[Row]:
        if self.input_format == "parquet":
            return self._records_to_rows(self._parquet_records())
        if self.input_format == "csv":
            return self._records_to_rows(self._csv_records())
        if self.input_format == "jsonl":
            return self._records_to_rows(self._jsonl_records())
        return self._text_rows()

    # --- one generator per format ------------------------------------------------------

    def _text_rows(self) -> Iterator[Row]:
        index = 0
        with _open_text(self.path) as handle:
            for lineno, line in _lines(handle):
                if line is None:
                    yield self._unreadable(index, lineno, "a line of at most 1 MiB")
                    index += 1
                    continue
                text = line.strip()
                if not text or text.startswith("#"):
                    continue
                yield Row.build(index, {"prompt": text}, defaults=self.defaults)
                index += 1

    def _jsonl_records(self) -> Iterator[dict[str, Any] | Row]:
        with _open_text(self.path) as handle:
            for lineno, line in _lines(handle):
                if line is None:
                    yield self._unreadable(0, lineno, "a line of at most 1 MiB")
                    continue
                if not line.strip():
                    continue
                try:
                    data = json.loads(line)
                except (ValueError, RecursionError):
                    data = None
                if isinstance(data, dict):
                    yield data
                else:
                    yield self._unreadable(0, lineno, "a JSON object", line)

    def _csv_records(self) -> Iterator[dict[str, Any] | Row]:
        with _open_text(self.path, newline="") as handle:
            reader = csv.reader(handle)
            try:
                header = next(reader, [])
                for values in reader:
                    if not values:
                        continue  # a blank line
                    if len(values) > len(header):
                        yield self._unreadable(
                            0,
                            reader.line_num,
                            f"at most {len(header)} values (the header's columns)",
                            f"{len(values)} values",
                        )
                        continue
                    record: dict[str, Any] = dict.fromkeys(header)
                    record.update(zip(header, values, strict=False))
                    yield record
            except csv.Error as exc:
                raise DatasetError(f"{self.path} line {reader.line_num}: {exc}") from None

    def _parquet_records(self) -> Iterator[dict[str, Any] | Row]:
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(self.path)
        try:
            for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
                yield from batch.to_pylist()
        finally:
            parquet.close()

    def _records_to_rows(self, records: Iterator[dict[str, Any] | Row]) -> Iterator[Row]:
        prompt_column = self.prompt_column
        for index, record in enumerate(records):
            if isinstance(record, Row):
                yield attrs.evolve(record, index=index)
            else:
                yield self._row(index, record, prompt_column)

    def _row(self, index: int, record: Mapping[str, Any], prompt_column: str) -> Row:
        fields: dict[str, Any] = {}
        metadata: dict[str, Any] = {}
        problem: RequestValidationError | None = None
        for name, value in record.items():
            if name == prompt_column:
                fields["prompt"] = value
            elif name in REQUEST_FIELDS:
                if name == "prompt":
                    problem = RequestValidationError(
                        "prompt",
                        value,
                        f"no 'prompt' column besides the prompt column {prompt_column!r}",
                    )
                fields[name] = value
            else:
                if name in RESERVED_COLUMNS:
                    problem = RequestValidationError(
                        name, value, "a column name that is not an output column's"
                    )
                metadata[name] = value
        if problem is not None:
            return Row(index=index, fields=fields, metadata=metadata, error=problem)
        return Row.build(index, fields, metadata, defaults=self.defaults)

    def _unreadable(self, index: int, lineno: int, allowed: str, text: str = "") -> Row:
        shown = text.strip()
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        error = RequestValidationError(f"{self.path.name} line {lineno}", shown, allowed)
        return Row(index=index, error=error)

    # --- the metadata's types, for a parquet output -------------------------------------

    def _metadata_schema(self) -> list[MetadataColumn]:
        """The metadata columns of a parquet output: the input's own types (parquet),
        strings (csv), or what the values hold (JSONL, one more pass over the file: a
        column of one JSON type gets that type, any other mix JSON text)."""
        if self.input_format == "parquet":
            import pyarrow.parquet as pq

            schema = pq.read_schema(self.path)
            names = set(self.metadata_columns)
            return [MetadataColumn(f.name, f.type) for f in schema if f.name in names]
        if self.input_format == "csv":
            return columns_of_kinds(dict.fromkeys(self.metadata_columns, "str"))
        if self.input_format == "text":
            return []
        if self._kinds is None:
            kinds: dict[str, set[str]] = {}
            for row in self:
                for name, value in row.metadata.items():
                    seen = kinds.setdefault(name, set())
                    if value is not None:
                        seen.add(kind_of(value))
            self._kinds = {name: unify_kinds(seen) for name, seen in kinds.items()}
        return columns_of_kinds(self._kinds)


def _open_text(path: Path, newline: str | None = None) -> Any:
    try:
        return open(path, encoding="utf-8-sig", errors="replace", newline=newline)
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from None


def _lines(handle: Any) -> Iterator[tuple[int, str | None]]:
    """``(line number, line)``; None for a line longer than MAX_LINE_CHARS (skipped in
    pieces, never held whole)."""
    lineno = 0
    while True:
        line = handle.readline(MAX_LINE_CHARS + 1)
        if not line:
            return
        lineno += 1
        if len(line) > MAX_LINE_CHARS and not line.endswith("\n"):
            while True:
                rest = handle.readline(MAX_LINE_CHARS)
                if not rest or rest.endswith("\n"):
                    break
            yield lineno, None
            continue
        yield lineno, line


def read_rows(
    path: str | os.PathLike[str],
    *,
    prompt_column: str = "prompt",
    input_format: InputFormat = "auto",
    defaults: Mapping[str, Any] | None = None,
) -> RowReader:
    """The rows of the file at *path*, as a :class:`RowReader` (iterate it for
    :class:`Row` objects; the file is read as a stream, never whole).

    *input_format*: ``text`` (one prompt a line; blank lines and ``#`` comments skipped),
    ``jsonl`` (one object a line), ``csv`` (a header line, then rows; values are text),
    ``parquet``; ``auto`` goes by the extension (.txt, .jsonl/.ndjson, .csv, .parquet).
    *prompt_column*: the column holding the prompt. *defaults*: request fields for every
    row (a row's own value wins; names outside :class:`~modelslab_async.Text2ImgRequest`'s
    fields go to ``extra``, as with ``--set``).

    Raises :class:`DatasetError` for an unknown extension (naming the supported ones), an
    unreadable file, a missing prompt column (naming the columns found), a column named
    ``prompt`` besides another prompt column, or a metadata column with an output column's
    name (``key``, ``job_id``, ``image``, ``file_name``); ``RequestValidationError`` for bad
    *defaults*. Reading parquet needs pyarrow (``pip install 'modelslab-async[datasets]'``).
    """
    source = Path(path)
    fmt = _input_format(source, input_format)
    defaults = dict(defaults or {})
    if "prompt" in defaults:
        raise RequestValidationError(
            "prompt", defaults["prompt"], "no default prompt (it comes from the prompt column)"
        )
    request_from_wire({**defaults, "prompt": "a prompt"})  # names a bad default's field
    if not source.is_file():
        raise DatasetError(f"cannot read {source}: no such file")
    columns = _columns(source, fmt)
    if fmt != "text":
        _check_columns(source, columns, prompt_column)
    return RowReader(source, fmt, prompt_column if fmt != "text" else "prompt", defaults, columns)


def _input_format(source: Path, input_format: str) -> str:
    if input_format != "auto":
        if input_format not in _FORMATS:
            raise DatasetError(
                f"input_format: got {input_format!r}, allowed auto, " + ", ".join(_FORMATS)
            )
        return input_format
    fmt = INPUT_SUFFIXES.get(source.suffix.lower())
    if fmt is None:
        supported = ", ".join(INPUT_SUFFIXES)
        raise DatasetError(
            f"{source.name}: unknown input extension {source.suffix or '(none)'!r}; "
            f"supported: {supported} (or name the format: input_format / --input-format)"
        )
    return fmt


def _columns(source: Path, fmt: str) -> tuple[str, ...]:
    if fmt == "text":
        return ("prompt",)
    if fmt == "parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DatasetError(
                "reading parquet needs pyarrow: pip install 'modelslab-async[datasets]'"
            ) from None
        try:
            return tuple(pq.read_schema(source).names)
        except Exception as exc:  # pyarrow's ArrowInvalid / OSError on a file that is not one
            raise DatasetError(f"cannot read {source} as parquet: {exc}") from None
    with _open_text(source, newline="" if fmt == "csv" else None) as handle:
        if fmt == "csv":
            try:
                header = next(csv.reader(handle), None)
            except csv.Error as exc:
                raise DatasetError(f"{source} line 1: {exc}") from None
            if not header:
                raise DatasetError(f"{source}: no header line (the CSV's column names)")
            if len(set(header)) != len(header):
                twice = sorted({c for c in header if header.count(c) > 1})
                raise DatasetError(f"{source}: columns named twice: {', '.join(twice)}")
            return tuple(header)
        for _, line in _lines(handle):  # JSONL: the first object's keys
            if line is None or not line.strip():
                continue
            try:
                first = json.loads(line)
            except (ValueError, RecursionError):
                raise DatasetError(f"{source}: the first line is not a JSON object") from None
            if not isinstance(first, dict):
                raise DatasetError(f"{source}: the first line is not a JSON object")
            return tuple(str(k) for k in first)
    return ()


def _check_columns(source: Path, columns: tuple[str, ...], prompt_column: str) -> None:
    if prompt_column not in columns:
        found = ", ".join(repr(c) for c in columns) or "none"
        raise DatasetError(
            f"{source.name}: no prompt column {prompt_column!r}; columns found: {found} "
            "(name the prompt column with prompt_column / --prompt-column)"
        )
    if prompt_column != "prompt" and "prompt" in columns:
        raise DatasetError(
            f"{source.name}: a 'prompt' column besides the prompt column {prompt_column!r}"
        )
    reserved = sorted(c for c in columns if c in RESERVED_COLUMNS and c != prompt_column)
    if reserved:
        raise DatasetError(
            f"{source.name}: column(s) {', '.join(map(repr, reserved))} have the name of an "
            f"output column ({', '.join(sorted(RESERVED_COLUMNS))}); rename them"
        )
