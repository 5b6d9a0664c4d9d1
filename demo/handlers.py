"""UI values <-> :class:`smis.SMISPipeline`: every event of the demo is one method here.

Handlers take and return plain Gradio values (editor dicts, file paths, gallery lists, updates)
and turn every user mistake into a ``gr.Error`` that says what to do. The current result travels
as its PNG file (image + mask + codes in the PNG metadata), so the server keeps no per-user
model state, and cached examples, downloads and re-opened files all work the same way.

Result outputs (the tuple most handlers return, in this order)::

    result image path, result file path, variant strip, re-roll class update, locked update, status
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import secrets
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

import smis
from smis import ClassCodes, SMISPipeline, SMISResult
from smis.labels import MAX_MASK_SIDE, ids_to_color

logger = logging.getLogger(__name__)

#: Where the shipped reference photos and masks live (``examples.json`` + files).
DEFAULT_EXAMPLES_DIR = Path(smis.__file__).parent / "assets" / "examples" / "ccp"
MANIFEST_NAME = "examples.json"
#: Uploads larger than this are refused before they are decoded.
MAX_UPLOAD_BYTES = 10 * 2**20
MAX_SEED = 2**31 - 1
#: Variants kept in the strip (oldest dropped first) and mask states kept for "undo".
MAX_STRIP = 24
MAX_HISTORY = 20
MORPH_MIN_FRAMES, MORPH_MAX_FRAMES = 2, 48
#: Per-request files (results, frames, GIFs) older than this are deleted.
KEEP_FILES_S = 2 * 3600
BACKGROUND = 0

NO_RESULT = "Generate an image first (button 'Generate'), or re-open a PNG saved by this demo."


# ---------------------------------------------------------------------------------------------
# Reference photos (the shipped examples)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Reference:
    """One reference photo with its class-id mask (an entry of ``examples.json``)."""

    id: str
    photo: Path
    mask: Path
    classes: tuple[str, ...] = ()


def load_references(folder: str | Path | None = None,
                    class_names: Sequence[str] | None = None) -> list[Reference]:
    """The entries of ``folder/examples.json`` whose files exist (none if there is no manifest).

    The manifest is a list (or ``{"examples": [...]}``) of ``{"id", "photo", "mask", "classes"}``
    with paths relative to the manifest. With ``class_names``, a manifest whose top-level
    ``classes`` differ (masks made for another model) gives no references, with a warning.
    """
    folder = Path(folder) if folder is not None else DEFAULT_EXAMPLES_DIR
    manifest = folder / MANIFEST_NAME
    if not manifest.is_file():
        logger.info("no example manifest at %s; the demo starts without reference photos", manifest)
        return []
    try:
        data = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{manifest} is not valid JSON ({err}); fix or remove it") from err
    entries = data.get("examples") if isinstance(data, dict) else data
    declared = data.get("classes") if isinstance(data, dict) else None
    if class_names is not None and declared is not None and list(declared) != list(class_names):
        logger.warning("ignoring the examples in %s: their classes %s are not this model's %s",
                       folder, declared, list(class_names))
        return []
    if not isinstance(entries, list):
        raise ValueError(f"{manifest} must hold a list of examples (or {{'examples': [...]}})")
    refs: list[Reference] = []
    for i, entry in enumerate(entries):
        try:
            ref = Reference(str(entry["id"]), folder / entry["photo"], folder / entry["mask"],
                            tuple(str(c) for c in entry.get("classes", ())))
        except (KeyError, TypeError) as err:
            raise ValueError(f"{manifest}: example {i} needs 'id', 'photo' and 'mask' ({err!r})") from err
        missing = [str(p) for p in (ref.photo, ref.mask) if not p.is_file()]
        if missing:
            logger.warning("skipping example %r: missing %s", ref.id, ", ".join(missing))
            continue
        refs.append(ref)
    return refs


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

def user_errors(fn: Callable) -> Callable:
    """Turn ``ValueError`` into ``gr.Error`` (its message is meant for users); never crash the app."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except ValueError as err:
            raise gr.Error(str(err)) from err
        except Exception as err:  # one bad request must not take the app down
            logger.exception("demo handler %s failed", fn.__name__)
            raise gr.Error(f"Something went wrong ({type(err).__name__}: {err}). Try again; if it "
                           "persists, reload the page.") from err

    return wrapper


def _path(value: Any) -> str | None:
    """A Gradio file value (str path, dict with 'path', object with .name) -> path or None."""
    if value is None or value == "":
        return None
    if isinstance(value, (str, Path)):
        return str(value)
    if isinstance(value, dict):
        return value.get("path") or value.get("name")
    return getattr(value, "path", None) or getattr(value, "name", None)


