"""The Gradio UI: ``build_demo(pipeline) -> gr.Blocks``. Layout and wiring only; no model code.

Every event calls one method of :class:`demo.handlers.DemoHandlers` and has an ``api_name``, so
the whole demo can be driven from ``gradio_client`` as well as from the browser. Events that run
the network share one concurrency group (``default_concurrency_limit`` of the queue), file reads
another; cheap ones skip the queue. Progress, refusals and a full queue show on the status line
only, so no output is marked "Error" and the canvas keeps what it showed.
"""

from __future__ import annotations

import atexit
import html
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import gradio as gr

from smis import SMISPipeline
from smis.hub import WEAK_CODE_RATIO

from .browser import BrowserJobs, BrowserModel
from .canvas import Canvas, CanvasValue
from .handlers import MAX_SEED, MORPH_MAX_FRAMES, MORPH_MIN_FRAMES, DemoHandlers
from .references import Reference, load_references

PAPER_URL = "https://arxiv.org/abs/2003.12697"
TITLE = "GroupDNet · semantically multi-modal image synthesis"
#: Events that decode uploads or result files (not the network) run this many at once.
FILE_EVENTS_AT_ONCE = 2

#: Extra CSS; pass it to ``launch(css=CSS)`` (Gradio 6 takes CSS at launch).
CSS = """
#intro h1 { font-size: 1.4em; margin: 0 0 2px; }
#intro p { margin: 0; font-size: 0.92em; line-height: 1.4; }
#fallback-banner { border: 2px solid #b45309; background: #fef3c7; color: #78350f; border-radius: 8px;
                   padding: 10px 14px; font-size: 1.05em; }
#fallback-banner b { color: #7c2d12; }
.step-title h3 { margin: 0 !important; font-size: 1.05em; }
#brush-class label { border-left-width: 12px !important; border-left-style: solid !important;
    padding: 2px 7px !important; font-size: 0.92em; }
#brush-class .wrap { gap: 4px !important; }
/* the seed box shows its name small, above its number (no block around it, to keep the row short) */
#seed span[data-testid=block-info] { display: block !important; position: static !important; width: auto !important;
    height: auto !important; clip: auto !important; overflow: visible !important; margin: 0 0 2px !important;
    font-size: 0.8em; white-space: nowrap; }
#seed input { appearance: textfield; -moz-appearance: textfield; }  /* no spinner: room for ten digits */
#seed input::-webkit-outer-spin-button, #seed input::-webkit-inner-spin-button { -webkit-appearance: none; margin: 0; }
#status { font-size: 0.85em; padding: 4px 10px; border: 1px solid var(--border-color-primary);
          border-radius: 8px; min-height: 2.4em; }
#status p { margin: 0; }
/* the status line is where progress, the queue position and the estimate show ("queue: 1/2 | 0.4/2.1s"): inside
   the line, at its right end, readable (Gradio centres them under a large spinner that this short box clips) */
#status [data-testid=status-tracker] { top: 0 !important; height: 100% !important; flex-direction: row !important;
    justify-content: flex-end !important; align-items: center !important; padding: 0 8px !important; }
#status [data-testid=status-tracker] > div:has(> svg[viewBox^="-1200"]) { display: none !important; }
#status .progress-text, #status .meta-text, #status .meta-text-center { position: static !important;
    transform: none !important; font-size: 0.95em !important; font-weight: 600; opacity: 1 !important;
    color: var(--body-text-color) !important; background: var(--block-background-fill); padding: 1px 6px;
    border-radius: 6px; }
/* the example masks: one compact row of thumbnails at the top */
#examples .container.gallery { width: auto !important; height: 64px !important; }
#examples .gallery img { height: 64px !important; width: auto !important; max-width: none !important;
    object-fit: contain; }
#examples .gallery { gap: 6px !important; }
/* the first screen is dense: smaller gaps, compact upload boxes (their label says what they are for) */
#first-screen, #first-screen .column, #start-row { gap: 8px !important; }
#start-row .upload-box .icon-wrap, #start-row .upload-box .or { display: none !important; }
/* small models: images are served at the model's size and shown large here (label maps crisp, photos smooth) */
#result img, #label-map img, #morph-frame img, #example-mask img { width: 100%; height: 100%;
    object-fit: contain; image-rendering: pixelated; }
#result img, #morph-frame img { image-rendering: auto; }
/* variant captions wrap instead of being cut ("#2 re-roll upper clothes"); the strip is as tall as its rows */
#strip .caption-label { white-space: normal !important; overflow: visible !important; text-overflow: clip !important;
    max-width: none !important; line-height: 1.2; }
#strip .grid-wrap { height: auto !important; min-height: 0 !important; max-height: 480px; overflow-y: auto; }
#strip .empty { min-height: 64px !important; height: 64px !important; }
/* file boxes: the whole file name as one text that wraps anywhere in its stem, never inside its extension, so
   ".png" ends the name (Gradio lays stem and extension side by side, so a wrapped stem put ".png" mid-name; the
   cell's font size 0 hides the space between the two) */
.upload-box td.filename { display: block !important; font-size: 0 !important; overflow: visible !important; }
.upload-box td.filename .stem { display: inline !important; white-space: normal !important;
    overflow: visible !important; text-overflow: clip !important; word-break: break-all; font-size: var(--text-md); }
.upload-box td.filename .ext { display: inline !important; white-space: nowrap !important; font-size: var(--text-md); }
/* reference captions ("example 0854") are never cut to "example …" */
#references .caption-label { white-space: normal !important; overflow: visible !important;
    text-overflow: clip !important; max-width: none !important; }
@media (max-width: 640px) {
  #result img, #morph-frame img { max-height: 320px; }
  /* a phone: the seed and its switch on one line, Generate under them, the status line under Generate */
  #generate-row > button { order: 2; flex-basis: 100%; }
  /* two reference thumbnails a row on a phone: none clipped at the right edge */
  #references .grid-container { grid-template-columns: repeat(2, minmax(0, 1fr)) !important; }
}
"""

