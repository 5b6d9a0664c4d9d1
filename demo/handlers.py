"""The demo's events: every button, upload and click of the UI is one method of :class:`DemoHandlers`.

Each event checks its inputs and does its work in one call (a refusal comes before any model
work), reads each file and converts each label map once, and turns every user mistake into a
:class:`~demo.uploads.UserError` that says what to do. The seams live next door:

    uploads.py     every image file that enters: header checks, formats, decoded once
    canvas.py      the canvas <-> class ids, uploaded masks, fill, undo history
    results.py     result PNGs (image + mask + codes in the metadata) and the variant strip
    references.py  reference photos: manifest, codes encoded once, thumbnails, example masks

Result outputs (the tuple most events return, in this order)::

    result image path, result file path, variant strip, re-roll class update, locked update, status
"""

from __future__ import annotations

import ctypes
import functools
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from smis import ClassCodes, ResultMetadata, SMISPipeline, SMISResult
from smis.hub import WEAK_CODE_RATIO
from smis.labels import Box, letterbox_box, letterbox_labels, load_photo
from smis.parsing import NotAPersonError

from .canvas import BACKGROUND, LabelCanvas, compact, flood_fill
from .references import Reference, ReferenceLibrary, slug
from .results import ResultFiles, add_variant, strip_items
from .uploads import MASK, MAX_UPLOAD_BYTES, PHOTO, UserError, file_path, open_image

logger = logging.getLogger(__name__)

MAX_SEED = 2**31 - 1
#: Mask states kept for "Undo fill / upload".
MAX_HISTORY = 20
#: Gradient steps that fit a visitor's photo's codes so its re-synthesis keeps the photo's colours
#: (:meth:`smis.SMISPipeline.encode` ``refine``; CCP val, the bundled 384x256 model: colour error 15.4 -> 6.7 at
#: 20 steps, about 2.4 s on 2 threads; the 192x128 model: 16.6 -> 6.0, ~2-3 s on 2 CPU cores). ``$SMIS_REFINE_STEPS``
#: overrides it (0: the encoder's means only).
REFINE_STEPS = 20
MORPH_MIN_FRAMES, MORPH_MAX_FRAMES = 2, 48
#: Said wherever a mask would be predicted but no human parser is loaded.
NO_PARSER = "the human parser that predicts a photo's mask is not bundled yet"


def _heap_trimmer() -> Callable[[], None]:
    """``malloc_trim(0)`` where glibc has it: hand freed heap pages back to the OS.

    After a model call, glibc keeps the freed activations in its per-thread arenas, and the
    server's worker threads each grow their own: resident memory grew by ~1 GB over 240 calls
    (``python -m devtools.memory_bench``). Trimming after each model event keeps it flat at no
    measurable cost per call.
    """
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return lambda: None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int

    def release() -> None:
        trim(0)

    return release


release_heap = _heap_trimmer()


