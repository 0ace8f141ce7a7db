"""The batch report from the command line: ``batch`` ends every run by writing
``OUT/report.html`` (after failures and after an interrupt too) and prints its ``file://``
link; ``report DIR`` rebuilds it. The CLI runs in a subprocess against an emulator over
127.0.0.1; the 30-prompt page is rendered in headless Chromium with tests/test_report.py's
helpers (a missing Chromium fails, never skips)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path

import anyio
from PIL import Image
from playwright.sync_api import BrowserContext

from modelslab_async._report import REPORT_NAME
from modelslab_async.emulator import Emulator, EmulatorConfig

from .test_cli import (
    _check_no_key,
    _command,
    _env,
    _last_records,
    _prompts,
    _safe_records,
    run_cli,
)
from .test_report import DECODE_ALL, browser, open_report, run_async

__all__ = ["browser"]  # the fixture, shared with tests/test_report.py

LINK = re.compile(rb"Report: (file://\S+)")


def _linked_report(stderr: bytes) -> Path:
    """The report the CLI's ``Report: file://...`` line points at."""
    found = LINK.findall(stderr)
    assert len(found) == 1, stderr.decode()
    url = found[0].decode()
    assert url.startswith("file:///")
    return Path(url.removeprefix("file://"))


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run the CLI to completion (no key: ``--local`` needs none). This module's tests are
    synchronous: the browser's playwright loop runs in the test thread."""
    result = subprocess.run(
        _command(*args), cwd=cwd, env=_env(key=None), capture_output=True, timeout=60, check=False
    )
    _check_no_key(result.stdout, result.stderr)
    return result


