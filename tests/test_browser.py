"""The page in a real browser: Debian's Chromium driven by Playwright uploads an image and sees the result."""

from __future__ import annotations

import os
import shutil
import socket
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


def test_upload_shows_heatmap_and_score(tiny_pipeline_dir, tmp_path):
    model = app.DEFAULT_MODEL if app.DEFAULT_MODEL.is_dir() else tiny_pipeline_dir
    demo = app.build_demo(app.Inspector(app.load_pipeline(model)))
    demo.queue(default_concurrency_limit=1)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True)
    image = app.HERE / "examples" / "misplaced.png"
    if not image.exists():
        from PIL import Image

        image = tmp_path / "part.png"
        Image.new("RGB", (64, 64), (120, 90, 40)).save(image)
    try:
        with playwright_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS,
                                        ignore_default_args=["--enable-automation"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")
            page.locator("input[type=file]").first.set_input_files(str(image))
            page.wait_for_timeout(500)
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
            browser.close()
    finally:
        demo.close()
