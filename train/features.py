"""Fixed feature networks for the perceptual loss and the metrics, in plain torch.

Every network here keeps torchvision's (or the reference package's) parameter names, so the
original checkpoint files load unchanged, without importing torchvision (which cannot be
imported next to a CPU-only torch):

- :class:`VGG19Features`: torchvision ``vgg19-dcbb9e9d.pth`` -> relu1_1 ... relu5_1 (perceptual loss);
- :class:`NormalisedVGG19Relu31`: the shipped ``assets/vgg19_normalised_relu3_1.safetensors`` ->
  relu1_1 ... relu3_1 (partial perceptual loss, substitute perceptual distance);
- :class:`LPIPSAlex`: torchvision ``alexnet-owt-7be5be79.pth`` + lpips' ``weights/v0.1/alex.pth``
  -> the five LPIPS taps and their linear heads;
- :class:`train.inception.InceptionV3Pool` (its own file): pytorch-fid's
  ``pt_inception-2015-12-05-6726825d.pth`` or torchvision's ``inception_v3_google-0cc3c7bd.pth``
  -> 2048-d pool3 features (FID / KID).

Every network takes images in [-1, 1] (N, 3, H, W) and does its own input preprocessing.
Weights that cannot be found raise :class:`FeatureWeightsUnavailable` with a message that says
which option to pass. Only :class:`NormalisedVGG19Relu31`'s weights are available offline (they
ship with this package); what was verified for the others is written in each class docstring.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

logger = logging.getLogger(__name__)

ASSETS_DIR = Path(__file__).parent / "assets"
#: The normalised VGG19 (Gatys et al.) truncated at relu3_1, converted to safetensors once.
NORMALISED_VGG19_FILE = ASSETS_DIR / "vgg19_normalised_relu3_1.safetensors"
#: sha256 of the original ``vgg_normalised_conv3_1.pth`` (pietrocarbo/deep-transfer).
NORMALISED_VGG19_SOURCE_SHA256 = "ff8506173d3a17e7b0fbfbff242c00b6827cfbcd7c21852b46806ae6a3fd7b09"

VGG19_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"

VGG_HINT = "pass --vgg-weights PATH (a torchvision vgg19 checkpoint) or switch the loss off"
ALEXNET_HINT = ("pass --alexnet-weights PATH (torchvision's alexnet-owt-7be5be79.pth) and --lpips-weights PATH "
                "(the lpips package's weights/v0.1/alex.pth), or leave both out to use the substitute "
                "VGG-relu3 perceptual distance")
LPIPS_HINT = ("pass --lpips-weights PATH (the lpips package's weights/v0.1/alex.pth, 6 kB, BSD licence) "
              "together with --alexnet-weights PATH")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FeatureWeightsUnavailable(RuntimeError):
    """Pretrained weights of a fixed feature network could not be found, read or matched."""


# ---------------------------------------------------------------------------------------------
# Reading checkpoint files
# ---------------------------------------------------------------------------------------------
def load_state_file(path: str | os.PathLike, hint: str) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a ``torch.save`` file (``weights_only=True``).

    A checkpoint that wraps its tensors in ``{"state_dict": ...}`` is unwrapped. Any failure is a
    :class:`FeatureWeightsUnavailable` ending with ``hint``.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FeatureWeightsUnavailable(f"weights file {p} does not exist; {hint}")
    try:
        if p.suffix == ".safetensors":
            state = load_file(str(p))
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # any reader error means "not usable weights"
        raise FeatureWeightsUnavailable(f"could not read weights file {p} ({err}); {hint}") from err
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FeatureWeightsUnavailable(f"{p} is not a state dict of tensors; {hint}")
    return dict(state)


def cached_or_downloaded(url: str, hint: str, download: bool = True) -> dict[str, torch.Tensor]:
    """torchvision's own place for ``url``'s file (``$TORCH_HOME/hub/checkpoints``), else a download.

    The download goes through ``torch.hub.load_state_dict_from_url`` (hash-checked, into that same
    cache). Offline, or with ``download=False`` and no cached file, this raises
    :class:`FeatureWeightsUnavailable`.
    """
    filename = url.rsplit("/", 1)[-1]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if cached.is_file():
        logger.info("loading %s from the torch hub cache", cached)
        return load_state_file(cached, hint)
    if not download:
        raise FeatureWeightsUnavailable(f"{filename} is not in the torch hub cache ({cached.parent}); {hint}")
    try:
        logger.info("downloading %s", url)
        state = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=True, check_hash=True,
                                                   weights_only=True)
    except Exception as err:  # offline, proxy, hash mismatch: all mean "unavailable"
        raise FeatureWeightsUnavailable(
            f"{filename} is not in the torch hub cache ({cached.parent}) and could not be downloaded "
            f"({type(err).__name__}: {err}); {hint}") from err
    return dict(state)


def load_matching(module: nn.Module, state: Mapping[str, torch.Tensor], what: str, hint: str) -> None:
    """Strictly load the tensors ``module`` needs from ``state``; extra keys (classifier...) are ignored."""
    want = module.state_dict()
    # Checkpoints saved before torch 0.4.1 (the FID Inception among them, possibly) have no
    # BatchNorm ``num_batches_tracked``; it is unused in eval mode, so keep the module's own.
    state = {**{k: v for k, v in want.items() if k.endswith("num_batches_tracked")}, **state}
    missing = [k for k in want if k not in state]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
             for k, v in want.items() if k in state and state[k].shape != v.shape]
    if missing or wrong:
        problems = []
        if missing:
            problems.append(f"missing {len(missing)} tensors (e.g. {', '.join(missing[:3])})")
        if wrong:
            problems.append(f"wrong shapes: {'; '.join(wrong[:3])}")
        raise FeatureWeightsUnavailable(f"this is not {what}: {' and '.join(problems)}; {hint}")
    module.load_state_dict({k: state[k].to(want[k].dtype) for k in want}, strict=True)
    ignored = len(set(state) - set(want))
    if ignored:
        logger.debug("%s: ignored %d extra tensors", what, ignored)


class FrozenFeatureNet(nn.Module):
    """A fixed network: no gradients for its parameters, always in eval mode.

    Gradients still flow to the *input* (the perceptual loss needs them).
    """

    #: A short name used in metric reports.
    name: str = "features"
    #: Names of the outputs of :meth:`forward`, in order.
    layer_names: tuple[str, ...] = ()

    def freeze(self) -> FrozenFeatureNet:
        self.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> FrozenFeatureNet:  # always eval, whatever ``mode`` says
        return super().train(False)

    def channel_weights(self) -> list[torch.Tensor] | None:
        """Per-layer channel weights for an LPIPS-style distance; ``None``: uniform (all ones)."""
        return None


# ---------------------------------------------------------------------------------------------
# VGG19 (torchvision layout) for the perceptual loss
# ---------------------------------------------------------------------------------------------
#: torchvision's VGG19 ``features`` up to relu5_1: conv widths and "M" for max-pooling.
_VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512)


def _vgg_layers(cfg: tuple, padding_mode: str = "zeros", ceil_mode: bool = False) -> list[nn.Module]:
    layers: list[nn.Module] = []
    cin = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=ceil_mode))
        else:
            layers += [nn.Conv2d(cin, int(v), 3, padding=1, padding_mode=padding_mode), nn.ReLU(inplace=True)]
            cin = int(v)
    return layers


def _tapped(features: nn.Sequential, taps: Iterable[int], x: torch.Tensor) -> list[torch.Tensor]:
    """Run ``features`` and keep the outputs of the layers whose index is in ``taps``."""
    out = []
    for i, layer in enumerate(features):
        x = layer(x)
        if i in taps:
            out.append(x)
    return out


class VGG19Features(FrozenFeatureNet):
    """torchvision's VGG19 ``features.0`` ... ``features.29`` (relu5_1), ImageNet normalisation inside.

    ``forward(x)`` takes images in [-1, 1] and returns ``[relu1_1, relu2_1, relu3_1, relu4_1,
    relu5_1]`` (the SPADE / pix2pixHD perceptual loss uses them with weights 1/32, 1/16, 1/8,
    1/4, 1). Loads torchvision's ``vgg19-dcbb9e9d.pth`` (keys ``features.N.weight/bias``; the
    classifier and the layers after relu5_1 are ignored).

    Verified: with the same (random) weights, the five outputs are identical to torchvision 0.28's
    ``vgg19().features`` taps (``tests/test_metrics.py::test_parity_with_torchvision_models``, run
    where torchvision imports). The real ImageNet checkpoint was not available to load here.
    """

    name = "vgg19"
    layer_names = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
    #: Indices in ``features`` of the ReLUs returned by :meth:`forward`.
    taps = (1, 6, 11, 20, 29)

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(*_vgg_layers(_VGG19_CFG))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = ((x + 1) / 2 - self.mean) / self.std
        return _tapped(self.features, self.taps, x)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, download: bool = True) -> VGG19Features:
        """torchvision VGG19 ImageNet weights from ``path`` (.pth or .safetensors).

        With ``path=None``: torchvision's cache (``$TORCH_HOME/hub/checkpoints/vgg19-dcbb9e9d.pth``,
        by default under ``~/.cache/torch``), else a download attempt (``download=True``).
        Raises :class:`FeatureWeightsUnavailable` when neither works.
        """
        what = "a torchvision vgg19 checkpoint"
        state = load_state_file(path, VGG_HINT) if path is not None else cached_or_downloaded(
            VGG19_URL, VGG_HINT, download)
        net = cls()
        load_matching(net, state, what, VGG_HINT)
        return net.freeze()


# ---------------------------------------------------------------------------------------------
# The normalised VGG19 to relu3_1 (the only feature weights available offline)
# ---------------------------------------------------------------------------------------------
class NormalisedVGG19Relu31(FrozenFeatureNet):
    """Gatys et al.'s normalised VGG19, conv1_1 ... conv3_1, as used by AdaIN/WCT style transfer.

    Not torchvision's VGG19: the input goes through a fixed 1x1 conv (``preprocess``: RGB in
    [0, 1] -> BGR x 255 - Caffe mean 103.939/116.779/123.68), every 3x3 conv pads by reflection,
    max-pooling uses ``ceil_mode``, and each filter was rescaled so its mean ImageNet activation is
    about 1 (feature magnitudes differ from torchvision's). ``features.N`` indices match
    torchvision's VGG19 (conv1_1 = ``features.0``, conv3_1 = ``features.10``).

    ``forward(x)`` takes images in [-1, 1] (at least 5x5: reflection padding) and returns
    ``[relu1_1, relu2_1, relu3_1]``: a partial
    perceptual loss where full VGG19 weights are absent, and the substitute perceptual distance
    (:func:`train.metrics.perceptual_distance`), which is *not* LPIPS.

    Verified here: the shipped weights equal the original file (sha256 in
    :data:`NORMALISED_VGG19_SOURCE_SHA256`) tensor for tensor, and relu1_1 matches a hand
    computation (BGR, Caffe mean, reflection padding) in ``tests/test_metrics.py``.
    """

    name = "vgg19-normalised-relu3_1"
    layer_names = ("relu1_1", "relu2_1", "relu3_1")
    taps = (1, 6, 11)

    def __init__(self) -> None:
        super().__init__()
        self.preprocess = nn.Conv2d(3, 3, 1)
        self.features = nn.Sequential(*_vgg_layers((64, 64, "M", 128, 128, "M", 256), "reflect", ceil_mode=True))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.preprocess((x + 1) / 2)
        return _tapped(self.features, self.taps, x)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None) -> NormalisedVGG19Relu31:
        """The shipped weights (``path=None``) or a file in the shipped (safetensors) layout."""
        hint = f"the file shipped with this package is {NORMALISED_VGG19_FILE}; reinstall it if it is missing"
        state = load_state_file(path if path is not None else NORMALISED_VGG19_FILE, hint)
        net = cls()
        load_matching(net, state, "the normalised VGG19 (to relu3_1)", hint)
        return net.freeze()


#: The name this network had in the project's issue tracker.
NormalisedVGG19To31 = NormalisedVGG19Relu31

# Original AdaIN/WCT Sequential index -> our key prefix (see the weights' README).
_NORMALISED_VGG19_KEYS = {"0": "preprocess", "2": "features.0", "5": "features.2", "9": "features.5",
                          "12": "features.7", "16": "features.10"}


def convert_normalised_vgg19(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Convert ``vgg_normalised_conv3_1.pth`` (AdaIN/WCT layout) to the shipped safetensors file.

    Run once to make ``train/assets/vgg19_normalised_relu3_1.safetensors``; kept for provenance.
    The source's sha256 goes into the file's metadata.
    """
    src = Path(src)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    state = torch.load(src, map_location="cpu", weights_only=True)
    out = {}
    for key, tensor in state.items():
        index, _, kind = key.partition(".")
        if index not in _NORMALISED_VGG19_KEYS:
            raise ValueError(f"unexpected key {key!r} in {src}: not the normalised VGG19 to relu3_1")
        out[f"{_NORMALISED_VGG19_KEYS[index]}.{kind}"] = tensor.float().contiguous()
    NormalisedVGG19Relu31().load_state_dict(out, strict=True)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(dst), metadata={
        "format": "smis-feature-net/1", "network": NormalisedVGG19Relu31.name,
        "source": "pietrocarbo/deep-transfer@30b40b175d0d4afa19789fd57b5439aed125c1a5:"
                  "models/autoencoder_vgg19/vgg19_3/vgg_normalised_conv3_1.pth",
        "source_sha256": digest,
        "license": "Apache-2.0 (deep-transfer); derived from Oxford VGG19 (Simonyan & Zisserman), CC BY 4.0",
    })
    return dst


