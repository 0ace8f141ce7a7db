"""Shard writers: one function per output format, run in a worker thread.

Each reads the shard's staged samples (a small JSON file per row and the image files the
batch downloaded) and writes the shard under a temporary name inside the staging folder,
fsyncs it and renames it into place. Images are streamed from their files: a shard is
never held in memory (a parquet shard holds one row group at a time).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import attrs

from ._common import (
    OUTPUT_REQUEST_FIELDS,
    STAGING,
    DatasetError,
    MetadataColumn,
    decode_value,
    dumps,
    fsync_dir,
    plain_json,
    row_key,
    shard_name,
)

if TYPE_CHECKING:
    import pyarrow as pa

OutputFormat = Literal["files", "imagefolder", "webdataset", "parquet"]
OUTPUT_FORMATS: tuple[str, ...] = ("files", "imagefolder", "webdataset", "parquet")

#: A parquet row group closes at this many images or bytes of images, whichever first.
PARQUET_GROUP_ROWS = 100
PARQUET_GROUP_BYTES = 16 * 1024 * 1024

#: (name, arrow type name) of the columns of every parquet shard before the metadata.
_FIXED_COLUMNS: tuple[tuple[str, str], ...] = (
    ("key", "string"),
    ("prompt", "string"),
    ("negative_prompt", "string"),
    ("model_id", "string"),
    ("width", "int64"),
    ("height", "int64"),
    ("samples", "int64"),
    ("num_inference_steps", "int64"),
    ("guidance_scale", "float64"),
    ("injected_noise_alpha", "float64"),
    ("sigma_threshold", "float64"),
    ("true_cfg_scale", "float64"),
    ("use_cfg_zero_star", "bool"),
    ("use_zero_init", "bool"),
    ("zero_steps", "int64"),
    ("safety_checker", "bool"),
    ("safety_checker_type", "string"),
    ("seed", "int64"),
)
assert [n for n, _ in _FIXED_COLUMNS[2:-1]] == list(OUTPUT_REQUEST_FIELDS)


@attrs.frozen
class Layout:
    """Where a dataset's parts live."""

    out: Path
    output_format: str
    shard_size: int

    @property
    def staging(self) -> Path:
        return self.out / STAGING

    @property
    def images(self) -> Path:
        """Where the batch downloads images: the output itself for ``files``, else staging."""
        return self.out if self.output_format == "files" else self.staging

    def shard_file(self, shard: int) -> str | None:
        """The shard's file (or folder) name in the output, None for ``files``."""
        name = shard_name(shard)
        return {
            "imagefolder": name,
            "webdataset": f"{name}.tar",
            "parquet": f"{name}.parquet",
        }.get(self.output_format)


def samples(staged: Sequence[Mapping[str, Any]]) -> Iterator[tuple[str, Mapping[str, Any], str]]:
    """``(key, record, image file)`` of each image of the staged done rows, by key."""
    for item in staged:
        record = item["record"]
        files = item["files"]
        several = int(record.get("samples") or 1) > 1
        for n, name in enumerate(files):
            yield row_key(item["index"], n if several else None), record, name


def pack(
    layout: Layout,
    shard: int,
    staged: Sequence[Mapping[str, Any]],
    metadata: Sequence[MetadataColumn] | None,
) -> str | None:
    """Write shard *shard* of *staged* done rows (sorted by index); its file name."""
    name = layout.shard_file(shard)
    if name is None:
        return None
    writer: Callable[[Path, Path, Sequence[Mapping[str, Any]]], None]
    if layout.output_format == "webdataset":
        writer = _write_tar
    elif layout.output_format == "imagefolder":
        writer = _write_folder
    else:

        def writer(tmp: Path, images: Path, staged: Sequence[Mapping[str, Any]]) -> None:
            _write_parquet(tmp, images, staged, metadata or ())

    final = layout.out / name
    tmp = layout.staging / f"{name}.tmp"
    _remove(tmp)
    writer(tmp, layout.images, staged)
    if tmp.is_dir() and final.exists():
        shutil.rmtree(final)  # a folder renamed by a run killed before its stats
    os.replace(tmp, final)
    fsync_dir(layout.out)
    return name


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _json_record(key: str, record: Mapping[str, Any]) -> dict[str, Any]:
    return {"key": key, **decode_value(dict(record))}


# --- webdataset ------------------------------------------------------------------------------


