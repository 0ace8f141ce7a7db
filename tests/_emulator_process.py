"""``python -m modelslab_async.emulator`` as a child process, for tests whose clients live
in other processes (Ray workers, uvicorn workers) and so cannot share an in-process one."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


class EmulatorProcess:
    """``with EmulatorProcess(["--max-queued-per-key", "5"]) as emu: emu.base_url``."""

    def __init__(self, options: Sequence[str] = ()) -> None:
        self.options = list(options)
        self.proc: subprocess.Popen[str] | None = None
        self.root = ""

    @property
    def base_url(self) -> str:
        return self.root + "/api/v6"

    def __enter__(self) -> EmulatorProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSLAB_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        cmd = [sys.executable, "-m", "modelslab_async.emulator", "--port", "0", *self.options]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "ModelsLab emulator listening: base URL ..."
        match = re.search(r"(http://\S+)/api/v6", line)
        if not match:
            self.__exit__()
            raise RuntimeError(f"the emulator did not start: {line!r}")
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

    def stats(self) -> dict[str, Any]:
        """``GET /__emulator/stats`` (with the per-job table)."""
        with urllib.request.urlopen(self.root + "/__emulator/stats", timeout=30) as resp:
            result: dict[str, Any] = json.loads(resp.read())
        return result
