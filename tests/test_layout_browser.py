"""The page's layout in Chromium (issue 29, "first screen"): what a visitor sees without scrolling, and where
the page goes after a click.

- 1280x800: the canvas, the brush class, Generate, the seed, Re-roll, the result and the first example mask
  are all inside the viewport, side by side; the status line is right under Generate.
- 390x844 (a phone): after Re-roll (its button is below the result) the result is scrolled back into view;
  every feature tab shows (no "…" menu); the reference gallery clips no thumbnail and no caption.
- A too-big file (over ``max_file_size``, refused in the browser) leaves each of the five upload boxes as it
  was: its label, its drop area, and a click opens the file picker.
- A result's file name keeps ".png" at its end; re-opening a result PNG puts its seed in the Seed box.
- With a click running on the server, a second visitor's click shows its queue position and the time so far
  on the status line under Generate.

One app for the module, in this process: the tiny model on PyTorch, everything on the server (the page's own
inference is tests/test_browser_inference.py), one model call at a time (the CPU default), uploads up to 1 MB.
Skipped without Debian's /usr/bin/chromium.
"""

from __future__ import annotations

import os
import re
import time
import urllib.request
from pathlib import Path

import pytest
from test_demo_app import CHROMIUM, CHROMIUM_FLAGS, free_port, open_page
from test_demo_handlers import make_examples

from smis import SMISResult

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                 reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)")]

MAX_FILE_SIZE = "1mb"
UPLOAD_BOXES = ("start-photo", "reopen", "mask-upload", "user-photo", "user-mask")  # elem_classes "upload-box"


class SlowModel:
    """Makes the server backend's generate take ``delay`` seconds longer (0: as it is)."""

    def __init__(self, backend):
        self.delay = 0.0
        fn = backend.generate

        def generate(*args, **kwargs):
            time.sleep(self.delay)
            return fn(*args, **kwargs)
        backend.generate = generate


@pytest.fixture(scope="module")
def app(tiny_model_dir, tmp_path_factory):
    from demo import CSS
    from demo.launch import app_kwargs, create_app

    tmp = tmp_path_factory.mktemp("layout-app")
    make_examples(tmp / "examples", n=6)  # six references, as shipped
    saved = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(tmp / "gradio")
    demo = create_app(str(tiny_model_dir), backend="torch", device="cpu", parser="none", browser="off",
                      examples=str(tmp / "examples"), cache_examples=False, concurrency=1)
    slow = SlowModel(demo.handlers.pipe.backend)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, css=CSS,
                ssr_mode=False, max_file_size=MAX_FILE_SIZE, app_kwargs=app_kwargs(demo))
    try:
        yield {"url": f"http://127.0.0.1:{port}/", "slow": slow, "tmp": tmp}
    finally:
        demo.close()
        if saved is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = saved


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


def box(page, selector: str) -> dict:
    b = page.locator(selector).first.bounding_box()
    assert b is not None, f"{selector} is not shown"
    return b


def in_viewport(page, selector: str) -> bool:
    """The whole element is inside the viewport (as the page is scrolled now)."""
    return page.locator(selector).first.evaluate(
        "e => { const r = e.getBoundingClientRect(); return r.height > 0 && r.top >= 0 && r.left >= 0"
        " && r.bottom <= innerHeight && r.right <= innerWidth; }")


def wait_for_result(page, pattern: str) -> str:
    from playwright.sync_api import expect

    link = page.locator("#result-file a[href]").first
    expect(link).to_have_attribute("download", re.compile(pattern), timeout=60_000)
    return link.get_attribute("href")


def test_first_screen_on_a_desktop(app, browser, tmp_path):
    """1280x800: canvas, controls, result and examples above the fold and side by side; no jump when the result
    is in view; a re-opened result's seed; a long file name ends in '.png'; too-big files leave the boxes usable."""
    from playwright.sync_api import expect

    page = open_page(browser, app["url"], 1280, 800, settle_ms=300)
    try:
        for selector in ("#canvas canvas", "#brush-class", "#generate", "#seed input", "#randomize", "#status",
                         "#reroll", "#reroll-class", "#result", "#examples .gallery-item", "#start-photo",
                         "#reopen"):
            assert in_viewport(page, selector), (selector, box(page, selector))
        canvas, generate, result, status = (box(page, s) for s in ("#canvas canvas", "#generate", "#result",
                                                                   "#status"))
        reroll = box(page, "#reroll")
        assert canvas["x"] + canvas["width"] <= generate["x"] and result["x"] + result["width"] <= reroll["x"]
        assert 0 <= status["y"] - (generate["y"] + generate["height"]) < 40 and abs(status["x"] - generate["x"]) < 2

        page.locator("#examples .gallery-item").first.click()
        url = wait_for_result(page, "example")
        assert in_viewport(page, "#result img") and page.evaluate("scrollY") == 0  # in view: no scrolling

        # too big: refused in the browser with a message; the box keeps its label and drop area and still opens
        # the file picker
        big = tmp_path / "big.png"
        big.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(1_200_000))
        for elem_id in UPLOAD_BOXES:
            if elem_id == "user-photo":
                page.get_by_role("tab", name="Appearance mixture").click()  # the mixture's two boxes
            upload = page.locator(f"#{elem_id}")
            upload.scroll_into_view_if_needed()
            upload.locator("input[type=file]").set_input_files(str(big))
            expect(page.locator(".toast-body").last).to_contain_text("maximum allowed size", timeout=10_000)
            expect(upload.locator("[data-testid=status-tracker] .error")).to_have_count(0, timeout=5_000)
            expect(upload).to_contain_text("Drop File Here")
            with page.expect_file_chooser(timeout=5_000):
                upload.locator("button.upload-container").click()
            for close in page.locator(".toast-close").all():
                close.click()
            expect(page.locator(".toast-body")).to_have_count(0)
        page.evaluate("window.scrollTo(0, 0)")

        # re-opening a result gives its seed back (and random off), after another seed was typed
        path = tmp_path / "smis-a-rather-long-result-name-to-wrap-on-a-phone-seed0.png"
        with urllib.request.urlopen(url, timeout=30) as r:
            path.write_bytes(r.read())
        seed = SMISResult.load(path).seed
        page.locator("#seed input").fill("4321")
        page.locator("#reopen input[type=file]").set_input_files(str(path))
        wait_for_result(page, "re-opened")
        expect(page.locator("#seed input")).to_have_value(str(seed))
        assert not page.locator("#randomize input").is_checked()
    finally:
        page.close()


