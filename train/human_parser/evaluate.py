"""Segmentation scores of the human parser on an in-memory split, and ``--evaluate`` of a saved
parser folder. The scores are :mod:`train.metrics`' (the same functions ``python -m train.evaluate``
uses), plus the mean class accuracy and the all-majority-class baseline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from smis.parsing import IGNORE_INDEX, HumanParser, ParserNet

from .. import dist
from .. import metrics as M
from ..data import build_dataset
from .data import InMemorySplit, load_split, open_split
from .options import ParserTrainOptions


def segmentation_scores(cm: torch.Tensor, class_names: Sequence[str]) -> dict[str, Any]:
    """:func:`train.metrics.segmentation_scores` (pixel accuracy, mIoU, per-class IoU / accuracy)
    plus the mean class accuracy and the all-majority-class baseline a parser must beat."""
    scores = M.segmentation_scores(cm, class_names)
    accs = [v["accuracy"] for v in scores["per_class"].values() if v["accuracy"] is not None]
    truth = cm.double().sum(1)
    scores["mean_accuracy"] = float(np.mean(accs)) if accs else float("nan")
    scores["majority_baseline"] = float(truth.max() / truth.sum().clamp(min=1))
    return scores


@torch.no_grad()
def evaluate(net: nn.Module, split: InMemorySplit, class_names: Sequence[str], device: torch.device,
             batch_size: int = 16, amp: str = "none") -> dict[str, Any]:
    """Segmentation scores of ``net`` on an in-memory split (at the split's size, no letterbox)."""
    was_training = net.training
    net.eval()
    c = len(class_names)
    cm = torch.zeros(c, c, dtype=torch.int64)
    for i in range(0, len(split), batch_size):
        x = split.images[i:i + batch_size].to(device).float() / 127.5 - 1
        y = split.labels[i:i + batch_size].to(device).long()
        with torch.autocast(device.type, torch.bfloat16, enabled=amp == "bf16"):
            pred = net(x).argmax(1)
        cm += M.confusion_matrix(pred, y, c, ignore_index=IGNORE_INDEX)
    net.train(was_training)
    return segmentation_scores(cm, class_names)



def run_evaluate(folder: str, opts: ParserTrainOptions) -> dict[str, Any]:
    """Scores of a saved parser on ``opts.data`` / ``opts.val_split``: at the parser's size, or at
    ``--height`` x ``--width`` when they differ from it -- then the way the app parses (photos
    letterboxed to the parser's size, class probabilities resized bilinearly to the photo's size, argmax:
    :class:`smis.parsing.HumanParser`) against labels packed at that size."""
    net = ParserNet.from_pretrained(folder)
    cfg = net.config
    device = dist.resolve_device(opts.device)
    size = (opts.height or cfg.height, opts.width or cfg.width)
    if size == (cfg.height, cfg.width):
        ds = open_split(opts, opts.val_split or "val", cfg, opts.max_items)
        split = load_split(ds, cfg.num_classes, opts.workers, opts.progress, "val")
        return evaluate(net.to(device), split, cfg.class_names, device, amp=opts.amp)
    ds = build_dataset(opts.format, opts.data, opts.val_split or "val", *size, on_bad=opts.on_bad,
                       max_items=opts.max_items)
    split = load_split(ds, cfg.num_classes, opts.workers, opts.progress, "val")
    parser = HumanParser(net, device)
    cm = torch.zeros(cfg.num_classes, cfg.num_classes, dtype=torch.int64)
    for i in range(0, len(split), 16):
        x = split.images[i:i + 16].float() / 127.5 - 1
        cm += M.confusion_matrix(parser(x).cpu(), split.labels[i:i + 16].long(), cfg.num_classes,
                                 ignore_index=IGNORE_INDEX)
    scores = segmentation_scores(cm, cfg.class_names)
    scores["size"] = list(size)
    scores["how"] = (f"letterboxed to the parser's {cfg.height}x{cfg.width}, class probabilities resized "
                     f"bilinearly to {size[0]}x{size[1]}, argmax (smis.parsing.HumanParser)")
    return scores