# ---------------------------------------------------------------------------------------------
# LPIPS: AlexNet (torchvision layout) + the lpips package's v0.1 linear heads
# ---------------------------------------------------------------------------------------------
class AlexNetFeatures(FrozenFeatureNet):
    """torchvision's AlexNet ``features.0`` ... ``features.11``; returns the five ReLU outputs.

    Takes the input already scaled the way its user wants (LPIPS scales it itself, see
    :class:`LPIPSAlex`). Verified: the parameter names equal torchvision 0.28's ``alexnet``
    ``features.*`` and the taps lpips' slices (1, 4, 7, 9, 11); the real ImageNet checkpoint was not
    available here.
    """

    name = "alexnet"
    layer_names = ("relu1", "relu2", "relu3", "relu4", "relu5")
    taps = (1, 4, 7, 9, 11)
    channels = (64, 192, 384, 256, 256)

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return _tapped(self.features, self.taps, x)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, download: bool = False) -> AlexNetFeatures:
        """torchvision ``alexnet-owt-7be5be79.pth`` from ``path``, else the torch hub cache / a download."""
        state = load_state_file(path, ALEXNET_HINT) if path is not None else cached_or_downloaded(
            ALEXNET_URL, ALEXNET_HINT, download)
        net = cls()
        load_matching(net, state, "a torchvision alexnet checkpoint", ALEXNET_HINT)
        return net.freeze()


