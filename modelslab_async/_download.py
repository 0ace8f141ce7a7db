"""Image download and base64 decoding, with atomic, durable file writes.

A link that answers 404/403 shortly after ``success`` is "not there yet" (the CDN lags the
GPU) and is retried with backoff up to ``not_ready_timeout`` seconds; other failures
(5xx, reset, cut-off body) are retried under the transport's policy; after the primary
link keeps failing, its ``proxy_links`` mirror is tried.

Limits: http(s) links only; at most ``MAX_DOWNLOAD_REDIRECTS`` redirects, http(s) only and
never from https to http (a download never carries the key); the body is asked for and
accepted only without a content encoding (``Accept-Encoding: identity``), so the size cap
counts the bytes that are kept, and a gzip bomb is refused before it is inflated.

A body is streamed to a ``.part`` file beside its destination, fsynced (unless the caller
says the file is scratch: ``fsync=False``), and moved into place
with ``os.replace`` only after its length (``Content-Length``) and image signature
(PNG/JPEG/WebP/GIF) check out, so a crash never leaves a partial file under a final name,
and a manifest's ``done`` record (fsynced after) never points at data still in the page
cache. Each ``.part`` file is locked (``flock``) by its writer until it is renamed, so
:func:`remove_stale_parts` removes only parts of processes that are gone. Files are named
``{job_id}-{index}.{ext}`` (a very long id is cut and given a hash), so a rerun overwrites
its own files and nothing else. An ``OSError`` writing a file is that image's
:class:`DownloadError`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import random
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, NoReturn
from urllib.parse import urlsplit

import aiohttp
import anyio
import attrs
from yarl import URL

from . import _constants as C
from ._errors import DownloadError, JobId, ModelsLabError, TransportError
from ._redact import excerpt
from ._transport import Transport, _AttemptFailed, _Outcome, is_testing, number
from ._types import GeneratedImage, Generation

try:
    import fcntl

    _LOCKS = True
except ImportError:  # not POSIX: parts are not locked, and none is removed as stale
    _LOCKS = False

_SIGNATURES: tuple[tuple[bytes, str, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "png", "image/png"),
    (b"\xff\xd8\xff", "jpg", "image/jpeg"),
    (b"GIF87a", "gif", "image/gif"),
    (b"GIF89a", "gif", "image/gif"),
)
_PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk's type and CRC: the last bytes of every PNG
_DATA_PREFIX = re.compile(rb"^\s*data:[\w/+.-]*;base64,", re.IGNORECASE)
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
PART_SUFFIX = ".part"


def sniff(head: bytes) -> tuple[str, str] | None:
    """(extension, content type) from an image's first bytes, or None if not an image."""
    for magic, ext, ctype in _SIGNATURES:
        if head.startswith(magic):
            return ext, ctype
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp", "image/webp"
    return None


