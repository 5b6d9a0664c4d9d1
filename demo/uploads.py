"""Every image file that enters the demo: checked from its header, then decoded exactly once.

Each upload box takes a fixed set of formats, said in its label and in its refusal message:

    mask (upload, "its mask")  PNG: single-channel class ids, or colours of the model's palette
    result (re-open, strip)    PNG saved by this demo (mask and codes in its metadata)
    photo ("your photo")       JPEG, PNG or WebP, one frame
    canvas layers              PNG or WebP (what the browser's editor sends)

An image is refused before it is decoded when it is missing, empty, over the size limit, not an
image, in another format, animated, or outside the side limits of :func:`smis.labels.check_side`
(the one owner of that rule). Refusals are :class:`UserError`: the message is for the visitor, and
the server logs one line instead of a traceback.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from smis.labels import check_side

#: Uploads larger than this are refused before they are opened.
MAX_UPLOAD_BYTES = 10 * 2**20


class UserError(gr.Error):
    """A refusal meant for the visitor: shown as a toast, logged as one line, no traceback."""

    def __init__(self, message: str):
        super().__init__(message, print_exception=False)


@dataclass(frozen=True)
class Kind:
    """What an upload box accepts."""

    formats: tuple[str, ...]  # PIL format names
    advice: str  # what to upload instead, for every refusal


MASK = Kind(("PNG",), "upload a PNG mask (class ids, or the palette colours of the legend)")
RESULT = Kind(("PNG",), "open a PNG saved by this demo")
PHOTO = Kind(("JPEG", "PNG", "WEBP"), "upload a JPEG, PNG or WebP photo")
CANVAS = Kind(("PNG", "WEBP"), "press 'Clear' and draw again (API: send PNG layers)")

_FORMAT_NAMES = {"JPEG": "a JPEG", "GIF": "a GIF", "WEBP": "a WebP", "PNG": "a PNG", "BMP": "a BMP",
                 "TIFF": "a TIFF", "MPO": "a JPEG"}


def file_path(value: Any) -> str | None:
    """A Gradio file value (str path, dict with 'path', object with .path/.name) -> path or None."""
    if value is None or value == "":
        return None
    if isinstance(value, (str, Path)):
        return str(value)
    if isinstance(value, dict):
        return value.get("path") or value.get("name")
    return getattr(value, "path", None) or getattr(value, "name", None)


def check_file(value: Any, what: str, kind: Kind, max_bytes: int = MAX_UPLOAD_BYTES) -> str:
    """The path of an uploaded file that exists, is not empty and is not over ``max_bytes``."""
    path = file_path(value)
    if path is None:
        raise UserError(f"No {what} given: {kind.advice}.")
    p = Path(path)
    if not p.is_file():
        raise UserError(f"The {what} upload is gone from the server; upload it again.")
    size = p.stat().st_size
    if size == 0:
        raise UserError(f"The {what} file is empty; {kind.advice}.")
    if size > max_bytes:
        raise UserError(f"The {what} file is {size / 2**20:.1f} MB; the limit is {max_bytes / 2**20:.0f} MB. "
                        "Upload a smaller image.")
    return path


def open_image(value: Any, what: str, kind: Kind, max_bytes: int = MAX_UPLOAD_BYTES) -> Image.Image:
    """An uploaded file (path or Gradio file value) -> a decoded PIL image, refused early if it can't be used."""
    return _decode(check_file(value, what, kind, max_bytes), what, kind)


def open_image_bytes(data: bytes, what: str, kind: Kind, max_bytes: int = MAX_UPLOAD_BYTES) -> Image.Image:
    """Like :func:`open_image`, for bytes (the editor sends its layers as blobs)."""
    if not data:
        raise UserError(f"The {what} is empty; {kind.advice}.")
    if len(data) > max_bytes:
        raise UserError(f"The {what} is {len(data) / 2**20:.1f} MB; the limit is {max_bytes / 2**20:.0f} MB.")
    return _decode(io.BytesIO(data), what, kind)


def open_image_header(value: Any, what: str, kind: Kind, max_bytes: int = MAX_UPLOAD_BYTES) -> Image.Image:
    """Like :func:`open_image`, with the same checks, but the pixels are not decoded (for the metadata only)."""
    return _decode(check_file(value, what, kind, max_bytes), what, kind, pixels=False)


def _decode(src: str | io.BytesIO, what: str, kind: Kind, pixels: bool = True) -> Image.Image:
    try:
        with warnings.catch_warnings():  # sides are checked below, with a message for the visitor
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(src)  # reads the header only
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise UserError(f"The {what} is not an image file (or it is damaged); {kind.advice}.") from None
    fmt = (img.format or "").upper()
    if fmt not in kind.formats:
        raise UserError(_format_refusal(what, fmt, kind))
    if getattr(img, "n_frames", 1) > 1:
        raise UserError(f"The {what} is animated ({img.n_frames} frames); {kind.advice} with one frame.")
    try:
        check_side(img.size[::-1], what)  # from the header: nothing is decoded yet
    except ValueError as err:
        raise UserError(f"The {err}.") from None
    if not pixels:
        return img
    try:
        img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise UserError(f"The {what} is damaged: it could not be decoded; {kind.advice}.") from None
    return img


def _format_refusal(what: str, fmt: str, kind: Kind) -> str:
    name = _FORMAT_NAMES.get(fmt, f"a {fmt} file" if fmt else "an unknown format")
    if kind is MASK and fmt in ("JPEG", "MPO"):
        return (f"The {what} is a JPEG: JPEG compression changes the colours, so the classes cannot be read "
                "exactly. Save the mask as PNG.")
    if fmt == "GIF" and kind is not PHOTO:
        return (f"The {what} is a GIF: a GIF stores colour indices, which would be read as class ids and give "
                f"a random mask. Save it as PNG; {kind.advice}.")
    return f"The {what} is {name}; {kind.advice}."
