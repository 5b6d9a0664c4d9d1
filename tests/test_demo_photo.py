"""'Start from a photo' and photos without a mask in the appearance mixture (tiny demo model, 128x64).

A stand-in parser returns a fixed parse, so the flow is checked exactly whatever the weights; one
test and the browser test run a real, *untrained* HumanParser saved to a temporary folder (passed
to ``app.py --parser``): what they check holds for any weights (the parse reaches the canvas and the
result exactly, the photo's codes are encoded with it, re-roll changes one class). The browser test
runs once more with the bundled model and parser, as a visitor gets them: the full-body check is on
and the predicted mask must agree with the photo's hand-drawn one.
"""

from __future__ import annotations

import re
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_demo_app import CHROMIUM, CHROMIUM_FLAGS, open_page, running_app
from test_demo_handlers import UPPER, blocky_labels, make_examples

from demo.handlers import REFINE_STEPS, DemoHandlers
from demo.references import load_references
from smis import SMISPipeline, SMISResult
from smis.hub import BUNDLED_MODEL_DIR
from smis.labels import letterbox_box, load_photo
from smis.parsing import BUNDLED_PARSER_DIR, HumanParser, NotAPersonError, ParseResult, ParserNet, get_parser_config

EXAMPLE_PHOTO = Path(__file__).resolve().parents[1] / "smis" / "assets" / "examples" / "ccp" / "images" / "0854.jpg"


class FakeParser:
    """Returns ``labels`` resized to the photo; raises NotAPersonError with ``problem`` if given."""

    def __init__(self, config, labels: np.ndarray, problem: str | None = None):
        self.class_names = tuple(config.class_names)
        self.palette = tuple(config.palette)
        self.labels, self.problem, self.calls, self.shapes = labels, problem, 0, []

    def predict(self, photo, check: bool = True) -> ParseResult:
        self.calls += 1
        h, w = np.asarray(photo).shape[:2]
        self.shapes.append((h, w))
        rows = np.arange(h) * self.labels.shape[0] // h
        cols = np.arange(w) * self.labels.shape[1] // w
        labels = self.labels[rows[:, None], cols[None, :]]
        res = ParseResult(labels, np.ones(labels.shape, np.float32), self.class_names, self.palette)
        if check and self.problem:
            raise NotAPersonError(self.problem, res)
        return res


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return SMISPipeline.from_pretrained(tiny_model_dir, device="cpu")


@pytest.fixture(scope="module")
def labels(pipe):
    return blocky_labels(pipe.config)


@pytest.fixture(scope="module")
def examples_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("examples")
    make_examples(folder)
    return folder


def handlers(pipe, examples_dir, tmp_path, parser=None, note=None) -> DemoHandlers:
    return DemoHandlers(pipe, load_references(examples_dir), tmp_path / "work", parser=parser, parser_note=note)


def boxed_parse(parser, rgb: np.ndarray, box) -> np.ndarray:
    """What the demo puts on the canvas: the parse of the photo's box, the letterbox bands background."""
    top, left, nh, nw = box
    out = np.zeros(rgb.shape[:2], np.int64)
    out[top:top + nh, left:left + nw] = parser.predict(rgb[top:top + nh, left:left + nw]).labels
    return out


def photo_file(folder, name="person.jpg", size=(300, 600), mode="RGB", orientation=None) -> str:
    """A noise photo; the default size has the tiny model's aspect (1:2), so it fills the frame."""
    rng = np.random.default_rng(0)
    arr = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    img = Image.fromarray(arr).convert(mode)
    path = folder / name
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    img.save(path, exif=exif) if path.suffix == ".jpg" else img.save(path)
    return str(path)