def check_upload(value: Any, what: str, max_bytes: int = MAX_UPLOAD_BYTES) -> str:
    """Refuse missing, oversized, non-image or too-large-to-decode uploads before decoding them."""
    path = _path(value)
    if path is None:
        raise gr.Error(f"No {what} given: upload one first.")
    p = Path(path)
    if not p.is_file():
        raise gr.Error(f"The {what} upload is gone from the server; upload it again.")
    size = p.stat().st_size
    if size == 0:
        raise gr.Error(f"The {what} file is empty; upload a PNG or JPEG.")
    if size > max_bytes:
        raise gr.Error(f"The {what} file is {size / 2**20:.1f} MB; the limit is {max_bytes / 2**20:.0f} MB. "
                       "Upload a smaller image.")
    try:
        with Image.open(p) as img:  # reads the header only
            w, h = img.size
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise gr.Error(f"The {what} is not a readable image ({type(err).__name__}); upload a PNG or JPEG.") from err
    if max(w, h) > MAX_MASK_SIDE:
        raise gr.Error(f"The {what} is {w}x{h} pixels; the limit is {MAX_MASK_SIDE} per side. Resize it first.")
    return path


def _rgba(image: Any) -> np.ndarray:
    """An editor layer (array, PIL image or path) -> RGBA uint8 (H, W, 4)."""
    if isinstance(image, (str, Path)):
        with Image.open(image) as img:
            image = img.convert("RGBA")
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGBA"))
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"the canvas must be 8-bit, got {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"the canvas must be an RGB(A) image, got shape {arr.shape}")
    if arr.shape[2] == 3:
        arr = np.concatenate([arr, np.full(arr.shape[:2] + (1,), 255, np.uint8)], axis=2)
    return arr


def _strip(value: Any) -> list[tuple[str, str]]:
    """A gallery value (list of (path, caption) tuples, dicts or paths) -> list of (path, caption)."""
    items: list[tuple[str, str]] = []
    for item in value or []:
        if isinstance(item, (list, tuple)):
            path, caption = _path(item[0]), (item[1] if len(item) > 1 else None)
        elif isinstance(item, dict):
            path, caption = _path(item.get("image") or item), item.get("caption")
        else:
            path, caption = _path(item), None
        if path:
            items.append((path, caption or ""))
    return items


def _next_number(strip: Sequence[tuple[str, str]]) -> int:
    for _, caption in reversed(strip):
        if caption.startswith("#"):
            head = caption[1:].split(" ", 1)[0]
            if head.isdigit():
                return int(head) + 1
    return len(strip) + 1


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")[:40] or "result"


