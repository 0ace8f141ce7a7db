"""A data-generation pipeline: stream requests in, images and a JSONL dataset out.

``generate_many`` pulls requests from an async generator only as slots free up (a million
rows never sit in memory), writes images to OUT/images, records every state change in
OUT/manifest.jsonl (so a rerun resumes and never pays twice), and yields results as they
complete. Each result becomes one line of OUT/dataset.jsonl.

    python examples/pipeline.py [OUT_DIR]

Without MODELSLAB_API_KEY it runs against an in-process local emulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio

from modelslab_async import BatchResult, Client, Text2ImgRequest
from modelslab_async.emulator import Emulator

SUBJECTS = ["a red bicycle", "a ceramic teapot", "a wooden chair", "a paper lantern"]
STYLES = ["studio photo, white background", "watercolor", "isometric 3D render"]


async def requests() -> AsyncIterator[Text2ImgRequest]:
    """The work, produced lazily (in a real pipeline: rows of a database, a queue...)."""
    for n, (subject, style) in enumerate(itertools.product(SUBJECTS, STYLES)):
        yield Text2ImgRequest(prompt=f"{subject}, {style}", seed=1000 + n, width=512, height=512)


def row(result: BatchResult) -> dict[str, object]:
    """One dataset line: the prompt, the seed the server used, the files or the error."""
    request, generation = result.request, result.generation
    return {
        "index": result.index,
        "prompt": request.prompt if request else None,
        "seed": generation.seed if generation else None,
        "job_id": result.job_id,
        "files": [str(f) for f in result.files],
        "error": f"{type(result.error).__name__}: {result.error}" if result.error else None,
    }


async def run(client: Client, out: Path) -> int:
    done = failed = 0
    async with await anyio.open_file(out / "dataset.jsonl", "w") as dataset:
        results = client.generate_many(
            requests(), dest=out / "images", manifest=out / "manifest.jsonl"
        )
        async for result in results:
            await dataset.write(json.dumps(row(result)) + "\n")
            done += result.ok
            failed += not result.ok
    print(f"{done} done, {failed} failed -> {out / 'dataset.jsonl'}")
    return 1 if failed else 0


async def main(out: Path) -> int:
    await anyio.Path(out).mkdir(parents=True, exist_ok=True)
    async with contextlib.AsyncExitStack() as stack:
        if os.environ.get("MODELSLAB_API_KEY"):
            client = Client(max_in_flight=8)
        else:
            emu = await stack.enter_async_context(Emulator(workers=4, duration=(0.2, 0.5)))
            client = Client("local-emulator", base_url=emu.base_url, max_in_flight=8)
        await stack.enter_async_context(client)
        return await run(client, out)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(Path(sys.argv[1] if len(sys.argv) > 1 else "out/pipeline"))))
