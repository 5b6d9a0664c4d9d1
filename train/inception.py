"""InceptionV3 up to its pool3 features (FID / KID), in plain torch with torchvision's parameter names.

Loads pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (the TensorFlow FID network) or
torchvision's ``inception_v3_google-0cc3c7bd.pth`` without importing torchvision; the shared
loading helpers and :class:`~train.features.FeatureWeightsUnavailable` are :mod:`train.features`'.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .features import FrozenFeatureNet, cached_or_downloaded, load_matching, load_state_file

logger = logging.getLogger(__name__)

INCEPTION_TORCHVISION_URL = "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth"
INCEPTION_FID_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                     "pt_inception-2015-12-05-6726825d.pth")
INCEPTION_HINT = ("pass --inception-weights PATH (pytorch-fid's pt_inception-2015-12-05-6726825d.pth, or "
                  "torchvision's inception_v3_google-0cc3c7bd.pth), or leave it out to get the substitute "
                  "Frechet distance on VGG-relu3 features")


class _BasicConv(nn.Module):
    def __init__(self, cin: int, cout: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: torch.Tensor, tf_style: bool) -> torch.Tensor:
    # TensorFlow's average pool (the FID network) does not count the zero padding.
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=not tf_style)


class _MixedA(nn.Module):
    """35x35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | pool-1x1 (torchvision ``InceptionA`` names)."""

    def __init__(self, cin: int, pool_features: int, tf_style: bool):
        super().__init__()
        self.tf_style = tf_style
        self.branch1x1 = _BasicConv(cin, 64, 1)
        self.branch5x5_1 = _BasicConv(cin, 48, 1)
        self.branch5x5_2 = _BasicConv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _BasicConv(cin, 64, 1)
        self.branch3x3dbl_2 = _BasicConv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _BasicConv(96, 96, 3, padding=1)
        self.branch_pool = _BasicConv(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool(x, self.tf_style)),
        ], 1)


class _MixedB(nn.Module):
    """35 -> 17 reduction (torchvision ``InceptionB``)."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = _BasicConv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _BasicConv(cin, 64, 1)
        self.branch3x3dbl_2 = _BasicConv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _BasicConv(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2),
        ], 1)


class _MixedC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (torchvision ``InceptionC``)."""

    def __init__(self, cin: int, c7: int, tf_style: bool):
        super().__init__()
        self.tf_style = tf_style
        self.branch1x1 = _BasicConv(cin, 192, 1)
        self.branch7x7_1 = _BasicConv(cin, c7, 1)
        self.branch7x7_2 = _BasicConv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _BasicConv(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _BasicConv(cin, c7, 1)
        self.branch7x7dbl_2 = _BasicConv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _BasicConv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _BasicConv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _BasicConv(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _BasicConv(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            d = layer(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool(x, self.tf_style))], 1)


class _MixedD(nn.Module):
    """17 -> 8 reduction (torchvision ``InceptionD``)."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = _BasicConv(cin, 192, 1)
        self.branch3x3_2 = _BasicConv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _BasicConv(cin, 192, 1)
        self.branch7x7x3_2 = _BasicConv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _BasicConv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _BasicConv(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class _MixedE(nn.Module):
    """8x8 block with split 1x3 / 3x1 branches (torchvision ``InceptionE``).

    ``pool``: ``"avg"`` (torchvision), ``"avg_tf"`` (FID network's Mixed_7b) or ``"max"`` (FID
    network's Mixed_7c, a quirk of the TensorFlow graph that FID is defined on).
    """

    def __init__(self, cin: int, pool: str):
        super().__init__()
        self.pool = pool
        self.branch1x1 = _BasicConv(cin, 320, 1)
        self.branch3x3_1 = _BasicConv(cin, 384, 1)
        self.branch3x3_2a = _BasicConv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _BasicConv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _BasicConv(cin, 448, 1)
        self.branch3x3dbl_2 = _BasicConv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _BasicConv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _BasicConv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _BasicConv(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        if self.pool == "max":
            pooled = F.max_pool2d(x, 3, stride=1, padding=1)
        else:
            pooled = _avg_pool(x, self.pool == "avg_tf")
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d),
            self.branch_pool(pooled),
        ], 1)


