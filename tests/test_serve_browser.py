"""The served page in a real browser (headless Chromium through Playwright): pick an image with
the page's file input, see the predicted class and the Grad-CAM overlay, with no console errors.
CI sets LEANVISION_REQUIRE_BROWSER=1, so a missing browser fails there instead of skipping."""

from __future__ import annotations

import pytest
from test_report_browser import CHROMIUM_ARGS, _chromium
from test_serve import CLASSES, KEY, make_artifact, png, running_server

from leanvision.serving import create_app

pytestmark = pytest.mark.usefixtures("one_thread")


def test_page_classifies_and_explains_an_uploaded_image(tmp_path):
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    artifact = make_artifact(tmp_path / "tiny", onnx=False)
    image = tmp_path / "red.png"
    image.write_bytes(png((220, 20, 20), size=(40, 40)))
    # With a key, so the page's own key prompt is exercised too.
    app = create_app(artifact, threads=1, api_key=KEY)
    with running_server(app) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("console", lambda m: problems.append(f"console: {m.text}")
                    if m.type == "error" and "401" not in m.text else None)
            page.goto(base + "/", wait_until="load")
            page.set_input_files("#file", str(image))
            page.wait_for_selector("#keybox.shown", timeout=10_000)
            page.fill("#key", KEY)
            page.click("#keybox button")
            page.wait_for_selector("#results .cls", timeout=10_000)
            shown = page.locator("#results .cls").all_text_contents()
            assert len(shown) == len(CLASSES) and set(shown) == set(CLASSES)
            assert page.locator("#status").text_content() == f"Top class: {shown[0]}"
            page.wait_for_selector("#explain-box:not([hidden])", timeout=10_000)
            size = page.eval_on_selector("#explanation", "i => [i.complete, i.naturalWidth]")
            assert size[0] and size[1] >= 128
            assert "Grad-CAM for " in page.locator("#explain-caption").text_content()
            assert problems == []
        finally:
            browser.close()
