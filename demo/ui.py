"""The Gradio UI: ``build_demo(pipeline) -> gr.Blocks``. Layout and wiring only; no model code.

Every event calls one method of :class:`demo.handlers.DemoHandlers` and has an ``api_name``, so
the whole demo can be driven from ``gradio_client`` as well as from the browser.
"""

from __future__ import annotations

import atexit
import html
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import gradio as gr

from smis import SMISPipeline

from .handlers import MAX_SEED, MORPH_MAX_FRAMES, MORPH_MIN_FRAMES, DemoHandlers, Reference, load_references

PAPER_URL = "https://arxiv.org/abs/2003.12697"
TITLE = "GroupDNet · semantically multi-modal image synthesis"

#: Extra CSS; pass it to ``launch(css=CSS)`` (Gradio 6 takes CSS at launch).
CSS = """
#fallback-banner { border: 2px solid #b45309; background: #fef3c7; color: #78350f; border-radius: 8px;
                   padding: 10px 14px; font-size: 1.05em; }
#fallback-banner b { color: #7c2d12; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 12px; font-size: 0.9em; }
.legend span.sw { display: inline-block; width: 14px; height: 14px; border-radius: 3px; margin-right: 4px;
                  vertical-align: -2px; border: 1px solid #8886; }
#status { font-size: 0.9em; padding: 6px 10px; border: 1px solid var(--border-color-primary);
          border-radius: 8px; }
/* small models: show images large and crisp (display only; downloads keep the true size) */
#result img, #label-map img, #morph-frame img, #example-mask img { width: 100%; height: 100%;
    object-fit: contain; image-rendering: pixelated; }
"""

INTRO = f"""
<h1 style="margin-bottom:0.2em">{TITLE}</h1>
<p style="margin-top:0">Draw <i>which pixel is what</i> (hair, skin, upper clothes, …) and GroupDNet
(<a href="{PAPER_URL}" target="_blank">Zhu et al., CVPR 2020</a>) paints a photo for it. It keeps
<b>one latent code per class</b>, so you can change the look of one region — re-roll it, copy it from a
reference photo, or morph it — while every other region stays exactly as it was.
<b>1</b> draw or pick a mask · <b>2</b> generate · <b>3</b> re-roll, mix or morph below.</p>
"""


def legend_html(class_names: Sequence[str], palette: Sequence[Sequence[int]]) -> str:
    """Colour swatches with class names, in the order of the brush's colour popup."""
    items = "".join(
        f'<span><span class="sw" style="background:rgb({r},{g},{b})"></span>{html.escape(name)}</span>'
        for name, (r, g, b) in zip(class_names, palette))
    return (f'<div class="legend" id="legend">{items}</div>'
            '<div style="font-size:0.85em;opacity:0.8">Colours in the brush popup follow this order. '
            'The eraser paints background.</div>')


def banner_html(text: str) -> str:
    return f'<div id="fallback-banner">⚠️ <b>{html.escape(text)}</b></div>'


