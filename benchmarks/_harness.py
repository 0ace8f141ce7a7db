"""Process plumbing shared by batch_bench.py and compare.py.

- :class:`EmulatorProcess`: ``python -m modelslab_async.emulator`` in a child process of its
  own (so it never competes with the measured client for the event loop), with its stats,
  reset and CPU time.
- :func:`run_client`: one measured client (``_client_proc.py``) in a child process of its
  own; its peak RSS and CPU time come from ``os.wait4`` (the kernel's rusage of exactly that
  child), its batch-only CPU time from the child's own ``resource.getrusage`` deltas.
- :func:`job_metrics`: poll lag, fetch calls, duplicates and schedules from emulator stats.
- :func:`best_makespan`: the makespan of a perfect client (zero poll lag, zero overhead)
  with the same in-flight cap on the same GPU model and the same job durations.
- :func:`verify_images`: every PNG the client wrote, checked chunk by chunk (CRCs, IHDR
  size, the full zlib stream inflated to the exact size) without trusting the client.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import urllib.request
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import percentile

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CLIENT_PROC = HERE / "_client_proc.py"
CLIENTS = ("modelslab_async", "hand_loop", "official")


def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else "")}


def _proc_cpu(pid: int) -> float:
    """user+sys CPU seconds of a live process (psutil if present, else /proc)."""
    try:
        import psutil
    except ImportError:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return float("nan")
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


class EmulatorProcess:
    """The emulator as a separate server process; ``with EmulatorProcess([...]) as emu:``."""

    def __init__(self, options: Sequence[str]) -> None:
        self.options = list(options)
        self.proc: subprocess.Popen[str] | None = None
        self.root = ""

    @property
    def base_url(self) -> str:
        """What a v6 client takes as ``base_url`` (``{root}/api/v6``)."""
        return self.root + "/api/v6"

    def __enter__(self) -> EmulatorProcess:
        cmd = [sys.executable, "-m", "modelslab_async.emulator", "--port", "0", *self.options]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=_env(), cwd=ROOT
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = re.search(r"(http://\S+)/api/v6", line)
        if not match:
            self.__exit__()
            raise SystemExit(f"the emulator did not start: {line!r}")
        self.root = match.group(1)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def _call(self, method: str, path: str) -> Any:
        data = b"" if method == "POST" else None
        req = urllib.request.Request(self.root + path, method=method, data=data)
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read())

    def stats(self, jobs: bool = True) -> dict[str, Any]:
        """``GET /__emulator/stats`` (with the per-job table unless ``jobs=False``)."""
        query = "" if jobs else "?jobs=0"
        result: dict[str, Any] = self._call("GET", "/__emulator/stats" + query)
        return result

    def reset(self) -> None:
        """``POST /__emulator/reset``: same config, same seeded durations, job ids anew."""
        self._call("POST", "/__emulator/reset")

    def cpu_seconds(self) -> float:
        """user+sys CPU seconds the emulator process has used so far."""
        assert self.proc is not None
        return _proc_cpu(self.proc.pid)


def run_client(
    client: str,
    base_url: str,
    *,
    jobs: int,
    in_flight: int,
    size: int,
    extra: Sequence[str] = (),
    keep_dir: Path | None = None,
    scratch: Path | None = None,
) -> dict[str, Any]:
    """Run one measured client in its own process and verify what it wrote.

    Returns the child's own report plus ``peak_rss_mb``, ``cpu_total_s`` (rusage of the
    whole child process from ``os.wait4``) and the image check of :func:`verify_images`.

    With *scratch*, the run's folder is made there and left for the caller to delete once
    every run is over: deleting thousands of files right before the next client runs makes
    that client's file creations slower (ext4 skips recently freed inodes), which shows up
    as system CPU time of whichever client happens to run next.
    """
    with contextlib.ExitStack() as stack:
        if scratch is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix=f"bench-{client}-"))
        else:
            tmp = tempfile.mkdtemp(prefix=f"{client}-", dir=scratch)
        dest = Path(tmp) / "out"
        report_path = Path(tmp) / "report.json"
        cmd = [
            sys.executable,
            str(CLIENT_PROC),
            client,
            "--base-url",
            base_url,
            "--jobs",
            str(jobs),
            "--in-flight",
            str(in_flight),
            "--size",
            str(size),
            "--dest",
            str(dest),
            "--report",
            str(report_path),
            *extra,
        ]
        proc = subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdin=subprocess.DEVNULL)
        try:
            _, status, usage = os.wait4(proc.pid, 0)  # rusage of exactly this child
        except BaseException:
            proc.kill()
            os.wait4(proc.pid, 0)
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0 or not report_path.exists():
            raise SystemExit(f"client {client} failed with exit code {proc.returncode}")
        report: dict[str, Any] = json.loads(report_path.read_text())
        report["exit_code"] = proc.returncode
        report["peak_rss_mb"] = usage.ru_maxrss / 1024  # KiB on Linux
        report["cpu_total_s"] = usage.ru_utime + usage.ru_stime
        report.update(verify_images(dest, size))
        if keep_dir is not None:
            keep_dir.mkdir(parents=True, exist_ok=True)
            os.replace(dest, keep_dir / client)
    return report


# --- emulator statistics ----------------------------------------------------------------------


def job_metrics(stats: dict[str, Any]) -> dict[str, Any]:
    """Per-client figures from ``GET /__emulator/stats`` (with jobs)."""
    jobs = [stats["jobs"][k] for k in sorted(stats["jobs"], key=int)]
    lags = [
        j["first_success_at"] - j["ready_at"]
        for j in jobs
        if j["first_success_at"] is not None and not j["failed"]
    ]
    durations = [j["ready_at"] - j["started_at"] for j in jobs]
    first_submit = min((j["submitted_at"] for j in jobs), default=0.0)
    last_download = max(
        (t for j in jobs for t in j["downloads"].values()),
        default=float("nan"),
    )
    return {
        "emulator_jobs": len(jobs),
        "lags": lags,
        "lag_p50_ms": percentile(lags, 0.5) * 1000,
        "lag_p90_ms": percentile(lags, 0.9) * 1000,
        "lag_p99_ms": percentile(lags, 0.99) * 1000,
        "lag_max_ms": max(lags) * 1000 if lags else float("nan"),
        "fetch_per_job": stats["fetches_per_job"],
        "duplicates": stats["duplicate_submissions"],
        "schedule_s": stats["ideal_makespan"],
        "durations": durations,
        "first_submit": first_submit,
        "last_download": last_download,
        "requests_by_endpoint": stats["requests_by_endpoint"],
        "peak_queue": stats["peak_queue"],
    }


def best_makespan(durations: Sequence[float], workers: int, in_flight: int) -> float:
    """Makespan of a perfect client: ``in_flight`` jobs kept submitted at all times, the next
    one submitted the instant one is ready, on a FIFO queue over ``workers`` GPU workers (the
    emulator's model) with the given per-job durations (in submission order)."""
    free = [0.0] * workers  # worker free times
    ready: list[float] = []  # ready times of the jobs in flight
    last = 0.0
    for duration in durations:
        now = heapq.heappop(ready) if len(ready) >= in_flight else 0.0
        start = max(now, heapq.heappop(free))
        done = start + duration
        heapq.heappush(free, done)
        heapq.heappush(ready, done)
        last = max(last, done)
    return last


# --- image verification -----------------------------------------------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def verify_png(data: bytes, size: int | None = None) -> bool:
    """True if ``data`` is a complete, uncorrupted PNG (of ``size`` x ``size`` if given)."""
    if not data.startswith(_PNG_SIGNATURE):
        return False
    pos = len(_PNG_SIGNATURE)
    header: tuple[int, ...] | None = None
    idat: list[bytes] = []
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if len(body) != length:
            return False
        (crc,) = struct.unpack_from(">I", data, pos + 8 + length)
        if zlib.crc32(kind + body) != crc:
            return False
        pos += 12 + length
        if header is None:
            if kind != b"IHDR" or length != 13:
                return False
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    else:
        return False
    if header is None or pos != len(data):
        return False
    width, height, depth, colour, _, _, interlace = header
    if size is not None and (width, height) != (size, size):
        return False
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error:
        return False
    if interlace:
        return True
    row = (width * depth * _CHANNELS.get(colour, 4) + 7) // 8
    return len(raw) == height * (row + 1)


def verify_images(folder: Path, size: int | None) -> dict[str, int]:
    """Count the images in ``folder``: written (``*.png``), verified, and leftovers
    (partial or temporary files under any other name)."""
    written = verified = leftovers = 0
    if folder.is_dir():
        for entry in os.scandir(folder):
            if entry.name.endswith(".png"):
                written += 1
                verified += verify_png(Path(entry.path).read_bytes(), size)
            else:
                leftovers += 1
    return {"images_written": written, "images_verified": verified, "leftover_files": leftovers}
