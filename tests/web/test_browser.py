"""The playground in a real browser (Debian's chromium driven by playwright) against a real uvicorn server."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from web_support import live_server

pytestmark = pytest.mark.browser
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
README_SCREENSHOT = Path(__file__).resolve().parents[2] / "web" / "static" / "screenshot.png"


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def test_fill_streams_text_into_the_hole(browser, fim_mim_ckpt, tmp_path):
    from web.app import ServeConfig, create_app

    app = create_app(fim_mim_ckpt, ServeConfig())
    with live_server(app) as url:
        page = browser.new_page(viewport={"width": 1200, "height": 720})
        external = []
        page.on("request", lambda r: None if r.url.startswith(url) else external.append(r.url))
        page.goto(url + "/")
        page.wait_for_function("document.querySelector('#model').textContent.startsWith('codelm-')")
        assert page.locator("input[name=mode][value=mim]").is_enabled()

        # type code with a hole, as a user would
        page.click(".cm-content")
        page.keyboard.press("Control+A")
        page.keyboard.press("Delete")
        page.keyboard.insert_text("def add(a, b):\n    return <FILL>\n\nprint(add(1, 2))\n")
        assert page.locator(".cm-hole").count() == 1  # the marker is highlighted

        page.fill("#max_tokens", "24")
        page.fill("#temperature", "0")
        page.click(".cm-content")
        page.keyboard.press("Control+Enter")  # the shortcut, like the button
        page.wait_for_function("document.querySelector('#status').textContent.startsWith('done')", timeout=60_000)

        doc = page.evaluate("window.playground.view.state.doc.toString()")
        assert "<FILL>" not in doc
        assert doc.startswith("def add(a, b):\n    return ") and doc.endswith("\n\nprint(add(1, 2))\n")
        filled = doc[len("def add(a, b):\n    return "):-len("\n\nprint(add(1, 2))\n")]
        assert filled, "no text landed in the hole"
        assert page.locator(".cm-filled").count() >= 1  # the filled text is highlighted
        assert float(page.text_content("#tps")) > 0
        assert page.text_content("#latency").endswith("ms")
        assert external == [], f"the page reached outside the server: {external}"

        # meet-in-the-middle through the same page
        page.check("input[name=mode][value=mim]")
        page.click(".cm-content")
        page.keyboard.press("Control+End")
        page.keyboard.insert_text("# <FILL>\n")
        page.click("#fill")
        page.wait_for_function("document.querySelector('#status').textContent.startsWith('done')", timeout=60_000)
        page.wait_for_timeout(200)
        shot = tmp_path / "playground.png"
        page.screenshot(path=str(shot))
        assert shot.stat().st_size > 10_000
        if README_SCREENSHOT.parent.is_dir() and not README_SCREENSHOT.exists():
            shutil.copy(shot, README_SCREENSHOT)
        page.close()
