"""The batch report: ``DIR/report.html``, one page a person opens from disk to look at a batch.

:func:`write_report` rebuilds it from the manifest and the files on disk alone, so it can
be written at the end of a run and again at any later time. The page is self-contained:
inline CSS, a few lines of vanilla JS (filter, sort, pages of 100), no request to any
server; a Content-Security-Policy allows images from files and data URIs only and no
script but its own. Every text from the batch (prompts, errors, paths) is escaped by
Jinja2's autoescape.
"""

from __future__ import annotations

import base64
import datetime
import functools
import hashlib
import math
import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import attrs

from .._batch import NOT_SUBMITTED
from .._download import _write_atomic
from .._manifest import ManifestRecord
from .._version import __version__
from . import _sources as S

__all__ = ["MAX_EMBEDDED", "MAX_IMAGES", "REPORT_NAME", "STATS_KEYS", "write_report"]

REPORT_NAME = "report.html"
#: Images linked from the page at most (``files``, ``imagefolder``); the page pages them.
MAX_IMAGES = 1000
#: Images inside shards (``webdataset``, ``parquet``) embedded as thumbnails at most.
MAX_EMBEDDED = 200
#: Failed items listed at most (the manifest has them all).
MAX_FAILURES = 1000
#: Longest side of an embedded thumbnail, in pixels.
THUMBNAIL_SIZE = 160
#: The run statistics the page shows, and what each means.
STATS_KEYS: Mapping[str, str] = {
    "wall_time": "seconds the run took",
    "images_per_minute": "images written per minute of wall time",
    "lag_p50": "median seconds from a job being ready to its result (poll lag)",
    "lag_p99": "99th percentile of the poll lag, in seconds",
}


@attrs.frozen(kw_only=True)
class _Card:
    index: int
    sample: int
    src: str | None
    href: str | None
    where: str
    prompt: str | None
    seed: str | None
    job_id: str | None
    generation_time: float | None

    @property
    def search_text(self) -> str:
        parts = (self.prompt, self.seed, self.job_id, str(self.index), self.where)
        return " ".join(p for p in parts if p).lower()


@attrs.frozen(kw_only=True)
class _Failure:
    index: int
    prompt: str | None
    kind: str
    message: str
    job_id: str | None
    attempts: int


@attrs.frozen(kw_only=True)
class _Tile:
    label: str
    value: str
    detail: str = ""
    anchor: str | None = None
    tone: str = ""