def starter_masks(config: smis.SMISConfig) -> dict[str, np.ndarray]:
    """Two simple figures drawn in the model's classes (for CCP-like class sets only)."""
    need = {"background", "hair", "skin", "upper clothes", "lower clothes", "dress", "shoes", "bag"}
    names = {n.lower(): i for i, n in enumerate(config.class_names)}
    if not need <= set(names):
        return {}
    h, w = config.height, config.width

    def box(x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
        return (x0 * w, y0 * h, x1 * w, y1 * h)

    def poly(*pts: tuple[float, float]) -> list[tuple[float, float]]:
        return [(x * w, y * h) for x, y in pts]

    masks = {}
    for kind in ("top and trousers", "dress and bag"):
        img = Image.new("L", (w, h), names["background"])
        d = ImageDraw.Draw(img)
        d.ellipse(box(0.36, 0.05, 0.64, 0.21), fill=names["hair"])
        d.ellipse(box(0.40, 0.09, 0.60, 0.23), fill=names["skin"])
        d.rectangle(box(0.46, 0.21, 0.54, 0.26), fill=names["skin"])
        d.polygon(poly((0.30, 0.27), (0.22, 0.52), (0.28, 0.53), (0.35, 0.30)), fill=names["skin"])
        d.polygon(poly((0.70, 0.27), (0.78, 0.52), (0.72, 0.53), (0.65, 0.30)), fill=names["skin"])
        if kind == "top and trousers":
            d.rounded_rectangle(box(0.30, 0.25, 0.70, 0.52), radius=0.05 * w, fill=names["upper clothes"])
            d.rectangle(box(0.33, 0.51, 0.49, 0.90), fill=names["lower clothes"])
            d.rectangle(box(0.51, 0.51, 0.67, 0.90), fill=names["lower clothes"])
        else:
            d.polygon(poly((0.34, 0.25), (0.66, 0.25), (0.78, 0.72), (0.22, 0.72)), fill=names["dress"])
            d.rectangle(box(0.38, 0.72, 0.46, 0.90), fill=names["skin"])
            d.rectangle(box(0.54, 0.72, 0.62, 0.90), fill=names["skin"])
            d.rounded_rectangle(box(0.76, 0.48, 0.92, 0.62), radius=0.02 * w, fill=names["bag"])
        d.ellipse(box(0.30, 0.89, 0.49, 0.95), fill=names["shoes"])
        d.ellipse(box(0.51, 0.89, 0.70, 0.95), fill=names["shoes"])
        masks[kind] = np.asarray(img).astype(np.int64)
    return masks


# ---------------------------------------------------------------------------------------------
# The handlers
# ---------------------------------------------------------------------------------------------

class DemoHandlers:
    """Every demo event, on one pipeline. Thread-safe: the only shared state is an encode cache."""

    def __init__(self, pipeline: SMISPipeline, references: Iterable[Reference] = (),
                 workdir: str | Path | None = None, max_upload_bytes: int = MAX_UPLOAD_BYTES):
        self.pipe = pipeline
        self.config = pipeline.config
        self.class_names: tuple[str, ...] = tuple(self.config.class_names)
        self.references: dict[str, Reference] = {r.id: r for r in references}
        if workdir is None:
            workdir = tempfile.mkdtemp(prefix="smis-demo-")
            atexit.register(shutil.rmtree, workdir, ignore_errors=True)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.static_dir = self.workdir / "static"
        self.static_dir.mkdir(exist_ok=True)
        self.max_upload_bytes = max_upload_bytes
        #: Canvas pixels per label pixel, so small models still get a comfortable canvas.
        self.scale = max(1, 512 // self.config.height)
        self._codes_cache: dict[str, ClassCodes] = {}
        self._lock = threading.Lock()
        self._last_purge = 0.0

    # -- what the UI needs to know ---------------------------------------------------------
    @property
    def canvas_size(self) -> tuple[int, int]:
        """(width, height) of the drawing canvas."""
        return self.config.width * self.scale, self.config.height * self.scale

    @property
    def brush_colors(self) -> list[str]:
        return ["#{:02x}{:02x}{:02x}".format(*c) for c in self.config.palette]

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
        if note:
            parts.append(note)
        return " · ".join(parts)

    def reference_choices(self) -> list[tuple[str, str]]:
        return [(f"example {rid}", f"ref:{rid}") for rid in self.references]

    def mix_choices(self) -> list[tuple[str, str]]:
        return [("keep (current result)", "keep"), *self.reference_choices(), ("your photo", "user")]

    # -- mask <-> canvas -------------------------------------------------------------------
    def labels_to_editor(self, labels: np.ndarray) -> dict:
        """A class-id map -> an editor value: opaque background + one layer holding the classes.

        Background pixels are transparent in the layer, so the eraser reveals the background.
        """
        s = self.scale
        labels = np.asarray(labels)
        up = np.repeat(np.repeat(labels, s, 0), s, 1)
        rgb = ids_to_color(up, self.config.palette)
        alpha = np.where(up != BACKGROUND, 255, 0).astype(np.uint8)
        background = np.empty(up.shape + (4,), np.uint8)
        background[..., :3] = self.config.palette[BACKGROUND]
        background[..., 3] = 255
        return {"background": background, "layers": [np.dstack([rgb, alpha])],
                "composite": np.dstack([rgb, np.full(up.shape, 255, np.uint8)])}

    def blank_editor(self) -> dict:
        return self.labels_to_editor(np.zeros((self.config.height, self.config.width), np.int64))

    def editor_to_labels(self, value: Any) -> np.ndarray:
        """The canvas -> class ids at the model's size, exactly.

        Background and layers are stacked with hard alpha (pixels at least half opaque win), so
        transparent or cleared canvas areas are background and no blended edge colour can leak
        into the label map; every colour then snaps to the nearest palette colour.
        """
        if value is None:
            raise gr.Error("The canvas is empty: draw a mask, upload one, or pick an example.")
        if not isinstance(value, dict):
            value = {"background": None, "layers": [], "composite": value}
        layers = [x for x in value.get("layers") or [] if x is not None]
        stack = [value.get("background"), *layers]
        stack = [x for x in stack if x is not None]
        if not stack and value.get("composite") is not None:
            stack = [value["composite"]]
        if not stack:
            raise gr.Error("The canvas is empty: draw a mask, upload one, or pick an example.")
        images = [_rgba(x) for x in stack]
        h, w = images[0].shape[:2]
        canvas = np.empty((h, w, 3), np.uint8)
        canvas[:] = self.config.palette[BACKGROUND]
        for im in images:
            if im.shape[:2] != (h, w):
                raise gr.Error("The canvas layers have different sizes; press 'Clear' and draw again.")
            opaque = im[..., 3] >= 128
            canvas[opaque] = im[..., :3][opaque]
        return self.pipe.prepare_mask(canvas, snap_colors=True)

    def colorize(self, labels: np.ndarray) -> Image.Image:
        return self.pipe.colorize(labels)

    def present(self, labels: np.ndarray) -> list[str]:
        return [self.class_names[i] for i in np.unique(labels)]

    # -- files -----------------------------------------------------------------------------
    def _new_dir(self) -> Path:
        self._purge()
        folder = self.workdir / uuid.uuid4().hex[:12]
        folder.mkdir()
        return folder

    def _purge(self) -> None:
        now = time.time()
        if now - self._last_purge < 60:
            return
        self._last_purge = now
        for child in self.workdir.iterdir():
            try:
                if child.is_dir() and child != self.static_dir and now - child.stat().st_mtime > KEEP_FILES_S:
                    shutil.rmtree(child, ignore_errors=True)
            except OSError:
                pass

    def save_result(self, result: SMISResult, stem: str) -> str:
        return str(result.save(self._new_dir() / f"{_slug(stem)}.png"))

    def load_result(self, value: Any) -> SMISResult:
        """A result PNG (path or Gradio file value) made by this model, with its mask at model size."""
        path = _path(value)
        if path is None:
            raise gr.Error(NO_RESULT)
        if not Path(path).is_file():
            raise gr.Error("This result has expired on the server (results are kept about two hours); "
                           "re-open the PNG you downloaded, or generate again.")
        result = SMISResult.load(check_upload(path, "result PNG", self.max_upload_bytes))
        cfg = self.config
        want = (cfg.num_classes, cfg.z_channels, *cfg.latent_grid())
        if result.codes.values.shape != want or tuple(result.codes.class_names) != self.class_names:
            raise gr.Error(
                f"This result was made by another model (codes {tuple(result.codes.values.shape)} for "
                f"{result.codes.num_classes} classes); this demo runs '{cfg.name}', which needs {want}. "
                "Open a PNG saved by this demo.")
        result.labels = self.pipe.prepare_mask(result.labels)
        return result

    # -- result outputs ----------------------------------------------------------------------
    def _show(self, result: SMISResult, strip: Any, caption: str, op: str, seconds: float,
              chosen: str | None = None, locked: Sequence[str] | None = None, add: bool = True,
              path: str | None = None) -> tuple:
        """(image, file, strip, re-roll class, locked classes, status) for a new current result."""
        path = path or self.save_result(result, f"smis-{caption.split(' · ')[0]}"
                                        + (f"-seed{result.seed}" if result.seed is not None else ""))
        items = _strip(strip)
        if add:
            items.append((path, f"#{_next_number(items)} {caption}"))
            items = items[-MAX_STRIP:]
        present = self.present(result.labels)
        if chosen not in present:
            others = [n for n in present if self.config.class_id(n) != BACKGROUND]
            chosen = others[0] if others else present[0]
        kept = [n for n in (locked or []) if n in present]
        return (path, path, items if add else gr.update(),
                gr.update(choices=present, value=chosen), gr.update(choices=present, value=kept),
                self.status(op, seconds))

    # -- draw --------------------------------------------------------------------------------
    def _edit(self, editor: Any, history: list | None, labels: np.ndarray) -> tuple:
        """Put ``labels`` on the canvas, remembering the canvas as it was for 'Undo'."""
        history = list(history or [])
        try:
            history.append(self.editor_to_labels(editor))
        except (gr.Error, ValueError):
            pass
        return self.labels_to_editor(labels), history[-MAX_HISTORY:], self.colorize(labels)

    # Pre-checks with no outputs: the UI runs them first and only then the handler that writes to the
    # canvas, so a refused file never leaves the canvas in a "processing" or "error" state.
    @user_errors
    def check_mask_file(self, file: Any) -> None:
        self.pipe.prepare_mask(check_upload(file, "mask", self.max_upload_bytes))

    @user_errors
    def check_result_file(self, file: Any) -> None:
        self.load_result(check_upload(file, "result PNG", self.max_upload_bytes))

    @user_errors
    def check_result(self, result_file: Any) -> None:
        self.load_result(result_file)

    @user_errors
    def upload_mask(self, file: Any, editor: Any, history: list | None) -> tuple:
        """A class-id PNG or a colour PNG in the palette -> the canvas (resized to the model)."""
        path = check_upload(file, "mask", self.max_upload_bytes)
        return self._edit(editor, history, self.pipe.prepare_mask(path))

    @user_errors
    def fill(self, editor: Any, fill_class: str, history: list | None, evt: gr.SelectData) -> tuple:
        """Flood-fill the region under the click on the label-map preview with ``fill_class``."""
        labels = self.editor_to_labels(editor)
        if not fill_class:
            raise gr.Error("Choose the fill class first.")
        cid = self.config.class_id(fill_class)
        try:
            x, y = (int(v) for v in evt.index)
        except (TypeError, ValueError) as err:
            raise gr.Error("Click on the label map to fill a region.") from err
        h, w = labels.shape
        x, y = min(max(x, 0), w - 1), min(max(y, 0), h - 1)
        img = Image.fromarray(labels.astype(np.uint8)).copy()  # fromarray shares a read-only buffer
        ImageDraw.floodfill(img, (x, y), cid, thresh=0)
        return self._edit(editor, history, np.asarray(img).astype(np.int64))

    @user_errors
    def clear_mask(self, editor: Any, history: list | None) -> tuple:
        return self._edit(editor, history, np.zeros((self.config.height, self.config.width), np.int64))

    @user_errors
    def undo(self, history: list | None) -> tuple:
        """Back to the canvas before the last fill / upload / clear / load (strokes: the canvas' own undo)."""
        history = list(history or [])
        if not history:
            gr.Warning("Nothing to undo here. To undo brush strokes, use the ↶ arrow on the canvas.")
            return gr.update(), history, gr.update()
        labels = history.pop()
        return self.labels_to_editor(labels), history, self.colorize(labels)

    @user_errors
    def edit_result_mask(self, result_file: Any, editor: Any, history: list | None) -> tuple:
        """Semantic manipulation, step 1: the current result's mask onto the canvas."""
        return self._edit(editor, history, self.load_result(result_file).labels)

    # -- generate and re-roll -------------------------------------------------------------------
    @staticmethod
    def _seed(seed: Any, randomize: bool) -> int:
        if randomize:
            return secrets.randbelow(MAX_SEED + 1)
        if seed is None or seed == "":
            raise gr.Error(f"Enter a seed (a whole number from 0 to {MAX_SEED}) or tick 'random seed'.")
        try:
            value = float(seed)
        except (TypeError, ValueError) as err:
            raise gr.Error(f"The seed must be a whole number from 0 to {MAX_SEED}, got {seed!r}.") from err
        if not value.is_integer() or not 0 <= value <= MAX_SEED:
            raise gr.Error(f"The seed must be a whole number from 0 to {MAX_SEED}, got {seed!r}.")
        return int(value)

    @user_errors
    def check_generate(self, seed: Any, randomize: bool) -> None:
        self._seed(seed, randomize)

    @user_errors
    def generate(self, editor: Any, seed: Any, randomize: bool, strip: Any,
                 chosen: str | None = None, locked: Sequence[str] | None = None) -> tuple:
        """New codes from the seed on the drawn mask. Returns (seed, label map, *result outputs)."""
        labels = self.editor_to_labels(editor)
        seed = self._seed(seed, randomize)
        t0 = time.perf_counter()
        result = self.pipe.generate(labels, seed=seed)
        dt = time.perf_counter() - t0
        return (seed, self.colorize(labels),
                *self._show(result, strip, f"generate · seed {seed}", "generate", dt, chosen, locked))

    def _check_class(self, name: str | None, present: Sequence[str]) -> str:
        if not name:
            raise gr.Error("Pick the class to re-roll.")
        name = self.class_names[self.config.class_id(name)]
        if name not in present:
            raise gr.Error(f"'{name}' is not in this result's mask; pick one of: {', '.join(present)}.")
        return name

    def _reroll_target(self, result_file: Any, class_name: str | None,
                       locked: Sequence[str] | None) -> tuple[SMISResult, str]:
        result = self.load_result(result_file)
        name = self._check_class(class_name, self.present(result.labels))
        if name in (locked or []):
            raise gr.Error(f"'{name}' is locked; untick it under 'Locked classes' to re-roll it.")
        return result, name

    @user_errors
    def check_reroll(self, result_file: Any, class_name: str | None, locked: Sequence[str] | None) -> None:
        self._reroll_target(result_file, class_name, locked)

    @user_errors
    def reroll(self, result_file: Any, class_name: str, locked: Sequence[str] | None, strip: Any) -> tuple:
        """New code for one class; every other class (and so every other region) stays the same."""
        result, name = self._reroll_target(result_file, class_name, locked)
        seed = secrets.randbelow(MAX_SEED + 1)
        t0 = time.perf_counter()
        new = self.pipe.reroll(result.labels, result.codes, [name], seed=seed)
        dt = time.perf_counter() - t0
        return self._show(new, strip, f"re-roll {name} · seed {seed}", "re-roll", dt, name, locked)

    def _unlocked(self, result_file: Any, locked: Sequence[str] | None) -> tuple[SMISResult, list[str]]:
        result = self.load_result(result_file)
        classes = [n for n in self.present(result.labels) if n not in (locked or [])]
        if not classes:
            raise gr.Error("Every class in this mask is locked; untick one under 'Locked classes'.")
        return result, classes

    @user_errors
    def check_reroll_unlocked(self, result_file: Any, locked: Sequence[str] | None) -> None:
        self._unlocked(result_file, locked)

    @user_errors
    def reroll_unlocked(self, result_file: Any, locked: Sequence[str] | None, strip: Any,
                        chosen: str | None = None) -> tuple:
        """New codes for every class in the mask except the locked ones."""
        result, classes = self._unlocked(result_file, locked)
        seed = secrets.randbelow(MAX_SEED + 1)
        t0 = time.perf_counter()
        new = self.pipe.reroll(result.labels, result.codes, classes, seed=seed)
        dt = time.perf_counter() - t0
        return self._show(new, strip, f"re-roll unlocked · seed {seed}", "re-roll unlocked", dt, chosen, locked)

    @user_errors
    def select_variant(self, strip: Any, chosen: str | None, locked: Sequence[str] | None,
                       evt: gr.SelectData) -> tuple:
        """Go back to a variant of the strip: it becomes the current result."""
        items = _strip(strip)
        index = evt.index if isinstance(evt.index, int) else (evt.index or [0])[0]
        if not 0 <= int(index) < len(items):
            raise gr.Error("That variant is no longer in the strip; pick another one.")
        path, caption = items[int(index)]
        result = self.load_result(path)
        return self._show(result, strip, caption, f"back to {caption.split(' ')[0]}", 0.0, chosen, locked,
                          add=False, path=path)

    @user_errors
    def apply_mask_edit(self, editor: Any, result_file: Any, strip: Any, chosen: str | None = None,
                        locked: Sequence[str] | None = None) -> tuple:
        """Semantic manipulation, step 2: the edited mask, rendered with the current result's codes.

        Returns (label map, *result outputs).
        """
        result = self.load_result(result_file)
        labels = self.editor_to_labels(editor)
        t0 = time.perf_counter()
        new = self.pipe.generate(labels, codes=result.codes)
        dt = time.perf_counter() - t0
        new.seed = result.seed
        return (self.colorize(labels),
                *self._show(new, strip, "mask edit · same codes", "mask edit", dt, chosen, locked))

    @user_errors
    def load_example(self, mask: Any, seed: Any) -> tuple:
        """An example mask onto the canvas and its image. Returns (editor, label map, *result outputs)."""
        labels = self.pipe.prepare_mask(check_upload(mask, "example mask", self.max_upload_bytes))
        seed = self._seed(seed, False)
        t0 = time.perf_counter()
        result = self.pipe.generate(labels, seed=seed)
        dt = time.perf_counter() - t0
        return (self.labels_to_editor(labels), self.colorize(labels),
                *self._show(result, [], f"example · seed {seed}", "example", dt))

    @user_errors
    def reopen(self, file: Any, strip: Any, chosen: str | None = None,
               locked: Sequence[str] | None = None) -> tuple:
        """A PNG saved by this demo -> the current result again, its mask on the canvas.

        Returns (editor, label map, *result outputs).
        """
        path = check_upload(file, "result PNG", self.max_upload_bytes)
        t0 = time.perf_counter()
        result = self.load_result(path)
        dt = time.perf_counter() - t0
        name = Path(path).stem
        return (self.labels_to_editor(result.labels), self.colorize(result.labels),
                *self._show(result, strip, f"re-opened {name}", "re-open", dt, chosen, locked))

    # -- references, mixture, morphing ----------------------------------------------------------
    def reference_gallery(self) -> list[tuple[str, str]]:
        """Side-by-side (photo | mask) thumbnails of the references, for the gallery."""
        items = []
        for ref in self.references.values():
            out = self.static_dir / f"ref-{_slug(ref.id)}.png"
            if not out.is_file():
                photo = Image.fromarray(self.pipe.prepare_photo(str(ref.photo)))
                mask = self.colorize(self.pipe.prepare_mask(str(ref.mask)))
                pair = Image.new("RGB", (photo.width * 2, photo.height))
                pair.paste(photo, (0, 0))
                pair.paste(mask, (photo.width, 0))
                pair.save(out)
            items.append((str(out), f"example {ref.id}"))
        return items

    def example_masks(self) -> list[tuple[str, str]]:
        """(colour mask PNG, label) for the example table: simple figures, then the references' masks."""
        items = []
        for name, labels in starter_masks(self.config).items():
            out = self.static_dir / f"starter-{_slug(name)}.png"
            self.colorize(labels).save(out)
            items.append((str(out), f"figure: {name}"))
        for ref in self.references.values():
            out = self.static_dir / f"mask-{_slug(ref.id)}.png"
            self.colorize(self.pipe.prepare_mask(str(ref.mask))).save(out)
            items.append((str(out), f"example {ref.id}"))
        return items

    @user_errors
    def user_reference(self, photo: Any, mask: Any) -> Image.Image | None:
        """Preview (photo | mask) of the visitor's reference once both files are there."""
        if _path(photo) is None or _path(mask) is None:
            return None
        photo_path, _, labels = self._user_files(photo, mask)
        pair = Image.new("RGB", (self.config.width * 2, self.config.height))
        pair.paste(Image.fromarray(self.pipe.prepare_photo(photo_path)), (0, 0))
        pair.paste(self.colorize(labels), (self.config.width, 0))
        return pair

    def _user_files(self, photo: Any, mask: Any) -> tuple[str, str, np.ndarray]:
        """Checked (photo path, mask path, labels at model size) of the visitor's reference."""
        photo_path = check_upload(photo, "photo", self.max_upload_bytes)
        mask_path = check_upload(mask, "mask of your photo", self.max_upload_bytes)
        with Image.open(photo_path) as p, Image.open(mask_path) as m:
            if p.size != m.size:
                raise gr.Error(f"Your photo is {p.size[0]}x{p.size[1]} but its mask is {m.size[0]}x{m.size[1]}; "
                               "they must have the same size.")
        return photo_path, mask_path, self.pipe.prepare_mask(mask_path)

    def _reference_codes(self, rid: str) -> tuple[ClassCodes, list[str]]:
        ref = self.references.get(rid)
        if ref is None:
            raise gr.Error(f"Unknown reference {rid!r}; pick one from the list.")
        with self._lock:
            codes = self._codes_cache.get(rid)
        if codes is None:
            codes = self.pipe.encode(str(ref.photo), str(ref.mask))
            with self._lock:
                self._codes_cache[rid] = codes
        return codes, self.present(self.pipe.prepare_mask(str(ref.mask)))

    def _check_source(self, source: str | None, strip: Any, photo: Any, mask: Any) -> None:
        """Refuse a source that cannot be used, without encoding anything."""
        if not source:
            raise gr.Error("Choose a source from the list.")
        if source == "current":
            return
        if source.startswith("strip:"):
            items = _strip(strip)
            i = int(source.split(":", 1)[1]) if source.split(":", 1)[1].isdigit() else -1
            if not 0 <= i < len(items):
                raise gr.Error("That variant is no longer in the strip; choose again.")
            self.load_result(items[i][0])
        elif source.startswith("ref:"):
            if source.split(":", 1)[1] not in self.references:
                raise gr.Error(f"Unknown reference {source.split(':', 1)[1]!r}; pick one from the list.")
        elif source == "user":
            if _path(photo) is None or _path(mask) is None:
                raise gr.Error("Upload your photo and its mask (in 'Appearance mixture') to use 'your photo'.")
            self._user_files(photo, mask)
        else:
            raise gr.Error(f"Unknown source {source!r}; choose one from the list.")

    def source_codes(self, source: str, current: SMISResult | None, strip: Any = None,
                     photo: Any = None, mask: Any = None) -> tuple[ClassCodes, list[str], str]:
        """A source choice -> (codes, classes present in it, short name).

        ``"current"``, ``"strip:i"`` (a variant), ``"ref:<id>"`` (an example photo) or ``"user"``.
        """
        if source == "current":
            if current is None:
                raise gr.Error(NO_RESULT)
            return current.codes, self.present(current.labels), "current"
        if source.startswith("strip:"):
            items = _strip(strip)
            i = int(source.split(":", 1)[1])
            if not 0 <= i < len(items):
                raise gr.Error("That variant is no longer in the strip; choose again.")
            res = self.load_result(items[i][0])
            return res.codes, self.present(res.labels), items[i][1].split(" ")[0]
        if source.startswith("ref:"):
            rid = source.split(":", 1)[1]
            codes, present = self._reference_codes(rid)
            return codes, present, f"example {rid}"
        if source == "user":
            if _path(photo) is None or _path(mask) is None:
                raise gr.Error("Upload your photo and its mask (in 'Appearance mixture') to use 'your photo'.")
            photo_path, mask_path, labels = self._user_files(photo, mask)
            return self.pipe.encode(photo_path, mask_path), self.present(labels), "your photo"
        raise gr.Error(f"Unknown source {source!r}; choose one from the list.")

    @user_errors
    def set_all_sources(self, source: str) -> list[str]:
        return [source or "keep"] * len(self.class_names)

    def _mix_plan(self, result_file: Any, photo: Any, mask: Any, strip: Any,
                  sources: Sequence[str]) -> tuple[SMISResult, dict[int, str]]:
        if len(sources) != len(self.class_names):
            raise gr.Error(f"Expected one source per class ({len(self.class_names)}), got {len(sources)}.")
        current = self.load_result(result_file)
        wanted = {c: s for c, s in enumerate(sources) if s and s != "keep"}
        if not wanted:
            raise gr.Error("Choose, for at least one class, the photo its appearance comes from.")
        for source in set(wanted.values()):
            self._check_source(source, strip, photo, mask)
        return current, wanted

    @user_errors
    def check_mix(self, result_file: Any, photo: Any, mask: Any, strip: Any, *sources: str) -> None:
        self._mix_plan(result_file, photo, mask, strip, sources)

    @user_errors
    def mix(self, result_file: Any, photo: Any, mask: Any, strip: Any, chosen: str | None,
            locked: Sequence[str] | None, *sources: str) -> tuple:
        """Each class's appearance from the photo chosen for it; the others keep the current codes."""
        current, wanted = self._mix_plan(result_file, photo, mask, strip, sources)
        by_source = {s: self.source_codes(s, current, strip, photo, mask) for s in set(wanted.values())}
        missing = [f"'{self.class_names[c]}' is not in {by_source[s][2]}" for c, s in wanted.items()
                   if self.class_names[c] not in by_source[s][1]]
        if missing:
            gr.Warning("; ".join(missing) + " — its code there carries no appearance.")
        t0 = time.perf_counter()
        codes = self.pipe.mix({c: by_source[s][0] for c, s in wanted.items()}, base=current.codes)
        new = self.pipe.generate(current.labels, codes=codes)
        dt = time.perf_counter() - t0
        desc = ", ".join(f"{self.class_names[c]}←{by_source[s][2]}" for c, s in sorted(wanted.items()))
        return self._show(new, strip, f"mix · {desc}", "mix", dt, chosen, locked)

    def morph_choices(self, strip: Any) -> list[tuple[str, str]]:
        items = _strip(strip)
        return ([("current result", "current")]
                + [(caption or f"variant {i + 1}", f"strip:{i}") for i, (_, caption) in enumerate(items)]
                + self.reference_choices() + [("your photo (Appearance mixture tab)", "user")])

    @user_errors
    def update_morph_choices(self, strip: Any, a: str | None, b: str | None) -> tuple:
        """Morph ends: the current result, every variant of the strip, the references, your photo."""
        choices = self.morph_choices(strip)
        values = [v for _, v in choices]
        n = len(_strip(strip))
        if n >= 2:
            default_b = f"strip:{n - 2}"  # the previous variant
        elif self.references:
            default_b = f"ref:{next(iter(self.references))}"
        else:
            default_b = "current"
        a = a if a in values else "current"
        b = b if b in values else default_b
        return gr.update(choices=choices, value=a), gr.update(choices=choices, value=b)

    def _morph_plan(self, result_file: Any, source_a: str | None, source_b: str | None, frames: Any,
                    strip: Any, photo: Any, mask: Any) -> tuple[SMISResult, int]:
        current = self.load_result(result_file)
        try:
            steps = int(frames)
        except (TypeError, ValueError) as err:
            raise gr.Error(f"Frames must be a whole number from {MORPH_MIN_FRAMES} to {MORPH_MAX_FRAMES}.") from err
        if not MORPH_MIN_FRAMES <= steps <= MORPH_MAX_FRAMES:
            raise gr.Error(f"Frames must be from {MORPH_MIN_FRAMES} to {MORPH_MAX_FRAMES}, got {steps}.")
        if not source_a or not source_b:
            raise gr.Error("Choose both ends of the morph (A and B).")
        for source in (source_a, source_b):
            self._check_source(source, strip, photo, mask)
        return current, steps

    @user_errors
    def check_morph(self, result_file: Any, source_a: str | None, source_b: str | None, frames: Any,
                    strip: Any, photo: Any = None, mask: Any = None) -> None:
        self._morph_plan(result_file, source_a, source_b, frames, strip, photo, mask)

    @user_errors
    def morph(self, result_file: Any, source_a: str, source_b: str, frames: Any, strip: Any,
              photo: Any = None, mask: Any = None,
              progress: gr.Progress = gr.Progress(track_tqdm=True)) -> tuple:  # noqa: B008
        """Frames from A's codes to B's on the current mask; returns (frames, slider, frame, GIF, status)."""
        current, steps = self._morph_plan(result_file, source_a, source_b, frames, strip, photo, mask)
        a, _, name_a = self.source_codes(source_a, current, strip, photo, mask)
        b, _, name_b = self.source_codes(source_b, current, strip, photo, mask)
        if a == b:
            gr.Warning("A and B have the same codes, so every frame is the same; choose two different states.")
        t0 = time.perf_counter()
        results = self.pipe.morph(a, b, current.labels, steps=steps, progress=True)
        dt = time.perf_counter() - t0
        folder = self._new_dir()
        paths = [str(r.save(folder / f"morph-{i:02d}.png")) for i, r in enumerate(results)]
        images = [r.image for r in results]
        gif = folder / f"smis-morph-{_slug(name_a)}-to-{_slug(name_b)}.gif"
        loop = images + images[-2:0:-1]  # there and back again
        loop[0].save(gif, save_all=True, append_images=loop[1:], duration=90, loop=0, optimize=False)
        ts = np.linspace(0.0, 1.0, steps)
        gallery = [(p, f"t = {t:.2f}") for p, t in zip(paths, ts)]
        return (gallery, gr.update(minimum=0, maximum=steps - 1, value=0, step=1, interactive=True),
                paths[0], str(gif), self.status(f"morph ({steps} frames)", dt))

    @user_errors
    def scrub(self, frames: Any, index: Any) -> str | None:
        items = _strip(frames)
        if not items:
            return None
        i = min(max(int(index or 0), 0), len(items) - 1)
        return items[i][0]

    @user_errors
    def check_frames(self, frames: Any) -> None:
        if not _strip(frames):
            raise gr.Error("Make a morph first (button 'Morph').")

    @user_errors
    def keep_frame(self, frames: Any, index: Any, strip: Any, chosen: str | None = None,
                   locked: Sequence[str] | None = None) -> tuple:
        """The scrubbed morph frame becomes the current result (and joins the strip)."""
        items = _strip(frames)
        if not items:
            raise gr.Error("Make a morph first (button 'Morph').")
        i = min(max(int(index or 0), 0), len(items) - 1)
        result = self.load_result(items[i][0])
        return self._show(result, strip, f"morph frame {i + 1}/{len(items)}", "keep frame", 0.0, chosen, locked)
