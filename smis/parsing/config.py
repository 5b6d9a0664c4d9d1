"""The parser's configuration (``config.json``), its named presets, and where a parser folder is found."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import hub
from ..hub import CheckpointError
from ..labels import CCP10_CLASSES, CCP10_PALETTE

#: The shipped CCP parser (trained by ``python -m train.human_parser``), inside the package.
BUNDLED_PARSER_DIR = Path(__file__).resolve().parents[1] / "assets" / "ccp-parser"
#: Environment variable that overrides the default parser folder (or Hub repo id).
PARSER_ENV = "SMIS_PARSER"
#: Written into ``config.json`` so a GroupDNet folder is not mistaken for a parser and back.
CONFIG_FORMAT = "smis-human-parser/1"
#: Label value ignored by the training loss (padding introduced by augmentation).
IGNORE_INDEX = 255
#: The ONNX export inside a parser folder (input ``images``, output ``logits``).
ONNX_NAME = "model.onnx"

Color = tuple[int, int, int]
#: The fields of :class:`ParserConfig` that name classes (ids 1..C-1) for the full-body check.
CLASS_FIELDS = ("feet_classes", "bottom_classes", "top_classes", "head_classes", "torso_classes")


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
    # -- ... and whether the photo's frame cuts the person off (calibrated on CCP val, docs/PARSER.md) --
    #: The cut-off checks look at this fraction of the photo's rows along its bottom and top edges.
    edge_rows: float = 0.03
    #: Classes that may touch the bottom edge of a full-body photo (CCP10: shoes) ...
    bottom_classes: tuple[int, ...] = (7,)
    #: ... above this mean probability of any other part of the person along that edge: "the feet are
    #: cut off" (1 disables).
    max_bottom_cut: float = 0.04
    #: Classes that may touch the top edge (CCP10: hair, accessories such as hats) and the same limit
    #: for the rest of the person along it: "the head is cut off" (1 disables).
    top_classes: tuple[int, ...] = (1, 9)
    max_top_cut: float = 0.02
    #: The head: these classes above the shoulders (the first row where ``torso_classes`` make up
    #: most of the person) ...
    head_classes: tuple[int, ...] = (1, 2, 9)
    torso_classes: tuple[int, ...] = (3, 4)
    #: ... the person must be this many times as tall as the square root of the head's area (about 7
    #: in a full-body photo, less when the legs are cut off; 0 disables).
    min_heads_tall: float = 4.1

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
        for name in CLASS_FIELDS:
            if any(not 0 < k < c for k in getattr(self, name)):
                raise ValueError(f"{name} must be ids in 1..{c - 1}, got {getattr(self, name)}")

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
                "pass a folder written by HumanParser.save_pretrained / python -m train.human_parser")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"config.json has unknown parser fields {unknown}; is it from a newer version?")
        tuples = ("class_names", "widths", "depths", *CLASS_FIELDS)
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


def resolve_parser_dir(name_or_path: str | os.PathLike | None = None, revision: str | None = None) -> Path:
    """A local parser folder, or a Hub repo id fetched into the Hugging Face cache."""
    if name_or_path is None:
        env = os.environ.get(PARSER_ENV)
        if not env and not (BUNDLED_PARSER_DIR / hub.CONFIG_NAME).is_file():
            raise CheckpointError(
                f"the shipped human parser is not there ({BUNDLED_PARSER_DIR} has no {hub.CONFIG_NAME}): it has "
                "not been trained yet. Train one with `python -m train.human_parser` (see docs/PARSER.md) and pass "
                f"its folder, or set {PARSER_ENV} to a parser folder or Hub repo id.")
        name_or_path = env or BUNDLED_PARSER_DIR
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / hub.CONFIG_NAME).is_file():
            raise CheckpointError(f"{path} has no {hub.CONFIG_NAME}; is it a human-parser folder?")
        return path
    return hub.resolve_model_dir(str(name_or_path), revision)
