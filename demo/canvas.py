"""Label maps in the UI: the drawing canvas <-> class ids, uploaded masks, fill, the undo history.

The canvas is an image editor with a fixed palette. :class:`Canvas` is that editor with a checked
input: each layer's header is read before anything is decoded (a 10000x10000 background is refused
at once, a damaged one gets a message instead of Gradio's "could not preprocess"), and the layers
the browser sends as blobs live in a bounded store (Gradio keeps one entry per canvas change and
frees only the one an event consumes).
"""

from __future__ import annotations

import logging
import threading
from abc import ABCMeta
from collections import OrderedDict
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image, ImageDraw

from smis import SMISPipeline
from smis.labels import color_to_ids, ids_to_color, load_mask

from .uploads import CANVAS, UserError, file_path, open_image, open_image_bytes

logger = logging.getLogger(__name__)

BACKGROUND = 0
#: A colour upload with more distinct colours outside the palette than this is taken for a photo.
PHOTO_COLOURS = 64
EMPTY = "The canvas is empty: draw a mask, upload one, or pick an example."


class BlobStore:
    """The editor's pending layer blobs, oldest dropped first past ``max_items`` or ``max_bytes``."""

    def __init__(self, max_items: int = 256, max_bytes: int = 64 * 2**20):
        self.max_items, self.max_bytes = max_items, max_bytes
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _size(entry: Any) -> int:
        parts = [entry.background, entry.composite, *(entry.layers or [])]
        return sum(len(p) for p in parts if p)

    def get(self, key: str, default: Any = None) -> Any:
        return self._items.get(key, default)

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __setitem__(self, key: str, entry: Any) -> None:
        with self._lock:
            self._items[key] = entry
            self._items.move_to_end(key)
            self._sizes[key] = self._size(entry)
            while len(self._items) > 1 and (len(self._items) > self.max_items
                                            or sum(self._sizes.values()) > self.max_bytes):
                old, _ = self._items.popitem(last=False)
                self._sizes.pop(old, None)

    def pop(self, key: str, *default: Any) -> Any:
        with self._lock:
            self._sizes.pop(key, None)
            return self._items.pop(key, *default)

    @property
    def nbytes(self) -> int:
        return sum(self._sizes.values())


class _NoStub(type(gr.ImageEditor)):
    """Gradio's component metaclass writes a ``.pyi`` stub next to the source of every component
    subclass it sees; this one builds the class without writing into the package."""

    def __new__(mcs, name: str, bases: tuple, attrs: dict):
        return ABCMeta.__new__(mcs, name, bases, attrs)


class Canvas(gr.ImageEditor, metaclass=_NoStub):
    """``gr.ImageEditor`` (rendered as one) whose value arrives as RGBA arrays, checked before decoding.

    Its events get ``{"background", "layers", "composite"}`` like ``type="numpy", image_mode="RGBA"``
    (the composite only when there is nothing else), whatever ``type`` it was built with.
    """

    is_template = True  # the browser renders it as the ImageEditor it is
    #: Shared by every copy Gradio makes of the component (one per session that updates it).
    blobs = BlobStore()

    # ImageEditor.__init__ sets a plain dict; every copy uses the shared, bounded store instead.
    # (No __init__ here: Gradio reads the component's props from ImageEditor's signature.)
    @property
    def blob_storage(self) -> BlobStore:  # type: ignore[override]
        return Canvas.blobs

    @blob_storage.setter
    def blob_storage(self, value: Any) -> None:
        pass

    def preprocess(self, payload: Any) -> dict | None:
        try:
            return self._read(payload)
        except UserError as err:  # refused before the event runs: log it as the events do
            logger.info("refused canvas: %s", err.message)
            raise

    def _read(self, payload: Any) -> dict | None:
        if payload is None:
            return None
        if payload.id is not None:
            blobs = self.blob_storage.pop(payload.id, None)
            if blobs is None:
                raise UserError("The drawing did not reach the server (it was kept too long); "
                                "draw one more stroke, or press 'Clear', then try again.")
            background, layers, composite = blobs.background, blobs.layers, blobs.composite
            read = open_image_bytes
        else:
            background, layers, composite = payload.background, payload.layers, payload.composite
            read = open_image
        layers = [x for x in layers or [] if x is not None]
        if background is None and not layers:  # the composite only when nothing else came
            background = composite

        def load(x: Any, what: str) -> np.ndarray | None:
            return None if x is None else np.asarray(read(x, what, CANVAS).convert("RGBA"))

        return {"background": load(background, "canvas background"),
                "layers": [load(x, f"canvas layer {i + 1}") for i, x in enumerate(layers)],
                "composite": None}


