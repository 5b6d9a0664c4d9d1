"""The group encoder: class-split input, grouped convs, mean and log-variance maps."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import SMISConfig
from .functional import split_and_zoom
from .layers import init_weights, maybe_spectral, param_free_norm


class Encoder(nn.Module):
    """E(X, M) -> (mu, logvar), each (N, 8C, H/64, W/64), or (N, 8C, 1, 1) for global codes.

    Every convolution has ``groups = C`` and the input is the photo split by class, so class c's
    code depends on class c's pixels alone. With ``code_layout="global"`` the two maps are
    averaged over the grid: one Gaussian per class. A model with a local enhancer reads the photo
    at its global generator's size (``config.global_size``): the codes are the global generator's.
    """

    def __init__(self, config: SMISConfig):
        super().__init__()
        self.config = config
        e = config.encoder
        c = config.num_classes
        widths = (3 * c, *e.channels)
        layers = []
        for fin, fout in zip(widths[:-1], widths[1:]):
            # Bias is dropped before a normalisation (it would be cancelled), as in SPADE.
            conv = nn.Conv2d(fin, fout, 3, stride=2, padding=1, groups=c, bias=e.norm == "none")
            layers.append(nn.Sequential(maybe_spectral(conv, e.spectral_norm),
                                        param_free_norm(e.norm, fout)))
        self.layers = nn.ModuleList(layers)
        zc = config.z_channels * c
        self.fc_mu = nn.Conv2d(widths[-1], zc, 3, padding=1, groups=c)
        self.fc_var = nn.Conv2d(widths[-1], zc, 3, padding=1, groups=c)
        init_weights(self)

    def forward(self, image: torch.Tensor, onehot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``image`` (N, 3, H, W) in [-1, 1]; ``onehot`` (N, C, H, W) without edge channels."""
        f = self.config.enhancer_factor
        if f > 1:  # box-filtered photo, nearest mask (as a dataset packed at the smaller size)
            image, onehot = F.avg_pool2d(image, f), onehot[:, :, ::f, ::f]
        x = split_and_zoom(image, onehot)
        for layer in self.layers:
            x = F.leaky_relu(layer(x), 0.2)
        mu, logvar = self.fc_mu(x), self.fc_var(x)
        if self.config.code_layout == "global":
            mu, logvar = mu.mean((2, 3), keepdim=True), logvar.mean((2, 3), keepdim=True)
        return mu, logvar
