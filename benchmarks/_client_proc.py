"""One measured client run, meant to be the only work of its process (see _harness.run_client).

    python benchmarks/_client_proc.py {modelslab_async,hand_loop,official} --base-url URL
        --jobs N --in-flight C --size PX --dest DIR --report FILE
        [--min-interval S] [--official-interval S] [--official-retries N]

Every client gets the same batch: item i is ``hand_loop.prompt_for(i)``, seed i, PX x PX, one
image, written as a PNG under DIR. The report (JSON) holds the counts, the wall time of the
batch (first submit to last file written), and the batch's CPU time from
``resource.getrusage(RUSAGE_SELF)`` taken just before and just after it (so interpreter
start-up and imports, which the parent's ``os.wait4`` rusage includes, are left out).

Clients:

- ``modelslab_async``: ``Client(max_in_flight=C)`` and ``generate_many(..., dest=DIR)`` at
  their defaults otherwise.
- ``hand_loop``: :func:`hand_loop.run` (aiohttp + asyncio.gather + Semaphore(C)).
- ``hand_loop_durable``: the same loop writing each image as the SDK does (a temporary
  file, fsynced and renamed, in a worker thread): the cost of durable writes alone.
- ``official``: the official ``modelslab-py`` SDK's async client. Its ``Client`` has no
  ``base_url`` parameter: the attribute (``https://modelslab.com/api/`` as shipped) is set to
  ``{emulator}/api/`` before ``Community(client)`` is built (``Community`` appends
  ``v6/images/``). Each item: ``async_text_to_image``, then, if ``processing``, the SDK's own
  ``async_fetch(id)`` (fetch at once, then every ``fetch_timeout`` seconds, at most
  ``fetch_retry`` times), then the ``output`` links downloaded with aiohttp (the SDK has no
  download helper) by the same code as the hand loop; ``asyncio.Semaphore(C)`` around
  submit + fetch, all tasks gathered up front (as in the SDK's README example).
  ``--official-interval``/``--official-retries`` set ``fetch_timeout``/``fetch_retry``
  (omitted: the SDK's shipped defaults, 60 s and 10).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import resource
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import aiohttp
from hand_loop import HandLoopError, download, prompt_for
from hand_loop import run as run_hand_loop

ALLOC = Path(__file__).resolve().parents[1] / "modelslab_async" / "cli" / "_alloc.py"


def settle_allocator() -> None:
    """The process-wide allocator tweak the command line's ``main()`` makes, made here for
    every client alike (the library never makes it). The module is loaded alone, by path,
    so that the hand loop's process imports nothing of the SDK."""
    spec = importlib.util.spec_from_file_location("_alloc", ALLOC)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.settle_allocator()


def _cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


async def _modelslab_async(ns: argparse.Namespace) -> dict[str, Any]:
    from modelslab_async import Client, Text2ImgRequest

    ok = failed = images = 0
    errors: dict[str, int] = {}
    async with Client("bench-key", base_url=ns.base_url, max_in_flight=ns.in_flight) as client:
        requests = (
            Text2ImgRequest(prompt=prompt_for(i), width=ns.size, height=ns.size, seed=i)
            for i in range(ns.jobs)
        )
        async for result in client.generate_many(requests, dest=ns.dest):
            if result.error is None:
                ok += 1
                images += len(result.files)
            else:
                failed += 1
                name = type(result.error).__name__
                errors[name] = errors.get(name, 0) + 1
        calls = dict(client.statistics().calls)
    return {"ok": ok, "failed": failed, "images": images, "errors": errors, "calls": calls}


async def _hand_loop(ns: argparse.Namespace, *, durable: bool = False) -> dict[str, Any]:
    summary = await run_hand_loop(
        ns.base_url,
        [prompt_for(i) for i in range(ns.jobs)],
        ns.dest,
        concurrency=ns.in_flight,
        size=ns.size,
        min_interval=ns.min_interval,
        durable=durable,
    )
    return {
        "ok": summary.ok,
        "failed": summary.failed,
        "images": summary.images,
        "errors": dict(summary.errors),
        "calls": {"fetch": summary.fetch_calls},
    }


