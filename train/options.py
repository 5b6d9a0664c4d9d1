"""Typed, frozen training options in five groups, and the command line generated from them.

Every field of :class:`DataOptions`, :class:`ModelOptions`, :class:`ScheduleOptions`,
:class:`ObjectiveOptions` and :class:`RunOptions` is one flag, ``--field-name``, made by the rules
of :mod:`train.cli` (default, help, parsing from the field; ``SWITCH`` / ``NEGATED`` metadata); the
group is the argument group. ``POSITIVE`` / ``NON_NEGATIVE`` metadata are checked by
:meth:`TrainOptions.validate`.

The CLI refuses bad arguments before anything heavy starts (a dataset folder that is not there, a
batch that does not split over the processes, fp16 without CUDA, ...), and the run writes the
options, flat (one key per flag), to ``training_options.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import torch

from smis.config import PRESETS, DiscriminatorConfig, SMISConfig, get_config

from .checkpoint import check_new_run
from .cli import NEGATED, SWITCH, add_dataclass_arguments, field_hints, flag, options_to_cli
from .diffaug import parse_policy

VggKind = Literal["full", "partial", "none", "double-fm"]
AmpKind = Literal["auto", "none", "bf16", "fp16"]

POSITIVE = {"check": "positive"}
NON_NEGATIVE = {"check": "non-negative"}


@dataclass(frozen=True)
class DataOptions:
    """What to train on (read by ``train.data.build_dataset``)."""

    #: Dataset root folder.
    data: str = field(default="", metadata={"required": True})
    #: Dataset layout of train/formats.py (generic, ccp, ...); auto: found from the folder.
    format: str = "auto"
    #: Dataset split to train on.
    split: str = "train"
    #: Random horizontal flips, zoom and crop position.
    augment: bool = True
    #: Unreadable or mismatched pairs: skip them (logged) or stop.
    on_bad: Literal["skip", "error"] = "skip"
    #: DataLoader worker processes per training process (default: what the machine has, min(4, CPUs per
    #: process - 1); 0 loads in the main process).
    workers: int | None = field(default=None, metadata=NON_NEGATIVE)


@dataclass(frozen=True)
class ModelOptions:
    """Which GroupDNet: a preset of ``smis.config.PRESETS`` at the training size."""

    #: Named preset.
    preset: str = field(default="demo", metadata={"choices": tuple(sorted(PRESETS))})
    #: The preset's smallest twin (smoke tests).
    tiny: bool = field(default=False, metadata=SWITCH)
    #: Preset width overrides, e.g. nf=32,ndf=64 (the preset function's arguments).
    widths: dict[str, int] = field(default_factory=dict)
    #: Training height (multiple of 64; the preset's if omitted).
    height: int | None = field(default=None, metadata=POSITIVE)
    #: Training width (multiple of 64; the preset's if omitted).
    width: int | None = field(default=None, metadata=POSITIVE)
    #: Discriminator base width (the preset's: 64, or 32 for ccp-cpu).
    d_ndf: int | None = field(default=None, metadata=POSITIVE)
    #: Discriminator layers (4).
    d_layers: int | None = field(default=None, metadata=POSITIVE)
    #: Discriminator scales (2).
    d_scales: int | None = field(default=None, metadata=POSITIVE)
    #: The decoder's group counts, one per CG-Block (7 numbers, e.g. 10 10 10 10 5 5 1; the preset's if
    #: omitted). More groups keep each class's code in its own channels for longer (the paper's
    #: Table 3: lower mOCD); each count must divide that block's channels and, for the ``fixed``
    #: CG-Norm layout, the class count and ``norm_hidden``.
    decoder_groups: tuple[int, int, int, int, int, int, int] | None = field(
        default=None, metadata={"metavar": "G"})
    #: Grow the model coarse-to-fine (pix2pixHD's local enhancer, adapted to GroupDNet): output channels
    #: of one-group CG-Blocks at x2 each on top of the preset's seven, e.g. 16 for one block; the
    #: preset's blocks and the encoder then work at --height / 2 x --width / 2. Start it from the
    #: smaller model with --init-from (its tensors load; the enhancer starts as "no change") and
    #: --train-only enhancer (pix2pixHD's first phase), then continue with every layer.
    enhancer_channels: tuple[int, ...] | None = field(default=None, metadata={"metavar": "CH"})

    def config(self, class_names: tuple[str, ...] | None = None,
               palette: tuple[tuple[int, int, int], ...] | None = None) -> SMISConfig:
        """The preset at the training size, with the dataset's class names and palette."""
        kw: dict[str, Any] = dict(self.widths)
        if self.height is not None:
            kw["height"] = self.height
        if self.width is not None:
            kw["width"] = self.width
        cfg = get_config(self.preset, tiny=self.tiny, **kw)
        if self.decoder_groups is not None:
            try:
                cfg = cfg.replace(generator=dataclasses.replace(cfg.generator, groups=tuple(self.decoder_groups)))
            except ValueError as err:
                raise ValueError(f"--decoder-groups {' '.join(map(str, self.decoder_groups))}: {err}") from err
        if self.enhancer_channels is not None:
            try:
                cfg = cfg.replace(generator=dataclasses.replace(
                    cfg.generator, enhancer_channels=tuple(int(c) for c in self.enhancer_channels)))
            except ValueError as err:
                raise ValueError(f"--enhancer-channels {' '.join(map(str, self.enhancer_channels))}: {err}") from err
        d = cfg.discriminator
        cfg = cfg.replace(discriminator=DiscriminatorConfig(
            ndf=self.d_ndf or d.ndf, num_layers=self.d_layers or d.num_layers,
            num_scales=self.d_scales or d.num_scales, norm=d.norm, spectral_norm=d.spectral_norm))
        if class_names is not None:
            if len(class_names) != cfg.num_classes:
                raise ValueError(
                    f"the dataset has {len(class_names)} classes but preset {self.preset!r} is built for "
                    f"{cfg.num_classes} ({', '.join(cfg.class_names)}); its group counts depend on the "
                    "class count: map the labels to these classes or choose the matching preset")
            cfg = cfg.replace(class_names=tuple(class_names),
                              palette=tuple(tuple(int(v) for v in c) for c in palette) if palette else cfg.palette)
        return cfg


