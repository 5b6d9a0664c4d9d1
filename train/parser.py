"""Train, evaluate and export the human parser of :mod:`smis.parsing`.

One GPU, in chunks under 10 minutes (rerun the same command until it says the run is complete)::

    python -m train.parser --data .gpu/ccp384 --outdir runs/parser --resume auto --max-minutes 9

Several GPUs: ``torchrun --nproc_per_node 4 -m train.parser ...`` (same flags; ``--batch-size``
is the global batch). Evaluate a parser folder, or re-export its ONNX file::

    python -m train.parser --evaluate runs/parser/best --data .gpu/ccp384 --val-split val
    python -m train.parser --export-onnx runs/parser/best

The whole dataset is decoded once into memory as uint8 (CCP at 384x256: 250 MB) and augmented
in batches on the training device: colour jitter, then one affine warp per image for the random
scale (0.75-1.25), crop position and left-right flip (CCP's classes have no left/right, so a
flip keeps the labels). Pixels the warp brings in from outside the photo are grey and ignored
by the loss. A step's draws depend only on (seed, step, rank), so a resumed run replays exactly.

The run folder holds ``parser_options.json``, ``log.jsonl`` (one JSON object per line: training
logs and validations), ``checkpoints/training-state-<step>.pt`` (resumable state written
atomically by :mod:`train.checkpoint`, loaded with ``weights_only=True``; the newest ``--keep``
are kept), ``best/`` (the best validation mIoU so far: ``config.json``, ``model.safetensors``,
``metrics.json``, a model card ``README.md`` and, at the end, ``model.onnx``) and ``final/`` (the
last weights).

Shared with ``python -m train``: :mod:`train.dist` (torchrun or not), :mod:`train.checkpoint`
(atomic states, resume, pruning) and the segmentation scores of :mod:`train.metrics`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from smis.hub import CheckpointError
from smis.parsing import (
    IGNORE_INDEX,
    ONNX_NAME,
    PARSER_PRESETS,
    ParserConfig,
    ParserNet,
    export_onnx,
    get_parser_config,
)

from . import checkpoint as ckpt
from . import dist
from . import metrics as M

logger = logging.getLogger(__name__)

LossKind = Literal["weighted", "ohem", "ce"]
LOSSES = ("weighted", "ohem", "ce")
OPTIONS_NAME = "parser_options.json"
#: Marks a training state as the parser's (``train.checkpoint`` also holds GroupDNet states).
STATE_KIND = "smis-human-parser"
LOG_NAME = "log.jsonl"


# ---------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------
@dataclass
class ParserTrainOptions:
    """Everything one parser training run needs."""

    # -- data ----------------------------------------------------------------------------------
    #: Dataset root (read by ``train.data.build_dataset``; CCP packed at 384x256 in ``generic``).
    data: str = ""
    format: str = "generic"
    train_split: str = "train"
    #: Validation split (``""``: no validation; the best model is then the last one).
    val_split: str = "val"
    on_bad: str = "skip"
    #: DataLoader workers used once, to decode the dataset into memory.
    workers: int = 4
    #: Keep only the first N pairs of each split (smoke runs).
    max_items: int | None = None

    # -- model ---------------------------------------------------------------------------------
    #: Named variant of ``smis.parsing.PARSER_PRESETS`` (``ccp``, ``tiny``).
    preset: str = "ccp"
    #: Training size (``None``: the preset's 384 x 256); multiples of 32.
    height: int | None = None
    width: int | None = None

    # -- schedule ------------------------------------------------------------------------------
    #: Images per step over all processes.
    batch_size: int = 16
    steps: int = 16000
    #: AdamW peak learning rate, linear warm-up, then poly decay to 0.
    lr: float = 2e-3
    warmup: int = 300
    poly_power: float = 0.9
    #: Decoupled weight decay on convolution weights (not on BatchNorm or biases).
    weight_decay: float = 0.05
    grad_clip: float = 5.0

    # -- objective -----------------------------------------------------------------------------
    #: ``weighted`` (cross-entropy, class weights sqrt(median freq / freq) clipped to [0.2, 10]),
    #: ``ohem`` (hardest pixels only: p(true) < 0.7, at least ``ohem_keep`` of them) or ``ce``.
    loss: LossKind = "weighted"
    ohem_keep: float = 0.2
    label_smoothing: float = 0.0

    # -- augmentation --------------------------------------------------------------------------
    #: Random zoom range (1 = the dataset's framing; < 1 shows padding around the photo).
    scale: tuple[float, float] = (0.75, 1.25)
    #: Strength of the brightness / contrast / saturation jitter (0: off).
    jitter: float = 0.3
    flip: bool = True

    # -- speed, devices ------------------------------------------------------------------------
    amp: Literal["none", "bf16"] = "none"
    channels_last: bool | None = None
    compile: bool = False
    seed: int = 0
    device: str = "auto"

    # -- run folder ----------------------------------------------------------------------------
    outdir: str | None = None
    #: ``None`` (fresh; refuses a folder that holds checkpoints), ``auto`` or a checkpoint path.
    resume: str | None = None
    log_every: int = 50
    val_every: int = 500
    ckpt_every: int = 500
    keep: int = 2
    #: Checkpoint and stop cleanly before this many minutes (rerun with ``--resume auto``).
    max_minutes: float | None = None
    #: Checkpoint and stop at this global step without completing (a chunk counted in steps).
    stop_at: int | None = None
    progress: bool = True
    #: Export ``best/model.onnx`` when the run completes.
    onnx: bool = True

    @property
    def run_dir(self) -> Path:
        return Path(self.outdir or os.path.join("runs", "parser"))

    def model_config(self) -> ParserConfig:
        sizes = {k: v for k, v in (("height", self.height), ("width", self.width)) if v is not None}
        return get_parser_config(self.preset, **sizes)

    def lr_at(self, step: int) -> float:
        """Learning rate for optimiser step ``step`` (0-based)."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        frac = (step - self.warmup) / max(1, self.steps - self.warmup)
        return self.lr * max(0.0, 1.0 - frac) ** self.poly_power

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["scale"] = list(self.scale)
        return d

    def validate(self) -> None:
        if self.preset not in PARSER_PRESETS:
            raise ValueError(f"--preset {self.preset!r}: choose one of {sorted(PARSER_PRESETS)}")
        if self.loss not in LOSSES:
            raise ValueError(f"--loss {self.loss!r}: choose one of {LOSSES}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("--steps and --batch-size must be positive")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"--scale must be 0 < low <= high, got {self.scale}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"--jitter must lie in [0, 1), got {self.jitter}")
        if not 0 < self.ohem_keep <= 1:
            raise ValueError(f"--ohem-keep must lie in (0, 1], got {self.ohem_keep}")
        if self.amp not in ("none", "bf16"):
            raise ValueError("--amp must be none or bf16 (a BatchNorm parser needs no fp16 scaler)")
        for name in ("log_every", "val_every", "ckpt_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0")
        self.model_config()  # raises on sizes that are not multiples of 32