INTRO = f"""
<div id="intro"><h1>{TITLE}</h1>
<p>Draw <i>which pixel is what</i> (hair, skin, upper clothes, …) and GroupDNet
(<a href="{PAPER_URL}" target="_blank">Zhu et al., CVPR 2020</a>) paints a photo for it with <b>one latent code per
class</b>: change the look of one region — re-roll it, copy it from a reference photo, or morph it — while every
other region stays exactly as it was. <b>1</b> pick an example, start from a photo or draw · <b>2</b> generate ·
<b>3</b> re-roll one class; mix and morph below.</p></div>
"""


def page_js(class_names: Sequence[str], palette: Sequence[Sequence[int]]) -> str:
    """Runs once per page (with or without in-browser inference): names on the brush swatches, the colour
    popup closes after a pick or on Escape, the class selector's labels take their class colour, a new
    result is scrolled into view when it is out of view, and an upload box that the browser refused a
    file for (too big) is reset at once instead of showing an "Error" badge over its drop area."""
    names, colours = json.dumps(list(class_names)), json.dumps([f"rgb({r},{g},{b})" for r, g, b in palette])
    return f"""() => {{
  const names = {names}, colours = {colours};
  const canvas = () => document.querySelector('#canvas');
  const closePopup = () => document.body.dispatchEvent(new MouseEvent('mousedown', {{bubbles: true}}));
  const label = () => {{
    const root = canvas();
    if (root) root.querySelectorAll('button.color').forEach((b, i) => {{
      if (names[i] && b.title !== names[i]) {{ b.title = names[i]; b.setAttribute('aria-label', names[i]); }}
    }});
    document.querySelectorAll('#brush-class label').forEach((l, i) => {{
      if (colours[i]) l.style.borderLeftColor = colours[i];
    }});
  }};
  // a file too big is refused before any event runs (the toast says why); the "Error" badge it leaves over
  // the box hides its label and drop area and swallows clicks: clear it, as its own small × does
  const resetRefused = () => document.querySelectorAll('.upload-box [data-testid=status-tracker] .error')
    .forEach((badge) => badge.closest('[data-testid=status-tracker]').querySelector('.clear-status button')?.click());
  new MutationObserver(() => {{ label(); resetRefused(); }}).observe(document.body, {{childList: true, subtree: true}});
  label();

  // a new result (or mixed result) is brought into view, with the status line above it, unless one is
  // already in view or the click was on the canvas (live painting: the page stays where the brush is)
  let pointer = null;
  document.addEventListener('pointerdown', (e) => {{ pointer = e.target; }}, true);
  const VIEWS = '#result, #mix-preview';
  const inView = (el) => {{
    const r = el.getBoundingClientRect();
    const seen = Math.min(r.bottom, innerHeight) - Math.max(r.top, 0);
    return seen >= Math.min(r.height, innerHeight) * 0.6;
  }};
  const reveal = () => {{
    const views = [...document.querySelectorAll(VIEWS)].filter((el) => el.offsetParent && el.querySelector('img'));
    if (!views.length || views.some(inView) || pointer?.closest?.('#canvas')) return;
    const from = pointer?.isConnected ? pointer.getBoundingClientRect().top : 0;
    const gap = (el) => Math.abs(el.getBoundingClientRect().top - from);
    const view = views.sort((a, b) => gap(a) - gap(b))[0];
    const head = view.id === 'result' ? document.querySelector('#status') : null;
    const r = view.getBoundingClientRect(), top = (head || view).getBoundingClientRect().top;
    const dy = r.bottom - top > innerHeight - 16 ? r.top - 8 : (top < 0 ? top - 8 : r.bottom - innerHeight + 8);
    window.scrollBy({{top: dy, behavior: 'smooth'}});
  }};
  let revealTimer = null;
  new MutationObserver((records) => {{
    if (!records.some((m) => m.target.closest?.(VIEWS))) return;
    clearTimeout(revealTimer);
    revealTimer = setTimeout(reveal, 120);
  }}).observe(document.body, {{childList: true, subtree: true, attributes: true, attributeFilter: ['src']}});
  document.addEventListener('click', (e) => {{
    const swatch = e.isTrusted && e.target.closest && e.target.closest('#canvas button.color');
    if (!swatch) return;
    const i = Array.from(swatch.parentElement.children).indexOf(swatch);  // keep the class selector in step
    const radio = document.querySelectorAll('#brush-class input')[i];
    if (radio && !radio.checked) radio.click(); else setTimeout(closePopup, 50);
  }}, true);
  document.addEventListener('keydown', (e) => {{
    if (e.key === 'Escape' && canvas() && canvas().querySelector('button.color')) closePopup();
  }});
  window.smisPickBrush = async (name) => {{
    const i = names.indexOf(name), root = canvas();
    if (i < 0 || !root) return;
    const brush = root.querySelector("button[aria-label='Brush']");
    if (brush && !brush.classList.contains('highlight')) brush.click();
    const open = root.querySelector("button[aria-label='Color']");
    if (!open) return;
    if (!root.querySelector('button.color')) open.click();
    for (let k = 0; k < 20 && !root.querySelector('button.color'); k++) await new Promise(r => setTimeout(r, 25));
    const swatch = root.querySelectorAll('button.color')[i];
    if (swatch) swatch.click();
    await new Promise(r => setTimeout(r, 0));
    closePopup();
  }};
}}"""


def banner_html(text: str) -> str:
    return f'<div id="fallback-banner">⚠️ <b>{html.escape(text)}</b></div>'


class PhotoPanel(NamedTuple):
    """0 · Start from a photo (optional): a photo in, its predicted mask and re-synthesis out."""

    photo: gr.File
    resynthesise: gr.Button
    view: gr.Image


class CanvasPanel(NamedTuple):
    """1 · The label map: the canvas (and its hidden twin, what the server's events read) and its brush class,
    clear / undo, fill, mask upload."""

    brush_class: gr.Radio
    editor: Canvas
    value: CanvasValue
    clear: gr.Button
    undo: gr.Button
    load_mask: gr.Button
    label_map: gr.Image
    fill_class: gr.Dropdown
    mask_upload: gr.File
    example_mask: gr.Image