def test_start_from_photo_parses_encodes_and_resynthesises(pipe, labels, examples_dir, tmp_path):
    fake = FakeParser(pipe.config, labels)
    h = handlers(pipe, examples_dir, tmp_path, fake)
    photo = photo_file(tmp_path)
    blank = h.canvas.to_editor(h.canvas.blank_labels())
    editor, history, label_map, view, image, file, strip, cls, locked, status = h.start_from_photo(
        photo, blank, [], [])
    assert (h.canvas.to_labels(editor) == labels).all() and len(history) == 1  # the old canvas can come back
    k, cfg = h.files.display_scale, pipe.config
    assert view.size == (3 * cfg.width * k, cfg.height * k)  # photo | mask | re-synthesis
    res = SMISResult.load(file)
    rgb = pipe.prepare_photo(photo)
    assert (res.labels == labels).all() and res.codes == pipe.encode(rgb, labels, refine=REFINE_STEPS)
    assert "parse + encode + generate" in status and len(strip) == 1
    # every existing action works from here: re-roll one class, lock, mix, morph, same codes / new mask
    out = h.reroll(file, "upper clothes", [], strip)
    new = SMISResult.load(out[1])
    assert not np.array_equal(new.codes.values[UPPER], res.codes.values[UPPER])
    same = [c for c in range(cfg.num_classes) if c != UPPER]
    assert np.array_equal(new.codes.values[same], res.codes.values[same])
    out = h.reroll_unlocked(file, ["skin", "background"], strip)
    kept = SMISResult.load(out[1]).codes.values
    assert np.array_equal(kept[[0, 2]], res.codes.values[[0, 2]])
    sources = ["keep"] * cfg.num_classes
    sources[UPPER] = "ref:ex0"
    mixed = SMISResult.load(h.mix(file, None, None, strip, None, [], *sources)[1])
    assert np.array_equal(mixed.codes.values[UPPER], h.references.codes("ex0").values[UPPER])
    frames = h.morph(file, "current", "ref:ex1", 3, strip)[0]
    assert len(frames) == 3
    edited = labels.copy()
    edited[edited == UPPER] = 4  # upper clothes -> dress, same codes
    out = h.apply_mask_edit(h.canvas.to_editor(edited), file, strip)
    assert SMISResult.load(out[2]).codes == res.codes


def test_not_a_person_keeps_the_result_and_puts_the_parse_on_the_canvas(pipe, labels, examples_dir, tmp_path):
    fake = FakeParser(pipe.config, labels, problem="No person found in the photo: only 1.0% of it looks like a person.")
    h = handlers(pipe, examples_dir, tmp_path, fake)
    before = np.zeros_like(labels)
    before[10:20, 10:20] = 1
    with pytest.warns(UserWarning, match="No person found in the photo.*fix it with the brushes"):
        out = h.start_from_photo(photo_file(tmp_path), h.canvas.to_editor(before), [], ["x.png"])
    editor, history, _, view, *result = out
    assert (h.canvas.to_labels(editor) == labels).all()
    assert (history[-1] == before).all()  # 'Undo fill / upload' brings the old canvas back
    assert all(r == {"__type__": "update"} for r in result[:5])  # the current result, file and strip untouched
    assert view is not None
    # the visitor fixes the mask, then re-synthesises with it: the photo's codes on the canvas mask
    label_map, view, image, file, *_ = h.resynthesise_photo(photo_file(tmp_path), h.canvas.to_editor(labels), [])
    assert (SMISResult.load(file).labels == labels).all()


def test_without_a_parser_the_demo_says_so_and_hand_drawn_masks_work(pipe, labels, examples_dir, tmp_path):
    h = handlers(pipe, examples_dir, tmp_path, None, "The trained human parser is not bundled yet")
    assert "not bundled yet" in h.parser_markdown()
    photo = photo_file(tmp_path)
    with pytest.warns(UserWarning, match="No mask predicted: the trained human parser is not bundled yet"):
        editor, history, label_map, view, *result = h.start_from_photo(photo, h.canvas.to_editor(labels), [], [])
    assert editor == {"__type__": "update"} and result[-1].startswith("**Backend**")
    out = h.resynthesise_photo(photo, h.canvas.to_editor(labels), [])
    assert (SMISResult.load(out[3]).labels == labels).all()
    first = out[3]
    sources = ["keep"] * pipe.config.num_classes
    sources[UPPER] = "user"
    with pytest.raises(Exception, match="Upload your photo's mask too: the trained human parser is not bundled"):
        h.mix(first, photo, None, [], None, [], *sources)
    assert h.user_reference(photo, None) is None  # a photo alone is only checked