# ---------------------------------------------------------------------------------------------
# Data: decode once, augment on the device
# ---------------------------------------------------------------------------------------------
@dataclass
class InMemorySplit:
    """A split as tensors: photos uint8 (N, 3, H, W) and labels uint8 (N, H, W)."""

    images: torch.Tensor
    labels: torch.Tensor
    paths: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def to(self, device: torch.device) -> InMemorySplit:
        return InMemorySplit(self.images.to(device), self.labels.to(device), self.paths)


def load_split(dataset: Sequence[dict[str, Any]], num_classes: int, workers: int = 0,
               progress: bool = True, what: str = "data") -> InMemorySplit:
    """Decode a dataset of ``{"image": [-1, 1] (3, H, W), "label": (H, W), "path"}`` into memory."""
    from torch.utils.data import DataLoader

    if len(dataset) == 0:
        raise ValueError(f"the {what} split is empty")
    names = getattr(dataset, "class_names", None)
    if names is not None and len(names) != num_classes:
        raise ValueError(f"the {what} split has {len(names)} classes ({', '.join(names)}) but the parser has "
                         f"{num_classes}; pass a dataset with the parser's classes or another --preset")
    loader = DataLoader(dataset, batch_size=16, num_workers=workers, shuffle=False)
    images, labels, paths = [], [], []
    for batch in tqdm(loader, desc=f"loading {what}", disable=not progress, leave=False):
        images.append(((batch["image"] + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8))
        lab = batch["label"]
        if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= num_classes):
            raise ValueError(f"the {what} split holds class ids {int(lab.min())}..{int(lab.max())}, "
                             f"outside 0..{num_classes - 1}")
        labels.append(lab.to(torch.uint8))
        paths += list(batch.get("path", [""] * len(lab)))
    return InMemorySplit(torch.cat(images), torch.cat(labels), paths)


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """sqrt(median frequency / frequency), clipped to [0.2, 10]; 1 for absent classes."""
    counts = torch.bincount(labels.flatten().long(), minlength=num_classes)[:num_classes].double()
    freq = counts / counts.sum()
    present = freq > 0
    w = torch.ones(num_classes, dtype=torch.float64)
    w[present] = (freq[present].median() / freq[present]).sqrt().clamp(0.2, 10.0)
    return w.float()