class InceptionV3Pool(FrozenFeatureNet):
    """InceptionV3 up to the 2048-d global average pool ("pool3"), the FID feature.

    ``variant="fid"``: the TensorFlow FID network as ported by pytorch-fid
    (``pt_inception-2015-12-05-6726825d.pth``; TF-style average pools, max-pool in Mixed_7c) —
    use it for numbers comparable with published FIDs. ``variant="torchvision"``: torchvision's
    ``inception_v3_google-0cc3c7bd.pth``. Parameter names are torchvision's (``Conv2d_1a_3x3.conv
    .weight``, ``Mixed_7c.branch_pool.bn.running_var``...); ``fc`` and ``AuxLogits`` are ignored.

    ``forward(x)`` takes images in [-1, 1] (N, 3, H, W), resizes them bilinearly to 299x299 (as
    pytorch-fid does) and returns (N, 2048) features.

    Verified with random weights (the real checkpoints are not available here): the
    ``torchvision`` variant gives exactly torchvision 0.28's ``inception_v3`` pool features; the
    ``fid`` variant matches pytorch-fid 0.3.0's ``InceptionV3([3])`` to 3e-5 (features of size ~13),
    and its parameter names are exactly pytorch-fid's checkpoint layout minus ``fc``. No FID was
    compared with a published value.
    """

    name = "inception-v3-pool3"
    layer_names = ("pool3",)

    def __init__(self, variant: str = "fid"):
        super().__init__()
        if variant not in ("fid", "torchvision"):
            raise ValueError(f"unknown Inception variant {variant!r}; use 'fid' or 'torchvision'")
        self.variant = variant
        tf = variant == "fid"
        self.Conv2d_1a_3x3 = _BasicConv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _BasicConv(32, 32, 3)
        self.Conv2d_2b_3x3 = _BasicConv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _BasicConv(64, 80, 1)
        self.Conv2d_4a_3x3 = _BasicConv(80, 192, 3)
        self.Mixed_5b = _MixedA(192, 32, tf)
        self.Mixed_5c = _MixedA(256, 64, tf)
        self.Mixed_5d = _MixedA(288, 64, tf)
        self.Mixed_6a = _MixedB(288)
        self.Mixed_6b = _MixedC(768, 128, tf)
        self.Mixed_6c = _MixedC(768, 160, tf)
        self.Mixed_6d = _MixedC(768, 160, tf)
        self.Mixed_6e = _MixedC(768, 192, tf)
        self.Mixed_7a = _MixedD(768)
        self.Mixed_7b = _MixedE(1280, "avg_tf" if tf else "avg")
        self.Mixed_7c = _MixedE(2048, "max" if tf else "avg")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean((2, 3))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, variant: str | None = None,
                        download: bool = False) -> InceptionV3Pool:
        """Weights from ``path`` (variant detected from ``fc``: 1008 classes = FID network), else cache/download."""
        if path is None:
            url = INCEPTION_TORCHVISION_URL if variant == "torchvision" else INCEPTION_FID_URL
            state = cached_or_downloaded(url, INCEPTION_HINT, download)
        else:
            state = load_state_file(path, INCEPTION_HINT)
        if variant is None:
            variant = inception_variant(state)
            logger.info("Inception checkpoint %s: %s variant", path or "(cache)", variant)
        net = cls(variant)
        load_matching(net, state, f"an InceptionV3 checkpoint ({variant} variant)", INCEPTION_HINT)
        return net.freeze()


def inception_variant(state: Mapping[str, torch.Tensor]) -> str:
    """``"fid"`` for pytorch-fid's checkpoint (a 1008-class ``fc``), else ``"torchvision"``."""
    fc = state.get("fc.weight")
    return "fid" if fc is not None and fc.shape[0] == 1008 else "torchvision"