def _tiles(html: str) -> str:
    """The page's text, tags removed (enough to look for a tile's words)."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_thirty_prompts_some_failing_on_every_resubmit(
    browser: BrowserContext, tmp_path: Path
) -> None:
    # Each submit fails with probability 0.7 and the CLI resubmits twice: about a third of
    # the 30 items fail three times (none or all failing has odds below 1e-5).
    prompts = [f"prompt number {i}: a {word} landscape" for i, word in enumerate("ab" * 15)]
    prompts[7] = '<script>alert("x")</script> a cat & a dog'
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")

    async def main() -> tuple[subprocess.CompletedProcess[bytes], int]:
        config = EmulatorConfig(workers=4, duration=(0.02, 0.1), fail_rate=0.7, seed=5)
        async with Emulator(config) as emu:
            result = await run_cli(
                "batch", "prompts.txt", "--out", "out", "-c", "6", "--base-url", emu.base_url,
                cwd=tmp_path,
            )  # fmt: skip
            return result, emu.stats.duplicate_submissions()

    result, duplicates = run_async(main)
    assert result.returncode == 1, result.stderr.decode()
    assert duplicates == 0
    path = _linked_report(result.stderr)
    assert path == (tmp_path / "out" / REPORT_NAME).resolve()
    records = _last_records(tmp_path / "out" / "manifest.jsonl")
    assert sorted(records) == list(range(30))
    failed = {i for i, r in records.items() if r["state"] == "failed"}
    assert 0 < len(failed) < 30
    assert all(records[i]["attempt"] == 2 for i in failed)  # failed on every resubmit
    for opened in open_report(browser, path):
        page = opened.page
        # every done image is shown and decodes
        assert page.evaluate(DECODE_ALL) == {"total": 30 - len(failed), "broken": []}
        shown = page.eval_on_selector_all(
            "#grid .card", "cs => cs.map(c => Number(c.dataset.index))"
        )
        assert sorted(shown) == sorted(set(range(30)) - failed)
        # every failed prompt is named
        rows = dict(
            page.eval_on_selector_all(
                "#failures tr.failure", "rs => rs.map(r => [Number(r.dataset.index), r.innerText])"
            )
        )
        assert set(rows) == failed
        for index, text in rows.items():
            assert prompts[index] in text
        # the script prompt is text, nothing remote is loaded, the page is not blank
        assert page.evaluate("document.scripts.length") == 1
        assert opened.dialogs == []
        assert opened.errors == []
        assert opened.requested
        assert all(u.startswith(("file:", "data:")) for u in opened.requested), opened.requested
        shot = tmp_path / "shot.png"
        page.screenshot(path=str(shot), full_page=True)
        with Image.open(shot) as image:
            colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None
        assert len(colours) > 200, "the page looks blank"
        tiles = page.inner_text(".tiles")
        assert "this run" in tiles  # the CLI's own wall time
        assert "not measured for this run" in tiles  # no poll lag against a given server
    text = path.read_text(encoding="utf-8")
    assert "http://" not in text
    assert "https://" not in text


def test_a_local_batch_report_has_wall_time_rate_and_poll_lag(tmp_path: Path) -> None:
    prompts = _prompts(tmp_path, 4)
    result = cli(tmp_path, "batch", str(prompts), "--out", "out", "--local")
    assert result.returncode == 0, result.stderr.decode()
    path = _linked_report(result.stderr)
    page = _tiles(path.read_text(encoding="utf-8"))
    assert "job ready to result in hand" in page  # the poll lag, from the embedded emulator
    assert "not measured" not in page
    assert re.search(r"wall time [\d:.]+( s)? this run", page), page
    assert re.search(r"images / minute [\d,.]+ of wall time", page), page


def test_an_interrupted_batch_still_writes_its_report(tmp_path: Path) -> None:
    config = EmulatorConfig(workers=2, duration=(0.25, 0.4))
    prompts = _prompts(tmp_path, 16)
    manifest = tmp_path / "out" / "manifest.jsonl"

    async def main() -> tuple[int, bytes]:
        async with Emulator(config) as emu:
            argv = _command(
                "batch", str(prompts), "--out", "out", "-c", "2", "--base-url", emu.base_url
            )
            with anyio.fail_after(30):
                async with await anyio.open_process(argv, cwd=tmp_path, env=_env()) as process:
                    while sum(r["state"] == "done" for r in _safe_records(manifest)) < 2:  # noqa: ASYNC110
                        await anyio.sleep(0.05)
                    process.send_signal(signal.SIGINT)
                    code = await process.wait()
                    assert process.stderr is not None
                    return code, b"".join([chunk async for chunk in process.stderr])

    code, stderr = run_async(main)
    assert code == 130, stderr.decode()
    path = _linked_report(stderr)
    html = path.read_text(encoding="utf-8")
    done = [r for r in _last_records(manifest).values() if r["state"] == "done"]
    assert 2 <= len(done) < 16
    for record in done:
        assert isinstance(record["files"], list)
        assert Path(record["files"][0]).name in html


def test_the_report_command_rebuilds_the_page_from_the_manifest(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text(
        json.dumps({"prompt": "a lemon"})
        + "\n"
        + json.dumps({"prompt": "too wide <b>", "width": 5000})
        + "\n{not json\n"
    )
    result = cli(tmp_path, "batch", "in.jsonl", "--out", "out", "--local")
    assert result.returncode == 1, result.stderr.decode()
    records = _last_records(tmp_path / "out" / "manifest.jsonl")
    assert records[0]["prompt"] == "a lemon"
    assert records[1]["prompt"] == "too wide <b>"  # a bad item's prompt, as given
    assert "prompt" not in records[2]  # a line that is not an item has none
    page = tmp_path / "out" / REPORT_NAME
    page.unlink()

    rebuilt = cli(tmp_path, "report", "out")
    assert rebuilt.returncode == 0, rebuilt.stderr.decode()
    assert rebuilt.stdout.decode().strip() == page.resolve().as_uri()
    html = page.read_text(encoding="utf-8")
    assert "too wide &lt;b&gt;" in html
    assert "a lemon" in html
    assert "first to last manifest record" in html  # no run statistics: the records' span

    # a manifest kept elsewhere
    moved = tmp_path / "elsewhere.jsonl"
    (tmp_path / "out" / "manifest.jsonl").rename(moved)
    elsewhere = cli(tmp_path, "report", "out", "--manifest", str(moved))
    assert elsewhere.returncode == 0, elsewhere.stderr.decode()
    assert "a lemon" in page.read_text(encoding="utf-8")

    missing = cli(tmp_path, "report", "out")
    assert missing.returncode == 2
    assert b"no manifest at out/manifest.jsonl" in missing.stderr


def test_a_manifest_that_cannot_be_read_is_exit_2_for_report_and_no_report_for_batch(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.jsonl").write_bytes(b"[" * 100_000 + b"\n")
    rebuilt = cli(tmp_path, "report", "out")
    assert rebuilt.returncode == 2
    assert b"Traceback" not in rebuilt.stderr
    assert b"nested too deeply" in rebuilt.stderr
    batch = cli(tmp_path, "batch", str(_prompts(tmp_path, 1)), "--out", "out", "--local")
    assert batch.returncode == 2
    assert b"Traceback" not in batch.stderr
    assert b"No report: out/manifest.jsonl holds a line nested too deeply" in batch.stderr
    assert not (out / REPORT_NAME).exists()