def augment_batch(images: torch.Tensor, labels: torch.Tensor, gen: torch.Generator,
                  scale: tuple[float, float] = (0.75, 1.25), jitter: float = 0.3,
                  flip: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 photos (B, 3, H, W) + labels (B, H, W) -> augmented [-1, 1] photos and int64 labels.

    ``gen`` is a CPU generator (draws are device independent). Out-of-photo pixels are 0 (grey)
    in the image and :data:`IGNORE_INDEX` in the labels.
    """
    b = images.shape[0]
    dev = images.device
    x = images.float() / 255.0

    def draw(lo: float, hi: float) -> torch.Tensor:
        return (torch.rand(b, generator=gen) * (hi - lo) + lo).to(dev)

    # 1. Colour jitter (before the warp, so the padding stays exactly grey).
    if jitter > 0:
        x = x * draw(1 - jitter, 1 + jitter).view(b, 1, 1, 1)
        mean = x.mean((1, 2, 3), keepdim=True)
        x = (x - mean) * draw(1 - jitter, 1 + jitter).view(b, 1, 1, 1) + mean
        gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        x = (x - gray) * draw(1 - jitter, 1 + jitter).view(b, 1, 1, 1) + gray
        x = x.clamp(0, 1)
    x = x * 2 - 1
    # 2. Scale, crop position and flip as one affine warp (output coords -> input coords).
    s = draw(*scale)
    span = (1 - 1 / s).abs()
    tx = (torch.rand(b, generator=gen).to(dev) * 2 - 1) * span
    ty = (torch.rand(b, generator=gen).to(dev) * 2 - 1) * span
    sx = 1 / s
    if flip:
        sx = sx * torch.where(torch.rand(b, generator=gen).to(dev) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2] = sx, tx
    theta[:, 1, 1], theta[:, 1, 2] = 1 / s, ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # Labels shifted by one so that the zero padding marks "outside the photo".
    y = F.grid_sample(labels[:, None].float() + 1, grid, mode="nearest", padding_mode="zeros",
                      align_corners=False)[:, 0].long() - 1
    y[y < 0] = IGNORE_INDEX
    return x, y


# ---------------------------------------------------------------------------------------------
# Loss and scores
# ---------------------------------------------------------------------------------------------
def parser_loss(logits: torch.Tensor, target: torch.Tensor, kind: str, weight: torch.Tensor | None = None,
                ohem_keep: float = 0.2, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy variants; :data:`IGNORE_INDEX` pixels never count."""
    logits = logits.float()
    if kind == "weighted":
        return F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE_INDEX,
                               label_smoothing=label_smoothing)
    if kind == "ce":
        return F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing)
    if kind == "ohem":
        pix = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="none",
                              label_smoothing=label_smoothing).flatten()
        pix = pix[(target != IGNORE_INDEX).flatten()]
        if pix.numel() == 0:
            return logits.sum() * 0.0
        k = max(1, int(ohem_keep * pix.numel()))
        hard = pix[pix > -math.log(0.7)]
        return hard.mean() if hard.numel() >= k else pix.topk(k).values.mean()
    raise ValueError(f"unknown loss {kind!r}; choose one of {LOSSES}")


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