def test_photo_alone_in_the_mixture_gets_a_predicted_mask(pipe, labels, examples_dir, tmp_path):
    fake = FakeParser(pipe.config, labels)
    h = handlers(pipe, examples_dir, tmp_path, fake)
    photo = photo_file(tmp_path, "ref.png", size=(200, 200), mode="RGBA")
    preview = h.user_reference(photo, None)
    assert preview.size == (2 * pipe.config.width, pipe.config.height)
    first = h.generate(h.canvas.to_editor(labels), 3, False, [])[3]
    sources = ["keep"] * pipe.config.num_classes
    sources[UPPER] = "user"
    mixed = SMISResult.load(h.mix(first, photo, None, [], None, [], *sources)[1])
    rgb = pipe.prepare_photo(photo)
    want = pipe.encode(rgb, boxed_parse(fake, rgb, letterbox_box((200, 200), pipe.config.height, pipe.config.width)),
                       refine=REFINE_STEPS)
    assert np.array_equal(mixed.codes.values[UPPER], want.values[UPPER])
    # photo + mask still works (the mask at the photo's size, letterboxed with it)
    mask = tmp_path / "ref-mask.png"
    Image.fromarray(np.full((200, 200), UPPER, np.uint8)).save(mask)
    assert h.user_reference(photo, str(mask)).size == preview.size
    fake.problem = "No person found in the photo: only 0.0% of it looks like a person."
    with pytest.raises(Exception, match="No person found in the photo.*upload its mask too"):
        h.mix(first, photo, None, [], None, [], *sources)
    with pytest.warns(UserWarning, match="No person found"):
        assert h.user_reference(photo, None) is not None  # the preview shows the parse anyway


