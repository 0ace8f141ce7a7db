"""A dataset pipeline: a parquet table of prompts in, webdataset shards out, resumable.

The input has a ``caption`` column (the prompt), ``seed``, ``width`` and ``height`` columns
(request fields, set per row) and ``id``/``license`` columns (metadata, carried to every
sample's JSON). ``read_rows`` streams it; ``write_dataset`` writes OUT/00000.tar ... with a
``KEY.png`` and a ``KEY.json`` per row, a stats file per shard, failures.jsonl and the
manifest. Run it again after a crash (or Ctrl-C) and it finishes the dataset without paying
for any image twice. The end reads the shards back with ``webdataset`` when it is installed.

    pip install 'modelslab-async[datasets]' webdataset
    python examples/dataset_pipeline.py [OUT_DIR]

Without MODELSLAB_API_KEY it runs against an in-process local emulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from modelslab_async import Client
from modelslab_async.datasets import DatasetProgress, DatasetSummary, read_rows, write_dataset
from modelslab_async.emulator import Emulator

SUBJECTS = ["a red bicycle", "a ceramic teapot", "a wooden chair", "a paper lantern"]
STYLES = ["studio photo", "watercolor", "isometric 3D render", "pencil sketch", "pixel art"]


def make_input(path: Path) -> None:
    """20 rows; in a real pipeline this table comes from elsewhere."""
    rows = [
        {
            "caption": f"{subject}, {style}",
            "seed": 1000 + n,
            "width": 256,
            "height": 256,
            "id": f"item-{n:03d}",
            "license": "cc-by-4.0",
        }
        for n, (subject, style) in enumerate(
            (subject, style) for subject in SUBJECTS for style in STYLES
        )
    ]
    pq.write_table(pa.Table.from_pylist(rows), path)


def show(progress: DatasetProgress) -> None:
    print(
        f"\r{progress.done} done, {progress.failed} failed, "
        f"{progress.shards_written} shards written",
        end="",
        file=sys.stderr,
    )


async def run(client: Client, source: Path, out: Path) -> DatasetSummary:
    rows = read_rows(source, prompt_column="caption", defaults={"num_inference_steps": 20})
    summary = await write_dataset(
        client, rows, out, output_format="webdataset", shard_size=8, on_progress=show
    )
    print(file=sys.stderr)
    return summary


async def generate(source: Path, out: Path) -> DatasetSummary:
    async with contextlib.AsyncExitStack() as stack:
        if os.environ.get("MODELSLAB_API_KEY"):
            client = Client(max_in_flight=8)
        else:
            emu = await stack.enter_async_context(Emulator(workers=4, duration=(0.05, 0.2)))
            client = Client("local-emulator", base_url=emu.base_url, max_in_flight=8)
        await stack.enter_async_context(client)
        return await run(client, source, out)


def read_back(out: Path) -> None:
    """Stream the shards as a training job would (with webdataset, when installed)."""
    try:
        import webdataset as wds
    except ImportError:
        return
    shards = sorted(str(p) for p in out.glob("*.tar"))
    for sample in wds.WebDataset(shards, shardshuffle=False, empty_check=False):
        meta = json.loads(sample["json"])
        print(sample["__key__"], meta["id"], meta["seed"], len(sample["png"]), "bytes")


def main(out: Path) -> int:
    out.parent.mkdir(parents=True, exist_ok=True)
    source = out.parent / f"{out.name}-input.parquet"
    if not source.exists():
        make_input(source)
    summary = asyncio.run(generate(source, out))
    print(
        f"{summary.done} samples in {summary.shards} shards, {summary.failed} failed, "
        f"{summary.submitted} jobs submitted by this run -> {out}"
    )
    read_back(out)
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "out/dataset")))
