"""Dataset outputs against the embedded emulator: webdataset, parquet, imagefolder and files
shards, their stats and failures, reruns, and what is refused.

The outputs are loaded back with the readers users have: ``webdataset.WebDataset``,
``datasets.load_dataset`` (offline, its cache under tmp_path) and pyarrow.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from modelslab_async import AuthenticationError, Client
from modelslab_async.datasets import (
    DatasetError,
    DatasetProgress,
    Row,
    read_rows,
    write_dataset,
)
from modelslab_async.emulator import Emulator, EmulatorConfig

from ._emulated import emulated_client, record_fsyncs

pytestmark = pytest.mark.anyio

KEY = "datasets-test-key"
ROWS = 250
BAD = {17: "prompt", 142: "width"}  # row -> the field that makes it bad
SIZE = 64
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def config(**overrides: Any) -> EmulatorConfig:
    values: dict[str, Any] = {"workers": 16, "duration": (0.005, 0.02), "draw_prompt": False}
    values.update(overrides)
    return EmulatorConfig(**values)


def input_parquet(path: Path, rows: int = ROWS) -> Path:
    """prompt, seed, width, height and a metadata column; rows 17 and 142 are bad."""
    records = [
        {
            "prompt": f"a small picture number {i}",
            "seed": 1000 + i,
            "width": SIZE,
            "height": SIZE,
            "source": f"src-{i}",
        }
        for i in range(rows)
    ]
    for index, field in BAD.items():
        if index < rows:
            records[index][field] = "" if field == "prompt" else 4096
    pq.write_table(pa.Table.from_pylist(records), path, row_group_size=64)
    return path


async def served_images(base_url: str, job_ids: Iterator[Any]) -> dict[str, bytes]:
    """The image bytes the emulator serves for each job (its first image)."""
    served: dict[str, bytes] = {}
    async with Client(KEY, base_url=base_url) as client:
        for job_id in job_ids:
            answer = await client.fetch(job_id)
            images = await client.download(answer)  # type: ignore[arg-type]
            assert images[0].data is not None
            served[str(job_id)] = images[0].data
    return served


def parquet_files(out: Path) -> list[str]:
    """The shards (the folder also holds stats and JSONL files: readers get the list)."""
    return sorted(str(p) for p in out.glob("*.parquet"))


def read_stats(out: Path) -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(out.glob("*_stats.json"))}


def read_failures(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]


def assert_failures_name_rows_and_fields(out: Path) -> None:
    failures = read_failures(out)
    assert {f["index"]: f["error"]["field"] for f in failures} == BAD
    for failure in failures:
        assert failure["key"] == f"{failure['index']:09d}"
        assert failure["error"]["message"].startswith(f"row {failure['index']}: ")
        assert failure["input"]["source"] == f"src-{failure['index']}"


def expected_keys() -> set[str]:
    return {f"{i:09d}" for i in range(ROWS) if i not in BAD}


# --- webdataset ----------------------------------------------------------------------------


async def test_webdataset_250_rows_in_shards_of_100(tmp_path: Path) -> None:
    source, out = input_parquet(tmp_path / "in.parquet"), tmp_path / "wds"
    seen: list[DatasetProgress] = []
    async with emulated_client(KEY, config(), max_in_flight=16) as (emu, client):
        summary = await write_dataset(
            client,
            read_rows(source),
            out,
            output_format="webdataset",
            shard_size=100,
            on_progress=seen.append,
        )
        assert emu.stats.total_jobs == ROWS - len(BAD)
        assert emu.stats.duplicate_submissions() == 0
        job_ids = [int(j) for j in emu.stats.jobs]
        served = await served_images(emu.base_url, iter(job_ids))

    assert (summary.rows, summary.done, summary.failed, summary.images) == (250, 248, 2, 248)
    assert (summary.shards, summary.shards_written, summary.shards_skipped) == (3, 3, 0)
    assert summary.complete
    assert summary.submitted == 248
    assert seen
    assert seen[-1].shards_written == 3
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "00000.tar",
        "00000_stats.json",
        "00001.tar",
        "00001_stats.json",
        "00002.tar",
        "00002_stats.json",
        "failures.jsonl",
        "manifest.jsonl",
    ]  # the staging folder is gone, no temporary file is left
    stats = read_stats(out)
    assert [s["rows"] for s in stats.values()] == [100, 100, 50]
    assert [s["done"] for s in stats.values()] == [99, 99, 50]
    assert set(stats["00000_stats.json"]["failed_keys"]) == {"000000017"}
    assert set(stats["00001_stats.json"]["failed_keys"]) == {"000000142"}

    # Each tar holds exactly its rows, keys in order, a PNG and a JSON per sample.
    keys: Counter[str] = Counter()
    for shard in range(3):
        with tarfile.open(out / f"{shard:05d}.tar") as tar:
            members = tar.getnames()
            shard_keys = [m.split(".", 1)[0] for m in members[::2]]
            assert members == [f"{k}.{ext}" for k in shard_keys for ext in ("json", "png")]
            assert shard_keys == sorted(shard_keys)
            assert all(shard * 100 <= int(k) < (shard + 1) * 100 for k in shard_keys)
            keys.update(shard_keys)
            for key in shard_keys:
                sample = json.load(tar.extractfile(f"{key}.json"))  # type: ignore[arg-type]
                png = tar.extractfile(f"{key}.png").read()  # type: ignore[union-attr]
                index = int(key)
                assert sample["key"] == key
                assert sample["prompt"] == f"a small picture number {index}"
                assert sample["seed"] == 1000 + index
                assert (sample["width"], sample["height"]) == (SIZE, SIZE)
                assert sample["source"] == f"src-{index}"
                assert png == served[str(sample["job_id"])]  # the served PNG, unchanged
    assert set(keys) == expected_keys()
    assert set(keys.values()) == {1}
    assert_failures_name_rows_and_fields(out)

    # webdataset itself reads them all.
    import webdataset as wds

    urls = [str(out / f"{shard:05d}.tar") for shard in range(3)]
    dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False)
    read = [(s["__key__"], json.loads(s["json"])["seed"]) for s in dataset]
    assert len(read) == 248
    assert {k for k, _ in read} == expected_keys()
    assert all(seed == 1000 + int(k) for k, seed in read)


async def test_a_rerun_of_a_complete_dataset_submits_nothing_and_rewrites_no_shard(
    tmp_path: Path,
) -> None:
    source, out = input_parquet(tmp_path / "in.parquet"), tmp_path / "wds"
    async with emulated_client(KEY, config(), max_in_flight=16) as (emu, client):
        await write_dataset(
            client, read_rows(source), out, output_format="webdataset", shard_size=100
        )
        before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
        jobs = emu.stats.total_jobs
        again = await write_dataset(
            client, read_rows(source), out, output_format="webdataset", shard_size=100
        )
        assert emu.stats.total_jobs == jobs
    assert (again.shards_skipped, again.shards_written, again.submitted) == (3, 0, 0)
    assert (again.done, again.failed, again.rows) == (248, 2, 250)
    assert again.complete
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert {k: v for k, v in after.items() if k != "manifest.jsonl"} == {
        k: v for k, v in before.items() if k != "manifest.jsonl"
    }
    assert len(read_failures(out)) == 2  # listed once, not once per run


async def test_samples_above_one_give_each_image_a_key_with_its_number(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(
        "".join(
            json.dumps({"prompt": f"pair {i}", "samples": 2, "width": 32, "height": 32}) + "\n"
            for i in range(3)
        )
    )
    out = tmp_path / "wds"
    async with emulated_client(KEY, config()) as (_, client):
        summary = await write_dataset(
            client, read_rows(source), out, output_format="webdataset", shard_size=2
        )
    assert (summary.done, summary.images, summary.shards) == (3, 6, 2)
    with tarfile.open(out / "00000.tar") as tar:
        assert tar.getnames() == [
            f"{k}.{ext}"
            for k in ("000000000_0", "000000000_1", "000000001_0", "000000001_1")
            for ext in ("json", "png")
        ]


# --- parquet -------------------------------------------------------------------------------


async def test_parquet_loads_with_datasets_and_decodes_image_as_an_image_feature(
    tmp_path: Path, hf_datasets: Any
) -> None:
    source, out = input_parquet(tmp_path / "in.parquet"), tmp_path / "pq"
    async with emulated_client(KEY, config(), max_in_flight=16) as (emu, client):
        summary = await write_dataset(
            client, read_rows(source), out, output_format="parquet", shard_size=100
        )
        served = await served_images(emu.base_url, iter(int(j) for j in emu.stats.jobs))
    assert summary.complete
    assert summary.done == 248
    files = sorted(str(p) for p in out.glob("*.parquet"))
    assert [Path(f).name for f in files] == ["00000.parquet", "00001.parquet", "00002.parquet"]
    assert len(read_stats(out)) == 3
    assert_failures_name_rows_and_fields(out)

    schema = pq.read_schema(files[0])
    assert b"huggingface" in (schema.metadata or {})
    assert schema.field("source").type == pa.string()  # the input's own type

    dataset = hf_datasets.load_dataset(
        "parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf-cache")
    )
    assert isinstance(dataset.features["image"], hf_datasets.Image)
    assert len(dataset) == 248
    assert Counter(dataset["key"]) == Counter(expected_keys())
    raw = dataset.cast_column("image", hf_datasets.Image(decode=False))
    for row in raw.select(range(0, 248, 31)):
        index = int(row["key"])
        assert row["image"]["bytes"] == served[row["job_id"]]
        assert (row["seed"], row["source"]) == (1000 + index, f"src-{index}")
    decoded = dataset[0]["image"]
    assert isinstance(decoded, Image.Image)
    assert decoded.size == (SIZE, SIZE)


async def test_csv_and_jsonl_metadata_reach_parquet_with_one_type_per_column(
    tmp_path: Path,
) -> None:
    csv_source = tmp_path / "in.csv"
    csv_source.write_text(
        "prompt,width,height,id\n" + "".join(f"p {i},32,32,{i}\n" for i in range(5))
    )
    jsonl_source = tmp_path / "in.jsonl"
    items = [
        {"prompt": f"p {i}", "width": 32, "height": 32, "n": i, "mixed": i if i % 2 else "x"}
        for i in range(5)
    ]
    items[0]["n"] = None  # a null first: the column still gets the type of its values
    jsonl_source.write_text("".join(json.dumps(i) + "\n" for i in items))
    async with emulated_client(KEY, config()) as (_, client):
        for source in (csv_source, jsonl_source):
            await write_dataset(
                client,
                read_rows(source),
                tmp_path / source.suffix[1:],
                output_format="parquet",
                shard_size=2,
            )
    csv_table = pq.ParquetDataset(parquet_files(tmp_path / "csv")).read(columns=["key", "id"])
    assert csv_table.schema.field("id").type == pa.string()
    assert sorted(csv_table.column("id").to_pylist()) == ["0", "1", "2", "3", "4"]
    table = pq.ParquetDataset(parquet_files(tmp_path / "jsonl")).read(columns=["key", "n", "mixed"])
    assert table.schema.field("n").type == pa.int64()
    assert table.schema.field("mixed").type == pa.string()  # several JSON types: JSON text
    by_key = {r["key"]: r for r in table.to_pylist()}
    assert by_key["000000000"]["n"] is None
    assert by_key["000000003"]["n"] == 3
    assert by_key["000000000"]["mixed"] == '"x"'
    assert by_key["000000001"]["mixed"] == "1"


# --- imagefolder ---------------------------------------------------------------------------


async def test_imagefolder_loads_with_its_metadata_at_most_100_files_a_folder(
    tmp_path: Path, hf_datasets: Any
) -> None:
    source, out = input_parquet(tmp_path / "in.parquet"), tmp_path / "if"
    async with emulated_client(KEY, config(), max_in_flight=16) as (_, client):
        summary = await write_dataset(
            client, read_rows(source), out, output_format="imagefolder", shard_size=100
        )
    assert summary.complete
    assert summary.done == 248
    folders = sorted(p for p in out.iterdir() if p.is_dir())
    assert [f.name for f in folders] == ["00000", "00001", "00002"]
    for folder in folders:
        images = list(folder.glob("*.png"))
        assert 0 < len(images) <= 100
        lines = (folder / "metadata.jsonl").read_text().splitlines()
        assert sorted(json.loads(line)["file_name"] for line in lines) == sorted(
            p.name for p in images
        )
    assert_failures_name_rows_and_fields(out)

    dataset = hf_datasets.load_dataset(
        "imagefolder", data_dir=str(out), split="train", cache_dir=str(tmp_path / "hf-cache")
    )
    assert len(dataset) == 248
    assert Counter(dataset["key"]) == Counter(expected_keys())
    for row in dataset.select(range(0, 248, 41)):
        index = int(row["key"])
        assert (row["seed"], row["source"]) == (1000 + index, f"src-{index}")
        assert row["image"].size == (SIZE, SIZE)


# --- files ---------------------------------------------------------------------------------


async def test_files_keeps_todays_layout_plus_stats_and_failures(tmp_path: Path) -> None:
    source, out = input_parquet(tmp_path / "in.parquet", rows=150), tmp_path / "files"
    async with emulated_client(KEY, config(), max_in_flight=16) as (emu, client):
        summary = await write_dataset(client, read_rows(source), out, shard_size=100)
        job_ids = set(emu.stats.jobs)
    assert summary.output_format == "files"
    assert summary.complete
    pngs = sorted(out.glob("*.png"))
    assert {int(p.name.split("-")[0]) for p in pngs} == job_ids  # {job_id}-{n}.png
    assert len(pngs) == 148  # rows 17 and 142 are bad
    assert sorted(p.name for p in out.iterdir() if p.suffix != ".png") == [
        "00000_stats.json",
        "00001_stats.json",
        "failures.jsonl",
        "manifest.jsonl",
    ]


# --- what is refused -----------------------------------------------------------------------


async def test_another_format_in_the_same_folder_is_refused_before_any_submit(
    tmp_path: Path,
) -> None:
    source, out = input_parquet(tmp_path / "in.parquet", rows=20), tmp_path / "wds"
    async with emulated_client(KEY, config()) as (emu, client):
        await write_dataset(client, read_rows(source), out, output_format="webdataset")
        jobs = emu.stats.total_jobs
        with pytest.raises(DatasetError, match="holds a webdataset dataset"):
            await write_dataset(client, read_rows(source), out, output_format="parquet")
        with pytest.raises(DatasetError, match="shards of 1000"):
            await write_dataset(
                client, read_rows(source), out, output_format="webdataset", shard_size=10
            )
        assert emu.stats.total_jobs == jobs


async def test_a_folder_of_a_plain_batch_is_refused_for_a_packed_format(tmp_path: Path) -> None:
    out = tmp_path / "out"
    async with emulated_client(KEY, config()) as (emu, client):
        async for _ in client.generate_many(["a fox"], dest=out, manifest=out / "manifest.jsonl"):
            pass
        with pytest.raises(DatasetError, match="holds a batch of image files"):
            await write_dataset(
                client, [Row.build(0, {"prompt": "a"})], out, output_format="parquet"
            )
        assert emu.stats.total_jobs == 1


async def test_rows_out_of_order_are_refused(tmp_path: Path) -> None:
    rows = [Row.build(1, {"prompt": "a"}), Row.build(0, {"prompt": "b"})]
    async with emulated_client(KEY, config()) as (_, client):
        with pytest.raises(DatasetError, match="increasing index order"):
            await write_dataset(client, rows, tmp_path / "out", output_format="webdataset")


async def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    async with emulated_client(KEY, config()) as (_, client):
        with pytest.raises(DatasetError, match="output_format"):
            await write_dataset(client, [], tmp_path, output_format="zip")  # type: ignore[arg-type]
        with pytest.raises(DatasetError, match="shard_size"):
            await write_dataset(client, [], tmp_path, shard_size=0)


# --- resume in the same process ------------------------------------------------------------


async def stop_a_third_of_the_way(emu: Emulator, source: Path, out: Path, fmt: str) -> None:
    """Run the dataset in shards of 100 and cancel it (from its progress callback) once a
    third of the rows are done."""
    async with Client(KEY, base_url=emu.base_url, max_in_flight=8) as client:
        with anyio.fail_after(30), anyio.CancelScope() as scope:

            def stop_at_a_third(progress: DatasetProgress) -> None:
                if progress.done >= ROWS // 3:
                    scope.cancel()

            await write_dataset(
                client,
                read_rows(source),
                out,
                output_format=fmt,
                shard_size=100,
                on_progress=stop_at_a_third,
            )
        assert scope.cancelled_caught


async def test_a_stopped_run_resumes_from_staging_and_manifest_without_paying_twice(
    tmp_path: Path,
) -> None:
    """Stop a run mid-way (cancelled from its progress callback), rerun it: the open
    shards finish from the staged rows and the manifest; each row once, no job twice."""
    source, out = input_parquet(tmp_path / "in.parquet"), tmp_path / "pq"
    async with Emulator(config(seed=3)) as emu:
        await stop_a_third_of_the_way(emu, source, out, "parquet")
        logs = (out / ".staging").glob("*.jsonl")
        staged = [line for log in logs for line in log.read_text().splitlines()]
        assert len(staged) >= ROWS // 3  # a line per finished row of the open shards
        assert not (out / "00002_stats.json").exists()
        async with Client(KEY, base_url=emu.base_url, max_in_flight=8) as client:
            with anyio.fail_after(30):
                summary = await write_dataset(
                    client, read_rows(source), out, output_format="parquet", shard_size=100
                )
        assert emu.stats.duplicate_submissions() == 0
        assert emu.stats.total_jobs == 248
    assert summary.complete
    assert (summary.done, summary.failed) == (248, 2)
    table = pq.ParquetDataset(parquet_files(out)).read(columns=["key", "image"])
    assert Counter(table.column("key").to_pylist()) == Counter(expected_keys())
    for image in table.column("image").to_pylist()[:5]:
        assert image["bytes"][:8] == PNG_SIGNATURE
        with Image.open(io.BytesIO(image["bytes"])) as decoded:
            assert decoded.size == (SIZE, SIZE)
    assert len(read_failures(out)) == 2


async def test_staged_images_are_not_fsynced_and_a_cut_short_one_is_had_again_without_paying(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Staged images are scratch (their shard is fsynced when written), so they are renamed
    into place without an fsync; after a crash of the machine one may be empty or cut
    short. A rerun downloads such an image again from its job (no new submission), and
    the shard holds the served bytes."""
    source, out = input_parquet(tmp_path / "in.parquet"), tmp_path / "wds"
    synced = record_fsyncs(monkeypatch)
    async with Emulator(config(seed=5)) as emu:
        await stop_a_third_of_the_way(emu, source, out, "webdataset")
        # (Images of a shard already written are emptied, and removed at the end.)
        staged = sorted(p for p in (out / ".staging").glob("*.png") if p.stat().st_size)
        assert len(staged) >= 2
        assert not [p for p in synced if p.endswith((".png", ".part"))]
        cut, emptied = staged[0], staged[-1]
        cut.write_bytes(cut.read_bytes()[:-10])
        emptied.write_bytes(b"")
        async with Client(KEY, base_url=emu.base_url, max_in_flight=8) as client:
            with anyio.fail_after(30):
                summary = await write_dataset(
                    client, read_rows(source), out, output_format="webdataset", shard_size=100
                )
        assert emu.stats.duplicate_submissions() == 0
        assert emu.stats.total_jobs == 248
        served = await served_images(
            emu.base_url, (p.name.rsplit("-", 1)[0] for p in (cut, emptied))
        )
    monkeypatch.undo()
    assert summary.complete
    assert (summary.done, summary.failed) == (248, 2)
    assert [p for p in synced if p.endswith(".tar.tmp")]  # shards are fsynced, then renamed
    packed: dict[str, bytes] = {}
    keys: Counter[str] = Counter()
    for tar_path in sorted(out.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                key, _, ext = member.name.partition(".")
                if ext == "json":
                    keys[key] += 1
                    meta = json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
                    packed[str(meta["job_id"])] = b""
                    last = str(meta["job_id"])
                else:
                    packed[last] = tar.extractfile(member).read()  # type: ignore[union-attr]
    assert keys == Counter(expected_keys())
    for job_id, data in served.items():
        assert packed[job_id] == data


async def test_a_written_shard_s_staged_images_are_emptied_and_removed_at_the_end(
    tmp_path: Path,
) -> None:
    out = tmp_path / "wds"
    rows = [Row.build(i, {"prompt": f"p {i}", "width": 32, "height": 32}) for i in range(30)]
    sizes: list[list[int]] = []

    def look(progress: DatasetProgress) -> None:
        if progress.shards_written == 1 and not sizes:
            sizes.append([p.stat().st_size for p in (out / ".staging").glob("*.png")])

    async with emulated_client(KEY, config()) as (_, client):
        summary = await write_dataset(
            client, rows, out, output_format="webdataset", shard_size=10, on_progress=look
        )
    assert summary.complete
    assert sizes
    assert sizes[0].count(0) == 10  # the first shard's images, space freed at once
    assert not (out / ".staging").exists()


async def test_rows_added_to_a_complete_shard_are_refused_not_skipped(tmp_path: Path) -> None:
    out = tmp_path / "wds"
    rows = [Row.build(i, {"prompt": f"p {i}", "width": 32, "height": 32}) for i in range(15)]
    async with emulated_client(KEY, config()) as (emu, client):
        await write_dataset(client, rows[:12], out, output_format="webdataset", shard_size=10)
        jobs = emu.stats.total_jobs
        with pytest.raises(DatasetError, match=r"row 12: shard 00001 is complete without it"):
            await write_dataset(client, rows, out, output_format="webdataset", shard_size=10)
        assert emu.stats.total_jobs == jobs


@pytest.mark.usefixtures("blockbuster")
async def test_a_dataset_run_and_its_rerun_make_no_blocking_call_on_the_event_loop(
    tmp_path: Path,
) -> None:
    source, out = input_parquet(tmp_path / "in.parquet", rows=30), tmp_path / "pq"
    rows = await anyio.to_thread.run_sync(read_rows, source)  # reads the file's schema
    async with emulated_client(KEY, config()) as (_, client):
        for _ in range(2):
            summary = await write_dataset(client, rows, out, output_format="parquet", shard_size=8)
    assert summary.complete
    assert summary.done == 29  # row 17 is bad


async def test_rows_failing_for_a_bad_key_leave_their_shards_open_for_a_rerun(
    tmp_path: Path,
) -> None:
    """A failure that may pass (here: the key) never completes a shard: a complete shard is
    final, and these rows are not lost to it. A rerun with a good key finishes them."""
    out = tmp_path / "wds"
    rows = [Row.build(i, {"prompt": f"p {i}", "width": 32, "height": 32}) for i in range(10)]
    async with Emulator(config(keys=[KEY])) as emu:
        async with Client("not-the-key", base_url=emu.base_url) as client:
            try:
                first = await write_dataset(
                    client, rows, out, output_format="webdataset", shard_size=5
                )
            except AuthenticationError:
                pass  # an engine that stops the batch at the first invalid-key answer
            else:
                assert (first.done, first.failed, first.retryable) == (0, 0, 10)
                assert not first.complete
        assert not list(out.glob("*_stats.json"))
        assert not (out / "failures.jsonl").exists()
        async with Client(KEY, base_url=emu.base_url) as client:
            again = await write_dataset(
                client, rows, out, output_format="webdataset", shard_size=5, retry_failed=True
            )
        assert emu.stats.duplicate_submissions() == 0
    assert again.complete
    assert (again.done, again.failed, again.retryable, again.shards_written) == (10, 0, 0, 2)


async def test_a_job_that_fails_is_a_final_failure_of_its_shard(tmp_path: Path) -> None:
    out = tmp_path / "wds"
    rows = [Row.build(i, {"prompt": f"p {i}", "width": 32, "height": 32}) for i in range(6)]
    async with emulated_client(KEY, config(fail_rate=1.0)) as (_, client):
        summary = await write_dataset(client, rows, out, output_format="webdataset")
    assert summary.complete
    assert (summary.done, summary.failed, summary.retryable) == (0, 6, 0)
    assert {f["error"]["type"] for f in read_failures(out)} == {"GenerationFailed"}
    assert read_stats(out)["00000_stats.json"]["failed"] == 6


async def test_rows_of_your_own_get_one_parquet_schema_across_runs(tmp_path: Path) -> None:
    """Rows not from read_rows: the first shard sets the metadata types, also for the
    shards a later run adds (a null-only column in a later shard keeps its type)."""
    out = tmp_path / "pq"

    def rows(count: int) -> list[Row]:
        return [
            Row.build(
                i,
                {"prompt": f"p {i}", "width": 32, "height": 32},
                {"score": i if i < 4 else None, "tags": ["a", i]},
            )
            for i in range(count)
        ]

    async with emulated_client(KEY, config()) as (_, client):
        await write_dataset(client, rows(4), out, output_format="parquet", shard_size=4)
        await write_dataset(client, rows(8), out, output_format="parquet", shard_size=4)
    schemas = [pq.read_schema(p) for p in parquet_files(out)]
    assert len(schemas) == 2
    assert all(s.field("score").type == pa.int64() for s in schemas)
    assert all(s.field("tags").type == pa.string() for s in schemas)  # JSON text
    table = pq.ParquetDataset(parquet_files(out)).read(columns=["key", "score", "tags"])
    by_key = {r["key"]: r for r in table.to_pylist()}
    assert by_key["000000002"]["score"] == 2
    assert by_key["000000006"]["score"] is None
    assert json.loads(by_key["000000006"]["tags"]) == ["a", 6]
