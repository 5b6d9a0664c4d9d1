"""Class names, palettes and label-map conversions (class ids <-> colours, files -> arrays).

Every mask that enters the library goes through :func:`load_mask`, which returns an ``int64``
array of class ids or raises a ``ValueError`` that says what was wrong and what to do.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

Color = tuple[int, int, int]

#: Largest mask side accepted from the outside world; bigger uploads are refused, not resized.
MAX_MASK_SIDE = 4096
#: Smallest mask side accepted (the generator needs at least one latent cell).
MIN_MASK_SIDE = 8


def voc_palette(n: int) -> tuple[Color, ...]:
    """Deterministic, well-separated colours (the PASCAL VOC bit-interleaving colormap)."""
    colors = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colors.append((r, g, b))
    return tuple(colors)


# CCP (Clothing Co-Parsing, Yang et al. CVPR 2014), the 10-class grouping of its classes.json.
CCP10_CLASSES = (
    "background", "hair", "skin", "upper clothes", "dress",
    "lower clothes", "legwear", "shoes", "bag", "accessories",
)
CCP10_PALETTE: tuple[Color, ...] = (
    (0, 0, 0), (139, 69, 19), (255, 205, 148), (220, 20, 60), (255, 105, 180),
    (30, 60, 200), (128, 0, 128), (255, 165, 0), (0, 160, 80), (0, 200, 220),
)

# DeepFashion as used by the paper (appendix B).
DEEPFASHION_CLASSES = (
    "background", "hair", "face", "skin", "top clothes", "bottom clothes", "socks", "shoes",
)
DEEPFASHION_PALETTE: tuple[Color, ...] = (
    (0, 0, 0), (139, 69, 19), (255, 205, 148), (222, 170, 130), (220, 20, 60),
    (30, 60, 200), (128, 0, 128), (255, 165, 0),
)

# Cityscapes, the 35 label ids 0..33 plus the licence plate (-1 in the official tools) as 34.
CITYSCAPES_CLASSES = (
    "unlabeled", "ego vehicle", "rectification border", "out of roi", "static", "dynamic",
    "ground", "road", "sidewalk", "parking", "rail track", "building", "wall", "fence",
    "guard rail", "bridge", "tunnel", "pole", "polegroup", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "caravan",
    "trailer", "train", "motorcycle", "bicycle", "license plate",
)
CITYSCAPES_PALETTE: tuple[Color, ...] = (
    (0, 0, 0), (1, 1, 1), (2, 2, 2), (3, 3, 3), (20, 20, 20), (111, 74, 0), (81, 0, 81),
    (128, 64, 128), (244, 35, 232), (250, 170, 160), (230, 150, 140), (70, 70, 70),
    (102, 102, 156), (190, 153, 153), (180, 165, 180), (150, 100, 100), (150, 120, 90),
    (153, 153, 153), (154, 154, 154), (250, 170, 30), (220, 220, 0), (107, 142, 35),
    (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70),
    (0, 60, 100), (0, 0, 90), (0, 0, 110), (0, 80, 100), (0, 0, 230), (119, 11, 32),
    (0, 0, 143),
)

# ADE20K SceneParsing: id 0 is "other" (the don't-care label, kept as a class as SPADE does).
ADE20K_CLASSES: tuple[str, ...] = ("other",) + tuple(
    """wall building sky floor tree ceiling road bed windowpane grass cabinet sidewalk person
    earth door table mountain plant curtain chair car water painting sofa shelf house sea mirror
    rug field armchair seat fence desk rock wardrobe lamp bathtub railing cushion base box column
    signboard chest_of_drawers counter sand sink skyscraper fireplace refrigerator grandstand path
    stairs runway case pool_table pillow screen_door stairway river bridge bookcase blind
    coffee_table toilet flower book hill bench countertop stove palm kitchen_island computer
    swivel_chair boat bar arcade_machine hovel bus towel light truck tower chandelier awning
    streetlight booth television_receiver airplane dirt_track apparel pole land bannister
    escalator ottoman bottle buffet poster stage van ship fountain conveyer_belt canopy washer
    plaything swimming_pool stool barrel basket waterfall tent bag minibike cradle oven ball food
    step tank trade_name microwave pot animal bicycle lake dishwasher screen blanket sculpture
    hood sconce vase traffic_light tray ashcan fan pier crt_screen plate monitor bulletin_board
    shower radiator glass clock flag""".split()
)
ADE20K_CLASSES = tuple(n.replace("_", " ") for n in ADE20K_CLASSES)
ADE20K_PALETTE = voc_palette(len(ADE20K_CLASSES))

# CamVid (SegNet tutorial version), 11 classes; train/data.py fills the void label (11) from the
# nearest labelled pixel by default (``camvid_void=`` maps it to a fixed class instead).
CAMVID_CLASSES = (
    "sky", "building", "pole", "road", "pavement", "tree", "sign symbol", "fence", "car",
    "pedestrian", "bicyclist",
)
CAMVID_PALETTE: tuple[Color, ...] = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
    (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
)

assert len(ADE20K_CLASSES) == 151 and len(CITYSCAPES_CLASSES) == 35


def ids_to_color(ids: np.ndarray, palette: Sequence[Color]) -> np.ndarray:
    """Class-id map (H, W) -> RGB uint8 (H, W, 3) in ``palette``."""
    lut = np.asarray(palette, dtype=np.uint8)
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= len(lut)):
        raise ValueError(f"class ids must lie in 0..{len(lut) - 1}, found {ids.min()}..{ids.max()}")
    return lut[ids]


def color_to_ids(rgb: np.ndarray, palette: Sequence[Color], snap: bool = False) -> np.ndarray:
    """RGB (H, W, 3) in ``palette`` -> class ids (H, W) int64.

    With ``snap=False`` every pixel must be exactly a palette colour; otherwise the unknown colours
    are listed in the error. ``snap=True`` maps each pixel to the nearest palette colour, for
    brush strokes whose edges a browser may have blended.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"a colour mask must be (H, W, 3), got shape {rgb.shape}")
    rgb = rgb[..., :3].astype(np.int32)
    pal = np.asarray(palette, dtype=np.int32)
    flat = rgb.reshape(-1, 3)
    if snap:
        d = ((flat[:, None, :] - pal[None, :, :]) ** 2).sum(-1)
        return d.argmin(1).reshape(rgb.shape[:2]).astype(np.int64)
    key = (flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2]
    pal_key = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
    order = np.argsort(pal_key)
    pos = np.searchsorted(pal_key[order], key)
    pos = np.clip(pos, 0, len(pal_key) - 1)
    found = pal_key[order][pos] == key
    if not found.all():
        bad, counts = np.unique(key[~found], return_counts=True)
        top = np.argsort(-counts)[:5]
        listed = ", ".join(
            f"#{int(bad[i]):06x} ({int(counts[i])} px)" for i in top
        )
        raise ValueError(
            f"the colour mask has {int((~found).sum())} pixels whose colour is not in the model's "
            f"palette ({len(bad)} unknown colours, e.g. {listed}). Paint only with the palette "
            "colours, or upload a single-channel PNG of class ids."
        )
    return order[pos].reshape(rgb.shape[:2]).astype(np.int64)


