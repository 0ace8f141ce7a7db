"""A FastAPI backend whose ModelsLab jobs are announced by webhook, not polled.

The receiver is a plain ASGI app, mounted with ``app.mount("/modelslab/webhook", receiver)``;
the app's lifespan opens one ``Client(webhook=receiver)``. Each submit then sends the
receiver's URL (with a secret token) and a unique ``track_id``; when the API POSTs the
job's webhook, the SDK confirms it with one fetch and the handler waiting in
``client.text2img`` resumes at once. Polling stays on as the safety net.

    pip install fastapi uvicorn
    python examples/webhook_fastapi.py --port 8000
    curl -X POST localhost:8000/images -H 'content-type: application/json' \\
         -d '{"prompt": "a red fox in snow"}' -o fox.png

    python examples/webhook_fastapi.py --selftest [OUT_DIR]   # free port, call once, exit

    MODELSLAB_WEBHOOK_URL=https://api.example.com/modelslab/webhook/ \\
        uvicorn examples.webhook_fastapi:app --port 8000

``MODELSLAB_WEBHOOK_URL`` is the URL the API can reach the receiver at. A mount answers at
the path *with* a trailing slash (Starlette redirects the bare path), so the URL ends with
``/modelslab/webhook/``. Without MODELSLAB_API_KEY the app runs against an in-process local
emulator, which reaches the receiver on the local address (``LOCAL_URL``, set from
``--port``). With a key but no public URL it polls instead.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import anyio
import uvicorn
from fastapi import FastAPI, HTTPException, Request, Response
from pydantic import BaseModel

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
#: Where the emulator reaches the receiver when no public URL is configured.
LOCAL_URL = f"http://127.0.0.1:8000{WEBHOOK_PATH}/"

receiver = WebhookReceiver()


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open one Client for the app's lifetime; its jobs are announced to ``receiver``."""
    public_url = os.environ.get("MODELSLAB_WEBHOOK_URL")
    async with contextlib.AsyncExitStack() as stack:
        if os.environ.get("MODELSLAB_API_KEY"):
            # The real API can only call a URL it can reach: without one, poll.
            client = Client(max_in_flight=8, webhook=receiver if public_url else None)
        else:
            emu = await stack.enter_async_context(Emulator())
            client = Client("local-emulator", base_url=emu.base_url, webhook=receiver)
        receiver.set_public_url(public_url or LOCAL_URL)
        app.state.client = await stack.enter_async_context(client)
        yield


app = FastAPI(lifespan=lifespan)
app.mount(WEBHOOK_PATH, receiver)


class ImageRequest(BaseModel):
    prompt: str
    negative_prompt: str | None = None
    width: int = 512
    height: int = 512
    seed: int | None = None


@app.post("/images")
async def create_image(body: ImageRequest, request: Request) -> Response:
    """POST /images {"prompt": ..., "width": ...} -> the first image, as image/png."""
    client: Client = request.app.state.client
    try:
        generation = await client.text2img(body.model_dump(exclude_none=True), timeout=300)
    except RequestValidationError as exc:
        raise HTTPException(400, str(exc)) from None
    except RateLimitError as exc:
        headers = {"Retry-After": str(round(exc.retry_after or 1))}
        raise HTTPException(429, str(exc), headers=headers) from None
    except GenerationTimeout as exc:
        raise HTTPException(504, str(exc)) from None
    except ModelsLabError as exc:
        raise HTTPException(502, f"{type(exc).__name__}: {exc}") from None
    image = generation.images[0]
    return Response(
        content=image.data,
        media_type=image.content_type or "image/png",
        headers={"X-Job-Id": str(generation.id)},
    )


async def selftest(out: Path) -> None:
    """Start the app under uvicorn on a free port, ask it for one image, save it, stop."""
    global LOCAL_URL
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    LOCAL_URL = f"http://127.0.0.1:{port}{WEBHOOK_PATH}/"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        try:
            with anyio.fail_after(30):
                while not server.started:  # noqa: ASYNC110 - uvicorn offers no event
                    await anyio.sleep(0.01)
            async with aiohttp.ClientSession() as session:
                url = f"http://127.0.0.1:{port}/images"
                async with session.post(url, json={"prompt": "a lighthouse at dusk"}) as resp:
                    resp.raise_for_status()
                    data = await resp.read()
                    job_id = resp.headers["X-Job-Id"]
            accepted = receiver.stats["accepted"]
            fetches = app.state.client.statistics().calls["fetch"]
        finally:
            server.should_exit = True
    if accepted < 1:
        sys.exit(f"selftest: job {job_id} was not announced by webhook")
    print(f"job {job_id}: announced by webhook, {fetches} fetch call(s)", file=sys.stderr)
    path = anyio.Path(out) / f"webhook-fastapi-{job_id}.png"
    await path.parent.mkdir(parents=True, exist_ok=True)
    await path.write_bytes(data)
    print(path)


def main() -> None:
    global LOCAL_URL
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--selftest", action="store_true", help="call the app once and exit")
    parser.add_argument("out", nargs="?", default="out/webhook_fastapi", help="selftest output")
    args = parser.parse_args()
    if args.selftest:
        anyio.run(selftest, Path(args.out))
    else:
        LOCAL_URL = f"http://127.0.0.1:{args.port}{WEBHOOK_PATH}/"
        uvicorn.run(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