@dataclass(frozen=True)
class ScheduleOptions:
    """How long and how fast: batch, length, learning rates (SPADE's schedule), EMA, clipping."""

    #: Images per optimiser step over all processes (split evenly between them).
    batch_size: int = field(default=32, metadata=POSITIVE)
    #: Training length in epochs; it defines the LR schedule, so chunked runs (--max-minutes) follow
    #: the same curve as one long run.
    epochs: float = 100.0
    #: Total optimiser steps (overrides --epochs).
    steps: int | None = field(default=None, metadata=POSITIVE)
    #: Final fraction of the run over which both learning rates decay linearly to 0 (paper: 40/100).
    decay_fraction: float = 0.4
    #: Learning rate of G + E.
    lr_g: float = field(default=1e-4, metadata=POSITIVE)
    #: Learning rate of D.
    lr_d: float = field(default=4e-4, metadata=POSITIVE)
    #: Adam beta1.
    beta1: float = 0.0
    #: Adam beta2.
    beta2: float = 0.9
    #: EMA decay of G + E (warmed up as min(decay, (1 + step) / (10 + step))).
    ema_decay: float = 0.999
    #: Max global grad norm per network (0: off).
    grad_clip: float = field(default=0.0, metadata=NON_NEGATIVE)
    #: Which part of G + E learns: ``all``, or ``enhancer`` (pix2pixHD's first phase of growth: the
    #: enhancer blocks and their RGB head only; the global generator and the encoder stay frozen).
    train_only: Literal["all", "enhancer"] = "all"

    def total_steps(self, steps_per_epoch: int) -> int:
        return int(self.steps) if self.steps else max(1, int(round(self.epochs * steps_per_epoch)))

    def lr_factor(self, step: int, total: int) -> float:
        """Constant, then linear decay to 0 over the last ``decay_fraction`` of ``total`` steps."""
        decay = int(round(self.decay_fraction * total))
        start = total - decay
        if decay <= 0 or step < start:
            return 1.0
        return max(0.0, (total - step) / decay)


