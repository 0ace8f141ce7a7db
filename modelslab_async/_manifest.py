"""The JSONL manifest: one record per state change, appended and fsynced.

Format (public; pipelines read it): one JSON object per line, the last record of an
``index`` wins::

    {"index": 0, "state": "submitted" | "done" | "failed", "fingerprint": "<sha256>",
     "job_id": 123 | null, "files": ["out/123-0.png"],
     "error": {"type": "GenerationFailed", "message": "..."} | null,
     "time": 1764000000.0, "attempt": 0, "track_id": "...",
     "prompt": "...", "seed": 42, "generation_time": 1.8}

``prompt``, ``seed`` and ``generation_time`` are optional (written only when known, for the
batch report); a reader must accept records without them.

Records are written by a worker thread and fsynced in groups: every caller of
:meth:`Manifest.append` returns once its record is on disk. A line cut off by a crash is
ignored when the manifest is read back. The API key never appears in it, and an error's
message is cut to a few thousand characters.

One run per manifest: :meth:`Manifest.open` takes an exclusive lock (``flock``) on
``<manifest>.lock`` beside it, which names the holder's pid, and raises
:class:`ManifestLockedError` while another run holds it. The OS releases the lock when its
holder ends, however it ends (``kill -9`` included); a clean close also removes the file.
Not POSIX (no ``fcntl``): no lock is taken.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import anyio
import attrs

from ._errors import JobId, ManifestLockedError, ModelsLabError
from ._redact import redact, truncate

try:
    import fcntl

    _LOCKS = True
except ImportError:  # not POSIX
    _LOCKS = False

State = Literal["submitted", "done", "failed"]


@attrs.frozen(kw_only=True)
class ManifestRecord:
    """One line of the manifest."""

    index: int
    state: State
    fingerprint: str
    job_id: JobId | None = None
    files: tuple[str, ...] = ()
    error: Mapping[str, str] | None = None
    time: float = attrs.field(factory=time.time)
    attempt: int = 0
    track_id: str | int | None = None
    prompt: str | None = None
    seed: int | None = None
    generation_time: float | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "index": self.index,
            "state": self.state,
            "fingerprint": self.fingerprint,
            "job_id": self.job_id,
            "files": list(self.files),
            "error": dict(self.error) if self.error is not None else None,
            "time": round(self.time, 6),
            "attempt": self.attempt,
            "track_id": self.track_id,
        }
        for name, value in (
            ("prompt", self.prompt),
            ("seed", self.seed),
            ("generation_time", self.generation_time),
        ):
            if value is not None:
                data[name] = value
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ManifestRecord:
        state = data.get("state")
        if state not in ("submitted", "done", "failed"):
            raise ValueError(f"unknown state {state!r}")
        error = data.get("error")
        return cls(
            index=int(data["index"]),
            state=state,
            fingerprint=str(data.get("fingerprint", "")),
            job_id=data.get("job_id"),
            files=tuple(str(f) for f in data.get("files") or ()),
            error={str(k): str(v) for k, v in error.items()} if isinstance(error, dict) else None,
            time=float(data.get("time") or 0.0),
            attempt=int(data.get("attempt") or 0),
            track_id=data.get("track_id"),
            prompt=_optional(str, data.get("prompt")),
            seed=_optional(int, data.get("seed")),
            generation_time=_optional(float, data.get("generation_time")),
        )


def _optional(kind: type[Any], value: Any) -> Any:
    """*value* as *kind*, or None when absent or not convertible (an optional field never
    makes a record unreadable)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return kind(value)
    except (TypeError, ValueError):
        return None


def error_record(error: BaseException) -> dict[str, str]:
    """The ``error`` object of a failed record: the class name and a redacted message."""
    info = {"type": type(error).__name__, "message": truncate(redact(str(error)))}
    job_id = getattr(error, "job_id", None)
    if job_id not in (None, ""):
        info["job_id"] = str(job_id)
    return info


def read_records(path: str | os.PathLike[str]) -> Iterator[ManifestRecord]:
    """Every well-formed record of the manifest at *path*, in order (a torn line is skipped)."""
    try:
        handle = open(path, encoding="utf-8")  # noqa: SIM115
    except FileNotFoundError:
        return
    with handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                yield ManifestRecord.from_json(json.loads(line))
            except (ValueError, KeyError, TypeError):
                continue


def load_state(path: str | os.PathLike[str]) -> dict[int, ManifestRecord]:
    """The last record of each index."""
    state: dict[int, ManifestRecord] = {}
    for record in read_records(path):
        state[record.index] = record
    return state


