"""The network (:class:`ParserNet`), its ONNX export and the ONNX Runtime twin (:class:`OnnxParserNet`).

A MobileNetV2-style encoder (inverted residuals with depthwise 3x3 convolutions and BatchNorm,
strides 2..32) with a global-context branch and an FPN-style decoder back to stride 4.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .. import hub
from ..backends.onnx import session_options
from ..hub import CheckpointError
from .config import ONNX_NAME, ParserConfig, resolve_parser_dir

logger = logging.getLogger(__name__)


def _conv_bn(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """1x1 expand -> depthwise 3x3 (stride) -> 1x1 project, residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        mid = cin * expansion
        layers = [_conv_bn(cin, mid)] if expansion != 1 else []
        layers += [_conv_bn(mid, mid, 3, stride, groups=mid), _conv_bn(mid, cout, act=False)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class SeparableConv(nn.Sequential):
    """Depthwise 3x3 + pointwise 1x1, each with BatchNorm and ReLU (the decoder's refinement)."""

    def __init__(self, channels: int):
        super().__init__(_conv_bn(channels, channels, 3, groups=channels), _conv_bn(channels, channels))


class ParserNet(nn.Module):
    """Image in [-1, 1] (N, 3, H, W) -> class logits (N, C, H, W); H, W multiples of 32."""

    def __init__(self, config: ParserConfig):
        super().__init__()
        self.config = config
        c = config
        self.stem = _conv_bn(3, c.stem, 3, 2)
        stages = []
        cin = c.stem
        for width, depth in zip(c.widths, c.depths):
            blocks = [InvertedResidual(cin if i == 0 else width, width, 2 if i == 0 else 1, c.expansion)
                      for i in range(depth)]
            stages.append(nn.Sequential(*blocks))
            cin = width
        self.stages = nn.ModuleList(stages)
        # Global context: a person spans the whole frame, so the coarsest level sees the image mean.
        self.context = nn.Sequential(nn.Conv2d(c.widths[-1], c.decoder, 1), nn.ReLU(inplace=True))
        self.lateral = nn.ModuleList(_conv_bn(w, c.decoder) for w in c.widths)
        self.refine = nn.ModuleList(SeparableConv(c.decoder) for _ in c.widths[:-1])
        self.dropout = nn.Dropout2d(c.dropout)
        self.classifier = nn.Conv2d(c.decoder, c.num_classes, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.classifier.weight, std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        p = self.lateral[-1](feats[-1]) + self.context(feats[-1].mean((2, 3), keepdim=True))
        for i in range(len(feats) - 2, -1, -1):
            lat = self.lateral[i](feats[i])
            p = lat + F.interpolate(p, size=lat.shape[-2:], mode="bilinear", align_corners=False)
            p = self.refine[i](p)
        logits = self.classifier(self.dropout(p))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    # -- persistence ---------------------------------------------------------------------
    def save_pretrained(self, folder: str | os.PathLike, metadata: dict[str, str] | None = None) -> list[Path]:
        """Write ``config.json`` + ``model.safetensors`` (float32). Returns the files."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.save(folder / hub.CONFIG_NAME)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        meta = {"format": "pt", "config": self.config.to_json(), **(metadata or {})}
        tmp = folder / (hub.WEIGHTS_NAME + ".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, folder / hub.WEIGHTS_NAME)
        return [folder / hub.CONFIG_NAME, folder / hub.WEIGHTS_NAME]

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike | None = None,
                        revision: str | None = None) -> ParserNet:
        """Strict load of a parser folder or Hub repo id (``None``: ``$SMIS_PARSER`` or the shipped one)."""
        folder = resolve_parser_dir(name_or_path, revision)
        config = ParserConfig.load(folder / hub.CONFIG_NAME)
        if not (folder / hub.WEIGHTS_NAME).is_file():
            raise CheckpointError(
                f"{folder} has a parser config.json but no {hub.WEIGHTS_NAME}; copy the weights next to it "
                "or train them with `python -m train.human_parser`")
        net = cls(config)
        hub.load_into(net, hub.load_state(folder), str(folder))
        return net.eval()


def fuse_batchnorm(net: ParserNet) -> ParserNet:
    """An eval-mode copy of ``net`` with every BatchNorm folded into the convolution before it.

    Same outputs (to float rounding) with half the layers; for inference only (the copy cannot
    be saved as a parser folder: its state dict has other names).
    """
    fused = copy.deepcopy(net).eval()
    for m in fused.modules():
        if isinstance(m, nn.Sequential) and len(m) >= 2 and isinstance(m[0], nn.Conv2d) \
                and isinstance(m[1], nn.BatchNorm2d):
            m[0] = fuse_conv_bn_eval(m[0], m[1])
            m[1] = nn.Identity()
    for p in fused.parameters():
        p.requires_grad_(False)
    return fused


def _has_onnxruntime() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


class OnnxParserNet:
    """``model.onnx`` of a parser folder run by ONNX Runtime; called like :class:`ParserNet`."""

    def __init__(self, folder: str | os.PathLike, device: str = "cpu", threads: int | None = None):
        folder = Path(folder)
        self.config = ParserConfig.load(folder / hub.CONFIG_NAME)
        path = folder / ONNX_NAME
        if not path.is_file():
            raise CheckpointError(
                f"{folder} has no {ONNX_NAME}; export it with `python -m train.human_parser --export-onnx {folder}` "
                "or use backend='torch'")
        import onnxruntime as ort  # optional: the torch parser works without it

        opts = session_options(threads)  # the generator's: no spin-waiting that would slow the next session
        providers = ["CPUExecutionProvider"]
        if str(device).startswith("cuda"):
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types
            raise CheckpointError(f"{path} cannot be loaded by ONNX Runtime ({err}); export it again") from err
        self.providers = self.session.get_providers()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.detach().to("cpu", torch.float32).contiguous().numpy()
        (logits,) = self.session.run(["logits"], {"images": x})
        return torch.from_numpy(logits).to(images.device)


def export_onnx(net: ParserNet, path: str | os.PathLike, batch: int = 2, opset: int | None = None,
                check: bool = True) -> Path:
    """Export ``net`` (eval mode, float32) to ONNX with a dynamic batch axis (dynamo exporter).

    Input ``images`` (N, 3, H, W) in [-1, 1] at the config's size; output ``logits``
    (N, C, H, W). With ``check``, runs ``onnx.checker`` on the file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = net.eval().to("cpu", torch.float32)
    example = torch.zeros(batch, 3, net.config.height, net.config.width)
    # A named batch Dim with a batch-1 example fails the exporter's constraints; Dim.AUTO does not.
    shapes = {"x": {0: torch.export.Dim.AUTO}}
    kwargs: dict[str, Any] = {"opset_version": opset} if opset else {}
    # The exporter's graph passes log every rewrite at INFO; keep a caller's INFO logs readable.
    quiet = [logging.getLogger(n) for n in ("onnxscript", "onnx_ir")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(max(q.level, logging.WARNING))
    try:
        program = torch.onnx.export(net, (example,), dynamo=True, verbose=False, input_names=["images"],
                                    output_names=["logits"], dynamic_shapes=shapes, **kwargs)
    finally:
        for q, lv in zip(quiet, levels):
            q.setLevel(lv)
    program.save(str(path))
    if check:
        import onnx  # optional: only the export needs it

        onnx.checker.check_model(str(path))
    return path
