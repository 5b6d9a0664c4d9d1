"""Result files: every result is a PNG with its mask and codes in the metadata, and the variant strip.

The current result travels as that PNG (the image shown, the download, the re-open file, each
variant of the strip and each morph frame are all one file, encoded once): the server keeps no
per-visitor model state, and a click reads the PNG once. The page scales the image up with CSS; the
server makes no display copy. By default the files live in Gradio's upload folder, so Gradio serves
them where they are instead of hashing and copying every output file (the strip's too) on every
call. Per-request folders older than ``KEEP_FILES_S`` are deleted.

A result rendered in the visitor's browser arrives as the page's own PNG: the server checks it (decoded
once, demo/browser.py) and keeps its compressed pixels as they are, adding the mask and codes
(:func:`png_with_metadata`) instead of encoding the image again.
"""

from __future__ import annotations

import atexit
import os
import shutil
import struct
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gradio.utils import get_upload_folder
from PIL import PngImagePlugin

from smis import ResultMetadata, SMISConfig, SMISPipeline, SMISResult

from .references import slug
from .uploads import MAX_UPLOAD_BYTES, RESULT, UserError, file_path, open_image, open_image_header

#: Per-request files (results, frames, GIFs) older than this are deleted.
KEEP_FILES_S = 2 * 3600
#: Images made for looking at only (the morph GIF, photo | mask | re-synthesis) are upscaled (Lanczos) by a
#: whole factor to at least this height; results are shown as they are (the page scales them).
DISPLAY_MIN_HEIGHT = 384
#: zlib level of result PNGs: 1 encodes ~2x faster than PIL's default 6 for ~8 % more bytes.
PNG_COMPRESS_LEVEL = 1
#: Variants kept in the strip (oldest dropped first).
MAX_STRIP = 24

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

NO_RESULT = "Generate an image first (button 'Generate'), or re-open a PNG saved by this demo."
EXPIRED = ("This result has expired on the server (results are kept about two hours); "
           "re-open the PNG you downloaded, or generate again.")