def _write_tar(tmp: Path, images: Path, staged: Sequence[Mapping[str, Any]]) -> None:
    now = time.time()
    with open(tmp, "wb") as raw:
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for key, record, file in samples(staged):
                data = dumps(_json_record(key, record)).encode("utf-8")
                info = tarfile.TarInfo(f"{key}.json")
                info.size, info.mtime, info.mode = len(data), now, 0o644
                tar.addfile(info, io.BytesIO(data))
                path = images / file
                with open(path, "rb") as image:
                    info = tarfile.TarInfo(key + _suffix(file))
                    info.size = os.fstat(image.fileno()).st_size
                    info.mtime, info.mode = now, 0o644
                    tar.addfile(info, image)
        raw.flush()
        os.fsync(raw.fileno())


def _suffix(file: str) -> str:
    return Path(file).suffix.lower() or ".png"


# --- imagefolder -----------------------------------------------------------------------------


def _write_folder(tmp: Path, images: Path, staged: Sequence[Mapping[str, Any]]) -> None:
    tmp.mkdir(parents=True)
    with open(tmp / "metadata.jsonl", "w", encoding="utf-8") as meta:
        for key, record, file in samples(staged):
            file_name = key + _suffix(file)
            _link_or_copy(images / file, tmp / file_name)
            meta.write(dumps({"file_name": file_name, **_json_record(key, record)}) + "\n")
        meta.flush()
        os.fsync(meta.fileno())
    fsync_dir(tmp)


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link (the staged file stays until the shard is complete), or a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
        with open(target, "rb+") as handle:
            os.fsync(handle.fileno())


# --- parquet ---------------------------------------------------------------------------------


def parquet_schema(metadata: Sequence[MetadataColumn]) -> pa.Schema:
    """The schema of a parquet shard, with the Hugging Face features of its known columns in
    the ``huggingface`` metadata, so ``datasets`` decodes ``image`` as an ``Image``."""
    import pyarrow as pa

    types = {
        "string": pa.string(),
        "int64": pa.int64(),
        "float64": pa.float64(),
        "bool": pa.bool_(),
    }
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    fields = [pa.field("image", image)]
    fields += [pa.field(name, types[kind]) for name, kind in _FIXED_COLUMNS]
    fields += [pa.field(column.name, column.type) for column in metadata]
    fields.append(pa.field("job_id", pa.string()))
    features: dict[str, Any] = {"image": {"_type": "Image"}}
    features.update({name: {"dtype": kind, "_type": "Value"} for name, kind in _FIXED_COLUMNS})
    features["job_id"] = {"dtype": "string", "_type": "Value"}
    info = {"info": {"features": features}}
    return pa.schema(fields, metadata={"huggingface": json.dumps(info)})


def _write_parquet(
    tmp: Path,
    images: Path,
    staged: Sequence[Mapping[str, Any]],
    metadata: Sequence[MetadataColumn],
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = parquet_schema(metadata)
    as_json = {c.name for c in metadata if c.json_text}
    known = {c.name for c in metadata}
    fixed = [name for name, _ in _FIXED_COLUMNS[1:]]
    group: list[dict[str, Any]] = []
    size = 0
    with pq.ParquetWriter(tmp, schema) as writer:

        def flush() -> None:
            nonlocal size
            try:
                table = pa.Table.from_pylist(group, schema=schema)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
                raise DatasetError(
                    f"{tmp.name.removesuffix('.tmp')}: a metadata value does not fit the "
                    f"dataset's parquet schema ({exc}); give each column one type"
                ) from None
            writer.write_table(table, row_group_size=len(group))
            group.clear()
            size = 0

        for key, record, file in samples(staged):
            values = decode_value(dict(record))
            extra = set(values) - known - set(fixed) - {"job_id"}
            if extra:
                raise DatasetError(
                    f"row {key}: metadata column(s) {', '.join(sorted(extra))} not in the "
                    "dataset's parquet schema (set by its first shard); give every row the "
                    "same columns or read the input with read_rows"
                )
            data = (images / file).read_bytes()
            row: dict[str, Any] = {"image": {"bytes": data, "path": key + _suffix(file)}}
            row["key"] = key
            for name in fixed:
                row[name] = values.get(name)
            for column in metadata:
                value = values.get(column.name)
                if column.name in as_json and value is not None:
                    value = json.dumps(value, ensure_ascii=False, default=plain_json)
                row[column.name] = value
            job_id = values.get("job_id")
            row["job_id"] = None if job_id is None else str(job_id)
            group.append(row)
            size += len(data)
            if len(group) >= PARQUET_GROUP_ROWS or size >= PARQUET_GROUP_BYTES:
                flush()
        if group:
            flush()
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
