"""Datasets in and out: rows from text, JSONL, CSV or parquet files; images out as plain
files, Hugging Face ``imagefolder``, ``webdataset`` tar shards or parquet shards, written
shard by shard and resumable (``docs/datasets.md``).

```python
from modelslab_async import Client
from modelslab_async.datasets import read_rows, write_dataset

rows = read_rows("prompts.parquet", prompt_column="caption", defaults={"width": 512})
async with Client() as client:
    summary = await write_dataset(client, rows, "out/", output_format="webdataset")
```

Reading or writing parquet needs pyarrow (``pip install 'modelslab-async[datasets]'``);
``import modelslab_async.datasets`` does not.
"""

from ._common import DatasetError
from ._rows import InputFormat, Row, RowReader, read_rows
from ._sinks import OutputFormat
from ._writer import DatasetProgress, DatasetSummary, write_dataset

__all__ = [
    "DatasetError",
    "DatasetProgress",
    "DatasetSummary",
    "InputFormat",
    "OutputFormat",
    "Row",
    "RowReader",
    "read_rows",
    "write_dataset",
]

for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) and _obj.__module__.startswith(__name__ + "._"):
        _obj.__module__ = __name__
del _name, _obj