def write_report(
    out_dir: str | os.PathLike[str],
    *,
    manifest: str | os.PathLike[str] | None = None,
    title: str | None = None,
    stats: Mapping[str, float | None] | None = None,
    max_images: int = MAX_IMAGES,
    max_embedded: int = MAX_EMBEDDED,
) -> Path:
    """Write ``out_dir/report.html`` (atomically: a temporary file, then a rename) and
    return its path.

    Rebuilt from *manifest* (default ``out_dir/manifest.jsonl``; the last record of each
    index wins) and the images on disk in any output layout: ``files`` and ``imagefolder``
    images are linked by relative path (at most *max_images*), images inside ``webdataset``
    or ``parquet`` shards are embedded as thumbnails (at most *max_embedded*; needs
    Pillow, and pyarrow for parquet). *stats* are the run's own numbers, each optional
    (keys: :data:`STATS_KEYS`): without ``wall_time`` the page shows the span from the
    first to the last manifest record; the poll lag is shown only when given.

    Blocking (file reads, image decoding): from async code, run it in a worker thread
    (``anyio.to_thread.run_sync``). Needs Jinja2 (the ``[cli]`` extra). Raises
    ``FileNotFoundError`` when there is no manifest, ``ValueError`` for a bad argument.
    """
    out = Path(out_dir)
    manifest_path = Path(manifest) if manifest is not None else out / "manifest.jsonl"
    run_stats = _check_stats(stats)
    for name, value in (("max_images", max_images), ("max_embedded", max_embedded)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name}: got {value!r}, allowed an integer >= 0")
    if not manifest_path.is_file():
        raise FileNotFoundError(f"no manifest at {manifest_path}: nothing to report")
    template = _template()  # before any work: a missing Jinja2 fails fast

    state = S.read_manifest(manifest_path)
    records = state.records
    shard_paths, folders = S.dataset_parts(out)
    from_shards = S.shards(shard_paths, limit=max_embedded, size=THUMBNAIL_SIZE)
    from_folders = S.imagefolder(folders, out, limit=max_images)
    from_manifest = S.manifest_files(
        records.values(),
        out,
        skip=from_shards.indices | from_folders.indices,
        limit=max(0, max_images - len(from_folders.samples)),
    )
    found = [from_folders, from_manifest, from_shards]
    cards = sorted(
        (_card(sample, records.get(sample.index)) for f in found for sample in f.samples),
        key=lambda c: (c.index, c.sample),
    )
    failures = _failures(records, S.failure_rows(out / "failures.jsonl"))
    context = {
        "title": title if title is not None else f"Batch report: {out.resolve().name}",
        "out_dir": str(out),
        "manifest": str(manifest_path),
        "written": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "version": __version__,
        "tiles": _tiles(records, state, run_stats, failures),
        "cards": cards,
        "grid_note": _grid_note(found, len(cards)),
        "notes": [note for f in found for note in f.notes],
        "failures": failures[:MAX_FAILURES],
        "failures_total": len(failures),
        "script": _SCRIPT,
        "csp": _CSP,
        "fmt_seconds": _seconds,
    }
    page = template.render(context).encode("utf-8")
    target = out / REPORT_NAME
    out.mkdir(parents=True, exist_ok=True)
    return _write_atomic(out, REPORT_NAME, page, target, fsync=True)


# --- the page's parts ----------------------------------------------------------------------


def _card(sample: S.Sample, record: ManifestRecord | None) -> _Card:
    """A grid card: the manifest's fields, else the sample's own metadata columns."""
    meta = sample.meta

    def pick(name: str, recorded: Any) -> Any:
        return recorded if recorded is not None else meta.get(name)

    prompt = pick("prompt", record.prompt if record else None)
    seed = pick("seed", record.seed if record else None)
    job_id = pick("job_id", record.job_id if record else None)
    seconds = pick("generation_time", record.generation_time if record else None)
    return _Card(
        index=sample.index,
        sample=sample.sample,
        src=sample.src,
        href=sample.href,
        where=sample.where,
        prompt=prompt if isinstance(prompt, str) else None,
        seed=_text(seed),
        job_id=_text(job_id),
        generation_time=_number(seconds),
    )


def _failures(
    records: Mapping[int, ManifestRecord], rows: Mapping[int, Mapping[str, Any]]
) -> list[_Failure]:
    """The failed items: the manifest's ``failed`` records (a record taking back a submit
    that was never sent is not a failure), with the prompt from ``failures.jsonl`` when the
    record lacks one, and the rows of ``failures.jsonl`` the manifest does not have."""
    failures: list[_Failure] = []
    for index, record in sorted(records.items()):
        error = record.error or {}
        if record.state != "failed" or error.get("type") == NOT_SUBMITTED:
            continue
        row = rows.get(index, {})
        failures.append(
            _Failure(
                index=index,
                prompt=record.prompt if record.prompt is not None else S.row_prompt(row),
                kind=error.get("type", "error"),
                message=error.get("message", ""),
                job_id=_text(record.job_id),
                attempts=record.attempt + 1,
            )
        )
    for index, row in sorted(rows.items()):
        if index in records:
            continue
        given = row.get("error")
        info = given if isinstance(given, Mapping) else {"message": str(given or "")}
        failures.append(
            _Failure(
                index=index,
                prompt=S.row_prompt(row),
                kind=str(info.get("type", "error")),
                message=str(info.get("message", "")),
                job_id=_text(row.get("job_id")),
                attempts=1,
            )
        )
    failures.sort(key=lambda f: f.index)
    return failures


