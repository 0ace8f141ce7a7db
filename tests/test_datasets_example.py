"""examples/dataset_pipeline.py runs against the embedded emulator (no key, no network),
writes webdataset shards that webdataset reads back, and a rerun submits nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import anyio
import pytest

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "dataset_pipeline.py"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSLAB_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


async def _run(cwd: Path) -> subprocess.CompletedProcess[bytes]:
    with anyio.fail_after(120):
        result = await anyio.run_process(
            [sys.executable, str(EXAMPLE), "out"], cwd=cwd, env=_env(), check=False
        )
    assert result.returncode == 0, result.stderr.decode()
    return result


async def test_dataset_pipeline_writes_webdataset_shards_and_resumes(tmp_path: Path) -> None:
    first = await _run(tmp_path)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("*.tar")) == ["00000.tar", "00001.tar", "00002.tar"]
    assert len(list(out.glob("*_stats.json"))) == 3
    lines = first.stdout.decode().splitlines()
    assert lines[0].startswith("20 samples in 3 shards, 0 failed, 20 jobs submitted")
    keys = [line.split()[0] for line in lines[1:]]
    assert keys == [f"{i:09d}" for i in range(20)]  # read back by webdataset, in order
    with tarfile.open(out / "00000.tar") as tar:
        meta = json.load(tar.extractfile("000000003.json"))  # type: ignore[arg-type]
        assert (meta["id"], meta["seed"], meta["license"]) == ("item-003", 1003, "cc-by-4.0")
        assert tar.extractfile("000000003.png").read()[:8] == b"\x89PNG\r\n\x1a\n"  # type: ignore[union-attr]

    again = await _run(tmp_path)
    assert "0 jobs submitted by this run" in again.stdout.decode()
