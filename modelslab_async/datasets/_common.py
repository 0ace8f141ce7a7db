"""What the dataset modules share: the error, keys, shard names, JSON of metadata values."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from .. import ConfigurationError, Text2ImgRequest


class DatasetError(ConfigurationError):
    """A dataset input or output cannot be used as given: an unknown input extension, a
    missing prompt column, a reserved column name, an output folder that holds a dataset
    of another format or shard size. Raised before anything is submitted; a
    :class:`~modelslab_async.ConfigurationError` (and a ``ValueError``), so the CLI exits 2.
    """


#: Every field of a request; a column of this name sets the field for its row.
REQUEST_FIELDS: frozenset[str] = frozenset(f.name for f in attrs.fields(Text2ImgRequest))

#: Request fields written with each sample (besides ``prompt`` and ``seed``): what makes
#: the image. ``webhook``, ``track_id``, ``base64`` and ``temp`` only steer the transport.
OUTPUT_REQUEST_FIELDS: tuple[str, ...] = (
    "negative_prompt",
    "model_id",
    "width",
    "height",
    "samples",
    "num_inference_steps",
    "guidance_scale",
    "injected_noise_alpha",
    "sigma_threshold",
    "true_cfg_scale",
    "use_cfg_zero_star",
    "use_zero_init",
    "zero_steps",
    "safety_checker",
    "safety_checker_type",
)

#: Output columns of the samples themselves: a metadata column may not use these names.
RESERVED_COLUMNS: frozenset[str] = frozenset({"key", "job_id", "image", "file_name"})

#: The columns of a sample that are not metadata.
SAMPLE_COLUMNS: frozenset[str] = frozenset(
    {"key", "prompt", "seed", "job_id", *OUTPUT_REQUEST_FIELDS}
)

STAGING = ".staging"
INFO_FILE = "dataset.json"
FAILURES_FILE = "failures.jsonl"
MANIFEST_FILE = "manifest.jsonl"


def row_key(index: int, sample: int | None = None) -> str:
    """The key of a sample: its row index, zero-padded to 9 digits, ``_N`` for sample N of
    a request with ``samples > 1``."""
    key = f"{index:09d}"
    return key if sample is None else f"{key}_{sample}"


def shard_name(shard: int) -> str:
    return f"{shard:05d}"


def stats_name(shard: int) -> str:
    return f"{shard:05d}_stats.json"


def error_info(error: BaseException) -> dict[str, Any]:
    """The ``error`` object of a failure: class name, one-line message (redacted by the
    SDK's errors), and the field of a validation error."""
    info: dict[str, Any] = {"type": type(error).__name__, "message": str(error)[:4000]}
    field = getattr(error, "field", None)
    if isinstance(field, str):
        info["field"] = field
    job_id = getattr(error, "job_id", None)
    if job_id not in (None, ""):
        info["job_id"] = job_id
    return info


# --- metadata values in JSON ---------------------------------------------------------------
# Staged samples keep metadata values exactly (a parquet input's timestamps and decimals go
# back into the parquet output as such): values JSON has no type for are tagged.

_TAG = "__modelslab_value__"


def encode_value(value: Any) -> Any:
    """*value* as JSON data that :func:`decode_value` turns back into it."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {str(k): encode_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encode_value(v) for v in value]
    if isinstance(value, bytes | bytearray | memoryview):
        return {_TAG: "bytes", "v": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, dt.datetime):
        return {_TAG: "datetime", "v": value.isoformat()}
    if isinstance(value, dt.date):
        return {_TAG: "date", "v": value.isoformat()}
    if isinstance(value, dt.time):
        return {_TAG: "time", "v": value.isoformat()}
    if isinstance(value, dt.timedelta):
        return {_TAG: "timedelta", "v": value.total_seconds()}
    if isinstance(value, decimal.Decimal):
        return {_TAG: "decimal", "v": str(value)}
    return str(value)


def decode_value(value: Any) -> Any:
    if isinstance(value, list):
        return [decode_value(v) for v in value]
    if not isinstance(value, dict):
        return value
    kind = value.get(_TAG)
    if kind is None:
        return {k: decode_value(v) for k, v in value.items()}
    text: Any = value.get("v")
    if kind == "bytes":
        return base64.b64decode(text)
    if kind == "datetime":
        return dt.datetime.fromisoformat(text)
    if kind == "date":
        return dt.date.fromisoformat(text)
    if kind == "time":
        return dt.time.fromisoformat(text)
    if kind == "timedelta":
        return dt.timedelta(seconds=text)
    if kind == "decimal":
        return decimal.Decimal(text)
    return value


def plain_json(value: Any) -> Any:
    """The ``default`` of ``json.dumps`` for the JSON outputs: dates in ISO 8601, bytes in
    base64, decimals as text, durations in seconds."""
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return str(value)
    return str(value)


def dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, default=plain_json)


# --- files ---------------------------------------------------------------------------------


def fsync_dir(path: Path) -> None:
    """Make a rename in *path* durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str, *, durable: bool = True) -> None:
    """Write *text* to a temporary file beside *path*, then rename it onto *path*."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


# --- metadata types of a parquet output ------------------------------------------------------


@attrs.frozen
class MetadataColumn:
    """A metadata column of a parquet output: its arrow type, and whether its values are
    written as JSON text (a column holding values of several JSON types, or objects)."""

    name: str
    type: Any
    json_text: bool = False


def kind_of(value: Any) -> str:
    """The JSON kind of a metadata value: bool, int, float, str or json (anything else)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    return "json"


def unify_kinds(kinds: set[str]) -> str:
    """The kind of a column whose values have *kinds*: ints and floats make floats, one
    kind stays, nothing (all null) makes strings, any other mix JSON text."""
    if not kinds:
        return "str"
    if kinds == {"int", "float"}:
        return "float"
    if len(kinds) == 1:
        return next(iter(kinds))
    return "json"


def infer_kinds(staged: Any) -> dict[str, str]:
    """Metadata columns and their kinds from the staged done rows of one shard."""
    kinds: dict[str, set[str]] = {}
    for item in staged:
        for name, value in decode_value(dict(item["record"])).items():
            if name in SAMPLE_COLUMNS:
                continue
            seen = kinds.setdefault(name, set())
            if value is not None:
                seen.add(kind_of(value))
    return {name: unify_kinds(seen) for name, seen in kinds.items()}


def columns_of_kinds(kinds: Mapping[str, str]) -> list[MetadataColumn]:
    import pyarrow as pa

    types = {
        "bool": pa.bool_(),
        "int": pa.int64(),
        "float": pa.float64(),
        "str": pa.string(),
        "json": pa.string(),
    }
    return [MetadataColumn(name, types[kind], kind == "json") for name, kind in kinds.items()]
