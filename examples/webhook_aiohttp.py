"""An aiohttp.web backend whose ModelsLab jobs are announced by webhook, not polled.

The app mounts a :class:`WebhookReceiver` as a route (``POST /modelslab/webhook``) and opens
one ``Client(webhook=receiver)`` in its lifespan (``cleanup_ctx``). Each submit then sends
the receiver's URL (with a secret token) and a unique ``track_id``; when the API POSTs the
job's webhook, the SDK confirms it with one fetch and the handler waiting in
``client.text2img`` resumes at once. Polling stays on as the safety net.

    python examples/webhook_aiohttp.py --port 8080
    curl -X POST localhost:8080/images -d '{"prompt": "a red fox in snow"}' -o fox.png

    python examples/webhook_aiohttp.py --selftest [OUT_DIR]   # free port, call once, exit

``MODELSLAB_WEBHOOK_URL`` is the URL the API can reach the receiver at (a public https URL
in production, e.g. ``https://api.example.com/modelslab/webhook``). Without
MODELSLAB_API_KEY the app runs against an in-process local emulator, which reaches the
receiver on the local address. With a key but no public URL it polls instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import sys
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
    WebhookReceiver,
)
from modelslab_async.emulator import Emulator

WEBHOOK_PATH = "/modelslab/webhook"
CLIENT = web.AppKey("client", Client)
RECEIVER = web.AppKey("receiver", WebhookReceiver)
LOCAL_URL = web.AppKey("local_url", str)
#: The request fields a caller of this backend may set.
ALLOWED = {"prompt", "negative_prompt", "width", "height", "seed", "guidance_scale"}


async def modelslab_client(app: web.Application) -> AsyncIterator[None]:
    """The app's lifespan: one Client, announced to by the app's own webhook route."""
    receiver = app[RECEIVER]
    public_url = os.environ.get("MODELSLAB_WEBHOOK_URL")
    async with contextlib.AsyncExitStack() as stack:
        if os.environ.get("MODELSLAB_API_KEY"):
            # The real API can only call a URL it can reach: without one, poll.
            webhook = receiver if public_url else None
            client = Client(max_in_flight=8, webhook=webhook)
        else:
            emu = await stack.enter_async_context(Emulator())
            client = Client("local-emulator", base_url=emu.base_url, webhook=receiver)
        receiver.set_public_url(public_url or app[LOCAL_URL])
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
        raise web.HTTPBadRequest(text=str(exc)) from None
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
        headers={"X-Job-Id": str(generation.id)},
    )


def make_app(local_url: str) -> web.Application:
    """The app; *local_url* is the receiver's own address (used when no public URL is set)."""
    receiver = WebhookReceiver()
    app = web.Application()
    app[RECEIVER] = receiver
    app[LOCAL_URL] = local_url
    # As a route; or as a sub-application answering ".../modelslab/webhook/":
    #     app.add_subapp(WEBHOOK_PATH, receiver.aiohttp_app())
    app.router.add_post(WEBHOOK_PATH, receiver.aiohttp_handler)
    app.cleanup_ctx.append(modelslab_client)
    app.router.add_post("/images", create_image)
    return app


async def selftest(out: Path) -> None:
    """Start the app on a free port, ask it for one image, save it, stop."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = make_app(f"http://127.0.0.1:{port}{WEBHOOK_PATH}")
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()  # runs the lifespan: the client is open from here
    try:
        await web.SockSite(runner, sock).start()
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port}/images"
            async with session.post(url, json={"prompt": "a lighthouse at dusk"}) as resp:
                resp.raise_for_status()
                data = await resp.read()
                job_id = resp.headers["X-Job-Id"]
        accepted = app[RECEIVER].stats["accepted"]
        fetches = app[CLIENT].statistics().calls["fetch"]
    finally:
        await runner.cleanup()
    if accepted < 1:
        sys.exit(f"selftest: job {job_id} was not announced by webhook")
    print(f"job {job_id}: announced by webhook, {fetches} fetch call(s)", file=sys.stderr)
    path = anyio.Path(out) / f"webhook-aiohttp-{job_id}.png"
    await path.parent.mkdir(parents=True, exist_ok=True)
    await path.write_bytes(data)
    print(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--selftest", action="store_true", help="call the app once and exit")
    parser.add_argument("out", nargs="?", default="out/webhook_aiohttp", help="selftest output")
    args = parser.parse_args()
    if args.selftest:
        asyncio.run(selftest(Path(args.out)))
    else:
        local = f"http://127.0.0.1:{args.port}{WEBHOOK_PATH}"
        web.run_app(make_app(local), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
