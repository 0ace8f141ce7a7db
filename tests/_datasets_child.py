"""A dataset run in a process of its own, for the SIGKILL resume test in ``test_datasets.py``.

Usage: ``python tests/_datasets_child.py BASE_URL INPUT OUT FORMAT SHARD_SIZE``. The key
comes from ``$MODELSLAB_API_KEY``. Prints the summary's counts as one JSON line at the end
(a killed run prints nothing).
"""

from __future__ import annotations

import json
import sys

import anyio

from modelslab_async import Client
from modelslab_async.datasets import read_rows, write_dataset


async def main(base_url: str, source: str, out: str, fmt: str, shard_size: int) -> dict[str, int]:
    async with Client(base_url=base_url, max_in_flight=4) as client:
        summary = await write_dataset(
            client,
            read_rows(source),
            out,
            output_format=fmt,  # type: ignore[arg-type]
            shard_size=shard_size,
            max_in_flight=6,
        )
    return {
        "rows": summary.rows,
        "done": summary.done,
        "failed": summary.failed,
        "submitted": summary.submitted,
        "shards_written": summary.shards_written,
        "shards_skipped": summary.shards_skipped,
        "complete": summary.complete,
    }


if __name__ == "__main__":
    base_url, source, out, fmt, size = sys.argv[1:6]
    print(json.dumps(anyio.run(main, base_url, source, out, fmt, int(size))), flush=True)