class ResultFiles:
    """Saves results into per-request folders of ``workdir`` and reads them back for one model."""

    def __init__(self, pipeline: SMISPipeline, workdir: str | Path | None = None,
                 max_upload_bytes: int = MAX_UPLOAD_BYTES):
        self.pipe = pipeline
        self.config: SMISConfig = pipeline.config
        if workdir is None:  # in Gradio's upload folder: outputs are served from here, never copied
            os.makedirs(get_upload_folder(), exist_ok=True)
            workdir = tempfile.mkdtemp(prefix="smis-demo-", dir=get_upload_folder())
            atexit.register(shutil.rmtree, workdir, ignore_errors=True)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        #: Files made once at launch (thumbnails, example masks); never purged.
        self.static_dir = self.workdir / "static"
        self.static_dir.mkdir(exist_ok=True)
        self.max_upload_bytes = max_upload_bytes
        self._last_purge = 0.0
        self._lock = threading.Lock()

    def new_dir(self) -> Path:
        self._purge()
        folder = self.workdir / uuid.uuid4().hex[:12]
        folder.mkdir()
        return folder

    def _purge(self) -> None:
        now = time.time()
        with self._lock:
            if now - self._last_purge < 60:
                return
            self._last_purge = now
        for child in self.workdir.iterdir():
            try:
                if child.is_dir() and child != self.static_dir and now - child.stat().st_mtime > KEEP_FILES_S:
                    shutil.rmtree(child, ignore_errors=True)
            except OSError:
                pass

    def save(self, result: SMISResult, stem: str, encoded: bytes | None = None) -> str:
        """The result as a PNG with its mask and codes (:meth:`smis.SMISResult.pnginfo`), in a new folder.

        ``encoded``: a PNG of exactly ``result.image`` already made (the browser's, checked): its pixels are
        kept as they are with the metadata added, when :func:`png_with_metadata` takes it; else encoded here.
        """
        path = self.new_dir() / f"{slug(stem)}.png"
        info = result.pnginfo()  # the mask and codes, packed once
        data = png_with_metadata(encoded, info) if encoded is not None else None
        if data is not None:
            path.write_bytes(data)
        else:
            result.image.save(path, format="PNG", pnginfo=info, compress_level=PNG_COMPRESS_LEVEL)
        return str(path)

    @property
    def display_scale(self) -> int:
        """Whole factor by which images made only for looking at are upscaled (1: shown as they are)."""
        return max(1, -(-DISPLAY_MIN_HEIGHT // self.config.height))

    def load(self, value: Any, what: str = "result PNG") -> SMISResult:
        """A result PNG (path or Gradio file value) made by this model, with its mask at model size."""
        return self._checked(value, what, pixels=True)

    def load_metadata(self, value: Any, what: str = "result PNG") -> ResultMetadata:
        """Like :meth:`load` (the same checks), for the mask, codes and seed only: the pixels are not decoded
        (what a re-roll, a mask edit or a browser job needs)."""
        return self._checked(value, what, pixels=False)

    def _checked(self, value: Any, what: str, pixels: bool) -> SMISResult | ResultMetadata:
        path = file_path(value)
        if path is None:
            raise UserError(NO_RESULT)
        if not Path(path).is_file():
            raise UserError(EXPIRED)
        try:
            if pixels:
                result = SMISResult.load(open_image(path, what, RESULT, self.max_upload_bytes))
            else:
                with open_image_header(path, what, RESULT, self.max_upload_bytes) as img:
                    result = ResultMetadata.read(img)
        except UserError:  # the upload's own checks (a UserError is a ValueError too)
            raise
        except ValueError as err:
            raise UserError(f"This PNG {_reason(err)}. Open a PNG saved by this demo; metadata is lost when "
                            "a PNG is re-encoded (e.g. by some chat apps).") from err
        if not self.pipe.codes_fit(result.codes):
            raise UserError(
                f"This result was made by another model (codes {tuple(result.codes.values.shape)} for "
                f"{result.codes.num_classes} classes); this demo runs '{self.config.name}', which needs "
                f"{self.pipe.codes_shape}. Open a PNG saved by this demo.")
        result.labels = self.pipe.prepare_mask(result.labels)
        return result


def _chunk(cid: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + cid + body + struct.pack(">I", zlib.crc32(cid + body))


def png_with_metadata(png: bytes, info: PngImagePlugin.PngInfo) -> bytes | None:
    """An 8-bit RGB or RGBA PNG with ``info``'s chunks (the result's mask and codes) after its header, its
    compressed pixels (IDAT) as they are: what :meth:`ResultFiles.save` writes without encoding them again.

    Only IHDR, IDAT and IEND are kept: every other chunk of ``png`` is left out (a text chunk of its own never
    stands beside the server's mask and codes). ``None`` when it is anything else: another depth or colour type,
    a palette or another critical chunk, a bad CRC, bytes after IEND. It does not decode the pixels: the caller
    checked that they decode to the result's image.
    """
    if not png.startswith(PNG_SIGNATURE):
        return None
    pos, header, data = len(PNG_SIGNATURE), None, []
    while pos + 12 <= len(png):
        size, cid = struct.unpack(">I4s", png[pos:pos + 8])
        end = pos + 12 + size
        body = png[pos + 8:end - 4]
        if end > len(png) or zlib.crc32(cid + body) != struct.unpack(">I", png[end - 4:end])[0]:
            return None
        chunk, pos = png[pos:end], end
        if header is None:
            if cid != b"IHDR" or size != 13 or body[8] != 8 or body[9] not in (2, 6):  # 8 bits, RGB or RGBA
                return None
            header = chunk
        elif cid == b"IDAT":
            data.append(chunk)
        elif cid == b"IEND":
            if pos != len(png) or not data:
                return None
            meta = b"".join(_chunk(cid, body) for cid, body, *_ in info.chunks)
            return PNG_SIGNATURE + header + meta + b"".join(data) + chunk
        elif not cid[0] & 0x20:  # a critical chunk (PLTE, ...): not for an RGB image as this one
            return None
    return None


def _reason(err: ValueError) -> str:
    text = str(err)
    if "no SMIS metadata" in text:
        return "carries no SMIS metadata (codes and mask)"
    return "has damaged SMIS metadata"


# -- the variant strip (a gallery of result files) ---------------------------------------------

def strip_items(value: Any) -> list[tuple[str, str]]:
    """A gallery value (list of (path, caption) tuples, dicts or paths) -> list of (path, caption)."""
    items: list[tuple[str, str]] = []
    for item in value or []:
        if isinstance(item, (list, tuple)):
            path, caption = file_path(item[0]), (item[1] if len(item) > 1 else None)
        elif isinstance(item, dict):
            path, caption = file_path(item.get("image") or item), item.get("caption")
        else:
            path, caption = file_path(item), None
        if path:
            items.append((path, caption or ""))
    return items


def next_number(strip: Sequence[tuple[str, str]]) -> int:
    """The number of the next variant: one more than the last "#N" caption."""
    for _, caption in reversed(strip):
        if caption.startswith("#"):
            head = caption[1:].split(" ", 1)[0]
            if head.isdigit():
                return int(head) + 1
    return len(strip) + 1


def add_variant(strip: Any, path: str, caption: str) -> list[tuple[str, str]]:
    """The strip with a new variant "#N caption" at the end, at most ``MAX_STRIP`` long."""
    items = strip_items(strip)
    items.append((path, f"#{next_number(items)} {caption}"))
    return items[-MAX_STRIP:]