@dataclass(frozen=True)
class ObjectiveOptions:
    """The loss (``train.losses.GroupDNetObjective``): SPADE's terms and weights, plus extras."""

    #: Weight of D feature matching.
    lambda_feat: float = field(default=10.0, metadata=NON_NEGATIVE)
    #: Weight of the perceptual loss.
    lambda_vgg: float = field(default=10.0, metadata=NON_NEGATIVE)
    #: Weight of the KL term.
    lambda_kl: float = field(default=0.05, metadata=NON_NEGATIVE)
    #: Nats per present class and image the KL does not charge (0: the paper's KL).
    kl_free_bits: float = field(default=0.0, metadata=NON_NEGATIVE)
    #: Average the KL over the batch instead of summing it (SPADE sums).
    kl_per_image: bool = False
    #: Class-balanced appearance reconstruction weight (0: off, the paper's objective).
    lambda_rec: float = field(default=0.0, metadata=NON_NEGATIVE)
    #: Average pooling of that reconstruction term.
    rec_pool: int = field(default=4, metadata=POSITIVE)
    #: Per-class latent regression weight (0: off, the paper's objective): E reads each class's code
    #: back from G's image (BicycleGAN's cLR term, E fixed), so G must draw every code in its class.
    lambda_latent: float = field(default=0.0, metadata=NON_NEGATIVE)
    #: Per-class mode seeking weight (0: off, the paper's objective; MSGAN, Mao et al. 2019, per class):
    #: some images of each batch are rendered again with one present class's code re-drawn, and G is
    #: pushed until that class's region changes by at least ``mode_seek_target`` per unit of code change.
    lambda_mode_seek: float = field(default=0.0, metadata=NON_NEGATIVE)
    #: The change asked for: pooled L1 (images in [-1, 1]) inside the class per unit mean |dz| (a hinge:
    #: classes whose codes already do that much get no push).
    mode_seek_target: float = field(default=0.1, metadata=NON_NEGATIVE)
    #: How many images of each batch get the second rendering (the extra cost of the term).
    mode_seek_images: int = field(default=4, metadata=POSITIVE)
    #: Which present class an image re-draws: uniform (each present class alike), or deficit (in
    #: proportion to that class's running shortfall of the target, so the picks go where the hinge
    #: still pushes: a rare class whose code does nothing is not left to 2 % of the picks).
    mode_seek_pick: Literal["uniform", "deficit"] = "uniform"
    #: Steps over which the sampling noise of z = mu + s * eps * sigma ramps from s = 0 to 1 (0: s = 1
    #: throughout, the paper). Early on the decoder sees the encoder's signal without noise, so it
    #: learns to use every class's code instead of learning to ignore noise (posterior collapse).
    noise_warmup: int = field(default=0, metadata=NON_NEGATIVE)
    #: Step at which that ramp starts (s = 0 before it); lets a run already under way start one.
    noise_warmup_start: int = field(default=0, metadata=NON_NEGATIVE)
    #: Perceptual loss: full VGG19 relu1_1..relu5_1 (ImageNet weights), partial (the offline
    #: normalised VGG19 up to relu3_1), none, or double-fm (no VGG, feature matching x2).
    vgg: VggKind = field(default="full", metadata={
        "also": ("--no-vgg", {"action": "store_const", "const": "none", "help": "same as --vgg none"})})
    #: Local VGG19 weights (torchvision layout) where the download is impossible.
    vgg_weights: str | None = None
    #: D step reuses the G step's (detached) fake instead of generating a new one under no_grad as
    #: SPADE does (saves one G+E forward per step).
    reuse_fake: bool = field(default=False, metadata=SWITCH)
    #: Differentiable augmentation of D's inputs (DiffAugment): a comma-separated subset of color,
    #: translation, cutout (one draw per fake/real pair; the label map moves with the image; "": off).
    diffaug: str = ""

    def noise_scale(self, step: int) -> float:
        """The factor s on the sampling noise at ``step`` (see ``noise_warmup``)."""
        if self.noise_warmup <= 0:
            return 1.0
        return min(1.0, max(0.0, step - self.noise_warmup_start) / self.noise_warmup)

    @property
    def feat_weight(self) -> float:
        """Feature-matching weight actually used (doubled by ``vgg="double-fm"``)."""
        return self.lambda_feat * (2.0 if self.vgg == "double-fm" else 1.0)


