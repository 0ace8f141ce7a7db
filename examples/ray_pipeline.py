"""A Ray Data pipeline: prompts from a CSV -> images (Text2Img) -> Parquet.

    pip install 'modelslab-async[ray]'
    export MODELSLAB_API_KEY=...
    python examples/ray_pipeline.py examples/prompts.csv out/ --limit 5 --actors 3

Every CSV column other than the prompt is carried to the output (a column named like a
request field, such as ``seed`` or ``width``, sets that field for its row). The Parquet
files hold the input columns plus ``image`` (PNG bytes), ``job_id``, ``seed`` and
``error`` (null when the row is done; a failed row is kept, with its error). ``--limit`` is
the account's queue cap, shared by every actor through one ``RaySlots``.

The actors read MODELSLAB_API_KEY from their environment: a local Ray started here inherits
this process's; for a cluster, pass it with ``ray.init(runtime_env={"env_vars": {...}})``
rather than in ``fn_constructor_kwargs`` (those travel through the object store).
Without MODELSLAB_API_KEY the pipeline runs against a local emulator, started here as a
separate process so that Ray's workers can reach it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import ray

from modelslab_async.ray import Text2Img


@contextlib.contextmanager
def local_emulator() -> Iterator[str]:
    """``python -m modelslab_async.emulator`` on a free port; yields its base URL."""
    argv = [sys.executable, "-m", "modelslab_async.emulator", "--port", "0"]
    argv += ["--max-queued-per-key", "5", "--workers", "5"]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as emulator:
        try:
            assert emulator.stdout is not None
            match = re.search(r"(http://\S+/api/v6)", emulator.stdout.readline())
            if match is None:
                raise SystemExit("the local emulator did not start")
            yield match.group(1)
        finally:
            emulator.terminate()


def run(source: str, dest: str, *, options: dict[str, Any], actors: int) -> None:
    ds = ray.data.read_csv(source)
    ds = ds.map_batches(
        Text2Img,
        fn_constructor_kwargs=options,
        compute=ray.data.ActorPoolStrategy(size=actors),
        batch_size=8,  # rows of one actor call, generated concurrently
        num_cpus=0.25,  # the actors mostly wait on the network
        batch_format="pyarrow",
    )
    ds.write_parquet(dest)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="prompts.csv -> Text2Img -> Parquet")
    parser.add_argument("source", help="a CSV file (or folder of them) with a prompt column")
    parser.add_argument("dest", help="the output folder of Parquet files")
    parser.add_argument("--limit", type=int, default=5, help="the account's queue cap")
    parser.add_argument("--actors", type=int, default=3, help="Text2Img actors")
    parser.add_argument("--prompt-column", default="prompt")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=512)
    args = parser.parse_args(argv)
    options: dict[str, Any] = {
        "limit": args.limit,
        "prompt_column": args.prompt_column,
        "width": args.width,
        "height": args.height,
    }
    if not ray.is_initialized():
        ray.init()
    with contextlib.ExitStack() as stack:
        if not os.environ.get("MODELSLAB_API_KEY"):
            print("no MODELSLAB_API_KEY: using a local emulator", file=sys.stderr)
            base_url = stack.enter_context(local_emulator())
            options |= {"api_key": "local-emulator", "base_url": base_url}
        run(args.source, args.dest, options=options, actors=args.actors)
    return 0


if __name__ == "__main__":
    sys.exit(main())
