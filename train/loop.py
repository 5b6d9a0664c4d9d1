"""The GroupDNet training loop: one function in commented sections (NVlabs/edm style).

``train(opts)`` runs the same code as a single process, under ``torchrun`` on one or many GPUs
and nodes (NCCL), or on CPUs (gloo). Rank 0 logs, samples and checkpoints; every rank trains.

Per step (SPADE's order): a generator step (E encodes the class-split photo, z = mu + eps*sigma,
G renders; hinge + 10 x feature matching + 10 x VGG + 0.05 x KL), then a discriminator step (D
sees fake and real in one batch; hinge): the losses are :class:`train.losses.GroupDNetObjective`'s.
Adam (0, 0.9), TTUR 1e-4 / 4e-4, constant then linear decay to 0 over ``decay_fraction`` of the
run. An EMA of G + E is what gets published. The run folder's files: :mod:`train.run_folder`;
checkpoints and snapshots: :mod:`train.checkpoint`.
"""

from __future__ import annotations

import inspect
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
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

import smis
from smis import GroupDNet, MultiscaleDiscriminator, SMISConfig
from smis.functional import one_hot
from smis.generator import BLOCK_NAMES
from smis.precision import choose_amp

from . import checkpoint as ckpt
from . import dist, history
from .data import build_dataset
from .losses import GroupDNetObjective, build_perceptual
from .monitor import SampleGrids
from .options import ObjectiveOptions, ScheduleOptions, TrainOptions, check_launch, resolved_workers
from .run_folder import RunFolder

logger = logging.getLogger(__name__)

STATE_FORMAT = "smis-training-state/1"
#: Scalars logged per step (averaged over the steps of a log interval and over processes).
LOSS_NAMES = ("G/gan", "G/feat", "G/vgg", "G/kl", "G/rec", "G/latent", "G/mode_seek", "G/total", "G/l1",
              "KL/nats_per_image", "G/noise", "D/fake", "D/real", "D/total")


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


def _set_numerics(deterministic: bool, cuda: bool) -> None:
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def _optimiser_step(loss: torch.Tensor, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                    params: list[nn.Parameter], lr: float, clip: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if clip > 0:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, clip)
    scaler.step(opt)
    scaler.update()


