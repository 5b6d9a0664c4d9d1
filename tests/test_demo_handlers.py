"""The demo's handlers (UI values <-> pipeline) on the tiny demo model (128 high x 64 wide)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from demo.handlers import REFINE_STEPS, DemoHandlers
from demo.references import DEFAULT_EXAMPLES_DIR, load_references, starter_masks
from demo.results import MAX_STRIP
from demo.uploads import MASK, check_file
from smis import ClassCodes, SMISPipeline, SMISResult, get_config

UPPER, SKIN, HAIR, LOWER = 3, 2, 1, 5


def make_examples(folder, n: int = 2, seed: int = 0) -> list[dict]:
    """Reference photos in the shipped layout: photo JPEG 256x384 + class-id PNG + examples.json."""
    cfg = get_config("demo")
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    masks = list(starter_masks(cfg).values())
    for i in range(n):
        mask = np.roll(masks[i % len(masks)], 3 * i, axis=1)
        colours = rng.integers(30, 230, size=(cfg.num_classes, 3))
        photo = np.clip(colours[mask] + rng.normal(0, 10, mask.shape + (3,)), 0, 255).astype(np.uint8)
        Image.fromarray(photo).save(folder / f"ex{i}.jpg", quality=90)
        Image.fromarray(mask.astype(np.uint8)).save(folder / f"ex{i}.png")
        entries.append({"id": f"ex{i}", "photo": f"ex{i}.jpg", "mask": f"ex{i}.png",
                        "classes": [cfg.class_names[c] for c in np.unique(mask)]})
    (folder / "examples.json").write_text(json.dumps({"examples": entries}, indent=1))
    return entries


def blocky_labels(cfg, seed: int = 0) -> np.ndarray:
    """Background with an upper-clothes torso, skin head, lower-clothes legs (model size)."""
    labels = np.zeros((cfg.height, cfg.width), np.int64)
    h, w = cfg.height, cfg.width
    labels[h // 10: h // 4, w // 3: 2 * w // 3] = SKIN
    labels[h // 4: h // 2, w // 5: 4 * w // 5] = UPPER
    labels[h // 2: 9 * h // 10, w // 4: 3 * w // 4] = LOWER
    return labels


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return SMISPipeline.from_pretrained(tiny_model_dir, device="cpu")


@pytest.fixture(scope="module")
def examples_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("examples")
    make_examples(folder)
    return folder


@pytest.fixture(scope="module")
def h(pipe, examples_dir, tmp_path_factory):
    return DemoHandlers(pipe, load_references(examples_dir), tmp_path_factory.mktemp("work"))


@pytest.fixture(scope="module")
def labels(pipe):
    return blocky_labels(pipe.config)


@pytest.fixture(scope="module")
def first(h, labels):
    """A generated result: (seed, label map, image path, file path, strip, class upd, locked upd, status)."""
    return h.generate(h.canvas.to_editor(labels), 7, False, [])


# -- references ------------------------------------------------------------------------------

def test_load_references_reads_manifest_and_skips_missing(tmp_path):
    entries = make_examples(tmp_path, n=3)
    (tmp_path / "ex2.jpg").unlink()
    refs = load_references(tmp_path)
    assert [r.id for r in refs] == ["ex0", "ex1"]
    assert refs[0].photo == tmp_path / "ex0.jpg" and refs[0].classes == tuple(entries[0]["classes"])
    # a bare list works too
    (tmp_path / "examples.json").write_text(json.dumps(entries[:1]))
    assert [r.id for r in load_references(tmp_path)] == ["ex0"]


def test_load_references_errors(tmp_path):
    assert load_references(tmp_path) == []  # no manifest: no examples, no error
    (tmp_path / "examples.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_references(tmp_path)
    (tmp_path / "examples.json").write_text(json.dumps([{"id": "a", "photo": "a.jpg"}]))
    with pytest.raises(ValueError, match="needs 'id', 'photo' and 'mask'"):
        load_references(tmp_path)


def test_manifest_for_other_classes_is_ignored(tmp_path):
    make_examples(tmp_path, n=1)
    data = json.loads((tmp_path / "examples.json").read_text())
    data["classes"] = list(get_config("deepfashion").class_names)
    (tmp_path / "examples.json").write_text(json.dumps(data))
    assert load_references(tmp_path, class_names=get_config("demo").class_names) == []
    assert len(load_references(tmp_path)) == 1


@pytest.mark.skipif(not (DEFAULT_EXAMPLES_DIR / "examples.json").is_file(), reason="no shipped examples")
def test_shipped_examples_match_the_demo_model(pipe):
    refs = load_references(class_names=pipe.config.class_names)
    assert len(refs) >= 2
    for ref in refs:
        with Image.open(ref.photo) as photo, Image.open(ref.mask) as mask:
            assert photo.size == mask.size == (256, 384)
        present = {pipe.config.class_names[c] for c in np.unique(pipe.prepare_mask(str(ref.mask)))}
        assert present == set(ref.classes)


# -- canvas <-> label map ----------------------------------------------------------------------

def test_canvas_roundtrip_is_exact(h, pipe):
    rng = np.random.default_rng(1)
    cfg = pipe.config
    coarse = rng.integers(0, cfg.num_classes, size=(cfg.height // 8, cfg.width // 8))
    labels = np.kron(coarse, np.ones((8, 8), np.int64))
    value = h.canvas.to_editor(labels)
    assert value["background"].shape == (cfg.height * h.canvas.scale, cfg.width * h.canvas.scale, 4)
    assert h.canvas.scale == 4  # the tiny model (128 high) gets a 256x512 canvas
    np.testing.assert_array_equal(h.canvas.to_labels(value), labels)


def test_canvas_strokes_map_to_exact_classes(h, pipe):
    """Half-transparent edges and blended colours never leak into the label map."""
    cfg = pipe.config
    H, W = cfg.height * h.canvas.scale, cfg.width * h.canvas.scale
    background = np.zeros((H, W, 4), np.uint8)
    background[..., 3] = 255
    layer = np.zeros((H, W, 4), np.uint8)
    layer[100:200, 40:200] = (*cfg.palette[UPPER], 255)
    layer[100:200, 200:204] = (*cfg.palette[UPPER], 100)  # anti-aliased edge: mostly transparent
    layer[60:80, 40:200] = (cfg.palette[SKIN][0] - 3, cfg.palette[SKIN][1] + 2, cfg.palette[SKIN][2], 255)
    # a composite that blends the edge would give (110, 10, 30): nearest colour "hair"; layers win
    composite = np.zeros((H, W, 4), np.uint8)
    composite[..., 3] = 255
    composite[100:200, 40:204, :3] = (110, 10, 30)
    got = h.canvas.to_labels({"background": background, "layers": [layer], "composite": composite})
    assert set(np.unique(got)) == {0, SKIN, UPPER}
    assert (got == UPPER).sum() == (100 // h.canvas.scale) * (160 // h.canvas.scale)


def test_transparent_or_cleared_canvas_is_background(h, pipe):
    cfg = pipe.config
    H, W = cfg.height * h.canvas.scale, cfg.width * h.canvas.scale
    clear = np.zeros((H, W, 4), np.uint8)  # fully transparent: would be white after flattening
    assert not h.canvas.to_labels({"background": None, "layers": [], "composite": clear}).any()
    stroke = clear.copy()
    stroke[10:40, 10:40] = (*cfg.palette[HAIR], 255)
    got = h.canvas.to_labels({"background": None, "layers": [stroke], "composite": None})
    assert set(np.unique(got)) == {0, HAIR}
    with pytest.raises(gr.Error, match="canvas is empty"):
        h.canvas.to_labels({"background": None, "layers": [], "composite": None})
    with pytest.raises(gr.Error, match="canvas is empty"):
        h.canvas.to_labels(None)


# -- generate / re-roll / strip -----------------------------------------------------------------

def test_generate_saves_result_with_mask_and_codes(h, first, labels, pipe):
    seed, label_map, image, path, strip, cls, locked, status = first
    assert seed == 7 and path.endswith(".png")
    # One PNG per result: the image shown (the page scales it up), the download and the strip's variant.
    assert image == path and not list(Path(path).parent.glob("*.view.png"))
    with Image.open(path) as native:
        assert native.size == (64, 128)
    res = SMISResult.load(path)
    np.testing.assert_array_equal(res.labels, labels)
    assert res.seed == 7 and res.codes == pipe.generate(labels, seed=7).codes
    np.testing.assert_array_equal(np.asarray(label_map), pipe.colorize(labels))
    assert strip == [(path, "#1 generate · seed 7")]
    assert cls["choices"] == ["background", "skin", "upper clothes", "lower clothes"]
    assert cls["value"] == "skin" and locked["value"] == []
    assert "PyTorch · CPU" in status and "generate" in status


def test_generate_seeds(h, labels):
    ed = h.canvas.to_editor(labels)
    seed = h.generate(ed, 123, True, [])[0]
    assert 0 <= seed < 2**31 and isinstance(seed, int)
    for bad in (-1, 1.5, 2**31, "abc", None):
        with pytest.raises(gr.Error, match="seed"):
            h.generate(ed, bad, False, [])


def test_reroll_changes_only_that_class(h, first):
    path, strip = first[3], first[4]
    out = h.reroll(path, "upper clothes", [], strip)
    a, b = SMISResult.load(path), SMISResult.load(out[1])
    changed = [c for c in range(a.codes.num_classes) if not np.array_equal(a.codes.values[c], b.codes.values[c])]
    assert changed == [UPPER]
    np.testing.assert_array_equal(a.labels, b.labels)
    assert [c for _, c in out[2]][-1].startswith("#2 re-roll upper clothes · seed ")
    assert out[3]["value"] == "upper clothes"


def test_reroll_refuses_locked_absent_and_missing(h, first):
    path, strip = first[3], first[4]
    with pytest.raises(gr.Error, match="locked"):
        h.reroll(path, "upper clothes", ["upper clothes"], strip)
    with pytest.raises(gr.Error, match="not in this result's mask"):
        h.reroll(path, "bag", [], strip)
    with pytest.raises(gr.Error, match="(?i)unknown class"):
        h.reroll(path, "wings", [], strip)
    with pytest.raises(gr.Error, match="Generate an image first"):
        h.reroll(None, "skin", [], strip)


def test_reroll_of_a_weak_class_says_so(pipe, examples_dir, tmp_path, first):
    """A class measured to do little gets a note on re-roll (and in About); the others do not."""
    from demo.ui import about_markdown

    weak = DemoHandlers(pipe, load_references(examples_dir), tmp_path,
                        class_control={"skin": 0.4, "upper clothes": 9.5, "wings": 0.1})
    assert "wings" not in weak.class_control  # not this model's class: ignored
    path, strip = first[3], first[4]
    note = weak.reroll(path, "skin", [], strip)[5]
    assert "skin code does little" in note and "0.4×" in note
    assert "does little" not in weak.reroll(path, "upper clothes", [], strip)[5]
    about = about_markdown(weak)
    assert "upper clothes 9.5×" in about and "Weak (a re-roll barely changes anything): skin 0.4×" in about
    assert "Measured on the validation masks" not in about_markdown(DemoHandlers(pipe, [], tmp_path / "b"))


def test_reroll_unlocked_keeps_locked_classes(h, first):
    path, strip = first[3], first[4]
    out = h.reroll_unlocked(path, ["skin", "background"], strip, "skin")
    a, b = SMISResult.load(path), SMISResult.load(out[1])
    for c in (0, SKIN):
        np.testing.assert_array_equal(a.codes.values[c], b.codes.values[c])
    for c in (UPPER, LOWER):
        assert not np.array_equal(a.codes.values[c], b.codes.values[c])
    assert out[4]["value"] == ["skin", "background"]
    with pytest.raises(gr.Error, match="Every class in this mask is locked"):
        h.reroll_unlocked(path, ["background", "skin", "upper clothes", "lower clothes"], strip)


def test_strip_is_bounded_and_selectable(h, first):
    full = [(first[3], f"#{i + 1} generate · seed 7") for i in range(MAX_STRIP)]
    strip = h.reroll(first[3], "skin", [], full)[2]
    assert len(strip) == MAX_STRIP and strip[0] == full[1]
    assert strip[-1][1].startswith(f"#{MAX_STRIP + 1} re-roll skin")
    strip = h.reroll(first[3], "skin", [], strip[:3])[2]
    out = h.select_variant(strip, "skin", ["background"], gr.SelectData(None, {"index": 3, "value": None}))
    assert out[1] == strip[3][0] and out[2] == gr.update()
    assert out[4]["value"] == ["background"]
    with pytest.raises(gr.Error, match="no longer in the strip"):
        h.select_variant(strip, None, [], gr.SelectData(None, {"index": 99, "value": None}))


def test_same_codes_new_mask(h, first, labels):
    """Semantic manipulation: the result's mask on the canvas, edited, rendered with the same codes."""
    editor, history, label_map = h.edit_result_mask(first[3], None, [])
    np.testing.assert_array_equal(h.canvas.to_labels(editor), labels)
    edited = labels.copy()
    edited[-20:, :] = 7  # shoes
    label_map, *out = h.apply_mask_edit(h.canvas.to_editor(edited), first[3], first[4])
    old, new = SMISResult.load(first[3]), SMISResult.load(out[1])
    assert new.codes == old.codes and new.seed == old.seed
    np.testing.assert_array_equal(new.labels, edited)
    assert "shoes" in out[3]["choices"]


