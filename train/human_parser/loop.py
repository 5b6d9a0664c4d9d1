"""The human parser's objective and training loop: ``train(opts)`` in numbered sections, the same
code as one process or under ``torchrun`` (DDP, SyncBatchNorm on GPUs, gloo on CPU).

Shared with ``python -m train``: :mod:`train.dist` (torchrun or not), :mod:`train.checkpoint`
(atomic training states, resume, pruning, the refusal to write over a run) and the JSON-lines log
of :mod:`train.history`. Every ``--val-every`` steps the validation scores go to the log and the
best mIoU so far is saved as ``best/`` (:func:`train.human_parser.publish.save_parser`); the last
weights as ``final/``, and ``best/model.onnx`` when the run completes.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from smis.hub import CheckpointError
from smis.parsing import IGNORE_INDEX, ONNX_NAME, ParserNet, export_onnx

from .. import checkpoint as ckpt
from .. import dist
from ..history import append_jsonl
from .data import augment_batch, batch_indices, class_weights, load_split, open_split
from .evaluate import evaluate
from .options import LOG_NAME, LOSSES, OPTIONS_NAME, PROG, ParserTrainOptions
from .publish import save_parser

logger = logging.getLogger(__name__)

#: Marks a training state as the parser's (``train.checkpoint`` also holds GroupDNet states).
STATE_KIND = "smis-human-parser"


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



def _param_groups(net: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay = [p for p in net.parameters() if p.ndim > 1]
    no_decay = [p for p in net.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _resume_point(opts: ParserTrainOptions, run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The training state ``--resume`` names (``auto``: the newest in ``run_dir`` that loads), or
    ``None`` for a new run, refused where ``run_dir`` already holds checkpoints."""
    if opts.resume == "auto":
        return ckpt.find_resume(run_dir)
    if opts.resume:
        if not Path(opts.resume).is_file():
            raise ValueError(f"--resume {opts.resume}: no such checkpoint file")
        return Path(opts.resume), ckpt.load_state(opts.resume)
    ckpt.check_new_run(run_dir)
    return None


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
    resume = _resume_point(opts, run_dir)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.clean_temporaries(run_dir)
        (run_dir / OPTIONS_NAME).write_text(json.dumps(opts.to_dict(), indent=2) + "\n")
    dist.barrier()

    # 2. Data, decoded once into memory on the training device.
    config = opts.model_config()
    if train_set is None:
        train_set = open_split(opts, opts.train_split, config, opts.max_items)
        if opts.val_split:
            val_set = open_split(opts, opts.val_split, config, opts.max_items)
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
            append_jsonl(run_dir / LOG_NAME, {"step": step, "val": scores})
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
        idx = batch_indices(step, len(train_data), opts.batch_size, opts.seed)
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
                append_jsonl(run_dir / LOG_NAME, rec)
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
                    logger.warning("no ONNX export (%s); run `%s --export-onnx %s` where "
                                   "onnx and onnxscript are installed", err, PROG, run_dir / "best")
            logger.info("run complete: %d steps, best val mIoU %.4f at step %d -> %s", step, best, best_step,
                        run_dir / "best")
    elif main:
        logger.info("stopped at step %d/%d after %.1f min; rerun with --resume auto to continue",
                    step, opts.steps, (time.monotonic() - t0) / 60)
    dist.barrier()
    return {"step": step, "complete": complete, "stopped_early": stopped_early, "best_miou": best,
            "best_step": best_step, "params": params, "run_dir": str(run_dir), "last_val": scores}

