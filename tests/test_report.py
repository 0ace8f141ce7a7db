"""The batch report (``DIR/report.html``), rendered in a real headless Chromium.

Batches are made by ``Client.generate_many`` against the emulator over 127.0.0.1, some of
their jobs failing; dataset layouts (imagefolder, webdataset, parquet) are written by hand
as DESIGN §11 lays them out. Chromium is the Debian package (``scripts/install-test-deps.sh``
installs it), driven by playwright; a missing Chromium fails these tests, never skips them.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import anyio
import attrs
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from playwright.sync_api import BrowserContext, Page, sync_playwright

from modelslab_async import BatchResult, Client, Text2ImgRequest
from modelslab_async._manifest import Manifest, ManifestRecord, load_state
from modelslab_async._report import REPORT_NAME, write_report
from modelslab_async.emulator import Emulator, EmulatorConfig
from modelslab_async.emulator._png import render_png

T = TypeVar("T")
KEY = "canary-key-report-5c1e9a7d20b4f3"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: As root, without a GPU, and with nothing of Chromium's own reaching the network.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCRIPT_PROMPT = '<script>alert(1)</script> a cat & "dog" <img src=x onerror=alert(2)>'
PROMPTS = [
    "a red fox curled up asleep in fresh snow",
    "a lighthouse on a basalt cliff during a winter storm",
    "isometric cutaway of a tiny ramen shop at night",
    "a macro photograph of dew drops on a spider web",
    "an astronaut tending a vegetable garden on Mars",
    "a watercolor map of an imaginary archipelago",
    "a brutalist concrete library overgrown with ferns",
    "a bowl of lemons on a blue linen tablecloth",
    "a steam locomotive crossing a stone viaduct",
    "a paper-cut whale swimming through clouds",
    "a neon-lit rainy alley, reflections on wet asphalt",
    SCRIPT_PROMPT,
]
#: An item the client refuses before any network call: a failed record without a job.
BAD_ITEM = {"prompt": "too wide <b>bold</b>", "width": 3000}
#: Counts images that decoded (forcing lazy ones to load) and lists those that did not.
DECODE_ALL = """async () => {
  const results = await Promise.all([...document.images].map(async (img) => {
    img.loading = "eager";
    try { await img.decode(); } catch (e) { return img.getAttribute("src"); }
    return img.naturalWidth > 0 ? null : img.getAttribute("src");
  }));
  return {total: results.length, broken: results.filter((r) => r !== null)};
}"""


def run_async(main: Callable[[], Awaitable[T]]) -> T:
    """``anyio.run(main)`` in a thread of its own: playwright's sync API runs an event
    loop in the test's thread while the browser is open."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(anyio.run, main).result()


# --- batches ------------------------------------------------------------------------------


@attrs.frozen
class Batch:
    out: Path
    manifest: Path
    results: dict[int, BatchResult]
    prompts: dict[int, str]
    lag: tuple[float, float]


