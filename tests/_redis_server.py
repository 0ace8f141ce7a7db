"""A real ``redis-server`` on a free loopback port, in a temporary directory, for the tests.

No persistence (``--save '' --appendonly no``). ``bash scripts/install-test-deps.sh``
installs the Debian package when it is missing; a missing server fails the tests that need
it, it never skips them.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import attrs

INSTALL_HINT = "redis-server is missing: run `bash scripts/install-test-deps.sh`"


@attrs.define
class RedisServer:
    """A running server: ``url`` (with the password, if any) and ``port``."""

    process: subprocess.Popen[bytes]
    port: int
    password: str | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _ping(port: int, password: str | None) -> bool:
    command = b""
    if password:
        command += f"AUTH {password}\r\n".encode()
    command += b"PING\r\n"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(command)
            return b"+PONG" in s.recv(256)
    except OSError:
        return False


def start_redis(directory: Path, *, password: str | None = None) -> RedisServer:
    """Start ``redis-server`` in *directory* and wait until it answers PING."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(INSTALL_HINT)
    directory.mkdir(parents=True, exist_ok=True)
    for _ in range(3):  # a free port may be taken between the probe and the bind: retry
        port = free_port()
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(directory)]  # fmt: skip
        if password:
            args += ["--requirepass", password]
        log = (directory / f"redis-{port}.log").open("wb")
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=directory)
        log.close()
        deadline = time.monotonic() + 20
        while process.poll() is None and time.monotonic() < deadline:
            if _ping(port, password):
                return RedisServer(process, port, password)
            time.sleep(0.05)
        RedisServer(process, port).stop()
    raise RuntimeError(f"redis-server did not start; see the logs in {directory}")