@dataclass
class Networks:
    """What a run trains, and what its training state holds besides the position: G + E (``net``),
    D, the EMA of G + E (rank 0 only), their optimisers and grad scalers."""

    net: GroupDNet
    disc: MultiscaleDiscriminator
    ema: GroupDNet | None
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    scaler_g: torch.amp.GradScaler
    scaler_d: torch.amp.GradScaler

    @classmethod
    def build(cls, config: SMISConfig, s: ScheduleOptions, amp: str, seed: int, device: torch.device,
              memory_format: torch.memory_format, main: bool, world: int) -> Networks:
        torch.manual_seed(seed)  # identical initial weights on every rank
        net = GroupDNet(config).to(device, memory_format=memory_format).train()
        disc = MultiscaleDiscriminator(config).to(device, memory_format=memory_format).train()
        ema = GroupDNet(config).to(device, memory_format=memory_format) if main else None
        if ema is not None:
            ema.load_state_dict(net.state_dict())
            ema.eval().requires_grad_(False)
        if world > 1 and device.type == "cuda":  # CG-Norm's parameter-free BatchNorm -> statistics over all GPUs
            net.generator = nn.SyncBatchNorm.convert_sync_batchnorm(net.generator)
        adam: dict[str, Any] = dict(betas=(float(s.beta1), float(s.beta2)))
        if device.type == "cuda":
            adam["fused"] = True
        if s.train_only == "enhancer":  # pix2pixHD's first phase: the rest stays as it was grown from
            net.requires_grad_(False)
            enhancer = [getattr(net.generator, n) for n in net.generator.block_names[len(BLOCK_NAMES):]]
            for module in (*enhancer, net.generator.conv_img_hd):
                module.requires_grad_(True)
        ge_params = [p for m in (net.generator, net.encoder) for p in m.parameters() if p.requires_grad]
        logger.info("model %s %dx%d, %d classes: G %.2fM, E %.2fM, D %.2fM parameters; %.2fM of G + E learn",
                    config.name, config.height, config.width, config.num_classes,
                    *(sum(p.numel() for p in m.parameters()) / 1e6 for m in (net.generator, net.encoder, disc)),
                    sum(p.numel() for p in ge_params) / 1e6)
        return cls(net, disc, ema, torch.optim.Adam(ge_params, lr=s.lr_g, **adam),
                   torch.optim.Adam(disc.parameters(), lr=s.lr_d, **adam),
                   torch.amp.GradScaler(device.type, enabled=amp == "fp16"),
                   torch.amp.GradScaler(device.type, enabled=amp == "fp16"))

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.net.state_dict(), "D": self.disc.state_dict(), "ema": self.ema.state_dict(),
                "opt_G": self.opt_g.state_dict(), "opt_D": self.opt_d.state_dict(),
                "scaler_G": self.scaler_g.state_dict(), "scaler_D": self.scaler_d.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["model"])
        self.disc.load_state_dict(state["D"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.opt_g.load_state_dict(state["opt_G"])
        self.opt_d.load_state_dict(state["opt_D"])
        self.scaler_g.load_state_dict(state["scaler_G"])
        self.scaler_d.load_state_dict(state["scaler_D"])


def _inherit_history(source: str | Path, run_dir: Path) -> None:
    """Copy the history of the weights a run grows from into ``RUN/history/`` (the model card's curves)."""
    inherited = history.history_of_init_source(source)
    if inherited:
        history.write_log_dir(inherited, run_dir / history.HISTORY_DIR)
        logger.info("history up to epoch %.1f copied into %s", inherited.last_epoch, run_dir / history.HISTORY_DIR)



def _config_changes(state: dict[str, Any], config: SMISConfig) -> list[str]:
    """What differs between a training state's model config and this run's (``"field: theirs -> ours"``).
    Compared by value, so a field added to the config later, at its default, is no change: checkpoints
    written before it still resume."""
    try:
        saved = SMISConfig.from_dict(json.loads(state.get("config") or "null") or {})
    except (ValueError, TypeError) as err:
        return [f"its config does not read: {err}"]
    return saved.differences(config)


def restore(opts: TrainOptions, nets: Networks, config: SMISConfig, total_steps: int, device: torch.device,
            objective: GroupDNetObjective | None = None) -> tuple[int, Path | None, str | None, str | None]:
    """``--resume`` (a training state: weights, optimisers, position, RNG streams, the objective's own
    state), else ``--init-from`` (weights only), else the seeded fresh start. Returns (start step,
    resumed from, initialised from, the source whose history the run folder should inherit). Writes
    nothing: every refusal comes before the run folder changes."""
    rank, world, run_dir = dist.rank(), dist.world_size(), opts.run_dir
    resume, seed = opts.run.resume, opts.run.seed
    path, state = None, None
    if resume == "auto":
        if rank == 0:  # the newest checkpoint that loads (an older one if the newest does not)
            found = ckpt.find_resume(run_dir)
            if found is not None:
                path, state = str(found[0]), found[1]
        path = dist.broadcast_object(path)
        if path is not None and state is None:
            state = ckpt.load_state(path)
    elif resume:
        path, state = resume, ckpt.load_state(resume)
    if resume and path is None:
        logger.info("--resume auto: no checkpoint in %s yet, starting a new run", run_dir)
    if state is not None:
        changed = _config_changes(state, config)
        if changed:
            raise ValueError(f"{path} was trained with another model config ({'; '.join(changed)}); "
                             "use the options it was started with")
        nets.load_state_dict(state)
        if objective is not None:
            objective.load_state_dict(state.get("objective", {}))
        start_step = int(state["step"])
        rngs = state.get("rng", [])
        if len(rngs) == world:
            ckpt.set_rng_state(rngs[rank], device)
        else:
            logger.warning("checkpoint from %d processes, now %d: RNG streams restart from the seed",
                           len(rngs), world)
            torch.manual_seed(seed + 1000 * start_step + rank)
        if int(state.get("total_steps", total_steps)) != total_steps:
            logger.warning("the run length changed from %s to %d steps: the LR schedule follows the new one",
                           state.get("total_steps"), total_steps)
        logger.info("resumed from %s at step %d (epoch %d, batch %d)", path, start_step,
                    state.get("epoch", -1), state.get("batch_in_epoch", -1))
        if resume == "auto" or Path(run_dir).resolve() in Path(path).resolve().parents:
            return start_step, Path(path), None, None
        # A branch: another run's state resumed into this folder (an A/B arm). The run grew from it,
        # so it says so and carries that run's history up to this step, as --init-from does.
        inherit = path if not (Path(run_dir) / history.HISTORY_DIR).exists() else None
        return start_step, Path(path), (f"training state {path} (step {start_step}): resumed into a new run "
                                        "folder (G, E, D, EMA, optimisers and RNG carried on)"), inherit
    initialised_from, start_step = None, 0
    if opts.run.init_step is not None:
        start_step = (history.init_source_step(opts.run.init_from) if opts.run.init_step == "auto"
                      else int(opts.run.init_step))
        if not 0 <= start_step < total_steps:
            ended = (" (the source's schedule has ended: fine-tune it with --init-step 0 and a new --epochs / "
                     "--steps)" if opts.run.init_step == "auto" and start_step >= total_steps else "")
            raise ValueError(f"--init-step {start_step} is outside this run's 0..{total_steps - 1} steps{ended}; "
                             "use the --epochs / --steps the source was trained with to continue its schedule")
    if opts.run.init_from:
        # Every rank loads the same file: identical weights without a broadcast.
        initialised_from = ckpt.load_init(opts.run.init_from, nets.net, nets.disc, nets.ema)
        logger.info("initialised from %s", initialised_from)
    if opts.run.init_step is not None:
        logger.info("continuing the LR schedule and data order at step %d of %d (--init-step)", start_step,
                    total_steps)
    torch.manual_seed(seed + rank + 1000 * start_step)
    np.random.seed((seed + rank + 1000 * start_step) % 2**32)
    random.seed(seed + rank + 1000 * start_step)
    return start_step, None, initialised_from, opts.run.init_from or None


def save_checkpoint(opts: TrainOptions, nets: Networks, step: int, steps_per_epoch: int, header: dict[str, Any],
                    device: torch.device, note: str) -> tuple[Path, Path] | None:
    """Every rank gives its RNG state; rank 0 writes the training state (``header``: its fields besides
    the position, weights and RNG) and the EMA snapshot, prunes old ones, and returns their paths."""
    rngs = dist.all_gather_object(ckpt.rng_state(device))
    saved = None
    if dist.rank() == 0:
        epoch, in_epoch = divmod(step, steps_per_epoch)
        state = {"format": STATE_FORMAT, "step": step, "epoch": epoch, "batch_in_epoch": in_epoch, **header,
                 **nets.state_dict(), "rng": rngs}
        saved = (ckpt.atomic_save(state, ckpt.state_path(opts.run_dir, step)),
                 ckpt.save_snapshot(nets.ema, opts.run_dir, step, {"step": str(step), "perceptual_loss": note}))
        ckpt.prune(opts.run_dir, opts.run.keep)
        logger.info("step %d: saved %s and %s", step, saved[0].name, saved[1].name)
    dist.barrier()
    return saved


def _newest(found: list[tuple[int, Path]]) -> Path | None:
    return found[-1][1] if found else None


def _perceptual_loss(o: ObjectiveOptions, main: bool, device: torch.device,
                     memory_format: torch.memory_format) -> tuple[nn.Module | None, str]:
    """The perceptual loss and its description; built first, so a missing VGG stops the run before
    anything heavy, and by rank 0 first (it may download into the shared cache)."""
    perceptual, desc = None, ""
    for turn in range(2):
        if (turn == 0) == main:
            perceptual, desc = build_perceptual(o.vgg, o.vgg_weights)
        dist.barrier()
    if perceptual is not None:
        perceptual = perceptual.to(device, memory_format=memory_format)
    logger.info("perceptual loss: %s; feature matching x%g", desc, o.feat_weight)
    return perceptual, desc


def _data(opts: TrainOptions, dataset: Dataset | None, local_batch: int,
          cuda: bool) -> tuple[Dataset, SMISConfig, ResumableSampler, DataLoader]:
    """The training set (``--data`` unless given), the model config with its classes, the sampler and loader."""
    d, seed, workers = opts.data, opts.run.seed, resolved_workers(opts.data)
    if dataset is None:
        size = opts.model.config()
        dataset = build_dataset(d.format, d.data, d.split, size.height, size.width, augment=d.augment,
                                on_bad=d.on_bad, seed=seed)
    config = opts.model.config(getattr(dataset, "class_names", None), getattr(dataset, "palette", None))
    sampler = ResumableSampler(dataset, dist.world_size(), dist.rank(), seed)
    if sampler.num_samples < local_batch:
        raise ValueError(f"the dataset has {len(dataset)} samples, fewer than one batch of "
                         f"{opts.schedule.batch_size}; lower --batch-size or add data")
    loader = DataLoader(
        _EpochIndexed(dataset), batch_size=local_batch, sampler=sampler, num_workers=workers,
        pin_memory=cuda, drop_last=True, persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),  # keeps the global RNG untouched
        worker_init_fn=_ignore_stop_signals if workers > 0 else None)
    return dataset, config, sampler, loader


def _wrapped(nets: Networks, device: torch.device, compile: bool) -> tuple[nn.Module, ...]:
    """(G, E, D) as their steps run them (DDP when distributed), and D inside the G step (no DDP:
    its gradients are not wanted there); all through ``torch.compile`` with ``--compile``."""
    g, e, d = nets.net.generator, nets.net.encoder, nets.disc
    if dist.world_size() > 1:
        # CG-Norm's batch statistics stay per process between steps (the reference code's choice); the
        # newer keyword says so without the deprecation warning (every rank starts from the same weights).
        quiet = "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
        kw: dict[str, Any] = dict(**({"forward_sync_buffers": False} if quiet else {"broadcast_buffers": False}),
                                  device_ids=[device] if device.type == "cuda" else None)
        # A frozen network (--train-only enhancer: E) has no gradients to share: DDP refuses it.
        g, e, d = (DDP(m, **kw) if any(p.requires_grad for p in m.parameters()) else m for m in (g, e, d))
    out = (g, e, d, nets.disc)
    return tuple(torch.compile(m) for m in out) if compile else out


def _inputs(batch: dict[str, Any], net: GroupDNet, device: torch.device,
            memory_format: torch.memory_format) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A loader batch on the device as the networks take it: (photo, label tensor = one-hot and
    instance edges where the config has them, one-hot map)."""
    config = net.config
    real = batch["image"].to(device, non_blocking=True).contiguous(memory_format=memory_format)
    labels = batch["label"].to(device, non_blocking=True)
    inst = batch.get("instance")
    inst = inst.to(device, non_blocking=True) if inst is not None and config.instance_edges else None
    label = net.label_tensor(labels, inst).contiguous(memory_format=memory_format)
    onehot = one_hot(labels, config.num_classes).contiguous(memory_format=memory_format)
    return real, label, onehot


def _gan_step(objective: GroupDNetObjective, nets: Networks, wrapped: tuple[nn.Module, ...], real: torch.Tensor,
              onehot: torch.Tensor, label: torch.Tensor, s: ScheduleOptions, noise: float,
              factor: float) -> dict[str, torch.Tensor]:
    """One generator + encoder step, then one discriminator step (SPADE's order), at ``factor`` times
    the learning rates; returns the loss terms of both."""
    g_train, e_train, d_train, d_plain = wrapped
    net, disc = nets.net, nets.disc
    # G + E. D runs without DDP and without parameter gradients.
    disc.requires_grad_(False)
    loss_g, fake, terms = objective.g_step(g_train, e_train, d_plain, real, onehot, label, noise=noise)
    _optimiser_step(loss_g, nets.opt_g, nets.scaler_g, nets.opt_g.param_groups[0]["params"], s.lr_g * factor,
                    s.grad_clip)
    # D on [fake; real] in one batch.
    disc.requires_grad_(True)
    fake_d = objective.d_fake(net.generator, net.encoder, real, onehot, label, fake, noise=noise)
    loss_d, d_terms = objective.d_step(d_train, real, label, fake_d)
    _optimiser_step(loss_d, nets.opt_d, nets.scaler_d, list(disc.parameters()), s.lr_d * factor, s.grad_clip)
    terms.update(d_terms)
    return terms


class _Meter:
    """The losses and step times of a log interval; averaged over its steps and the processes when read.
    Only the steps' own time counts: sample grids, the val probe and checkpoints are timed apart."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(len(LOSS_NAMES), device=device)
        self.steps, self.seconds = 0, 0.0

    def add(self, values: torch.Tensor, seconds: float) -> None:
        self.sums += values
        self.steps += 1
        self.seconds += seconds

    def read(self) -> tuple[dict[str, float], int, float]:
        """(mean per loss, steps, seconds of those steps) since the last read; every rank must call it."""
        dist.all_reduce_(self.sums, "mean")
        out = dict(zip(LOSS_NAMES, (self.sums / self.steps).tolist())), self.steps, self.seconds
        self.sums.zero_()
        self.steps, self.seconds = 0, 0.0
        return out


class _Budget:
    """``--max-minutes``: do the next piece of work, a step and a save still fit? From measured costs
    (a running mean of the step time, the last save, the last val probe); rank 0's clock decides."""

    def __init__(self, t0: float, max_minutes: float | None, step_s: float = 0.0):
        self.t0, self.limit = t0, (max_minutes * 60 if max_minutes else math.inf)
        self.step_s, self.save_s, self.probe_s = step_s, 5.0, 0.0

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def step_done(self, seconds: float) -> None:
        self.step_s = seconds if self.step_s == 0 else 0.9 * self.step_s + 0.1 * seconds

    def fits(self, work_s: float) -> bool:
        """``work_s`` more seconds, then the next step and a save, end before the limit."""
        return self.elapsed() + work_s + self.step_s + 1.5 * self.save_s <= self.limit


def _previous_step_time(run_dir: Path) -> float:
    """The last s/step an earlier chunk of this run logged (0 if none): the first step's estimate."""
    records = history.read_jsonl(Path(run_dir) / "metrics.jsonl")
    return float(records[-1].get("sec_per_step", 0.0)) if records else 0.0


def _stop_flags(signals: _StopSignals, out_of_time: bool, device: torch.device) -> tuple[bool, bool]:
    """(a stop signal came, the time budget is spent) as every rank agrees (one all-reduce)."""
    flags = torch.tensor([1.0 if signals.received else 0.0, 1.0 if out_of_time else 0.0], device=device)
    term, no_time = (bool(v) for v in dist.all_reduce_(flags, "max").tolist())
    return term, no_time


def _log_interval(folder: RunFolder, pbar: tqdm, avg: dict[str, float], n: int, secs: float, step: int,
                  total_steps: int, steps_per_epoch: int, elapsed: float, s: ScheduleOptions, factor: float,
                  class_log: dict[str, float], device: torch.device) -> None:
    """One line of metrics.jsonl and of the log for a log interval (rank 0): losses, s/step of the steps
    alone, images/s, learning rates."""
    rec = {"step": step, "epoch": round(step / steps_per_epoch, 4), "time_s": round(elapsed, 2),
           "sec_per_step": round(secs / n, 5), "img_per_s": round(n * s.batch_size / max(secs, 1e-9), 3),
           "lr_G": s.lr_g * factor, "lr_D": s.lr_d * factor, **{k: round(v, 6) for k, v in avg.items()}, **class_log}
    if device.type == "cuda":
        rec["mem_GiB"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    folder.log_metrics(rec)
    pbar.set_postfix({"G": f"{avg['G/total']:.3f}", "D": f"{avg['D/total']:.3f}"}, refresh=False)
    logger.info("step %d/%d  G %.4f  D %.4f  l1 %.4f  %.3f s/step", step, total_steps, avg["G/total"],
                avg["D/total"], avg["G/l1"], rec["sec_per_step"])


def _log_end(status: str, step: int, total_steps: int, signal_name: str | None, snapshot: Path | None) -> None:
    if status == "paused":
        logger.info("time budget reached at step %d/%d: continue with the same command and --resume auto",
                    step, total_steps)
    elif status == "interrupted":
        logger.info("stopped by %s at step %d/%d; continue with --resume auto", signal_name, step, total_steps)
    elif status == "finished":
        logger.info("finished %d steps; EMA model: %s", total_steps, snapshot)


def train(opts: TrainOptions, dataset: Dataset | None = None, started_at: float | None = None,
          step_callback: Callable[[int], None] | None = None) -> RunResult:
    """Train (or continue) one run. ``dataset`` overrides ``--data`` (tests, notebooks).

    ``started_at``: ``time.monotonic()`` when the process started (``max_minutes`` counts from there);
    ``step_callback(step)`` runs on every rank after each completed step (tests). SIGTERM / SIGINT at any
    moment end the run at the next safe point, ``status.json`` saying so; the folder changes only after
    every check passed."""
    t0 = time.monotonic() if started_at is None else started_at
    s, o, r = opts.schedule, opts.objective, opts.run

    # -- 1. Processes, devices, numerics --------------------------------------------------------
    device = dist.resolve_device(r.device)
    dist.init(device)
    rank, world = dist.rank(), dist.world_size()
    main, cuda = rank == 0, device.type == "cuda"
    check_launch(opts, world, cuda)
    local_batch = s.batch_size // world
    amp, amp_reason = choose_amp(r.amp, device)
    logger.info("precision: %s", amp_reason)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else nullcontext
    channels_last = cuda if r.channels_last is None else r.channels_last
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    _set_numerics(r.deterministic, cuda)
    folder = RunFolder(opts.run_dir, main)
    logger.info("process %d/%d on %s (%s)", rank, world, device, "torchrun" if dist.is_distributed() else "single")

    closing = ExitStack()  # the stop signals and the progress bar, closed however the run ends
    signals = closing.enter_context(_StopSignals())
    try:
        # -- 2. Perceptual loss first: a missing VGG stops the run before anything heavy -------
        perceptual, perceptual_desc = _perceptual_loss(o, main, device, memory_format)
        objective = GroupDNetObjective(o, perceptual, autocast)

        # -- 3. Data ---------------------------------------------------------------------------
        dataset, config, sampler, loader = _data(opts, dataset, local_batch, cuda)
        steps_per_epoch = sampler.num_samples // local_batch
        total_steps = s.total_steps(steps_per_epoch)

        # -- 4. Networks, optimisers, grad scalers; then resume or initialise ---------------
        nets = Networks.build(config, s, amp, r.seed, device, memory_format, main, world)
        net, disc, ema = nets.net, nets.disc, nets.ema
        start_step, resumed_from, initialised_from, inherit = restore(opts, nets, config, total_steps, device,
                                                                      objective)

        # -- 5. Distributed wrappers, compile -------------------------------------------------
        wrapped = _wrapped(nets, device, r.compile)

        # -- 6. Run folder: options, logs, fixed samples (the first write into the folder) ---
        grids = SampleGrids(dataset, opts, config, perceptual, enabled=main)
        init_step = start_step if initialised_from else 0
        if initialised_from is None and resumed_from:  # a resumed chunk keeps saying what the run grew from
            prior = folder.previous_options().get("resolved", {})
            initialised_from, init_step = prior.get("initialised_from"), prior.get("init_step", 0)
        budget = _Budget(t0, r.max_minutes, _previous_step_time(opts.run_dir) if resumed_from else 0.0)
        folder.start({"options": opts.to_dict(), "resolved": {
            "world_size": world, "batch_per_process": local_batch, "device": str(device),
            "dataset_size": len(dataset), "steps_per_epoch": steps_per_epoch,
            "total_steps": total_steps, "epochs": total_steps / steps_per_epoch,
            "decay_start_step": total_steps - int(round(s.decay_fraction * total_steps)),
            "perceptual_loss": perceptual_desc, "feature_matching_weight": o.feat_weight,
            "amp": amp, "amp_reason": amp_reason, "workers": resolved_workers(opts.data),
            "channels_last": channels_last, "sync_batchnorm": world > 1 and cuda,
            "sample_reroll_class": config.class_names[grids.reroll],
            "resumed_from": str(resumed_from) if resumed_from else None, "start_step": start_step,
            "initialised_from": initialised_from, "init_step": init_step,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__, "smis": smis.__version__, "python": platform.python_version(),
        }, "config": config.to_dict()}, r.tensorboard)
        if main:
            if inherit:
                _inherit_history(inherit, Path(opts.run_dir))
            logger.info("run %s: %d images, %d steps/epoch, %d steps (%.1f epochs), batch %d = %d x %d, amp %s",
                        opts.run_dir, len(dataset), steps_per_epoch, total_steps, total_steps / steps_per_epoch,
                        s.batch_size, world, local_batch, amp)
        last = _newest(ckpt.list_checkpoints(opts.run_dir)) if main else None
        last_snap = _newest(ckpt.list_snapshots(opts.run_dir)) if main else None
        header = {"total_steps": total_steps, "world_size": world, "config": config.to_json(),
                  "options": opts.to_json()}

        def show(step: int) -> None:
            """Sample grid and val probe, timed apart from the steps; skipped past the budget or on a signal."""
            if signals.received or not budget.fits(budget.probe_s):
                logger.info("step %d: sample grid and val probe skipped (%s)", step,
                            "stopping" if signals.received else "not enough of --max-minutes left")
                return
            t = time.monotonic()
            probe, grid = grids(ema, autocast, disc)
            budget.probe_s = time.monotonic() - t
            if probe:
                folder.log_val(step, step / steps_per_epoch, {**probe, "probe_s": budget.probe_s})
            folder.save_samples(step, grid, grids.rows)
            logger.info("step %d: sample grid and val probe took %.1f s (not counted in s/step)", step,
                        budget.probe_s)

        # -- 7. Training ------------------------------------------------------------------------
        step = saved_step = start_step
        epoch, in_epoch = divmod(step, steps_per_epoch)
        data_iter = None
        meter = _Meter(device)
        t_ckpt = time.monotonic()
        status = "finished" if step >= total_steps else ""
        if grids and step == 0:
            show(0)
        pbar = closing.enter_context(tqdm(
            total=total_steps, initial=start_step, unit="it", dynamic_ncols=True, desc="train",
            disable=not (main and r.progress and sys.stderr.isatty())))  # log lines only, in files and pipes
        closing.enter_context(logging_redirect_tqdm())
        # Stop before the first step when a signal came during set-up or the budget cannot hold one.
        term, no_time = _stop_flags(signals, main and not budget.fits(0.0), device)
        status = status or ("interrupted" if term else "paused" if no_time else "")
        while not status:
            t_step = time.monotonic()
            if data_iter is None:
                sampler.set_position(epoch, in_epoch * local_batch)
                data_iter = iter(loader)
            real, label, onehot = _inputs(next(data_iter), net, device, memory_format)
            factor = s.lr_factor(step, total_steps)

            # 7a. Generator + encoder step, then discriminator step.
            terms = _gan_step(objective, nets, wrapped, real, onehot, label, s, o.noise_scale(step), factor)

            # 7b. EMA of G + E (rank 0 keeps it), bookkeeping.
            step += 1
            in_epoch += 1
            if in_epoch == steps_per_epoch:
                epoch, in_epoch, data_iter = epoch + 1, 0, None
            if ema is not None:
                _ema_update(ema, net, min(s.ema_decay, (1 + step) / (10 + step)))
            vals = torch.stack([terms[k] for k in LOSS_NAMES]).detach()
            dt = time.monotonic() - t_step
            meter.add(vals, dt)
            budget.step_done(dt)
            if step_callback is not None:
                step_callback(step)

            # 7c. One small all-reduce: non-finite losses, stop signals, time budget (rank 0's clock).
            sample_due = bool(grids) and r.sample_every and step % r.sample_every == 0
            flags = torch.tensor([0.0, 1.0 if signals.received else 0.0,
                                  1.0 if main and not budget.fits(budget.probe_s if sample_due else 0.0) else 0.0,
                                  1.0 if main and r.ckpt_minutes and
                                  time.monotonic() - t_ckpt > r.ckpt_minutes * 60 else 0.0], device=device)
            flags[0] = (~torch.isfinite(vals)).any().float()
            diverged, term, no_time, ckpt_due = (bool(v) for v in dist.all_reduce_(flags, "max").tolist())
            pbar.update(1)
            if diverged:
                status = "diverged"
                logger.error("non-finite loss at step %d (%s): stopping without saving this state. Last good "
                             "checkpoint: %s. Resume from it with --resume auto, perhaps with --grad-clip, a lower "
                             "learning rate or --amp bf16 instead of fp16.", step,
                             ", ".join(f"{k}={v:.4g}" for k, v in zip(LOSS_NAMES, vals.tolist())), last)
                break

            # 7d. Logging.
            stopping = term or no_time or step >= total_steps
            if step % r.log_every == 0 or stopping:
                avg, n, secs = meter.read()
                if main:
                    _log_interval(folder, pbar, avg, n, secs, step, total_steps, steps_per_epoch, budget.elapsed(),
                                  s, factor, objective.class_log(config.class_names), device)

            # 7e. Samples, checkpoints, stop.
            if sample_due and not (term or no_time):
                show(step)
            if stopping or ckpt_due or (r.ckpt_every and step % r.ckpt_every == 0):
                if not _all_finite(net, disc):  # identical on every rank: params are in sync
                    status = "diverged"
                    logger.error("non-finite weights at step %d: not saved. Last good checkpoint: %s", step, last)
                    break
                t_save = time.monotonic()
                saved = save_checkpoint(opts, nets, step, steps_per_epoch,
                                        {**header, "objective": objective.state_dict()}, device, perceptual_desc)
                last, last_snap = saved or (last, last_snap)
                saved_step, t_ckpt = step, time.monotonic()
                budget.save_s = t_ckpt - t_save
            if stopping:
                status = "finished" if step >= total_steps else ("interrupted" if term else "paused")
        closing.close()
        folder.close_logs()
        if getattr(dataset, "bad", None):
            logger.warning("%d unusable data files were skipped (listed in log.txt)", len(dataset.bad))
        folder.write_status({"status": status, "step": step, "total_steps": total_steps,
                             "checkpoint": str(last) if last else None,
                             "snapshot": str(last_snap) if last_snap else None,
                             "saved_step": saved_step if last else None, "signal": signals.received,
                             "elapsed_s": round(budget.elapsed(), 1), "pid": os.getpid()})
        if main:
            _log_end(status, step, total_steps, signals.received, last_snap)
        return RunResult(status, step, total_steps, opts.run_dir, last, last_snap)
    except BaseException:
        if signals.received and folder.started:  # a stop signal cut set-up or a save short: say so
            newest = _newest(ckpt.list_checkpoints(opts.run_dir))
            folder.write_status({"status": "interrupted", "step": None, "signal": signals.received,
                                 "checkpoint": str(newest) if newest else None, "pid": os.getpid()})
        raise
    finally:
        closing.close()
        folder.close()
