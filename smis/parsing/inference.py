"""Inference: photos or image batches -> class ids (:class:`HumanParser`), and the full-body check."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..labels import Box, ids_to_color, letterbox_box, letterbox_photo, load_photo
from .config import ONNX_NAME, Color, ParserConfig, resolve_parser_dir
from .network import OnnxParserNet, ParserNet, _has_onnxruntime, fuse_batchnorm


class NotAPersonError(ValueError):
    """:meth:`HumanParser.predict` found no usable full-body person; ``.result`` holds the parse."""

    def __init__(self, message: str, result: ParseResult):
        super().__init__(message)
        self.result = result


@dataclass
class ParseResult:
    """One parsed photo, at the photo's size."""

    #: Class ids (H, W) int64.
    labels: np.ndarray
    #: Probability of the chosen class per pixel (H, W) float32 in [0, 1].
    confidence: np.ndarray
    class_names: tuple[str, ...]
    palette: tuple[Color, ...]
    #: Class probabilities (C, h, w) float32 over the photo at the parser's resolution (before the
    #: resize to the photo's size), as :meth:`HumanParser.predict` saw them; the cut-off checks read
    #: them along the edges. ``None`` (a result built from labels alone): they read the labels.
    probabilities: np.ndarray | None = None

    @property
    def foreground_fraction(self) -> float:
        """Fraction of pixels that are not background (class 0)."""
        return float((self.labels != 0).mean())

    @property
    def mean_confidence(self) -> float:
        """Mean confidence over the person (over the whole photo when there is no person)."""
        fg = self.labels != 0
        return float(self.confidence[fg].mean() if fg.any() else self.confidence.mean())

    def colorize(self) -> Image.Image:
        """The labels as an RGB image in the parser's palette."""
        return Image.fromarray(ids_to_color(self.labels, self.palette))


#: The shoulder line (where the head ends, for ``heads``) is the first row whose person pixels are at
#: least this share of ``ParserConfig.torso_classes``.
SHOULDER_SHARE = 0.4


def person_measures(result: ParseResult, config: ParserConfig) -> dict[str, float]:
    """What the full-body check looks at: ``foreground`` (fraction of non-background pixels),
    ``confidence`` (mean over the person), ``height`` (fraction of the rows the person spans),
    ``feet`` (fraction of the person's pixels in ``config.feet_classes``), ``bottom_cut`` and
    ``top_cut`` (mean probability that a pixel along the photo's bottom / top edge is a part of the
    person that should not touch it: see :func:`edge_cut`) and ``heads`` (the person's height over the
    square root of the head's area: see :func:`heads_tall`)."""
    fg = result.labels != 0
    rows = np.flatnonzero(fg.mean(1) > 0.01)
    feet = np.isin(result.labels, config.feet_classes).sum() / max(int(fg.sum()), 1) if config.feet_classes else 1.0
    return {"foreground": float(fg.mean()), "confidence": result.mean_confidence,
            "height": float((rows[-1] - rows[0] + 1) / fg.shape[0]) if rows.size else 0.0, "feet": float(feet),
            "bottom_cut": edge_cut(result, config.bottom_classes, config.edge_rows, bottom=True),
            "top_cut": edge_cut(result, config.top_classes, config.edge_rows, bottom=False),
            "heads": heads_tall(result.labels, rows, config)}


def edge_cut(result: ParseResult, allowed: tuple[int, ...], rows: float, bottom: bool) -> float:
    """Mean probability that a pixel of the photo's bottom (or top) ``rows`` fraction of rows is a part of
    the person other than ``allowed``: 0 when only background (and, say, shoes) touches that edge, the
    share of the edge the person runs into when the frame cuts them off. Read from
    ``result.probabilities`` (soft: a cut the parser half-labels as background still counts) or, without
    them, from the labels."""
    src = result.probabilities if result.probabilities is not None else result.labels
    h = src.shape[-2]
    k = max(1, round(rows * h))
    band = src[..., h - k:, :] if bottom else src[..., :k, :]
    keep = [0, *allowed]
    if result.probabilities is None:
        return float((~np.isin(band, keep)).mean())
    return max(0.0, float(1.0 - band[keep].sum(0).mean()))


def heads_tall(labels: np.ndarray, rows: np.ndarray, config: ParserConfig) -> float:
    """How many times the person (spanning ``rows``) is as tall as the square root of the head's area:
    ``config.head_classes`` above the shoulder line (see :data:`SHOULDER_SHARE`). A full-body person
    scores 5–9, one whose legs are cut off less; ``inf`` when there is no person or no torso to tell."""
    if not rows.size or not config.head_classes or not config.torso_classes:
        return float("inf")
    person = np.maximum((labels != 0).sum(1), 1)
    shoulders = np.flatnonzero(np.isin(labels, config.torso_classes).sum(1) >= SHOULDER_SHARE * person)
    if not shoulders.size:
        return float("inf")
    head = int(np.isin(labels[:shoulders[0]], config.head_classes).sum())
    return float((rows[-1] - rows[0] + 1) / np.sqrt(max(head, 1)))