class CanvasValue(Canvas):
    """The canvas' value as the page last read it: a hidden twin that the server's events take instead of the canvas.

    Gradio's page refreshes the loading status of every component that any event has read (or shown progress on)
    after every status change of every event, and the editor answers each refresh by fetching its images and
    uploading them again (about 30 uploads per re-roll, though no re-roll reads the canvas). So no server event
    reads the editor: a page-only step copies the editor's value here first (:func:`demo.ui.reading_canvas`; the
    editor uploads its images once, for that click), and the server's event reads this. It is the editor on the
    server (the same payload, checks and API) and a plain JSON value in the page, which has no uploads of its own.
    """

    def get_block_name(self) -> str:
        return "json"

    def get_block_class(self) -> str:
        return "json"


class LabelCanvas:
    """Class-id maps <-> editor values for one pipeline; the canvas is ``scale`` times the model size."""

    def __init__(self, pipeline: SMISPipeline):
        self.pipe = pipeline
        self.config = pipeline.config
        #: Canvas pixels per label pixel, so small models still get a comfortable canvas.
        self.scale = max(1, 512 // self.config.height)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the drawing canvas."""
        return self.config.width * self.scale, self.config.height * self.scale

    @property
    def brush_colors(self) -> list[str]:
        return ["#{:02x}{:02x}{:02x}".format(*c) for c in self.config.palette]

    def to_editor(self, labels: np.ndarray) -> dict:
        """A class-id map -> an editor value: opaque background + one layer holding the classes.

        Background pixels are transparent in the layer, so the eraser reveals the background.
        """
        s = self.scale
        up = np.repeat(np.repeat(np.asarray(labels), s, 0), s, 1)
        rgb = ids_to_color(up, self.config.palette)
        alpha = np.where(up != BACKGROUND, 255, 0).astype(np.uint8)
        background = np.empty(up.shape + (4,), np.uint8)
        background[..., :3] = self.config.palette[BACKGROUND]
        background[..., 3] = 255
        return {"background": background, "layers": [np.dstack([rgb, alpha])],
                "composite": np.dstack([rgb, np.full(up.shape, 255, np.uint8)])}

    def blank_labels(self) -> np.ndarray:
        return np.zeros((self.config.height, self.config.width), np.int64)

    def to_labels(self, value: Any) -> np.ndarray:
        """The canvas -> class ids at the model's size, exactly.

        Background and layers are stacked with hard alpha (pixels at least half opaque win), so
        transparent or cleared areas are background and no blended edge colour can leak into the
        label map. The stack is sampled at the model's pixels first (nearest, as a mask upload is
        resized), then every colour snaps to the nearest palette colour.
        """
        if value is None:
            raise UserError(EMPTY)
        if not isinstance(value, dict):
            value = {"background": None, "layers": [], "composite": value}
        stack = [x for x in [value.get("background"), *(value.get("layers") or [])] if x is not None]
        if not stack and value.get("composite") is not None:
            stack = [value["composite"]]
        if not stack:
            raise UserError(EMPTY)
        images = [_rgba(x) for x in stack]
        h, w = images[0].shape[:2]
        if any(im.shape[:2] != (h, w) for im in images):
            raise UserError("The canvas layers have different sizes; press 'Clear' and draw again.")
        rows = (np.arange(self.config.height) * h) // self.config.height
        cols = (np.arange(self.config.width) * w) // self.config.width
        canvas = np.empty((len(rows), len(cols), 3), np.uint8)
        canvas[:] = self.config.palette[BACKGROUND]
        for im in images:
            im = im[rows[:, None], cols[None, :]]
            opaque = im[..., 3] >= 128
            canvas[opaque] = im[..., :3][opaque]
        # a canvas has a few distinct colours: snap those, not every pixel (7x faster at 192x128)
        colours, where = np.unique(_key(canvas).ravel(), return_inverse=True)
        rgb = np.stack([colours >> 16, (colours >> 8) & 255, colours & 255], axis=-1)[None]
        return color_to_ids(rgb, self.config.palette, snap=True)[0][where].reshape(canvas.shape[:2])

    def mask_labels(self, img: Image.Image, what: str = "mask", resize: bool = True) -> np.ndarray:
        """An uploaded (decoded) mask image -> class ids at the model's size (``resize=False``: at its own).

        Single-channel images are class ids; colour images must use the palette exactly. A colour
        image with many colours outside the palette is called a photo, not listed colour by colour.
        """
        read = self.pipe.prepare_mask if resize else self._read_mask
        if img.mode in ("P", "PA"):
            # Indexed: read by colour when every colour used is a class colour (what the visitor sees,
            # e.g. a drawing an optimiser made indexed), else by index (a class-id PNG with a display
            # palette).
            idx = np.asarray(img)
            idx = idx[..., 0] if idx.ndim == 3 else idx
            pal = np.asarray(img.getpalette() or [0, 0, 0], np.uint8).reshape(-1, 3)
            used = np.unique(idx)
            if used.max() >= len(pal) or not self._all_class_colours(pal[used]):
                return read(idx)
            rgb = pal[idx]
        elif img.mode in ("RGB", "RGBA"):
            rgb = np.asarray(img.convert("RGB"))
        else:
            return read(img)
        try:
            return read(rgb)
        except ValueError as err:
            raise UserError(self._colour_refusal(rgb, what)) from err

    def _read_mask(self, mask: Any) -> np.ndarray:
        return load_mask(mask, self.config.num_classes, self.config.palette)

    def _all_class_colours(self, rgb: np.ndarray) -> bool:
        return bool(np.isin(_key(rgb), _key(np.asarray(self.config.palette))).all())

    def _colour_refusal(self, rgb: np.ndarray, what: str) -> str:
        key = _key(rgb)
        off = ~np.isin(key, _key(np.asarray(self.config.palette)))
        colours, counts = np.unique(key[off], return_counts=True)
        if len(colours) > PHOTO_COLOURS:
            return (f"This {what} looks like a photo, not a mask: it has {len(colours)} colours that are not "
                    "class colours. A mask has one flat colour per class (see the legend). Put photos under "
                    "'Appearance mixture → Your photo'.")
        top = ", ".join(f"#{int(c):06x}" for c in colours[np.argsort(-counts)][:3])
        return (f"{int(off.sum())} pixels of the {what} have colours that are not class colours ({top}"
                f"{', …' if len(colours) > 3 else ''}). Paint only with the legend's colours and save as PNG, "
                "or upload a single-channel PNG of class ids.")

    def colorize(self, labels: np.ndarray) -> Image.Image:
        return self.pipe.colorize(labels)


def _key(rgb: np.ndarray) -> np.ndarray:
    """RGB (..., 3) -> one int per colour."""
    rgb = np.asarray(rgb).astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _rgba(image: Any) -> np.ndarray:
    """An editor layer (array, PIL image or file) -> RGBA uint8 (H, W, 4)."""
    if not isinstance(image, (np.ndarray, Image.Image)) and file_path(image) is not None:
        image = open_image(image, "canvas layer", CANVAS)
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGBA"))
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise UserError(f"The canvas must be 8-bit, got {arr.dtype}.")
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise UserError(f"The canvas must be an RGB(A) image, got shape {arr.shape}.")
    if arr.shape[2] == 3:
        arr = np.concatenate([arr, np.full(arr.shape[:2] + (1,), 255, np.uint8)], axis=2)
    return arr


def flood_fill(labels: np.ndarray, x: int, y: int, class_id: int) -> np.ndarray:
    """The 4-connected region of ``labels`` under (x, y) set to ``class_id`` (a new array)."""
    h, w = labels.shape
    x, y = min(max(int(x), 0), w - 1), min(max(int(y), 0), h - 1)
    img = Image.fromarray(labels.astype(np.uint8)).copy()  # fromarray shares a read-only buffer
    ImageDraw.floodfill(img, (x, y), class_id, thresh=0)
    return np.asarray(img).astype(np.int64)


def compact(labels: np.ndarray) -> np.ndarray:
    """A label map as it is kept in the undo history (uint8: 8x smaller than int64)."""
    return np.asarray(labels).astype(np.uint8 if labels.max(initial=0) < 256 else np.int16)
