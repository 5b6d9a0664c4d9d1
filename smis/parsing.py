"""A compact human parser: photo -> per-pixel body-part / garment labels (CCP's 10 groups).

Two uses in this project:

* the paper's segmentation metric: parse generated images and compare with the input mask
  (mIoU / pixel accuracy) — :meth:`HumanParser.__call__` takes a batch of images in [-1, 1];
* masks for reference photos (appearance mixture, style morphing) — :meth:`HumanParser.predict`
  takes any photo :func:`smis.labels.load_photo` accepts and returns labels at the photo's size,
  a confidence map, and refuses photos that do not look like one full-body person.

The network (:class:`ParserNet`) is a MobileNetV2-style encoder (inverted residuals with
depthwise 3x3 convolutions and BatchNorm, strides 2..32) with a global-context branch and an
FPN-style decoder back to stride 4; 1.41 M parameters for the ``ccp`` preset. It is trained
from scratch by ``python -m train.parser`` (no pretrained backbone is available here).

A parser folder holds ``config.json`` (a :class:`ParserConfig`) and ``model.safetensors``;
loading is strict.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from . import hub
from .hub import CheckpointError
from .labels import CCP10_CLASSES, CCP10_PALETTE, ids_to_color, load_photo

logger = logging.getLogger(__name__)

#: The shipped CCP parser (trained by ``python -m train.parser``), inside the package.
BUNDLED_PARSER_DIR = Path(__file__).parent / "assets" / "ccp-parser"
#: Environment variable that overrides the default parser folder (or Hub repo id).
PARSER_ENV = "SMIS_PARSER"
#: Written into ``config.json`` so a GroupDNet folder is not mistaken for a parser and back.
CONFIG_FORMAT = "smis-human-parser/1"
#: Label value ignored by the training loss (padding introduced by augmentation).
IGNORE_INDEX = 255
#: The ONNX export inside a parser folder (input ``images``, output ``logits``).
ONNX_NAME = "model.onnx"

Color = tuple[int, int, int]


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParserConfig:
    """Everything needed to build, save and load one parser (written to ``config.json``)."""

    #: Class names; id 0 must be the background.
    class_names: tuple[str, ...] = CCP10_CLASSES
    #: One RGB colour per class (for :meth:`ParseResult.colorize`).
    palette: tuple[Color, ...] = CCP10_PALETTE
    #: Input size the network was trained at; photos are letterboxed to it (multiples of 32).
    height: int = 384
    width: int = 256
    #: Channels of the stride-2 stem convolution.
    stem: int = 24
    #: Output channels of the four encoder stages (strides 4, 8, 16, 32).
    widths: tuple[int, ...] = (32, 64, 128, 192)
    #: Inverted-residual blocks per stage (the first of each stage has stride 2).
    depths: tuple[int, ...] = (2, 3, 4, 3)
    #: Expansion ratio of the inverted residuals.
    expansion: int = 4
    #: Channels of the decoder (every pyramid level and the classifier input).
    decoder: int = 64
    #: Dropout before the classifier (training only).
    dropout: float = 0.1
    # -- the "is this one full-body person?" check of :meth:`HumanParser.predict` --------------
    #: Fewer non-background pixels than this fraction: "no person found".
    min_foreground: float = 0.04
    #: Mean confidence over the person's pixels below this: "the parser is unsure".
    min_confidence: float = 0.5
    #: The person's rows must span at least this fraction of the photo's height.
    min_person_height: float = 0.5
    #: Classes that show the feet are in the photo (CCP10: legwear, shoes) ...
    feet_classes: tuple[int, ...] = (6, 7)
    #: ... and the fraction of the person's pixels they must cover (0 disables the feet check).
    min_feet: float = 0.005

    def __post_init__(self) -> None:
        c = len(self.class_names)
        if c < 2:
            raise ValueError("a parser needs at least 2 classes (background + one part)")
        if len(self.palette) != c:
            raise ValueError(f"{c} class names but {len(self.palette)} palette colours")
        if self.height % 32 or self.width % 32 or self.height <= 0 or self.width <= 0:
            raise ValueError(f"height and width must be positive multiples of 32, got {self.height}x{self.width}")
        if len(self.widths) != 4 or len(self.depths) != 4 or min(self.depths) < 1:
            raise ValueError("widths and depths must list 4 stages, each with at least one block")
        if min(self.widths) < 1 or self.stem < 1 or self.decoder < 1 or self.expansion < 1:
            raise ValueError("channel counts and the expansion ratio must be positive")
        if any(not 0 < k < c for k in self.feet_classes):
            raise ValueError(f"feet_classes must be ids in 1..{c - 1}, got {self.feet_classes}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["palette"] = [list(p) for p in self.palette]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ParserConfig:
        """Strict: unknown or missing architecture fields are errors."""
        d = dict(d)
        fmt = d.pop("_format", None)
        if fmt != CONFIG_FORMAT:
            raise ValueError(
                f"config.json is not a human-parser config (format {fmt!r}, expected {CONFIG_FORMAT!r}); "
                "pass a folder written by HumanParser.save_pretrained / python -m train.parser")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"config.json has unknown parser fields {unknown}; is it from a newer version?")
        tuples = ("class_names", "widths", "depths", "feet_classes")
        for k in tuples:
            if k in d:
                d[k] = tuple(d[k])
        if "palette" in d:
            d["palette"] = tuple(tuple(int(v) for v in p) for p in d["palette"])
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps({"_format": CONFIG_FORMAT, **self.to_dict()}, indent=2)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> ParserConfig:
        try:
            d = json.loads(Path(path).read_text())
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{path} is not valid JSON: {err}") from err
        try:
            return cls.from_dict(d)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: {err}") from err

    def replace(self, **changes: Any) -> ParserConfig:
        return dataclasses.replace(self, **changes)


def _tiny(**kw: Any) -> ParserConfig:
    return ParserConfig(stem=8, widths=(8, 16, 24, 32), depths=(1, 1, 1, 1), expansion=2, decoder=16, **kw)


#: Named variants: ``ccp`` is the shipped one, ``tiny`` is for tests and smoke runs.
PARSER_PRESETS: dict[str, Callable[..., ParserConfig]] = {
    "ccp": ParserConfig,
    "tiny": _tiny,
}


def get_parser_config(name: str, **overrides: Any) -> ParserConfig:
    """A preset by name (``ccp`` or ``tiny``), with field overrides."""
    if name not in PARSER_PRESETS:
        raise ValueError(f"unknown parser preset {name!r}; choose one of {sorted(PARSER_PRESETS)}")
    return PARSER_PRESETS[name](**overrides)


# ---------------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------------
def _conv_bn(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """1x1 expand -> depthwise 3x3 (stride) -> 1x1 project, residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        mid = cin * expansion
        layers = [_conv_bn(cin, mid)] if expansion != 1 else []
        layers += [_conv_bn(mid, mid, 3, stride, groups=mid), _conv_bn(mid, cout, act=False)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class SeparableConv(nn.Sequential):
    """Depthwise 3x3 + pointwise 1x1, each with BatchNorm and ReLU (the decoder's refinement)."""

    def __init__(self, channels: int):
        super().__init__(_conv_bn(channels, channels, 3, groups=channels), _conv_bn(channels, channels))


class ParserNet(nn.Module):
    """Image in [-1, 1] (N, 3, H, W) -> class logits (N, C, H, W); H, W multiples of 32."""

    def __init__(self, config: ParserConfig):
        super().__init__()
        self.config = config
        c = config
        self.stem = _conv_bn(3, c.stem, 3, 2)
        stages = []
        cin = c.stem
        for width, depth in zip(c.widths, c.depths):
            blocks = [InvertedResidual(cin if i == 0 else width, width, 2 if i == 0 else 1, c.expansion)
                      for i in range(depth)]
            stages.append(nn.Sequential(*blocks))
            cin = width
        self.stages = nn.ModuleList(stages)
        # Global context: a person spans the whole frame, so the coarsest level sees the image mean.
        self.context = nn.Sequential(nn.Conv2d(c.widths[-1], c.decoder, 1), nn.ReLU(inplace=True))
        self.lateral = nn.ModuleList(_conv_bn(w, c.decoder) for w in c.widths)
        self.refine = nn.ModuleList(SeparableConv(c.decoder) for _ in c.widths[:-1])
        self.dropout = nn.Dropout2d(c.dropout)
        self.classifier = nn.Conv2d(c.decoder, c.num_classes, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.classifier.weight, std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        p = self.lateral[-1](feats[-1]) + self.context(feats[-1].mean((2, 3), keepdim=True))
        for i in range(len(feats) - 2, -1, -1):
            lat = self.lateral[i](feats[i])
            p = lat + F.interpolate(p, size=lat.shape[-2:], mode="bilinear", align_corners=False)
            p = self.refine[i](p)
        logits = self.classifier(self.dropout(p))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    # -- persistence ---------------------------------------------------------------------
    def save_pretrained(self, folder: str | os.PathLike, metadata: dict[str, str] | None = None) -> list[Path]:
        """Write ``config.json`` + ``model.safetensors`` (float32). Returns the files."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.save(folder / hub.CONFIG_NAME)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        meta = {"format": "pt", "config": self.config.to_json(), **(metadata or {})}
        tmp = folder / (hub.WEIGHTS_NAME + ".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, folder / hub.WEIGHTS_NAME)
        return [folder / hub.CONFIG_NAME, folder / hub.WEIGHTS_NAME]

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike | None = None,
                        revision: str | None = None) -> ParserNet:
        """Strict load of a parser folder or Hub repo id (``None``: ``$SMIS_PARSER`` or the shipped one)."""
        folder = resolve_parser_dir(name_or_path, revision)
        config = ParserConfig.load(folder / hub.CONFIG_NAME)
        if not (folder / hub.WEIGHTS_NAME).is_file():
            raise CheckpointError(
                f"{folder} has a parser config.json but no {hub.WEIGHTS_NAME}; copy the weights next to it "
                "or train them with `python -m train.parser`")
        net = cls(config)
        hub.load_into(net, hub.load_state(folder), str(folder))
        return net.eval()


def fuse_batchnorm(net: ParserNet) -> ParserNet:
    """An eval-mode copy of ``net`` with every BatchNorm folded into the convolution before it.

    Same outputs (to float rounding) with half the layers; for inference only (the copy cannot
    be saved as a parser folder: its state dict has other names).
    """
    fused = copy.deepcopy(net).eval()
    for m in fused.modules():
        if isinstance(m, nn.Sequential) and len(m) >= 2 and isinstance(m[0], nn.Conv2d) \
                and isinstance(m[1], nn.BatchNorm2d):
            m[0] = fuse_conv_bn_eval(m[0], m[1])
            m[1] = nn.Identity()
    for p in fused.parameters():
        p.requires_grad_(False)
    return fused


def resolve_parser_dir(name_or_path: str | os.PathLike | None = None, revision: str | None = None) -> Path:
    """A local parser folder, or a Hub repo id fetched into the Hugging Face cache."""
    if name_or_path is None:
        env = os.environ.get(PARSER_ENV)
        if not env and not (BUNDLED_PARSER_DIR / hub.CONFIG_NAME).is_file():
            raise CheckpointError(
                f"the shipped human parser is not there ({BUNDLED_PARSER_DIR} has no {hub.CONFIG_NAME}): it has "
                "not been trained yet. Train one with `python -m train.parser` (see docs/PARSER.md) and pass "
                f"its folder, or set {PARSER_ENV} to a parser folder or Hub repo id.")
        name_or_path = env or BUNDLED_PARSER_DIR
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / hub.CONFIG_NAME).is_file():
            raise CheckpointError(f"{path} has no {hub.CONFIG_NAME}; is it a human-parser folder?")
        return path
    return hub.resolve_model_dir(str(name_or_path), revision)


def _has_onnxruntime() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


class OnnxParserNet:
    """``model.onnx`` of a parser folder run by ONNX Runtime; called like :class:`ParserNet`."""

    def __init__(self, folder: str | os.PathLike, device: str = "cpu", threads: int | None = None):
        folder = Path(folder)
        self.config = ParserConfig.load(folder / hub.CONFIG_NAME)
        path = folder / ONNX_NAME
        if not path.is_file():
            raise CheckpointError(
                f"{folder} has no {ONNX_NAME}; export it with `python -m train.parser --export-onnx {folder}` "
                "or use backend='torch'")
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if str(device).startswith("cuda"):
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types
            raise CheckpointError(f"{path} cannot be loaded by ONNX Runtime ({err}); export it again") from err
        self.providers = self.session.get_providers()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.detach().to("cpu", torch.float32).contiguous().numpy()
        (logits,) = self.session.run(["logits"], {"images": x})
        return torch.from_numpy(logits).to(images.device)


# ---------------------------------------------------------------------------------------------
# Inference
# ---------------------------------------------------------------------------------------------
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


def check_person(result: ParseResult, config: ParserConfig) -> str | None:
    """Why ``result`` is not one full-body person (a message for users), or ``None`` if it looks fine."""
    fg = result.labels != 0
    frac = float(fg.mean())
    if frac < config.min_foreground:
        return (f"No person found in the photo: only {100 * frac:.1f}% of it looks like a person or clothing. "
                "Upload a full-body photo of one person, standing, that fills most of the frame.")
    conf = result.mean_confidence
    if conf < config.min_confidence:
        return (f"The parser is unsure about this photo (mean confidence {conf:.2f}, below "
                f"{config.min_confidence:.2f}), so the mask would be unreliable. Upload a clear, well-lit "
                "full-body photo of one person against a simple background.")
    rows = np.flatnonzero(fg.mean(1) > 0.01)
    span = (rows[-1] - rows[0] + 1) / fg.shape[0] if rows.size else 0.0
    if span < config.min_person_height:
        return (f"The person covers only {100 * span:.0f}% of the photo's height; crop the photo to the "
                "person, head to feet, or upload a full-body photo.")
    if config.min_feet > 0 and config.feet_classes:
        feet = float(np.isin(result.labels, config.feet_classes).sum() / max(int(fg.sum()), 1))
        if feet < config.min_feet:
            names = " / ".join(result.class_names[k] for k in config.feet_classes)
            return (f"This does not look like a full-body photo: no {names} found. Upload a photo that shows "
                    "the person from head to feet.")
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
        x, box = letterbox_photo(arr, self.config.height, self.config.width)
        x = x.to(self.device)
        probs = self._run(x).softmax(1)
        labels, conf = _argmax_resized(probs[..., box[0]:box[0] + box[2], box[1]:box[1] + box[3]], (h, w))
        result = ParseResult(labels.cpu().numpy(), conf.cpu().numpy(), self.config.class_names,
                             self.config.palette)
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
    s = min(height / h, width / w)
    nh, nw = min(height, max(1, round(h * s))), min(width, max(1, round(w * s)))
    if (nh, nw) != (h, w):
        images = F.interpolate(images, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (height - nh) // 2, (width - nw) // 2
    if (nh, nw) != (height, width):
        images = F.pad(images, (left, width - nw - left, top, height - nh - top), value=0.0)
    return images, (top, left, nh, nw)


def letterbox_photo(photo: np.ndarray, height: int, width: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """:func:`letterbox` for one RGB uint8 photo (H, W, 3), resized by PIL (antialiased, ~5x faster
    than torch on CPU). Returns (1, 3, height, width) in [-1, 1] and the box."""
    h, w = photo.shape[:2]
    s = min(height / h, width / w)
    nh, nw = min(height, max(1, round(h * s))), min(width, max(1, round(w * s)))
    if (nh, nw) != (h, w):
        photo = np.asarray(Image.fromarray(photo).resize((nw, nh), Image.BILINEAR))
    top, left = (height - nh) // 2, (width - nw) // 2
    canvas = np.full((height, width, 3), 127.5, np.float32)
    canvas[top:top + nh, left:left + nw] = photo
    x = torch.from_numpy(canvas).permute(2, 0, 1)[None] / 127.5 - 1.0
    return x.contiguous(), (top, left, nh, nw)


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


# ---------------------------------------------------------------------------------------------
# ONNX
# ---------------------------------------------------------------------------------------------
def export_onnx(net: ParserNet, path: str | os.PathLike, batch: int = 2, opset: int | None = None,
                check: bool = True) -> Path:
    """Export ``net`` (eval mode, float32) to ONNX with a dynamic batch axis (dynamo exporter).

    Input ``images`` (N, 3, H, W) in [-1, 1] at the config's size; output ``logits``
    (N, C, H, W). With ``check``, runs ``onnx.checker`` on the file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = net.eval().to("cpu", torch.float32)
    example = torch.zeros(batch, 3, net.config.height, net.config.width)
    # A named batch Dim with a batch-1 example fails the exporter's constraints; Dim.AUTO does not.
    shapes = {"x": {0: torch.export.Dim.AUTO}}
    kwargs: dict[str, Any] = {"opset_version": opset} if opset else {}
    # The exporter's graph passes log every rewrite at INFO; keep a caller's INFO logs readable.
    quiet = [logging.getLogger(n) for n in ("onnxscript", "onnx_ir")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(max(q.level, logging.WARNING))
    try:
        program = torch.onnx.export(net, (example,), dynamo=True, verbose=False, input_names=["images"],
                                    output_names=["logits"], dynamic_shapes=shapes, **kwargs)
    finally:
        for q, lv in zip(quiet, levels):
            q.setLevel(lv)
    program.save(str(path))
    if check:
        import onnx

        onnx.checker.check_model(str(path))
    return path