#: Said by the cut-off rules: what to upload instead.
WHOLE_PERSON = "Upload a photo that shows the whole person, head to feet."


def check_person(result: ParseResult, config: ParserConfig) -> str | None:
    """Why ``result`` is not one full-body person (a message for users), or ``None`` if it looks fine."""
    m = person_measures(result, config)
    if m["foreground"] < config.min_foreground:
        return (f"No person found in the photo: only {100 * m['foreground']:.1f}% of it looks like a person or "
                "clothing. Upload a full-body photo of one person, standing, that fills most of the frame.")
    if m["confidence"] < config.min_confidence:
        return (f"The parser is unsure about this photo (mean confidence {m['confidence']:.2f}, below "
                f"{config.min_confidence:.2f}), so the mask would be unreliable. Upload a clear, well-lit "
                "full-body photo of one person against a simple background.")
    if m["bottom_cut"] > config.max_bottom_cut:
        return ("The feet are cut off by the bottom of the photo: the person's legs or clothes run into its "
                f"edge. {WHOLE_PERSON}")
    if m["top_cut"] > config.max_top_cut:
        return f"The head is cut off by the top of the photo. {WHOLE_PERSON}"
    if m["height"] < config.min_person_height:
        return (f"The person covers only {100 * m['height']:.0f}% of the photo's height; crop the photo to the "
                "person, head to feet, or upload a full-body photo.")
    if config.min_feet > 0 and config.feet_classes and m["feet"] < config.min_feet:
        names = " / ".join(result.class_names[k] for k in config.feet_classes)
        return (f"This does not look like a full-body photo: no {names} found. Upload a photo that shows "
                "the person from head to feet.")
    if m["heads"] < config.min_heads_tall:
        return ("The feet look cut off by the bottom of the photo: the person is only "
                f"{m['heads']:.1f} head sizes tall in it (a full-body photo: about 7). {WHOLE_PERSON}")
    return None


class HumanParser:
    """Inference wrapper around :class:`ParserNet`: photos or image batches -> class ids.

    ``parser.predict(photo)`` for one photo of any size; ``parser(images)`` for a batch of
    images in [-1, 1] (the evaluation hook). Both letterbox to the trained size (aspect ratio
    kept, grey padding) and map the probabilities back to the input's size.
    """

    #: Images per forward pass in :meth:`__call__`.
    batch_size = 16

    def __init__(self, net: ParserNet | OnnxParserNet, device: str | torch.device | None = None):
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.config: ParserConfig = net.config
        self.net = net
        if isinstance(net, ParserNet):
            # A snapshot with BatchNorm folded into the convolutions: same outputs, ~2x faster on CPU.
            self._run: Callable[[torch.Tensor], torch.Tensor] = fuse_batchnorm(net).to(self.device)
        else:
            self._run = net

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike | None = None, device: str | None = None,
                        revision: str | None = None, backend: str = "auto",
                        threads: int | None = None) -> HumanParser:
        """A parser folder or Hub repo id (``None``: ``$SMIS_PARSER`` or ``smis/assets/ccp-parser``).

        ``backend``: ``"torch"``, ``"onnx"`` (the folder's ``model.onnx`` in ONNX Runtime, several
        times faster on CPU; ``threads`` = its intra-op threads) or ``"auto"`` (ONNX Runtime on the
        CPU when the folder has ``model.onnx`` and onnxruntime is installed, else torch).
        """
        if backend not in ("auto", "torch", "onnx"):
            raise ValueError(f"backend must be 'auto', 'torch' or 'onnx', got {backend!r}")
        folder = resolve_parser_dir(name_or_path, revision)
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if backend == "auto":
            backend = "onnx" if dev.type == "cpu" and (folder / ONNX_NAME).is_file() and _has_onnxruntime() \
                else "torch"
        if backend == "onnx":
            return cls(OnnxParserNet(folder, device=str(dev), threads=threads), "cpu")
        return cls(ParserNet.from_pretrained(folder), dev)

    @property
    def backend(self) -> str:
        """``"torch"`` or ``"onnx"``."""
        return "torch" if isinstance(self.net, ParserNet) else "onnx"

    def save_pretrained(self, folder: str | os.PathLike, metadata: dict[str, str] | None = None) -> list[Path]:
        if not isinstance(self.net, ParserNet):
            raise TypeError("an ONNX Runtime parser cannot be saved as safetensors; copy its folder instead")
        return self.net.save_pretrained(folder, metadata)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.config.class_names

    # -- core ------------------------------------------------------------------------------
    @torch.inference_mode()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, h, w) in [-1, 1] -> class probabilities (N, C, h, w) at the same size."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W), got shape {tuple(images.shape)}")
        out = []
        for chunk in images.split(self.batch_size):
            x, box = letterbox(chunk.to(self.device, torch.float32), self.config.height, self.config.width)
            probs = self._run(x).softmax(1)
            out.append(unletterbox(probs, box, chunk.shape[-2:]).to(images.device))
        return torch.cat(out)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """The evaluation hook: images (N, 3, H, W) float in [-1, 1] -> class ids (N, H, W) int64."""
        return self.probabilities(images).argmax(1)

    @torch.inference_mode()
    def predict(self, photo: object, check: bool = True) -> ParseResult:
        """Parse one photo (path, bytes, PIL image or (H, W, 3) array) at its own size.

        With ``check=True`` a photo that does not look like one full-body person raises
        :class:`NotAPersonError` (a ``ValueError`` whose message is meant for users; its
        ``.result`` still holds the parse).
        """
        arr = load_photo(photo)
        h, w = arr.shape[:2]
        x, box = photo_input(arr, self.config.height, self.config.width)
        x = x.to(self.device)
        probs = self._run(x).softmax(1)
        probs = probs[..., box[0]:box[0] + box[2], box[1]:box[1] + box[3]]
        labels, conf = _argmax_resized(probs, (h, w))
        result = ParseResult(labels.cpu().numpy(), conf.cpu().numpy(), self.config.class_names,
                             self.config.palette, probs[0].float().cpu().numpy())
        if check:
            problem = check_person(result, self.config)
            if problem:
                raise NotAPersonError(problem, result)
        return result