# -- mask tools --------------------------------------------------------------------------------

def test_fill_undo_clear(h, labels):
    ed = h.canvas.to_editor(labels)
    y, x = labels.shape[0] // 3, labels.shape[1] // 2  # inside the torso
    assert labels[y, x] == UPPER
    ed2, hist, preview = h.fill(ed, "dress", [], gr.SelectData(None, {"index": [x, y], "value": None}))
    filled = h.canvas.to_labels(ed2)
    assert (filled == 4).sum() == (labels == UPPER).sum() and not (filled == UPPER).any()
    np.testing.assert_array_equal(filled[labels != UPPER], labels[labels != UPPER])
    np.testing.assert_array_equal(np.asarray(preview), h.canvas.colorize(filled))
    ed3, hist, _ = h.clear_mask(ed2, hist)
    assert not h.canvas.to_labels(ed3).any() and len(hist) == 2
    ed4, hist, _ = h.undo(hist)
    np.testing.assert_array_equal(h.canvas.to_labels(ed4), filled)
    ed5, hist, _ = h.undo(hist)
    np.testing.assert_array_equal(h.canvas.to_labels(ed5), labels)
    assert h.undo(hist)[1] == []  # nothing left: a warning, no error


def test_upload_mask_class_ids_and_colours(h, labels, tmp_path):
    ids = tmp_path / "ids.png"
    Image.fromarray(labels.astype(np.uint8)).save(ids)
    ed, hist, _ = h.upload_mask(str(ids), None, [])
    np.testing.assert_array_equal(h.canvas.to_labels(ed), labels)
    colour = tmp_path / "colour.png"
    big = np.kron(labels, np.ones((3, 3), np.int64))  # another size: resized to the model (nearest)
    h.canvas.colorize(big).save(colour)
    ed, hist, _ = h.upload_mask(str(colour), ed, hist)
    np.testing.assert_array_equal(h.canvas.to_labels(ed), labels)
    assert len(hist) == 1  # the first upload had no canvas to remember