def run_batch(
    out: Path,
    items: Sequence[Any],
    *,
    fail_rate: float = 0.0,
    emulator_seed: int = 7,
    max_resubmits: int = 0,
) -> Batch:
    """Run *items* through ``generate_many`` on an emulator into *out* (the batch engine
    records each item's prompt, seed and generation time in the manifest)."""
    manifest = out / "manifest.jsonl"

    async def main() -> tuple[list[BatchResult], tuple[float, float]]:
        config = EmulatorConfig(
            workers=4, duration=(0.02, 0.12), fail_rate=fail_rate, seed=emulator_seed
        )
        async with (
            Emulator(config) as emu,
            Client(KEY, base_url=emu.base_url, max_in_flight=6) as client,
        ):
            with anyio.fail_after(60):
                results = [
                    r
                    async for r in client.generate_many(
                        items, dest=out, manifest=manifest, max_resubmits=max_resubmits
                    )
                ]
            lags = sorted(emu.stats.poll_lags())
        return results, (lags[len(lags) // 2], lags[-1]) if lags else (0.0, 0.0)

    results, lag = run_async(main)
    prompts = {i: prompt_of(item) for i, item in enumerate(items)}
    return Batch(
        out=out,
        manifest=manifest,
        results={r.index: r for r in results},
        prompts=prompts,
        lag=lag,
    )


def prompt_of(item: Any) -> str:
    if isinstance(item, Text2ImgRequest):
        return item.prompt
    return item if isinstance(item, str) else str(item["prompt"])


def requests(prompts: Sequence[str], size: int = 64) -> list[Any]:
    return [
        Text2ImgRequest(prompt=p, width=size, height=size, seed=100 + i)
        for i, p in enumerate(prompts)
    ]


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> Batch:
    """Twelve prompts and one bad item; some jobs fail (the emulator decides by submit
    number, and nothing is resubmitted, so the same number fail on every run)."""
    out = tmp_path_factory.mktemp("report") / "batch #1 & <b>"
    made = run_batch(out, [*requests(PROMPTS), BAD_ITEM], fail_rate=0.35)
    failed = [r for r in made.results.values() if not r.ok and r.job_id is not None]
    done = [r for r in made.results.values() if r.ok]
    assert failed, "the emulator made no job fail: pick another emulator_seed"
    assert done, "no job succeeded: pick another emulator_seed"
    write_report(out, stats={"lag_p50": made.lag[0], "lag_p99": made.lag[1], "wall_time": 9.5})
    return made


# --- the browser --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    assert Path(CHROMIUM).is_file(), (
        f"chromium is missing ({CHROMIUM}): run scripts/install-test-deps.sh"
    )
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield context
        finally:
            context.close()


@attrs.define
class Opened:
    page: Page
    requested: list[str]
    dialogs: list[str]
    errors: list[str]

    def visible_indices(self) -> list[int]:
        found: list[int] = self.page.eval_on_selector_all(
            "#grid .card:not([hidden])", "cards => cards.map(c => Number(c.dataset.index))"
        )
        return found


def open_report(browser: BrowserContext, path: Path) -> Iterator[Opened]:
    page = browser.new_page()
    opened = Opened(page=page, requested=[], dialogs=[], errors=[])
    page.on("request", lambda r: opened.requested.append(r.url))
    page.on("pageerror", lambda e: opened.errors.append(str(e)))
    page.on("console", lambda m: opened.errors.append(m.text) if m.type == "error" else None)

    def on_dialog(dialog: Any) -> None:
        opened.dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.goto(path.resolve().as_uri(), wait_until="load")
    try:
        yield opened
    finally:
        page.close()


@pytest.fixture
def report(browser: BrowserContext, batch: Batch) -> Iterator[Opened]:
    yield from open_report(browser, batch.out / REPORT_NAME)


def done_files(manifest: Path) -> list[Path]:
    return [
        Path(f).resolve()
        for r in load_state(manifest).values()
        if r.state == "done"
        for f in r.files
    ]


def failed_records(manifest: Path) -> dict[int, ManifestRecord]:
    return {i: r for i, r in load_state(manifest).items() if r.state == "failed"}


# --- the demo batch in the browser --------------------------------------------------------


def test_the_page_renders_non_blank_in_chromium(report: Opened, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    report.page.screenshot(path=str(shot), full_page=True)
    with Image.open(shot) as image:
        rgb = image.convert("RGB")
        assert rgb.width >= 1000
        assert rgb.height > 600
        colours = rgb.getcolors(maxcolors=1 << 20)
    assert colours is not None
    assert len(colours) > 200, "the page looks blank"
    assert report.page.locator("h1").inner_text().startswith("Batch report")
    assert report.errors == []


def test_every_done_image_is_shown_and_loads(report: Opened, batch: Batch) -> None:
    expected = sorted(done_files(batch.manifest))
    assert expected
    links = report.page.eval_on_selector_all("#grid .card a.thumb", "as => as.map(a => a.href)")
    assert sorted(_path_of(url) for url in links) == expected
    loaded = report.page.evaluate(DECODE_ALL)
    assert loaded == {"total": len(expected), "broken": []}


def test_failed_items_are_listed_with_their_prompt_and_error(report: Opened, batch: Batch) -> None:
    failed = failed_records(batch.manifest)
    assert len(failed) >= 2  # the bad item and at least one failed job
    rows = report.page.eval_on_selector_all(
        "#failures tr.failure",
        "rows => rows.map(r => [Number(r.dataset.index), r.innerText])",
    )
    assert [index for index, _ in rows] == sorted(failed)
    for index, text in rows:
        record = failed[index]
        assert batch.prompts[index] in text
        assert record.error is not None
        assert record.error["message"] in text
        if record.job_id is not None:
            assert str(record.job_id) in text
    assert "width" in dict(rows)[len(PROMPTS)]  # the bad item's error names the field


def test_a_script_prompt_renders_as_text(report: Opened, batch: Batch) -> None:
    index = PROMPTS.index(SCRIPT_PROMPT)
    page = report.page
    shown = page.eval_on_selector_all(
        f'[data-index="{index}"] .prompt, [data-index="{index}"] .prompt-text',
        "els => els.map(e => e.textContent)",
    )
    assert shown
    assert set(shown) == {SCRIPT_PROMPT}
    assert page.evaluate("document.scripts.length") == 1  # the page's own script only
    assert page.locator('img[src="x"]').count() == 0
    bad = page.eval_on_selector_all(
        f'[data-index="{len(PROMPTS)}"] .prompt-text', "els => els.map(e => e.textContent)"
    )
    assert bad == [BAD_ITEM["prompt"]]
    assert report.dialogs == []


def test_the_page_loads_nothing_remote(report: Opened, batch: Batch) -> None:
    report.page.evaluate(DECODE_ALL)  # every image requested, not only those in view
    assert report.requested
    assert all(url.startswith(("file:", "data:")) for url in report.requested), report.requested
    text = (batch.out / REPORT_NAME).read_text(encoding="utf-8")
    assert "http://" not in text
    assert "https://" not in text
    csp = report.page.get_attribute('meta[http-equiv="Content-Security-Policy"]', "content")
    assert csp is not None
    assert "default-src 'none'" in csp
    assert "script-src 'sha256-" in csp


def test_the_summary_counts_and_run_statistics(report: Opened, batch: Batch) -> None:
    state = load_state(batch.manifest)
    done = sum(1 for r in state.values() if r.state == "done")
    failed = sum(1 for r in state.values() if r.state == "failed")
    tiles = dict(
        report.page.eval_on_selector_all(
            ".tile", "ts => ts.map(t => [t.querySelector('.label').textContent, t.innerText])"
        )
    )
    assert tiles["done"].split("\n")[1] == str(done)
    assert tiles["failed"].split("\n")[1] == str(failed)
    assert "9.5 s" in tiles["wall time"]
    assert f"{done / 9.5 * 60:,.1f}" in tiles["images / minute"]
    assert f"{batch.lag[0]:.2f} s" in tiles["poll lag p50 / p99"]


def test_cards_show_seed_job_id_and_generation_time(report: Opened, batch: Batch) -> None:
    for index, result in batch.results.items():
        if not result.ok:
            continue
        card = report.page.locator(f'#grid .card[data-index="{index}"]')
        text = card.inner_text()
        assert batch.prompts[index] in text
        assert f"seed\n{100 + index}" in text
        assert str(result.job_id) in text
        assert result.generation is not None
        assert result.generation.generation_time is not None
        assert f"{result.generation.generation_time:.2f} s" in text


def test_filter_and_sort_in_the_page(report: Opened, batch: Batch) -> None:
    page = report.page
    page.fill("#filter", "lighthouse")
    shown = report.visible_indices()
    expected = [1] if batch.results[1].ok else []
    assert shown == expected
    page.fill("#filter", "")
    page.select_option("#sort", "time-desc")
    times = page.eval_on_selector_all(
        "#grid .card:not([hidden])", "cs => cs.map(c => Number(c.dataset.time))"
    )
    assert times == sorted(times, reverse=True)
    assert len(times) > 1


def test_thirty_prompts_some_failing_on_every_resubmit(
    browser: BrowserContext, tmp_path: Path
) -> None:
    # Each job fails with probability 0.7 and is resubmitted twice: about a third of the
    # items fail three times (none failing, or all, has odds below 1e-5).
    prompts = [f"prompt number {i}: a {word} landscape" for i, word in enumerate("ab" * 15)]
    made = run_batch(tmp_path / "thirty", requests(prompts), fail_rate=0.7, max_resubmits=2)
    write_report(made.out)
    failed = failed_records(made.manifest)
    assert 0 < len(failed) < 30
    assert all(r.attempt == 2 for r in failed.values())
    for opened in open_report(browser, made.out / REPORT_NAME):
        page = opened.page
        assert page.evaluate(DECODE_ALL) == {"total": 30 - len(failed), "broken": []}
        rows = dict(
            page.eval_on_selector_all(
                "#failures tr.failure", "rs => rs.map(r => [Number(r.dataset.index), r.innerText])"
            )
        )
        assert sorted(rows) == sorted(failed)
        for index, text in rows.items():
            assert prompts[index] in text
            assert text.rstrip().endswith("3")  # attempts
        assert all(u.startswith(("file:", "data:")) for u in opened.requested)


# --- what the manifest holds, and the links -----------------------------------------------


def test_a_manifest_without_prompts_still_shows_images_and_errors(
    browser: BrowserContext, batch: Batch, tmp_path: Path
) -> None:
    # The batch's manifest without the optional fields (as older runs wrote it), in another
    # folder: the images are linked from there by a relative path through the batch's one.
    other = tmp_path / "elsewhere"
    other.mkdir()
    manifest = other / "manifest.jsonl"
    with open(batch.manifest, encoding="utf-8") as src, open(manifest, "w") as dst:
        for line in src:
            record = json.loads(line)
            for name in ("prompt", "seed", "generation_time"):
                record.pop(name, None)
            dst.write(json.dumps(record) + "\n")
    write_report(other)
    for opened in open_report(browser, other / REPORT_NAME):
        assert opened.page.evaluate(DECODE_ALL) == {
            "total": len(done_files(manifest)),
            "broken": [],
        }
        assert opened.page.locator("#grid .prompt.unknown").count() == len(done_files(manifest))
        rows = opened.page.locator("#failures tr.failure").all_inner_texts()
        assert len(rows) == len(failed_records(manifest))
        assert all("prompt not recorded" in row for row in rows)
        assert "not measured for this run" in opened.page.inner_text(".tiles")


def test_images_are_found_by_name_when_the_run_was_elsewhere(
    browser: BrowserContext, batch: Batch, tmp_path: Path
) -> None:
    # The whole output folder moved: the manifest's paths are stale, the names are not.
    moved = tmp_path / "moved"
    shutil.copytree(batch.out, moved)
    write_report(moved)
    for opened in open_report(browser, moved / REPORT_NAME):
        links = opened.page.eval_on_selector_all(
            "#grid a.thumb", "as => as.map(a => a.getAttribute('href'))"
        )
        assert links
        assert all(re.fullmatch(r"\d+-0\.png", link) for link in links), links
        assert opened.page.evaluate(DECODE_ALL) == {"total": len(links), "broken": []}


# --- dataset layouts ----------------------------------------------------------------------


def sample_png(index: int, size: int = 96) -> bytes:
    return render_png(size, size, index, f"sample {index}", 0)


def sample_meta(index: int) -> dict[str, Any]:
    return {
        "key": f"{index:09d}",
        "prompt": f"row {index} <i>prompt</i>",
        "seed": 5000 + index,
        "job_id": 90000 + index,
    }


def write_manifest(path: Path, indices: Sequence[int], failed: Sequence[int] = ()) -> None:
    async def main() -> None:
        writer = await Manifest(path).open()
        try:
            for i in indices:
                await writer.append(
                    ManifestRecord(index=i, state="done", fingerprint="f", job_id=90000 + i)
                )
            for i in failed:
                await writer.append(
                    ManifestRecord(
                        index=i,
                        state="failed",
                        fingerprint="f",
                        job_id=90000 + i,
                        error={"type": "GenerationFailed", "message": "Failed, Try Again"},
                    )
                )
        finally:
            await writer.close()

    run_async(main)


def write_tar_shard(path: Path, indices: Sequence[int]) -> None:
    with tarfile.open(path, "w") as tar:
        for i in indices:
            for name, data in (
                (f"{i:09d}.png", sample_png(i)),
                (f"{i:09d}.json", json.dumps(sample_meta(i)).encode()),
            ):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def write_parquet_shard(path: Path, indices: Sequence[int]) -> None:
    rows = [
        {"image": {"bytes": sample_png(i), "path": f"{i:09d}.png"}, **sample_meta(i)}
        for i in indices
    ]
    pq.write_table(pa.Table.from_pylist(rows), path)


def test_webdataset_and_parquet_shards_embed_up_to_200_thumbnails(
    browser: BrowserContext, tmp_path: Path
) -> None:
    out = tmp_path / "shards"
    out.mkdir()
    write_tar_shard(out / "00000.tar", range(0, 100))
    write_tar_shard(out / "00001.tar", range(100, 150))
    write_parquet_shard(out / "00002.parquet", range(200, 300))
    write_manifest(out / "manifest.jsonl", [*range(150), *range(200, 300)], failed=[150])
    write_report(out)
    html = (out / REPORT_NAME).read_text(encoding="utf-8")
    assert "Showing 200 of 250 images" in html
    assert "200 of the 250 images inside shards are embedded" in html
    for opened in open_report(browser, out / REPORT_NAME):
        page = opened.page
        assert page.locator("#grid .card").count() == 200
        srcs = page.eval_on_selector_all("#grid img", "is => is.map(i => i.src.slice(0, 23))")
        assert srcs == ["data:image/jpeg;base64,"] * 200
        assert page.evaluate(DECODE_ALL) == {"total": 200, "broken": []}
        first = page.locator('#grid .card[data-index="0"]').inner_text()
        assert "row 0 <i>prompt</i>" in first
        assert "5000" in first
        assert "00000.tar" in first
        # Shards in name order: both tars (150 images), then the parquet's first 50 rows.
        assert "row 249" in page.locator('#grid .card[data-index="249"]').inner_text()
        assert page.locator('#grid .card[data-index="250"]').count() == 0
        assert page.locator("#failures tr.failure").count() == 1
        assert all(u.startswith(("file:", "data:")) for u in opened.requested)


def test_a_parquet_shard_alone_is_embedded(browser: BrowserContext, tmp_path: Path) -> None:
    out = tmp_path / "parquet"
    out.mkdir()
    write_parquet_shard(out / "00000.parquet", range(0, 30))
    write_manifest(out / "manifest.jsonl", range(30))
    write_report(out)
    for opened in open_report(browser, out / REPORT_NAME):
        assert opened.page.evaluate(DECODE_ALL) == {"total": 30, "broken": []}
        assert "row 29 <i>prompt</i>" in opened.page.inner_text("#grid")


def test_imagefolder_images_are_linked_by_relative_path(
    browser: BrowserContext, tmp_path: Path
) -> None:
    out = tmp_path / "imagefolder"
    for shard, indices in (("00000", range(0, 4)), ("00001", range(4, 7))):
        folder = out / shard
        folder.mkdir(parents=True)
        with open(folder / "metadata.jsonl", "w", encoding="utf-8") as handle:
            for i in indices:
                (folder / f"{i:09d}.png").write_bytes(sample_png(i))
                handle.write(json.dumps({"file_name": f"{i:09d}.png", **sample_meta(i)}) + "\n")
    write_manifest(out / "manifest.jsonl", range(7))
    write_report(out)
    html = (out / REPORT_NAME).read_text(encoding="utf-8")
    assert 'href="00001/000000006.png"' in html
    assert "data:image" not in html
    for opened in open_report(browser, out / REPORT_NAME):
        assert opened.page.evaluate(DECODE_ALL) == {"total": 7, "broken": []}
        assert "row 6 <i>prompt</i>" in opened.page.inner_text('.card[data-index="6"]')


# --- large batches ------------------------------------------------------------------------


def test_a_large_batch_is_capped_and_paged(browser: BrowserContext, tmp_path: Path) -> None:
    out = tmp_path / "large"
    out.mkdir()
    png = sample_png(0, size=32)
    names = []
    for i in range(1200):
        name = out / f"{i}-0.png"
        name.write_bytes(png)
        names.append(str(name))

    async def manifest() -> None:
        writer = await Manifest(out / "manifest.jsonl").open()
        try:
            for i, name in enumerate(names):
                await writer.append(
                    ManifestRecord(index=i, state="done", fingerprint="f", job_id=i, files=(name,))
                )
        finally:
            await writer.close()

    run_async(manifest)
    write_report(out)
    for opened in open_report(browser, out / REPORT_NAME):
        page = opened.page
        assert page.locator("#grid .card").count() == 1000
        assert "Showing 1,000 of 1,200 images" in page.inner_text("#grid-note")
        assert opened.visible_indices() == list(range(100))
        page.click("#next")
        assert opened.visible_indices() == list(range(100, 200))
        assert "page 2 of 10" in page.inner_text("#page")
        requested_images = [u for u in opened.requested if u.endswith(".png")]
        assert len(requested_images) <= 200  # hidden pages' images are not loaded


# --- writing ------------------------------------------------------------------------------


def test_the_report_replaces_the_old_one_atomically(batch: Batch, tmp_path: Path) -> None:
    out = tmp_path / "again"
    shutil.copytree(batch.out, out)
    (out / REPORT_NAME).write_text("old")
    path = write_report(out, title="Second <look>")
    assert path == out / REPORT_NAME
    html = path.read_text(encoding="utf-8")
    assert "<title>Second &lt;look&gt;</title>" in html
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_a_torn_last_line_and_unfinished_items(tmp_path: Path) -> None:
    out = tmp_path / "torn"
    out.mkdir()
    write_manifest(out / "manifest.jsonl", [])
    with open(out / "manifest.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"index": 0, "state": "submitted", "fingerprint": "f"}) + "\n")
        handle.write(
            json.dumps(
                {
                    "index": 1,
                    "state": "failed",
                    "fingerprint": "f",
                    "error": {"type": "NotSubmitted", "message": "stopped before it was sent"},
                }
            )
            + "\n"
        )
        handle.write('{"index": 2, "state": "do')
    html = write_report(out).read_text(encoding="utf-8")
    assert "No item failed." in html
    assert '<div class="label">unfinished</div>\n    <div class="value">2</div>' in html


def test_failures_jsonl_names_prompts_the_manifest_lacks(tmp_path: Path) -> None:
    out = tmp_path / "failures"
    out.mkdir()
    write_manifest(out / "manifest.jsonl", [], failed=[3])
    rows = [
        {"index": 3, "input": {"prompt": "from the input row"}, "error": {"type": "X"}},
        {
            "key": "000000004",
            "prompt": "a bad row",
            "error": {"type": "RequestValidationError", "message": "width: got 7"},
        },
    ]
    (out / "failures.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    html = write_report(out).read_text(encoding="utf-8")
    assert "from the input row" in html
    assert "a bad row" in html
    assert "width: got 7" in html


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stats": {"lag": 1.0}}, "stats: unknown key 'lag', allowed: wall_time"),
        ({"stats": {"wall_time": -1}}, "stats['wall_time']: got -1, allowed a number >= 0"),
        ({"stats": {"lag_p50": "fast"}}, "stats['lag_p50']: got 'fast'"),
        ({"max_images": -1}, "max_images: got -1, allowed an integer >= 0"),
        ({"max_embedded": 2.5}, "max_embedded: got 2.5"),
    ],
)
def test_bad_arguments_name_the_argument(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    write_manifest(tmp_path / "manifest.jsonl", [])
    with pytest.raises(ValueError, match=re.escape(message)):
        write_report(tmp_path, **kwargs)
    assert not (tmp_path / REPORT_NAME).exists()


def test_no_manifest_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no manifest at"):
        write_report(tmp_path)
    assert not (tmp_path / REPORT_NAME).exists()


def _path_of(url: str) -> Path:
    return Path(unquote(urlsplit(url).path)).resolve()
