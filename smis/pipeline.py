"""SMISPipeline: the one inference API every front end (demo, export checks, scripts) uses.

    pipe = SMISPipeline.from_pretrained()                  # bundled CCP model, PyTorch on CPU/GPU
    out = pipe.generate("mask.png", seed=3)                # out.image, out.codes, out.labels
    out2 = pipe.reroll(out.labels, out.codes, ["upper clothes"], seed=7)
    out2.save("result.png")                                # codes + mask in the PNG metadata
    again = SMISResult.load("result.png")                  # ... to continue editing later
"""

from __future__ import annotations

import base64
import io
import logging
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin
from tqdm.auto import tqdm

from .backends import Backend, load_backend
from .codes import ClassCodes
from .config import SMISConfig
from .functional import to_uint8
from .labels import ids_to_color, letterbox_labels, letterbox_photo, load_mask, load_photo, resize_labels
from .model import GroupDNet, bake_spectral_norm

logger = logging.getLogger(__name__)

META_CODES = "smis:codes"
META_LABELS = "smis:labels"
META_SEED = "smis:seed"
META_MODEL = "smis:model"

ClassRef = int | str


@dataclass
class SMISResult:
    """One generated image with everything needed to reproduce or keep editing it."""

    image: Image.Image
    labels: np.ndarray
    codes: ClassCodes
    seed: int | None = None
    model: str = ""

    def pnginfo(self) -> PngImagePlugin.PngInfo:
        info = PngImagePlugin.PngInfo()
        info.add_text(META_CODES, self.codes.to_json(), zip=True)
        info.add_text(META_LABELS, _labels_to_b64(self.labels), zip=True)
        if self.seed is not None:
            info.add_text(META_SEED, str(self.seed))
        if self.model:
            info.add_text(META_MODEL, self.model)
        return info

    def save(self, path: str | os.PathLike) -> Path:
        """PNG with the mask and the codes in its metadata (re-open with :meth:`load`)."""
        path = Path(path)
        self.image.save(path, format="PNG", pnginfo=self.pnginfo())
        return path

    def to_png_bytes(self) -> bytes:
        buf = io.BytesIO()
        self.image.save(buf, format="PNG", pnginfo=self.pnginfo())
        return buf.getvalue()

    @classmethod
    def load(cls, source: str | os.PathLike | bytes | Image.Image) -> SMISResult:
        """Re-open a PNG saved by :meth:`save`."""
        if isinstance(source, Image.Image):
            img = source
        else:
            try:
                img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
                img.load()
            except (OSError, ValueError) as err:
                raise ValueError(f"could not read the result image: {err}") from err
        meta = ResultMetadata.read(img)
        return cls(img.convert("RGB"), meta.labels, meta.codes, meta.seed, meta.model)


@dataclass
class ResultMetadata:
    """What a result PNG carries besides its pixels: enough to re-roll, re-draw or morph it."""

    labels: np.ndarray
    codes: ClassCodes
    seed: int | None = None
    model: str = ""

    @classmethod
    def read(cls, source: str | os.PathLike | bytes | Image.Image) -> ResultMetadata:
        """The mask, codes and seed of a PNG saved by :meth:`SMISResult.save`, without decoding its pixels
        when they follow the metadata (as :meth:`SMISResult.save` writes them); else the file is read whole."""
        def chunks(img: Image.Image) -> dict:  # text chunks before the pixels are read with the header
            return img.info if META_CODES in img.info else (getattr(img, "text", None) or {})

        try:
            if isinstance(source, Image.Image):
                text = chunks(source)
            else:
                with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
                    text = chunks(img)
        except (OSError, ValueError) as err:
            raise ValueError(f"could not read the result image: {err}") from err
        if META_CODES not in text or META_LABELS not in text:
            raise ValueError(
                "this image carries no SMIS metadata (codes and mask); open a PNG saved by the "
                "SMIS demo or SMISResult.save — metadata is lost if the PNG was re-encoded")
        seed = text.get(META_SEED)
        return cls(_labels_from_b64(text[META_LABELS]), ClassCodes.from_json(text[META_CODES]),
                   int(seed) if seed not in (None, "") else None, text.get(META_MODEL, ""))


def _labels_to_b64(labels: np.ndarray) -> str:
    mode = "L" if labels.max(initial=0) < 256 else "I"
    buf = io.BytesIO()
    Image.fromarray(labels.astype(np.uint8 if mode == "L" else np.int32), mode).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _labels_from_b64(s: str) -> np.ndarray:
    try:
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(s)))).astype(np.int64)
    except (OSError, ValueError) as err:
        raise ValueError(f"corrupt mask in the image metadata: {err}") from err