def test_bad_uploads_are_refused_with_a_message(h, tmp_path, labels):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(gr.Error, match="not an image file"):
        h.upload_mask(str(corrupt), None, [])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(gr.Error, match="empty"):
        h.upload_mask(str(empty), None, [])
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (2**20 + 1))
    with pytest.raises(gr.Error, match="1.0 MB; the limit is 1 MB"):
        check_file(str(big), "mask", MASK, max_bytes=2**20)
    huge = tmp_path / "huge.png"
    Image.new("L", (5000, 10)).save(huge)
    with pytest.raises(gr.Error, match="The mask size 10x5000 is outside 8..4096 pixels per side; resize it"):
        h.upload_mask(str(huge), None, [])
    off_palette = tmp_path / "off.png"
    Image.new("RGB", (64, 128), (12, 200, 33)).save(off_palette)
    with pytest.raises(gr.Error, match="not class colours"):
        h.upload_mask(str(off_palette), None, [])
    with pytest.raises(gr.Error, match="No mask given"):
        h.upload_mask(None, None, [])


def test_reopen_and_foreign_results(h, first, labels, tmp_path):
    editor, label_map, *out = h.reopen(first[3], first[4])
    np.testing.assert_array_equal(h.canvas.to_labels(editor), labels)
    assert SMISResult.load(out[1]).codes == SMISResult.load(first[3]).codes
    assert out[2][-1][1].startswith("#2 re-opened ")
    assert out[-2:] == [7, False]  # its seed back in the Seed box, random off
    plain = tmp_path / "plain.png"
    Image.new("RGB", (64, 128)).save(plain)
    with pytest.raises(gr.Error, match="no SMIS metadata"):
        h.reopen(str(plain), [])
    res = SMISResult.load(first[3])  # as if made by a model with another latent grid
    res.codes = ClassCodes(np.zeros((10, 8, 4, 2), np.float32), res.codes.class_names)
    res.save(tmp_path / "foreign.png")
    with pytest.raises(gr.Error, match="made by another model"):
        h.reopen(str(tmp_path / "foreign.png"), [])
    # what needs only the mask and codes (re-roll, mask edit, mix, morph, browser jobs) reads the metadata
    # alone, with the same checks
    meta = h.files.load_metadata(first[3])
    assert meta.codes == SMISResult.load(first[3]).codes and meta.seed == 7
    for path, refusal in ((plain, "no SMIS metadata"), (tmp_path / "foreign.png", "made by another model"),
                          (tmp_path / "gone.png", "has expired")):
        with pytest.raises(gr.Error, match=refusal):
            h.files.load_metadata(str(path))
    with pytest.raises(gr.Error, match="not a PNG|JPEG|format"):
        Image.new("RGB", (64, 128)).save(tmp_path / "photo.jpg")
        h.files.load_metadata(str(tmp_path / "photo.jpg"))


