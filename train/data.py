"""Datasets for GroupDNet training and evaluation: one ``Dataset`` class, several on-disk layouts.

Every layout is listed into :class:`Pair` records (photo, label, optional instance map) and read
by :class:`SMISDataset`, which returns ``{"image": float32 (3, H, W) in [-1, 1], "label": int64
(H, W), "instance": int64 (H, W) (layouts with instance maps only), "path": str}``.

The layouts (``fmt``: generic, deepfashion, cityscapes, ade20k, ccp, camvid) are listed by
:mod:`train.formats`.

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

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .formats import FILL, INVALID, BadFile, Color, Pair, list_pairs

logger = logging.getLogger(__name__)

LABEL_MODES = ("L", "P", "I", "I;16", "I;16L", "I;16B")


# -------------------------------------------------------------------------------------------
# Records
# -------------------------------------------------------------------------------------------

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

    ``fmt``: one of :data:`train.formats.FORMATS`; ``split``: train / val / test / all. ``instances=False``
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
