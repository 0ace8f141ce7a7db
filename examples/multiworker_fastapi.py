"""A FastAPI backend under several uvicorn workers that share the account's queue cap.

Each worker process opens one ``Client`` at startup (the app's lifespan) whose slots live in
Redis (``RedisSlots``): however many workers (or hosts) serve the app, at most
``QUEUE_CAP`` jobs of the account are unfinished at once, so the API's queue-limit 429 (and
its 30 s ``retry_after``) never comes. A request waits for a free slot instead.

    pip install 'modelslab-async[redis]' fastapi uvicorn
    export MODELSLAB_API_KEY=...  REDIS_URL=redis://localhost:6379/0  QUEUE_CAP=5
    python examples/multiworker_fastapi.py --workers 4 --port 8080
    curl -X POST localhost:8080/images -H 'content-type: application/json' \\
         -d '{"prompt": "a red fox in snow"}' -o fox.png

Against the local emulator instead of the API (any key):

    python -m modelslab_async.emulator --port 8000 --max-queued-per-key 5 &
    MODELSLAB_API_KEY=local MODELSLAB_BASE_URL=http://127.0.0.1:8000/api/v6 \\
        REDIS_URL=redis://localhost:6379/0 python examples/multiworker_fastapi.py

``GET /slots`` shows the shared slots as this worker sees them.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response

from modelslab_async import (
    Client,
    GenerationTimeout,
    ModelsLabError,
    RateLimitError,
    RedisSlots,
    RequestValidationError,
)

#: The request fields a caller of this backend may set.
ALLOWED = {"prompt", "negative_prompt", "width", "height", "seed", "guidance_scale"}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """One client per worker process, its slots shared through Redis with every worker."""
    slots = RedisSlots(os.environ["REDIS_URL"], int(os.environ.get("QUEUE_CAP", "5")))
    async with Client(slots=slots) as client:  # key and base URL from MODELSLAB_* variables
        app.state.client = client
        yield


app = FastAPI(lifespan=lifespan)


@app.post("/images")
async def create_image(body: dict[str, Any], request: Request) -> Response:
    """POST /images {"prompt": ..., "width": ...} -> the first image, as image/png."""
    client: Client = request.app.state.client
    fields = {k: v for k, v in body.items() if k in ALLOWED}
    try:
        generation = await client.text2img(fields, timeout=300)  # no dest: bytes in memory
    except RequestValidationError as exc:
        raise HTTPException(400, str(exc)) from None  # names the field
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
        headers={"X-Job-Id": str(generation.id), "X-Worker-Pid": str(os.getpid())},
    )


@app.get("/slots")
async def slots(request: Request) -> dict[str, Any]:
    """The shared slots: the cap, the slots held by every worker, those held here."""
    stats = request.app.state.client.slots.statistics()
    return {"limit": stats.limit, "held": stats.held, "held_here": stats.held_here}


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    # An import string, so that every worker process imports the app itself.
    uvicorn.run(
        "multiworker_fastapi:app",
        app_dir=os.path.dirname(os.path.abspath(__file__)),
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