# ---------------------------------------------------------------------------------------------
# Model card
# ---------------------------------------------------------------------------------------------
def write_card(folder: Path, config: ParserConfig, scores: dict[str, Any] | None, opts: ParserTrainOptions,
               step: int, params: int) -> None:
    """``README.md`` for a parser folder: what it is, how it was trained, how well it does."""
    lines = [
        "---", "library_name: smis", "tags: [human-parsing, semantic-segmentation, clothing]",
        "license: apache-2.0", "---", "",
        "# SMIS human parser (CCP, 10 classes)", "",
        "A compact segmentation network (MobileNetV2-style encoder with depthwise-separable convolutions "
        "and BatchNorm, global context, FPN decoder; "
        f"{params / 1e6:.2f} M parameters) that labels a photo of one person with "
        f"{config.num_classes} classes: {', '.join(config.class_names)}.",
        "Trained from scratch (no pretrained backbone) with `python -m train.parser` of this project.", "",
        "## Use", "", "```python", "from smis.parsing import HumanParser",
        "parser = HumanParser.from_pretrained(\"path/to/this/folder\")",
        "result = parser.predict(\"photo.jpg\")  # labels (H, W) int64 + confidence at the photo's size",
        "labels = parser(images)  # evaluation hook: (N, 3, H, W) in [-1, 1] -> (N, H, W)", "```", "",
        "## Training", "",
        f"- Data: `{opts.format}` dataset `{Path(opts.data).name}`, split `{opts.train_split}` "
        f"(validation: `{opts.val_split or 'none'}`), at {config.height}x{config.width} (H x W).",
        f"- {step} steps of batch {opts.batch_size}, AdamW lr {opts.lr} (warm-up {opts.warmup}, poly "
        f"{opts.poly_power}), weight decay {opts.weight_decay}, loss `{opts.loss}`.",
        f"- Augmentation: scale {opts.scale[0]}-{opts.scale[1]}, random crop, "
        f"{'left-right flip, ' if opts.flip else ''}colour jitter {opts.jitter}.", "",
    ]
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
                scores: dict[str, Any] | None) -> None:
    """A complete parser folder: weights, config, metrics and card."""
    net.save_pretrained(folder, metadata={"step": str(step)})
    (folder / "metrics.json").write_text(json.dumps({"step": step, "val": scores}, indent=2) + "\n")
    write_card(folder, net.config, scores, opts, step, sum(p.numel() for p in net.parameters()))


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def _batch_indices(step: int, n: int, global_batch: int, seed: int) -> torch.Tensor:
    """The dataset indices of optimiser step ``step``: walks a fresh permutation per epoch."""
    out = []
    start = step * global_batch
    while len(out) < global_batch:
        epoch, offset = divmod(start + len(out), n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        out += perm[offset:offset + global_batch - len(out)].tolist()
    return torch.tensor(out)


def _param_groups(net: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay = [p for p in net.parameters() if p.ndim > 1]
    no_decay = [p for p in net.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _log(run_dir: Path, record: dict[str, Any]) -> None:
    with open(run_dir / LOG_NAME, "a") as f:
        f.write(json.dumps(record) + "\n")


def train(opts: ParserTrainOptions, train_set: Sequence[dict[str, Any]] | None = None,
          val_set: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Run (or continue) one training run; returns a summary (``{"step", "best_miou", "complete", "last_val", ...}``).

    ``train_set`` / ``val_set`` replace ``opts.data`` (tests pass in-memory datasets).
    """
    opts.validate()
    device = dist.resolve_device(opts.device)
    dist.init(device)
    rank, world = dist.rank(), dist.world_size()
    main = dist.is_main()
    if opts.batch_size % world:
        raise ValueError(f"--batch-size {opts.batch_size} does not split over {world} processes")
    local_batch = opts.batch_size // world
    run_dir = opts.run_dir
    t0 = time.monotonic()

    # 1. Resume point (decided before anything is written).
    resume: tuple[Path, dict[str, Any]] | None = None
    if opts.resume == "auto":
        resume = ckpt.find_resume(run_dir)  # the newest state that loads
    elif opts.resume:
        if not Path(opts.resume).is_file():
            raise ValueError(f"--resume {opts.resume}: no such checkpoint file")
        resume = Path(opts.resume), ckpt.load_state(opts.resume)
    elif ckpt.list_checkpoints(run_dir):
        raise ValueError(f"{run_dir} already holds checkpoints: pass --resume auto to continue that run, "
                         "or choose another --outdir")
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.clean_temporaries(run_dir)
        (run_dir / OPTIONS_NAME).write_text(json.dumps(opts.to_dict(), indent=2) + "\n")
    dist.barrier()

    # 2. Data, decoded once into memory on the training device.
    config = opts.model_config()
    if train_set is None:
        from .data import build_dataset

        train_set = build_dataset(opts.format, opts.data, opts.train_split, config.height, config.width,
                                  augment=False, on_bad=opts.on_bad, max_items=opts.max_items)
        if opts.val_split:
            val_set = build_dataset(opts.format, opts.data, opts.val_split, config.height, config.width,
                                    augment=False, on_bad=opts.on_bad, max_items=opts.max_items)
    show = opts.progress and main
    train_data = load_split(train_set, config.num_classes, opts.workers, show, "train").to(device)
    val_data = load_split(val_set, config.num_classes, opts.workers, show, "val") if val_set is not None else None
    if tuple(train_data.images.shape[-2:]) != (config.height, config.width):
        raise ValueError(f"training photos are {tuple(train_data.images.shape[-2:])}, the parser trains at "
                         f"{config.height}x{config.width}; build the dataset at that size")
    weight = class_weights(train_data.labels.cpu(), config.num_classes).to(device)
    if main:
        logger.info("parser: %d train / %d val photos, class weights %s", len(train_data),
                    len(val_data) if val_data else 0, [round(float(w), 2) for w in weight])

    # 3. Model and optimiser.
    torch.manual_seed(opts.seed)
    net = ParserNet(config).to(device)
    channels_last = opts.channels_last if opts.channels_last is not None else device.type == "cuda"
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(_param_groups(net, opts.weight_decay), lr=opts.lr, betas=(0.9, 0.999))
    step, best, best_step = 0, -1.0, -1
    if resume is not None:
        ckpt_path, state = resume
        if state.get("kind") != STATE_KIND or state.get("config") != config.to_json():
            raise CheckpointError(f"{ckpt_path} is not a training state of this parser config; use its "
                                  "--preset/--height/--width, or another --outdir")
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, best, best_step = int(state["step"]), float(state["best"]), int(state["best_step"])
        if main:
            logger.info("resumed from %s at step %d (best mIoU %.4f at step %d)", ckpt_path, step, best, best_step)
    params = sum(p.numel() for p in net.parameters())
    model: nn.Module = net
    if dist.is_distributed():
        if device.type == "cuda":  # BatchNorm statistics over all GPUs (SyncBatchNorm is CUDA-only)
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        model = nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
    train_fn = torch.compile(model) if opts.compile else model

    def checkpoint() -> None:
        if main:
            ckpt.atomic_save({"kind": STATE_KIND, "step": step, "model": net.state_dict(),
                              "optimizer": optimizer.state_dict(), "best": best, "best_step": best_step,
                              "config": config.to_json()}, ckpt.state_path(run_dir, step))
            ckpt.prune(run_dir, max(1, opts.keep))
        dist.barrier()

    val_step = -1

    def validate() -> dict[str, Any] | None:
        nonlocal best, best_step, val_step
        val_step = step
        if val_data is None:
            return None
        scores = evaluate(net, val_data, config.class_names, device, amp=opts.amp)
        if main:
            _log(run_dir, {"step": step, "val": scores})
            logger.info("step %d: val mIoU %.4f, pixel acc %.4f", step, scores["mean_iou"],
                        scores["pixel_accuracy"])
            if scores["mean_iou"] > best:
                best, best_step = scores["mean_iou"], step
                save_parser(run_dir / "best", net, opts, step, scores)
        best, best_step = dist.broadcast_object((best, best_step))
        return scores

    # 4. The loop.
    net.train()
    bar = tqdm(total=opts.steps, initial=step, disable=not show, desc="parser", dynamic_ncols=True)
    last_log, images_seen = time.monotonic(), 0
    stopped_early = False
    while step < opts.steps:
        if opts.stop_at is not None and step >= opts.stop_at:
            stopped_early = True
            break
        if opts.max_minutes is not None:
            out_of_time = time.monotonic() - t0 > opts.max_minutes * 60
            if dist.is_distributed():  # every process must stop at the same step; agree every 10 steps
                flag = torch.tensor([float(out_of_time and step % 10 == 0)], device=device)
                out_of_time = step % 10 == 0 and bool(dist.all_reduce_(flag, "max").item())
            if out_of_time:
                stopped_early = True
                break
        idx = _batch_indices(step, len(train_data), opts.batch_size, opts.seed)
        idx = idx[rank * local_batch:(rank + 1) * local_batch].to(device)
        step_seed = (opts.seed * 1_000_003 + step) * 1009 + rank
        gen = torch.Generator().manual_seed(step_seed)
        torch.manual_seed(step_seed)  # dropout: the same draws whether the run was resumed or not
        x, y = augment_batch(train_data.images[idx], train_data.labels[idx], gen, opts.scale, opts.jitter,
                             opts.flip)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        lr = opts.lr_at(step)
        for g in optimizer.param_groups:
            g["lr"] = lr
        with torch.autocast(device.type, torch.bfloat16, enabled=opts.amp == "bf16"):
            logits = train_fn(x)
        loss = parser_loss(logits, y, opts.loss, weight, opts.ohem_keep, opts.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(net.parameters(), opts.grad_clip or float("inf"))
        optimizer.step()
        step += 1
        images_seen += opts.batch_size
        bar.update(1)
        if opts.log_every and step % opts.log_every == 0:
            loss_val = dist.all_reduce_(loss.detach().float().clone(), "mean").item()
            now = time.monotonic()
            rec = {"step": step, "loss": round(loss_val, 5), "lr": lr, "grad_norm": round(float(grad_norm), 4),
                   "img_per_s": round(images_seen / max(now - last_log, 1e-9), 1),
                   "minutes": round((now - t0) / 60, 2)}
            last_log, images_seen = now, 0
            if main:
                _log(run_dir, rec)
                bar.set_postfix(loss=f"{loss_val:.3f}", lr=f"{lr:.2e}")
            if not math.isfinite(loss_val):
                raise FloatingPointError(f"the loss is {loss_val} at step {step}; lower --lr or use --amp none")
        if opts.val_every and step % opts.val_every == 0 and step < opts.steps:
            validate()
        if opts.ckpt_every and step % opts.ckpt_every == 0 and step < opts.steps:
            checkpoint()
    bar.close()

    # 5. Wrap up: checkpoint, and when complete the final validation, folders and ONNX export.
    checkpoint()
    complete = step >= opts.steps
    scores = None
    if complete:
        if val_step != step:
            scores = validate()
        if main:
            save_parser(run_dir / "final", net, opts, step, scores)
            if val_data is None:
                save_parser(run_dir / "best", net, opts, step, None)
            if opts.onnx:
                try:
                    export_onnx(ParserNet.from_pretrained(run_dir / "best"), run_dir / "best" / ONNX_NAME)
                except ImportError as err:  # the weights are safe; the export can be redone anywhere
                    logger.warning("no ONNX export (%s); run `python -m train.parser --export-onnx %s` where "
                                   "onnx and onnxscript are installed", err, run_dir / "best")
            logger.info("run complete: %d steps, best val mIoU %.4f at step %d -> %s", step, best, best_step,
                        run_dir / "best")
    elif main:
        logger.info("stopped at step %d/%d after %.1f min; rerun with --resume auto to continue",
                    step, opts.steps, (time.monotonic() - t0) / 60)
    dist.barrier()
    return {"step": step, "complete": complete, "stopped_early": stopped_early, "best_miou": best,
            "best_step": best_step, "params": params, "run_dir": str(run_dir), "last_val": scores}


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def _bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    d = ParserTrainOptions()
    p = argparse.ArgumentParser(
        prog="python -m train.parser",
        description="Train the human parser of smis.parsing (one process, or torchrun on several GPUs); "
                    "or evaluate / export a parser folder.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("modes (default: train)")
    g.add_argument("--evaluate", metavar="PARSER_DIR", help="score a parser folder on --data/--val-split and exit")
    g.add_argument("--export-onnx", metavar="PARSER_DIR", help="write PARSER_DIR/model.onnx and exit")
    g = p.add_argument_group("data")
    g.add_argument("--data", help="dataset root (train.data layouts)")
    g.add_argument("--format", default=d.format, help="dataset layout (generic, ccp, ...)")
    g.add_argument("--train-split", default=d.train_split)
    g.add_argument("--val-split", default=d.val_split, help="'' disables validation")
    g.add_argument("--on-bad", choices=("skip", "error"), default=d.on_bad)
    g.add_argument("--workers", type=int, default=d.workers, help="DataLoader workers for the one-off decode")
    g.add_argument("--max-items", type=int, default=None, help="first N pairs per split (smoke runs)")
    g = p.add_argument_group("model")
    g.add_argument("--preset", choices=sorted(PARSER_PRESETS), default=d.preset)
    g.add_argument("--height", type=int, default=None)
    g.add_argument("--width", type=int, default=None)
    g = p.add_argument_group("schedule and objective")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch (all processes)")
    g.add_argument("--steps", type=int, default=d.steps)
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--warmup", type=int, default=d.warmup)
    g.add_argument("--poly-power", type=float, default=d.poly_power)
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--grad-clip", type=float, default=d.grad_clip, help="0: off")
    g.add_argument("--loss", choices=LOSSES, default=d.loss)
    g.add_argument("--ohem-keep", type=float, default=d.ohem_keep)
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    g = p.add_argument_group("augmentation")
    g.add_argument("--scale", type=float, nargs=2, default=list(d.scale), metavar=("LOW", "HIGH"))
    g.add_argument("--jitter", type=float, default=d.jitter)
    g.add_argument("--flip", type=_bool, default=d.flip)
    g = p.add_argument_group("speed and devices")
    g.add_argument("--amp", choices=("none", "bf16"), default=d.amp)
    g.add_argument("--channels-last", type=_bool, default=None, help="default: on for CUDA")
    g.add_argument("--compile", action="store_true")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--device", default=d.device, help="auto, cpu, cuda")
    g = p.add_argument_group("run folder")
    g.add_argument("--outdir", default=None, help="run folder (default runs/parser)")
    g.add_argument("--resume", default=None, help="'auto' (newest checkpoint in --outdir) or a checkpoint file")
    g.add_argument("--log-every", type=int, default=d.log_every)
    g.add_argument("--val-every", type=int, default=d.val_every)
    g.add_argument("--ckpt-every", type=int, default=d.ckpt_every)
    g.add_argument("--keep", type=int, default=d.keep)
    g.add_argument("--max-minutes", type=float, default=None, help="checkpoint and stop before this many minutes")
    g.add_argument("--stop-at", type=int, default=None, help="checkpoint and stop at this step (a chunk)")
    g.add_argument("--no-progress", dest="progress", action="store_false")
    g.add_argument("--no-onnx", dest="onnx", action="store_false", help="skip best/model.onnx at the end")
    return p


def run_evaluate(folder: str, opts: ParserTrainOptions) -> dict[str, Any]:
    """Scores of a saved parser on ``opts.data`` / ``opts.val_split`` (at the parser's size)."""
    from .data import build_dataset

    net = ParserNet.from_pretrained(folder)
    cfg = net.config
    ds = build_dataset(opts.format, opts.data, opts.val_split or "val", cfg.height, cfg.width,
                       on_bad=opts.on_bad, max_items=opts.max_items)
    device = dist.resolve_device(opts.device)
    split = load_split(ds, cfg.num_classes, opts.workers, opts.progress, "val")
    return evaluate(net.to(device), split, cfg.class_names, device, amp=opts.amp)


def main(argv: list[str] | None = None) -> int:
    cli = build_parser()
    ns = vars(cli.parse_args(argv))
    evaluate_dir, export_dir = ns.pop("evaluate"), ns.pop("export_onnx")
    ns["scale"] = tuple(ns["scale"])
    ns["data"] = ns["data"] or ""
    opts = ParserTrainOptions(**ns)
    is_main = int(os.environ.get("RANK", "0")) == 0  # torchrun's rank, known before the group is joined
    logging.basicConfig(level=logging.INFO if is_main else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if export_dir:
            path = export_onnx(ParserNet.from_pretrained(export_dir), Path(export_dir) / ONNX_NAME)
            print(path)
            return 0
        if not opts.data or not Path(opts.data).is_dir():
            cli.error(f"--data {opts.data!r}: no such dataset folder")
        if evaluate_dir:
            print(json.dumps(run_evaluate(evaluate_dir, opts), indent=2))
            return 0
        opts.validate()
        summary = train(opts)
    except (ValueError, CheckpointError, ckpt.TrainingStateError) as err:
        cli.error(str(err))
    finally:
        dist.shutdown()
    if is_main:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
