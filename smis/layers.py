"""Building blocks with parameters: CG-Norm, CG-Block, and the small helpers they need."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations

from .config import NormKind, NormLayout, cgnorm_layout
from .functional import fit_label


def maybe_spectral(conv: nn.Module, enabled: bool) -> nn.Module:
    """Spectral norm (parametrization style, one power iteration per training step)."""
    return parametrizations.spectral_norm(conv) if enabled else conv


def param_free_norm(kind: NormKind, channels: int) -> nn.Module:
    """A normalisation without learned affine parameters."""
    if kind == "batch":
        # train/ swaps these for SyncBatchNorm when it runs distributed on CUDA.
        return nn.BatchNorm2d(channels, affine=False)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown normalisation {kind!r}")


def init_weights(module: nn.Module, gain: float = 0.02) -> None:
    """Glorot-normal init with a small gain, as SPADE/GroupDNet train from."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            weight = m.parametrizations.weight.original if hasattr(m, "parametrizations") else m.weight
            nn.init.xavier_normal_(weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.affine:
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)


class CGNorm(nn.Module):
    """Conditional Group Normalisation: SPADE with grouped convolutions.

    out = norm(x) * (1 + gamma(M)) + beta(M), where gamma and beta come from the label map M
    through a grouped 3x3 conv (-> hidden, ReLU) and two grouped 3x3 convs. With ``groups = G``
    the label channels of class group g only shape the features of group g.
    """

    def __init__(self, channels: int, label_channels: int, num_classes: int, groups: int,
                 layout: NormLayout, hidden: int, norm: NormKind):
        super().__init__()
        hid, shared_groups, mod_groups = cgnorm_layout(layout, num_classes, groups, hidden)
        self.norm = param_free_norm(norm, channels)
        self.shared = nn.Conv2d(label_channels, hid, 3, padding=1, groups=shared_groups)
        self.gamma = nn.Conv2d(hid, channels, 3, padding=1, groups=mod_groups)
        self.beta = nn.Conv2d(hid, channels, 3, padding=1, groups=mod_groups)

    def modulation(self, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(gamma, beta) for a label map already resized to the feature size."""
        actv = F.relu(self.shared(label))
        return self.gamma(actv), self.beta(actv)

    def forward(self, x: torch.Tensor, label: torch.Tensor | None,
                mod: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """``mod``: (gamma, beta) computed earlier for this label map (it does not depend on x)."""
        if mod is None:
            mod = self.modulation(fit_label(label, x))
        gamma, beta = mod
        return self.norm(x) * (1 + gamma) + beta


def cgnorm_channels(fin: int, fout: int) -> dict[str, int]:
    """The CG-Norms of a CG-Block from ``fin`` to ``fout`` channels, in forward order, with the
    channels each one normalises: ``norm_0`` (fin), ``norm_1`` (min(fin, fout)) and, for a block
    with a learned shortcut (fin != fout), ``norm_s`` (fin)."""
    norms = {"norm_0": fin, "norm_1": min(fin, fout)}
    if fin != fout:
        norms["norm_s"] = fin
    return norms


class CGBlock(nn.Module):
    """Conditional Group Block: a SPADE ResNet block whose convolutions are grouped."""

    def __init__(self, fin: int, fout: int, groups: int, label_channels: int, num_classes: int,
                 layout: NormLayout, hidden: int, norm: NormKind, spectral: bool):
        super().__init__()
        norms = cgnorm_channels(fin, fout)
        #: This block's CG-Norms (``norm_0``, ``norm_1``[, ``norm_s``]), in forward order.
        self.norm_names = tuple(norms)
        self.learned_shortcut = "norm_s" in norms
        fmid = norms["norm_1"]

        def cgnorm(ch: int) -> CGNorm:
            return CGNorm(ch, label_channels, num_classes, groups, layout, hidden, norm)

        self.norm_0 = cgnorm(norms["norm_0"])
        self.conv_0 = maybe_spectral(nn.Conv2d(fin, fmid, 3, padding=1, groups=groups), spectral)
        self.norm_1 = cgnorm(fmid)
        self.conv_1 = maybe_spectral(nn.Conv2d(fmid, fout, 3, padding=1, groups=groups), spectral)
        if self.learned_shortcut:
            self.norm_s = cgnorm(norms["norm_s"])
            self.conv_s = maybe_spectral(
                nn.Conv2d(fin, fout, 1, bias=False, groups=groups), spectral)

    def modulations(self, label: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Every CG-Norm's (gamma, beta) for a label map already at this block's size.

        They depend on the label map alone, so a re-roll on an unchanged mask can reuse them.
        """
        return {n: getattr(self, n).modulation(label) for n in self.norm_names}

    def forward(self, x: torch.Tensor, label: torch.Tensor | None,
                mods: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
        if mods is None:
            mods = self.modulations(fit_label(label, x))
        if self.learned_shortcut:
            x_s = self.conv_s(self.norm_s(x, None, mods["norm_s"]))
        else:
            x_s = x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, None, mods["norm_0"]), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, None, mods["norm_1"]), 0.2))
        return x_s + dx
