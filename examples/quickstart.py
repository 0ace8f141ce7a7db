"""Quickstart: one image with the async client.

With MODELSLAB_API_KEY set this calls the real API; without, it starts the local emulator
in-process, so it runs anywhere with no key and no network:

    python examples/quickstart.py [OUT_DIR]
"""

from __future__ import annotations

import asyncio
import os
import sys

from modelslab_async import Client
from modelslab_async.emulator import Emulator


async def generate(client: Client, out: str) -> None:
    generation = await client.text2img(prompt="a red fox in snow", width=512, height=512, dest=out)
    for image in generation.images:
        print(image.path)  # out/<job id>-0.png


async def main(out: str) -> None:
    if os.environ.get("MODELSLAB_API_KEY"):
        async with Client() as client:  # key and base URL from the environment
            await generate(client, out)
    else:
        async with Emulator() as emu, Client("local-emulator", base_url=emu.base_url) as client:
            await generate(client, out)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "out/quickstart"))