def build_demo(pipeline: SMISPipeline, *, references: Sequence[Reference] | None = None,
               banner: str | None = None, cache_examples: bool = True,
               workdir: str | Path | None = None, max_upload_bytes: int | None = None) -> gr.Blocks:
    """The whole demo on one loaded pipeline.

    ``references``: reference photos + masks (default: the shipped examples, if any);
    ``banner``: a warning shown above everything (e.g. that the model is an untrained fallback);
    ``cache_examples``: pre-compute the example outputs at launch (into a fresh temp folder unless
    ``$GRADIO_EXAMPLES_CACHE`` is set, so a cache never outlives the model it was made with).
    """
    refs = load_references(class_names=pipeline.config.class_names) if references is None else list(references)
    kw = {} if max_upload_bytes is None else {"max_upload_bytes": max_upload_bytes}
    h = DemoHandlers(pipeline, refs, workdir, **kw)
    cfg = pipeline.config
    names = list(cfg.class_names)
    default_brush = names.index("upper clothes") if "upper clothes" in names else min(1, len(names) - 1)
    if cache_examples and not os.environ.get("GRADIO_EXAMPLES_CACHE"):
        os.environ["GRADIO_EXAMPLES_CACHE"] = tempfile.mkdtemp(prefix="smis-examples-")
        atexit.register(shutil.rmtree, os.environ["GRADIO_EXAMPLES_CACHE"], ignore_errors=True)

    with gr.Blocks(title=TITLE, delete_cache=(1800, 7200)) as demo:
        gr.HTML(INTRO)
        if banner:
            gr.HTML(banner_html(banner))
        status = gr.Markdown(h.status(), elem_id="status", padding=True)
        history = gr.State([])

        with gr.Row(equal_height=False):
            # ---- 1 · the label map -----------------------------------------------------------
            with gr.Column(scale=5, min_width=320, elem_id="draw-column"):
                gr.Markdown("### 1 · Draw a label map")
                editor = gr.ImageEditor(
                    value=h.blank_editor(), label="Canvas", elem_id="canvas", type="numpy", image_mode="RGBA",
                    format="png", sources=(), transforms=(), layers=False, interactive=True,
                    canvas_size=h.canvas_size, height=500,
                    brush=gr.Brush(colors=h.brush_colors, default_color=h.brush_colors[default_brush],
                                   color_mode="fixed", default_size=max(4, h.canvas_size[0] // 24)),
                    eraser=gr.Eraser(default_size=max(6, h.canvas_size[0] // 16)))
                gr.HTML(legend_html(names, cfg.palette))
                with gr.Row():
                    clear_btn = gr.Button("Clear", size="sm", elem_id="clear-mask")
                    undo_btn = gr.Button("Undo fill / upload", size="sm", elem_id="undo-mask")
                    load_mask_btn = gr.Button("Load result's mask", size="sm", elem_id="load-result-mask")
                with gr.Accordion("Fill, upload a mask", open=True):
                    with gr.Row():
                        label_map = gr.Image(value=h.colorize(h.editor_to_labels(h.blank_editor())),
                                             label="Label map — click a region to fill it",
                                             type="pil", format="png", interactive=False, height=240,
                                             elem_id="label-map", buttons=[])
                        with gr.Column(min_width=140):
                            fill_class = gr.Dropdown(names, value=names[min(2, len(names) - 1)],
                                                     label="Fill class", elem_id="fill-class")
                            mask_upload = gr.File(label="Upload a mask (class-id PNG or palette colours)",
                                                  file_types=["image"], elem_id="mask-upload")
                examples = h.example_masks()
                example_mask = gr.Image(label="Example mask", type="filepath", image_mode=None,
                                        interactive=False, visible=False, height=120,
                                        elem_id="example-mask", buttons=[])

            # ---- 2 · generate ------------------------------------------------------------------
            with gr.Column(scale=5, min_width=300):
                gr.Markdown("### 2 · Generate")
                with gr.Row():
                    seed = gr.Number(value=0, label="Seed", precision=0, minimum=0, maximum=MAX_SEED,
                                     elem_id="seed", scale=2)
                    randomize = gr.Checkbox(value=True, label="random seed", elem_id="randomize", scale=1)
                with gr.Row():
                    generate_btn = gr.Button("Generate", variant="primary", elem_id="generate")
                    regen_btn = gr.Button("Same codes, new mask", elem_id="apply-mask-edit")
                result_image = gr.Image(label="Result", type="filepath", format="png", interactive=False,
                                        height=420, elem_id="result")
                result_file = gr.File(label="Download PNG (mask + codes inside)", interactive=False,
                                      elem_id="result-file")
                reopen_file = gr.File(label="Re-open a saved result PNG", file_types=[".png"],
                                      elem_id="reopen", height=120)

            # ---- 3 · re-roll -------------------------------------------------------------------
            with gr.Column(scale=4, min_width=260):
                gr.Markdown("### 3 · Re-roll one class")
                reroll_class = gr.Dropdown([], label="Class (present in the mask)", elem_id="reroll-class")
                reroll_btn = gr.Button("Re-roll this class", variant="primary", elem_id="reroll")
                locked = gr.CheckboxGroup([], label="Locked classes (never re-rolled)", elem_id="locked")
                reroll_all_btn = gr.Button("Re-roll all unlocked", elem_id="reroll-unlocked")
                strip = gr.Gallery(label="Variants — click one to go back to it", columns=3, height=330,
                                   allow_preview=False, format="png", interactive=False, elem_id="strip",
                                   object_fit="contain", fit_columns=False)

        if examples:
            gr.Examples(
                examples=[[path, 0] for path, _ in examples], visible_columns=[0],
                inputs=[example_mask, seed], fn=h.load_example,
                outputs=[editor, label_map, result_image, result_file, strip, reroll_class, locked, status],
                cache_examples=cache_examples, label="Start from an example mask (seed 0)", examples_per_page=12,
                api_name="load_example", elem_id="examples")

        # ---- features below the fold --------------------------------------------------------------
        with gr.Tabs(elem_id="features"):
            with gr.Tab("Appearance mixture", id="mix"):
                gr.Markdown("For each class, choose which photo its appearance comes from; the other classes "
                            "keep the current result's codes. Each photo is run through the encoder once.")
                with gr.Row(equal_height=False):
                    with gr.Column(scale=3):
                        gr.Gallery(h.reference_gallery(), label="Reference photos (photo | mask)", columns=4,
                                   height=300, format="png", interactive=False, elem_id="references")
                    with gr.Column(scale=2):
                        user_photo = gr.File(label="Your photo (JPEG/PNG)", file_types=["image"],
                                             elem_id="user-photo", height=120)
                        user_mask = gr.File(label="Its mask (same size)", file_types=["image"],
                                            elem_id="user-mask", height=120)
                        user_preview = gr.Image(label="Your reference", type="pil", interactive=False,
                                                height=160, buttons=[])
                choices = h.mix_choices()
                with gr.Row():
                    all_sources = gr.Dropdown(choices, value="keep", label="Set every class to", scale=3)
                    set_all_btn = gr.Button("Set all", scale=1)
                sources = []
                per_row = 5
                for start in range(0, len(names), per_row):
                    with gr.Row():
                        for name in names[start:start + per_row]:
                            sources.append(gr.Dropdown(choices, value="keep", label=name, min_width=120,
                                                       elem_id=f"mix-{name.replace(' ', '-')}"))
                with gr.Row():
                    mix_btn = gr.Button("Mix", variant="primary", elem_id="mix")
                mix_preview = gr.Image(label="Mixed result (also the current result above)", type="filepath",
                                       interactive=False, height=300, format="png")

            with gr.Tab("Style morphing", id="morph"):
                gr.Markdown("Interpolate every class's code from A to B on the current mask. A and B can be "
                            "two states of your own result (see the variant strip), references, or your photo.")
                a0, b0 = h.update_morph_choices([], None, None)
                with gr.Row():
                    morph_a = gr.Dropdown(a0["choices"], value=a0["value"], label="From (A)", elem_id="morph-a")
                    morph_b = gr.Dropdown(b0["choices"], value=b0["value"], label="To (B)", elem_id="morph-b")
                    morph_frames = gr.Slider(MORPH_MIN_FRAMES, MORPH_MAX_FRAMES, value=8, step=1, label="Frames",
                                             elem_id="morph-frames")
                morph_btn = gr.Button("Morph", variant="primary", elem_id="morph")
                with gr.Row(equal_height=False):
                    morph_frame = gr.Image(label="Frame", type="filepath", interactive=False, height=320,
                                           format="png", elem_id="morph-frame")
                    with gr.Column():
                        morph_t = gr.Slider(0, 7, value=0, step=1, label="Scrub (frame)", interactive=False,
                                            elem_id="morph-scrub")
                        morph_gif = gr.File(label="Animated GIF (there and back)", interactive=False,
                                            elem_id="morph-gif")
                        keep_btn = gr.Button("Use this frame as the current result", elem_id="keep-frame")
                morph_gallery = gr.Gallery(label="Frames", columns=8, height=160, allow_preview=False,
                                           format="png", interactive=False, elem_id="morph-frames-strip")

            with gr.Tab("Edit a result's mask", id="manipulate"):
                gr.Markdown(
                    "**Semantic manipulation** — change the layout, keep the looks:\n"
                    "1. **Load result's mask** (under the canvas) puts the current result's mask on the canvas.\n"
                    "2. Paint the change (longer sleeves, a bag, shorter hair…).\n"
                    "3. **Same codes, new mask** renders it with the current result's codes, so every class "
                    "keeps its appearance.")

            with gr.Tab("About", id="about"):
                gr.Markdown(about_markdown(h))

        # ---- wiring ---------------------------------------------------------------------------------
        result_outputs = [result_image, result_file, strip, reroll_class, locked, status]
        mask_outputs = [editor, history, label_map]

        def checked(trigger, check, check_inputs, fn, inputs, outputs, api_name):
            """``check`` first (no outputs, so a refusal is a toast and every component keeps its value,
            the canvas included), then ``fn`` — which validates again for API callers."""
            return trigger(check, check_inputs, None, show_progress="hidden", api_visibility="private").success(
                fn, inputs, outputs, api_name=api_name)

        seed.input(lambda: False, None, randomize, queue=False, api_visibility="private")
        clear_btn.click(h.clear_mask, [editor, history], mask_outputs, queue=False, api_name="clear_mask")
        undo_btn.click(h.undo, history, mask_outputs, queue=False, api_name="undo")
        checked(load_mask_btn.click, h.check_result, result_file,
                h.edit_result_mask, [result_file, editor, history], mask_outputs, "edit_result_mask")
        checked(mask_upload.upload, h.check_mask_file, mask_upload,
                h.upload_mask, [mask_upload, editor, history], mask_outputs, "upload_mask")
        label_map.select(h.fill, [editor, fill_class, history], mask_outputs, api_name="fill")

        checked(generate_btn.click, h.check_generate, [seed, randomize],
                h.generate, [editor, seed, randomize, strip, reroll_class, locked], [seed, label_map, *result_outputs],
                "generate")
        checked(regen_btn.click, h.check_result, result_file,
                h.apply_mask_edit, [editor, result_file, strip, reroll_class, locked], [label_map, *result_outputs],
                "apply_mask_edit")
        checked(reopen_file.upload, h.check_result_file, reopen_file,
                h.reopen, [reopen_file, strip, reroll_class, locked], [editor, label_map, *result_outputs], "reopen")
        checked(reroll_btn.click, h.check_reroll, [result_file, reroll_class, locked],
                h.reroll, [result_file, reroll_class, locked, strip], result_outputs, "reroll")
        checked(reroll_all_btn.click, h.check_reroll_unlocked, [result_file, locked],
                h.reroll_unlocked, [result_file, locked, strip, reroll_class], result_outputs, "reroll_unlocked")
        strip.select(h.select_variant, [strip, reroll_class, locked], result_outputs, show_progress="hidden",
                     api_name="select_variant")
        strip.change(h.update_morph_choices, [strip, morph_a, morph_b], [morph_a, morph_b], queue=False,
                     show_progress="hidden", api_name="morph_choices")

        gr.on([user_photo.upload, user_mask.upload], h.user_reference, [user_photo, user_mask], user_preview,
              show_progress="hidden", api_name="user_reference")
        set_all_btn.click(h.set_all_sources, all_sources, sources, queue=False, api_name="set_all_sources")
        checked(mix_btn.click, h.check_mix, [result_file, user_photo, user_mask, strip, *sources],
                h.mix, [result_file, user_photo, user_mask, strip, reroll_class, locked, *sources], result_outputs,
                "mix").success(lambda path: path, result_image, mix_preview, queue=False, api_visibility="private")

        checked(morph_btn.click, h.check_morph, [result_file, morph_a, morph_b, morph_frames, strip, user_photo,
                                                 user_mask],
                h.morph, [result_file, morph_a, morph_b, morph_frames, strip, user_photo, user_mask],
                [morph_gallery, morph_t, morph_frame, morph_gif, status], "morph")
        morph_t.change(h.scrub, [morph_gallery, morph_t], morph_frame, queue=False, show_progress="hidden",
                       api_name="scrub")
        checked(keep_btn.click, h.check_frames, morph_gallery,
                h.keep_frame, [morph_gallery, morph_t, strip, reroll_class, locked], result_outputs, "keep_frame")

    demo.handlers = h  # for tests and scripts
    return demo


def about_markdown(h: DemoHandlers) -> str:
    cfg = h.config
    return f"""
**GroupDNet** (Zhu, Xu, Yang, Wang, Zhang, Wang; CVPR 2020, [paper]({PAPER_URL})) is a conditional GAN for
*semantically multi-modal image synthesis*: from a label map it generates images, and every semantic class has
its own latent code. Its encoder and decoder use **group convolutions**, one group per class, so the code of
class *c* only controls the pixels of class *c*.

What this demo runs: the `{cfg.name}` model — {cfg.num_classes} classes ({", ".join(cfg.class_names)}),
{cfg.height}×{cfg.width} pixels, {cfg.z_channels} latent channels per class on a
{cfg.latent_grid()[0]}×{cfg.latent_grid()[1]} grid — with {h.backend_label()}.

Every result PNG carries its mask and its codes in the PNG metadata: download it, and re-open it later
(under *Generate*) to keep editing. Metadata is lost if the PNG is re-encoded (e.g. by some chat apps).
"""