# -- appearance mixture and morphing --------------------------------------------------------------

def test_mix_takes_each_class_from_its_source(h, pipe, first, examples_dir):
    sources = ["keep"] * 10
    sources[UPPER] = "ref:ex1"
    sources[SKIN] = "user"
    photo, mask = examples_dir / "ex0.jpg", examples_dir / "ex0.png"
    out = h.mix(first[3], str(photo), str(mask), first[4], None, [], *sources)
    cur, new = SMISResult.load(first[3]), SMISResult.load(out[1])
    ref1 = pipe.encode(str(examples_dir / "ex1.jpg"), str(examples_dir / "ex1.png"))
    user = pipe.encode(str(photo), str(mask), refine=REFINE_STEPS)  # a visitor's photo: codes fitted to it
    np.testing.assert_allclose(new.codes.values[UPPER], ref1.values[UPPER], atol=1e-6)
    np.testing.assert_allclose(new.codes.values[SKIN], user.values[SKIN], atol=1e-6)
    for c in set(range(10)) - {UPPER, SKIN}:
        np.testing.assert_array_equal(new.codes.values[c], cur.codes.values[c])
    assert "upper clothes←example ex1" in out[2][-1][1] and "skin←your photo" in out[2][-1][1]


def test_mix_errors(h, first, examples_dir, tmp_path):
    with pytest.raises(gr.Error, match="at least one class"):
        h.mix(first[3], None, None, first[4], None, [], *(["keep"] * 10))
    sources = ["keep"] * 10
    sources[0] = "user"
    with pytest.raises(gr.Error, match="Upload your photo and its mask"):
        h.mix(first[3], None, None, first[4], None, [], *sources)
    small = tmp_path / "small.png"
    Image.new("L", (32, 48)).save(small)
    with pytest.raises(gr.Error, match="must have the same size"):
        h.mix(first[3], str(examples_dir / "ex0.jpg"), str(small), first[4], None, [], *sources)
    assert h.set_all_sources("ref:ex0") == ["ref:ex0"] * 10
    pair = h.user_reference(str(examples_dir / "ex0.jpg"), str(examples_dir / "ex0.png"))
    assert pair.size == (2 * 64, 128)
    assert h.user_reference(None, str(examples_dir / "ex0.png")) is None
    text = tmp_path / "notes.txt"
    text.write_text("not a photo")
    with pytest.raises(gr.Error, match="photo is not an image file"):  # one file alone is checked at once
        h.user_reference(str(text), None)


