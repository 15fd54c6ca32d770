"""The report in a real browser (headless Chromium): it loads without errors, shows every section
and does not scroll sideways on a laptop screen. CI sets LEANVISION_REQUIRE_BROWSER=1, so a
missing browser fails there instead of skipping."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_image_folder

from leanvision.artifact import make_card, save_artifact
from leanvision.evaluate import model_cost
from leanvision.io import append_jsonl
from leanvision.models import create_model
from leanvision.reports import report

pytestmark = pytest.mark.usefixtures("one_thread")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu"]
CLASSES = ["red", "green", "blue"]
LAPTOP = {"width": 1280, "height": 800}


def _chromium() -> str:
    """The system Chromium's path; skip (or, where a browser is required, fail) without it."""
    candidates = [os.environ.get("LEANVISION_CHROMIUM"), "/usr/bin/chromium",
                  "/usr/bin/chromium-browser", shutil.which("chromium"),
                  shutil.which("chromium-browser")]
    found = next((c for c in candidates if c and Path(c).is_file()), None)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        found, reason = None, "the playwright Python package is not installed"
    else:
        reason = "no Chromium found at /usr/bin/chromium (or $LEANVISION_CHROMIUM)"
    if found is None:
        if os.environ.get("LEANVISION_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{reason}, and LEANVISION_REQUIRE_BROWSER=1 requires one: install it "
                        "with `apt-get install chromium` (and `pip install playwright`), or "
                        "point LEANVISION_CHROMIUM at a Chromium binary")
        pytest.skip(reason)
    return found


def _artifact(folder: Path, data: Path, *, stage: str, parent: str | None, seed: int) -> Path:
    """An untrained resnet8 with the card and history a run would leave (no training needed:
    the test is about the page, not the model)."""
    torch.manual_seed(seed)
    model = create_model("resnet8", len(CLASSES)).eval()
    confusion = [[3, 0, 0], [1, 2, 0], [0, 1, 2]]
    per_class = {c: {"precision": 0.75, "recall": 0.66, "f1": 0.7, "support": 3}
                 for c in CLASSES}
    card = make_card(arch="resnet8", arch_kwargs={}, classes=CLASSES, input_size=(16, 16),
                     mean=[0.5] * 3, std=[0.25] * 3, stage=stage, parent=parent,
                     config={"data": str(data), "val_fraction": 0.25, "seed": 0},
                     metrics={"val": {"n": 9, "top1": 0.78 - 0.1 * seed, "ece": 0.1,
                                      "per_class": per_class, "confusion": confusion}})
    save_artifact(folder, model, card)
    card["metrics"].update(model_cost(model, (16, 16), folder))
    save_artifact(folder, model, card)
    rng = np.random.default_rng(seed)
    for epoch in range(1, 6):
        append_jsonl(folder / "metrics.jsonl", {
            "epoch": epoch, "lr": 0.01 / epoch, "train_loss": 1.0 / epoch + rng.random() * 0.1,
            "train_top1": 0.5 + 0.08 * epoch, "val_loss": 1.1 / epoch, "val_top1": 0.45 + 0.07
            * epoch, "ema_val_loss": 1.2 / epoch, "ema_val_top1": 0.4 + 0.08 * epoch})
    return folder


@pytest.fixture(scope="module")
def page_file(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    data = make_image_folder(root / "data", per_class=4)
    parent = _artifact(root / "base", data, stage="train", parent=None, seed=0)
    # A long unbroken folder name must wrap, not widen the page.
    child = _artifact(root / ("pruned-" + "x" * 90), data, stage="prune", parent=str(parent),
                      seed=1)
    torch.set_num_threads(1)
    result = report([child], root / "out", measure=False, explain_images=2)
    assert result["sections"]
    return Path(result["path"])


def test_report_renders_in_chromium_without_errors_or_sideways_scrolling(page_file):
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=LAPTOP)
            problems: list[str] = []
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            page.goto(page_file.as_uri(), wait_until="load")
            assert problems == []
            ids = page.eval_on_selector_all("section", "els => els.map(e => e.id)")
            assert ids == ["variants", "training", "confusion", "calibration", "robustness",
                           "explanations"]
            for section in ids:
                assert page.locator(f"#{section} > h2").is_visible()
                page.click(f'nav.toc a[href="#{section}"]')  # the contents link reaches it
                assert page.locator(f"#{section} > h2").is_visible()
            # every picture decoded (a broken data: URI has no natural width)
            broken = page.eval_on_selector_all(
                "img", "els => els.filter(i => !i.complete || i.naturalWidth === 0).length")
            assert broken == 0
            assert page.locator("img").count() >= 8
            widths = page.evaluate("[document.scrollingElement.scrollWidth, innerWidth]")
            assert widths[0] <= widths[1], f"the page scrolls sideways: {widths}"
            wide = page.eval_on_selector_all(
                "img, table", "els => els.filter(e => e.getBoundingClientRect().right > "
                              "innerWidth).length")
            assert wide == 0
        finally:
            browser.close()
