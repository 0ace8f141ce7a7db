"""A batch run in a process of its own, for the SIGKILL resume test in ``test_batch.py``.

Usage: ``python tests/_batch_child.py BASE_URL DEST MANIFEST COUNT``. The key comes from
``$MODELSLAB_API_KEY``. Runs ``generate_many`` over COUNT small requests with a manifest
and prints one JSON line of counts at the end (a killed run prints nothing).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import anyio

from modelslab_async import Client, Text2ImgRequest

WIDTH, HEIGHT = 96, 64


def requests(count: int) -> Iterator[Text2ImgRequest]:
    for i in range(count):
        yield Text2ImgRequest(prompt=f"sigkill resume picture {i}", width=WIDTH, height=HEIGHT)


async def main(base_url: str, dest: str, manifest: str, count: int) -> dict[str, int]:
    counts = {"results": 0, "done": 0, "failed": 0, "from_manifest": 0}
    async with Client(base_url=base_url, max_in_flight=4) as client:
        batch = client.generate_many(requests(count), dest=dest, manifest=manifest, max_in_flight=6)
        async for result in batch:
            counts["results"] += 1
            counts["done" if result.ok else "failed"] += 1
            counts["from_manifest"] += result.from_manifest
    return counts


if __name__ == "__main__":
    base_url, dest, manifest, count = sys.argv[1:5]
    print(json.dumps(anyio.run(main, base_url, dest, manifest, int(count))), flush=True)