def test_morph_scrub_keep(h, first):
    strip = h.reroll(first[3], "upper clothes", [], first[4])[2]
    a_upd, b_upd = h.update_morph_choices(strip, None, None)
    assert a_upd["value"] == "current" and b_upd["value"] == "strip:0"
    assert ("example ex0", "ref:ex0") in a_upd["choices"]
    frames, slider, frame0, gif, status = h.morph(strip[-1][0], "current", "strip:0", 5, strip)
    assert len(frames) == 5 and frame0 == frames[0][0] and slider["maximum"] == 4
    a, b = SMISResult.load(strip[-1][0]), SMISResult.load(strip[0][0])
    assert SMISResult.load(frames[0][0]).codes == a.codes
    np.testing.assert_allclose(SMISResult.load(frames[-1][0]).codes.values, b.codes.values, atol=1e-6)
    with Image.open(gif) as im:
        k = h.files.display_scale  # shown upscaled like the result
        assert im.n_frames == 8 and im.size == (64 * k, 128 * k)  # there (5) and back (3)
    assert "morph (5 frames)" in status
    assert h.scrub(frames, 3) == frames[3][0]
    out = h.keep_frame(frames, 2, strip)
    assert SMISResult.load(out[1]).codes == SMISResult.load(frames[2][0]).codes
    assert out[2][-1][1].endswith("morph frame 3/5")
    with pytest.raises(gr.Error, match="Frames must be"):
        h.morph(first[3], "current", "ref:ex0", 1, strip)
    with pytest.raises(gr.Error, match="Make a morph first"):
        h.keep_frame([], 0, strip)


