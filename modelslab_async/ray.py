"""Ray Data integration: :class:`Text2Img`, a callable class for ``Dataset.map_batches``.

::

    import ray
    from modelslab_async.ray import Text2Img

    ds = ray.data.read_csv("prompts.csv")
    ds = ds.map_batches(Text2Img, fn_constructor_kwargs={"limit": 5, "width": 512},
                        concurrency=4, batch_size=16)
    ds.write_parquet("out/")

Every actor of the pool runs one ``Client`` on the actor's event loop (Ray Data runs an
``async __call__`` on one loop per actor), and every client takes its queue slots from one
cluster-wide :class:`~modelslab_async.RaySlots`: at most ``limit`` jobs of the account are
unfinished at once, whatever ``concurrency`` is. Needs the extra ``[ray]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import anyio
import attrs
import pyarrow as pa

from . import _constants as C
from ._client import Client
from ._convert import coerce_request, request_from_wire
from ._errors import ConfigurationError, ModelsLabError, ResponseFormatError
from ._ray_slots import RaySlots
from ._types import BatchResult, Text2ImgRequest

__all__ = ["Text2Img"]

#: Input columns that set a request field of their row.
REQUEST_COLUMNS = frozenset(f.name for f in attrs.fields(Text2ImgRequest))
#: The columns :class:`Text2Img` adds (``seed`` may also be an input column: it is replaced
#: by the seed the server used).
OUTPUT_SCHEMA = pa.schema(
    [
        pa.field("image", pa.binary()),
        pa.field("job_id", pa.string()),
        pa.field("seed", pa.int64()),
        pa.field("error", pa.string()),
    ]
)
_ADDED = frozenset(OUTPUT_SCHEMA.names) - {"seed"}


class Text2Img:
    """Generates one image per row; for ``ray.data.Dataset.map_batches(Text2Img, ...)``.

    Constructor keywords (``fn_constructor_kwargs``): ``api_key`` (default
    ``$MODELSLAB_API_KEY`` in the actor's environment), ``base_url``, ``limit`` (the
    account's cap, shared by every actor through ``RaySlots(limit, name=slots_name)``, or
    ``"auto"`` to learn it from the API's answers), ``prompt_column``, and any request field
    (``width=768``, ``negative_prompt=...``) as the default of every row.

    A row's prompt comes from ``prompt_column``; a column named like a request field
    (``seed``, ``width``, ...) sets that field for its row (a null cell keeps the default);
    every other column is carried through unchanged. The output is a ``pyarrow.Table``: the
    input columns plus ``image`` (the image's bytes, PNG), ``job_id``, ``seed`` (the seed
    used) and ``error`` (``"Type: message"``, null when done). A row that fails (a bad
    value, a failed job, a download error) is a row with ``error`` set and ``image`` null:
    it never fails the Ray task. A request of ``samples=N`` gives N output rows.

    The rows of a batch are generated concurrently. Raises :class:`ConfigurationError` (or
    :class:`~modelslab_async.RequestValidationError` for a bad request field) at
    construction, and :class:`ConfigurationError` from a call whose batch lacks the prompt
    column or already has an ``image``, ``job_id`` or ``error`` column.
    """

    _holder: _ClientHolder | None = None  # set by the first call (also when __init__ raised)

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        limit: int | Literal["auto"] = C.DEFAULT_MAX_IN_FLIGHT,
        slots_name: str = "modelslab-slots",
        prompt_column: str = "prompt",
        **request_fields: Any,
    ) -> None:
        if limit != "auto" and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ConfigurationError(f"limit: got {limit!r}, allowed an integer >= 1 or 'auto'")
        if not isinstance(prompt_column, str) or not prompt_column:
            raise ConfigurationError(
                f"prompt_column: got {prompt_column!r}, allowed a non-empty column name"
            )
        if "prompt" in request_fields:
            raise ConfigurationError(
                "prompt: not a default: the prompt comes from each row's prompt_column"
            )
        coerce_request(None, {"prompt": "-", **request_fields})  # names a bad field or value
        # Made here so that bad options fail the actor's start, not its first batch.
        self._slots = RaySlots(
            C.AUTO_INITIAL_IN_FLIGHT if limit == "auto" else limit, name=slots_name
        )
        self._client = Client(
            api_key,
            base_url=base_url,
            slots=self._slots,
            max_in_flight="auto" if limit == "auto" else None,
        )
        self._defaults = dict(request_fields)
        self._prompt_column = prompt_column

    def __repr__(self) -> str:
        return f"Text2Img({self._client!r}, slots={self._slots!r})"

    async def __call__(self, batch: Any) -> pa.Table:
        """Generate the images of *batch* (any ``batch_format``: numpy, pandas or pyarrow)."""
        table = _to_table(batch)
        self._check_columns(table)
        client = await self._open()
        rows = table.to_pylist()
        results: dict[int, BatchResult | ModelsLabError] = {}
        requests: list[tuple[int, Text2ImgRequest]] = []
        for i, row in enumerate(rows):
            try:
                requests.append((i, self._request(row)))
            except ModelsLabError as exc:
                results[i] = exc
        try:
            async for result in client.generate_many(request for _, request in requests):
                results[requests[result.index][0]] = result
        except ModelsLabError as exc:  # batch-fatal (credits, key): the rest are not submitted
            for i, _ in requests:
                results.setdefault(i, exc)
        return _output(table, [results[i] for i in range(len(rows))])

    def _check_columns(self, table: pa.Table) -> None:
        names = set(table.column_names)
        if self._prompt_column not in names:
            raise ConfigurationError(
                f"prompt_column: the batch has no column {self._prompt_column!r} "
                f"(its columns: {sorted(names)})"
            )
        if self._prompt_column != "prompt" and "prompt" in names:
            raise ConfigurationError(
                f"prompt: a 'prompt' column besides the prompt column {self._prompt_column!r}"
            )
        clash = sorted(names & _ADDED)
        if clash:
            raise ConfigurationError(
                f"columns {clash}: Text2Img writes them; rename them in the input"
            )

    def _request(self, row: Mapping[str, Any]) -> Text2ImgRequest:
        fields = dict(self._defaults)
        for name, value in row.items():
            if name in REQUEST_COLUMNS and not _is_null(value):
                fields[name] = value
        fields["prompt"] = row[self._prompt_column]
        return request_from_wire(fields)

    async def _open(self) -> Client:
        if self._holder is None:
            self._holder = _ClientHolder(self._client)
        return await self._holder.client()

    async def aclose(self) -> None:
        """Close the client (the actor's exit does it too; only needed outside Ray Data)."""
        if self._holder is not None:
            holder, self._holder = self._holder, None
            await holder.aclose()

    def __del__(self) -> None:
        # Ray Data drops the instance when the actor is shut down gracefully.
        if self._holder is not None:
            self._holder.close_soon()


class _ClientHolder:
    """Keeps a client open on the actor's loop, across the calls (each its own task).

    The client's task group must be entered and left by one task, so one task owns it
    (created on the first call, held here), and the calls borrow the open client.
    """

    def __init__(self, client: Client) -> None:
        self._client = client
        self._loop = asyncio.get_running_loop()
        self._ready = anyio.Event()
        self._close = anyio.Event()
        self._error: BaseException | None = None
        self._task = self._loop.create_task(self._own())

    async def _own(self) -> None:
        try:
            async with self._client:
                self._ready.set()
                await self._close.wait()
        except Exception as exc:
            self._error = exc
        finally:
            self._ready.set()

    async def client(self) -> Client:
        await self._ready.wait()
        if self._error is not None:
            raise self._error
        return self._client

    async def aclose(self) -> None:
        self._close.set()
        await self._task

    def close_soon(self) -> None:
        if not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._close.set)


def _is_null(value: Any) -> bool:
    """None, or the NaN that stands for a null cell in a numpy or pandas float column."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _to_table(batch: Any) -> pa.Table:
    """A ``pyarrow.Table`` of *batch*: a table, a pandas DataFrame or a dict of columns."""
    if isinstance(batch, pa.Table):
        return batch
    if isinstance(batch, Mapping):
        return pa.table({name: _to_array(values) for name, values in batch.items()})
    from_pandas = getattr(pa.Table, "from_pandas", None)
    if type(batch).__name__ == "DataFrame" and from_pandas is not None:
        table: pa.Table = from_pandas(batch, preserve_index=False)
        return table
    raise ConfigurationError(
        f"batch: got a {type(batch).__name__}, allowed a dict of columns (numpy), a pandas "
        "DataFrame or a pyarrow Table"
    )


def _to_array(values: Any) -> Any:
    """An Arrow array of one numpy column (a column of tensors as a fixed-shape tensor)."""
    if getattr(values, "ndim", 1) > 1:
        return pa.FixedShapeTensorArray.from_numpy_ndarray(values)
    return pa.array(values)


def _output(table: pa.Table, results: Sequence[BatchResult | ModelsLabError]) -> pa.Table:
    """The input rows (one per image) with ``image``, ``job_id``, ``seed`` and ``error``."""
    take: list[int] = []
    columns: dict[str, list[Any]] = {name: [] for name in OUTPUT_SCHEMA.names}

    def add(i: int, image: bytes | None, job_id: Any, seed: int | None, error: str | None) -> None:
        take.append(i)
        columns["image"].append(image)
        columns["job_id"].append(None if job_id in (None, "") else str(job_id))
        columns["seed"].append(seed)
        columns["error"].append(error)

    for i, result in enumerate(results):
        if isinstance(result, ModelsLabError):
            add(i, None, None, None, _describe(result))
            continue
        generation = result.generation
        request_seed = result.request.seed if result.request is not None else None
        if result.error is not None or generation is None:
            error = result.error or ResponseFormatError("the job gave no generation")
            add(i, None, result.job_id, request_seed, _describe(error))
            continue
        images = [image.data for image in generation.images if image.data is not None]
        if not images:
            error = ResponseFormatError(f"job {generation.id} finished with no image")
            add(i, None, generation.id, generation.seed, _describe(error))
        for data in images:
            add(i, data, generation.id, generation.seed, None)
    out = table.take(pa.array(take, pa.int64())) if take != list(range(len(table))) else table
    for field in OUTPUT_SCHEMA:
        array = pa.array(columns[field.name], field.type)
        if field.name in out.column_names:  # the input's seed column: the seed used instead
            out = out.set_column(out.column_names.index(field.name), field, array)
        else:
            out = out.append_column(field, array)
    return out


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
