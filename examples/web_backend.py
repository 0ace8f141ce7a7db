"""An async web backend: one shared Client for the whole aiohttp.web app.

The client is opened once in the app's ``cleanup_ctx`` (its lifespan) and shared by every
request; its single poller resolves all the jobs the handlers are waiting for, and
``max_in_flight`` caps the jobs in flight across all requests.

    python examples/web_backend.py --port 8080
    curl -X POST localhost:8080/images -d '{"prompt": "a red fox in snow"}' -o fox.png

    python examples/web_backend.py --selftest [OUT_DIR]   # start on port 0, call once, exit

Without MODELSLAB_API_KEY the app runs against an in-process local emulator.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
from aiohttp import web

from modelslab_async import (
    Client,
    GenerationTimeout,
    ModelsLabError,
    RateLimitError,
    RequestValidationError,
)
from modelslab_async.emulator import Emulator

CLIENT = web.AppKey("client", Client)
#: The request fields a caller of this backend may set.
ALLOWED = {"prompt", "negative_prompt", "width", "height", "seed", "guidance_scale"}


async def modelslab_client(app: web.Application) -> AsyncIterator[None]:
    """The app's lifespan: open one Client at startup, close it at shutdown."""
    async with contextlib.AsyncExitStack() as stack:
        if os.environ.get("MODELSLAB_API_KEY"):
            client = Client(max_in_flight=8)
        else:
            emu = await stack.enter_async_context(Emulator())
            client = Client("local-emulator", base_url=emu.base_url, max_in_flight=8)
        app[CLIENT] = await stack.enter_async_context(client)
        yield


async def create_image(request: web.Request) -> web.StreamResponse:
    """POST /images {"prompt": ..., "width": ...} -> the first image, as image/png."""
    try:
        body: Any = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="expected a JSON object") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="expected a JSON object")
    fields = {k: v for k, v in body.items() if k in ALLOWED}
    try:
        generation = await request.app[CLIENT].text2img(fields, timeout=300)  # no dest: bytes
    except RequestValidationError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None  # names the field
    except RateLimitError as exc:
        headers = {"Retry-After": str(round(exc.retry_after or 1))}
        raise web.HTTPTooManyRequests(text=str(exc), headers=headers) from None
    except GenerationTimeout as exc:
        raise web.HTTPGatewayTimeout(text=str(exc)) from None
    except ModelsLabError as exc:
        raise web.HTTPBadGateway(text=f"{type(exc).__name__}: {exc}") from None
    image = generation.images[0]
    return web.Response(
        body=image.data,
        content_type=image.content_type or "image/png",
        headers={"X-Job-Id": str(generation.id), "X-Seed": str(generation.seed)},
    )


def make_app() -> web.Application:
    app = web.Application()
    app.cleanup_ctx.append(modelslab_client)
    app.router.add_post("/images", create_image)
    return app


async def selftest(out: Path) -> None:
    """Start the app on a free port, ask it for one image, save it, stop."""
    runner = web.AppRunner(make_app())
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port}/images"
            async with session.post(url, json={"prompt": "a lighthouse at dusk"}) as resp:
                resp.raise_for_status()
                data = await resp.read()
                job_id = resp.headers["X-Job-Id"]
    finally:
        await runner.cleanup()
    path = anyio.Path(out) / f"selftest-{job_id}.png"
    await path.parent.mkdir(parents=True, exist_ok=True)
    await path.write_bytes(data)
    print(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--selftest", action="store_true", help="call the app once and exit")
    parser.add_argument("out", nargs="?", default="out/web_backend", help="selftest output")
    args = parser.parse_args()
    if args.selftest:
        asyncio.run(selftest(Path(args.out)))
    else:
        web.run_app(make_app(), port=args.port)


if __name__ == "__main__":
    main()