@dataclass(frozen=True)
class RunOptions:
    """How this process runs and what it writes: device, numerics, run folder, logs, checkpoints."""

    #: Autocast dtype: auto = bf16 where the device runs it natively (CUDA with bf16; a CPU where a short
    #: timed probe finds it faster, e.g. AMX), else float32; fp16 adds GradScaler and needs CUDA.
    amp: AmpKind = "auto"
    #: channels-last tensors (default: on for CUDA).
    channels_last: bool | None = None
    #: torch.compile the networks.
    compile: bool = field(default=False, metadata=SWITCH)
    #: Deterministic algorithms (slower on GPU; bit-exact resume on CPU with --workers 0).
    deterministic: bool = field(default=False, metadata=SWITCH)
    #: Seed of weights, data order, augmentation and codes.
    seed: int = 0
    #: auto (cuda:LOCAL_RANK if available, else cpu), cpu, cuda or cuda:N.
    device: str = "auto"
    #: Run folder (default runs/<preset>); rerun with --resume auto to continue.
    outdir: str | None = None
    #: 'auto' (newest complete checkpoint in --outdir, a new run if none) or a checkpoint file.
    resume: str | None = None
    #: Start a new run from a model folder / Hub repo id (G + E, D fresh) or a training-state file
    #: (G, E, D, EMA; optimisers fresh); ignored once --resume auto finds a checkpoint.
    init_from: str | None = None
    #: With --init-from: start the step counter (LR schedule, data position) at N, or 'auto' at the
    #: step the source stopped at (a training state's step, a model folder's last logged step), so a
    #: run continued from shipped weights on a fresh machine keeps its schedule.
    init_step: str | None = None
    #: Val images for the reconstruction distance logged with each sample grid (0: off).
    val_count: int = field(default=16, metadata=NON_NEGATIVE)
    #: Steps between log lines.
    log_every: int = field(default=50, metadata=POSITIVE)
    #: Steps between checkpoints (0: off).
    ckpt_every: int = field(default=1000, metadata=NON_NEGATIVE)
    #: Minutes between checkpoints (0: off).
    ckpt_minutes: float = field(default=20.0, metadata=NON_NEGATIVE)
    #: Training states and EMA snapshots kept (oldest pruned).
    keep: int = field(default=3, metadata=POSITIVE)
    #: Steps between sample grids (0: off).
    sample_every: int = field(default=1000, metadata=NON_NEGATIVE)
    #: Masks (columns) in the sample grid.
    sample_count: int = field(default=6, metadata=POSITIVE)
    #: Checkpoint and exit before this many minutes since start (resume with --resume auto).
    max_minutes: float | None = field(default=None, metadata=POSITIVE)
    #: TensorBoard scalars and sample grids (next to metrics.jsonl).
    tensorboard: bool = field(default=True, metadata=NEGATED)
    #: A progress bar on stderr when it is a terminal (log lines only in files and pipes).
    progress: bool = field(default=True, metadata=NEGATED)


GROUPS: dict[str, type] = {"data": DataOptions, "model": ModelOptions, "schedule": ScheduleOptions,
                           "objective": ObjectiveOptions, "run": RunOptions}


