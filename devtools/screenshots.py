"""Take the screenshots in docs/screenshots/ from a running demo (headless Chromium + Playwright).

    python app.py --port 7860 &            # the untrained fallback, or --model <folder>
    python -m devtools.screenshots --url http://127.0.0.1:7860/ --out docs/screenshots

The first two are the first screen as a visitor gets it: a 1280x800 desktop after clicking an example (nothing
scrolled), and a 390x844 phone after Re-roll (the page brings the result back into view). The others walk
through the features on a 1400x1050 page.

Uses Debian's Chromium (``apt-get install chromium``), not ``playwright install``.
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

from demo.references import DEFAULT_EXAMPLES_DIR

logger = logging.getLogger(__name__)

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 120_000


EXAMPLE_PHOTO = DEFAULT_EXAMPLES_DIR / "images" / "0854.jpg"


def small_png(path: Path) -> None:
    """Rewrite a screenshot as an optimised RGB PNG. Full colour: the pictures are what a reader judges
    the model by, and a 256-colour palette dithers photos into patches the model did not draw."""
    from PIL import Image

    with Image.open(path) as im:
        rgb = im.convert("RGB")
    rgb.save(path, optimize=True)


def _wait_for_file(page, sync_api, pattern: str) -> None:
    link = page.locator("#result-file a[href]").first
    sync_api.expect(link).to_have_attribute("download", re.compile(pattern), timeout=TIMEOUT_MS)


def _stroke(page, x0: float, y0: float, x1: float, y1: float) -> None:
    """A stroke in canvas fractions (0..1)."""
    box = page.locator("#canvas canvas").first.bounding_box()
    page.mouse.move(box["x"] + box["width"] * x0, box["y"] + box["height"] * y0)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * x1, box["y"] + box["height"] * y1, steps=20)
    page.mouse.up()


def _pick_colour(page, index: int) -> None:
    """The brush class selector sets the canvas' colour (and leaves its popup closed)."""
    page.locator("#brush-class label").nth(index).click()
    page.wait_for_timeout(300)


