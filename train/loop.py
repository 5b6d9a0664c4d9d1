"""The GroupDNet training loop: one function in commented sections (NVlabs/edm style).

``train(opts)`` runs the same code as a single process, under ``torchrun`` on one or many GPUs
and nodes (NCCL), or on CPUs (gloo). Rank 0 logs, samples and checkpoints; every rank trains.

Per step (SPADE's order): a generator step (E encodes the class-split photo, z = mu + eps*sigma,
G renders; hinge + 10 x feature matching + 10 x VGG + 0.05 x KL), then a discriminator step (D
sees fake and real in one batch; hinge). Adam (0, 0.9), TTUR 1e-4 / 4e-4, constant then linear
decay to 0 over ``decay_fraction`` of the run. An EMA of G + E is what gets published.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import random
import signal
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, PngImagePlugin
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

import smis
from smis import GroupDNet, MultiscaleDiscriminator, SMISConfig
from smis.codes import ClassCodes
from smis.functional import instance_edges, label_input, one_hot, reparameterize
from smis.labels import ids_to_color

from . import checkpoint as ckpt
from . import dist, history
from .losses import (
    build_perceptual,
    class_appearance_loss,
    d_hinge_loss,
    feature_matching_loss,
    g_hinge_loss,
    kl_loss,
    split_halves,
)
from .monitor import val_probe
from .options import TrainOptions

logger = logging.getLogger(__name__)

STATE_FORMAT = "smis-training-state/1"
#: Per-sample-grid measurements on val images (``train.monitor.val_probe``), one JSON line each.
VAL_METRICS = "val_metrics.jsonl"
#: Scalars logged per step (averaged over the steps of a log interval and over processes).
LOSS_NAMES = ("G/gan", "G/feat", "G/vgg", "G/kl", "G/rec", "G/total", "G/l1", "KL/nats_per_image",
              "D/fake", "D/real", "D/total")


@dataclass
class RunResult:
    """How a call to :func:`train` ended."""

    #: ``finished`` (all steps), ``paused`` (time budget), ``interrupted`` (SIGTERM/SIGINT) or
    #: ``diverged`` (non-finite loss; stopped without saving the bad state).
    status: str
    step: int
    total_steps: int
    run_dir: Path
    #: The newest complete training state / EMA model folder (``None`` if none was written).
    checkpoint: Path | None
    snapshot: Path | None


class ResumableSampler(DistributedSampler):
    """A ``DistributedSampler`` (drop_last) whose epoch can start part-way (resume).

    It yields ``(epoch, index)`` keys so the dataset wrapper can set the epoch of the dataset's
    augmentation draws inside persistent workers.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.start = 0

    def set_position(self, epoch: int, start: int) -> None:
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self):
        return iter([(self.epoch, i) for i in list(super().__iter__())[self.start:]])

    def __len__(self) -> int:
        return self.num_samples - self.start


class _EpochIndexed(Dataset):
    """Reads ``(epoch, index)`` keys: sets the dataset's epoch (augmentation draws), then indexes it."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        if hasattr(self.dataset, "set_epoch") and getattr(self.dataset, "epoch", epoch) != epoch:
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


class _StopSignals:
    """SIGTERM (a preempted node) and SIGINT set a flag; the loop saves and exits at the next step."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.received and signum == signal.SIGINT:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        logger.warning("%s received: saving a checkpoint and stopping after this step", self.received)

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader workers leave SIGTERM / SIGINT to the main process.

    A preempted job or ``kill -- -PGID`` signals the whole process group; a worker that died of it
    would crash the main process before it could save. The main process saves, then stops them.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _ema_update(ema: nn.Module, live: nn.Module, decay: float) -> None:
    """EMA of parameters; buffers (BatchNorm statistics, spectral-norm vectors) copied."""
    with torch.no_grad():
        e_params = list(ema.parameters())
        l_params = [p.detach() for p in live.parameters()]
        torch._foreach_lerp_(e_params, l_params, 1.0 - decay)
        for b_e, b_l in zip(ema.buffers(), live.buffers()):
            b_e.copy_(b_l)


