"""What the report shows, read from the disk: the manifest's last record per index, and the
images of every output layout (DESIGN §11).

- ``files``: the paths of each ``done`` record, linked relative to the output folder.
- ``imagefolder``: ``DIR/00000/metadata.jsonl`` (``file_name`` plus the columns) beside the
  images, linked relative to the output folder.
- ``webdataset`` / ``parquet``: ``DIR/00000.tar`` (``KEY.png`` + ``KEY.json``) and
  ``DIR/00000.parquet`` (``image`` as ``{"bytes", "path"}`` plus the columns): images inside
  shards cannot be linked, so the first few are embedded as small JPEG data URIs (Pillow).

A sample's KEY is its input row index zero-padded to 9 digits, with ``_N`` for the N-th
image of a row, which ties it to the manifest record of that index.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, TypeAlias
from urllib.parse import quote

import attrs

from .._manifest import ManifestRecord, read_records

IMAGE_SUFFIXES = frozenset({"png", "jpg", "jpeg", "webp", "gif", "bmp"})
_KEY = re.compile(r"(\d+)(?:_(\d+))?")
_SHARD = re.compile(r"\d{5}\.(tar|parquet)")
_FOLDER = re.compile(r"\d{5}")
#: Bytes read from a shard member at most: a sample's JSON, an image to thumbnail.
_MAX_JSON = 1 << 20
_MAX_IMAGE = 64 << 20


@attrs.frozen(kw_only=True)
class Sample:
    """One image found on disk: ``src`` is a relative URL or a data URI (None when it could
    not be shown), ``href`` the link to the full image (None inside a shard), ``where``
    its place for a person to read, ``meta`` its metadata columns (prompt, seed, ...)."""

    index: int
    sample: int
    src: str | None
    href: str | None
    where: str
    meta: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class Found:
    """The images of an output folder: those to show, how many there are in all, and the
    input indices they cover."""

    samples: list[Sample]
    total: int
    indices: frozenset[int]
    notes: list[str]


@attrs.frozen(kw_only=True)
class ManifestState:
    """The last record of each index, and the times of the first and last record."""

    records: dict[int, ManifestRecord]
    first_time: float | None
    last_time: float | None


def read_manifest(path: Path) -> ManifestState:
    records: dict[int, ManifestRecord] = {}
    first = last = None
    for record in read_records(path):
        records[record.index] = record
        if record.time > 0:
            first = record.time if first is None else min(first, record.time)
            last = record.time if last is None else max(last, record.time)
    return ManifestState(records=records, first_time=first, last_time=last)


def key_of(name: str) -> tuple[int, int] | None:
    """``(index, sample)`` of a KEY (``000000012`` or ``000000012_1``), else None."""
    match = _KEY.fullmatch(name)
    if match is None:
        return None
    return int(match[1]), int(match[2] or 0)


def href(path: Path, out: Path) -> str:
    """The URL of *path* relative to the folder of the report (a file: URI across drives)."""
    try:
        rel = os.path.relpath(path.resolve(), out.resolve())
    except ValueError:  # another drive (Windows): no relative path exists
        return path.resolve().as_uri()
    return quote(Path(rel).as_posix())


def locate(name: str, out: Path) -> Path | None:
    """The file a manifest path names, preferring the one in the output folder: the path was
    written relative to the run's working directory, and the folder may have moved since."""
    path = Path(name)
    candidates = (
        [out / path.name, path] if path.is_absolute() else [out / path, out / path.name, path]
    )
    return next((c for c in candidates if c.is_file()), None)


def dataset_parts(out: Path) -> tuple[list[Path], list[Path]]:
    """The shard files and the imagefolder folders of *out*, in name order."""
    shards: list[Path] = []
    folders: list[Path] = []
    try:
        entries = sorted(out.iterdir())
    except FileNotFoundError:
        return shards, folders
    for entry in entries:
        if _SHARD.fullmatch(entry.name) and entry.is_file():
            shards.append(entry)
        elif (
            _FOLDER.fullmatch(entry.name)
            and entry.is_dir()
            and (entry / "metadata.jsonl").is_file()
        ):
            folders.append(entry)
    return shards, folders


