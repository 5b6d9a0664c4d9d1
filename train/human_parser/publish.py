"""Parser folders and their model card, and ``--publish``: a shippable folder from a finished run.

A parser folder holds ``config.json`` (``ParserConfig``), ``model.safetensors``, ``metrics.json``
and the card ``README.md``; a published one adds ``model.onnx``, the run's ``log.jsonl``, its
``training_curve.png`` and full-body check thresholds calibrated on the validation photos. The
log is read and written, and the curve drawn, with :mod:`train.history`'s helpers, the command in
the card made by :func:`train.cli.options_to_cli`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from smis.parsing import ONNX_NAME, HumanParser, ParserConfig, ParserNet, export_onnx, person_measures

from ..cli import options_to_cli
from ..history import pyplot, read_jsonl, save_figure, write_jsonl
from .data import load_split, open_split
from .options import LOG_NAME, OPTIONS_NAME, PROG, ParserTrainOptions

logger = logging.getLogger(__name__)


def write_card(folder: Path, config: ParserConfig, scores: dict[str, Any] | None, opts: ParserTrainOptions,
               step: int, params: int, command: str | None = None, curve: str | None = None,
               train_minutes: float | None = None,
               calibration: tuple[int, dict[str, float], dict[str, float]] | None = None) -> None:
    """``README.md`` for a parser folder: what it is, how it was trained, how well it does.

    ``command`` (the exact training command), ``curve`` (a plot next to the card) and
    ``train_minutes`` are known when a finished run is published (:func:`publish_run`).
    """
    lines = [
        "---", "library_name: smis", "tags: [human-parsing, semantic-segmentation, clothing]",
        "license: apache-2.0", "---", "",
        "# SMIS human parser (CCP, 10 classes)", "",
        "A compact segmentation network (MobileNetV2-style encoder with depthwise-separable convolutions "
        "and BatchNorm, global context, FPN decoder; "
        f"{params / 1e6:.2f} M parameters) that labels a photo of one person with "
        f"{config.num_classes} classes: {', '.join(config.class_names)}.",
        f"Trained from scratch (no pretrained backbone) with `{PROG}` of this project.", "",
        "## Use", "", "```python", "from smis.parsing import HumanParser",
        "parser = HumanParser.from_pretrained(\"path/to/this/folder\")",
        "result = parser.predict(\"photo.jpg\")  # labels (H, W) int64 + confidence at the photo's size",
        "labels = parser(images)  # evaluation hook: (N, 3, H, W) in [-1, 1] -> (N, H, W)", "```", "",
        "## Training", "",
        f"- Data: `{opts.format}` dataset `{Path(opts.data).name}`, split `{opts.train_split}` "
        f"(validation: `{opts.val_split or 'none'}`), at {config.height}x{config.width} (H x W).",
        f"- The weights of step {step} (the best validation mIoU) of a {opts.steps}-step run of batch "
        f"{opts.batch_size}, AdamW lr {opts.lr} (warm-up {opts.warmup}, poly "
        f"{opts.poly_power}), weight decay {opts.weight_decay}, loss `{opts.loss}`.",
        f"- Augmentation: scale {opts.scale[0]}-{opts.scale[1]}, random crop, "
        f"{'left-right flip, ' if opts.flip else ''}colour jitter {opts.jitter}.",
    ]
    if train_minutes:
        lines.append(f"- Training time: {train_minutes:.0f} min on `{opts.device}`"
                     f"{' with bf16 autocast' if opts.amp == 'bf16' else ''}.")
    lines.append("")
    if command:
        lines += ["Exact command (rerun it with `--resume auto` to continue a stopped run):", "",
                  "```bash", command, "```", ""]
    if curve:
        lines += [f"![training loss and validation scores]({curve})", ""]
    if scores:
        lines += [f"## Validation (`{opts.val_split}`, {config.height}x{config.width})", "",
                  f"mIoU **{scores['mean_iou']:.4f}**, pixel accuracy **{scores['pixel_accuracy']:.4f}**, "
                  f"mean class accuracy {scores['mean_accuracy']:.4f} (all-background baseline: "
                  f"{scores['majority_baseline']:.4f}).", "", "| class | IoU | accuracy |", "|---|---|---|"]
        for name in config.class_names:
            iou, acc = scores["per_class"][name]["iou"], scores["per_class"][name]["accuracy"]
            fmt = lambda v: "-" if v is None else f"{v:.3f}"
            lines.append(f"| {name} | {fmt(iou)} | {fmt(acc)} |")
        lines.append("")
        lines += weak_classes(scores, config.class_names)
    if calibration:
        n, th, low = calibration
        lines += ["## Full-body check", "",
                  f"`predict` refuses a photo when the parse does not look like one full-body person. The "
                  f"thresholds were set from the {n} validation photos (every one passes; each threshold is a "
                  "fixed fraction of the lowest value among them, `train.human_parser.publish.PERSON_MARGINS`):", "",
                  "| rule | threshold | lowest on val |", "|---|---:|---:|"]
        for name, (key, _) in PERSON_MARGINS.items():
            lines.append(f"| {key} (`{name}`) | {th[name]:.4f} | {low[key]:.4f} |")
        lines.append("")
    lines += [
        "## Limitations", "",
        "- Trained on about 850 street-fashion photos (mostly women, frontal, standing, full body): "
        "expect worse masks for other poses, crops, several people, or unusual clothing.",
        "- Faces are labelled as skin (CCP has no face class); small accessories are often missed.",
        "- `predict` refuses photos that do not look like one full-body person (a heuristic on the "
        "mask: too little foreground, low confidence, too short, no feet).", "",
        "## Data and citation", "",
        "Clothing Co-Parsing (CCP), Apache-2.0, labels converted from .mat to PNG and regrouped into 10 classes. "
        "W. Yang, P. Luo, L. Lin, \"Clothing Co-Parsing by Joint Image Segmentation and Labeling\", CVPR 2014.",
        "",
    ]
    (folder / "README.md").write_text("\n".join(lines))


def save_parser(folder: Path, net: ParserNet, opts: ParserTrainOptions, step: int,
                scores: dict[str, Any] | None, **card: Any) -> None:
    """A complete parser folder: weights, config, metrics and card."""
    net.save_pretrained(folder, metadata={"step": str(step)})
    (folder / "metrics.json").write_text(json.dumps({"step": step, "val": scores}, indent=2) + "\n")
    write_card(folder, net.config, scores, opts, step, sum(p.numel() for p in net.parameters()), **card)


def weak_classes(scores: dict[str, Any], class_names: Sequence[str], bar: float = 0.5) -> list[str]:
    """Card lines naming the classes under ``bar`` IoU and how they fail (missed or over-predicted)."""
    weak = []
    for name in class_names:
        v = scores["per_class"][name]
        if v["iou"] is None or v["iou"] >= bar:
            continue
        ratio = v["predicted_pixels"] / max(v["true_pixels"], 1)
        how = ("mostly missed" if ratio < 0.8 else "over-predicted" if ratio > 1.25
               else "found, but in the wrong places")
        weak.append(f"**{name}** (IoU {v['iou']:.2f}; predicted {ratio:.2f}x its true pixels: {how})")
    if not weak:
        return [f"Every class reaches IoU {bar} on this split.", ""]
    return ["Weak classes (IoU under " + str(bar) + "): " + "; ".join(weak) + ".", ""]


def training_minutes(records: list[dict[str, Any]], batch_size: int) -> float:
    """Minutes of training in a log, over every chunk of a resumed run (from each line's images/s)."""
    seconds, last = 0.0, 0
    for r in records:
        if "loss" in r and r.get("img_per_s"):
            seconds += (r["step"] - last) * batch_size / r["img_per_s"]
            last = r["step"]
    return seconds / 60


def plot_curve(records: list[dict[str, Any]], out_png: Path, title: str = "") -> Path:
    """Training loss and validation mIoU / pixel accuracy against steps, one PNG."""
    train = [(r["step"], r["loss"]) for r in records if "loss" in r and math.isfinite(r["loss"])]
    val = sorted({r["step"]: r["val"] for r in records if r.get("val")}.items())
    fig, (a, b) = pyplot().subplots(1, 2, figsize=(10, 3.6))
    if train:
        a.plot(*zip(*train), lw=1)
    a.set(xlabel="step", ylabel="training loss", yscale="log", title="loss")
    a.grid(alpha=0.3)
    if val:
        steps = [s for s, _ in val]
        b.plot(steps, [v["mean_iou"] for _, v in val], label="mIoU")
        b.plot(steps, [v["pixel_accuracy"] for _, v in val], label="pixel accuracy")
        best = max(val, key=lambda sv: sv[1]["mean_iou"])
        b.scatter([best[0]], [best[1]["mean_iou"]], color="k", zorder=3, label=f"best mIoU {best[1]['mean_iou']:.3f}")
    b.set(xlabel="step", ylim=(0, 1), title="validation")
    b.grid(alpha=0.3)
    b.legend(loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, out_png, dpi=110)


CURVE_NAME = "training_curve.png"

#: The full-body check's thresholds from the validation photos: (measure, fraction of its lowest value).
PERSON_MARGINS = {"min_foreground": ("foreground", 0.5), "min_confidence": ("confidence", 0.8),
                  "min_person_height": ("height", 0.85), "min_feet": ("feet", 0.4)}


def calibrate_person_check(parser: HumanParser, photos: Sequence[np.ndarray]) -> tuple[dict[str, float],
                                                                                     dict[str, float]]:
    """Thresholds for :func:`smis.parsing.check_person` that every one of ``photos`` (people, full body)
    passes with a margin: each is a fraction (:data:`PERSON_MARGINS`) of the lowest value seen.
    Returns (thresholds, lowest values)."""
    measures = [person_measures(parser.predict(photo, check=False), parser.config) for photo in photos]
    lowest = {k: min(m[k] for m in measures) for k in measures[0]}
    return {name: round(frac * lowest[key], 4) for name, (key, frac) in PERSON_MARGINS.items()}, lowest


def publish_run(run_dir: str | os.PathLike, out: str | os.PathLike, onnx: bool = True) -> Path:
    """A shippable parser folder from a run: its best weights, ``model.onnx``, the card (per-class IoU,
    weak classes, the exact command, training time), the training curve and the run's log."""
    run_dir, out = Path(run_dir), Path(out)
    best = run_dir / "best"
    if not (best / "metrics.json").is_file():
        raise ValueError(f"{run_dir} has no best/ parser yet (is it a `{PROG}` run folder "
                         "with a validation split?)")
    try:
        opts = ParserTrainOptions.from_dict(json.loads((run_dir / OPTIONS_NAME).read_text()))
    except (OSError, json.JSONDecodeError, TypeError, KeyError) as err:
        raise ValueError(f"{run_dir / OPTIONS_NAME} is missing or unreadable ({err})") from err
    metrics = json.loads((best / "metrics.json").read_text())
    net = ParserNet.from_pretrained(best)
    records = read_jsonl(run_dir / LOG_NAME)
    calibration = None
    if opts.data and opts.val_split and Path(opts.data).is_dir():
        ds = open_split(opts, opts.val_split, net.config)
        photos = load_split(ds, net.config.num_classes, 0, False, "val").images.permute(0, 2, 3, 1).numpy()
        thresholds, lowest = calibrate_person_check(HumanParser(net, "cpu"), list(photos))
        net.config = net.config.replace(**thresholds)
        calibration = (len(photos), thresholds, lowest)
    else:
        logger.warning("%s is not here: the full-body check keeps the config's thresholds", opts.data or "--data")
    out.mkdir(parents=True, exist_ok=True)
    plot_curve(records, out / CURVE_NAME, title=f"parser {net.config.height}x{net.config.width}, batch "
               f"{opts.batch_size}, best step {metrics['step']}")
    write_jsonl(out / LOG_NAME, records)
    save_parser(out, net, opts, metrics["step"], metrics["val"],
                command=options_to_cli(opts.to_dict(), [ParserTrainOptions], PROG),
                curve=CURVE_NAME, train_minutes=training_minutes(records, opts.batch_size), calibration=calibration)
    if onnx:
        export_onnx(net, out / ONNX_NAME)
    return out