@dataclass(frozen=True)
class TrainOptions:
    """Everything one training run needs; defaults follow the paper (SPADE's schedule)."""

    data: DataOptions = field(default_factory=DataOptions)
    model: ModelOptions = field(default_factory=ModelOptions)
    schedule: ScheduleOptions = field(default_factory=ScheduleOptions)
    objective: ObjectiveOptions = field(default_factory=ObjectiveOptions)
    run: RunOptions = field(default_factory=RunOptions)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.outdir if self.run.outdir else os.path.join("runs", self.model.preset))

    # -- the flat form: one key per flag (training_options.json, model cards, tests) --------
    def to_dict(self) -> dict[str, Any]:
        out = {}
        for g in GROUPS:
            out.update(dataclasses.asdict(getattr(self, g)))  # asdict copies the widths dict
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], validate: bool = True) -> TrainOptions:
        """From the flat form (missing keys keep their defaults)."""
        unknown = sorted(set(d) - {f.name for c in GROUPS.values() for f in dataclasses.fields(c)})
        if unknown:
            raise ValueError(f"unknown training options: {', '.join(unknown)}")
        opts = cls(**{g: c(**{f.name: d[f.name] for f in dataclasses.fields(c) if f.name in d})
                      for g, c in GROUPS.items()})
        if validate:
            opts.validate()
        return opts

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first option that cannot work."""
        s, o, r = self.schedule, self.objective, self.run
        if not self.data.data:
            raise ValueError("--data is required: the dataset root folder")
        for group, f, hint in _fields():
            v, name = getattr(getattr(self, group), f.name), flag(f.name)
            check = f.metadata.get("check")
            if check == "positive" and v is not None and not v > 0:
                raise ValueError(f"{name} must be positive, got {v}")
            if check == "non-negative" and v is not None and not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be >= 0, got {v}")
            choices = get_args(hint) if get_origin(hint) is Literal else f.metadata.get("choices")
            if choices and v not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}, got {v!r}")
        if s.steps is None and not (s.epochs > 0 and math.isfinite(s.epochs)):
            raise ValueError(f"--epochs must be positive, got {s.epochs}")
        if not 0.0 <= s.decay_fraction <= 1.0:
            raise ValueError(f"--decay-fraction must be in [0, 1], got {s.decay_fraction}")
        if not (0.0 <= s.beta1 < 1.0 and 0.0 <= s.beta2 < 1.0):
            raise ValueError("Adam betas must be in [0, 1)")
        if not 0.0 <= s.ema_decay < 1.0:
            raise ValueError(f"--ema-decay must be in [0, 1), got {s.ema_decay}")
        if o.vgg_weights is not None and o.vgg in ("full", "partial") and not Path(o.vgg_weights).is_file():
            raise ValueError(f"--vgg-weights {o.vgg_weights}: no such file")
        try:
            parse_policy(o.diffaug)
        except ValueError as err:
            raise ValueError(f"--diffaug {o.diffaug!r}: {err}") from err
        if r.device not in ("auto", "cpu", "cuda") and not r.device.startswith("cuda:"):
            raise ValueError(f"--device must be auto, cpu or cuda, got {r.device!r}")
        if r.init_step is not None and not (r.init_step == "auto" or r.init_step.isdigit()):
            raise ValueError(f"--init-step must be 'auto' or a step number, got {r.init_step!r}")
        if r.init_step is not None and not r.init_from:
            raise ValueError("--init-step needs --init-from (the weights whose schedule it continues)")
        if r.resume not in (None, "auto") and not Path(r.resume).is_file():
            raise ValueError(f"--resume {r.resume}: no such checkpoint file (use --resume auto to "
                             "continue from the newest checkpoint in --outdir)")
        try:
            config = self.model.config()
        except (TypeError, ValueError) as err:
            raise ValueError(f"the model options do not make a valid {self.model.preset!r} model: {err}") from err
        if s.train_only == "enhancer" and not config.generator.enhancer_channels:
            raise ValueError("--train-only enhancer needs a model with an enhancer (--enhancer-channels)")


def resolved_workers(d: DataOptions) -> int:
    """``--workers``, or what the machine has: min(4, the CPUs this process may use per training
    process - 1), so a 2-core machine gets one loader process next to the training one."""
    if d.workers is not None:
        return d.workers
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    per_process = cpus // max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    return max(0, min(4, per_process - 1))


def check_launch(opts: TrainOptions, world: int, cuda: bool) -> None:
    """What the processes and the device must allow: the CLI checks it before anything heavy starts
    (from ``WORLD_SIZE``), :func:`train.loop.train` again with the real process group."""
    if opts.schedule.batch_size % world:
        raise ValueError(f"--batch-size {opts.schedule.batch_size} does not split evenly over {world} processes")
    if opts.run.amp == "fp16" and not cuda:
        raise ValueError("--amp fp16 needs CUDA; use --amp auto, bf16 or none on CPU")
    if opts.run.amp == "bf16" and cuda and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise ValueError(f"--amp bf16 needs a GPU with bfloat16 ({torch.cuda.get_device_name()} has none); "
                         "use --amp fp16, auto or none")


# ---------------------------------------------------------------------------------------------
# Command line: generated from the fields (train/cli.py's rules)
# ---------------------------------------------------------------------------------------------

PROG = "python -m train"


def _fields() -> list[tuple[str, dataclasses.Field, Any]]:
    """(group, field, type hint with ``None`` removed) for every option, in flag order."""
    return [(group, f, hint) for group, cls in GROUPS.items() for f, hint in field_hints(cls)]


def build_arg_parser() -> argparse.ArgumentParser:
    """One flag per option field, in argument groups data / model / schedule / objective / run."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Train GroupDNet (single process, torchrun on one or many GPUs/nodes, or CPU/gloo).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    defaults = TrainOptions()
    for group, cls in GROUPS.items():
        add_dataclass_arguments(p, cls, getattr(defaults, group), title=group)
    return p


def train_command(options: dict[str, Any]) -> str:
    """The ``python -m train`` command line that gives these flat options (non-default ones, plus
    ``--data`` and ``--preset``): :func:`parse_args` of its arguments gives the same :class:`TrainOptions`."""
    return options_to_cli(options, tuple(GROUPS.values()), PROG)


def parse_args(argv: list[str] | None = None) -> TrainOptions:
    """Parse and validate; exits with a CLI error (status 2) on bad arguments."""
    cli = build_arg_parser()
    ns = cli.parse_args(argv)
    try:
        opts = TrainOptions.from_dict(vars(ns))
        check_environment(opts)
    except ValueError as err:
        cli.error(str(err))
    return opts


def check_environment(opts: TrainOptions) -> None:
    """Checks that need the file system or the launcher, done before anything heavy starts."""
    if not Path(opts.data.data).is_dir():
        raise ValueError(f"--data {opts.data.data}: no such folder")
    check_launch(opts, int(os.environ.get("WORLD_SIZE", "1")),
                 opts.run.device.startswith("cuda") or (opts.run.device == "auto" and torch.cuda.is_available()))
    if opts.run.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda but no CUDA device is visible; use --device cpu")
    if opts.run.resume is None:
        check_new_run(opts.run_dir)