class _LinearHead(nn.Module):
    """lpips' ``NetLinLayer``: dropout, then a bias-free 1x1 conv to one channel (``model.1.weight``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))


class LPIPSAlex(FrozenFeatureNet):
    """LPIPS v0.1 with the AlexNet trunk (the paper's mCSD / mOCD / diversity distance).

    ``forward(x)`` returns AlexNet's five ReLU outputs for images in [-1, 1] after lpips' scaling
    layer; :meth:`channel_weights` returns the learned linear heads, which
    :func:`train.metrics.lpips_distance` applies to the squared differences of unit-normalised
    features. Parameter names: ``net.features.N.*`` (torchvision AlexNet) and ``lin0.model.1.weight``
    ... ``lin4.model.1.weight`` (exactly the lpips package's ``weights/v0.1/alex.pth``).

    Verified: with the real v0.1 heads of lpips 0.1.4 and a random AlexNet trunk, distances equal
    ``lpips.LPIPS(net="alex")``'s to 1e-8 (``test_parity_with_the_lpips_package``, run where lpips
    imports). With the ImageNet trunk (not available here) it is LPIPS v0.1 exactly.
    """

    name = "lpips-alex-v0.1"
    layer_names = AlexNetFeatures.layer_names

    def __init__(self) -> None:
        super().__init__()
        self.net = AlexNetFeatures()
        for i, c in enumerate(AlexNetFeatures.channels):
            self.add_module(f"lin{i}", _LinearHead(c))
        # lpips' ScalingLayer: input in [-1, 1] -> roughly ImageNet-normalised.
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.net((x - self.shift) / self.scale)

    def channel_weights(self) -> list[torch.Tensor]:
        return [getattr(self, f"lin{i}").model[1].weight.view(-1) for i in range(len(self.layer_names))]

    def heads_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if k.startswith("lin")}

    @classmethod
    def from_pretrained(cls, lpips_path: str | os.PathLike, alexnet_path: str | os.PathLike | None = None,
                        download: bool = False) -> LPIPSAlex:
        """Linear heads from ``lpips_path`` and the trunk from ``alexnet_path`` (or cache / download)."""
        net = cls()
        net.net = AlexNetFeatures.from_pretrained(alexnet_path, download)
        heads = load_state_file(lpips_path, LPIPS_HINT)
        holder = nn.Module()
        for i in range(len(AlexNetFeatures.channels)):
            holder.add_module(f"lin{i}", getattr(net, f"lin{i}"))
        load_matching(holder, heads, "the lpips v0.1 alex.pth linear heads", LPIPS_HINT)
        del holder
        return net.freeze()


def find_lpips_heads() -> Path | None:
    """``weights/v0.1/alex.pth`` of an installed lpips package, found without importing it."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        p = Path(root) / "weights" / "v0.1" / "alex.pth"
        if p.is_file():
            return p
    return None


class PooledFeatures(FrozenFeatureNet):
    """Global-average-pooled, concatenated outputs of a multi-layer network: (N, sum of channels).

    The substitute feature for a Frechet distance / KID where no Inception weights exist (name it
    as such wherever it is reported).
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.name = f"pooled-{getattr(net, 'name', type(net).__name__)}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([f.mean((2, 3)) for f in self.net(x)], 1)
