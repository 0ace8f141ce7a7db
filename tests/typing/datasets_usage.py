"""Never run: exercises ``modelslab_async.datasets`` so that ``mypy --strict tests/typing``
checks the annotations users see (see ``api_usage.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from modelslab_async import Client, ConfigurationError, RequestValidationError, Text2ImgRequest
from modelslab_async.datasets import (
    DatasetError,
    DatasetProgress,
    DatasetSummary,
    InputFormat,
    OutputFormat,
    Row,
    RowReader,
    read_rows,
    write_dataset,
)


def progress(p: DatasetProgress) -> None:
    done: int = p.done + p.failed + p.rows_read + p.images + p.shards_written + p.shards_skipped
    print(done, p.batch.submitted if p.batch is not None else 0)


async def rows_of_my_own() -> AsyncIterator[Row]:
    yield Row.build(0, {"prompt": "a fox", "seed": "7"}, {"id": 1}, defaults={"width": 64})


async def usage(client: Client) -> None:
    fmt: InputFormat = "parquet"
    reader: RowReader = read_rows("in.parquet", prompt_column="caption", input_format=fmt)
    for row in reader:
        key: str = row.key
        request: Text2ImgRequest | None = row.request
        error: RequestValidationError | None = row.error
        message: str | None = row.error_message
        print(key, request, error, message, row.prompt, row.ok, row.metadata["id"])
    out: OutputFormat = "webdataset"
    summary: DatasetSummary = await write_dataset(
        client, reader, Path("out"), output_format=out, shard_size=100, on_progress=progress
    )
    complete: bool = summary.complete
    print(complete, summary.failures, summary.manifest, summary.submitted)
    await write_dataset(client, rows_of_my_own(), "out", output_format="parquet")
    await write_dataset(client, reader, "out", output_format="zip")  # type: ignore[arg-type]
    configuration_error: ConfigurationError = DatasetError("a folder of another format")
    print(configuration_error)