class GeneratePanel(NamedTuple):
    """2 · Generate: the seed, the status line beside the button (progress, queue position), the result
    (shown and as a file) and re-opening a result PNG."""

    seed: gr.Number
    randomize: gr.Checkbox
    seed_used: gr.Number
    generate: gr.Button
    regenerate: gr.Button
    status: gr.Markdown
    image: gr.Image
    file: gr.File
    reopen: gr.File


class RerollPanel(NamedTuple):
    """3 · Re-roll one class, or every unlocked one; the strip of variants."""

    reroll_class: gr.Dropdown
    reroll: gr.Button
    locked: gr.CheckboxGroup
    reroll_all: gr.Button
    strip: gr.Gallery


class MixTab(NamedTuple):
    """Appearance mixture: each class's codes from a reference photo, the user's photo, or kept."""

    user_photo: gr.File
    user_mask: gr.File
    user_preview: gr.Image
    all_sources: gr.Dropdown
    set_all: gr.Button
    sources: list[gr.Dropdown]
    mix: gr.Button
    preview: gr.Image


class MorphTab(NamedTuple):
    """Style morphing: frames from codes A to codes B, a scrubber, the GIF."""

    a: gr.Dropdown
    b: gr.Dropdown
    frames: gr.Slider
    morph: gr.Button
    frame: gr.Image
    scrub: gr.Slider
    gif: gr.File
    keep: gr.Button
    gallery: gr.Gallery
    browser: BrowserMorph | None


class BrowserMorph(NamedTuple):
    """Morphing in the browser: its ends loaded once, then every position of the slider rendered as you drag."""

    load: gr.Button
    t: gr.Slider
    job: gr.Textbox
    keep: gr.Button
    rendered: gr.Textbox


class BrowserSwitch(NamedTuple):
    """"Run in your browser": the switch, and the hidden parts of a browser job (``demo/browser.py``): the
    job, the page's rendered answer, and one button per job the page clicks instead of the server's."""

    run: gr.Checkbox
    live: gr.Checkbox
    job: gr.Textbox
    rendered: gr.Textbox
    live_job: gr.Textbox
    live_rendered: gr.Textbox
    generate: gr.Button
    reroll: gr.Button
    reroll_unlocked: gr.Button
    mask_edit: gr.Button
    live_run: gr.Button
    live_keep: gr.Button


class Shared(NamedTuple):
    """What the events share: the status line, the canvas history, the outputs of a new result and of
    a mask edit, and the options of the two queue groups (network events, file reads)."""

    status: gr.Markdown
    history: gr.State
    result_outputs: list
    mask_outputs: list
    model: dict
    files: dict


#: Cheap events skip the queue; private ones also stay out of the API.
QUICK = {"queue": False, "show_progress": "hidden"}
PRIVATE = {"queue": False, "show_progress": "hidden", "api_visibility": "private"}


def build_demo(pipeline: SMISPipeline, *, references: Sequence[Reference] | None = None,
               banner: str | None = None, cache_examples: bool = True,
               workdir: str | Path | None = None, max_upload_bytes: int | None = None,
               parser: Any = None, parser_note: str | None = None,
               class_control: Mapping[str, float] | None = None,
               browser: BrowserModel | None = None) -> gr.Blocks:
    """The whole demo on one loaded pipeline.

    ``references``: reference photos + masks (default: the shipped examples, if any);
    ``banner``: a warning shown above everything (e.g. that the model is an untrained fallback);
    ``cache_examples``: pre-compute the example outputs at launch (into a fresh temp folder unless
    ``$GRADIO_EXAMPLES_CACHE`` is set, so a cache never outlives the model it was made with);
    ``parser``: a loaded :class:`smis.parsing.HumanParser` for "Start from a photo" (``None``: the
    section says masks cannot be predicted, and ``parser_note`` why); ``class_control``: the model's
    measured per-class re-roll strength (:func:`smis.hub.measured_class_control`), for the About
    tab and a note on re-rolls of a weak class; ``browser``: the graphs the page may run itself
    (:func:`demo.browser.find_browser_model`; ``None`` or none found: everything runs on the server).
    """
    refs = load_references(class_names=pipeline.config.class_names) if references is None else list(references)
    kw = {} if max_upload_bytes is None else {"max_upload_bytes": max_upload_bytes}
    h = DemoHandlers(pipeline, refs, workdir, parser=parser, parser_note=parser_note,
                     class_control=class_control, **kw)
    if cache_examples and not os.environ.get("GRADIO_EXAMPLES_CACHE"):
        os.environ["GRADIO_EXAMPLES_CACHE"] = tempfile.mkdtemp(prefix="smis-examples-")
        atexit.register(shutil.rmtree, os.environ["GRADIO_EXAMPLES_CACHE"], ignore_errors=True)

    with gr.Blocks(title=TITLE, delete_cache=(1800, 7200)) as demo:
        # the first screen (1280x800): where to start, then canvas | generate + result | re-roll side by side
        gr.HTML(INTRO)
        if banner:
            gr.HTML(banner_html(banner))
        history = gr.State([])
        with gr.Row(equal_height=False, elem_id="start-row"):
            examples_slot = gr.Column(scale=3, min_width=300)  # filled once the outputs exist (below)
            start_photo, reopen = _start_boxes()
        with gr.Row(equal_height=False, elem_id="first-screen"):
            *drawing, regenerate = _canvas_panel(h)
            gen = _generate_panel(h, regenerate, reopen)
            with gr.Column(scale=4, min_width=260):
                reroll = _reroll_panel()
                switch = _browser_switch(browser)
        with gr.Row(equal_height=False):  # under the first screen: fill and upload masks, what a photo gave
            canvas = CanvasPanel(*drawing, *_fill_panel(h))
            photo = _photo_panel(h, start_photo)
        status = gen.status
        with examples_slot:
            _examples(h, canvas, gen, reroll, status, cache_examples)
        with gr.Tabs(elem_id="features", overflow_behavior="wrap"):  # every tab visible, also on a phone
            mix = _mix_tab(h)
            morph = _morph_tab(h, browser)
            _manipulate_tab()
            with gr.Tab("About", id="about"):
                gr.Markdown(about_markdown(h))

        shared = _shared(status, history, canvas, gen, reroll)
        _wire_page(demo, h, canvas, gen)
        _wire_canvas(h, canvas, gen, shared)
        _wire_photo(h, photo, canvas, reroll, shared)
        _wire_generate(h, canvas, gen, reroll, shared)
        _wire_variants(h, gen, reroll, morph, shared)
        _wire_mix(h, gen, reroll, mix, shared)
        _wire_morph(h, gen, reroll, mix, morph, shared)
        _wire_browser(demo, h, switch, canvas, gen, reroll, shared, browser)
        _wire_browser_morph(h, gen, reroll, mix, morph, shared)
        keep_canvas_quiet(demo, canvas.editor, status)

    demo.handlers = h  # for tests and scripts
    return demo