def manifest_files(
    records: Iterable[ManifestRecord], out: Path, *, skip: frozenset[int], limit: int
) -> Found:
    """The images of the ``done`` records (``files`` layout), linked by relative path; a
    file no longer on disk is listed without a picture."""
    samples: list[Sample] = []
    total = 0
    covered: set[int] = set()
    for record in sorted(records, key=lambda r: r.index):
        if record.state != "done" or record.index in skip:
            continue
        covered.add(record.index)
        for n, name in enumerate(record.files):
            total += 1
            if len(samples) >= limit:
                continue
            path = locate(name, out)
            link = href(path, out) if path is not None else None
            where = link or f"{name} (missing)"
            samples.append(Sample(index=record.index, sample=n, src=link, href=link, where=where))
    return Found(samples=samples, total=total, indices=frozenset(covered), notes=[])


def imagefolder(folders: Iterable[Path], out: Path, *, limit: int) -> Found:
    """The images listed in each folder's ``metadata.jsonl``, linked by relative path."""
    samples: list[Sample] = []
    total = 0
    covered: set[int] = set()
    for folder in folders:
        for row in _jsonl(folder / "metadata.jsonl"):
            name = row.get("file_name")
            if not isinstance(name, str):
                continue
            key = key_of(PurePosixPath(name).stem)
            if key is None:
                continue
            total += 1
            covered.add(key[0])
            if len(samples) >= limit:
                continue
            path = folder / name
            link = href(path, out) if path.is_file() else None
            where = link or f"{folder.name}/{name} (missing)"
            samples.append(
                Sample(index=key[0], sample=key[1], src=link, href=link, where=where, meta=row)
            )
    return Found(samples=samples, total=total, indices=frozenset(covered), notes=[])


def shards(paths: Iterable[Path], *, limit: int, size: int) -> Found:
    """Up to *limit* images of the tar and parquet shards, embedded as *size*-pixel
    thumbnails (without Pillow: listed without a picture, and a note says why)."""
    thumbnail = _thumbnailer(size)
    samples: list[Sample] = []
    notes: list[str] = []
    total = 0
    covered: set[int] = set()
    for path in paths:
        budget = limit - len(samples)
        try:
            if path.suffix == ".tar":
                found = _tar(path, budget, thumbnail)
            else:
                found = _parquet(path, budget, thumbnail)
        except ImportError:
            notes.append(f"{path.name}: reading parquet needs pyarrow (the [datasets] extra)")
            continue
        except (OSError, ValueError, tarfile.TarError) as exc:
            notes.append(f"{path.name}: not readable ({type(exc).__name__}: {exc})")
            continue
        samples.extend(found.samples)
        total += found.total
        covered |= found.indices
    if thumbnail is None and samples:
        notes.append("thumbnails of images inside shards need Pillow (the [images] extra)")
    return Found(samples=samples, total=total, indices=frozenset(covered), notes=notes)


def failure_rows(path: Path) -> dict[int, Mapping[str, Any]]:
    """``DIR/failures.jsonl`` (failed rows with their input and error) by input index;
    every field is optional: a row is matched by ``index``, ``row`` or ``key``."""
    rows: dict[int, Mapping[str, Any]] = {}
    for row in _jsonl(path):
        index = _row_index(row)
        if index is not None:
            rows[index] = row
    return rows


def row_prompt(row: Mapping[str, Any]) -> str | None:
    """The prompt of a failures.jsonl row: its own, or its input's."""
    for source in (row, row.get("input"), row.get("row")):
        if isinstance(source, Mapping) and isinstance(source.get("prompt"), str):
            prompt: str = source["prompt"]
            return prompt
    return None


# --- internals -----------------------------------------------------------------------------


#: Image bytes -> a JPEG data URI (None for an unreadable image); None without Pillow.
Thumbnailer: TypeAlias = "Callable[[bytes], str | None] | None"


def _thumbnailer(size: int) -> Thumbnailer:
    try:
        from PIL import Image
    except ImportError:
        return None

    def thumbnail(data: bytes) -> str | None:
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.draft("RGB", (size, size))  # JPEG: decode at a fraction of full size
                image.thumbnail((size, size))
                buffer = io.BytesIO()
                image.convert("RGB").save(buffer, "JPEG", quality=80)
        except Exception:  # a damaged or hostile image gets no thumbnail, not a failed report
            return None
        return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")

    return thumbnail


