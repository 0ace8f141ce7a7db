"""Dataset inputs: rows from text, JSONL, CSV and parquet files (no network), and the
batch engine's ``indexed`` items that datasets feed it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anyio
import anyio.lowlevel
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modelslab_async import ConfigurationError, RequestValidationError, Text2ImgRequest
from modelslab_async.datasets import DatasetError, Row, RowReader, read_rows
from modelslab_async.emulator import EmulatorConfig

from ._emulated import emulated_client

KEY = "datasets-test-key"


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def write_jsonl(path: Path, items: list[object]) -> Path:
    path.write_text("".join(json.dumps(i) + "\n" for i in items), encoding="utf-8")
    return path


# --- formats -----------------------------------------------------------------------------


def test_text_rows_skip_blank_and_comment_lines(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("a fox\n\n# a comment\n  a cat  \n")
    rows = list(read_rows(path, defaults={"width": 256}))
    assert [(r.index, r.prompt) for r in rows] == [(0, "a fox"), (1, "a cat")]
    assert all(r.ok and r.request is not None and r.request.width == 256 for r in rows)
    assert [r.key for r in rows] == ["000000000", "000000001"]


def test_csv_columns_named_like_request_fields_set_them_and_the_others_are_metadata(
    tmp_path: Path,
) -> None:
    path = write_csv(
        tmp_path / "p.csv",
        "prompt,seed,width,negative_prompt,source,score\n"
        "a fox,42,256,blurry,wiki,0.5\n"
        "a cat,,,,web,\n",
    )
    reader = read_rows(path, defaults={"height": 128, "width": 512})
    assert reader.input_format == "csv"
    assert reader.metadata_columns == ("source", "score")
    first, second = list(reader)
    assert first.request == Text2ImgRequest(
        prompt="a fox", seed=42, width=256, height=128, negative_prompt="blurry"
    )
    assert dict(first.metadata) == {"source": "wiki", "score": "0.5"}  # carried as read
    # An empty value leaves the default (the row wins only with a value).
    assert second.request == Text2ImgRequest(prompt="a cat", width=512, height=128)
    assert dict(second.metadata) == {"source": "web", "score": ""}


def test_jsonl_rows_and_a_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(
        json.dumps({"prompt": "a fox", "seed": 7, "tags": ["a", "b"]})
        + "\n\n[1, 2]\n{not json\n"
        + json.dumps({"prompt": "a cat", "samples": "2"})
        + "\n"
    )
    rows = list(read_rows(path))
    assert [r.index for r in rows] == [0, 1, 2, 3]
    assert rows[0].request is not None
    assert rows[0].request.seed == 7
    assert dict(rows[0].metadata) == {"tags": ["a", "b"]}
    for bad in rows[1:3]:
        assert not bad.ok
        assert bad.error is not None
        assert "p.jsonl line" in str(bad.error)
        assert "a JSON object" in str(bad.error)
    assert rows[3].request is not None
    assert rows[3].request.samples == 2


def test_parquet_rows_keep_their_metadata_types(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    table = pa.table(
        {
            "caption": [f"picture {i}" for i in range(1200)],
            "seed": list(range(1200)),
            "id": [f"id-{i}" for i in range(1200)],
            "score": [i / 10 for i in range(1200)],
        }
    )
    pq.write_table(table, path, row_group_size=500)
    reader = read_rows(path, prompt_column="caption")
    rows = list(reader)
    assert len(rows) == 1200
    assert rows[1100].request == Text2ImgRequest(prompt="picture 1100", seed=1100)
    assert dict(rows[1100].metadata) == {"id": "id-1100", "score": 110.0}
    assert [c.name for c in reader._metadata_schema()] == ["id", "score"]
    assert len(list(reader)) == 1200  # every iteration reads the file again


def test_input_format_overrides_the_extension(tmp_path: Path) -> None:
    path = tmp_path / "prompts.data"
    path.write_text("a fox\n")
    with pytest.raises(DatasetError):
        read_rows(path)
    assert [r.prompt for r in read_rows(path, input_format="text")] == ["a fox"]


# --- bad rows: failed rows naming the row and the field ----------------------------------


def test_bad_rows_are_failed_rows_naming_the_row_and_the_field(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "p.csv", "prompt,width,source\na fox,64,x\n,64,y\na cat,4096,z\n")
    good, empty, wide = list(read_rows(path))
    assert good.ok
    assert empty.error is not None
    assert empty.error.field == "prompt"
    assert empty.error_message is not None
    assert empty.error_message.startswith("row 1: prompt:")
    assert wide.error is not None
    assert wide.error.field == "width"
    assert wide.error_message == "row 2: width: got 4096, allowed an integer in 1..1024"
    assert dict(wide.metadata) == {"source": "z"}  # kept for failures.jsonl


def test_a_line_longer_than_the_cap_is_a_failed_row_not_held_whole(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("a fox\n" + "x" * (1024 * 1024 + 10) + "\na cat\n")
    rows = list(read_rows(path))
    assert [r.ok for r in rows] == [True, False, True]
    assert rows[2].prompt == "a cat"
    assert rows[1].error is not None
    assert "at most 1 MiB" in str(rows[1].error)


def test_row_build_is_the_public_way_to_make_rows() -> None:
    row = Row.build(5, {"prompt": "a fox", "seed": "9"}, {"id": 1}, defaults={"width": 64})
    assert row.ok
    assert row.key == "000000005"
    assert row.request == Text2ImgRequest(prompt="a fox", seed=9, width=64)
    bad = Row.build(6, {"seed": 1})
    assert not bad.ok
    assert bad.error is not None
    assert bad.error.field == "prompt"


# --- bad input: clear errors before anything runs ----------------------------------------


def test_unknown_extension_names_the_supported_ones(tmp_path: Path) -> None:
    path = tmp_path / "prompts.xlsx"
    path.write_text("a fox\n")
    with pytest.raises(DatasetError) as info:
        read_rows(path)
    message = str(info.value)
    assert "'.xlsx'" in message
    for suffix in (".txt", ".jsonl", ".csv", ".parquet"):
        assert suffix in message


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_missing_prompt_column_names_the_columns_found(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"p.{kind}"
    if kind == "csv":
        write_csv(path, "text,seed\na fox,1\n")
    elif kind == "jsonl":
        write_jsonl(path, [{"text": "a fox", "seed": 1}])
    else:
        pq.write_table(pa.table({"text": ["a fox"], "seed": [1]}), path)
    with pytest.raises(DatasetError) as info:
        read_rows(path)
    assert "'prompt'" in str(info.value)
    assert "'text', 'seed'" in str(info.value)
    assert [r.prompt for r in read_rows(path, prompt_column="text")] == ["a fox"]


def test_a_metadata_column_named_like_an_output_column_is_refused(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "p.csv", "prompt,job_id\na fox,1\n")
    with pytest.raises(DatasetError, match="'job_id'"):
        read_rows(path)


def test_a_prompt_column_besides_another_prompt_column_is_refused(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "p.csv", "caption,prompt\na fox,a cat\n")
    with pytest.raises(DatasetError, match="'caption'"):
        read_rows(path, prompt_column="caption")


def test_a_bad_default_names_its_field(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("a fox\n")
    with pytest.raises(RequestValidationError) as info:
        read_rows(path, defaults={"height": 0})
    assert info.value.field == "height"


def test_a_missing_file_is_a_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file"):
        read_rows(tmp_path / "absent.csv")


def test_dataset_errors_are_configuration_errors_the_cli_maps_to_exit_2() -> None:
    assert issubclass(DatasetError, ConfigurationError)
    assert issubclass(DatasetError, ValueError)


def test_importing_the_package_and_its_datasets_module_does_not_import_pyarrow() -> None:
    code = (
        "import sys, modelslab_async, modelslab_async.datasets; "
        "sys.exit(1 if 'pyarrow' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_reader_repr_names_the_file_and_format(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("a fox\n")
    reader = read_rows(path)
    assert isinstance(reader, RowReader)
    assert "p.txt" in repr(reader)
    assert "'text'" in repr(reader)


# --- the batch engine's indexed items ------------------------------------------------------


@pytest.mark.anyio
async def test_generate_many_indexed_keeps_the_given_indices(tmp_path: Path) -> None:
    manifest = tmp_path / "run.jsonl"
    items = [(5, "a fox"), (9, Text2ImgRequest(prompt="a cat", width=64, height=64)), (2, "a")]
    config = EmulatorConfig(workers=3, duration=0.01, draw_prompt=False)
    async with emulated_client(KEY, config) as (emu, client):
        results = [
            r
            async for r in client.generate_many(
                items, dest=tmp_path / "out", manifest=manifest, indexed=True
            )
        ]
        assert emu.stats.total_jobs == 3
    assert sorted(r.index for r in results) == [2, 5, 9]
    assert all(r.ok for r in results)
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert {r["index"] for r in records if r["state"] == "done"} == {2, 5, 9}


@pytest.mark.anyio
async def test_generate_many_indexed_refuses_an_item_that_is_not_a_pair(tmp_path: Path) -> None:
    config = EmulatorConfig(workers=1, duration=0.01, draw_prompt=False)
    async with emulated_client(KEY, config) as (emu, client):
        with pytest.raises(ConfigurationError, match="index, request"):
            async for _ in client.generate_many(["a fox"], indexed=True):
                pass
        await anyio.lowlevel.checkpoint()
        assert emu.stats.total_jobs == 0


def test_the_datasets_module_exports_exactly_its_sorted_public_names() -> None:
    import modelslab_async.datasets as datasets

    public = [n for n in vars(datasets) if not n.startswith("_") and n != "annotations"]
    public = [n for n in public if not isinstance(getattr(datasets, n), type(datasets))]
    assert datasets.__all__ == sorted(public)
    for name in datasets.__all__:
        value = getattr(datasets, name)
        if isinstance(value, type):
            assert value.__module__ == "modelslab_async.datasets", name