async def _official(ns: argparse.Namespace) -> dict[str, Any]:
    from modelslab_py.core.apis.community import Community
    from modelslab_py.core.client import Client as OfficialClient
    from modelslab_py.schemas.community import Text2Image

    options: dict[str, Any] = {}
    if ns.official_interval is not None:
        options["fetch_timeout"] = ns.official_interval
    if ns.official_retries is not None:
        options["fetch_retry"] = ns.official_retries
    api_root = ns.base_url.rstrip("/").removesuffix("/v6") + "/"  # ".../api/"
    ns.dest.mkdir(parents=True, exist_ok=True)
    sem = asyncio.Semaphore(ns.in_flight)

    async with OfficialClient(api_key="bench-key", **options) as client:
        client.base_url = api_root
        api = Community(client=client)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(timeout=timeout) as downloads:

            async def one(index: int) -> int:
                async with sem:
                    schema = Text2Image(
                        prompt=prompt_for(index),
                        width=ns.size,
                        height=ns.size,
                        samples=1,
                        seed=index,
                    )
                    answer = await api.async_text_to_image(schema)
                    if answer.get("status") == "processing":
                        answer = await api.async_fetch(str(answer["id"]))
                    if answer.get("status") != "success":
                        raise HandLoopError(f"job {index}: {answer.get('status')}")
                links = answer.get("output") or []
                for n, url in enumerate(links):
                    await download(downloads, url, ns.dest / f"{index}-{n}.png")
                return len(links)

            results = await asyncio.gather(
                *(one(i) for i in range(ns.jobs)), return_exceptions=True
            )
        defaults = {"fetch_timeout": client.fetch_timeout, "fetch_retry": client.fetch_retry}
    errors: dict[str, int] = {}
    ok = images = 0
    for result in results:
        if isinstance(result, BaseException):
            name = type(result).__name__
            errors[name] = errors.get(name, 0) + 1
        else:
            ok += 1
            images += result
    return {
        "ok": ok,
        "failed": len(results) - ok,
        "images": images,
        "errors": errors,
        "official_settings": defaults,
    }


async def _hand_loop_durable(ns: argparse.Namespace) -> dict[str, Any]:
    return await _hand_loop(ns, durable=True)


RUNNERS = {
    "modelslab_async": _modelslab_async,
    "hand_loop": _hand_loop,
    "hand_loop_durable": _hand_loop_durable,
    "official": _official,
}


def main() -> None:
    parser = argparse.ArgumentParser(description="one measured benchmark client")
    parser.add_argument("client", choices=sorted(RUNNERS))
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--dest", type=Path, required=True)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--min-interval", type=float, default=0.1, help="hand loop eta floor")
    parser.add_argument("--official-interval", type=float, default=None)
    parser.add_argument("--official-retries", type=int, default=None)
    ns = parser.parse_args()

    runner = RUNNERS[ns.client]
    # Import what the client needs before the measurement starts.
    if ns.client == "modelslab_async":
        import modelslab_async  # noqa: F401
    elif ns.client == "official":
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # pydantic v1-style API
        import modelslab_py.core.apis.community
        import modelslab_py.schemas.community  # noqa: F401
    settle_allocator()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    user0, sys0 = _cpu()
    t_start = time.monotonic()
    report = asyncio.run(runner(ns))
    t_end = time.monotonic()
    user1, sys1 = _cpu()
    report.update(
        client=ns.client,
        jobs=ns.jobs,
        in_flight=ns.in_flight,
        wall_s=t_end - t_start,
        t_start=t_start,
        t_end=t_end,
        cpu_batch_user_s=user1 - user0,
        cpu_batch_sys_s=sys1 - sys0,
        cpu_batch_s=(user1 - user0) + (sys1 - sys0),
        rss_before_batch_mb=rss_before / 1024,
        python=sys.version.split()[0],
    )
    ns.report.write_text(json.dumps(report))


if __name__ == "__main__":
    main()