def _all_finite(*modules: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for m in modules for p in m.parameters())


def _fixed_samples(dataset: Dataset, count: int) -> list[dict[str, Any]]:
    """``count`` samples spread over the dataset, read without augmentation (the same every run)."""
    n = len(dataset)
    picks = sorted({int(i) for i in np.linspace(0, n - 1, num=min(count, n))})
    out = []
    for i in picks:
        if hasattr(dataset, "load_arrays"):  # train.data.SMISDataset: skip its random augmentation
            arr = dataset.load_arrays(i, augment=False)
            out.append({"image": torch.from_numpy(arr["image"]).permute(2, 0, 1).float() / 127.5 - 1.0,
                        "label": torch.from_numpy(arr["label"])})
        else:
            s = dataset[i]
            out.append({"image": s["image"], "label": s["label"]})
    return out


@torch.no_grad()
def render_sample_grid(model: GroupDNet, samples: list[dict[str, Any]], reroll_class: int,
                       code_rows: int = 3) -> Image.Image:
    """The progress grid: one column per fixed mask.

    Rows: the mask, the real photo, ``code_rows`` rows of fixed codes (seed r, the same codes in
    every column), and a last row on the first mask where only ``reroll_class`` is re-rolled.
    """
    cfg = model.config
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    labels = torch.stack([s["label"] for s in samples]).to(device)
    n = labels.shape[0]
    grid = cfg.latent_grid(*labels.shape[-2:])

    def codes(seed: int) -> ClassCodes:
        return ClassCodes.sample(cfg.class_names, cfg.z_channels, grid, seed)

    def render(z: np.ndarray, lab: torch.Tensor) -> np.ndarray:
        img = model(torch.from_numpy(z).to(device), lab).float().clamp(-1, 1)
        return ((img.permute(0, 2, 3, 1).cpu().numpy() + 1.0) * 127.5 + 0.5).astype(np.uint8)

    rows = [np.stack([ids_to_color(s["label"].numpy(), cfg.palette) for s in samples]),
            ((torch.stack([s["image"] for s in samples]).permute(0, 2, 3, 1).numpy() + 1) * 127.5 + 0.5)
            .clip(0, 255).astype(np.uint8)]
    for r in range(code_rows):
        rows.append(render(np.stack([codes(r).latent()] * n), labels))
    base = codes(0)
    rerolled = np.stack([base.resample([reroll_class], 1000 + k).latent() for k in range(n)])
    rows.append(render(rerolled, labels[:1].expand(n, *labels.shape[1:])))
    model.train(was_training)
    tiles = np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)
    return Image.fromarray(tiles)


def _val_samples(opts: TrainOptions, config: SMISConfig) -> list[dict[str, Any]]:
    """Up to ``opts.val_count`` val images for :func:`train.monitor.val_probe` (none if no val split)."""
    from .data import build_dataset

    try:
        val = build_dataset(opts.format, opts.data, "val", config.height, config.width, augment=False,
                            on_bad="skip", seed=opts.seed)
    except (ValueError, OSError) as err:
        logger.warning("no val split for the reconstruction / re-roll probe (%s); it is skipped", err)
        return []
    return _fixed_samples(val, opts.val_count)


def _reroll_class(label: torch.Tensor, num_classes: int) -> int:
    """The largest class of a mask other than class 0 (usually background)."""
    counts = torch.bincount(label.flatten(), minlength=num_classes)
    counts[0] = -1 if num_classes > 1 else counts[0]
    return int(counts.argmax())