def test_morph_between_references(h, first):
    frames, *_ = h.morph(first[3], "ref:ex0", "ref:ex1", 3, first[4])
    assert len(frames) == 3
    with pytest.raises(gr.Error, match="Unknown reference"):
        h.morph(first[3], "ref:nope", "ref:ex1", 3, first[4])


def test_example_masks_and_references(h, examples_dir):
    masks = h.example_masks()
    assert [label for _, label in masks] == ["figure: top and trousers", "figure: dress and bag",
                                            "example ex0", "example ex1"]
    editor, label_map, image, path, strip, *_ = h.load_example(masks[2][0], 0)
    ref_mask = h.pipe.prepare_mask(str(examples_dir / "ex0.png"))
    np.testing.assert_array_equal(h.canvas.to_labels(editor), ref_mask)
    assert SMISResult.load(path).seed == 0 and len(strip) == 1
    gallery = h.reference_gallery()
    assert [c for _, c in gallery] == ["example ex0", "example ex1"]
    with Image.open(gallery[0][0]) as im:
        assert im.size == (128, 128)  # photo | mask at the model's size


def test_status_names_backend_and_device(h):
    class FakeBackend:
        name, device = "onnxruntime", "CUDAExecutionProvider"

    real = h.pipe.backend
    try:
        h.pipe.backend = FakeBackend()
        assert h.backend_label() == "ONNX Runtime · GPU (CUDAExecutionProvider)"
    finally:
        h.pipe.backend = real
    assert h.status("generate", 0.5).endswith("**Last call** generate: 0.50 s")


def test_events_refuse_before_any_model_work(h, first, examples_dir, tmp_path, monkeypatch):
    """One event per click checks its inputs first: a refusal never runs the network."""
    calls = []
    monkeypatch.setattr(h.pipe.backend, "generate", lambda *a: calls.append("generate"))
    monkeypatch.setattr(h.pipe.backend, "encode", lambda *a: calls.append("encode"))
    path, strip = first[3], first[4]
    ed = h.canvas.to_editor(blocky_labels(h.config))
    with pytest.raises(gr.Error, match="seed"):
        h.generate(ed, -3, False, strip)
    with pytest.raises(gr.Error, match="Generate an image first"):
        h.reroll(None, "skin", [], strip)
    with pytest.raises(gr.Error, match="expired"):
        h.apply_mask_edit(ed, str(tmp_path / "gone.png"), strip)
    with pytest.raises(gr.Error, match="locked"):
        h.reroll(path, "skin", ["skin"], strip)
    with pytest.raises(gr.Error, match="Every class in this mask is locked"):
        h.reroll_unlocked(path, ["background", "skin", "upper clothes", "lower clothes"], strip)
    sources = ["keep"] * 10
    sources[SKIN], sources[LOWER] = "ref:ex1", "ref:zz"
    with pytest.raises(gr.Error, match="Unknown reference 'zz'"):
        h.mix(path, None, None, strip, None, [], *sources)
    with pytest.raises(gr.Error, match="no longer in the strip"):
        h.morph(path, "current", "strip:5", 4, strip)
    with pytest.raises(gr.Error, match="Upload your photo"):
        h.morph(path, "ref:ex0", "user", 4, strip)
    with pytest.raises(gr.Error, match="Make a morph first"):
        h.keep_frame([], 0, strip)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(gr.Error, match="not an image file"):
        h.load_example(str(bad), 0)
    assert calls == []