def test_a_phone_keeps_the_result_in_view(app, browser, tmp_path):
    """390x844: the status line under Generate, the result back in view after Re-roll, every tab shown, the
    reference gallery unclipped, '.png' at the end of a wrapped file name."""
    page = open_page(browser, app["url"], 390, 844, settle_ms=300)
    try:
        page.locator("#generate").scroll_into_view_if_needed()
        page.click("#generate")
        wait_for_result(page, "generate")
        generate, status = box(page, "#generate"), box(page, "#status")
        assert 0 <= status["y"] - (generate["y"] + generate["height"]) < 40
        page.locator("#reroll").evaluate("e => e.scrollIntoView({block: 'start'})")
        assert not in_viewport(page, "#result")  # Re-roll is below the result
        page.click("#reroll")
        wait_for_result(page, "re-roll")
        # the page scrolls (smoothly) until the result, and the status line above it, are in view
        page.wait_for_function("() => { const r = document.querySelector('#result img').getBoundingClientRect(),"
                               " s = document.querySelector('#status').getBoundingClientRect();"
                               " return s.top >= 0 && r.top >= s.bottom && r.bottom <= innerHeight; }", timeout=5_000)

        # the file name: wrapped in its stem, '.png' whole (one line) after its last line's start, in the cell
        lines, after, one_line, inside = page.locator("#result-file td.filename").evaluate(
            "td => { const s = [...td.querySelector('.stem').getClientRects()], e = td.querySelector('.ext');"
            " const r = e.getBoundingClientRect(), cell = td.getBoundingClientRect(), last = s[s.length - 1];"
            " return [s.length, r.top >= last.top - 1 && (r.top > last.top + 1 || r.left >= last.right - 1),"
            " e.getClientRects().length === 1, r.left >= cell.left && r.right <= cell.right + 1]; }")
        assert lines >= 2 and after and one_line and inside, (lines, after, one_line, inside)

        tabs = page.locator("#features [role=tab]")
        assert tabs.all_text_contents() == ["Appearance mixture", "Style morphing", "Edit a result's mask", "About"]
        for i in range(4):
            tab = box(page, f"#features [role=tab] >> nth={i}")
            assert tab["x"] >= 0 and tab["x"] + tab["width"] <= 390, tab
        assert not page.locator("#features button[aria-label='More tabs']").is_visible()

        gallery = page.locator("#references")
        gallery.scroll_into_view_if_needed()
        right = box(page, "#references")["x"] + box(page, "#references")["width"]
        items = page.locator("#references .gallery-item")
        assert items.count() == 6
        assert all(items.nth(i).bounding_box()["x"] + items.nth(i).bounding_box()["width"] <= right + 1
                   for i in range(6))
        captions = page.locator("#references .caption-label")
        assert captions.evaluate_all("els => els.filter(e => e.scrollWidth > e.clientWidth + 1).length") == 0
        assert all(re.fullmatch(r"example ex\d", c.strip()) for c in captions.all_text_contents())
    finally:
        page.close()


def test_a_waiting_click_shows_its_queue_position_under_generate(app, browser):
    """While one visitor's Generate runs on the server, another's waits: its status line, right under its
    Generate button, says where it is in the queue, the time so far and the estimate (Gradio's, from the
    calls served before)."""
    from playwright.sync_api import expect

    first, second = (open_page(browser, app["url"], 1280, 800, settle_ms=300) for _ in range(2))
    try:
        first.click("#generate")  # one call served: the queue knows how long a call takes
        before = wait_for_result(first, "generate")
        app["slow"].delay = 2.5
        first.click("#generate")
        first.wait_for_timeout(300)
        second.click("#generate")
        status = second.locator("#status")
        expect(status).to_contain_text(re.compile(r"queue: 1/1 \| [\d.]+/[\d.]+s"), timeout=8_000)
        text = status.inner_text()
        assert status.locator(".progress-text").evaluate(  # shown inside the line, on top (not clipped off)
            "t => { const r = t.getBoundingClientRect(), s = t.closest('#status').getBoundingClientRect();"
            " return document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2) === t"
            " && r.top >= s.top && r.bottom <= s.bottom; }")
        generate, line = box(second, "#generate"), box(second, "#status")
        assert 0 <= line["y"] - (generate["y"] + generate["height"]) < 40, (generate, line)
        first.wait_for_function("(old) => document.querySelector('#result-file a[href]')?.href !== old", arg=before,
                                timeout=30_000)
        wait_for_result(second, "generate")
    finally:
        app["slow"].delay = 0.0
        first.close()
        second.close()
    print(text.splitlines()[0])