def _setup_file_log(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    logging.getLogger().addHandler(handler)
    return handler


def train(opts: TrainOptions, dataset: Dataset | None = None, started_at: float | None = None,
          step_callback: Callable[[int], None] | None = None) -> RunResult:
    """Train (or continue) one run. ``dataset`` overrides ``opts.data`` (tests, notebooks).

    ``started_at``: ``time.monotonic()`` when the process started (``max_minutes`` counts from
    there); ``step_callback(step)`` runs on every rank after each completed step (tests).
    """
    t0 = time.monotonic() if started_at is None else started_at

    # -- 1. Processes, devices, numerics --------------------------------------------------------
    device = dist.resolve_device(opts.device)
    dist.init(device)
    rank, world = dist.rank(), dist.world_size()
    main = rank == 0
    if opts.batch_size % world:
        raise ValueError(f"--batch-size {opts.batch_size} does not split evenly over {world} processes")
    local_batch = opts.batch_size // world
    cuda = device.type == "cuda"
    if opts.amp == "fp16" and not cuda:
        raise ValueError("--amp fp16 needs CUDA; use --amp bf16 or --amp none on CPU")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(opts.amp)
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else nullcontext
    channels_last = cuda if opts.channels_last is None else opts.channels_last
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if opts.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    run_dir = opts.run_dir
    log_handler = None
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        log_handler = _setup_file_log(run_dir / "log.txt")
        ckpt.clean_temporaries(run_dir)
    logger.info("process %d/%d on %s (%s)", rank, world, device, "torchrun" if dist.is_distributed() else "single")

    closing = ExitStack()  # files, writers and the progress bar, closed however the run ends
    try:
        # -- 2. Perceptual loss first: a missing VGG stops the run before anything heavy -------
        perceptual, perceptual_desc = None, ""
        for turn in range(2):  # rank 0 first (it may download into the shared cache)
            if (turn == 0) == main:
                perceptual, perceptual_desc = build_perceptual(opts.vgg, opts.vgg_weights)
            dist.barrier()
        if perceptual is not None:
            perceptual = perceptual.to(device, memory_format=memory_format)
        feat_weight = opts.feat_weight
        logger.info("perceptual loss: %s; feature matching x%g", perceptual_desc, feat_weight)

        # -- 3. Data ---------------------------------------------------------------------------
        base_cfg = opts.model_config()
        if dataset is None:
            from .data import build_dataset

            dataset = build_dataset(opts.format, opts.data, opts.split, base_cfg.height, base_cfg.width,
                                    augment=opts.augment, on_bad=opts.on_bad, seed=opts.seed)
        config: SMISConfig = opts.model_config(getattr(dataset, "class_names", None),
                                               getattr(dataset, "palette", None))
        sampler = ResumableSampler(dataset, world, rank, opts.seed)
        steps_per_epoch = sampler.num_samples // local_batch
        if steps_per_epoch < 1:
            raise ValueError(f"the dataset has {len(dataset)} samples, fewer than one batch of {opts.batch_size}; "
                             "lower --batch-size or add data")
        total_steps = opts.total_steps(steps_per_epoch)
        loader = DataLoader(
            _EpochIndexed(dataset), batch_size=local_batch, sampler=sampler, num_workers=opts.workers,
            pin_memory=cuda, drop_last=True, persistent_workers=opts.workers > 0,
            generator=torch.Generator().manual_seed(opts.seed),  # keeps the global RNG untouched
            worker_init_fn=_ignore_stop_signals if opts.workers > 0 else None)

        # -- 4. Networks, optimisers, grad scalers -------------------------------------------
        torch.manual_seed(opts.seed)  # identical initial weights on every rank
        net = GroupDNet(config).to(device, memory_format=memory_format).train()
        disc = MultiscaleDiscriminator(config).to(device, memory_format=memory_format).train()
        ema = GroupDNet(config).to(device, memory_format=memory_format) if main else None
        if ema is not None:
            ema.load_state_dict(net.state_dict())
            ema.eval().requires_grad_(False)
        if world > 1 and cuda:  # CG-Norm's parameter-free BatchNorm -> statistics over all GPUs
            net.generator = nn.SyncBatchNorm.convert_sync_batchnorm(net.generator)
        ge_params = list(net.generator.parameters()) + list(net.encoder.parameters())
        adam: dict[str, Any] = dict(betas=(float(opts.beta1), float(opts.beta2)))
        if cuda:
            adam["fused"] = True
        opt_g = torch.optim.Adam(ge_params, lr=opts.lr_g, **adam)
        opt_d = torch.optim.Adam(disc.parameters(), lr=opts.lr_d, **adam)
        scaler_g = torch.amp.GradScaler(device.type, enabled=opts.amp == "fp16")
        scaler_d = torch.amp.GradScaler(device.type, enabled=opts.amp == "fp16")
        logger.info("model %s %dx%d, %d classes: G %.2fM, E %.2fM, D %.2fM parameters", config.name,
                    config.height, config.width, config.num_classes,
                    *(sum(p.numel() for p in m.parameters()) / 1e6 for m in (net.generator, net.encoder, disc)))

        # -- 5. Resume -------------------------------------------------------------------------
        start_step = 0
        resumed_from: Path | None = None
        path, state = None, None
        if opts.resume == "auto":
            if main:  # the newest checkpoint that loads (an older one if the newest does not)
                found = ckpt.find_resume(run_dir)
                if found is not None:
                    path, state = str(found[0]), found[1]
            path = dist.broadcast_object(path)
            if path is not None and state is None:
                state = ckpt.load_state(path)
        elif opts.resume:
            path, state = opts.resume, ckpt.load_state(opts.resume)
        if opts.resume:
            if path is None:
                logger.info("--resume auto: no checkpoint in %s yet, starting a new run", run_dir)
            else:
                if state.get("config") != config.to_json():
                    raise ValueError(f"{path} was trained with another model config (preset, size, classes "
                                     "or widths differ); use the options it was started with")
                net.load_state_dict(state["model"])
                disc.load_state_dict(state["D"])
                if ema is not None:
                    ema.load_state_dict(state["ema"])
                opt_g.load_state_dict(state["opt_G"])
                opt_d.load_state_dict(state["opt_D"])
                scaler_g.load_state_dict(state["scaler_G"])
                scaler_d.load_state_dict(state["scaler_D"])
                start_step = int(state["step"])
                rngs = state.get("rng", [])
                if len(rngs) == world:
                    ckpt.set_rng_state(rngs[rank], device)
                else:
                    logger.warning("checkpoint from %d processes, now %d: RNG streams restart from the seed",
                                   len(rngs), world)
                    torch.manual_seed(opts.seed + 1000 * start_step + rank)
                if int(state.get("total_steps", total_steps)) != total_steps:
                    logger.warning("the run length changed from %s to %d steps: the LR schedule follows the new one",
                                   state.get("total_steps"), total_steps)
                resumed_from = Path(path)
                logger.info("resumed from %s at step %d (epoch %d, batch %d)", path, start_step,
                            state.get("epoch", -1), state.get("batch_in_epoch", -1))
                del state
        initialised_from = None
        if opts.init_from and not resumed_from:
            # Every rank loads the same file: identical weights without a broadcast.
            initialised_from = ckpt.load_init(opts.init_from, net, disc, ema)
            logger.info("initialised from %s", initialised_from)
            if main:  # the curves of the weights' earlier life, for the model card's plot
                inherited = history.history_of_init_source(opts.init_from)
                if inherited:
                    history.write_log_dir(inherited, run_dir / history.HISTORY_DIR)
                    logger.info("history up to epoch %.1f copied into %s", inherited.last_epoch,
                                run_dir / history.HISTORY_DIR)
        if not resumed_from:
            torch.manual_seed(opts.seed + rank)
            np.random.seed((opts.seed + rank) % 2**32)
            random.seed(opts.seed + rank)

        # -- 6. Distributed wrappers, compile -------------------------------------------------
        if world > 1:
            kw: dict[str, Any] = dict(broadcast_buffers=False)
            if cuda:
                kw["device_ids"] = [device]
            g_train: nn.Module = DDP(net.generator, **kw)
            e_train: nn.Module = DDP(net.encoder, **kw)
            d_train: nn.Module = DDP(disc, **kw)
        else:
            g_train, e_train, d_train = net.generator, net.encoder, disc
        d_plain: nn.Module = disc  # D inside the G step: no DDP (its gradients are not wanted there)
        if opts.compile:
            g_train, e_train, d_train, d_plain = (torch.compile(m) for m in (g_train, e_train, d_train, d_plain))

        # -- 7. Run folder: options, logs, fixed samples -------------------------------------
        samples = _fixed_samples(dataset, opts.sample_count) if main and opts.sample_every else []
        val_samples = _val_samples(opts, config) if main and opts.sample_every and opts.val_count else []
        reroll = _reroll_class(samples[0]["label"], config.num_classes) if samples else 0
        tb = None
        if main:
            if initialised_from is None and resumed_from and (run_dir / "training_options.json").is_file():
                try:  # a resumed chunk keeps saying what the run grew from
                    prior = json.loads((run_dir / "training_options.json").read_text())
                    initialised_from = prior.get("resolved", {}).get("initialised_from")
                except (OSError, ValueError):
                    pass
            resolved = {
                "options": opts.to_dict(),
                "resolved": {
                    "world_size": world, "batch_per_process": local_batch, "device": str(device),
                    "dataset_size": len(dataset), "steps_per_epoch": steps_per_epoch,
                    "total_steps": total_steps, "epochs": total_steps / steps_per_epoch,
                    "decay_start_step": total_steps - int(round(opts.decay_fraction * total_steps)),
                    "perceptual_loss": perceptual_desc, "feature_matching_weight": feat_weight,
                    "channels_last": channels_last, "sync_batchnorm": world > 1 and cuda,
                    "sample_reroll_class": config.class_names[reroll],
                    "resumed_from": str(resumed_from) if resumed_from else None, "start_step": start_step,
                    "initialised_from": initialised_from,
                    "torch": torch.__version__, "smis": smis.__version__, "python": platform.python_version(),
                },
                "config": config.to_dict(),
            }
            (run_dir / "training_options.json").write_text(json.dumps(resolved, indent=2) + "\n")
            if opts.tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    tb = closing.enter_context(SummaryWriter(str(run_dir / "tensorboard")))
                except ImportError:
                    logger.warning("TensorBoard is not installed (pip install tensorboard): scalars go to "
                                   "metrics.jsonl only")
            logger.info("run %s: %d images, %d steps/epoch, %d steps (%.1f epochs), batch %d = %d x %d, amp %s",
                        run_dir, len(dataset), steps_per_epoch, total_steps, total_steps / steps_per_epoch,
                        opts.batch_size, world, local_batch, opts.amp)

        # -- 8. Helpers that close over the state above ---------------------------------------
        last_ckpt: list[Path | None] = [None]
        last_snap: list[Path | None] = [None]
        if main:
            existing = ckpt.list_checkpoints(run_dir)
            snaps = ckpt.list_snapshots(run_dir)
            last_ckpt[0] = existing[-1][1] if existing else None
            last_snap[0] = snaps[-1][1] if snaps else None

        def save_checkpoint(step: int) -> float:
            """Every rank gives its RNG state; rank 0 writes state + EMA snapshot. Returns seconds."""
            t = time.monotonic()
            rngs = dist.all_gather_object(ckpt.rng_state(device))
            if main:
                epoch, in_epoch = divmod(step, steps_per_epoch)
                state = {
                    "format": STATE_FORMAT, "step": step, "epoch": epoch, "batch_in_epoch": in_epoch,
                    "total_steps": total_steps, "world_size": world, "config": config.to_json(),
                    "options": opts.to_json(),
                    "model": net.state_dict(), "D": disc.state_dict(), "ema": ema.state_dict(),
                    "opt_G": opt_g.state_dict(), "opt_D": opt_d.state_dict(),
                    "scaler_G": scaler_g.state_dict(), "scaler_D": scaler_d.state_dict(), "rng": rngs,
                }
                last_ckpt[0] = ckpt.atomic_save(state, ckpt.state_path(run_dir, step))
                last_snap[0] = ckpt.save_snapshot(ema, run_dir, step, metadata={
                    "step": str(step), "perceptual_loss": perceptual_desc})
                ckpt.prune(run_dir, opts.keep)
                logger.info("step %d: saved %s and %s", step, last_ckpt[0].name, last_snap[0].name)
            dist.barrier()
            return time.monotonic() - t

        def write_samples(step: int) -> None:
            if val_samples:
                with autocast():
                    probe = val_probe(ema, val_samples, perceptual)
                with open(run_dir / VAL_METRICS, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"step": step, "epoch": round(step / steps_per_epoch, 4),
                                        **{k: round(v, 6) for k, v in probe.items()}}) + "\n")
                logger.info("step %d val: reconstruction L1 %.4f, KL %.2f nats/image, re-roll change inside "
                            "the class %.4f (weakest class %.4f) vs outside %.4f", step, probe["val/rec_l1"],
                            probe["val/kl_nats_per_image"], probe.get("val/reroll_in_mean", float("nan")),
                            probe.get("val/reroll_in_min", float("nan")),
                            probe.get("val/reroll_out_mean", float("nan")))
            img = render_sample_grid(ema, samples, reroll)
            info = PngImagePlugin.PngInfo()
            info.add_text("smis:rows", f"mask; photo; fixed codes seeds 0-2; re-roll {config.class_names[reroll]!r}")
            path = run_dir / "samples" / f"samples-{step:08d}.png"
            path.parent.mkdir(exist_ok=True)
            img.save(path, pnginfo=info)
            if tb is not None:
                tb.add_image("samples", np.asarray(img), step, dataformats="HWC")

        # -- 9. Training ------------------------------------------------------------------------
        step = start_step
        epoch, in_epoch = divmod(step, steps_per_epoch)
        data_iter = None
        sums = torch.zeros(len(LOSS_NAMES), device=device)
        n_logged, t_log, step_time = 0, time.monotonic(), 0.0
        save_cost = 5.0  # seconds; measured after the first save
        t_ckpt = time.monotonic()
        budget_s = opts.max_minutes * 60 if opts.max_minutes else math.inf
        status = "finished" if step >= total_steps else ""
        metrics_file = closing.enter_context(open(run_dir / "metrics.jsonl", "a", encoding="utf-8")) if main else None
        if main and samples and step == 0:
            write_samples(0)
        pbar = closing.enter_context(tqdm(
            total=total_steps, initial=start_step, disable=not (main and opts.progress), unit="it",
            dynamic_ncols=True, desc="train", mininterval=1.0 if sys.stderr.isatty() else 30.0))
        with _StopSignals() as signals, logging_redirect_tqdm():
            while step < total_steps:
                t_step = time.monotonic()
                if data_iter is None:
                    sampler.set_position(epoch, in_epoch * local_batch)
                    data_iter = iter(loader)
                batch = next(data_iter)
                real = batch["image"].to(device, non_blocking=True).contiguous(memory_format=memory_format)
                labels = batch["label"].to(device, non_blocking=True)
                onehot = one_hot(labels, config.num_classes)
                edges = None
                if config.instance_edges:
                    inst = batch.get("instance")
                    src = (inst if inst is not None else batch["label"]).to(device, non_blocking=True)
                    edges = instance_edges(src.unsqueeze(1))
                label_t = label_input(onehot, edges).contiguous(memory_format=memory_format)
                onehot = onehot.contiguous(memory_format=memory_format)
                label2 = torch.cat([label_t, label_t])
                factor = opts.lr_factor(step, total_steps)
                for group in opt_g.param_groups:
                    group["lr"] = opts.lr_g * factor
                for group in opt_d.param_groups:
                    group["lr"] = opts.lr_d * factor

                # 9a. Generator + encoder step. D runs without DDP and without parameter gradients.
                disc.requires_grad_(False)
                with autocast():
                    mu, logvar = e_train(real, onehot)
                    mu, logvar = mu.float(), logvar.float()
                    z = reparameterize(mu, logvar)
                    fake = g_train(z, label_t)
                    fake_out, real_out = split_halves(d_plain(label2, torch.cat([fake, real])))
                    l_gan = g_hinge_loss(fake_out)
                    l_feat = feature_matching_loss(fake_out, real_out) * feat_weight
                    l_vgg = perceptual(fake, real) * opts.lambda_vgg if perceptual is not None else l_gan.new_zeros(())
                    l_kl, kl_nats = kl_loss(mu, logvar, onehot, opts.kl_free_bits, opts.kl_per_image)
                    l_kl = l_kl * opts.lambda_kl
                    l_rec = (class_appearance_loss(fake, real, onehot, opts.rec_pool) * opts.lambda_rec
                             if opts.lambda_rec > 0 else l_gan.new_zeros(()))
                    loss_g = l_gan + l_feat + l_vgg + l_kl + l_rec
                opt_g.zero_grad(set_to_none=True)
                scaler_g.scale(loss_g).backward()
                if opts.grad_clip > 0:
                    scaler_g.unscale_(opt_g)
                    torch.nn.utils.clip_grad_norm_(ge_params, opts.grad_clip)
                scaler_g.step(opt_g)
                scaler_g.update()

                # 9b. Discriminator step on [fake; real] in one batch.
                disc.requires_grad_(True)
                with torch.no_grad():
                    if opts.reuse_fake:
                        fake_d = fake.detach()
                    else:  # SPADE: a new fake from the updated G (new eps) under no_grad
                        with autocast():
                            mu_d, logvar_d = net.encoder(real, onehot)
                            fake_d = net.generator(reparameterize(mu_d.float(), logvar_d.float()), label_t)
                with autocast():
                    fake_out, real_out = split_halves(d_train(label2, torch.cat([fake_d.to(real.dtype), real])))
                    l_dfake, l_dreal = d_hinge_loss(fake_out, real_out)
                    loss_d = l_dfake + l_dreal
                opt_d.zero_grad(set_to_none=True)
                scaler_d.scale(loss_d).backward()
                if opts.grad_clip > 0:
                    scaler_d.unscale_(opt_d)
                    torch.nn.utils.clip_grad_norm_(disc.parameters(), opts.grad_clip)
                scaler_d.step(opt_d)
                scaler_d.update()

                # 9c. EMA of G + E (rank 0 keeps it), bookkeeping.
                step += 1
                in_epoch += 1
                if in_epoch == steps_per_epoch:
                    epoch, in_epoch, data_iter = epoch + 1, 0, None
                if ema is not None:
                    _ema_update(ema, net, min(opts.ema_decay, (1 + step) / (10 + step)))
                with torch.no_grad():
                    l1 = (fake.detach().float() - real.float()).abs().mean()
                    vals = torch.stack([l_gan, l_feat, l_vgg, l_kl, l_rec, loss_g, l1, kl_nats,
                                        l_dfake, l_dreal, loss_d]).detach()
                    sums += vals
                n_logged += 1

                if step_callback is not None:
                    step_callback(step)

                # 9d. One small all-reduce: non-finite losses, stop signals, time budget (rank 0's clock).
                dt = time.monotonic() - t_step
                step_time = dt if step_time == 0 else 0.9 * step_time + 0.1 * dt
                elapsed = time.monotonic() - t0
                flags = torch.tensor([0.0,
                                      1.0 if signals.received else 0.0,
                                      1.0 if main and elapsed + 2 * step_time + 1.5 * save_cost > budget_s else 0.0,
                                      1.0 if main and opts.ckpt_minutes and
                                      time.monotonic() - t_ckpt > opts.ckpt_minutes * 60 else 0.0], device=device)
                flags[0] = (~torch.isfinite(vals)).any().float()
                diverged, term, budget, ckpt_due = (bool(v) for v in dist.all_reduce_(flags, "max").tolist())
                pbar.update(1)

                if diverged:
                    status = "diverged"
                    vals_cpu = dict(zip(LOSS_NAMES, vals.tolist()))
                    logger.error("non-finite loss at step %d (%s): stopping without saving this state. Last good "
                                 "checkpoint: %s. Resume from it with --resume auto, perhaps with --grad-clip, a lower "
                                 "learning rate or --amp bf16 instead of fp16.", step,
                                 ", ".join(f"{k}={v:.4g}" for k, v in vals_cpu.items()), last_ckpt[0])
                    break

                # 9e. Logging.
                stopping = term or budget or step >= total_steps
                if step % opts.log_every == 0 or stopping:
                    dist.all_reduce_(sums, "mean")
                    now = time.monotonic()
                    if main:
                        avg = dict(zip(LOSS_NAMES, (sums / n_logged).tolist()))
                        rec = {"step": step, "epoch": round(step / steps_per_epoch, 4), "time_s": round(elapsed, 2),
                               "sec_per_step": round((now - t_log) / n_logged, 5),
                               "img_per_s": round(n_logged * opts.batch_size / max(now - t_log, 1e-9), 3),
                               "lr_G": opts.lr_g * factor, "lr_D": opts.lr_d * factor,
                               **{k: round(v, 6) for k, v in avg.items()}}
                        if cuda:
                            rec["mem_GiB"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
                        metrics_file.write(json.dumps(rec) + "\n")
                        metrics_file.flush()
                        if tb is not None:
                            for k, v in rec.items():
                                if k != "step":
                                    tb.add_scalar(k if "/" in k else f"progress/{k}", v, step)
                        pbar.set_postfix({"G": f"{avg['G/total']:.3f}", "D": f"{avg['D/total']:.3f}"}, refresh=False)
                        logger.info("step %d/%d  G %.4f  D %.4f  l1 %.4f  %.3f s/step", step, total_steps,
                                        avg["G/total"], avg["D/total"], avg["G/l1"], rec["sec_per_step"])
                    sums.zero_()
                    n_logged, t_log = 0, now

                # 9f. Samples, checkpoints, stop.
                if main and samples and opts.sample_every and step % opts.sample_every == 0:
                    write_samples(step)
                if stopping or ckpt_due or (opts.ckpt_every and step % opts.ckpt_every == 0):
                    if not _all_finite(net, disc):  # identical on every rank: params are in sync
                        status = "diverged"
                        logger.error("non-finite weights at step %d: not saved. Last good checkpoint: %s",
                                     step, last_ckpt[0])
                        break
                    save_cost = save_checkpoint(step)
                    t_ckpt = time.monotonic()
                if stopping:
                    status = "finished" if step >= total_steps else ("interrupted" if term else "paused")
                    break
        closing.close()
        bad = getattr(dataset, "bad", None)
        if bad:
            logger.warning("%d unusable data files were skipped (listed in log.txt)", len(bad))
        result = RunResult(status, step, total_steps, run_dir, last_ckpt[0], last_snap[0])
        if main:
            (run_dir / "status.json").write_text(json.dumps({
                "status": status, "step": step, "total_steps": total_steps,
                "checkpoint": str(last_ckpt[0]) if last_ckpt[0] else None,
                "snapshot": str(last_snap[0]) if last_snap[0] else None,
                "elapsed_s": round(time.monotonic() - t0, 1), "pid": os.getpid()}, indent=2) + "\n")
            if status == "paused":
                logger.info("time budget reached at step %d/%d: continue with the same command and --resume auto",
                            step, total_steps)
            elif status == "interrupted":
                logger.info("stopped by %s at step %d/%d; continue with --resume auto", signals.received, step,
                            total_steps)
            elif status == "finished":
                logger.info("finished %d steps; EMA model: %s", total_steps, last_snap[0])
        return result
    finally:
        closing.close()
        if log_handler is not None:
            logging.getLogger().removeHandler(log_handler)
            log_handler.close()