def _link_is_base64(url: str, job_id: JobId | None) -> bool:
    """Whether *url* is a ``.base64`` link; a link that is not http(s) is refused."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise DownloadError(
            f"refusing to download a non-http(s) link: {url}", url=url, job_id=job_id
        )
    return parts.path.endswith(".base64")


@attrs.frozen(kw_only=True)
class DownloadPolicy:
    """Limits of a download: ``max_bytes`` per image, ``not_ready_timeout`` seconds of
    404/403 retries after success (waits from ``not_ready_initial`` growing to
    ``not_ready_max``), ``chunk_size`` bytes per write, ``concurrency`` images of one
    generation at once. Every field is a positive number (``not_ready_timeout`` may be 0).
    """

    max_bytes: int = attrs.field(
        default=C.DEFAULT_MAX_IMAGE_BYTES, validator=number(integer=True, above=True)
    )
    not_ready_timeout: float = attrs.field(default=45.0, validator=number())
    not_ready_initial: float = attrs.field(default=0.25, validator=number(above=True))
    not_ready_max: float = attrs.field(default=2.0, validator=number(above=True))
    chunk_size: int = attrs.field(default=1024 * 1024, validator=number(integer=True, above=True))
    concurrency: int = attrs.field(default=4, validator=number(integer=True, above=True))


def file_stem(generation: Generation, index: int) -> str:
    """``{job_id}-{index}``; falls back to the link's own name when the job id is unknown.

    Characters other than letters, digits, ``_``, ``.`` and ``-`` become ``_``; an id
    longer than ``MAX_FILE_STEM_ID`` characters is cut and ends with a hash of the whole
    id, so names stay unique, stable across reruns, and within file-system limits.
    """
    job_id = generation.id
    if type(job_id) is int:
        return f"{job_id}-{index}"
    if job_id is None or job_id == "":
        name = Path(urlsplit(generation.output[index]).path).stem if generation.output else ""
        job_id = name or "image"
    text = str(job_id)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", text)
    if len(safe) > C.MAX_FILE_STEM_ID:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        safe = f"{safe[: C.MAX_FILE_STEM_ID - 17]}-{digest}"
    return f"{safe}-{index}"


def decode_base64_image(text: bytes, *, url: str, job_id: JobId | None) -> bytes:
    """Decode the body of a ``.base64`` link (an optional ``data:`` prefix is stripped)."""
    body = _DATA_PREFIX.sub(b"", text.strip(), count=1)
    body = b"".join(body.split())
    try:
        data = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DownloadError(
            f"{url}: not valid base64 text ({excerpt(text, 60)})", url=url, job_id=job_id
        ) from exc
    return data


class Downloader:
    """Downloads a generation's images through a client's transport."""

    def __init__(self, transport: Transport, policy: DownloadPolicy | None = None) -> None:
        self.transport = transport
        self.policy = policy or DownloadPolicy()
        self._made: dict[str | os.PathLike[str], Path] = {}  # dest -> its folder, made
        self._timeout = transport.timeouts.for_download()

    async def download(
        self,
        generation: Generation,
        dest: str | os.PathLike[str] | None = None,
        *,
        fsync: bool = True,
    ) -> list[GeneratedImage]:
        """Every image of *generation*, in order: written under *dest*, or as bytes.
        ``fsync=False`` renames files into place without an fsync (scratch files that the
        caller makes durable some other way)."""
        links = generation.output
        if not links:
            return []
        folder = None
        if dest is not None:
            folder = self._made.get(dest)
            if folder is None:
                folder = Path(dest)
                try:
                    await anyio.Path(folder).mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise DownloadError(
                        f"cannot make the folder {folder}: {exc.strerror or exc}",
                        url=links[0],
                        job_id=generation.id,
                    ) from exc
                self._made[dest] = folder
        if len(links) == 1:
            return [await self._one(generation, 0, folder, fsync)]
        return await self._many(generation, folder, fsync)

    async def _many(
        self, generation: Generation, folder: Path | None, fsync: bool
    ) -> list[GeneratedImage]:
        """Several images, at most ``policy.concurrency`` at once."""
        links = generation.output
        results: list[GeneratedImage | None] = [None] * len(links)
        errors: list[ModelsLabError] = []
        limiter = anyio.CapacityLimiter(self.policy.concurrency)

        async def one(index: int) -> None:
            async with limiter:
                try:
                    results[index] = await self._one(generation, index, folder, fsync)
                except ModelsLabError as exc:
                    errors.append(exc)

        async with anyio.create_task_group() as tg:
            for index in range(len(links)):
                tg.start_soon(one, index)
        if errors:
            raise errors[0]
        return [r for r in results if r is not None]

    async def _one(
        self, generation: Generation, index: int, folder: Path | None, fsync: bool
    ) -> GeneratedImage:
        try:
            return await self._from_url(generation, index, generation.output[index], folder, fsync)
        except ModelsLabError as exc:
            return await self._mirror(generation, index, folder, fsync, exc)

    async def _mirror(
        self,
        generation: Generation,
        index: int,
        folder: Path | None,
        fsync: bool,
        last: ModelsLabError,
    ) -> GeneratedImage:
        """After the primary link failed with *last*: its mirror, if it has a distinct one."""
        tried = generation.output[index]
        proxies = generation.proxy_links
        if index < len(proxies) and proxies[index] != tried:
            tried = proxies[index]
            try:
                return await self._from_url(generation, index, tried, folder, fsync)
            except ModelsLabError as exc:
                last = exc
        if isinstance(last, DownloadError):
            raise last
        # Retries used up (cut-off bodies, resets, 5xx): the image could not be had.
        raise DownloadError(
            f"image {index}: {last}",
            url=getattr(last, "url", None) or tried,
            job_id=generation.id,
            status_code=getattr(last, "status_code", None),
        ) from last

    async def _from_url(
        self, generation: Generation, index: int, url: str, folder: Path | None, fsync: bool
    ) -> GeneratedImage:
        """One link, under the transport's retry loop; 404/403 ("not there yet") are retried
        inside each attempt, with backoff, up to ``not_ready_timeout`` from the start."""
        job_id = generation.id
        is_b64 = _link_is_base64(url, job_id)
        stem = file_stem(generation, index)
        started = time.monotonic()
        not_ready = 0

        async def attempt() -> GeneratedImage:
            nonlocal not_ready
            while True:
                try:
                    return await self._get(url, job_id, index, stem, folder, is_b64, fsync)
                except _NotReady as exc:
                    elapsed = time.monotonic() - started
                    if elapsed >= self.policy.not_ready_timeout:
                        raise DownloadError(
                            f"{url}: still HTTP {exc.status} {elapsed:.1f}s after the job finished",
                            url=url,
                            job_id=job_id,
                            status_code=exc.status,
                        ) from None
                    wait = min(
                        self.policy.not_ready_max, self.policy.not_ready_initial * 1.6**not_ready
                    )
                    not_ready += 1
                    await anyio.sleep(0.0 if is_testing() else wait)

        return await self.transport.with_retries("download", attempt)

    async def _open(self, url: str, job_id: JobId | None) -> tuple[aiohttp.ClientResponse, str]:
        """GET *url*, following at most ``MAX_DOWNLOAD_REDIRECTS`` redirects by hand: http(s)
        only, never from https to http. Returns the final answer (the caller releases it)
        and its URL."""
        session = self.transport.session
        target = url
        for _ in range(C.MAX_DOWNLOAD_REDIRECTS + 1):
            resp = await session.get(
                target,
                timeout=self._timeout,
                allow_redirects=False,
                auto_decompress=False,
                headers={"Accept-Encoding": "identity"},
            )
            if resp.status not in _REDIRECTS:
                return resp, target
            location = resp.headers.get("Location")
            resp.release()
            target = redirect_target(target, location, url=url, job_id=job_id)
        raise DownloadError(
            f"{url}: more than {C.MAX_DOWNLOAD_REDIRECTS} redirects", url=url, job_id=job_id
        )

    async def _get(
        self,
        url: str,
        job_id: JobId | None,
        index: int,
        stem: str,
        folder: Path | None,
        is_b64: bool,
        fsync: bool,
    ) -> GeneratedImage:
        self.transport.counters["download"] += 1
        limit = self.policy.max_bytes * (2 if is_b64 else 1)
        writer: _PartWriter | None = None
        try:
            resp, final_url = await self._open(url, job_id)
            async with resp:
                if resp.status in (403, 404):
                    raise _NotReady(resp.status)
                if resp.status >= 300:
                    raise _AttemptFailed(
                        _Outcome(
                            TransportError(
                                f"download {final_url}: HTTP {resp.status}", url=url, kind="http"
                            ),
                            sent=True,
                        )
                    )
                encoding = resp.headers.get("Content-Encoding", "").strip().lower()
                if encoding not in ("", "identity"):
                    raise DownloadError(
                        f"{url}: served with Content-Encoding {encoding!r} although none was "
                        "asked for; refused (the size cap holds for the bytes kept)",
                        url=url,
                        job_id=job_id,
                    )
                expected = resp.content_length
                if expected is not None and expected > limit:
                    raise DownloadError(
                        f"{url}: {expected} bytes is over the {limit}-byte cap",
                        url=url,
                        job_id=job_id,
                    )
                acc = bytearray()
                received = 0
                head = tail = b""
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    received += len(chunk)
                    if received > limit:
                        raise DownloadError(
                            f"{url}: body over the {limit}-byte cap", url=url, job_id=job_id
                        )
                    if not head:
                        head = bytes(chunk[:16])
                        if not is_b64 and sniff(head) is None:
                            _not_an_image(head, resp.status, url, job_id)
                    acc += chunk
                    tail = (tail + bytes(chunk[-16:]))[-16:]
                    if folder is not None and not is_b64 and len(acc) >= self.policy.chunk_size:
                        if writer is None:
                            writer = await _PartWriter.open(folder, stem)
                        await writer.write(bytes(acc))
                        acc.clear()
                if expected is not None and received != expected:
                    raise _AttemptFailed(
                        _Outcome(
                            TransportError(
                                f"download {url}: got {received} of {expected} bytes",
                                url=url,
                                kind="truncated",
                            ),
                            sent=True,
                        )
                    )
        except (aiohttp.ClientError, TimeoutError) as exc:
            if writer is not None:
                await writer.discard()
            raise _AttemptFailed(
                _Outcome(
                    TransportError(f"download {url}: {type(exc).__name__}", url=url, kind="reset"),
                    sent=True,
                )
            ) from exc
        except OSError as exc:  # the .part file (aiohttp's own OSErrors are ClientErrors)
            if writer is not None:
                await writer.discard()
            raise _write_error(exc, folder, url, job_id) from exc
        except BaseException:
            if writer is not None:
                with anyio.CancelScope(shield=True):
                    await writer.discard()
            raise
        kind: tuple[str, str] | None
        if is_b64:
            if acc.lstrip()[:1] == b"<":
                raise _NotReady(200)
            data = decode_base64_image(bytes(acc), url=url, job_id=job_id)
            kind = sniff(data[:16])
            if kind is None:
                raise DownloadError(
                    f"{url}: decoded base64 is not an image", url=url, job_id=job_id
                )
        else:
            data = bytes(acc)
            kind = sniff(head)
            if kind is None:  # empty body
                raise _AttemptFailed(
                    _Outcome(
                        TransportError(f"download {url}: empty body", url=url, kind="truncated"),
                        sent=True,
                    )
                )
        ext, ctype = kind
        # A body cut short can still match its Content-Length (a broken origin or proxy).
        if ext == "png" and not (tail if writer is not None else data).endswith(_PNG_END):
            if writer is not None:
                with anyio.CancelScope(shield=True):
                    await writer.discard()
            raise _AttemptFailed(
                _Outcome(
                    TransportError(
                        f"download {url}: PNG cut off (no IEND)", url=url, kind="truncated"
                    ),
                    sent=True,
                )
            )
        if folder is None:
            return GeneratedImage(
                url=url, index=index, job_id=job_id, data=data, content_type=ctype
            )
        final = folder / f"{stem}.{ext}"
        try:
            if writer is None:  # the whole image is in memory: one thread trip
                path = await anyio.to_thread.run_sync(
                    _write_atomic, folder, stem, data, final, fsync
                )
            else:
                await writer.write(data)
                path = await writer.commit(final, fsync)
        except OSError as exc:
            if writer is not None:
                await writer.discard()
            raise _write_error(exc, final, url, job_id) from exc
        except BaseException:
            if writer is not None:
                with anyio.CancelScope(shield=True):
                    await writer.discard()
            raise
        return GeneratedImage(url=url, index=index, job_id=job_id, path=path, content_type=ctype)


def redirect_target(current: str, location: str | None, *, url: str, job_id: JobId | None) -> str:
    """Where a download redirect from *current* to *location* leads: an absolute http(s)
    URL, never from https to http; else DownloadError."""
    if not location:
        raise DownloadError(f"{current}: a redirect without a Location", url=url, job_id=job_id)
    try:
        following = str(URL(current).join(URL(location)))
    except ValueError:
        following = location
    before, after = urlsplit(current).scheme, urlsplit(following).scheme
    if after not in ("http", "https") or (before == "https" and after == "http"):
        raise DownloadError(
            f"{url}: refusing a redirect from {before} to {after or 'an unknown'} link {following}",
            url=url,
            job_id=job_id,
        )
    return following


def _write_error(exc: OSError, where: Path | None, url: str, job_id: JobId | None) -> DownloadError:
    return DownloadError(
        f"cannot write {exc.filename or where}: {exc.strerror or exc}", url=url, job_id=job_id
    )


def _not_an_image(head: bytes, status: int, url: str, job_id: JobId | None) -> NoReturn:
    if head.lstrip()[:1] == b"<":
        raise _NotReady(status)  # an HTML "not found" page
    raise DownloadError(
        f"{url}: not an image (starts {excerpt(head, 20)!r})", url=url, job_id=job_id
    )


class _NotReady(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _PartWriter:
    """A locked ``.part`` file written from a worker thread, fsynced and renamed into place
    on commit."""

    def __init__(self, path: str, handle: BinaryIO) -> None:
        self.path = path
        self._handle = handle

    @classmethod
    async def open(cls, folder: Path, stem: str) -> _PartWriter:
        def create() -> _PartWriter:
            fd, path = _create_part(folder, stem)
            return cls(path, os.fdopen(fd, "wb"))

        return await anyio.to_thread.run_sync(create)

    async def write(self, data: bytes) -> None:
        await anyio.to_thread.run_sync(self._handle.write, data)

    async def commit(self, final: Path, fsync: bool) -> Path:
        handle = self._handle
        path = self.path

        def finish() -> None:
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
            os.replace(path, final)  # before close: the lock is held until the name is gone
            handle.close()

        await anyio.to_thread.run_sync(finish)
        return final

    async def discard(self) -> None:
        handle = self._handle
        path = self.path

        def drop() -> None:
            try:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            finally:
                with contextlib.suppress(OSError):
                    handle.close()

        await anyio.to_thread.run_sync(drop)


def _part_name(stem: str) -> str:
    return f".{stem}.{random.getrandbits(32):08x}{PART_SUFFIX}"


_PART_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)


def _create_part(folder: Path, stem: str) -> tuple[int, str]:
    """Create and lock a new ``.part`` file for *stem* in *folder* (made again if it was
    removed since the downloader made it); returns its descriptor and path.

    The lock is held until the file is renamed or removed: :func:`remove_stale_parts`
    skips locked parts. A clean-up can still remove the file between its creation and the
    lock; that is seen (no link left) and the part is created anew.
    """
    while True:
        path = os.path.join(folder, _part_name(stem))
        try:
            fd = os.open(path, _PART_FLAGS, 0o666)
        except FileNotFoundError:
            folder.mkdir(parents=True, exist_ok=True)
            continue
        except FileExistsError:
            continue
        if not _LOCKS:
            return fd, path
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_nlink > 0:
                return fd, path
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _write_atomic(folder: Path, stem: str, data: bytes, final: Path, fsync: bool) -> Path:
    """Write *data* to a locked ``.part`` file, fsync it (unless told not to), then rename
    it to *final* (from a worker thread)."""
    fd, part = _create_part(folder, stem)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if fsync:
                os.fsync(fd)
            os.replace(part, final)  # before close: the lock is held until the name is gone
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(part)
        raise
    return final


def remove_stale_parts(folder: str | os.PathLike[str]) -> int:
    """Delete the ``.part`` files in *folder* that no live process is writing (left by a
    killed run); returns the count. A part is removed only while its lock is taken here,
    so another process's download in progress is never touched. Without ``fcntl`` (not
    POSIX), nothing is removed."""
    removed = 0
    root = Path(folder)
    if not _LOCKS or not root.is_dir():
        return 0
    for path in root.glob(f".*{PART_SUFFIX}"):
        if not re.fullmatch(r"\..+\.[0-9a-f]{8}\.part", path.name):
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue  # renamed or removed meanwhile
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live writer holds it
            with contextlib.suppress(OSError):
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    os.unlink(path)
                    removed += 1
        finally:
            os.close(fd)
    return removed


def verify_image_file(path: str | os.PathLike[str]) -> bool:
    """True when *path* is an image file that is not cut short: it starts with an image
    signature, a PNG ends with its ``IEND`` chunk, and a WebP is as long as its RIFF
    header says. (A file renamed into place without an fsync can be empty or cut short
    after a crash of the machine.)"""
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
            kind = sniff(head)
            if kind is None:
                return False
            size = os.fstat(handle.fileno()).st_size
            if kind[0] == "png":
                handle.seek(max(0, size - len(_PNG_END)))
                return handle.read() == _PNG_END
            if kind[0] == "webp":
                return int.from_bytes(head[4:8], "little") + 8 == size
            return True
    except OSError:
        return False


__all__: Sequence[str] = [
    "DownloadPolicy",
    "Downloader",
    "decode_base64_image",
    "file_stem",
    "redirect_target",
    "remove_stale_parts",
    "sniff",
    "verify_image_file",
]