def _take_lock(lock_path: Path, manifest: Path) -> int | None:
    """Lock *lock_path* for this process (its pid written in it) and return the descriptor;
    ManifestLockedError if another process holds it. None where there is no ``flock``."""
    if not _LOCKS:
        return None
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            pid = int(holder) if holder.isdigit() else None
            raise ManifestLockedError(str(manifest), pid) from None
        except BaseException:
            os.close(fd)
            raise
        # The previous holder may have removed the file between our open and our lock:
        # then this lock is on a file no one else will open. Start again.
        try:
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)


class Manifest:
    """An append-only JSONL manifest with group-committed, fsynced writes, held by one run
    at a time (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._lock_fd: int | None = None
        self._handle: Any = None
        self._pending: list[str] = []
        self._lock = anyio.Lock()
        self.previous: dict[int, ManifestRecord] = {}
        self.written = 0
        self._error: OSError | None = None

    async def open(self) -> Manifest:
        """Take the manifest's lock, read the previous run's state and open the file for
        appending. Raises ManifestLockedError (naming the holder's pid) while another run
        holds it."""

        def _open() -> tuple[dict[int, ManifestRecord], Any]:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd = _take_lock(self.lock_path, self.path)
            try:
                previous = load_state(self.path)
                handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
                # A torn last line (crash mid-write) must not glue onto the next record.
                if handle.tell() > 0:
                    with open(self.path, "rb") as check:
                        check.seek(-1, os.SEEK_END)
                        if check.read(1) != b"\n":
                            handle.write("\n")
            except BaseException:
                self._release()
                raise
            return previous, handle

        self.previous, self._handle = await anyio.to_thread.run_sync(_open)
        return self

    @property
    def locked(self) -> bool:
        """True while this manifest holds its lock (between open and close)."""
        return self._lock_fd is not None

    def _release(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            try:
                os.unlink(self.lock_path)  # while still holding it: see _take_lock
            except OSError:
                pass
            finally:
                os.close(fd)

    async def append(self, record: ManifestRecord) -> None:
        """Append *record*; returns once it (and any record queued before it) is fsynced.

        Raises the ``OSError`` of a failed write, for this append and every later one: a
        record that may not be on disk never looks written.
        """
        if self._handle is None:
            raise RuntimeError("manifest is not open")
        line = json.dumps(_redacted(record.to_json()), separators=(",", ":"), default=str)
        self._pending.append(line)
        with anyio.CancelScope(shield=True):
            async with self._lock:
                if self._error is None and self._pending:
                    lines, self._pending = self._pending, []
                    try:
                        await anyio.to_thread.run_sync(self._write, lines)
                    except OSError as exc:
                        self._error = exc
                # else: a writer before us wrote ours too (or failed to)
                if self._error is not None:
                    err = self._error
                    reason = err.strerror or str(err)
                    raise OSError(err.errno, f"manifest {self.path} not written: {reason}") from err

    def _write(self, lines: list[str]) -> None:
        handle = self._handle
        handle.write("\n".join(lines) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
        self.written += len(lines)

    async def close(self) -> None:
        """Close the file and release the lock."""
        handle, self._handle = self._handle, None

        def _close() -> None:
            try:
                if handle is not None:
                    handle.close()
            finally:
                self._release()

        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(_close)


def _redacted(data: dict[str, Any]) -> dict[str, Any]:
    """*data* with the key masked in its free-text values (the error, track id and prompt).

    Not the serialised line: masking a short key there would also mask it in the JSON
    syntax, the numbers and the paths, and the record would no longer load.
    """
    error = data.get("error")
    if isinstance(error, dict):
        data["error"] = {k: redact(v) if isinstance(v, str) else v for k, v in error.items()}
    for name in ("track_id", "prompt"):
        if isinstance(data.get(name), str):
            data[name] = redact(data[name])
    return data


def error_from_record(record: ManifestRecord) -> ModelsLabError:
    """Rebuild a (generic) error from a failed record, for results of items not retried."""
    from . import _errors

    info = record.error or {}
    cls = getattr(_errors, info.get("type", ""), None)
    message = info.get("message", "failed in a previous run")
    error = ModelsLabError(message)
    if isinstance(cls, type) and issubclass(cls, ModelsLabError):
        error = cls.__new__(cls)
        ModelsLabError.__init__(error, message)
    error.job_id = record.job_id  # type: ignore[attr-defined]
    return error
