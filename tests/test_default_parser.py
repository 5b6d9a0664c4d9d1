"""The bundled human parser (smis/assets/ccp-parser): it loads strictly, parses the shipped example
photos well, its ONNX graph agrees with PyTorch, and its full-body check accepts them.

Bounds are set from the measured values with a margin (see the card), so a broken parser, loader,
letterbox or export cannot land.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from smis.labels import load_mask
from smis.parsing import BUNDLED_PARSER_DIR, HumanParser, ParserNet
from train import metrics as M

EXAMPLES = BUNDLED_PARSER_DIR.parent / "examples" / "ccp"
#: Measured on the six shipped examples (val photos 0854-0896, at their own size, ONNX Runtime):
#: mIoU 0.480, pixel accuracy 0.912. An untrained parser labels everything background (accuracy
#: ~0.77, mIoU < 0.1). Bounds: a margin below the measured values.
MIN_MIOU = 0.40
MIN_PIXEL_ACCURACY = 0.85


def _examples():
    meta = json.loads((EXAMPLES / "examples.json").read_text())
    palette = [tuple(c) for c in meta["palette"]]
    return [(EXAMPLES / ex["photo"], load_mask(EXAMPLES / ex["mask"], len(palette), palette))
            for ex in meta["examples"]]


@pytest.fixture(scope="module")
def parsers() -> dict[str, HumanParser]:
    return {kind: HumanParser.from_pretrained(device="cpu", backend=kind) for kind in ("torch", "onnx")}


def test_bundled_parser_loads_strictly_at_the_models_size():
    net = ParserNet.from_pretrained()  # strict: names and shapes checked against config.json
    assert (net.config.height, net.config.width) == (192, 128)
    for name in ("README.md", "model.onnx", "metrics.json", "training_curve.png"):
        assert (BUNDLED_PARSER_DIR / name).is_file(), name
    val = json.loads((BUNDLED_PARSER_DIR / "metrics.json").read_text())["val"]
    assert val["mean_iou"] >= 0.5 and val["pixel_accuracy"] >= 0.9  # the bar, as shipped


def test_shipped_examples_are_parsed_well_and_accepted(parsers):
    cm = torch.zeros(10, 10, dtype=torch.int64)
    for photo, truth in _examples():
        result = parsers["onnx"].predict(photo)  # check=True: a full-body person, no NotAPersonError
        assert result.labels.shape == truth.shape
        cm += M.confusion_matrix(torch.from_numpy(result.labels), torch.from_numpy(truth.astype(np.int64)), 10)
    scores = M.segmentation_scores(cm, parsers["onnx"].class_names)
    print(f"examples: mIoU {scores['mean_iou']:.4f}, pixel accuracy {scores['pixel_accuracy']:.4f}")
    assert scores["mean_iou"] >= MIN_MIOU and scores["pixel_accuracy"] >= MIN_PIXEL_ACCURACY, scores


def test_onnx_and_torch_give_the_same_masks(parsers):
    for photo, _ in _examples()[:3]:
        a = parsers["torch"].predict(photo, check=False).labels
        b = parsers["onnx"].predict(photo, check=False).labels
        assert (a == b).mean() >= 0.995