def _tar(path: Path, budget: int, thumbnail: Thumbnailer) -> Found:
    """A webdataset shard: members sharing a KEY are adjacent (``KEY.png``, ``KEY.json``)."""
    samples: list[Sample] = []
    total = 0
    covered: set[int] = set()
    group: dict[str, Any] = {}
    group_key: str | None = None

    def flush() -> None:
        nonlocal total
        if group_key is None or "image" not in group:
            return
        key = key_of(group_key)
        if key is None:
            return
        total += 1
        covered.add(key[0])
        if len(samples) < budget:
            data = group.get("data")
            src = thumbnail(data) if thumbnail is not None and data is not None else None
            samples.append(
                Sample(
                    index=key[0],
                    sample=key[1],
                    src=src,
                    href=None,
                    where=f"{path.name}: {group['image']}",
                    meta=group.get("meta", {}),
                )
            )

    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            name = PurePosixPath(member.name).name
            stem, _, suffix = name.partition(".")
            if stem != group_key:
                flush()
                group, group_key = {}, stem
            suffix = suffix.lower()
            if suffix in IMAGE_SUFFIXES and "image" not in group:
                group["image"] = name
                # Read only the images to embed: the rest of the shard is counted, not read.
                if len(samples) < budget and thumbnail is not None:
                    group["data"] = _member_bytes(tar, member, _MAX_IMAGE)
            elif suffix == "json":
                group["meta"] = _json_object(_member_bytes(tar, member, _MAX_JSON))
        flush()
    return Found(samples=samples, total=total, indices=frozenset(covered), notes=[])


def _parquet(path: Path, budget: int, thumbnail: Thumbnailer) -> Found:
    """A parquet shard: ``image`` as ``{"bytes", "path"}``, ``key`` and the columns."""
    import pyarrow.parquet as pq

    samples: list[Sample] = []
    covered: set[int] = set()
    file = pq.ParquetFile(path)
    names = set(file.schema_arrow.names)
    total = file.metadata.num_rows
    meta_columns = [c for c in ("prompt", "seed", "job_id", "generation_time") if c in names]
    has_key = "key" in names
    has_image = "image" in names
    if has_key:
        for batch in file.iter_batches(columns=["key"], batch_size=4096):
            for value in batch.column(0).to_pylist():
                key = key_of(str(value)) if value is not None else None
                if key is not None:
                    covered.add(key[0])
    if budget > 0:
        columns = [c for c in ("key", "image") if c in names] + meta_columns
        row_number = 0
        for batch in file.iter_batches(columns=columns, batch_size=16):
            for row in batch.to_pylist():
                row_number += 1
                key = key_of(str(row.get("key"))) if has_key else None
                if key is None:
                    continue
                image = row.get("image") if has_image else None
                data = image.get("bytes") if isinstance(image, Mapping) else None
                src = thumbnail(data) if thumbnail is not None and data else None
                meta = {c: row.get(c) for c in meta_columns}
                samples.append(
                    Sample(
                        index=key[0],
                        sample=key[1],
                        src=src,
                        href=None,
                        where=f"{path.name}: row {row_number - 1}",
                        meta=meta,
                    )
                )
                if len(samples) >= budget:
                    break
            if len(samples) >= budget:
                break
    return Found(samples=samples, total=total, indices=frozenset(covered), notes=[])


def _member_bytes(tar: tarfile.TarFile, member: tarfile.TarInfo, cap: int) -> bytes | None:
    if member.size > cap:
        return None
    handle = tar.extractfile(member)
    return handle.read() if handle is not None else None


def _json_object(data: bytes | None) -> Mapping[str, Any]:
    if data is None:
        return {}
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def _jsonl(path: Path) -> Iterator[Mapping[str, Any]]:
    """The JSON objects of a JSONL file, skipping lines that are not one (a torn last line)."""
    try:
        handle = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return
    with handle:
        for line in handle:
            if len(line) > _MAX_JSON or not line.strip():
                continue
            value = _json_object(line)
            if value:
                yield value


def _row_index(row: Mapping[str, Any]) -> int | None:
    for name in ("index", "row"):
        value = row.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    key = row.get("key")
    if isinstance(key, str):
        parsed = key_of(key)
        return parsed[0] if parsed is not None else None
    return None
