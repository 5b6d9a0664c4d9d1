"""Reference photos (the shipped examples), their codes, and the example masks of the start strip.

``examples.json`` lists photos with their class-id masks. :class:`ReferenceLibrary` encodes each
photo once (codes and the classes its mask holds are cached) and draws the thumbnails.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import smis
from smis import ClassCodes, SMISConfig, SMISPipeline

from .uploads import UserError

logger = logging.getLogger(__name__)

#: Where the shipped reference photos and masks live (``examples.json`` + files).
DEFAULT_EXAMPLES_DIR = Path(smis.__file__).parent / "assets" / "examples" / "ccp"
MANIFEST_NAME = "examples.json"


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


def slug(text: str) -> str:
    """A file-name-safe form of ``text``."""
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")[:40] or "result"


class ReferenceLibrary:
    """The references of one pipeline: codes encoded once per photo, masks read once."""

    def __init__(self, pipeline: SMISPipeline, references: Iterable[Reference] = ()):
        self.pipe = pipeline
        self.by_id: dict[str, Reference] = {r.id: r for r in references}
        self._masks: dict[str, np.ndarray] = {}
        self._codes: dict[str, ClassCodes] = {}
        self._lock = threading.Lock()

    def __contains__(self, rid: str) -> bool:
        return rid in self.by_id

    def __iter__(self):
        return iter(self.by_id.values())

    def __len__(self) -> int:
        return len(self.by_id)

    def choices(self) -> list[tuple[str, str]]:
        """(label, value) pairs for the source dropdowns."""
        return [(f"example {rid}", f"ref:{rid}") for rid in self.by_id]

    def get(self, rid: str) -> Reference:
        ref = self.by_id.get(rid)
        if ref is None:
            raise UserError(f"Unknown reference {rid!r}; pick one from the list.")
        return ref

    def labels(self, rid: str) -> np.ndarray:
        """The reference's mask at the model's size."""
        ref = self.get(rid)
        with self._lock:
            labels = self._masks.get(rid)
        if labels is None:
            labels = self.pipe.prepare_mask(str(ref.mask))
            with self._lock:
                self._masks[rid] = labels
        return labels

    def codes(self, rid: str) -> ClassCodes:
        """The encoder's codes of the reference photo (encoded on first use)."""
        ref = self.get(rid)
        with self._lock:
            codes = self._codes.get(rid)
        if codes is None:
            codes = self.pipe.encode(str(ref.photo), str(ref.mask))
            with self._lock:
                self._codes[rid] = codes
        return codes

    def gallery(self, folder: Path) -> list[tuple[str, str]]:
        """Side-by-side (photo | mask) thumbnails, written once into ``folder``."""
        items = []
        for ref in self.by_id.values():
            out = folder / f"ref-{slug(ref.id)}.png"
            if not out.is_file():
                photo = Image.fromarray(self.pipe.prepare_photo(str(ref.photo)))
                mask = self.pipe.colorize(self.labels(ref.id))
                pair = Image.new("RGB", (photo.width * 2, photo.height))
                pair.paste(photo, (0, 0))
                pair.paste(mask, (photo.width, 0))
                pair.save(out)
            items.append((str(out), f"example {ref.id}"))
        return items

    def example_masks(self, folder: Path) -> list[tuple[str, str]]:
        """(colour mask PNG, label) for the example strip: simple figures, then the references' masks."""
        items = []
        for name, labels in starter_masks(self.pipe.config).items():
            out = folder / f"starter-{slug(name)}.png"
            self.pipe.colorize(labels).save(out)
            items.append((str(out), f"figure: {name}"))
        for ref in self.by_id.values():
            out = folder / f"mask-{slug(ref.id)}.png"
            self.pipe.colorize(self.labels(ref.id)).save(out)
            items.append((str(out), f"example {ref.id}"))
        return items


def starter_masks(config: SMISConfig) -> dict[str, np.ndarray]:
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