def event(fn: Callable | None = None, *, model: bool = False) -> Callable:
    """Wrap an event: refusals become one-line-logged :class:`UserError` toasts; nothing crashes the app.

    ``ValueError`` from the library carries a message meant for users. ``model=True``: the event
    ran the network, so freed memory is handed back to the OS afterwards.
    """

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except gr.Error as err:
                logger.info("refused %s: %s", fn.__name__, err.message)
                if isinstance(err, UserError):
                    raise
                raise UserError(err.message) from err
            except ValueError as err:
                text = str(err)
                logger.info("refused %s: %s", fn.__name__, text)
                raise UserError(text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")) from err
            except Exception as err:  # one bad request must not take the app down
                logger.exception("demo event %s failed", fn.__name__)
                raise UserError("Something went wrong on the server. Try again; if it persists, reload the "
                                "page.") from err
            finally:
                if model:
                    release_heap()

        return wrapper

    return wrap(fn) if fn is not None else wrap


def _quoted(names: Sequence[str]) -> str:
    """'a' / 'a' and 'b' / 'a', 'b' and 'c'."""
    q = [f"'{n}'" for n in names]
    return q[0] if len(q) == 1 else ", ".join(q[:-1]) + " and " + q[-1]


@dataclass
class Source:
    """A place codes come from (mixture, morph ends): checked first, encoded only when used."""

    name: str
    present: list[str]
    codes: Callable[[], ClassCodes]


class DemoHandlers:
    """Every demo event, on one pipeline. Thread-safe: the shared state is the reference-codes cache."""

    def __init__(self, pipeline: SMISPipeline, references: Iterable[Reference] = (),
                 workdir: str | Path | None = None, max_upload_bytes: int = MAX_UPLOAD_BYTES,
                 parser: Any = None, parser_note: str | None = None,
                 class_control: Mapping[str, float] | None = None, refine_steps: int | None = None):
        """``parser``: a :class:`smis.parsing.HumanParser` for "Start from a photo" and photos without
        a mask (``None``: the UI says masks cannot be predicted, ``parser_note`` why);
        ``class_control``: per class, how much its re-roll changes its own region against the rest, as
        measured on val (:func:`smis.hub.measured_class_control`); a re-roll of a weak class says so;
        ``refine_steps``: see :data:`REFINE_STEPS` (default: ``$SMIS_REFINE_STEPS`` or that)."""
        self.pipe = pipeline
        self.config = pipeline.config
        self.class_names: tuple[str, ...] = tuple(self.config.class_names)
        if parser is not None and tuple(parser.class_names) != self.class_names:
            parser_note = (f"The human parser's classes ({', '.join(parser.class_names)}) are not this model's, "
                           "so it is not used.")
            parser = None
        self.parser = parser
        self.parser_note = parser_note if parser is None else None
        self.max_upload_bytes = max_upload_bytes
        self.canvas = LabelCanvas(pipeline)
        self.files = ResultFiles(pipeline, workdir, max_upload_bytes)
        self.references = ReferenceLibrary(pipeline, references)
        self.class_control = {n: float(r) for n, r in (class_control or {}).items() if n in self.class_names}
        self.refine_steps = int(os.environ.get("SMIS_REFINE_STEPS", REFINE_STEPS)) if refine_steps is None \
            else int(refine_steps)

    def weak_code_note(self, name: str) -> str:
        """A note when ``name``'s code was measured to change its region little ("" otherwise)."""
        ratio = self.class_control.get(name)
        if ratio is None or ratio >= WEAK_CODE_RATIO:
            return ""
        return (f"This model's {name} code does little: on val, re-rolling it changed the {name} "
                f"{ratio:.1f}× as much as the rest of the image (most classes: several times more), "
                "so expect a near-identical result. See the model card.")

    # -- what the UI shows -----------------------------------------------------------------
    def backend_label(self) -> str:
        name = {"pytorch": "PyTorch", "onnxruntime": "ONNX Runtime"}.get(self.pipe.backend.name,
                                                                          self.pipe.backend.name)
        dev = str(self.pipe.backend.device)
        low = dev.lower()
        if low.startswith(("cuda", "gpu")) or "cuda" in low or "tensorrt" in low:
            where = f"GPU ({dev})"
        elif low.startswith("mps"):
            where = f"Apple GPU ({dev})"
        elif low.startswith("cpu") or "cpu" in low:
            where = "CPU"
        else:
            where = dev
        return f"{name} · {where}"

    def status(self, op: str | None = None, seconds: float | None = None, note: str = "") -> str:
        cfg = self.config
        parts = [f"**Backend** {self.backend_label()}",
                 f"**Model** `{cfg.name}` ({cfg.height}×{cfg.width}, {cfg.num_classes} classes)"]
        if op is not None and seconds is not None:
            parts.append(f"**Last call** {op}: {seconds:.2f} s")
        elif op is not None:
            parts.append(f"**Last call** {op}")
        if note:
            parts.append(note)
        return " · ".join(parts)

    def mix_choices(self) -> list[tuple[str, str]]:
        return [("keep", "keep"), *self.references.choices(), ("your photo", "user")]

    def present(self, labels: np.ndarray) -> list[str]:
        return [self.class_names[i] for i in np.unique(labels)]

    def _outputs(self, result: SMISResult, strip: Any, caption: str, op: str, seconds: float | None,
                 chosen: str | None = None, locked: Sequence[str] | None = None,
                 path: str | None = None, note: str = "", encoded: bytes | None = None) -> tuple:
        """(image, file, strip, re-roll class, locked classes, status) for a new current result.

        A new result is saved and joins the strip; ``path`` (a variant of the strip) does neither. The
        image shown, the download and the strip's new variant are that one file (one PNG encode, or none
        for the browser's checked PNG, ``encoded``: :meth:`ResultFiles.save`; the page scales the image up).
        """
        if path is None:
            path = self.files.save(result, f"smis-{caption.split(' · ')[0]}"
                                   + (f"-seed{result.seed}" if result.seed is not None else ""), encoded)
            strip_out = add_variant(strip, path, caption)
        else:
            strip_out = gr.update()
        present = self.present(result.labels)
        if chosen not in present:
            others = [n for n in present if self.config.class_id(n) != BACKGROUND]
            chosen = others[0] if others else present[0]
        kept = [n for n in (locked or []) if n in present]
        return (path, path, strip_out, gr.update(choices=present, value=chosen),
                gr.update(choices=present, value=kept), self.status(op, seconds, note))

    # -- the canvas: upload, fill, clear, undo ----------------------------------------------
    def _edit(self, before: np.ndarray | None, history: list | None, labels: np.ndarray) -> tuple:
        """Put ``labels`` on the canvas, remembering ``before`` (the canvas as it was) for 'Undo'."""
        history = list(history or [])
        if before is not None:
            history.append(compact(before))
        return self.canvas.to_editor(labels), history[-MAX_HISTORY:], self.canvas.colorize(labels)

    def _canvas_or_none(self, editor: Any) -> np.ndarray | None:
        """The canvas as class ids, or ``None`` when there is nothing usable to remember."""
        try:
            return self.canvas.to_labels(editor)
        except (gr.Error, ValueError):
            return None

    @event
    def upload_mask(self, file: Any, editor: Any, history: list | None) -> tuple:
        """A class-id PNG or a colour PNG in the palette -> the canvas (resized to the model)."""
        labels = self.canvas.mask_labels(open_image(file, "mask", MASK, self.max_upload_bytes))
        return self._edit(self._canvas_or_none(editor), history, labels)

    @staticmethod
    def fill_point(evt: gr.SelectData) -> list | None:
        """Where the label-map preview was clicked, ``[x, y]``, for :meth:`fill` (the page's click event)."""
        return list(evt.index) if isinstance(getattr(evt, "index", None), (list, tuple)) else None

    @event
    def fill(self, editor: Any, fill_class: str, history: list | None, point: Any) -> tuple:
        """Flood-fill the region under the click on the label-map preview (``point``: ``[x, y]`` or the click's
        :class:`gr.SelectData`) with ``fill_class``."""
        if not fill_class:
            raise UserError("Choose the fill class first.")
        cid = self.config.class_id(fill_class)
        try:
            x, y = (int(v) for v in getattr(point, "index", point))
        except (TypeError, ValueError) as err:
            raise UserError("Click on the label map to fill a region.") from err
        labels = self.canvas.to_labels(editor)
        return self._edit(labels, history, flood_fill(labels, x, y, cid))

    @event
    def clear_mask(self, editor: Any, history: list | None) -> tuple:
        return self._edit(self._canvas_or_none(editor), history, self.canvas.blank_labels())

    @event
    def undo(self, history: list | None) -> tuple:
        """Back to the canvas before the last fill / upload / clear / load (strokes: the canvas' own undo)."""
        history = list(history or [])
        if not history:
            gr.Warning("Nothing to undo here. To undo brush strokes, use the ↶ arrow on the canvas.")
            return gr.update(), history, gr.update()
        labels = history.pop().astype(np.int64)
        return self.canvas.to_editor(labels), history, self.canvas.colorize(labels)

    @event
    def edit_result_mask(self, result_file: Any, editor: Any, history: list | None) -> tuple:
        """Semantic manipulation, step 1: the current result's mask onto the canvas."""
        labels = self.files.load_metadata(result_file).labels
        return self._edit(self._canvas_or_none(editor), history, labels)

    # -- generate, re-roll, variants ---------------------------------------------------------
    @staticmethod
    def parse_seed(seed: Any, randomize: bool) -> int:
        if randomize:
            return secrets.randbelow(MAX_SEED + 1)
        if seed is None or seed == "":
            raise UserError(f"Enter a seed (a whole number from 0 to {MAX_SEED}) or tick 'random seed'.")
        try:
            value = float(seed)
        except (TypeError, ValueError) as err:
            raise UserError(f"The seed must be a whole number from 0 to {MAX_SEED}, got {seed!r}.") from err
        if not value.is_integer() or not 0 <= value <= MAX_SEED:
            raise UserError(f"The seed must be a whole number from 0 to {MAX_SEED}, got {seed!r}.")
        return int(value)

    @event(model=True)
    def generate(self, editor: Any, seed: Any, randomize: bool, strip: Any,
                 chosen: str | None = None, locked: Sequence[str] | None = None) -> tuple:
        """New codes from the seed on the drawn mask. Returns (seed used, label map, *result outputs)."""
        seed = self.parse_seed(seed, randomize)
        labels = self.canvas.to_labels(editor)
        t0 = time.perf_counter()
        result = self.pipe.generate(labels, seed=seed)
        dt = time.perf_counter() - t0
        return (seed, self.canvas.colorize(labels),
                *self._outputs(result, strip, f"generate · seed {seed}", "generate", dt, chosen, locked))

    def _class_to_reroll(self, result: ResultMetadata, name: str | None, locked: Sequence[str] | None) -> str:
        if not name:
            raise UserError("Pick the class to re-roll.")
        name = self.class_names[self.config.class_id(name)]
        present = self.present(result.labels)
        if name not in present:
            raise UserError(f"'{name}' is not in this result's mask; pick one of: {', '.join(present)}.")
        if name in (locked or []):
            raise UserError(f"'{name}' is locked; untick it under 'Locked classes' to re-roll it.")
        return name

    @event(model=True)
    def reroll(self, result_file: Any, class_name: str | None, locked: Sequence[str] | None, strip: Any) -> tuple:
        """New code for one class; every other class (and so every other region) stays the same."""
        result = self.files.load_metadata(result_file)
        name = self._class_to_reroll(result, class_name, locked)
        seed = secrets.randbelow(MAX_SEED + 1)
        t0 = time.perf_counter()
        new = self.pipe.reroll(result.labels, result.codes, [name], seed=seed)
        dt = time.perf_counter() - t0
        note = self.weak_code_note(name)
        if note:
            gr.Info(note)
        return self._outputs(new, strip, f"re-roll {name} · seed {seed}", "re-roll", dt, name, locked, note=note)

    @event(model=True)
    def reroll_unlocked(self, result_file: Any, locked: Sequence[str] | None, strip: Any,
                        chosen: str | None = None) -> tuple:
        """New codes for every class in the mask except the locked ones."""
        result = self.files.load_metadata(result_file)
        classes = [n for n in self.present(result.labels) if n not in (locked or [])]
        if not classes:
            raise UserError("Every class in this mask is locked; untick one under 'Locked classes'.")
        seed = secrets.randbelow(MAX_SEED + 1)
        t0 = time.perf_counter()
        new = self.pipe.reroll(result.labels, result.codes, classes, seed=seed)
        dt = time.perf_counter() - t0
        return self._outputs(new, strip, f"re-roll unlocked · seed {seed}", "re-roll unlocked", dt, chosen, locked)

    @event
    def select_variant(self, strip: Any, chosen: str | None, locked: Sequence[str] | None,
                       evt: gr.SelectData) -> tuple:
        """Go back to a variant of the strip: it becomes the current result."""
        items = strip_items(strip)
        index = evt.index if isinstance(evt.index, int) else (evt.index or [0])[0]
        if not 0 <= int(index) < len(items):
            raise UserError("That variant is no longer in the strip; pick another one.")
        path, caption = items[int(index)]
        result = self.files.load(path)
        return self._outputs(result, strip, caption, f"back to {caption.split(' ')[0]}", None, chosen, locked,
                             path=path)

    @event(model=True)
    def apply_mask_edit(self, editor: Any, result_file: Any, strip: Any, chosen: str | None = None,
                        locked: Sequence[str] | None = None) -> tuple:
        """Semantic manipulation, step 2: the edited mask, rendered with the current result's codes.

        Returns (label map, *result outputs).
        """
        result = self.files.load_metadata(result_file)
        labels = self.canvas.to_labels(editor)
        t0 = time.perf_counter()
        new = self.pipe.generate(labels, codes=result.codes)
        dt = time.perf_counter() - t0
        new.seed = result.seed
        return (self.canvas.colorize(labels),
                *self._outputs(new, strip, "mask edit · same codes", "mask edit", dt, chosen, locked))

    @event(model=True)
    def load_example(self, mask: Any, seed: Any) -> tuple:
        """An example mask onto the canvas and its image. Returns (editor, label map, *result outputs).

        Examples are computed once at launch, so the status names no time (it would be the launch's).
        """
        labels = self.canvas.mask_labels(open_image(mask, "example mask", MASK, self.max_upload_bytes))
        seed = self.parse_seed(seed, False)
        result = self.pipe.generate(labels, seed=seed)
        return (self.canvas.to_editor(labels), self.canvas.colorize(labels),
                *self._outputs(result, [], f"example · seed {seed}", "example (seed 0)", None))

    @event
    def reopen(self, file: Any, strip: Any, chosen: str | None = None,
               locked: Sequence[str] | None = None) -> tuple:
        """A PNG saved by this demo -> the current result again, its mask on the canvas.

        Returns (editor, label map, *result outputs, seed, random seed): its seed goes back into the Seed
        box (random off, so Generate makes it again), when it has one.
        """
        t0 = time.perf_counter()
        result = self.files.load(file)
        dt = time.perf_counter() - t0
        name = Path(file_path(file) or "result").stem
        seed = (gr.update(), gr.update()) if result.seed is None else (result.seed, False)
        return (self.canvas.to_editor(result.labels), self.canvas.colorize(result.labels),
                *self._outputs(result, strip, f"re-opened {name}", "re-open", dt, chosen, locked), *seed)

    # -- start from a photo: parse, encode, re-synthesise ---------------------------------------
    def no_parser_reason(self) -> str:
        """Why no mask can be predicted (lower case, no full stop)."""
        text = self.parser_note or NO_PARSER
        return (text[:1].lower() + text[1:]).rstrip(".")

    def parser_markdown(self) -> str:
        """The line under 'Start from a photo' that says whether masks are predicted."""
        if self.parser is not None:
            return ("Upload a full-body photo of one person: its mask is predicted onto the canvas, its codes are "
                    "encoded, and the result is the photo re-synthesised. Then re-roll, lock, mix or morph as usual; "
                    "fix the mask with the brushes and press *Re-synthesise* to keep the photo's codes.")
        return (f"⚠️ **No mask prediction:** {self.no_parser_reason()}. Upload a photo, draw its mask on the canvas "
                "(the photo is shown beside it) and press *Re-synthesise with the canvas mask*.")

    def _parse(self, rgb: np.ndarray, box: Box) -> tuple[np.ndarray, str | None]:
        """The parser's labels for a letterboxed photo, and why it is not one full-body person (``None``:
        it is). Only the photo's ``box`` is parsed and checked (its edges are the photo's, so a person cut
        off by the frame is refused); the letterbox bands are background, never a guess."""
        top, left, nh, nw = box
        try:
            labels, problem = self.parser.predict(rgb[top:top + nh, left:left + nw]).labels, None
        except NotAPersonError as err:
            labels, problem = err.result.labels, str(err)
        out = np.zeros(rgb.shape[:2], labels.dtype)
        out[top:top + nh, left:left + nw] = labels
        return out, problem

    def _photo(self, photo: Any) -> tuple[np.ndarray, Box]:
        """An uploaded photo -> RGB at the model's size (letterboxed; EXIF, alpha, grey handled) and the
        photo's box in it."""
        rgb = load_photo(open_image(photo, "photo", PHOTO, self.max_upload_bytes))
        return self.pipe.prepare_photo(rgb), letterbox_box(rgb.shape[:2], self.config.height, self.config.width)

    def side_by_side(self, rgb: np.ndarray, labels: np.ndarray | None, result: SMISResult | None) -> Image.Image:
        """photo | mask | re-synthesis at the model's size, upscaled like the result view (blank panels: grey)."""
        h, w, k = self.config.height, self.config.width, self.files.display_scale
        grey = Image.new("RGB", (w, h), (200, 200, 200))
        panels = [Image.fromarray(rgb), self.canvas.colorize(labels) if labels is not None else grey,
                  result.image.convert("RGB") if result is not None else grey]
        out = Image.new("RGB", (3 * w * k, h * k), (255, 255, 255))
        for i, (im, filt) in enumerate(zip(panels, (Image.LANCZOS, Image.NEAREST, Image.LANCZOS))):
            out.paste(im.resize((w * k, h * k), filt) if k > 1 else im, (i * w * k, 0))
        return out

    def _resynthesise(self, rgb: np.ndarray, labels: np.ndarray) -> tuple[SMISResult, float]:
        t0 = time.perf_counter()
        result = self.pipe.generate(labels, codes=self.pipe.encode(rgb, labels, refine=self.refine_steps))
        return result, time.perf_counter() - t0

    @event(model=True)
    def start_from_photo(self, photo: Any, editor: Any, history: list | None, strip: Any,
                         chosen: str | None = None, locked: Sequence[str] | None = None) -> tuple:
        """A photo -> its predicted mask on the canvas -> its codes -> the photo re-synthesised.

        Returns (editor, history, label map, photo | mask | re-synthesis, *result outputs). A photo
        that is not one full-body person: the parse goes on the canvas (to fix by hand), a warning
        says why, and the current result is left as it was; so it is without a parser.
        """
        rgb, box = self._photo(photo)
        unchanged = (gr.update(),) * 5
        if self.parser is None:
            gr.Warning(f"No mask predicted: {self.no_parser_reason()}. Draw the photo's mask on the canvas and "
                       "press 'Re-synthesise with the canvas mask'.")
            return (gr.update(), history, gr.update(), self.side_by_side(rgb, None, None), *unchanged,
                    self.status("photo (no parser)"))
        t0 = time.perf_counter()
        labels, problem = self._parse(rgb, box)
        dt_parse = time.perf_counter() - t0
        canvas_out = self._edit(self._canvas_or_none(editor), history, labels)
        if problem:
            gr.Warning(f"{problem} The predicted mask is on the canvas: fix it with the brushes, then press "
                       "'Re-synthesise with the canvas mask'.")
            return (*canvas_out, self.side_by_side(rgb, labels, None), *unchanged, self.status("parse", dt_parse))
        result, dt = self._resynthesise(rgb, labels)
        name = Path(file_path(photo) or "photo").stem
        outs = self._outputs(result, strip, f"photo {name} · re-synthesised", "parse + encode + generate",
                             dt_parse + dt, chosen, locked)
        return (*canvas_out, self.side_by_side(rgb, labels, result), *outs)

    @event(model=True)
    def resynthesise_photo(self, photo: Any, editor: Any, strip: Any, chosen: str | None = None,
                           locked: Sequence[str] | None = None) -> tuple:
        """The uploaded photo's codes encoded with the canvas mask (fixed or drawn by hand), re-synthesised.

        Returns (label map, photo | mask | re-synthesis, *result outputs).
        """
        if file_path(photo) is None:
            raise UserError("Upload a photo under 'Start from a photo' first.")
        labels = self.canvas.to_labels(editor)
        rgb, _ = self._photo(photo)
        result, dt = self._resynthesise(rgb, labels)
        name = Path(file_path(photo) or "photo").stem
        outs = self._outputs(result, strip, f"photo {name} · canvas mask", "encode + generate", dt, chosen, locked)
        return (self.canvas.colorize(labels), self.side_by_side(rgb, labels, result), *outs)

    # -- reference photos, appearance mixture, morphing ----------------------------------------
    def reference_gallery(self) -> list[tuple[str, str]]:
        return self.references.gallery(self.files.static_dir)

    def example_masks(self) -> list[tuple[str, str]]:
        return self.references.example_masks(self.files.static_dir)

    def _user_reference(self, photo: Any, mask: Any, strict: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """The visitor's photo (RGB) and its mask (class ids), each decoded once, at the same size.

        Without a mask the parser predicts it (on the photo letterboxed to the model); a photo that
        is not one full-body person is refused when ``strict``, else warned about.
        """
        if file_path(photo) is None:
            raise UserError("Upload your photo (with its mask, or alone: its mask is predicted) in 'Appearance "
                            "mixture' to use 'your photo'." if self.parser is not None else
                            "Upload your photo and its mask (in 'Appearance mixture') to use 'your photo'.")
        rgb = load_photo(open_image(photo, "photo", PHOTO, self.max_upload_bytes))  # EXIF, alpha, grey
        if file_path(mask) is None:
            if self.parser is None:
                raise UserError(f"Upload your photo's mask too: {self.no_parser_reason()}.")
            box = letterbox_box(rgb.shape[:2], self.config.height, self.config.width)
            rgb = self.pipe.prepare_photo(rgb)
            labels, problem = self._parse(rgb, box)
            if problem:
                if strict:
                    raise UserError(f"{problem} (Or upload its mask too to use this photo anyway.)")
                gr.Warning(problem)
            return rgb, labels
        mask_img = open_image(mask, "mask of your photo", MASK, self.max_upload_bytes)
        if (rgb.shape[1], rgb.shape[0]) != mask_img.size:
            raise UserError(f"Your photo is {rgb.shape[1]}x{rgb.shape[0]} but its mask is {mask_img.size[0]}x"
                            f"{mask_img.size[1]}; they must have the same size.")
        return rgb, self.canvas.mask_labels(mask_img, "mask of your photo", resize=False)

    @event
    def user_reference(self, photo: Any, mask: Any) -> Image.Image | None:
        """Preview (photo | mask) of the visitor's reference: photo + mask, or the photo alone with its
        predicted mask; a mask alone is checked."""
        if file_path(photo) is None or (file_path(mask) is None and self.parser is None):
            if file_path(photo) is not None:
                open_image(photo, "photo", PHOTO, self.max_upload_bytes)
            if file_path(mask) is not None:
                self.canvas.mask_labels(open_image(mask, "mask of your photo", MASK, self.max_upload_bytes),
                                        "mask of your photo")
            return None
        rgb, labels = self._user_reference(photo, mask, strict=False)
        h, w = self.config.height, self.config.width
        pair = Image.new("RGB", (w * 2, h))
        pair.paste(Image.fromarray(self.pipe.prepare_photo(rgb)), (0, 0))
        pair.paste(self.canvas.colorize(letterbox_labels(labels, h, w)), (w, 0))
        return pair

    def _source(self, source: str | None, current: ResultMetadata, strip: Any, photo: Any, mask: Any) -> Source:
        """A source choice, checked: ``"current"``, ``"strip:i"`` (a variant), ``"ref:<id>"``, ``"user"``."""
        if not source:
            raise UserError("Choose a source from the list.")
        if source == "current":
            return Source("current", self.present(current.labels), lambda: current.codes)
        kind, _, arg = source.partition(":")
        if kind == "strip":
            items = strip_items(strip)
            i = int(arg) if arg.isdigit() else -1
            if not 0 <= i < len(items):
                raise UserError("That variant is no longer in the strip; choose again.")
            res = self.files.load_metadata(items[i][0], "variant")
            return Source(items[i][1].split(" ")[0], self.present(res.labels), lambda: res.codes)
        if kind == "ref":
            present = self.present(self.references.labels(arg))
            return Source(f"example {arg}", present, lambda: self.references.codes(arg))
        if source == "user":
            rgb, labels = self._user_reference(photo, mask)
            return Source("your photo", self.present(labels),
                          lambda: self.pipe.encode(rgb, labels, refine=self.refine_steps))
        raise UserError(f"Unknown source {source!r}; choose one from the list.")

    @event
    def set_all_sources(self, source: str) -> list[str]:
        return [source or "keep"] * len(self.class_names)

    @event(model=True)
    def mix(self, result_file: Any, photo: Any, mask: Any, strip: Any, chosen: str | None,
            locked: Sequence[str] | None, *sources: str) -> tuple:
        """Each class's appearance from the photo chosen for it; the others keep the current codes.

        A class the current mask lacks still takes the code (it shows once painted, with 'Same codes,
        new mask'), with a warning; if no chosen class is in the mask, nothing would change: refused.
        """
        if len(sources) != len(self.class_names):
            raise UserError(f"Expected one source per class ({len(self.class_names)}), got {len(sources)}.")
        current = self.files.load_metadata(result_file)
        wanted = {c: s for c, s in enumerate(sources) if s and s != "keep"}
        if not wanted:
            raise UserError("Choose, for at least one class, the photo its appearance comes from.")
        in_mask = set(self.present(current.labels))
        absent = [self.class_names[c] for c in wanted if self.class_names[c] not in in_mask]
        if len(absent) == len(wanted):
            raise UserError(
                f"{_quoted(absent)} {'is' if len(absent) == 1 else 'are'} not in the current mask, so mixing "
                f"would not change the image. Choose classes the mask holds ({', '.join(sorted(in_mask))}), "
                "or paint the class first and mix again.")
        by_source = {s: self._source(s, current, strip, photo, mask) for s in dict.fromkeys(wanted.values())}
        notes = []
        if absent:
            notes.append(f"{_quoted(absent)} {'is' if len(absent) == 1 else 'are'} not in the current mask: "
                         "the code is taken but shows only where you paint that class")
        for s, src in by_source.items():
            lacking = [self.class_names[c] for c, sc in wanted.items()
                       if sc == s and self.class_names[c] not in src.present]
            if lacking:
                one = len(lacking) == 1
                notes.append(f"{_quoted(lacking)} {'is' if one else 'are'} not in {src.name}, so "
                             f"{'its code' if one else 'their codes'} from it carr{'ies' if one else 'y'} "
                             "no appearance")
        if notes:
            gr.Warning("; ".join(notes) + ".")
        t0 = time.perf_counter()
        codes = self.pipe.mix({c: by_source[s].codes() for c, s in wanted.items()}, base=current.codes)
        new = self.pipe.generate(current.labels, codes=codes)
        dt = time.perf_counter() - t0
        desc = ", ".join(f"{self.class_names[c]}←{by_source[s].name}" for c, s in sorted(wanted.items())
                         if self.class_names[c] in in_mask)
        return self._outputs(new, strip, f"mix · {desc}", "mix", dt, chosen, locked)

    def morph_choices(self, strip: Any) -> list[tuple[str, str]]:
        items = strip_items(strip)
        return ([("current result", "current")]
                + [(caption or f"variant {i + 1}", f"strip:{i}") for i, (_, caption) in enumerate(items)]
                + self.references.choices() + [("your photo (Appearance mixture tab)", "user")])

    def _morph_default_b(self) -> str:
        """B's default with fewer than two variants: the first reference, else the current result."""
        return f"ref:{next(iter(self.references)).id}" if len(self.references) else "current"

    @event
    def update_morph_choices(self, strip: Any, a: str | None, b: str | None) -> tuple:
        """Morph ends: the current result, every variant of the strip, the references, your photo."""
        choices = self.morph_choices(strip)
        values = [v for _, v in choices]
        n = len(strip_items(strip))
        default_b = f"strip:{n - 2}" if n >= 2 else self._morph_default_b()  # the previous variant
        a = a if a in values else "current"
        b = b if b in values else default_b
        return gr.update(choices=choices, value=a), gr.update(choices=choices, value=b)

    def morph_choices_js(self) -> str:
        """:meth:`update_morph_choices` as a page-only function ``(strip, a, b) -> [update of A, update of B]``
        for the strip's change: the same choices and defaults with no server round trip per new variant (20
        visitors re-rolling in their browsers would otherwise each still call the server for it). The parts
        that do not depend on the strip (references, your photo) come from here; a strip item in the page is
        ``{image: {path, url, ...}, caption}``, and like :func:`strip_items` one without a file is left out."""
        fixed = self.morph_choices([])
        head, tail = json.dumps([list(c) for c in fixed[:1]]), json.dumps([list(c) for c in fixed[1:]])
        return f"""(strip, a, b) => {{
  const items = (strip || []).filter((it) => it && (it.image?.path || it.image?.url));
  const variants = items.map((it, i) => [it.caption || `variant ${{i + 1}}`, `strip:${{i}}`]);
  const choices = [...{head}, ...variants, ...{tail}], values = choices.map((c) => c[1]);
  const n = variants.length;
  const update = (value, fallback) => ({{ __type__: 'update', choices,
    value: values.includes(value) ? value : fallback }});
  return [update(a, 'current'), update(b, n >= 2 ? `strip:${{n - 2}}` : {json.dumps(self._morph_default_b())})];
}}"""

    @event(model=True)
    def morph(self, result_file: Any, source_a: str, source_b: str, frames: Any, strip: Any,
              photo: Any = None, mask: Any = None,
              progress: gr.Progress = gr.Progress(track_tqdm=True)) -> tuple:  # noqa: B008
        """Frames from A's codes to B's on the current mask; returns (frames, slider, frame, GIF, status)."""
        try:
            steps = int(frames)
        except (TypeError, ValueError) as err:
            raise UserError(f"Frames must be a whole number from {MORPH_MIN_FRAMES} to {MORPH_MAX_FRAMES}.") from err
        if not MORPH_MIN_FRAMES <= steps <= MORPH_MAX_FRAMES:
            raise UserError(f"Frames must be from {MORPH_MIN_FRAMES} to {MORPH_MAX_FRAMES}, got {steps}.")
        if not source_a or not source_b:
            raise UserError("Choose both ends of the morph (A and B).")
        current = self.files.load_metadata(result_file)
        src_a, src_b = (self._source(s, current, strip, photo, mask) for s in (source_a, source_b))
        a, b = src_a.codes(), src_b.codes()
        if a == b:
            gr.Warning("A and B have the same codes, so every frame is the same; choose two different states.")
        t0 = time.perf_counter()
        results = self.pipe.morph(a, b, current.labels, steps=steps, progress=True)
        dt = time.perf_counter() - t0
        folder = self.files.new_dir()
        paths = [str(r.save(folder / f"morph-{i:02d}.png")) for i, r in enumerate(results)]
        k = self.files.display_scale  # the GIF is for looking at: upscaled like the result view
        images = [r.image.resize((r.image.width * k, r.image.height * k), Image.LANCZOS) if k > 1 else r.image
                  for r in results]
        gif = folder / f"smis-morph-{slug(src_a.name)}-to-{slug(src_b.name)}.gif"
        loop = images + images[-2:0:-1]  # there and back again
        loop[0].save(gif, save_all=True, append_images=loop[1:], duration=90, loop=0, optimize=False)
        ts = np.linspace(0.0, 1.0, steps)
        gallery = [(p, f"t = {t:.2f}") for p, t in zip(paths, ts)]
        return (gallery, gr.update(minimum=0, maximum=steps - 1, value=0, step=1, interactive=True),
                paths[0], str(gif), self.status(f"morph ({steps} frames)", dt))

    @event
    def scrub(self, frames: Any, index: Any) -> str | None:
        items = strip_items(frames)
        if not items:
            return None
        i = min(max(int(index or 0), 0), len(items) - 1)
        return items[i][0]

    @event
    def keep_frame(self, frames: Any, index: Any, strip: Any, chosen: str | None = None,
                   locked: Sequence[str] | None = None) -> tuple:
        """The scrubbed morph frame becomes the current result (and joins the strip)."""
        items = strip_items(frames)
        if not items:
            raise UserError("Make a morph first (button 'Morph').")
        i = min(max(int(index or 0), 0), len(items) - 1)
        result = self.files.load(items[i][0], "morph frame")
        return self._outputs(result, strip, f"morph frame {i + 1}/{len(items)}", "keep frame", None, chosen, locked)