def _tiles(
    records: Mapping[int, ManifestRecord],
    state: S.ManifestState,
    stats: Mapping[str, float],
    failures: list[_Failure],
) -> list[_Tile]:
    done = [r for r in records.values() if r.state == "done"]
    images = sum(len(r.files) for r in done)
    failed = len(failures)
    unfinished = sum(
        1
        for r in records.values()
        if r.state == "submitted"
        or (r.state == "failed" and (r.error or {}).get("type") == NOT_SUBMITTED)
    )
    wall = stats.get("wall_time")
    wall_detail = "this run"
    if wall is None and state.first_time is not None and state.last_time is not None:
        wall = state.last_time - state.first_time
        wall_detail = "first to last manifest record"
    rate = stats.get("images_per_minute")
    if rate is None and wall:
        rate = images / wall * 60.0
    lag = [v for v in (stats.get("lag_p50"), stats.get("lag_p99")) if v is not None]
    tiles = [
        _Tile(label="done", value=f"{len(done):,}", detail=f"{images:,} images", tone="ok"),
        _Tile(
            label="failed",
            value=f"{failed:,}",
            detail="see below" if failed else "none",
            anchor="failures" if failed else None,
            tone="bad" if failed else "",
        ),
    ]
    if unfinished:
        tiles.append(_Tile(label="unfinished", value=f"{unfinished:,}", detail="rerun resumes"))
    tiles += [
        _Tile(
            label="images / minute",
            value=f"{rate:,.1f}" if rate is not None else "–",
            detail="of wall time",
        ),
        _Tile(
            label="wall time",
            value=_duration(wall) if wall is not None else "–",
            detail=wall_detail if wall is not None else "not recorded",
        ),
        _Tile(
            label="poll lag p50 / p99",
            value=" / ".join(_seconds(v) for v in lag) if lag else "–",
            detail="job ready to result in hand" if lag else "not measured for this run",
        ),
    ]
    return tiles


def _grid_note(found: list[S.Found], shown: int) -> str | None:
    total = sum(f.total for f in found)
    if shown >= total:
        return None
    embedded = found[-1]
    parts = [f"Showing {shown:,} of {total:,} images"]
    if embedded.total > len(embedded.samples):
        parts.append(
            f"{len(embedded.samples):,} of the {embedded.total:,} images inside shards are "
            "embedded as thumbnails"
        )
    linked = found[0].total + found[1].total
    if linked > len(found[0].samples) + len(found[1].samples):
        parts.append("the page links the first images by input order; all are in the folder")
    return "; ".join(parts) + "."


# --- values --------------------------------------------------------------------------------


def _check_stats(stats: Mapping[str, float | None] | None) -> dict[str, float]:
    checked: dict[str, float] = {}
    for name, value in (stats or {}).items():
        if name not in STATS_KEYS:
            allowed = ", ".join(STATS_KEYS)
            raise ValueError(f"stats: unknown key {name!r}, allowed: {allowed}")
        if value is None:
            continue
        number = _number(value)
        if number is None or number < 0:
            raise ValueError(f"stats[{name!r}]: got {value!r}, allowed a number >= 0")
        checked[name] = number
    return checked


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


# --- the template --------------------------------------------------------------------------


def _resource(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


_SCRIPT = _resource("report.js")
_SCRIPT_HASH = base64.b64encode(hashlib.sha256(_SCRIPT.encode("utf-8")).digest()).decode()
#: No request but to files and data URIs, no script but the page's own (by its hash): a
#: prompt that escaped escaping still could not run or fetch anything.
_CSP = (
    "default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; "
    f"script-src 'sha256-{_SCRIPT_HASH}'; base-uri 'none'; form-action 'none'"
)


@functools.lru_cache(maxsize=1)
def _template() -> Any:
    try:
        import jinja2
    except ImportError as exc:  # pragma: no cover - the [cli] extra is missing
        raise ImportError(
            "the batch report needs Jinja2: pip install 'modelslab-async[cli]'"
        ) from exc
    env = jinja2.Environment(
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    return env.from_string(_resource("template.html"))
