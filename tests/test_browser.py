"""The page in a real browser: Debian's Chromium driven by Playwright uploads images and sees the results."""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"Chromium not installed at {CHROMIUM}")]
playwright_api = pytest.importorskip("playwright.sync_api")

import app  # noqa: E402

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def page(tiny_pipeline_dir):
    """The demo (embedded model when present) open in headless Chromium."""
    model = app.DEFAULT_MODEL if app.DEFAULT_MODEL.is_dir() else tiny_pipeline_dir
    demo = app.build_demo(app.ModelShelf({Path(model).name: str(model), "tiny": str(tiny_pipeline_dir)}))
    demo.queue(default_concurrency_limit=1)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, max_file_size=app.MAX_UPLOAD)
    try:
        with playwright_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS,
                                        ignore_default_args=["--enable-automation"])
            tab = browser.new_page(viewport={"width": 1400, "height": 1000})
            tab.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")
            yield tab
            browser.close()
    finally:
        demo.close()


def _parts(tmp_path: Path, n: int) -> list[Path]:
    examples = sorted((app.HERE / "examples").glob("*.png"))
    if not examples:
        from PIL import Image

        examples = [tmp_path / "part.png"]
        Image.new("RGB", (64, 64), (120, 90, 40)).save(examples[0])
    files = []
    for i in range(n):
        target = tmp_path / f"{i:02d}_{examples[i % len(examples)].name}"
        shutil.copy(examples[i % len(examples)], target)
        files.append(target)
    return files


def test_image_input_previews_and_shows_heatmap_and_score(page, tmp_path):
    parts = _parts(tmp_path, 6)
    image = next((p for p in parts if "misplaced" in p.name), parts[0])  # a defective example where present
    page.locator("#image-input input[type=file]").set_input_files(str(image))
    preview = page.locator("#image-input img").first
    preview.wait_for(timeout=30_000)  # the image input shows the picture, not a file name
    assert preview.evaluate("img => img.naturalWidth") > 0
    page.get_by_role("button", name="Find defects").click()
    summary = page.locator("#summary")
    summary.get_by_text("anomaly score").wait_for(timeout=120_000)
    text = summary.inner_text()
    assert "anomaly score" in text and ("DEFECTIVE" in text or "good" in text or "not calibrated" in text)
    heat = page.locator("#heatmap img")
    heat.wait_for(timeout=30_000)
    assert heat.evaluate("img => img.naturalWidth") > 0
    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    if os.environ.get("DDAD_SCREENSHOT"):
        shutil.copy(shot, os.environ["DDAD_SCREENSHOT"])


def test_batch_tab_shows_table_gallery_and_csv(page, tmp_path):
    files = _parts(tmp_path, 20)
    page.get_by_role("tab", name="Many images").click()
    page.locator("#batch-input input[type=file]").set_input_files([str(f) for f in files])
    page.locator("#batch-input").get_by_text(files[-1].stem).wait_for(timeout=60_000)  # all uploaded
    began = time.perf_counter()
    page.get_by_role("button", name="Score all").click()
    summary = page.locator("#batch-summary")
    summary.get_by_text("image(s) scored").wait_for(timeout=300_000)
    seconds = time.perf_counter() - began
    print(f"\n20 images through the batch tab: {seconds:.1f} s from click to table")
    assert "20 image(s) scored" in summary.inner_text()
    table = page.locator("#batch-table")
    for name in (files[0].name, files[-1].name):
        table.get_by_text(name).first.wait_for(timeout=30_000)
    flagged = [f for f in files if not f.name.split("_", 1)[1].startswith("good")]
    if app.DEFAULT_MODEL.is_dir():  # the embedded model flags some of the defect examples
        gallery = page.locator("#batch-gallery img")
        gallery.first.wait_for(timeout=30_000)
        assert 0 < gallery.count() <= len(flagged)
    page.locator("#batch-csv").get_by_text("scores").wait_for(timeout=30_000)  # the CSV to download
    if os.environ.get("DDAD_SCREENSHOT"):
        page.screenshot(path=os.environ["DDAD_SCREENSHOT"].replace(".png", "_batch.png"), full_page=True)


def test_a_broken_file_in_the_image_input_gets_the_message(page, tmp_path):
    page.get_by_role("tab", name="One image").click()
    broken = tmp_path / "notes.png"
    broken.write_bytes(b"this is text, not a picture")
    page.locator("#image-input input[type=file]").set_input_files(str(broken))
    page.wait_for_timeout(1000)
    page.get_by_role("button", name="Find defects").click()
    page.get_by_text("not an image").first.wait_for(timeout=60_000)  # gradio's error message, from open_image


def test_choosing_another_model_shows_its_card_and_modes(page):
    info = page.locator("#model-info")
    from playwright.sync_api import expect

    page.get_by_role("radio", name="ddad").wait_for(timeout=60_000)
    # the page's load event narrows the mode choice (every mode, for the API) to the first model's, and selects its own
    expect(page.get_by_role("radio", name="diad")).to_have_count(0, timeout=30_000)
    expect(page.get_by_role("radio", name="fused" if app.DEFAULT_MODEL.is_dir() else "ddad")).to_be_checked()
    page.get_by_label("model", exact=True).click()
    page.get_by_role("option", name="tiny").click()
    info.get_by_text("not recorded").wait_for(timeout=60_000)  # the tiny random model has no training_info.json
    assert page.get_by_role("radio", name="d3ad").count() == 0  # no feature memory: DDAD only
    page.get_by_text("Advanced settings").click()  # empty boxes: the chosen model's own settings, shown as hints
    page.get_by_placeholder("model's own: 100").wait_for(timeout=30_000)  # the tiny model's start step