# -- issue 12: uploads, messages, mixture of absent classes, memory ----------------------------------

def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header says width x height but whose pixel data is a few bytes (never decoded)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def test_gif_and_other_formats_are_refused_alike_in_every_box(h, first, labels, tmp_path):
    """A GIF's palette indices are never read as class ids; each box says what it takes."""
    gif = tmp_path / "mask.gif"
    Image.fromarray(labels.astype(np.uint8)).save(gif)  # indices 0..5: would have been a random mask
    with pytest.raises(gr.Error, match="mask is a GIF: .* Save it as PNG"):
        h.upload_mask(str(gif), None, [])
    with pytest.raises(gr.Error, match="result PNG is a GIF"):
        h.reopen(str(gif), [])
    animated = tmp_path / "photo.gif"
    frames = [Image.new("RGB", (64, 128), c) for c in ((200, 0, 0), (0, 200, 0))]
    frames[0].save(animated, save_all=True, append_images=frames[1:])
    ids = tmp_path / "ids.png"
    Image.fromarray(labels.astype(np.uint8)).save(ids)
    with pytest.raises(gr.Error, match="photo is a GIF; upload a JPEG, PNG or WebP photo"):
        h.user_reference(str(animated), str(ids))
    webp = tmp_path / "photo.webp"
    frames[0].save(webp, save_all=True, append_images=frames[1:])
    with pytest.raises(gr.Error, match=r"photo is animated \(2 frames\)"):
        h.user_reference(str(webp), str(ids))
    with pytest.raises(gr.Error, match="mask of your photo is a GIF"):
        h.user_reference(str(tmp_path / "ids.png"), str(gif))


def test_indexed_png_is_read_as_the_visitor_sees_it(h, labels, tmp_path):
    """Indexed PNG: by colour when it is drawn in class colours (an optimiser's output), else by index."""
    drawn = h.canvas.colorize(labels).quantize(colors=8)  # palette order unrelated to class ids
    assert drawn.mode == "P" and not np.array_equal(np.asarray(drawn), labels)
    drawn.save(tmp_path / "drawn.png")
    ed, *_ = h.upload_mask(str(tmp_path / "drawn.png"), None, [])
    np.testing.assert_array_equal(h.canvas.to_labels(ed), labels)
    voc = Image.fromarray(labels.astype(np.uint8), "L").convert("P")
    voc.putpalette([v for i in range(256) for v in (i * 7 % 256, 40, 90)])  # a display palette
    voc.save(tmp_path / "voc.png")
    ed, *_ = h.upload_mask(str(tmp_path / "voc.png"), None, [])
    np.testing.assert_array_equal(h.canvas.to_labels(ed), labels)


def test_messages_say_what_happened(h, first, labels, tmp_path):
    jpeg = tmp_path / "mask.jpg"
    h.canvas.colorize(labels).save(jpeg, quality=90)
    with pytest.raises(gr.Error, match="JPEG compression changes the colours.* Save the mask as PNG"):
        h.upload_mask(str(jpeg), None, [])
    photo = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (128, 64, 3), dtype=np.uint8)).save(photo)
    with pytest.raises(gr.Error, match="looks like a photo, not a mask") as err:
        h.upload_mask(str(photo), None, [])
    assert "#" not in str(err.value)  # no list of hex colours
    few = np.asarray(h.canvas.colorize(labels)).copy()
    few[:4, :4] = (12, 200, 33)
    Image.fromarray(few).save(tmp_path / "few.png")
    with pytest.raises(gr.Error, match=r"16 pixels of the mask have colours that are not class colours \(#0cc821\)"):
        h.upload_mask(str(tmp_path / "few.png"), None, [])
    with pytest.raises(gr.Error, match="is a JPEG; open a PNG saved by this demo") as err:
        h.reopen(str(jpeg), [])
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    for call in (lambda: h.upload_mask(str(corrupt), None, []), lambda: h.reopen(str(corrupt), [])):
        with pytest.raises(gr.Error) as err:
            call()
        assert "Error" not in str(err.value) and "JPEG" not in str(err.value)  # no exception names


