"""One batch process of benchmarks/shared_slots.py: COUNT prompts through generate_many with
a manifest (a rerun of the same command resumes), its slots shared through Redis or not.

    python _slots_batch_child.py BASE_URL OUT PROCESS COUNT (--redis URL --limit N --lease S
                                                             | --auto)

Prints one JSON line at the end: done, failed, redis round trips, seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from modelslab_async import Client, RedisSlots


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("base_url")
    parser.add_argument("out", type=Path)
    parser.add_argument("process", type=int)
    parser.add_argument("count", type=int)
    parser.add_argument("--redis")
    parser.add_argument("--limit", type=int, default=5)
    parser.add_argument("--lease", type=float, default=30.0)
    parser.add_argument("--name", default="modelslab")
    parser.add_argument("--auto", action="store_true", help="no sharing: max_in_flight=auto")
    args = parser.parse_args()
    started = time.monotonic()
    slots = (
        RedisSlots(args.redis, args.limit, name=args.name, lease=args.lease) if args.redis else None
    )
    options: dict[str, Any] = (
        {"slots": slots}
        if slots is not None
        else {"max_in_flight": "auto" if args.auto else args.limit}
    )
    requests = [
        {"prompt": f"process {args.process} prompt {i}", "width": 64, "height": 64}
        for i in range(args.count)
    ]
    done = failed = 0
    async with Client("bench-key", base_url=args.base_url, **options) as client:
        async for result in client.generate_many(
            requests, dest=args.out, manifest=args.out / "manifest.jsonl"
        ):
            if result.ok:
                done += 1
            else:
                failed += 1
                print(f"item {result.index}: {result.error!r}", file=sys.stderr)
    report = {
        "done": done,
        "failed": failed,
        "round_trips": slots.round_trips if slots is not None else 0,
        "seconds": time.monotonic() - started,
    }
    print(json.dumps(report), flush=True)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
