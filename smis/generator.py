"""The GroupDNet decoder: grouped conv on Z, seven CG-Blocks with decreasing groups, RGB head;
optionally a local enhancer (more CG-Blocks at x2 each, an RGB residual) for coarse-to-fine growth."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import SMISConfig
from .functional import pool_label
from .layers import CGBlock, init_weights

BLOCK_NAMES = ("head_0", "G_middle_0", "G_middle_1", "up_0", "up_1", "up_2", "up_3")


def block_names(config: SMISConfig) -> tuple[str, ...]:
    """Every CG-Block of the generator in forward order (``generator.blocks``): the seven above, then
    ``up_4``... of the enhancer."""
    k = len(config.generator.enhancer_channels)
    return BLOCK_NAMES + tuple(f"up_{4 + i}" for i in range(k))


class Generator(nn.Module):
    """G(Z, M): latent maps (N, 8C, H/64, W/64) + label tensor (N, label_channels, H, W) -> RGB.

    With ``code_layout="global"`` Z is (N, 8C, 1, 1) and is broadcast over the H/64 x W/64 grid.

    The label tensor is the one-hot map (``smis.functional.one_hot``), with instance edges
    interleaved when the config asks for them (``smis.functional.label_input``).

    With ``generator.enhancer_channels`` (pix2pixHD's coarse-to-fine growth) the seven blocks run at
    H / 2^k (:meth:`preview` returns their image) and k more one-group CG-Blocks at x2 each draw a
    residual on that image, upsampled bilinearly: ``tanh(up(rgb_global) + conv_img_hd(x))``.
    ``conv_img_hd`` starts at zero, so weights grown from a k-times smaller model draw that model's
    image upscaled until the enhancer is trained. The codes enter at ``fc`` only, as before: each
    class keeps its code.
    """

    def __init__(self, config: SMISConfig):
        super().__init__()
        self.config = config
        g = config.generator
        c = config.num_classes
        ch = g.channels
        self.fc = nn.Conv2d(config.z_channels * c, ch[0], 3, padding=1, groups=c)
        # Block names follow the reference code so official checkpoints map one-to-one.
        self.block_names = block_names(config)
        for name, (fin, fout, grp) in zip(self.block_names, g.blocks):
            self.add_module(name, CGBlock(
                fin, fout, grp, config.label_channels, c,
                g.norm_layout, g.norm_hidden, g.param_free_norm, g.spectral_norm))
        self.conv_img = nn.Conv2d(ch[-1], 3, 3, padding=1)
        if g.enhancer_channels:
            self.conv_img_hd = nn.Conv2d(g.enhancer_channels[-1], 3, 3, padding=1)
        init_weights(self)
        if g.enhancer_channels:  # the enhancer starts as "no change" on the global generator's image
            nn.init.zeros_(self.conv_img_hd.weight)
            nn.init.zeros_(self.conv_img_hd.bias)

    @property
    def blocks(self) -> list[CGBlock]:
        return [getattr(self, n) for n in self.block_names]

    def block_labels(self, label: torch.Tensor) -> list[torch.Tensor]:
        """The label tensor at each block's size (``config.generator.label_pool``: nearest, max or area)."""
        n, pool = len(self.blocks), self.config.generator.label_pool
        # The last block runs at full size; each earlier one at half the size of the next. The global
        # generator's blocks see the mask as a model of their size would: every f-th pixel, then pooled.
        f = self.config.enhancer_factor
        small = label[:, :, ::f, ::f] if f > 1 else label
        g = len(BLOCK_NAMES)
        return ([pool_label(small, 2 ** (g - 1 - i), pool) for i in range(g)]
                + [pool_label(label, 2 ** (n - 1 - i), pool) for i in range(g, n)])

    def label_features(self, label: torch.Tensor) -> list[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """All CG-Norm modulations for a label tensor: the part of G that ignores Z.

        Pass the result as ``forward(z, label, label_features=...)`` to re-render the same mask
        with other codes (re-roll, morph) without recomputing it; a batch-1 result broadcasts
        over any batch of codes.
        """
        return [block.modulations(lab) for block, lab in zip(self.blocks, self.block_labels(label))]

    def forward(self, z: torch.Tensor, label: torch.Tensor,
                label_features: list[dict[str, tuple[torch.Tensor, torch.Tensor]]] | None = None) -> torch.Tensor:
        return self._run(z, label, label_features, preview=False)

    def preview(self, z: torch.Tensor, label: torch.Tensor,
                label_features: list[dict[str, tuple[torch.Tensor, torch.Tensor]]] | None = None) -> torch.Tensor:
        """The global generator's image, at H / 2^k (k enhancer blocks; without an enhancer: ``forward``).

        The same codes and label map as ``forward`` (full size, or its label features), a fraction of
        the work: a quick look while a mask is being painted.
        """
        return self._run(z, label, label_features, preview=True)

    def _run(self, z: torch.Tensor, label: torch.Tensor,
             label_features: list[dict[str, tuple[torch.Tensor, torch.Tensor]]] | None, preview: bool) -> torch.Tensor:
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
            m = self.config.size_multiple
            z = z.expand(-1, -1, *label[:, :1, ::m, ::m].shape[-2:])
        x = self.fc(z)
        labels = self.block_labels(label) if label_features is None else None
        num_global = len(BLOCK_NAMES)
        blocks = self.blocks[:num_global] if preview else self.blocks
        rgb = None
        for i, block in enumerate(blocks):
            if i > 0:  # nearest x2 upsamplings: before every block but the head
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = block(x, None if labels is None else labels[i], None if label_features is None else label_features[i])
            if i == num_global - 1:
                rgb = self.conv_img(F.leaky_relu(x, 0.2))
        if len(blocks) == num_global:
            return torch.tanh(rgb)
        rgb = F.interpolate(rgb, scale_factor=float(self.config.enhancer_factor), mode="bilinear",
                            align_corners=False)
        return torch.tanh(rgb + self.conv_img_hd(F.leaky_relu(x, 0.2)))