def test_huge_images_are_refused_from_the_header(h, tmp_path):
    """A 10000x10000 PNG of a few bytes is refused at once, wherever it enters (nothing is decoded)."""
    import time

    huge = tmp_path / "huge.png"
    huge.write_bytes(png_header_only(10000, 10000))
    t0 = time.perf_counter()
    with pytest.raises(gr.Error, match="canvas layer size 10000x10000 is outside"):
        h.generate({"background": str(huge), "layers": [], "composite": None}, 1, False, [])
    with pytest.raises(gr.Error, match="mask size 10000x10000 is outside"):
        h.upload_mask(str(huge), None, [])
    with pytest.raises(gr.Error, match="result PNG size 10000x10000 is outside"):
        h.reopen(str(huge), [])
    assert time.perf_counter() - t0 < 2


def test_mixing_a_class_the_mask_lacks_says_so(h, first):
    """Item 8: absent classes are named; if none of the chosen ones is in the mask, nothing is made."""
    path, strip = first[3], first[4]
    sources = ["keep"] * 10
    sources[HAIR] = sources[8] = "ref:ex0"
    with pytest.raises(gr.Error, match="'hair' and 'bag' are not in the current mask, so mixing would not "
                                       "change the image"):
        h.mix(path, None, None, strip, None, [], *sources)
    sources[UPPER] = "ref:ex0"
    with pytest.warns(UserWarning, match="'hair' and 'bag' are not in the current mask: the code is taken"):
        out = h.mix(path, None, None, strip, None, [], *sources)
    caption = out[2][-1][1]
    assert "upper clothes←example ex0" in caption and "hair" not in caption and "bag" not in caption
    new, ref = SMISResult.load(out[1]), h.references.codes("ex0")
    np.testing.assert_allclose(new.codes.values[HAIR], ref.values[HAIR], atol=1e-6)  # shows once painted


def test_mix_warning_names_each_missing_class_in_number(h, first):
    sources = ["keep"] * 10
    sources[UPPER] = sources[SKIN] = "ref:ex1"  # ex1 (dress and bag) has skin, no upper clothes
    with pytest.warns(UserWarning, match="'upper clothes' is not in example ex1, so its code from it carries"):
        h.mix(first[3], None, None, first[4], None, [], *sources)
    sources[LOWER] = "ref:ex1"
    with pytest.warns(UserWarning, match="'upper clothes' and 'lower clothes' are not in example ex1, so "
                                         "their codes from it carry no appearance"):
        h.mix(first[3], None, None, first[4], None, [], *sources)


def test_example_status_names_no_launch_time(h):
    """Item 11: cached examples were computed at launch; their status must not look like the visitor's time."""
    masks = h.example_masks()
    status = h.load_example(masks[0][0], 0)[-1]
    assert "example" in status and not re.search(r"\d\.\d\d s", status)


def test_undo_history_is_compact_and_blobs_are_bounded(h, labels):
    """Item 12: what the server keeps per visitor is small and bounded."""
    from types import SimpleNamespace

    from demo.canvas import BlobStore

    _, hist, _ = h.clear_mask(h.canvas.to_editor(labels), [])
    assert hist[0].dtype == np.uint8 and hist[0].nbytes == labels.size
    store = BlobStore(max_items=3, max_bytes=1000)
    for i in range(10):
        store[f"id{i}"] = SimpleNamespace(background=b"x" * 100, composite=None, layers=[b"y" * 100])
    assert len(store) == 3 and "id9" in store and "id6" not in store and store.nbytes == 600
    store["big"] = SimpleNamespace(background=b"x" * 900, composite=None, layers=[])
    assert list(store._items) == ["big"] and store.pop("big").background and len(store) == 0