def letterbox(images: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Resize (N, 3, h, w) to fit ``height`` x ``width`` keeping the aspect, pad with 0 (grey).

    Returns the padded batch and the box ``(top, left, h', w')`` that holds the image.
    """
    h, w = images.shape[-2:]
    top, left, nh, nw = letterbox_box((h, w), height, width)
    if (nh, nw) != (h, w):
        images = F.interpolate(images, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    if (nh, nw) != (height, width):
        images = F.pad(images, (left, width - nw - left, top, height - nh - top), value=0.0)
    return images, (top, left, nh, nw)


def photo_input(photo: np.ndarray, height: int, width: int) -> tuple[torch.Tensor, Box]:
    """One RGB uint8 photo (H, W, 3) as :func:`letterbox` would feed it: :func:`smis.labels.letterbox_photo`
    with a bilinear resize (PIL: antialiased, ~5x faster than torch on CPU), then (1, 3, height, width)
    in [-1, 1] with grey (0) bands. Returns it and the box."""
    # Grey is 0 in [-1, 1], which no uint8 value maps to: only the box is converted, the bands stay 0.
    boxed, (top, left, nh, nw) = letterbox_photo(photo, height, width, fill=(0, 0, 0), resample=Image.BILINEAR)
    inside = torch.from_numpy(boxed[top:top + nh, left:left + nw]).permute(2, 0, 1)
    x = torch.zeros(1, 3, height, width)
    x[0, :, top:top + nh, left:left + nw] = inside / 127.5 - 1.0
    return x, (top, left, nh, nw)


def unletterbox(maps: torch.Tensor, box: tuple[int, int, int, int], size: tuple[int, int]) -> torch.Tensor:
    """Undo :func:`letterbox` on (N, C, H, W) maps: crop the box, resize bilinearly to ``size``."""
    top, left, nh, nw = box
    maps = maps[..., top:top + nh, left:left + nw]
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)
    return maps


def _argmax_resized(probs: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Argmax and max of (1, C, h, w) probabilities resized to ``size``, one class at a time.

    Resizing the whole stack of a 4096 x 4096 photo would need C x 64 MiB; above 128 MiB a running
    maximum over one class at a time (three planes) is used instead.
    """
    if probs.shape[1] * size[0] * size[1] <= 2**25:
        conf, best = F.interpolate(probs, size=size, mode="bilinear", align_corners=False)[0].max(0)
        return best, conf
    best = conf = None
    for c in range(probs.shape[1]):
        p = probs[:, c:c + 1]
        if tuple(p.shape[-2:]) != tuple(size):
            p = F.interpolate(p, size=size, mode="bilinear", align_corners=False)
        p = p[0, 0]
        if conf is None:
            conf, best = p.clone(), torch.zeros(size, dtype=torch.int64, device=p.device)
        else:
            better = p > conf
            conf = torch.where(better, p, conf)
            best[better] = c
    return best, conf
