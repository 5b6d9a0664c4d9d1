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
from scratch by ``python -m train.human_parser`` (no pretrained backbone is available here).

A parser folder holds ``config.json`` (a :class:`ParserConfig`) and ``model.safetensors``;
loading is strict. Modules: :mod:`.config` (``ParserConfig``, presets, where a folder is found),
:mod:`.network` (``ParserNet``, ONNX export and runtime), :mod:`.inference` (``HumanParser``).
"""

from .config import (
    BUNDLED_PARSER_DIR,
    CONFIG_FORMAT,
    IGNORE_INDEX,
    ONNX_NAME,
    PARSER_ENV,
    PARSER_PRESETS,
    ParserConfig,
    get_parser_config,
    resolve_parser_dir,
)
from .inference import (
    HumanParser,
    NotAPersonError,
    ParseResult,
    check_person,
    letterbox,
    person_measures,
    photo_input,
    unletterbox,
)
from .network import InvertedResidual, OnnxParserNet, ParserNet, SeparableConv, export_onnx, fuse_batchnorm

__all__ = [
    "BUNDLED_PARSER_DIR", "CONFIG_FORMAT", "IGNORE_INDEX", "ONNX_NAME", "PARSER_ENV", "PARSER_PRESETS",
    "HumanParser", "InvertedResidual", "NotAPersonError", "OnnxParserNet", "ParseResult", "ParserConfig",
    "ParserNet", "SeparableConv", "check_person", "export_onnx", "fuse_batchnorm", "get_parser_config",
    "letterbox", "person_measures", "photo_input", "resolve_parser_dir", "unletterbox",
]
