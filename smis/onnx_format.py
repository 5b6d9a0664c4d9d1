"""The ONNX file contract: what ``python -m export onnx`` writes and :mod:`smis.backends.onnx` reads.

A model folder may hold ``generator.onnx`` / ``encoder.onnx`` and the generator's cached-mask pair
``generator-maps.onnx`` (labels, z -> the image *and* every CG-Norm's scale / shift map) /
``generator-render.onnx`` (z, those maps -> the image), and for a model with a local enhancer
``generator-preview.onnx`` (labels, z -> the global generator's smaller image) (``*-fp16.onnx`` for
float16). Every file is
self-describing: its ``metadata_props`` hold

==========================  ====================================================================
``smis.format``             ``smis-onnx/1``
``smis.graph``              ``generator``, ``encoder``, ``generator_maps``, ``generator_render``, ``generator_preview``
``smis.config``             ``SMISConfig.to_json()`` (rebuild with :func:`config_from_metadata`)
``smis.class_names``        JSON list of class names (class id = index)
``smis.palette``            JSON list of [r, g, b], one per class
``smis.latent_layout``      JSON: 8 channels per class, class c owns [8c, 8c+8), grid H/64 x W/64
``smis.size_multiple``      ``64`` (x2 per enhancer block): height and width must be multiples of it
``smis.inputs/outputs``     JSON: name -> dtype, shape and meaning
``smis.precision``          ``fp32`` or ``fp16`` (inputs and outputs are float32 either way)
``smis.weights_sha256``     hash of the config and tensors the graph was exported from
``smis.source_sha256``      (exports from a folder) hash of its config.json + safetensors files
==========================  ====================================================================

This module only names and reads things; :mod:`export.onnx` writes the graphs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .config import SMISConfig

ONNX_FORMAT = "smis-onnx/1"
GENERATOR_FILE = "generator.onnx"
ENCODER_FILE = "encoder.onnx"
#: The generator for one mask rendered many times (optional files): (labels, z) -> image + its label
#: branch (every CG-Norm's maps; as cheap as the generator alone), then (z, maps) -> image per re-roll.
MAPS_FILE = "generator-maps.onnx"
RENDER_FILE = "generator-render.onnx"
FP16_SUFFIX = "-fp16"
#: A model with a local enhancer also gets the global generator alone: (labels, z) -> its image at
#: H / 2^k x W / 2^k, the same codes at a fraction of the work (a quick look while a mask is painted).
PREVIEW_FILE = "generator-preview.onnx"
GRAPH_KINDS = ("generator", "encoder", "generator_maps", "generator_render")
ALL_GRAPH_KINDS = (*GRAPH_KINDS, "generator_preview")
_FILES = dict(zip(ALL_GRAPH_KINDS, (GENERATOR_FILE, ENCODER_FILE, MAPS_FILE, RENDER_FILE, PREVIEW_FILE)))


def graph_kinds(config: SMISConfig) -> tuple[str, ...]:
    """The graphs ``python -m export onnx`` writes for a model: :data:`GRAPH_KINDS`, and the preview
    when the model has a local enhancer."""
    return ALL_GRAPH_KINDS if config.generator.enhancer_channels else GRAPH_KINDS

#: Metadata keys (see the table above).
FORMAT_KEY = "smis.format"
GRAPH_KEY = "smis.graph"
CONFIG_KEY = "smis.config"
#: sha256 of the model folder's config.json + safetensors the graph was exported from.
SOURCE_KEY = "smis.source_sha256"


def graph_file_name(kind: str, fp16: bool = False) -> str:
    """``generator.onnx``, ``encoder-fp16.onnx``, ``generator-maps.onnx``, ``generator-render.onnx``..."""
    base = _FILES[kind]
    return base.replace(".onnx", f"{FP16_SUFFIX}.onnx") if fp16 else base


def latent_layout(config: SMISConfig) -> dict[str, Any]:
    """How Z is laid out, in words and numbers (stored in every exported file)."""
    zc, c = config.z_channels, config.num_classes
    return {
        "channels_per_class": zc,
        "num_classes": c,
        "channels": zc * c,
        "class_channels": f"class c owns channels [{zc}c, {zc}c+{zc})",
        "grid": "1 x 1 (one vector per class)" if config.code_layout == "global"
        else f"H/{config.size_multiple} x W/{config.size_multiple}",
        "native_grid": list(config.latent_grid()),
        "native_size": [config.height, config.width],
        "prior": "N(0, 1) per element at test time; the encoder's mu for a real photo",
    }


def model_metadata(config: SMISConfig, kind: str) -> dict[str, str]:
    """The keys that describe the model and the graph (the exporter adds I/O, precision and hashes)."""
    return {
        FORMAT_KEY: ONNX_FORMAT,
        GRAPH_KEY: kind,
        CONFIG_KEY: config.to_json(),
        "smis.class_names": json.dumps(list(config.class_names)),
        "smis.palette": json.dumps([list(c) for c in config.palette]),
        "smis.latent_layout": json.dumps(latent_layout(config)),
        "smis.size_multiple": str(config.size_multiple),
    }


def config_from_metadata(meta: dict[str, str], source: str = "the ONNX file") -> SMISConfig:
    """Rebuild the :class:`SMISConfig` an exported graph carries."""
    if meta.get(FORMAT_KEY) != ONNX_FORMAT or CONFIG_KEY not in meta:
        raise ValueError(f"{source} was not exported by `python -m export` (no {ONNX_FORMAT} metadata); "
                         "export it again from the model folder")
    try:
        return SMISConfig.from_dict(json.loads(meta[CONFIG_KEY]))
    except json.JSONDecodeError as err:
        raise ValueError(f"{source} has a corrupt {CONFIG_KEY} entry: {err}") from err


def weights_file_digest(folder: Path) -> str:
    """sha256 of ``config.json`` and the safetensors files of a model folder (``smis.source_sha256``)."""
    files = sorted(folder.glob("model*.safetensors")) + [folder / "model.safetensors.index.json"]
    h = hashlib.sha256((folder / "config.json").read_bytes())
    found = False
    for f in files:
        if f.is_file():
            found = True
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
    if not found:
        raise ValueError(f"{folder} has neither {GENERATOR_FILE} nor safetensors weights to export it from")
    return h.hexdigest()
