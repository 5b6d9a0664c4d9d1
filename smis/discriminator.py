"""SPADE's multi-scale PatchGAN discriminator (training only)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import SMISConfig
from .layers import init_weights, maybe_spectral, param_free_norm


class PatchDiscriminator(nn.Module):
    """4x4 convs, nf 64 -> 512, spectral norm + InstanceNorm, LReLU(0.2); returns every feature."""

    def __init__(self, in_channels: int, ndf: int, num_layers: int, norm: str, spectral: bool):
        super().__init__()
        layers: list[nn.Module] = [nn.Sequential(
            nn.Conv2d(in_channels, ndf, 4, stride=2, padding=2), nn.LeakyReLU(0.2))]
        nf = ndf
        for n in range(1, num_layers):
            nf_prev, nf = nf, min(nf * 2, 512)
            stride = 1 if n == num_layers - 1 else 2
            conv = nn.Conv2d(nf_prev, nf, 4, stride=stride, padding=2, bias=norm == "none")
            layers.append(nn.Sequential(
                maybe_spectral(conv, spectral), param_free_norm(norm, nf), nn.LeakyReLU(0.2)))
        layers.append(nn.Sequential(nn.Conv2d(nf, 1, 4, stride=1, padding=2)))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return feats


class MultiscaleDiscriminator(nn.Module):
    """D(M, X): label tensor and image at ``num_scales`` resolutions (avg-pool 3/2 between)."""

    def __init__(self, config: SMISConfig):
        super().__init__()
        d = config.discriminator
        in_ch = config.label_channels + 3
        self.scales = nn.ModuleList(
            PatchDiscriminator(in_ch, d.ndf, d.num_layers, d.norm, d.spectral_norm)
            for _ in range(d.num_scales))
        init_weights(self)

    def forward(self, label: torch.Tensor, image: torch.Tensor) -> list[list[torch.Tensor]]:
        """Per scale, the list of layer outputs; the last one is the patch prediction."""
        x = torch.cat([label, image], dim=1)
        outs = []
        for i, disc in enumerate(self.scales):
            if i:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            outs.append(disc(x))
        return outs