def _open_image(obj: str | os.PathLike | bytes | Image.Image, what: str) -> Image.Image:
    if isinstance(obj, Image.Image):
        return obj
    if isinstance(obj, bytes):
        if not obj:
            raise ValueError(f"the {what} file is empty; upload a PNG")
        src = io.BytesIO(obj)
    else:
        path = Path(obj)
        if not path.is_file():
            raise ValueError(f"{what} file {str(path)!r} does not exist")
        if path.stat().st_size == 0:
            raise ValueError(f"the {what} file {str(path)!r} is empty; upload a PNG")
        src = path
    try:
        img = Image.open(src)
        # Refuse absurd sizes from the header, before decoding a possible decompression bomb.
        check_side(img.size[::-1])
        img.load()
    except Image.DecompressionBombError as err:
        raise ValueError(f"the {what} is far too large to decode ({err}); resize it first") from err
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"the {what} could not be read as an image ({err}); upload a PNG") from err
    return img


def load_mask(
    mask: object,
    num_classes: int,
    palette: Sequence[Color],
    snap_colors: bool = False,
) -> np.ndarray:
    """Any accepted mask -> class ids (H, W) ``int64``.

    Accepts a path or bytes of a PNG, a ``PIL.Image`` (mode ``L``/``P``/``I`` = class ids,
    ``RGB``/``RGBA`` = colours in ``palette``), or an array: (H, W) integer ids, or (H, W, 3)
    uint8 colours. A (1, H, W) array is squeezed.
    """
    if mask is None:
        raise ValueError("no mask given: draw one, upload a class-id PNG, or pick an example")
    if isinstance(mask, (str, os.PathLike, bytes, Image.Image)):
        img = _open_image(mask, "mask")
        if img.mode in ("L", "P", "I", "I;16"):
            arr = np.asarray(img).astype(np.int64)
        elif img.mode in ("RGB", "RGBA"):
            arr = np.asarray(img.convert("RGB"))
        elif img.mode == "LA":
            arr = np.asarray(img)[..., 0].astype(np.int64)
        else:
            raise ValueError(
                f"unsupported mask image mode {img.mode!r}; use a single-channel PNG of class ids "
                "or an RGB PNG in the model's palette"
            )
    else:
        arr = np.asarray(mask)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        check_side(arr.shape[:2])
        if arr.dtype != np.uint8:
            raise ValueError(f"a colour mask must be uint8, got {arr.dtype}")
        return color_to_ids(arr, palette, snap=snap_colors)
    if arr.ndim != 2:
        raise ValueError(
            f"a mask must be (H, W) class ids or (H, W, 3) colours, got shape {arr.shape}"
        )
    check_side(arr.shape)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError("a class-id mask must hold whole numbers; got fractional values")
    elif arr.dtype.kind not in "iub":
        raise ValueError(f"a class-id mask must be integer, got dtype {arr.dtype}")
    ids = arr.astype(np.int64)
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= num_classes:
        bad = np.unique(ids[(ids < 0) | (ids >= num_classes)])[:10].tolist()
        raise ValueError(
            f"the mask holds class ids {bad} outside 0..{num_classes - 1} (this model has "
            f"{num_classes} classes); remap them, e.g. to 0 (background)"
        )
    return ids