def _select(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.locator(f"#{elem_id}").get_by_role("option", name=option, exact=True).click()


def _example(page, sync_api, index: int = 3) -> None:
    """Click an example mask (3: CCP 0857, top, trousers, bag) and wait for its result."""
    page.locator("#examples .gallery-item").nth(index).click()
    _wait_for_file(page, sync_api, "example")
    page.wait_for_function("document.querySelector('#canvas [data-testid=status-tracker]')?.classList.contains('hide')",
                           timeout=TIMEOUT_MS)  # the canvas has drawn the example's mask


def _first_screen(browser, url: str, sync_api, shot) -> None:
    """The first screen on a desktop (after an example) and on a phone (after Re-roll, the result in view)."""
    for name, size in (("00-first-screen-desktop", (1280, 800)), ("00-first-screen-phone", (390, 844))):
        page = browser.new_page(viewport={"width": size[0], "height": size[1]})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        page.locator("#canvas canvas").first.wait_for()
        page.wait_for_timeout(1500)
        _example(page, sync_api)
        if size[0] < 640:
            page.locator("#reroll").evaluate("e => e.scrollIntoView({block: 'start'})")
            page.click("#reroll")
            _wait_for_file(page, sync_api, "re-roll")
            page.wait_for_timeout(1000)  # the page scrolls the result back into view
        shot(page, name)
        page.close()


def take(url: str, out: Path, chromium: str = "/usr/bin/chromium") -> list[Path]:
    from playwright import sync_api  # dev-only (requirements-dev.txt), with Debian's Chromium

    out.mkdir(parents=True, exist_ok=True)
    shots: list[Path] = []

    def shot(page, name: str, selector: str | None = None, full: bool = False) -> None:
        path = out / f"{name}.png"
        page.wait_for_timeout(800)
        if selector:
            page.locator(selector).first.screenshot(path=str(path))
        else:
            page.screenshot(path=str(path), full_page=full)
        small_png(path)
        shots.append(path)
        logger.info("saved %s", path)

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        _first_screen(browser, url, sync_api, shot)
        page = browser.new_page(viewport={"width": 1400, "height": 1050})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        page.locator("#canvas canvas").first.wait_for()
        page.wait_for_timeout(1500)

        # 1. draw: a figure with a few strokes, then generate
        for colour, stroke in ((1, (0.42, 0.12, 0.58, 0.12)), (2, (0.5, 0.17, 0.5, 0.24)),
                               (3, (0.36, 0.35, 0.64, 0.36)), (3, (0.36, 0.43, 0.64, 0.44)),
                               (5, (0.42, 0.55, 0.42, 0.85)), (5, (0.58, 0.55, 0.58, 0.85)),
                               (7, (0.38, 0.9, 0.62, 0.9))):
            _pick_colour(page, colour)
            _stroke(page, *stroke)
        page.click("#generate")
        _wait_for_file(page, sync_api, "generate")
        page.evaluate("window.scrollTo(0, 0)")
        shot(page, "01-draw-and-generate")

        # 2. start from an example, re-roll one class, lock one, re-roll the unlocked
        _example(page, sync_api)
        _select(page, "reroll-class", "upper clothes")
        page.click("#reroll")
        _wait_for_file(page, sync_api, "re-roll-upper-clothes")
        page.locator("#locked label", has_text="skin").first.click()
        page.locator("#locked label", has_text="hair").first.click()
        page.click("#reroll-unlocked")
        _wait_for_file(page, sync_api, "re-roll-unlocked")
        page.evaluate("window.scrollTo(0, 0)")
        shot(page, "02-example-reroll-lock")

        # 3. fill: click a region of the label map
        _select(page, "fill-class", "dress")
        label_map = page.locator("#label-map img").first
        label_map.scroll_into_view_if_needed()
        box = label_map.bounding_box()
        label_map.click(position={"x": box["width"] * 0.5, "y": box["height"] * 0.62})
        page.wait_for_timeout(2500)
        shot(page, "03-fill", "#fill-panel")

        # 4. appearance mixture: upper clothes from one reference, hair from another
        page.get_by_role("tab", name="Appearance mixture").click()
        _select(page, "mix-upper-clothes", "example 0883")
        _select(page, "mix-hair", "example 0854")
        page.click("#mix")
        _wait_for_file(page, sync_api, "mix")
        shot(page, "04-appearance-mixture", "#features")

        # 5. style morphing: current result -> a reference, scrub, GIF
        page.get_by_role("tab", name="Style morphing").click()
        _select(page, "morph-b", "example 0880")
        page.click("#morph")
        sync_api.expect(page.locator("#morph-gif a[href]").first).to_have_attribute(
            "download", re.compile("gif"), timeout=TIMEOUT_MS)
        page.locator("#morph-scrub input[type=range]").first.fill("5")
        shot(page, "05-style-morphing", "#features")

        # 6. semantic manipulation: the result's mask on the canvas, a bag painted, same codes
        page.evaluate("window.scrollTo(0, 0)")
        page.click("#load-result-mask")
        page.wait_for_timeout(3000)
        _pick_colour(page, 8)
        _stroke(page, 0.78, 0.45, 0.78, 0.58)
        _stroke(page, 0.82, 0.45, 0.82, 0.58)
        page.click("#apply-mask-edit")
        _wait_for_file(page, sync_api, "mask-edit")
        page.evaluate("window.scrollTo(0, 0)")
        shot(page, "06-same-codes-new-mask")

        # 7. a bad upload: refused with a message, the app keeps running
        bad = out / "_corrupt.png"
        bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not an image" * 20)
        page.locator("#mask-upload input[type=file]").set_input_files(str(bad))
        page.locator(".toast-body").first.wait_for()
        page.wait_for_timeout(1500)
        page.evaluate("window.scrollTo(0, 0)")
        shot(page, "07-bad-upload-error")
        bad.unlink()

        # 8. start from a photo: the parser's mask on the canvas, photo | mask | re-synthesis
        page.locator("#start-photo input[type=file]").set_input_files(str(EXAMPLE_PHOTO))
        _wait_for_file(page, sync_api, "photo-0854")
        page.locator("#start-from-photo").first.scroll_into_view_if_needed()
        shot(page, "08-start-from-photo", "#start-from-photo")
        browser.close()
    return shots


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:7860/")
    p.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    p.add_argument("--chromium", default="/usr/bin/chromium")
    args = p.parse_args(argv)
    take(args.url, args.out, args.chromium)


if __name__ == "__main__":
    main()