class SMISPipeline:
    """Generate, re-roll, encode, mix and morph with one GroupDNet, on any backend."""

    def __init__(self, backend: Backend, batch_size: int | None = None):
        self.backend = backend
        self.config: SMISConfig = backend.config
        #: Images per backend call (morphing). On CPU one at a time is faster (measured ~2x).
        on_cpu = "cpu" in str(backend.device).lower()
        self.batch_size = batch_size or (1 if on_cpu else 8)
        self._fit_model: GroupDNet | None = None  # float32 torch weights for refine, loaded on first use

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike | None = None, backend: str = "torch",
                        device: str | None = None, dtype: str | None = None,
                        revision: str | None = None, **backend_kwargs) -> SMISPipeline:
        """A model folder or Hub repo id (``None``: ``$SMIS_MODEL`` or the bundled CCP model).

        ``backend``: ``"torch"`` (PyTorch) or ``"onnx"`` (ONNX Runtime); ``device``: ``"cpu"``,
        ``"cuda"``... (auto when omitted); ``dtype``: ``"float32"`` (default), ``"float16"``,
        ``"bfloat16"``.
        """
        pipe = cls(load_backend(backend, name_or_path, device=device, dtype=dtype,
                                revision=revision, **backend_kwargs))
        logger.info("SMIS pipeline: %s on %s (%s)", pipe.backend.name, pipe.backend.device,
                    pipe.config.name)
        return pipe

    # -- inputs ----------------------------------------------------------------------------
    @property
    def model_dir(self) -> Path | None:
        """The model folder the backend was loaded from (its card, ``metrics.json``), if it has one."""
        return getattr(self.backend, "model_dir", None)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.config.class_names

    def prepare_mask(self, mask: object, snap_colors: bool = False) -> np.ndarray:
        """Any accepted mask -> class ids (H, W) at the model's size (nearest resize)."""
        ids = load_mask(mask, self.config.num_classes, self.config.palette, snap_colors=snap_colors)
        return resize_labels(ids, self.config.height, self.config.width)

    def prepare_photo(self, photo: object) -> np.ndarray:
        """Any accepted photo -> RGB uint8 (H, W, 3) at the model's size, letterboxed: the aspect
        ratio is kept (never stretched) and the bands take the photo's border colour. EXIF
        orientation, transparency and grey-scale are handled by :func:`smis.labels.load_photo`."""
        return letterbox_photo(load_photo(photo), self.config.height, self.config.width)[0]

    def class_ids(self, classes: ClassRef | Iterable[ClassRef]) -> list[int]:
        if isinstance(classes, (int, str, np.integer)):
            classes = [classes]
        return [self.config.class_id(c) for c in classes]

    @property
    def codes_shape(self) -> tuple[int, int, int, int]:
        """(classes, z channels, h, w): the shape of this model's codes (``ClassCodes.values``)."""
        return (self.config.num_classes, self.config.z_channels, *self.config.latent_grid())

    def codes_fit(self, codes: ClassCodes) -> bool:
        """Whether ``codes`` were made for this model: its classes, code size and latent grid."""
        return codes.values.shape == self.codes_shape and codes.class_names == self.class_names

    def sample_codes(self, seed: int | None = None) -> tuple[ClassCodes, int]:
        seed = _seed(seed)
        return ClassCodes.sample(self.class_names, self.config.z_channels,
                                 self.config.latent_grid(), seed), seed

    def colorize(self, labels: np.ndarray) -> Image.Image:
        """A class-id map in the model's palette, for display."""
        return Image.fromarray(ids_to_color(labels, self.config.palette))

    # -- operations ------------------------------------------------------------------------
    def generate(self, mask: object, seed: int | None = None,
                 codes: ClassCodes | None = None) -> SMISResult:
        """One image for ``mask``: codes from ``seed`` (random if omitted) or the given codes."""
        labels = self.prepare_mask(mask)
        used_seed = None
        if codes is None:
            codes, used_seed = self.sample_codes(seed)
        else:
            self._check_codes(codes)
        image = self.render(labels, [codes])[0]
        return SMISResult(image, labels, codes, used_seed, self.config.name)

    def reroll(self, mask: object, codes: ClassCodes, classes: ClassRef | Iterable[ClassRef],
               seed: int | None = None) -> SMISResult:
        """New codes for ``classes`` only; every other class keeps its code exactly."""
        self._check_codes(codes)
        ids = self.class_ids(classes)
        if not ids:
            raise ValueError("choose at least one class to re-roll")
        seed = _seed(seed)
        new = codes.resample(ids, seed)
        labels = self.prepare_mask(mask)
        return SMISResult(self.render(labels, [new])[0], labels, new, seed, self.config.name)

    def encode(self, photo: object, mask: object, refine: int = 0) -> ClassCodes:
        """Per-class codes (the encoder's mean maps) of a real photo and its mask (same size; both
        letterboxed to the model, the bands counted as background). ``refine``: that many gradient
        steps on the codes so the re-synthesis keeps the photo's colours (:meth:`GroupDNet.fit_codes`;
        about 0.1 s a step at 192x128 on 2 CPU cores; needs the model's PyTorch weights, loaded once
        beside an ONNX backend)."""
        arr = load_photo(photo)
        ids = load_mask(mask, self.config.num_classes, self.config.palette)
        if arr.shape[:2] != ids.shape:
            raise ValueError(
                f"the photo is {arr.shape[0]}x{arr.shape[1]} but its mask is "
                f"{ids.shape[0]}x{ids.shape[1]}; they must have the same size")
        photo_arr = self.prepare_photo(arr)
        labels = letterbox_labels(ids, self.config.height, self.config.width)  # the same box as the photo
        x = photo_arr.astype(np.float32).transpose(2, 0, 1)[None] / 127.5 - 1.0
        mu, _ = self.backend.encode(x, labels[None])
        return ClassCodes.from_latent(self.fit_codes(x, labels[None], mu, refine), self.class_names)

    def fit_codes(self, photos: np.ndarray, labels: np.ndarray, z: np.ndarray, steps: int) -> np.ndarray:
        """``z`` (the backend's ``encode`` means) after ``steps`` of :meth:`GroupDNet.fit_codes` on these
        photos (N, 3, H, W) in [-1, 1] and labels (N, H, W), at the model's size; ``steps=0`` returns ``z``."""
        if not steps:
            return z
        if not 0 < int(steps) <= 500:
            raise ValueError(f"refine must be between 0 and 500 steps, got {steps}")
        model = self._gradient_model()
        dev = next(model.parameters()).device
        return model.fit_codes(torch.from_numpy(np.asarray(photos, np.float32)).to(dev),
                               torch.from_numpy(np.asarray(labels)).long().to(dev),
                               torch.from_numpy(np.asarray(z, np.float32)).to(dev), steps=int(steps)).cpu().numpy()

    def _gradient_model(self) -> GroupDNet:
        """A float32 PyTorch GroupDNet of this pipeline's weights (the backend's own when it is one)."""
        model = getattr(self.backend, "model", None)
        if isinstance(model, GroupDNet) and next(model.parameters()).dtype == torch.float32:
            return model
        if self._fit_model is None:
            if self.model_dir is None:
                raise ValueError("refining codes needs the model's PyTorch weights (a model folder); "
                                 "use backend='torch' or a model folder with model.safetensors")
            self._fit_model = bake_spectral_norm(GroupDNet.from_pretrained(self.model_dir))
        return self._fit_model

    def mix(self, sources: Mapping[ClassRef, ClassCodes], base: ClassCodes | None = None,
            seed: int | None = None) -> ClassCodes:
        """Codes whose class c comes from ``sources[c]``; other classes from ``base`` (or noise)."""
        if base is None:
            base, _ = self.sample_codes(seed)
        self._check_codes(base)
        return base.with_classes({self.config.class_id(k): v for k, v in sources.items()})

    def morph(self, codes_a: ClassCodes, codes_b: ClassCodes, mask: object, steps: int = 8,
              progress: bool = False) -> list[SMISResult]:
        """``steps`` frames from codes_a to codes_b (both included), rendered on ``mask``."""
        if not 2 <= int(steps) <= 240:
            raise ValueError(f"steps must be between 2 and 240, got {steps}")
        self._check_codes(codes_a)
        self._check_codes(codes_b)
        labels = self.prepare_mask(mask)
        frames = [codes_a.lerp(codes_b, t) for t in np.linspace(0.0, 1.0, int(steps))]
        images = self.render(labels, frames, progress=progress)
        return [SMISResult(im, labels, c, None, self.config.name) for im, c in zip(images, frames)]

    def render(self, labels: np.ndarray, codes: Sequence[ClassCodes],
               progress: bool = False) -> list[Image.Image]:
        """The generator on one label map and several codes, in batches."""
        out: list[Image.Image] = []
        starts = range(0, len(codes), self.batch_size)
        for i in tqdm(starts, disable=not progress, desc="rendering", unit="batch"):
            chunk = codes[i:i + self.batch_size]
            z = np.stack([c.latent() for c in chunk])
            lab = np.broadcast_to(labels, (len(chunk), *labels.shape))
            imgs = self.backend.generate(np.ascontiguousarray(lab), z)
            out.extend(to_pil(im) for im in imgs)
        return out

    def _check_codes(self, codes: ClassCodes) -> None:
        if not isinstance(codes, ClassCodes):
            raise ValueError(f"expected ClassCodes, got {type(codes).__name__}")
        if not self.codes_fit(codes):
            raise ValueError(
                f"these codes ({codes.values.shape}) were made for another model; this one needs {self.codes_shape}")


def to_pil(image: np.ndarray) -> Image.Image:
    """(3, H, W) float in [-1, 1] -> RGB image."""
    return Image.fromarray(to_uint8(torch.from_numpy(np.ascontiguousarray(image))).numpy())


def _seed(seed: int | None) -> int:
    if seed is None:
        return secrets.randbelow(2**31)
    seed = int(seed)
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    return seed
