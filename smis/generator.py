"""The GroupDNet decoder: grouped conv on Z, seven CG-Blocks with decreasing groups, RGB head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import SIZE_MULTIPLE, SMISConfig
from .functional import pool_label
from .layers import CGBlock, init_weights

BLOCK_NAMES = ("head_0", "G_middle_0", "G_middle_1", "up_0", "up_1", "up_2", "up_3")


class Generator(nn.Module):
    """G(Z, M): latent maps (N, 8C, H/64, W/64) + label tensor (N, label_channels, H, W) -> RGB.

    With ``code_layout="global"`` Z is (N, 8C, 1, 1) and is broadcast over the H/64 x W/64 grid.

    The label tensor is the one-hot map (``smis.functional.one_hot``), with instance edges
    interleaved when the config asks for them (``smis.functional.label_input``).
    """

    def __init__(self, config: SMISConfig):
        super().__init__()
        self.config = config
        g = config.generator
        c = config.num_classes
        ch = g.channels
        self.fc = nn.Conv2d(config.z_channels * c, ch[0], 3, padding=1, groups=c)
        # Block names follow the reference code so official checkpoints map one-to-one.
        for i, name in enumerate(BLOCK_NAMES):
            self.add_module(name, CGBlock(
                ch[i], ch[i + 1], g.groups[i], config.label_channels, c,
                g.norm_layout, g.norm_hidden, g.param_free_norm, g.spectral_norm))
        self.conv_img = nn.Conv2d(ch[-1], 3, 3, padding=1)
        init_weights(self)

    @property
    def blocks(self) -> list[CGBlock]:
        return [getattr(self, n) for n in BLOCK_NAMES]

    def block_labels(self, label: torch.Tensor) -> list[torch.Tensor]:
        """The label tensor at each block's size (``config.generator.label_pool``: nearest, max or area)."""
        n = len(self.blocks)
        # The last block runs at full size; each earlier one at half the size of the next.
        return [pool_label(label, 2 ** (n - 1 - i), self.config.generator.label_pool) for i in range(n)]

    def label_features(self, label: torch.Tensor) -> list[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """All CG-Norm modulations for a label tensor: the part of G that ignores Z.

        Pass the result as ``forward(z, label, label_features=...)`` to re-render the same mask
        with other codes (re-roll, morph) without recomputing it; a batch-1 result broadcasts
        over any batch of codes.
        """
        return [block.modulations(lab) for block, lab in zip(self.blocks, self.block_labels(label))]

    def forward(self, z: torch.Tensor, label: torch.Tensor,
                label_features: list[dict[str, tuple[torch.Tensor, torch.Tensor]]] | None = None) -> torch.Tensor:
        h, w = label.shape[-2:]
        grid = self.config.latent_grid(h, w)
        if z.shape[-2:] != grid:
            raise ValueError(
                f"latent grid {tuple(z.shape[-2:])} does not match a {h}x{w} label map "
                f"(expected {grid})"
            )
        if self.config.code_layout == "global":
            # One vector per class, broadcast over the base grid; the grid size is read off a strided
            # slice of the label map, so exported graphs get no shape arithmetic.
            z = z.expand(-1, -1, *label[:, :1, ::SIZE_MULTIPLE, ::SIZE_MULTIPLE].shape[-2:])
        x = self.fc(z)
        labels = self.block_labels(label) if label_features is None else None
        for i, block in enumerate(self.blocks):
            if i > 0:  # six nearest x2 upsamplings: before every block but the head
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = block(x, None if labels is None else labels[i], None if label_features is None else label_features[i])
        x = self.conv_img(F.leaky_relu(x, 0.2))
        return torch.tanh(x)
