"""Typed, frozen configurations and the named presets.

A :class:`SMISConfig` describes one GroupDNet: its classes and palette, its native size, and one
typed config per network. It is written to ``config.json`` next to the weights and read back
strictly (unknown or missing fields are errors).

Presets follow the paper (Table 4, Figs 8-10) and the widths of the released reference code:

=============  =======  =========  =====  ==========================  ==========  =========
preset         classes  size (HxW)  nf    decoder groups              CG-Norm     encoder
=============  =======  =========  =====  ==========================  ==========  =========
deepfashion    8        256x256    160    8 8 4 4 2 2 1               fixed 128   ndf 256
cityscapes     35       256x512    280    35 35 20 14 10 4 1          per-class   ndf 350
ade20k         151      256x256    64     151 16 16 8 4 2 1           ade20k      ndf 604
demo           10 (CCP) 384x256    40     10 10 5 5 2 2 1             fixed 60    ndf 80
ccp-cpu        10 (CCP) 192x128    20     10 10 5 5 2 2 1             fixed 40    ndf 40
=============  =======  =========  =====  ==========================  ==========  =========

``ccp-cpu`` is the bundled default model: the ``demo`` architecture at half the width and half
the size, with one global code per class and the label map max-pooled to each block's size,
sized so ~100 CCP epochs fit in 8-10 hours of a 2-core CPU with bf16 (D: ndf 32).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import labels as L

NormKind = Literal["batch", "instance", "none"]
NormLayout = Literal["fixed", "per_class", "ade20k"]
LabelPool = Literal["nearest", "max", "area"]
LABEL_POOLS: tuple[str, ...] = ("nearest", "max", "area")
#: ``grid``: each class's code is a (z, H/64, W/64) map, as in the paper; ``global``: one z-vector
#: per class, broadcast over the generator's base grid (no blocks in large regions, 8 numbers per class).
CodeLayout = Literal["grid", "global"]
CODE_LAYOUTS: tuple[str, ...] = ("grid", "global")

#: The generator upsamples the latent grid six times (SPADE's "more" setting): H/64 x W/64.
NUM_UPSAMPLINGS = 6
SIZE_MULTIPLE = 2**NUM_UPSAMPLINGS


@dataclass(frozen=True)
class GeneratorConfig:
    """The decoder: a grouped conv on Z, then seven CG-Blocks with decreasing groups."""

    #: Output channels of ``fc`` and of the CG-Blocks head, mid0, mid1, up0, up1, up2, up3 (8).
    channels: tuple[int, ...]
    #: Group count of each CG-Block (7 numbers, non-increasing, last one usually 1).
    groups: tuple[int, ...]
    #: How CG-Norm sizes its label branch: ``fixed`` (``norm_hidden`` channels, block groups,
    #: DeepFashion), ``per_class`` (classes x groups hidden, class groups, Cityscapes) or
    #: ``ade20k`` (the reference code's ADE20K rule).
    norm_layout: NormLayout = "fixed"
    #: Hidden channels of the CG-Norm label branch when ``norm_layout == "fixed"``.
    norm_hidden: int = 128
    #: Parameter-free normalisation inside CG-Norm (``batch`` runs synchronised when train/ is distributed).
    param_free_norm: NormKind = "batch"
    #: Spectral norm on every CG-Block convolution (paper, Table 3: it lowers mOCD).
    spectral_norm: bool = True
    #: How the label map reaches each CG-Block's size: ``nearest`` (one pixel per cell: SPADE and
    #: the reference code), ``max`` (a class is on wherever it covers any pixel of the cell) or
    #: ``area`` (the fraction of the cell it covers). With ``nearest``, a class smaller than a
    #: cell is invisible to the low-resolution, one-group-per-class blocks, so its code cannot be
    #: steered into its region (CCP at 192x128: hair and shoes are absent from the 3x2 head's map
    #: of every photo); see docs/training/ccp-cpu-notes.md.
    label_pool: LabelPool = "nearest"
    #: Coarse-to-fine growth (pix2pixHD's local enhancer, Wang et al. 2018, adapted to GroupDNet):
    #: output channels of extra CG-Blocks (one group, the label map at their size), each one x2 above
    #: the last. The seven blocks above (the *global* generator, which keeps every class's code) then
    #: run at H / 2^k x W / 2^k, the encoder reads the photo at that size, and the image is the global
    #: generator's RGB, upsampled bilinearly, plus the enhancer's RGB residual (zero-initialised, so a
    #: model grown from a smaller one starts as that model upscaled). Empty: no enhancer.
    enhancer_channels: tuple[int, ...] = ()

    @property
    def blocks(self) -> tuple[tuple[int, int, int], ...]:
        """(in channels, out channels, groups) of every CG-Block in forward order: the seven global ones,
        then the enhancer's (one group each)."""
        ch = (*self.channels, *self.enhancer_channels)
        groups = (*self.groups, *(1,) * len(self.enhancer_channels))
        return tuple(zip(ch[:-1], ch[1:], groups))