@pytest.mark.parametrize("name, size, mode, orientation", [
    ("wide.jpg", (1600, 300), "RGB", None),    # any aspect: letterboxed, not stretched
    ("grey.jpg", (200, 400), "L", None),
    ("rgba.png", (120, 300), "RGBA", None),
    ("rotated.jpg", (600, 200), "RGB", 6),     # stored landscape, shown portrait (bands left, right)
])
def test_odd_photos_start_the_flow(pipe, labels, examples_dir, tmp_path, name, size, mode, orientation):
    h = handlers(pipe, examples_dir, tmp_path, FakeParser(pipe.config, labels))
    path = photo_file(tmp_path, name, size, mode, orientation)
    out = h.start_from_photo(path, h.canvas.to_editor(labels), [], [])
    assert SMISResult.load(out[5]).image.size == (pipe.config.width, pipe.config.height)
    if orientation == 6:  # the parser saw the photo upright: a portrait, filling the model's height
        rgb = pipe.prepare_photo(path)
        band = (rgb == rgb[0, 0]).all(2).all(0)
        assert band[:5].all() and not band[pipe.config.width // 2]


def test_bad_photo_uploads_are_refused(pipe, labels, examples_dir, tmp_path):
    h = handlers(pipe, examples_dir, tmp_path, FakeParser(pipe.config, labels))
    gif = tmp_path / "anim.gif"
    Image.new("P", (20, 20)).save(gif)
    for path, message in ((gif, "GIF"), (tmp_path / "gone.jpg", "gone from the server")):
        with pytest.raises(Exception, match=message):
            h.start_from_photo(str(path), h.canvas.to_editor(labels), [], [])
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really")
    with pytest.raises(Exception, match="not an image file"):
        h.start_from_photo(str(bad), h.canvas.to_editor(labels), [], [])
    with pytest.raises(Exception, match="Upload a photo"):
        h.resynthesise_photo(None, h.canvas.to_editor(labels), [])


def test_the_letterbox_bands_are_background_never_parsed(pipe, labels, examples_dir, tmp_path):
    """Only the photo's box reaches the parser; the bands of a wide (or tall) photo stay background,
    whatever the parser would have guessed there (a stand-in that sees a dress everywhere)."""
    dress = np.full_like(labels, 4)
    for size in ((600, 200), (100, 600)):  # wide: bands above and below; tall: left and right
        fake = FakeParser(pipe.config, dress)
        h = handlers(pipe, examples_dir, tmp_path, fake)
        editor, *_ = h.start_from_photo(photo_file(tmp_path, size=size), h.canvas.to_editor(labels), [], [])
        top, left, nh, nw = letterbox_box(size[::-1], pipe.config.height, pipe.config.width)
        assert (nh, nw) != (pipe.config.height, pipe.config.width) and fake.shapes == [(nh, nw)]
        canvas = h.canvas.to_labels(editor)
        inside = np.zeros(canvas.shape, bool)
        inside[top:top + nh, left:left + nw] = True
        assert (canvas[inside] == 4).all() and (canvas[~inside] == 0).all()


@pytest.fixture(scope="module")
def shipped_parser():
    return HumanParser.from_pretrained(BUNDLED_PARSER_DIR, device="cpu")


def _crop_file(folder, name: str, rows: slice, pad: int = 0) -> str:
    """The shipped CCP photo 0880 (full body), cut to ``rows``, padded left and right with grey."""
    photo = load_photo(EXAMPLE_PHOTO.with_name("0880.jpg"))[rows]
    photo = np.pad(photo, ((0, 0), (pad, pad), (0, 0)), constant_values=128)
    Image.fromarray(photo).save(folder / name, quality=95)
    return str(folder / name)


def test_a_person_cut_off_by_the_frame_is_refused_and_bands_stay_background(pipe, examples_dir, tmp_path,
                                                                            shipped_parser):
    """The shipped parser: a full-body photo goes through; the same photo without its lower 40% (no feet)
    is refused with a message that says what to upload; a wide photo's bands hold only background."""
    h = handlers(pipe, examples_dir, tmp_path, shipped_parser)
    blank = h.canvas.to_editor(h.canvas.blank_labels())
    out = h.start_from_photo(_crop_file(tmp_path, "full.jpg", slice(None)), blank, [], [])
    assert "parse + encode + generate" in out[-1]
    with pytest.warns(UserWarning, match="The feet are cut off by the bottom of the photo.*whole person, head to "
                      "feet.*fix it with the brushes"):
        out = h.start_from_photo(_crop_file(tmp_path, "no-feet.jpg", slice(0, 230)), blank, [], ["x.png"])
    assert all(r == {"__type__": "update"} for r in out[4:9])  # the current result is left as it was
    with warnings.catch_warnings():  # the person is small in a wide photo: refused or not, no phantoms
        warnings.simplefilter("ignore", UserWarning)
        editor, *_ = h.start_from_photo(_crop_file(tmp_path, "wide.jpg", slice(None), pad=256), blank, [], [])
    top, left, nh, nw = letterbox_box((384, 768), pipe.config.height, pipe.config.width)
    canvas = h.canvas.to_labels(editor)
    assert top > 0 and (canvas[:top] == 0).all() and (canvas[top + nh:] == 0).all()
    assert (canvas[top:top + nh] != 0).any()


def test_a_parser_for_other_classes_is_not_used(pipe, labels, examples_dir, tmp_path):
    fake = FakeParser(pipe.config, labels)
    fake.class_names = ("background", "person")
    h = handlers(pipe, examples_dir, tmp_path, fake)
    assert h.parser is None and "not this model's" in h.parser_markdown()


def test_real_untrained_parser_end_to_end(pipe, examples_dir, tmp_path):
    """An untrained HumanParser: the mask is noise (either branch may happen), the flow must hold."""
    torch.manual_seed(0)
    ParserNet(get_parser_config("tiny", height=128, width=64)).save_pretrained(tmp_path / "parser")
    parser = HumanParser.from_pretrained(tmp_path / "parser", device="cpu", backend="torch")
    h = handlers(pipe, examples_dir, tmp_path, parser)
    photo = str(EXAMPLE_PHOTO)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out = h.start_from_photo(photo, h.canvas.to_editor(h.canvas.blank_labels()), [], [])
    assert h.canvas.to_labels(out[0]).shape == (pipe.config.height, pipe.config.width)


def test_app_load_parser(tmp_path, monkeypatch):
    from demo import launch
    from smis.hub import CheckpointError

    monkeypatch.setattr(launch, "BUNDLED_PARSER_DIR", tmp_path / "absent")
    parser, note = launch.load_parser(None)
    assert parser is None and "not bundled yet" in note
    assert launch.load_parser("none")[0] is None
    with pytest.raises(CheckpointError):
        launch.load_parser(str(tmp_path / "nothing-here"))
    torch.manual_seed(0)
    ParserNet(get_parser_config("tiny")).save_pretrained(tmp_path / "p")
    parser, note = launch.load_parser(str(tmp_path / "p"), "cpu")
    assert note is None and parser.class_names == get_parser_config("tiny").class_names


# -- the browser ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def untrained_parser_dir(tmp_path_factory):
    """A tiny untrained parser at the tiny model's size, with the full-body check switched off
    (an untrained parser's noise would fail it at random)."""
    folder = tmp_path_factory.mktemp("parser")
    torch.manual_seed(0)
    cfg = get_parser_config("tiny", height=128, width=64, min_foreground=0.0, min_confidence=0.0,
                            min_person_height=0.0, min_feet=0.0, max_bottom_cut=1.0, max_top_cut=1.0,
                            min_heads_tall=0.0)
    net = ParserNet(cfg)
    with torch.no_grad():  # break ties between the near-uniform class scores of an untrained head
        net.classifier.bias.copy_(torch.linspace(0.0, 0.02, cfg.num_classes))
    net.save_pretrained(folder)
    return folder


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)")
@pytest.mark.parametrize("setup", ["untrained", "bundled"])
def test_browser_start_from_photo_reroll_download(setup, tiny_model_dir, untrained_parser_dir, tmp_path):
    """Upload a shipped CCP photo: its parse lands on the canvas and in the result, the photo's codes are
    encoded with it; re-roll the chosen class; download the PNG. ``untrained``: a tiny model and an
    untrained parser (the flow, exactly); ``bundled``: what a visitor gets, the shipped model and parser
    (the full-body check on, and the mask must look like the photo's real one)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    model_dir, parser_dir = ((tiny_model_dir, untrained_parser_dir) if setup == "untrained"
                             else (BUNDLED_MODEL_DIR, BUNDLED_PARSER_DIR))
    with running_app(model_dir, tmp_path, "--parser", str(parser_dir)) as app, \
            sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = open_page(browser, app["url"], settle_ms=0)
            sync_api.expect(page.locator("#photo-help")).to_contain_text("Upload a full-body photo")
            label_map = page.locator("#label-map img").first
            before = label_map.get_attribute("src")
            page.locator("#start-photo input[type=file]").set_input_files(str(EXAMPLE_PHOTO))
            link = page.locator("#result-file a[href]").first
            sync_api.expect(link).to_have_attribute("download", re.compile("photo-0854"), timeout=90_000)
            page.wait_for_function("([el, src]) => el.getAttribute('src') !== src",
                                   arg=[label_map.element_handle(), before], timeout=30_000)
            sync_api.expect(page.locator("#photo-view img").first).to_be_visible()
            first_url = link.get_attribute("href")
            chosen = page.locator("#reroll-class input").input_value()
            page.click("#reroll")
            sync_api.expect(link).to_have_attribute("download", re.compile("re-roll-"), timeout=90_000)
            second_url = link.get_attribute("href")
            page.screenshot(path=str(tmp_path / "photo.png"))
        finally:
            browser.close()
        with urllib.request.urlopen(first_url) as r:  # the downloads, while the server runs
            first = SMISResult.load(r.read())
        with urllib.request.urlopen(second_url) as r:
            second = SMISResult.load(r.read())
    # the parse in the result is the parser's on the photo's box in the letterboxed photo (bands:
    # background), and the codes are the photo's
    pipe = SMISPipeline.from_pretrained(model_dir, device="cpu")
    parser = HumanParser.from_pretrained(parser_dir, device="cpu", backend="torch")
    rgb = pipe.prepare_photo(str(EXAMPLE_PHOTO))
    expected = boxed_parse(parser, rgb, letterbox_box(load_photo(EXAMPLE_PHOTO).shape[:2], *rgb.shape[:2]))
    assert (first.labels == expected).mean() > 0.99
    if setup == "bundled":  # a real parse: it agrees with the photo's hand-drawn mask
        truth = pipe.prepare_mask(EXAMPLE_PHOTO.parents[1] / "labels" / "0854.png")
        assert (first.labels == truth).mean() > 0.85
    np.testing.assert_allclose(first.codes.values, pipe.encode(rgb, first.labels, refine=REFINE_STEPS).values,
                               atol=1e-4)
    np.testing.assert_array_equal(second.labels, first.labels)
    cid = pipe.config.class_id(chosen)
    changed = [c for c in range(10) if not np.array_equal(first.codes.values[c], second.codes.values[c])]
    assert changed == [cid]