# -- the page's parts ---------------------------------------------------------------------------------

def _browser_switch(browser: BrowserModel | None) -> BrowserSwitch:
    """The switch and its note (the page script keeps the note up to date), and the hidden job parts."""
    on = browser is not None and browser.available
    if on:
        note, state = "Checking whether your browser can run the model…", "loading"
    else:
        why = browser.reason if browser is not None else "this page was built without it"
        note, state = f"⚠️ Not running in your browser: {why}. Everything runs on the server.", "off"
    with gr.Group(elem_id="browser-row"):
        run = gr.Checkbox(value=on, label="Run in your browser", interactive=on, elem_id="browser-run")
        live = gr.Checkbox(value=False, label="Live: the result follows the brush", interactive=on,
                           visible=on, elem_id="browser-live")
        gr.HTML(f'<span id="browser-note-text" data-state="{state}">{html.escape(note)}</span>',
                elem_id="browser-note")
        job = gr.Textbox(visible="hidden", elem_id="browser-job")
        rendered = gr.Textbox(visible="hidden", elem_id="browser-rendered")
        live_job = gr.Textbox(visible="hidden", elem_id="browser-live-job")  # live jobs never mix with clicks' jobs
        live_rendered = gr.Textbox(visible="hidden", elem_id="browser-live-rendered")
        buttons = [gr.Button(visible="hidden", elem_id=f"browser-{name}")
                   for name in ("generate", "reroll", "reroll-unlocked", "mask-edit", "live-run", "live-keep")]
    return BrowserSwitch(run, live, job, rendered, live_job, live_rendered, *buttons)


def _start_boxes() -> tuple[gr.File, gr.File]:
    """Beside the examples: start from a photo, or re-open a result PNG (small boxes, nothing pushed down)."""
    with gr.Column(scale=2, min_width=300):
        with gr.Row(equal_height=True):
            photo = gr.File(label="Start from a photo (full body)", file_types=["image"], elem_id="start-photo",
                            elem_classes="upload-box", height=80, min_width=140)
            reopen = gr.File(label="Re-open a result PNG", file_types=["image"], elem_id="reopen",
                             elem_classes="upload-box", height=80, min_width=140)
    return photo, reopen


def _photo_panel(h: DemoHandlers, photo: gr.File) -> PhotoPanel:
    """What a photo gives (photo | mask | re-synthesis), under the first screen; ``photo`` is its upload box."""
    with gr.Column(scale=3, min_width=300):
        with gr.Accordion("Start from a photo: photo · predicted mask · re-synthesis", open=True,
                          elem_id="start-from-photo"):
            gr.Markdown(h.parser_markdown(), elem_id="photo-help")
            view = gr.Image(label="Photo · predicted mask · re-synthesis", type="pil", format="png",
                            interactive=False, height=320, elem_id="photo-view", buttons=[])
            resynthesise = gr.Button("Re-synthesise with the canvas mask", elem_id="resynthesise")
    return PhotoPanel(photo, resynthesise, view)


