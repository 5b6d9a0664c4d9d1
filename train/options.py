"""Typed training options and the command line that fills them.

The CLI refuses bad arguments before anything heavy starts (a dataset folder that is not there, a
batch that does not split over the processes, fp16 without CUDA, ...), and the run writes the
resolved options to ``training_options.json`` so every run says exactly how it was made.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from smis.config import PRESETS, DiscriminatorConfig, SMISConfig, get_config

VggKind = Literal["full", "partial", "none", "double-fm"]
AmpKind = Literal["none", "bf16", "fp16"]

VGG_CHOICES: tuple[str, ...] = ("full", "partial", "none", "double-fm")
AMP_CHOICES: tuple[str, ...] = ("none", "bf16", "fp16")


@dataclass
class TrainOptions:
    """Everything one training run needs; defaults follow the paper (SPADE's schedule)."""

    # -- data -------------------------------------------------------------------------------
    #: Dataset root folder (read by ``train.data.build_dataset``).
    data: str = ""
    #: Dataset layout understood by ``train.data`` (e.g. ``generic``).
    format: str = "generic"
    split: str = "train"
    #: Random horizontal flips (done by ``train.data``).
    augment: bool = True
    #: What ``train.data`` does with an unreadable or mismatched pair: ``skip`` (log it) or ``error``.
    on_bad: str = "skip"
    #: DataLoader worker processes per training process.
    workers: int = 4

    # -- model ------------------------------------------------------------------------------
    #: Named preset from ``smis.config.PRESETS``.
    preset: str = "demo"
    #: The preset's smallest twin (tests and smoke runs).
    tiny: bool = False
    #: Preset width overrides, e.g. ``{"nf": 32, "ndf": 64}`` (the preset function's arguments).
    widths: dict[str, int] = field(default_factory=dict)
    #: Training size; ``None`` keeps the preset's (multiples of 64).
    height: int | None = None
    width: int | None = None
    #: Discriminator overrides (``None`` keeps SPADE's 64 / 4 layers / 2 scales).
    d_ndf: int | None = None
    d_layers: int | None = None
    d_scales: int | None = None

    # -- schedule ---------------------------------------------------------------------------
    #: Images per optimiser step over all processes (split evenly between them).
    batch_size: int = 32
    #: Training length in epochs; ``steps`` (if set) overrides it. Defines the LR schedule, so
    #: chunked runs (``max_minutes``) follow the same curve as one long run.
    epochs: float = 100.0
    steps: int | None = None
    #: Fraction of the run over which both learning rates decay linearly to 0 (paper: 40/100).
    decay_fraction: float = 0.4
    lr_g: float = 1e-4
    lr_d: float = 4e-4
    beta1: float = 0.0
    beta2: float = 0.9

    # -- objective --------------------------------------------------------------------------
    lambda_feat: float = 10.0
    lambda_vgg: float = 10.0
    lambda_kl: float = 0.05
    #: Nats each present class of each image may use without a KL cost (0: paper's KL).
    kl_free_bits: float = 0.0
    #: Average the KL over the batch instead of summing it (SPADE sums).
    kl_per_image: bool = False
    #: Weight of the class-balanced appearance reconstruction (0: off, the paper's objective).
    lambda_rec: float = 0.0
    #: Average-pooling factor of that reconstruction term.
    rec_pool: int = 4
    #: Perceptual loss: ``full`` VGG19 relu1_1..relu5_1 (ImageNet weights), ``partial`` (the
    #: offline normalised VGG19 up to relu3_1), ``none``, or ``double-fm`` (no VGG, feature
    #: matching weight doubled).
    vgg: VggKind = "full"
    #: Local VGG19 weights file (torchvision layout) where the download is impossible.
    vgg_weights: str | None = None
    #: Use the G step's (detached) fake in the D step instead of generating a new one under
    #: no_grad as SPADE does (saves one G+E forward per step).
    reuse_fake: bool = False

    # -- speed and stability ----------------------------------------------------------------
    amp: AmpKind = "none"
    #: channels-last tensors (``None``: on for CUDA).
    channels_last: bool | None = None
    compile: bool = False
    #: EMA decay of G + E (warmed up as min(decay, (1 + step) / (10 + step))).
    ema_decay: float = 0.999
    #: Max global grad norm per network (0: no clipping).
    grad_clip: float = 0.0
    #: Deterministic algorithms (slower on GPU; bit-exact resume on CPU with ``workers=0``).
    deterministic: bool = False
    seed: int = 0
    #: ``auto`` (cuda:LOCAL_RANK if available, else cpu), ``cpu``, ``cuda``.
    device: str = "auto"

    # -- run folder, logs, checkpoints ------------------------------------------------------
    #: Run folder (``None``: ``runs/<preset>``); rerun with ``resume="auto"`` to continue.
    outdir: str | None = None
    #: ``None`` (fresh run), ``auto`` (newest complete checkpoint in outdir, fresh if none) or a path.
    resume: str | None = None
    #: Start a new run from these weights: a model folder or Hub repo id (G + E; D fresh) or a
    #: training-state file (G, E, D, EMA; optimisers fresh). Ignored when ``resume`` finds a checkpoint.
    init_from: str | None = None
    #: Val images whose reconstruction distance (encode -> generate) is logged with every sample grid.
    val_count: int = 16
    log_every: int = 50
    #: Checkpoint every N steps and/or every M minutes (0 disables either).
    ckpt_every: int = 1000
    ckpt_minutes: float = 20.0
    #: Training states and EMA snapshots kept (oldest pruned).
    keep: int = 3
    sample_every: int = 1000
    #: Masks (columns) in the sample grid.
    sample_count: int = 6
    #: Stop cleanly (checkpoint, exit 0) before this many minutes since start; ``None``: no limit.
    max_minutes: float | None = None
    tensorboard: bool = True
    progress: bool = True

    # -- derived ----------------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return Path(self.outdir if self.outdir else os.path.join("runs", self.preset))

    @property
    def feat_weight(self) -> float:
        """Feature-matching weight actually used (doubled by ``vgg="double-fm"``)."""
        return self.lambda_feat * (2.0 if self.vgg == "double-fm" else 1.0)

    def model_config(self, class_names: tuple[str, ...] | None = None,
                     palette: tuple[tuple[int, int, int], ...] | None = None) -> SMISConfig:
        """The preset at the training size, with the dataset's class names and palette."""
        kw: dict[str, Any] = dict(self.widths)
        if self.height is not None:
            kw["height"] = self.height
        if self.width is not None:
            kw["width"] = self.width
        cfg = get_config(self.preset, tiny=self.tiny, **kw)
        d = cfg.discriminator
        disc = DiscriminatorConfig(
            ndf=self.d_ndf or d.ndf, num_layers=self.d_layers or d.num_layers,
            num_scales=self.d_scales or d.num_scales, norm=d.norm, spectral_norm=d.spectral_norm)
        cfg = cfg.replace(discriminator=disc)
        if class_names is not None:
            if len(class_names) != cfg.num_classes:
                raise ValueError(
                    f"the dataset has {len(class_names)} classes but preset {self.preset!r} is built for "
                    f"{cfg.num_classes} ({', '.join(cfg.class_names)}); its group counts depend on the "
                    "class count: map the labels to these classes or choose the matching preset")
            cfg = cfg.replace(class_names=tuple(class_names),
                              palette=tuple(tuple(int(v) for v in c) for c in palette) if palette else cfg.palette)
        return cfg

    def total_steps(self, steps_per_epoch: int) -> int:
        return int(self.steps) if self.steps else max(1, int(round(self.epochs * steps_per_epoch)))

    def lr_factor(self, step: int, total: int) -> float:
        """Constant, then linear decay to 0 over the last ``decay_fraction`` of ``total`` steps."""
        decay = int(round(self.decay_fraction * total))
        start = total - decay
        if decay <= 0 or step < start:
            return 1.0
        return max(0.0, (total - step) / decay)

    # -- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainOptions:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown training options: {', '.join(unknown)}")
        opts = cls(**d)
        opts.validate()
        return opts

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first option that cannot work."""
        if not self.data:
            raise ValueError("--data is required: the dataset root folder")
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        positive = {"batch_size": self.batch_size, "log_every": self.log_every, "keep": self.keep,
                    "sample_count": self.sample_count, "lr_g": self.lr_g, "lr_d": self.lr_d}
        for k, v in positive.items():
            if not v > 0:
                raise ValueError(f"--{k.replace('_', '-')} must be positive, got {v}")
        non_negative = {"workers": self.workers, "ckpt_every": self.ckpt_every,
                        "ckpt_minutes": self.ckpt_minutes, "sample_every": self.sample_every,
                        "grad_clip": self.grad_clip, "lambda_feat": self.lambda_feat,
                        "lambda_vgg": self.lambda_vgg, "lambda_kl": self.lambda_kl,
                        "kl_free_bits": self.kl_free_bits, "lambda_rec": self.lambda_rec, "val_count": self.val_count}
        for k, v in non_negative.items():
            if not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"--{k.replace('_', '-')} must be >= 0, got {v}")
        if self.steps is None and not (self.epochs > 0 and math.isfinite(self.epochs)):
            raise ValueError(f"--epochs must be positive, got {self.epochs}")
        if self.steps is not None and self.steps <= 0:
            raise ValueError(f"--steps must be positive, got {self.steps}")
        if not 0.0 <= self.decay_fraction <= 1.0:
            raise ValueError(f"--decay-fraction must be in [0, 1], got {self.decay_fraction}")
        if not (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0):
            raise ValueError("Adam betas must be in [0, 1)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        if self.vgg not in VGG_CHOICES:
            raise ValueError(f"--vgg must be one of {', '.join(VGG_CHOICES)}, got {self.vgg!r}")
        if self.vgg_weights is not None and self.vgg in ("full", "partial") and not Path(self.vgg_weights).is_file():
            raise ValueError(f"--vgg-weights {self.vgg_weights}: no such file")
        if self.amp not in AMP_CHOICES:
            raise ValueError(f"--amp must be one of {', '.join(AMP_CHOICES)}, got {self.amp!r}")
        if self.on_bad not in ("skip", "error"):
            raise ValueError(f"--on-bad must be 'skip' or 'error', got {self.on_bad!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"--max-minutes must be positive, got {self.max_minutes}")
        if self.rec_pool < 1:
            raise ValueError(f"--rec-pool must be >= 1, got {self.rec_pool}")
        for k in ("height", "width", "d_ndf", "d_layers", "d_scales"):
            v = getattr(self, k)
            if v is not None and v <= 0:
                raise ValueError(f"--{k.replace('_', '-')} must be positive, got {v}")
        if self.resume not in (None, "auto") and not Path(self.resume).is_file():
            raise ValueError(f"--resume {self.resume}: no such checkpoint file (use --resume auto to "
                             "continue from the newest checkpoint in --outdir)")
        try:
            self.model_config()
        except (TypeError, ValueError) as err:
            raise ValueError(f"the model options do not make a valid {self.preset!r} model: {err}") from err


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def _widths(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not value.strip().isdigit():
            raise argparse.ArgumentTypeError(f"expected KEY=INT[,KEY=INT...], got {part!r}")
        out[key.strip()] = int(value)
    return out


def _bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    d = TrainOptions()
    p = argparse.ArgumentParser(
        prog="python -m train",
        description="Train GroupDNet (single process, torchrun on one or many GPUs/nodes, or CPU/gloo).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True, help="dataset root folder")
    g.add_argument("--format", default=d.format, help="dataset layout understood by train/data.py")
    g.add_argument("--split", default=d.split)
    g.add_argument("--augment", type=_bool, default=d.augment, help="random horizontal flips")
    g.add_argument("--on-bad", choices=("skip", "error"), default=d.on_bad,
                   help="unreadable or mismatched pairs: skip them (logged) or stop")
    g.add_argument("--workers", type=int, default=d.workers, help="DataLoader workers per process")
    g = p.add_argument_group("model")
    g.add_argument("--preset", choices=sorted(PRESETS), default=d.preset)
    g.add_argument("--tiny", action="store_true", help="the preset's smallest twin (smoke tests)")
    g.add_argument("--widths", type=_widths, default={}, help="preset width overrides, e.g. nf=32,ndf=64")
    g.add_argument("--height", type=int, default=None, help="training height (preset's if omitted)")
    g.add_argument("--width", type=int, default=None, help="training width (preset's if omitted)")
    g.add_argument("--d-ndf", type=int, default=None, help="discriminator base width (64)")
    g.add_argument("--d-layers", type=int, default=None, help="discriminator layers (4)")
    g.add_argument("--d-scales", type=int, default=None, help="discriminator scales (2)")
    g = p.add_argument_group("schedule")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch (all processes)")
    g.add_argument("--epochs", type=float, default=d.epochs)
    g.add_argument("--steps", type=int, default=None, help="total optimiser steps (overrides --epochs)")
    g.add_argument("--decay-fraction", type=float, default=d.decay_fraction,
                   help="final fraction of the run with linear LR decay to 0")
    g.add_argument("--lr-g", type=float, default=d.lr_g)
    g.add_argument("--lr-d", type=float, default=d.lr_d)
    g.add_argument("--beta1", type=float, default=d.beta1)
    g.add_argument("--beta2", type=float, default=d.beta2)
    g = p.add_argument_group("objective")
    g.add_argument("--lambda-feat", type=float, default=d.lambda_feat)
    g.add_argument("--lambda-vgg", type=float, default=d.lambda_vgg)
    g.add_argument("--lambda-kl", type=float, default=d.lambda_kl)
    g.add_argument("--kl-free-bits", type=float, default=d.kl_free_bits,
                   help="nats per present class and image the KL does not charge (0: the paper's KL)")
    g.add_argument("--kl-per-image", type=_bool, default=d.kl_per_image,
                   help="average the KL over the batch instead of summing it (SPADE sums)")
    g.add_argument("--lambda-rec", type=float, default=d.lambda_rec,
                   help="class-balanced appearance reconstruction weight (0: off)")
    g.add_argument("--rec-pool", type=int, default=d.rec_pool, help="average pooling of that term")
    g.add_argument("--vgg", choices=VGG_CHOICES, default=d.vgg,
                   help="perceptual loss: full VGG19 (ImageNet weights), partial (offline relu1_1-relu3_1), "
                        "none, or double-fm (no VGG, feature matching x2)")
    g.add_argument("--no-vgg", dest="vgg", action="store_const", const="none", help="same as --vgg none")
    g.add_argument("--vgg-weights", default=None, help="local VGG19 weights (torchvision layout)")
    g.add_argument("--reuse-fake", action="store_true",
                   help="D step reuses the G step's fake instead of generating again (faster)")
    g = p.add_argument_group("speed and stability")
    g.add_argument("--amp", choices=AMP_CHOICES, default=d.amp, help="autocast dtype (fp16 adds GradScaler)")
    g.add_argument("--channels-last", type=_bool, default=None, help="default: on for CUDA")
    g.add_argument("--compile", action="store_true", help="torch.compile the networks")
    g.add_argument("--ema-decay", type=float, default=d.ema_decay)
    g.add_argument("--grad-clip", type=float, default=d.grad_clip, help="max grad norm (0: off)")
    g.add_argument("--deterministic", action="store_true")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--device", default=d.device, help="auto, cpu, cuda")
    g = p.add_argument_group("run folder")
    g.add_argument("--outdir", default=None, help="run folder (default runs/<preset>)")
    g.add_argument("--resume", default=None, help="'auto' (newest checkpoint in --outdir) or a checkpoint file")
    g.add_argument("--init-from", default=None,
                   help="start a new run from a model folder / Hub repo id (G + E, D fresh) or a training-state "
                        "file (G, E, D, EMA); ignored once --resume auto finds a checkpoint")
    g.add_argument("--val-count", type=int, default=d.val_count,
                   help="val images for the reconstruction distance logged with each sample grid (0: off)")
    g.add_argument("--log-every", type=int, default=d.log_every, help="steps between log lines")
    g.add_argument("--ckpt-every", type=int, default=d.ckpt_every, help="steps between checkpoints (0: off)")
    g.add_argument("--ckpt-minutes", type=float, default=d.ckpt_minutes,
                   help="minutes between checkpoints (0: off)")
    g.add_argument("--keep", type=int, default=d.keep, help="checkpoints and snapshots kept")
    g.add_argument("--sample-every", type=int, default=d.sample_every, help="steps between sample grids (0: off)")
    g.add_argument("--sample-count", type=int, default=d.sample_count, help="masks in the sample grid")
    g.add_argument("--max-minutes", type=float, default=None,
                   help="checkpoint and exit before this many minutes (resume with --resume auto)")
    g.add_argument("--no-tensorboard", dest="tensorboard", action="store_false")
    g.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def options_to_cli(options: dict[str, Any]) -> str:
    """The ``python -m train`` command line that gives these options (non-default ones only).

    Inverse of :func:`parse_args` for the model card and logs: ``parse_args`` of the result's
    arguments gives the same :class:`TrainOptions`.
    """
    parser = build_parser()
    defaults = TrainOptions()
    args = ["python -m train"]
    by_dest: dict[str, argparse.Action] = {}
    for action in parser._actions:
        if action.option_strings and action.dest not in by_dest and action.dest != "help":
            by_dest[action.dest] = action
    for f in dataclasses.fields(TrainOptions):
        if f.name not in options or f.name not in by_dest:
            continue
        value, default = options[f.name], getattr(defaults, f.name)
        action = by_dest[f.name]
        flag = action.option_strings[0]
        if f.name in ("data", "preset") or value != default:
            if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
                args.append(flag)
            elif isinstance(action, argparse._StoreConstAction):
                args.append(f"--{f.name.replace('_', '-')} {value}")
            elif isinstance(value, dict):
                args.append(f"{flag} " + ",".join(f"{k}={v}" for k, v in value.items()))
            elif isinstance(value, bool):
                args.append(f"{flag} {str(value).lower()}")
            elif value is not None:
                args.append(f"{flag} {value}")
    return " ".join(args)


def parse_args(argv: list[str] | None = None) -> TrainOptions:
    """Parse and validate; exits with a CLI error (status 2) on bad arguments."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    opts = TrainOptions(**vars(ns))
    try:
        opts.validate()
        check_environment(opts)
    except ValueError as err:
        parser.error(str(err))
    return opts


def check_environment(opts: TrainOptions) -> None:
    """Checks that need the file system or the launcher, done before anything heavy starts."""
    if not Path(opts.data).is_dir():
        raise ValueError(f"--data {opts.data}: no such folder")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if opts.batch_size % world:
        raise ValueError(f"--batch-size {opts.batch_size} does not split evenly over {world} processes")
    cuda = opts.device.startswith("cuda") or (opts.device == "auto" and _cuda_available())
    if opts.amp == "fp16" and not cuda:
        raise ValueError("--amp fp16 needs CUDA; use --amp bf16 or --amp none on CPU")
    if opts.device.startswith("cuda") and not _cuda_available():
        raise ValueError("--device cuda but no CUDA device is visible; use --device cpu")
    if opts.resume is None and opts.run_dir.is_dir():
        from .checkpoint import list_checkpoints

        if list_checkpoints(opts.run_dir):
            raise ValueError(f"{opts.run_dir} already holds checkpoints: pass --resume auto to continue "
                             "that run, or choose another --outdir")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