def check_side(shape: Sequence[int], what: str = "mask") -> None:
    """Refuse an image whose (H, W) is outside ``MIN_MASK_SIDE..MAX_MASK_SIDE`` (read it from the header)."""
    h, w = int(shape[0]), int(shape[1])
    if min(h, w) < MIN_MASK_SIDE or max(h, w) > MAX_MASK_SIDE:
        raise ValueError(
            f"{what} size {h}x{w} is outside {MIN_MASK_SIDE}..{MAX_MASK_SIDE} pixels per side; "
            "resize it first"
        )


def photo_rgb(img: Image.Image) -> Image.Image:
    """A decoded photo as the camera meant it, in RGB: EXIF orientation applied, transparency over
    white, grey-scale (8 or 16 bit) and palette images expanded to RGB."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey: scale to 8 bits instead of clipping
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        img = Image.fromarray((arr * (255.0 / top) + 0.5).clip(0, 255).astype(np.uint8))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return img.convert("RGB")


def load_photo(photo: object) -> np.ndarray:
    """A path, bytes, PIL image or (H, W, 3|4) / (H, W) uint8 array -> RGB uint8 (H, W, 3).

    Files and PIL images go through :func:`photo_rgb` (EXIF orientation, alpha over white, grey).
    """
    if photo is None:
        raise ValueError("no photo given")
    if isinstance(photo, (str, os.PathLike, bytes, Image.Image)):
        arr = np.asarray(photo_rgb(_open_image(photo, "photo")))
    else:
        arr = np.asarray(photo)
        if arr.ndim == 3 and arr.shape[2] == 4:
            arr = arr[..., :3]
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"a photo must be (H, W, 3) RGB, got shape {arr.shape}")
        if arr.dtype != np.uint8:
            if arr.dtype.kind == "f" and arr.size and arr.max() <= 1.0 and arr.min() >= 0.0:
                arr = (arr * 255.0 + 0.5).astype(np.uint8)
            else:
                raise ValueError(f"a photo array must be uint8 (or float in [0, 1]), got {arr.dtype}")
    check_side(arr.shape[:2])
    return arr


Box = tuple[int, int, int, int]


def letterbox_box(size: Sequence[int], height: int, width: int) -> Box:
    """Where an image of ``size`` (h, w) lands when fitted into ``height`` x ``width`` with its
    aspect ratio kept: ``(top, left, h', w')``, centred."""
    h, w = int(size[0]), int(size[1])
    s = min(height / h, width / w)
    nh, nw = min(height, max(1, round(h * s))), min(width, max(1, round(w * s)))
    return (height - nh) // 2, (width - nw) // 2, nh, nw


def letterbox_photo(photo: np.ndarray, height: int, width: int, fill: Sequence[int] | None = None,
                    resample: int = Image.LANCZOS) -> tuple[np.ndarray, Box]:
    """An RGB uint8 photo (H, W, 3) fitted into ``height`` x ``width``: resized by PIL (``resample``,
    Lanczos by default) with its aspect kept, never stretched; the bands are ``fill`` (default: the
    mean colour of the photo's border, so they read as more background). Returns the photo and its
    box (see :func:`letterbox_box`)."""
    top, left, nh, nw = box = letterbox_box(photo.shape[:2], height, width)
    if (nh, nw) == photo.shape[:2] and (nh, nw) == (height, width):
        return photo, box
    if fill is None:
        edge = np.concatenate([photo[0], photo[-1], photo[:, 0], photo[:, -1]])
        fill = tuple(int(v + 0.5) for v in edge.reshape(-1, 3).mean(0))
    if (nh, nw) != photo.shape[:2]:
        photo = np.asarray(Image.fromarray(photo).resize((nw, nh), resample))
    out = np.empty((height, width, 3), np.uint8)
    out[:] = np.asarray(fill, np.uint8)
    out[top:top + nh, left:left + nw] = photo
    return out, box


def resize_labels(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest resize of a class-id map (exact ids, no blending)."""
    h, w = labels.shape
    if (h, w) == (height, width):
        return labels
    rows = (np.arange(height) * h) // height
    cols = (np.arange(width) * w) // width
    return labels[rows[:, None], cols[None, :]]


def letterbox_labels(labels: np.ndarray, height: int, width: int, background: int = 0) -> np.ndarray:
    """Class ids (H, W) fitted like :func:`letterbox_photo` (nearest, exact ids); bands are background."""
    top, left, nh, nw = letterbox_box(labels.shape, height, width)
    rows = (np.arange(nh) * labels.shape[0]) // nh
    cols = (np.arange(nw) * labels.shape[1]) // nw
    out = np.full((height, width), background, labels.dtype)
    out[top:top + nh, left:left + nw] = labels[rows[:, None], cols[None, :]]
    return out