def _canvas_panel(h: DemoHandlers) -> tuple[gr.Radio, Canvas, CanvasValue, gr.Button, gr.Button, gr.Button,
                                             gr.Button]:
    """1 · The brush class, the canvas and its buttons (the first of :class:`CanvasPanel`'s parts, and
    "Same codes, new mask", which :class:`GeneratePanel` holds)."""
    names = list(h.config.class_names)
    default_brush = names.index("upper clothes") if "upper clothes" in names else min(1, len(names) - 1)
    with gr.Column(scale=5, min_width=320, elem_id="draw-column"):
        gr.Markdown("### 1 · Draw a label map", elem_classes="step-title")
        brush_class = gr.Radio(names, value=names[default_brush], label="Brush class (what you paint)",
                               elem_id="brush-class")
        editor = Canvas(
            value=h.canvas.to_editor(h.canvas.blank_labels()), label="Canvas", elem_id="canvas", type="numpy",
            image_mode="RGBA", format="png", sources=(), transforms=(), layers=False,
            interactive=True, canvas_size=h.canvas.size, height=390,
            brush=gr.Brush(colors=h.canvas.brush_colors, default_color=h.canvas.brush_colors[default_brush],
                           color_mode="fixed", default_size=max(4, h.canvas.size[0] // 24)),
            eraser=gr.Eraser(default_size=max(6, h.canvas.size[0] // 16)))
        value = CanvasValue(label="Canvas", visible="hidden", elem_id="canvas-value")
        with gr.Row():
            clear = gr.Button("Clear", size="sm", elem_id="clear-mask", min_width=80)
            undo = gr.Button("Undo fill / upload", size="sm", elem_id="undo-mask", min_width=80)
        with gr.Row():  # semantic manipulation: the result's mask on the canvas, edit it, render with its codes
            load_mask = gr.Button("Load result's mask", size="sm", elem_id="load-result-mask", min_width=80)
            regenerate = gr.Button("Same codes, new mask", size="sm", elem_id="apply-mask-edit", min_width=80)
        gr.Markdown("The eraser paints background. Swatches in the colour popup show their class name "
                    "on hover.", elem_id="canvas-help")
    return brush_class, editor, value, clear, undo, load_mask, regenerate


def _fill_panel(h: DemoHandlers) -> tuple[gr.Image, gr.Dropdown, gr.File, gr.Image]:
    """Fill a region, upload a mask (the rest of :class:`CanvasPanel`), under the first screen."""
    names = list(h.config.class_names)
    with gr.Column(scale=2, min_width=300):
        with gr.Accordion("Fill a region, upload a mask", open=True, elem_id="fill-panel"):
            gr.Markdown("**Label map** — click a region to fill it with the fill class.")
            with gr.Row(equal_height=False):
                label_map = gr.Image(value=h.canvas.colorize(h.canvas.blank_labels()), show_label=False,
                                     type="pil", format="png", interactive=False, height=240,
                                     elem_id="label-map", buttons=[], scale=2)
                fill_class = gr.Dropdown(names, value=names[min(2, len(names) - 1)],
                                         label="Fill class", elem_id="fill-class", scale=1, min_width=120)
            mask_upload = gr.File(label="Upload a mask: PNG of class ids, or the legend colours",
                                  file_types=["image"], elem_id="mask-upload", elem_classes="upload-box",
                                  height=100)
        example_mask = gr.Image(label="Example mask", type="filepath", image_mode=None,
                                interactive=False, visible=False, height=120,
                                elem_id="example-mask", buttons=[])
    return label_map, fill_class, mask_upload, example_mask


def _generate_panel(h: DemoHandlers, regenerate: gr.Button, reopen: gr.File) -> GeneratePanel:
    """2 · Generate beside the seed, the status line right under them, the result; "Same codes, new mask"
    (under the canvas) and the re-open box (at the top) are made elsewhere."""
    with gr.Column(scale=5, min_width=300):
        gr.Markdown("### 2 · Generate", elem_classes="step-title")
        with gr.Row(equal_height=True, elem_id="generate-row"):
            generate = gr.Button("Generate", variant="primary", elem_id="generate", scale=2, min_width=96)
            seed = gr.Number(value=0, label="Seed", precision=0, minimum=0, maximum=MAX_SEED, container=False,
                             elem_id="seed", scale=2, min_width=104)  # ten digits
            randomize = gr.Checkbox(value=True, label="random seed", elem_id="randomize", container=False,
                                    scale=1, min_width=100)
            seed_used = gr.Number(value=0, precision=0, visible="hidden", elem_id="seed-used")
        status = gr.Markdown(h.status(), elem_id="status", padding=False)
        image = gr.Image(label="Result",
                         type="filepath", format="png", interactive=False, height=380, elem_id="result")
        file = gr.File(label="Download PNG (mask + codes inside)", interactive=False,
                       elem_id="result-file", elem_classes="upload-box")
    return GeneratePanel(seed, randomize, seed_used, generate, regenerate, status, image, file, reopen)


def _reroll_panel() -> RerollPanel:
    gr.Markdown("### 3 · Re-roll one class", elem_classes="step-title")
    reroll_class = gr.Dropdown([], label="Class (present in the mask)", elem_id="reroll-class")
    reroll = gr.Button("Re-roll this class", variant="primary", elem_id="reroll")
    locked = gr.CheckboxGroup([], label="Locked classes (never re-rolled)", elem_id="locked")
    reroll_all = gr.Button("Re-roll all unlocked", elem_id="reroll-unlocked")
    gr.Markdown("**Variants** — click one to go back to it.")
    strip = gr.Gallery(show_label=False, columns=2, height="auto", allow_preview=False, format="png",
                       interactive=False, elem_id="strip", object_fit="contain", fit_columns=False)
    return RerollPanel(reroll_class, reroll, locked, reroll_all, strip)


def _examples(h: DemoHandlers, canvas: CanvasPanel, gen: GeneratePanel, reroll: RerollPanel,
              status: gr.Markdown, cache_examples: bool) -> None:
    """The example masks, a row of thumbnails at the top (none when there are no examples)."""
    examples = h.example_masks()
    if examples:
        gr.Examples(
            examples=[[path, 0] for path, _ in examples], visible_columns=[0],
            inputs=[canvas.example_mask, gen.seed], fn=h.load_example,
            outputs=[canvas.editor, canvas.label_map, gen.image, gen.file, reroll.strip, reroll.reroll_class,
                     reroll.locked, status],
            cache_examples=cache_examples, run_on_click=True, label="Start from an example mask (seed 0)",
            examples_per_page=12, api_name="load_example", elem_id="examples")


def _mix_tab(h: DemoHandlers) -> MixTab:
    names = list(h.config.class_names)
    with gr.Tab("Appearance mixture", id="mix"):
        gr.Markdown("For each class, choose which photo its appearance comes from; the other classes "
                    "keep the current result's codes. Each photo is run through the encoder once.")
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                gr.Gallery(h.reference_gallery(), label="Reference photos (photo | mask)", columns=4,
                           height="auto", format="png", interactive=False, elem_id="references")
            with gr.Column(scale=2):
                user_photo = gr.File(label="Your photo (JPEG, PNG or WebP)", file_types=["image"],
                                     elem_id="user-photo", elem_classes="upload-box", height=120)
                user_mask = gr.File(label="Its mask (PNG, same size)" + (
                                        "; leave empty to predict it" if h.parser is not None else ""),
                                    file_types=["image"], elem_id="user-mask", elem_classes="upload-box", height=120)
                user_preview = gr.Image(label="Your reference", type="pil", interactive=False, height=160, buttons=[])
        choices = h.mix_choices()
        with gr.Row():
            all_sources = gr.Dropdown(choices, value="keep", label="Set every class to", scale=3)
            set_all = gr.Button("Set all", scale=1)
        sources = []
        per_row = 5
        for start in range(0, len(names), per_row):
            with gr.Row():
                for name in names[start:start + per_row]:
                    sources.append(gr.Dropdown(choices, value="keep", label=name, min_width=120,
                                               elem_id=f"mix-{name.replace(' ', '-')}"))
        with gr.Row():
            mix = gr.Button("Mix", variant="primary", elem_id="mix")
        preview = gr.Image(label="Mixed result (also the current result above)", type="filepath", elem_id="mix-preview",
                           interactive=False, height=240, format="png")
    return MixTab(user_photo, user_mask, user_preview, all_sources, set_all, sources, mix, preview)


def _morph_tab(h: DemoHandlers, browser: BrowserModel | None) -> MorphTab:
    with gr.Tab("Style morphing", id="morph"):
        gr.Markdown("Interpolate every class's code from A to B on the current mask. A and B can be "
                    "two states of your own result (see the variant strip), references, or your photo.")
        a0, b0 = h.update_morph_choices([], None, None)
        with gr.Row():
            # the page sets the choices (DemoHandlers.morph_choices_js), so the server's copy of them lags: a
            # value is checked by the handlers (an unknown one is refused with a message), not by the dropdown
            a = gr.Dropdown(a0["choices"], value=a0["value"], label="From (A)", elem_id="morph-a",
                            allow_custom_value=True)
            b = gr.Dropdown(b0["choices"], value=b0["value"], label="To (B)", elem_id="morph-b",
                            allow_custom_value=True)
            frames = gr.Slider(MORPH_MIN_FRAMES, MORPH_MAX_FRAMES, value=8, step=1, label="Frames",
                               elem_id="morph-frames")
        morph = gr.Button("Morph", variant="primary", elem_id="morph")
        with gr.Row(equal_height=False):
            frame = gr.Image(label="Frame", type="filepath", interactive=False, height=320,
                             format="png", elem_id="morph-frame")
            with gr.Column():
                scrub = gr.Slider(0, 7, value=0, step=1, label="Scrub (frame)", interactive=False,
                                  elem_id="morph-scrub")
                gif = gr.File(label="Animated GIF (there and back)", interactive=False,
                              elem_id="morph-gif", elem_classes="upload-box")
                keep = gr.Button("Use this frame as the current result", elem_id="keep-frame")
        gallery = gr.Gallery(label="Frames", columns=8, height=160, allow_preview=False,
                             format="png", interactive=False, elem_id="morph-frames-strip")
        in_browser = _browser_morph(h) if browser is not None and browser.available else None
    return MorphTab(a, b, frames, morph, frame, scrub, gif, keep, gallery, in_browser)


def _browser_morph(h: DemoHandlers) -> BrowserMorph:
    """Drag to morph: the page renders A -> B at the slider's position (the page script draws the canvas)."""
    cfg, k = h.config, h.files.display_scale
    with gr.Column(variant="panel", elem_id="browser-morph-group"):  # a Group would draw its buttons as plain text
        gr.Markdown("**Drag to morph, in your browser** — load A and B, then every position of the slider is "
                    "rendered here as you drag (when the page runs the model; see the switch at the top).")
        with gr.Row(equal_height=False):
            with gr.Column():
                load = gr.Button("Load A and B into the browser", elem_id="browser-morph-load")
                t = gr.Slider(0, 1, value=0, step=0.01, label="A → B", elem_id="browser-morph-t")
                keep = gr.Button("Use this frame as the current result", elem_id="browser-morph-keep")
            gr.HTML(f'<canvas id="browser-morph-canvas" width="{cfg.width}" height="{cfg.height}" '
                    f'style="width:{cfg.width * k}px;max-width:100%;image-rendering:pixelated;'
                    'background:#eee"></canvas>', elem_id="browser-morph-view")
        job = gr.Textbox(visible="hidden", elem_id="browser-morph-job")
        rendered = gr.Textbox(visible="hidden", elem_id="browser-morph-rendered")
    return BrowserMorph(load, t, job, keep, rendered)


def _manipulate_tab() -> None:
    with gr.Tab("Edit a result's mask", id="manipulate"):
        gr.Markdown(
            "**Semantic manipulation** — change the layout, keep the looks:\n"
            "1. **Load result's mask** (under the canvas) puts the current result's mask on the canvas.\n"
            "2. Paint the change (longer sleeves, a bag, shorter hair…).\n"
            "3. **Same codes, new mask** renders it with the current result's codes, so every class "
            "keeps its appearance.")


# -- the wiring: one event per click; it checks, then works --------------------------------------------

def _shared(status: gr.Markdown, history: gr.State, canvas: CanvasPanel, gen: GeneratePanel,
            reroll: RerollPanel) -> Shared:
    """Progress, a refusal and a full queue show on the status line only (no "Error" on the outputs;
    the canvas keeps its drawing)."""
    return Shared(
        status, history,
        result_outputs=[gen.image, gen.file, reroll.strip, reroll.reroll_class, reroll.locked, status],
        mask_outputs=[canvas.editor, history, canvas.label_map],
        model={"concurrency_id": "model", "concurrency_limit": "default", "show_progress_on": [status]},
        files={"concurrency_id": "files", "concurrency_limit": FILE_EVENTS_AT_ONCE, "show_progress_on": [status]})


def _wire_page(demo: gr.Blocks, h: DemoHandlers, canvas: CanvasPanel, gen: GeneratePanel) -> None:
    """What runs in the browser only: the page script, the brush class, a typed seed."""
    demo.load(None, js=page_js(h.config.class_names, h.config.palette))
    canvas.brush_class.change(None, canvas.brush_class, None,
                              js="(name) => { window.smisPickBrush?.(name); return []; }")
    gen.seed.input(None, None, gen.randomize, js="() => false")  # a typed seed is used, never replaced


def reading_canvas(trigger: Any, canvas: CanvasPanel) -> Any:
    """``trigger`` (an event listener: ``button.click``, ...) copying the canvas into its hidden twin in the page;
    chain the server's event on it, reading ``canvas.value`` (see :class:`demo.canvas.CanvasValue`)."""
    return trigger(None, canvas.editor, canvas.value, js="(value) => value", **PRIVATE)


def keep_canvas_quiet(demo: gr.Blocks, editor: Canvas, status: gr.Markdown) -> None:
    """No server event reads the canvas, or shows its progress on it (Gradio's page would make the canvas upload
    its images again on every status change of every event after that; see :class:`demo.canvas.CanvasValue`):
    the events that set it (examples included) show their progress on the status line."""
    for fn in demo.fns.values():
        if fn.fn is None:
            continue
        if editor in fn.inputs:
            raise ValueError(f"{fn.name} reads the canvas on the server; read its twin (demo.ui.reading_canvas)")
        if fn.show_progress_on is None and editor in fn.outputs:
            fn.show_progress_on = [status]


def _wire_canvas(h: DemoHandlers, canvas: CanvasPanel, gen: GeneratePanel, s: Shared) -> None:
    reading_canvas(canvas.clear.click, canvas).then(h.clear_mask, [canvas.value, s.history], s.mask_outputs,
                                                    api_name="clear_mask", **s.files)
    canvas.undo.click(h.undo, s.history, s.mask_outputs, api_name="undo", **QUICK)
    reading_canvas(canvas.load_mask.click, canvas).then(h.edit_result_mask, [gen.file, canvas.value, s.history],
                                                        s.mask_outputs, api_name="edit_result_mask", **s.files)
    reading_canvas(canvas.mask_upload.upload, canvas).then(
        h.upload_mask, [canvas.mask_upload, canvas.value, s.history], s.mask_outputs, api_name="upload_mask",
        **s.files).failure(lambda: None, None, canvas.mask_upload, **PRIVATE)  # a refused file goes
    # a click on the label map: where (only the first event of a chain gets the click), then the canvas, then fill
    point = gr.State(None)
    reading_canvas(canvas.label_map.select(h.fill_point, None, point, **PRIVATE).success, canvas).then(
        h.fill, [canvas.value, canvas.fill_class, s.history, point], s.mask_outputs, api_name="fill", **s.files)


def _wire_photo(h: DemoHandlers, photo: PhotoPanel, canvas: CanvasPanel, reroll: RerollPanel, s: Shared) -> None:
    variants = [reroll.strip, reroll.reroll_class, reroll.locked]
    reading_canvas(photo.photo.upload, canvas).then(
        h.start_from_photo, [photo.photo, canvas.value, s.history, *variants],
        [*s.mask_outputs, photo.view, *s.result_outputs], api_name="start_from_photo",
        **s.model).failure(lambda: None, None, photo.photo, **PRIVATE)
    reading_canvas(photo.resynthesise.click, canvas).then(
        h.resynthesise_photo, [photo.photo, canvas.value, *variants], [canvas.label_map, photo.view, *s.result_outputs],
        api_name="resynthesise_photo", **s.model)


def _wire_generate(h: DemoHandlers, canvas: CanvasPanel, gen: GeneratePanel, reroll: RerollPanel,
                   s: Shared) -> None:
    variants = [reroll.strip, reroll.reroll_class, reroll.locked]
    reading_canvas(gen.generate.click, canvas).then(
        h.generate, [canvas.value, gen.seed, gen.randomize, *variants],
        [gen.seed_used, canvas.label_map, *s.result_outputs], api_name="generate", **s.model).success(
        None, [gen.seed, gen.randomize, gen.seed_used], gen.seed, js="(typed, random, used) => random ? used : typed",
        **PRIVATE)
    reading_canvas(gen.regenerate.click, canvas).then(
        h.apply_mask_edit, [canvas.value, gen.file, *variants], [canvas.label_map, *s.result_outputs],
        api_name="apply_mask_edit", **s.model)
    gen.reopen.upload(h.reopen, [gen.reopen, *variants],
                      [canvas.editor, canvas.label_map, *s.result_outputs, gen.seed, gen.randomize],
                      api_name="reopen", **s.files).failure(lambda: None, None, gen.reopen, **PRIVATE)


def _wire_variants(h: DemoHandlers, gen: GeneratePanel, reroll: RerollPanel, morph: MorphTab, s: Shared) -> None:
    reroll.reroll.click(h.reroll, [gen.file, reroll.reroll_class, reroll.locked, reroll.strip], s.result_outputs,
                        api_name="reroll", **s.model)
    reroll.reroll_all.click(h.reroll_unlocked, [gen.file, reroll.locked, reroll.strip, reroll.reroll_class],
                            s.result_outputs, api_name="reroll_unlocked", **s.model)
    reroll.strip.select(h.select_variant, [reroll.strip, reroll.reroll_class, reroll.locked], s.result_outputs,
                        api_name="select_variant", **s.files)
    # a new strip -> the morph ends' choices, computed in the page (no server call per re-roll); the same
    # handler stays in the API with no trigger of its own
    reroll.strip.change(None, [reroll.strip, morph.a, morph.b], [morph.a, morph.b], js=h.morph_choices_js(),
                        **PRIVATE)
    gr.on([], h.update_morph_choices, [reroll.strip, morph.a, morph.b], [morph.a, morph.b],
          api_name="morph_choices", **QUICK)


def _wire_mix(h: DemoHandlers, gen: GeneratePanel, reroll: RerollPanel, mix: MixTab, s: Shared) -> None:
    user = [mix.user_photo, mix.user_mask]
    mix.user_photo.upload(h.user_reference, user, mix.user_preview, api_name="user_reference",
                          **s.files).failure(lambda: None, None, mix.user_photo, **PRIVATE)
    mix.user_mask.upload(h.user_reference, user, mix.user_preview, api_visibility="private",
                         **s.files).failure(lambda: None, None, mix.user_mask, **PRIVATE)
    mix.set_all.click(h.set_all_sources, mix.all_sources, mix.sources, api_name="set_all_sources", **QUICK)
    mix.mix.click(h.mix, [gen.file, *user, reroll.strip, reroll.reroll_class, reroll.locked, *mix.sources],
                  s.result_outputs, api_name="mix", **s.model).success(
        lambda path: path, gen.image, mix.preview, **PRIVATE)


def _wire_morph(h: DemoHandlers, gen: GeneratePanel, reroll: RerollPanel, mix: MixTab, morph: MorphTab,
                s: Shared) -> None:
    morph.morph.click(h.morph, [gen.file, morph.a, morph.b, morph.frames, reroll.strip, mix.user_photo, mix.user_mask],
                      [morph.gallery, morph.scrub, morph.frame, morph.gif, s.status], api_name="morph", **s.model)
    morph.scrub.change(h.scrub, [morph.gallery, morph.scrub], morph.frame, api_name="scrub", **QUICK)
    morph.keep.click(h.keep_frame, [morph.gallery, morph.scrub, reroll.strip, reroll.reroll_class, reroll.locked],
                     s.result_outputs, api_name="keep_frame", **s.files)


#: Loads the page's in-browser inference (demo/static/js/page.js) from the app's own routes.
BROWSER_JS = """() => {
  const root = ((window.gradio_config && window.gradio_config.root) || location.href.split(/[?#]/)[0])
    .replace(/\\/?$/, '/');
  import(new URL('smis/static/js/page.js', root).href)
    .then((m) => m.start(new URL('smis/model.json', root).href))
    .catch((err) => {
      const note = document.querySelector('#browser-note-text');
      if (note) { note.textContent = `⚠️ Not running in your browser: its script did not load (${err}). `
                  + 'Everything runs on the server.'; note.dataset.state = 'off'; }
    });
}"""


def _wire_browser(demo: gr.Blocks, h: DemoHandlers, b: BrowserSwitch, canvas: CanvasPanel, gen: GeneratePanel,
                  reroll: RerollPanel, s: Shared, browser: BrowserModel | None) -> None:
    """A browser job: the server's job (no model) -> the page renders it -> the server saves the PNG.

    The page clicks these hidden buttons instead of the visible ones while it runs the model itself;
    none of it is in the API (``gradio_client`` keeps the server events)."""
    if browser is None or not browser.available:
        return
    demo.load(None, js=BROWSER_JS)
    jobs = BrowserJobs(h)
    render = {"js": "(job) => window.smisBrowser ? window.smisBrowser.render(job) : ''", **PRIVATE}
    finish = [reroll.strip, reroll.reroll_class, reroll.locked]

    def rendered_and_saved(dependency):
        return dependency.success(None, b.job, b.rendered, **render).success(
            jobs.finish, [b.rendered, *finish], s.result_outputs, **PRIVATE)

    rendered_and_saved(reading_canvas(b.generate.click, canvas).then(
        jobs.generate, [canvas.value, gen.seed, gen.randomize], [gen.seed_used, canvas.label_map, b.job],
        **PRIVATE)).success(
        None, [gen.seed, gen.randomize, gen.seed_used], gen.seed, js="(typed, random, used) => random ? used : typed",
        **PRIVATE)
    rendered_and_saved(b.reroll.click(jobs.reroll, [gen.file, reroll.reroll_class, reroll.locked], b.job,
                                      **PRIVATE))
    rendered_and_saved(b.reroll_unlocked.click(jobs.reroll_unlocked, [gen.file, reroll.locked], b.job, **PRIVATE))
    rendered_and_saved(reading_canvas(b.mask_edit.click, canvas).then(
        jobs.mask_edit, [canvas.value, gen.file], [canvas.label_map, b.job], **PRIVATE))
    # live painting: the page clicks after a stroke, one job at a time (the newest stroke waits, none queue up).
    # The page clicks live-keep only for a job whose full image it rendered; one that drew only the preview (a
    # newer stroke came) ends in the page: one server event per such stroke, the job
    live_done = {"js": "() => { window.smisBrowser?.liveDone(); return []; }", **PRIVATE}
    live = reading_canvas(b.live_run.click, canvas).then(
        jobs.live, [canvas.value, gen.file, gen.seed, gen.randomize], [canvas.label_map, b.live_job], **PRIVATE)
    live.failure(None, None, None, **live_done)
    live.success(None, b.live_job, b.live_rendered, **render).then(
        None, b.live_rendered, None, js="(r) => { window.smisBrowser?.liveRendered(r); return []; }", **PRIVATE)
    b.live_keep.click(jobs.finish, [b.live_rendered, *finish], s.result_outputs, **PRIVATE).then(
        None, None, None, **live_done)


def _wire_browser_morph(h: DemoHandlers, gen: GeneratePanel, reroll: RerollPanel, mix: MixTab, morph: MorphTab,
                        s: Shared) -> None:
    """Load the ends (the server encodes a reference or your photo, nothing else), then the page renders."""
    m = morph.browser
    if m is None:
        return
    jobs = BrowserJobs(h)
    m.load.click(jobs.morph_ends, [gen.file, morph.a, morph.b, reroll.strip, mix.user_photo, mix.user_mask], m.job,
                 api_visibility="private", **s.model).success(
        None, m.job, None, js="(job) => { window.smisBrowser?.loadMorph(job); return []; }", **PRIVATE)
    m.keep.click(None, None, m.rendered, js="() => window.smisBrowser ? window.smisBrowser.morphFrame() : ''",
                 **PRIVATE).success(jobs.finish, [m.rendered, reroll.strip, reroll.reroll_class, reroll.locked],
                                    s.result_outputs, **PRIVATE)


def about_markdown(h: DemoHandlers) -> str:
    cfg = h.config
    grid = cfg.latent_grid()
    codes = (f"one code of {cfg.z_channels} numbers per class" if grid == (1, 1)
             else f"{cfg.z_channels} latent channels per class on a {grid[0]}×{grid[1]} grid")
    shown = (f" Results are the model's {cfg.height}×{cfg.width} output, scaled up by your browser for display; the "
             "PNG you see is the PNG you download.")
    return f"""
**GroupDNet** (Zhu, Xu, You, Bai; CVPR 2020, [paper]({PAPER_URL})) is a conditional GAN for
*semantically multi-modal image synthesis*: from a label map it generates images, and every semantic class has
its own latent code. Its encoder and decoder use **group convolutions**, one group per class, so the code of
class *c* only controls the pixels of class *c*.

What this demo runs: the `{cfg.name}` model — {cfg.num_classes} classes ({", ".join(cfg.class_names)}),
{cfg.height}×{cfg.width} pixels, {codes} — with {h.backend_label()}.{shown}
{control_markdown(h.class_control)}

Every result PNG carries its mask and its codes in the PNG metadata: download it, and re-open it later
(under *Generate*) to keep editing. Metadata is lost if the PNG is re-encoded (e.g. by some chat apps).
"""


def control_markdown(control: Mapping[str, float]) -> str:
    """How well each class's code works, as measured on val ("" when the model folder has no figures)."""
    if not control:
        return ""
    ranked = sorted(control.items(), key=lambda kv: -kv[1])
    strong = [f"{n} {r:.1f}×" for n, r in ranked if r >= WEAK_CODE_RATIO]
    weak = [f"{n} {r:.1f}×" for n, r in ranked if r < WEAK_CODE_RATIO]
    text = ("\nMeasured on the validation masks (`python -m train.evaluate`, in the model card): re-rolling one "
            "class changes its own region this many times more than the rest of the image — "
            + (", ".join(strong) or "none") + ".")
    if weak:
        text += (f" Weak (a re-roll barely changes anything): {', '.join(weak)}.")
    return text + "\n"