@dataclass(frozen=True)
class EncoderConfig:
    """The group encoder: six stride-2 grouped convs, then mean and log-variance maps."""

    #: Output channels of the six stride-2 convolutions; each a multiple of the class count.
    channels: tuple[int, ...]
    norm: NormKind = "instance"
    spectral_norm: bool = True


@dataclass(frozen=True)
class DiscriminatorConfig:
    """SPADE's multi-scale PatchGAN (training only)."""

    ndf: int = 64
    num_layers: int = 4
    num_scales: int = 2
    norm: NormKind = "instance"
    spectral_norm: bool = True


@dataclass(frozen=True)
class SMISConfig:
    """Everything needed to build, save and load one GroupDNet."""

    name: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    #: Native output size; both multiples of ``size_multiple`` (64, x2 per enhancer block).
    height: int
    width: int
    generator: GeneratorConfig
    encoder: EncoderConfig
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    #: Latent channels per class (class c owns channels [z*c, z*c + z)).
    z_channels: int = 8
    #: Feed a per-class instance-edge channel next to each class's one-hot (Cityscapes).
    instance_edges: bool = False
    #: Shape of each class's code: a ``grid`` of H/64 x W/64 cells (paper) or one ``global`` vector.
    code_layout: CodeLayout = "grid"

    def __post_init__(self) -> None:
        validate(self)

    # -- derived sizes -------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def label_channels(self) -> int:
        """Channels of the label input to CG-Norm and D (one-hot, plus edges if enabled)."""
        return self.num_classes * (2 if self.instance_edges else 1)

    @property
    def enhancer_factor(self) -> int:
        """How much larger the image is than the global generator's: 2 ** (enhancer blocks)."""
        return 2 ** len(self.generator.enhancer_channels)

    @property
    def size_multiple(self) -> int:
        """Heights and widths must be multiples of this: 64 (six x2 upsamplings), x2 per enhancer block."""
        return SIZE_MULTIPLE * self.enhancer_factor

    def global_size(self, height: int | None = None, width: int | None = None) -> tuple[int, int]:
        """The size the global generator and the encoder work at (the image's without an enhancer)."""
        h = self.height if height is None else height
        w = self.width if width is None else width
        return h // self.enhancer_factor, w // self.enhancer_factor

    def base_grid(self, height: int | None = None, width: int | None = None) -> tuple[int, int]:
        """The generator's first feature map: H/64 x W/64 of the global size (what the label branch is sized from)."""
        h = self.height if height is None else height
        w = self.width if width is None else width
        return h // self.size_multiple, w // self.size_multiple

    def latent_grid(self, height: int | None = None, width: int | None = None) -> tuple[int, int]:
        """Spatial size of Z: the base grid, or (1, 1) for ``code_layout="global"``."""
        if self.code_layout == "global":
            return 1, 1
        return self.base_grid(height, width)

    def latent_shape(self, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
        """Shape of Z for one image: (z_channels * classes, h, w)."""
        return (self.z_channels * self.num_classes, *self.latent_grid(height, width))

    def class_id(self, name_or_id: int | str) -> int:
        """A class name (case-insensitive) or id -> id, with a helpful error."""
        if isinstance(name_or_id, str) and not name_or_id.strip().lstrip("-").isdigit():
            names = [n.lower() for n in self.class_names]
            key = name_or_id.strip().lower()
            if key not in names:
                raise ValueError(
                    f"unknown class {name_or_id!r}; this model's classes are: "
                    + ", ".join(self.class_names)
                )
            return names.index(key)
        cid = int(name_or_id)
        if not 0 <= cid < self.num_classes:
            raise ValueError(f"class id {cid} is outside 0..{self.num_classes - 1}")
        return cid

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["palette"] = [list(c) for c in self.palette]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SMISConfig:
        d = dict(d)
        d.pop("_format", None)
        try:
            return cls(
                name=str(d.pop("name")),
                class_names=tuple(d.pop("class_names")),
                palette=tuple(tuple(int(v) for v in c) for c in d.pop("palette")),
                height=int(d.pop("height")),
                width=int(d.pop("width")),
                generator=_sub(GeneratorConfig, d.pop("generator")),
                encoder=_sub(EncoderConfig, d.pop("encoder")),
                discriminator=_sub(DiscriminatorConfig, d.pop("discriminator", {})),
                **d,
            )
        except (KeyError, TypeError) as err:
            raise ValueError(f"config.json is not a valid SMIS config: {err}") from err

    def to_json(self) -> str:
        return json.dumps({"_format": "smis-groupdnet/1", **self.to_dict()}, indent=2)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> SMISConfig:
        try:
            d = json.loads(Path(path).read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from err
        return cls.from_dict(d)

    def replace(self, **changes: Any) -> SMISConfig:
        return dataclasses.replace(self, **changes)

    def differences(self, other: SMISConfig) -> list[str]:
        """``"path: mine -> other's"`` for every field that differs (nested fields as ``generator.x``)."""
        def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
            out = {}
            for k, v in d.items():
                out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
            return out
        a, b = flat(self.to_dict()), flat(other.to_dict())
        return [f"{k}: {a.get(k)} -> {b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _sub(kind: type, d: dict[str, Any]) -> Any:
    d = dict(d)
    for k, v in d.items():
        if isinstance(v, list):
            d[k] = tuple(v)
    return kind(**d)


def cgnorm_layout(layout: NormLayout, num_classes: int, groups: int, hidden: int) -> tuple[int, int, int]:
    """(hidden channels, groups of the shared conv, groups of the gamma/beta convs)."""
    if layout == "fixed":
        return hidden, groups, groups
    if layout == "per_class":
        return num_classes * groups, num_classes, num_classes
    if layout == "ade20k":
        h = 2 * num_classes if num_classes % groups == 0 else num_classes * groups
        return h, num_classes, groups
    raise ValueError(f"unknown CG-Norm layout {layout!r}")


def validate(cfg: SMISConfig) -> None:
    """Refuse configs whose group counts do not divide the channels they touch."""
    c = cfg.num_classes
    g = cfg.generator
    if c < 1 or len(cfg.palette) != c:
        raise ValueError(f"{c} class names but {len(cfg.palette)} palette colours")
    if len(set(map(tuple, cfg.palette))) != c:
        raise ValueError("palette colours must be distinct")
    if any(int(ch) < 1 for ch in g.enhancer_channels):
        raise ValueError(f"generator.enhancer_channels must be positive, got {list(g.enhancer_channels)}")
    m = cfg.size_multiple
    for side, v in (("height", cfg.height), ("width", cfg.width)):
        if v < m or v % m:
            raise ValueError(f"{side} {v} must be a positive multiple of {m}"
                             + (f" (64 x 2^{len(g.enhancer_channels)} enhancer blocks)" if g.enhancer_channels else ""))
    if len(g.channels) != 8 or len(g.groups) != 7:
        raise ValueError("generator.channels needs 8 numbers and generator.groups 7")
    if g.channels[0] % c:
        raise ValueError(f"fc width {g.channels[0]} must be a multiple of {c} classes")
    lab = cfg.label_channels
    for i, (fin, fout, grp) in enumerate(g.blocks):
        fmid = min(fin, fout)
        hid, sg, mg = cgnorm_layout(g.norm_layout, c, grp, g.norm_hidden)
        checks = {"block in": (fin, grp), "block out": (fout, grp), "block mid": (fmid, grp),
                  "label": (lab, sg), "hidden/shared": (hid, sg), "hidden/mod": (hid, mg),
                  "mod in": (fin, mg), "mod mid": (fmid, mg)}
        for what, (ch, gg) in checks.items():
            if ch % gg:
                raise ValueError(f"generator block {i}: {what} channels {ch} not divisible by {gg} groups")
    if g.label_pool not in LABEL_POOLS:
        raise ValueError(f"generator.label_pool must be one of {', '.join(LABEL_POOLS)}, got {g.label_pool!r}")
    if cfg.code_layout not in CODE_LAYOUTS:
        raise ValueError(f"code_layout must be one of {', '.join(CODE_LAYOUTS)}, got {cfg.code_layout!r}")
    e = cfg.encoder
    if e.norm == "instance" and cfg.height * cfg.width <= cfg.size_multiple**2:
        raise ValueError(f"a {cfg.height}x{cfg.width} model has a 1x1 latent grid, too small for the encoder's "
                         "instance norm; use at least 64x128")
    if len(e.channels) != NUM_UPSAMPLINGS:
        raise ValueError(f"encoder.channels needs {NUM_UPSAMPLINGS} numbers")
    for ch in e.channels:
        if ch % c:
            raise ValueError(f"encoder width {ch} must be a multiple of {c} classes")


# ---------------------------------------------------------------------------------------------
# Presets: plain functions in a plain dict. Widths are arguments so tests can build tiny twins.
# ---------------------------------------------------------------------------------------------

def deepfashion(nf: int = 160, ndf: int = 256, norm_hidden: int = 128, height: int = 256,
                width: int = 256) -> SMISConfig:
    """Paper Table 4 / reference code: nf=160, G={8,8,4,4,2,2,1}, 109.1 M params (G+E)."""
    return SMISConfig(
        name="deepfashion", class_names=L.DEEPFASHION_CLASSES, palette=L.DEEPFASHION_PALETTE,
        height=height, width=width,
        generator=GeneratorConfig(
            channels=(16 * nf, 16 * nf, 16 * nf, 16 * nf, 8 * nf, 4 * nf, 2 * nf, nf),
            groups=(8, 8, 4, 4, 2, 2, 1), norm_layout="fixed", norm_hidden=norm_hidden),
        encoder=EncoderConfig(channels=(ndf, 2 * ndf, 4 * ndf, 8 * ndf, 8 * ndf, 8 * ndf)),
    )


def cityscapes(nf: int = 280, ndf: int = 350, height: int = 256, width: int = 512) -> SMISConfig:
    """Paper Table 4: nf=280, G={35,35,20,14,10,4,1}, per-class CG-Norm, instance edges."""
    return SMISConfig(
        name="cityscapes", class_names=L.CITYSCAPES_CLASSES, palette=L.CITYSCAPES_PALETTE,
        height=height, width=width, instance_edges=True,
        generator=GeneratorConfig(
            channels=(16 * nf, 16 * nf, 16 * nf, 16 * nf, 8 * nf, 4 * nf, 2 * nf, nf),
            groups=(35, 35, 20, 14, 10, 4, 1), norm_layout="per_class"),
        encoder=EncoderConfig(channels=(ndf, 2 * ndf, 4 * ndf, 8 * ndf, 8 * ndf, 8 * ndf)),
    )


def ade20k(nf: int = 64, ndf: int = 604, height: int = 256, width: int = 256) -> SMISConfig:
    """Paper Table 4 / Fig. 10: wide class-grouped head (16 x 151), then nf=64 blocks."""
    c = len(L.ADE20K_CLASSES)
    return SMISConfig(
        name="ade20k", class_names=L.ADE20K_CLASSES, palette=L.ADE20K_PALETTE,
        height=height, width=width,
        generator=GeneratorConfig(
            channels=(16 * c, 16 * c, 32 * nf, 16 * nf, 16 * nf, 8 * nf, 4 * nf, 2 * nf),
            groups=(c, 16, 16, 8, 4, 2, 1), norm_layout="ade20k"),
        encoder=EncoderConfig(channels=(ndf, 2 * ndf, 4 * ndf, 8 * ndf, 8 * ndf, 8 * ndf)),
    )


def demo(nf: int = 40, ndf: int = 80, norm_hidden: int = 60, height: int = 384,
         width: int = 256) -> SMISConfig:
    """Compact CCP model for the Space: 10 classes, 384x256 portrait, fast on 2 CPU cores."""
    return SMISConfig(
        name="demo", class_names=L.CCP10_CLASSES, palette=L.CCP10_PALETTE,
        height=height, width=width,
        generator=GeneratorConfig(
            channels=(16 * nf, 16 * nf, 16 * nf, 16 * nf, 8 * nf, 4 * nf, 2 * nf, nf),
            groups=(10, 10, 5, 5, 2, 2, 1), norm_layout="fixed", norm_hidden=norm_hidden),
        encoder=EncoderConfig(channels=(ndf, 2 * ndf, 4 * ndf, 8 * ndf, 8 * ndf, 8 * ndf)),
    )


def ccp_cpu(nf: int = 20, ndf: int = 40, norm_hidden: int = 40, height: int = 192, width: int = 128,
            d_ndf: int = 32) -> SMISConfig:
    """The CPU-trained default model: ``demo`` at nf 20 / 192x128, one global code per class, and
    the label map max-pooled to each block's size (``label_pool="max"``: small classes stay visible).

    G 1.66 M, E 0.29 M, D 1.40 M parameters; the same tensor shapes as ``demo`` with
    ``--widths nf=20,ndf=40,norm_hidden=40`` at 192x128 and ``--d-ndf 32``.
    """
    cfg = demo(nf=nf, ndf=ndf, norm_hidden=norm_hidden, height=height, width=width)
    generator = dataclasses.replace(cfg.generator, label_pool="max")
    return cfg.replace(name="ccp-cpu", code_layout="global", generator=generator,
                       discriminator=DiscriminatorConfig(ndf=d_ndf))


PRESETS: dict[str, Callable[..., SMISConfig]] = {
    "deepfashion": deepfashion,
    "cityscapes": cityscapes,
    "ade20k": ade20k,
    "demo": demo,
    "ccp-cpu": ccp_cpu,
}

#: Smallest widths each preset's group counts allow; for tests and smoke runs.
TINY_WIDTHS: dict[str, dict[str, int]] = {
    "deepfashion": dict(nf=8, ndf=8, norm_hidden=8, height=64, width=128),
    "cityscapes": dict(nf=70, ndf=35, height=64, width=128),
    "ade20k": dict(nf=8, ndf=151, height=64, width=128),
    "demo": dict(nf=10, ndf=10, norm_hidden=10, height=128, width=64),
    "ccp-cpu": dict(nf=10, ndf=10, norm_hidden=10, height=128, width=64, d_ndf=16),
}


def get_config(name: str, tiny: bool = False, **overrides: Any) -> SMISConfig:
    """A preset by name; ``tiny=True`` gives its smallest valid twin (same classes and groups)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    kwargs = dict(TINY_WIDTHS[name]) if tiny else {}
    kwargs.update(overrides)
    return PRESETS[name](**kwargs)
