"""GroupDNet -> ONNX: self-describing generator and encoder graphs, checked and compared.

The exported graphs take what a deployer has, not what the networks take:

- ``generator.onnx``: ``labels`` (N, 1, H, W) int64 class ids and ``z`` (N, 8C, H/64, W/64)
  float32 -> ``image`` (N, 3, H, W) float32 in [-1, 1] and ``image_uint8`` (N, H, W, 3) uint8
  (the one-hot, the instance edges and every label resize happen inside the graph);
- ``encoder.onnx``: ``photo`` (N, 3, H, W) float32 in [-1, 1] and ``labels`` (N, 1, H, W) int64
  -> ``mu`` and ``logvar`` (N, 8C, H/64, W/64);
- optionally a pair for one mask rendered many times: ``generator-maps.onnx`` (labels, z -> the
  image and every CG-Norm's scale and shift maps, at the cost of ``generator.onnx``) and
  ``generator-render.onnx`` (z + those maps -> image), so a re-roll on an unchanged mask skips the
  label branch (as ``smis.backends.TorchBackend`` caches it) and a new mask costs no extra pass.

Batch, height and width are dynamic; height and width must be multiples of 64. Before tracing,
the model is copied and simplified for inference: spectral norm is baked into the weights, and the
eval-mode, parameter-free BatchNorm of every CG-Norm is folded into its modulation convs, so the
graph has no power iteration and no BatchNormalization op. Every file carries its config, class
names, palette and latent layout in ``metadata_props`` (the contract: :mod:`smis.onnx_format`).

The TorchScript exporter (``dynamo=False``) is used: on these graphs it is about 4x faster than
the dynamo exporter, gives fewer ops, and handles dynamic height/width without derived-dim
constraints. It traces a 64x64 (one latent cell) example, so export costs little even for the
full presets; every traced shape decision is the same at every size (checked by the tests).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from smis.backends.onnx import make_session
from smis.config import SMISConfig
from smis.functional import fit_label, to_uint8
from smis.generator import block_names
from smis.layers import CGNorm, cgnorm_channels
from smis.model import GroupDNet, bake_spectral_norm
from smis.onnx_format import ALL_GRAPH_KINDS, GRAPH_KEY, graph_file_name, graph_kinds, model_metadata

logger = logging.getLogger(__name__)

#: Opset 17: what ONNX Runtime, TensorRT >= 8.6 and most converters all read.
DEFAULT_OPSET = 17
#: Ops that would mean the simplification failed: BatchNorm left in, or spectral norm's arithmetic
#: on the weights (matrix-vector products, vector norms, square roots). Neither graph needs any.
UNFOLDED_OPS = frozenset({"BatchNormalization", "MatMul", "Gemm", "ReduceL2", "ReduceSumSquare", "ReduceSum",
                          "Sqrt", "Einsum", "LpNormalization"})


# ---------------------------------------------------------------------------------------------
# 1. An owned, inference-only copy: spectral norm baked, BatchNorm folded
# ---------------------------------------------------------------------------------------------

class FoldedCGNorm(nn.Module):
    """CG-Norm with its eval-mode BatchNorm folded into the convs that predict (scale, shift).

    ``norm(x) * (1 + gamma) + beta`` with ``norm(x) = (x - m) * s`` (s = 1/sqrt(var + eps)) is
    ``x * scale + shift`` where scale = s * (1 + gamma) and shift = beta - m * scale. Both are
    linear in the hidden activation, so they come from the gamma / beta convs with rescaled
    weights and biases: the graph loses the BatchNormalization and the ``1 +``. (Stacking the two
    convs into one measured no faster on ORT CPU.) Instance norm, which has no running statistics,
    stays an op; ``none`` folds like BatchNorm with m = 0, s = 1.
    """

    def __init__(self, norm: CGNorm):
        super().__init__()
        inner = norm.norm
        gamma, beta = norm.gamma, norm.beta
        ch = gamma.out_channels
        if isinstance(inner, nn.BatchNorm2d):
            if inner.training or inner.running_mean is None or inner.affine:
                raise ValueError("only an eval-mode, parameter-free BatchNorm with running statistics folds")
            s = torch.rsqrt(inner.running_var.double() + inner.eps)
            m = inner.running_mean.double()
            self.norm: nn.Module = nn.Identity()
        else:
            s = torch.ones(ch, dtype=torch.float64)
            m = torch.zeros(ch, dtype=torch.float64)
            self.norm = inner  # InstanceNorm2d or Identity
        wg, bg = gamma.weight.double(), gamma.bias.double()
        wb, bb = beta.weight.double(), beta.bias.double()
        w_scale = s.view(-1, 1, 1, 1) * wg
        b_scale = s * (1 + bg)
        w_shift = wb - m.view(-1, 1, 1, 1) * w_scale
        b_shift = bb - m * b_scale
        self.shared = norm.shared
        self.scale = _conv_like(gamma, w_scale, b_scale)
        self.shift = _conv_like(beta, w_shift, b_shift)

    def modulation(self, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift) for a label map already at the feature size (x-independent)."""
        actv = F.relu(self.shared(label))
        return self.scale(actv), self.shift(actv)

    def forward(self, x: torch.Tensor, label: torch.Tensor | None,
                mod: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """As ``CGNorm.forward``; ``mod`` is this module's own :meth:`modulation` output."""
        if mod is None:
            mod = self.modulation(fit_label(label, x))
        scale, shift = mod
        return self.norm(x) * scale + shift


def _conv_like(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    """A conv with ``conv``'s geometry and the given (float64) weight and bias."""
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                    padding=conv.padding, groups=conv.groups, bias=True)
    with torch.no_grad():
        out.weight.copy_(weight.to(conv.weight.dtype))
        out.bias.copy_(bias.to(conv.weight.dtype))
    return out


def _fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """conv followed by an eval-mode BatchNorm (running statistics) -> one conv with a bias."""
    if bn.training or bn.running_mean is None:
        raise ValueError("only an eval-mode BatchNorm with running statistics folds")
    s = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.affine:
        s = s * bn.weight.double()
    b = conv.bias.double() if conv.bias is not None else torch.zeros_like(s)
    b = (b - bn.running_mean.double()) * s + (bn.bias.double() if bn.affine else 0.0)
    return _conv_like(conv, conv.weight.double() * s.view(-1, 1, 1, 1), b)


def baked_state(model: GroupDNet) -> dict[str, torch.Tensor]:
    """float32 CPU copies of ``model``'s tensors with spectral norm baked into plain ``weight``s.

    Each spectral-normalised weight is read as the eval-mode parametrization computes it (W / sigma
    from the stored singular vectors, no power iteration). Nothing of ``model`` is modified: the
    in-place ``bake_spectral_norm`` would need a model of our own, and building one with spectral
    norm costs its initial power iterations (seconds for the wide presets).
    """
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            state = {k: v for k, v in model.state_dict().items() if ".parametrizations." not in k}
            for name, module in model.named_modules():
                if parametrize.is_parametrized(module, "weight"):
                    state[f"{name}.weight"] = module.weight
            return {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).clone()
                    for k, v in state.items()}
    finally:
        for m, training in modes.items():
            m.training = training


def plain_config(config: SMISConfig) -> SMISConfig:
    """``config`` without spectral norm (for a model whose weights are already normalised)."""
    return config.replace(generator=dataclasses.replace(config.generator, spectral_norm=False),
                          encoder=dataclasses.replace(config.encoder, spectral_norm=False))


def inference_copy(model: GroupDNet) -> GroupDNet:
    """A new float32 CPU GroupDNet computing the same function as ``model`` in eval mode, simplified
    for inference and export: spectral norm baked into the weights, BatchNorm folded away.

    The copy owns its tensors and its config has ``spectral_norm=False`` (the weights are already
    normalised); ``model`` is left untouched.
    """
    copy = GroupDNet(plain_config(model.config))
    copy.load_state_dict(baked_state(model), strict=True)
    copy.eval()
    bake_spectral_norm(copy)  # a no-op unless the config's spectral norm was not honoured above
    for block in copy.generator.blocks:
        for name in block.norm_names:
            setattr(block, name, FoldedCGNorm(getattr(block, name)))
    for i, layer in enumerate(copy.encoder.layers):
        conv, norm = layer[0], layer[1]
        if isinstance(norm, nn.BatchNorm2d):
            copy.encoder.layers[i] = nn.Sequential(_fold_conv_bn(conv, norm), nn.Identity())
    return copy.requires_grad_(False)


# ---------------------------------------------------------------------------------------------
# 2. The graph modules: what a deployer feeds in, what they get back
# ---------------------------------------------------------------------------------------------

def feature_names(config: SMISConfig) -> list[str]:
    """Names of the label-branch tensors (every CG-Norm's scale and shift), in forward order."""
    return [f"{block}.{n}.{part}" for block, (fin, fout, _) in zip(block_names(config), config.generator.blocks)
            for n in cgnorm_channels(fin, fout) for part in ("scale", "shift")]


class _GeneratorPart(nn.Module):
    def __init__(self, model: GroupDNet, dtype: torch.dtype = torch.float32, uint8: bool = True):
        super().__init__()
        self.config = model.config
        self.generator = model.generator
        self.model_label_tensor = model.label_tensor  # a plain attribute: the module is self.generator
        self.dtype = dtype
        self.uint8 = uint8

    def label_tensor(self, labels: torch.Tensor) -> torch.Tensor:
        # No instance map at inference: class boundaries are the edges.
        return self.model_label_tensor(labels, dtype=self.dtype)

    def outputs(self, image: torch.Tensor):
        image = image.float()
        return (image, to_uint8(image)) if self.uint8 else image


class GeneratorGraph(_GeneratorPart):
    """(labels int64 (N, 1, H, W), z (N, 8C, h, w)) -> (image [-1, 1], image_uint8 NHWC)."""

    def forward(self, labels: torch.Tensor, z: torch.Tensor):
        return self.outputs(self.generator(z.to(self.dtype), self.label_tensor(labels)))


def _flat(features: list[dict[str, tuple[torch.Tensor, torch.Tensor]]]) -> tuple[torch.Tensor, ...]:
    """The label branch as the flat tuple the graphs pass around, in :func:`feature_names` order."""
    return tuple(t for block in features for mod in block.values() for t in mod)


class MapsGraph(_GeneratorPart):
    """(labels (L, 1, H, W), z (N, 8C, h, w)) -> the image(s) and every CG-Norm's (scale, shift).

    The first rendering of a mask: the image as ``generator.onnx`` gives it, plus the part of G that
    does not depend on the codes, for :class:`RenderGraph` to reuse on the next re-roll, mix or morph
    of that mask. A label batch of 1 broadcasts over the N codes (L = N: one mask per code).
    Returning the maps costs about nothing beside the image (one pass computes both); running a
    label-only graph and then the render graph cost 1.3-2x the one graph on 2 CPU cores.
    """

    def forward(self, labels: torch.Tensor, z: torch.Tensor):
        label = self.label_tensor(labels)
        features = self.generator.label_features(label)
        image = self.generator(z.to(self.dtype), label, features)
        out = self.outputs(image)
        return (*(out if isinstance(out, tuple) else (out,)), *_flat(features))


class RenderGraph(_GeneratorPart):
    """(z, *label-branch tensors) -> image; label tensors of batch 1 broadcast over N codes."""

    def forward(self, z: torch.Tensor, *features: torch.Tensor):
        it = iter(features)
        feats = [{n: (next(it), next(it)) for n in cgnorm_channels(fin, fout)}
                 for fin, fout, _ in self.config.generator.blocks]
        # The generator reads the label map only for its size check: the last scale map has the
        # output size and stands in for it (no op in the graph).
        return self.outputs(self.generator(z.to(self.dtype), features[-2], feats))


class PreviewGraph(_GeneratorPart):
    """(labels (N, 1, H, W), z) -> the global generator's image at H / 2^k x W / 2^k (a model with a local
    enhancer: ``Generator.preview``), same codes, a fraction of the work."""

    def forward(self, labels: torch.Tensor, z: torch.Tensor):
        return self.outputs(self.generator.preview(z.to(self.dtype), self.label_tensor(labels)))


class EncoderGraph(nn.Module):
    """(photo (N, 3, H, W) in [-1, 1], labels int64 (N, 1, H, W)) -> (mu, logvar)."""

    def __init__(self, model: GroupDNet, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.config = model.config
        self.encoder = model.encoder
        self.model_encode = model.encode  # a plain attribute: the module is self.encoder
        self.dtype = dtype

    def forward(self, photo: torch.Tensor, labels: torch.Tensor):
        mu, logvar = self.model_encode(photo.to(self.dtype), labels)
        return mu.float(), logvar.float()


# ---------------------------------------------------------------------------------------------
# 3. Export
# ---------------------------------------------------------------------------------------------

@dataclass
class ExportResult:
    """What :func:`export_model` wrote."""

    folder: Path
    files: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0


def weights_digest(model: GroupDNet) -> str:
    """sha256 over the config and every tensor (name, dtype, shape, bytes) of ``model``."""
    h = hashlib.sha256(model.config.to_json().encode())
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().to("cpu").contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _example_inputs(net: GroupDNet, kind: str, dtype: torch.dtype, batch: int = 2) -> tuple:
    """Tracing inputs: a small image (one or two latent cells) keeps the traced forward cheap;
    every dimension is declared dynamic, and the traced shape logic is the same at every size.
    (The encoder's last InstanceNorm needs two cells.)"""
    config = net.config
    g = torch.Generator().manual_seed(0)
    m = config.size_multiple
    h, w = m, m * (2 if kind == "encoder" else 1)
    labels = torch.randint(0, config.num_classes, (batch, 1, h, w), generator=g)
    z = torch.randn(batch, *config.latent_shape(h, w), generator=g)
    if kind == "encoder":
        return torch.rand(batch, 3, h, w, generator=g) * 2 - 1, labels
    if kind == "generator_maps":  # one mask, a batch of codes (traces the broadcast)
        return labels[:1], z
    if kind == "generator_render":  # batch-1 label maps broadcast over the batch of codes
        with torch.no_grad():
            label = net.label_tensor(labels[:1], dtype=dtype)
            return (z, *_flat(net.generator.label_features(label)))
    return labels, z




def _io_spec(kind: str, uint8: bool, config: SMISConfig) -> tuple[list[str], list[str], dict[str, dict[int, str]]]:
    img = {0: "batch", 2: "height", 3: "width"}
    grid = ({0: "batch"} if config.code_layout == "global"  # one code per class: 1 x 1, not dynamic
            else {0: "batch", 2: "grid_height", 3: "grid_width"})
    image_out = (["image", "image_uint8"] if uint8 else ["image"])
    image_axes = {"image": img, "image_uint8": {0: "batch", 1: "height", 2: "width"}}
    if kind == "encoder":
        return ["photo", "labels"], ["mu", "logvar"], {"photo": img, "labels": img, "mu": grid, "logvar": grid}
    names = feature_names(config)
    # Label-branch maps: their own batch (1 broadcasts over the codes), one size per block.
    feat_axes = {n: {0: "label_batch", 2: f"{n.split('.')[0]}_height", 3: f"{n.split('.')[0]}_width"}
                 for n in names}
    if kind == "generator":
        return ["labels", "z"], image_out, {"labels": img, "z": grid, **{k: image_axes[k] for k in image_out}}
    if kind == "generator_preview":  # its image is smaller than the labels: its own size names
        small = {"image": {0: "batch", 2: "preview_height", 3: "preview_width"},
                 "image_uint8": {0: "batch", 1: "preview_height", 2: "preview_width"}}
        return ["labels", "z"], image_out, {"labels": img, "z": grid, **{k: small[k] for k in image_out}}
    if kind == "generator_maps":
        return (["labels", "z"], image_out + names,
                {"labels": {**img, 0: "label_batch"}, "z": grid, **feat_axes, **{k: image_axes[k] for k in image_out}})
    if kind == "generator_render":
        return ["z", *names], image_out, {"z": grid, **feat_axes, **{k: image_axes[k] for k in image_out}}
    raise ValueError(f"kind must be one of {', '.join(ALL_GRAPH_KINDS)}, got {kind!r}")


def _metadata(config: SMISConfig, kind: str, precision: str, digest: str, uint8: bool,
              opset: int) -> dict[str, str]:
    ins, outs, _ = _io_spec(kind, uint8, config)
    m = config.size_multiple
    grid = "1, 1" if config.code_layout == "global" else f"H/{m}, W/{m}"
    describe = {
        "labels": "int64 (N, 1, H, W) class ids in [0, C)",
        "z": f"float32 (N, 8C, {grid}); class c owns channels [8c, 8c+8); N(0, 1) at test time",
        "photo": "float32 (N, 3, H, W) RGB in [-1, 1]",
        "image": "float32 (N, 3, H, W) RGB in [-1, 1]",
        "image_uint8": "uint8 (N, H, W, 3) RGB, round((image + 1) * 127.5)",
        "mu": f"float32 (N, 8C, {grid}) means (the codes the pipeline uses)",
        "logvar": f"float32 (N, 8C, {grid}) log-variances",
    }
    for n in feature_names(config):
        describe[n] = f"{'float16' if precision == 'fp16' else 'float32'} CG-Norm {n.rsplit('.', 1)[1]} map of {n}"
    return {
        **model_metadata(config, kind),
        "smis.inputs": json.dumps({k: describe[k] for k in ins}),
        "smis.outputs": json.dumps({k: describe[k] for k in outs}),
        "smis.precision": precision,
        "smis.weights_sha256": digest,
        "smis.exporter": f"torch {torch.__version__}, opset {opset}",
        "smis.folded": "spectral norm baked; BatchNorm folded into the CG-Norm modulation",
    }


def _export_graph(module: nn.Module, args: tuple, path: Path, kind: str, uint8: bool, opset: int) -> None:
    inputs, outputs, axes = _io_spec(kind, uint8, module.config)
    with warnings.catch_warnings():
        # The TorchScript exporter warns that it is deprecated and that traced shape checks are
        # constants; both are expected here (the shape logic is the same for every input size).
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=False, input_names=inputs,
                          output_names=outputs, dynamic_axes=axes, opset_version=opset,
                          do_constant_folding=True)


def export_graph(model: GroupDNet, path: str | os.PathLike, kind: str = "generator", fp16: bool = False,
                 uint8: bool = True, opset: int = DEFAULT_OPSET, digest: str | None = None,
                 prepared: GroupDNet | None = None, metadata: dict[str, str] | None = None) -> Path:
    """Export one graph to ``path`` and check it. ``kind``: ``generator`` (labels, z -> image),
    ``encoder`` (photo, labels -> mu, logvar), or the cached-mask pair ``generator_maps`` (labels, z
    -> image + every CG-Norm's maps) and ``generator_render`` (z, CG-Norm maps -> image).

    ``fp16``: weights and arithmetic in float16; labels, z, photo and the outputs stay int64 /
    float32 (the label-branch maps between the two halves are float16).
    ``prepared``: an :func:`inference_copy` of ``model`` to reuse across calls. ``metadata``: extra
    ``metadata_props`` (e.g. ``smis.source_sha256``, the hash of the weight files exported from).
    """
    if kind not in graph_kinds(model.config):
        raise ValueError(f"kind must be one of {', '.join(graph_kinds(model.config))}, got {kind!r}"
                         + (" (the preview is for models with a local enhancer)" if kind in ALL_GRAPH_KINDS else ""))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = model.config
    net = prepared if prepared is not None else inference_copy(model)
    dtype = torch.float16 if fp16 else torch.float32
    if fp16:
        net = _half_copy(net)
    graph = {"generator": GeneratorGraph, "generator_maps": MapsGraph, "generator_render": RenderGraph,
             "generator_preview": PreviewGraph}.get(kind)
    graph = graph(net, dtype, uint8) if graph is not None else EncoderGraph(net, dtype)
    uint8 = uint8 and kind != "encoder"
    args = _example_inputs(net, kind, dtype)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with torch.no_grad():
            _export_graph(graph.eval(), args, tmp, kind, uint8, opset)
        proto = onnx.load(str(tmp))
        meta = _metadata(config, kind, "fp16" if fp16 else "fp32", digest or weights_digest(model), uint8, opset)
        meta.update(metadata or {})
        del proto.metadata_props[:]
        for k, v in meta.items():
            proto.metadata_props.add(key=k, value=v)
        proto.producer_name = "smis-export"
        proto.doc_string = (f"GroupDNet {kind} ({config.name}, {config.num_classes} classes, native "
                            f"{config.height}x{config.width}); see metadata_props 'smis.*'")
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _half_copy(net: GroupDNet) -> GroupDNet:
    # The folded copy has no parametrizations left, so a deep copy shares nothing with it.
    return copy.deepcopy(net).half().eval()


def export_model(model: GroupDNet, folder: str | os.PathLike, fp16: bool = False, encoder: bool = True,
                 split: bool = True, uint8: bool = True, opset: int = DEFAULT_OPSET,
                 write_config: bool = True, metadata: dict[str, str] | None = None) -> ExportResult:
    """Write ``generator.onnx`` and ``encoder.onnx`` (``*-fp16.onnx`` with ``fp16``) into ``folder``,
    and with ``split`` the pair ``generator-maps.onnx`` + ``generator-render.onnx`` (the ONNX backend
    renders a new mask with the first and keeps its maps, and re-renders it with the second).

    With ``write_config`` a ``config.json`` goes next to them, so the folder alone is a model that
    ``SMISPipeline.from_pretrained(folder, backend="onnx")`` can load.
    """
    start = time.perf_counter()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    digest = weights_digest(model)
    net = inference_copy(model)
    result = ExportResult(folder)
    kinds = ["generator"] + (["encoder"] if encoder else [])
    kinds += ["generator_maps", "generator_render"] if split else []
    kinds += [k for k in graph_kinds(model.config) if k == "generator_preview"]
    for kind in kinds:
        path = folder / graph_file_name(kind, fp16)
        logger.info("exporting the %s%s to %s", kind, " (fp16)" if fp16 else "", path)
        export_graph(model, path, kind, fp16=fp16, uint8=uint8, opset=opset, digest=digest, prepared=net,
                     metadata=metadata)
        result.files[kind] = path
    if write_config:
        existing = folder / "config.json"
        if existing.is_file() and SMISConfig.load(existing) != model.config:
            raise ValueError(f"{existing} describes another model; export into an empty folder")
        model.config.save(existing)
        result.files["config"] = existing
    result.seconds = time.perf_counter() - start
    return result


# ---------------------------------------------------------------------------------------------
# 4. Checks: op inventory and parity with PyTorch
# ---------------------------------------------------------------------------------------------

def op_types(path: str | os.PathLike) -> set[str]:
    """Every op type in an ONNX file (subgraphs included)."""
    proto = onnx.load(str(path))
    ops: set[str] = set()

    def walk(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            ops.add(node.op_type)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)

    walk(proto.graph)
    return ops


def random_inputs(config: SMISConfig, batch: int = 1, height: int | None = None, width: int | None = None,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """Blocky random label maps, latent codes and photos for parity checks and benchmarks."""
    h = height or config.height
    w = width or config.width
    rng = np.random.default_rng(seed)
    cell = 8 if min(h, w) >= 64 else 1
    coarse = rng.integers(0, config.num_classes, (batch, 1, h // cell, w // cell))
    labels = coarse.repeat(cell, 2).repeat(cell, 3).astype(np.int64)
    z = rng.standard_normal((batch, *config.latent_shape(h, w)), dtype=np.float32)
    photo = rng.uniform(-1, 1, (batch, 3, h, w)).astype(np.float32)
    return {"labels": labels, "z": z, "photo": photo}


def conv_weight_sources(path: str | os.PathLike) -> dict[str, int]:
    """How many Conv nodes take their weight from an initializer / a Constant / a computed tensor.

    After baking and folding every weight is a stored constant; spectral norm left in the graph
    would show up as weights computed at run time.
    """
    proto = onnx.load(str(path))
    inits = {t.name for t in proto.graph.initializer}
    consts = {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    counts = {"initializer": 0, "constant": 0, "computed": 0}
    for node in proto.graph.node:
        if node.op_type == "Conv":
            w = node.input[1]
            counts["initializer" if w in inits else "constant" if w in consts else "computed"] += 1
    return counts


def random_model(config: SMISConfig, seed: int = 0, gain: float = 1.0, batches: int = 2) -> GroupDNet:
    """An untrained GroupDNet whose outputs look like a trained one's (for parity checks and benchmarks).

    The default init (gain 0.02) with fresh BatchNorm statistics gives a flat or saturated image,
    which any export matches trivially. Here: conv weights ~ N(0, gain^2 / fan_in), small random
    biases, a few power iterations for the new weights, and BatchNorm running statistics measured
    on random label maps, so every folded term matters and the image spans [-1, 1].
    """
    torch.manual_seed(seed)
    model = GroupDNet(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                w = m.parametrizations.weight.original if parametrize.is_parametrized(m, "weight") else m.weight
                fan_in = w.shape[1] * w.shape[2] * w.shape[3]
                w.copy_(torch.randn(w.shape, generator=g) * gain / fan_in ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        model.train()
        for m in model.modules():
            if parametrize.is_parametrized(m, "weight"):
                for _ in range(10):  # each read in training mode is one power iteration
                    _ = m.weight
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the calibration batches
        for i in range(batches):
            inputs = random_inputs(config, 2, seed=seed + 1 + i)
            labels = torch.from_numpy(inputs["labels"])[:, 0]
            model.generator(torch.from_numpy(inputs["z"]), model.label_tensor(labels))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 0.1
        # Scale the RGB head so the pre-tanh values have std ~1: few pixels saturate.
        model.eval()
        seen = []
        hook = model.generator.conv_img.register_forward_hook(lambda _m, _i, out: seen.append(out.std()))
        inputs = random_inputs(config, 2, seed=seed)
        model(torch.from_numpy(inputs["z"]), torch.from_numpy(inputs["labels"])[:, 0])
        hook.remove()
        model.generator.conv_img.weight /= seen[0]
        model.generator.conv_img.bias /= seen[0]
    return model


def torch_reference(model: GroupDNet, inputs: dict[str, np.ndarray], kind: str = "generator"):
    """The PyTorch outputs of ``model`` (as loaded: eval mode, spectral norm as parametrized)."""
    model = model.eval()
    labels = torch.from_numpy(inputs["labels"])[:, 0]
    with torch.no_grad():
        if kind in ("generator", "generator_maps"):  # the maps graph's first output is the image
            return (model(torch.from_numpy(inputs["z"]), labels).numpy(),)
        if kind == "generator_preview":
            return (model.generator.preview(torch.from_numpy(inputs["z"]), model.label_tensor(labels)).numpy(),)
        mu, logvar = model.encode(torch.from_numpy(inputs["photo"]), labels)
        return mu.numpy(), logvar.numpy()


def parity(model: GroupDNet, path: str | os.PathLike, batch: int = 2, height: int | None = None,
           width: int | None = None, seed: int = 0, threads: int | None = None) -> float:
    """Max abs difference between ONNX Runtime (CPU) running ``path`` and PyTorch on ``model``."""
    kind = read_metadata(path).get(GRAPH_KEY, "generator")
    inputs = random_inputs(model.config, batch, height, width, seed)
    session = make_session(path, providers=["CPUExecutionProvider"], threads=threads)
    names = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs() if o.name != "image_uint8"]
    got = session.run(outputs, {n: inputs[n] for n in names})
    ref = torch_reference(model, inputs, kind)
    return max(float(np.abs(a - b).max()) for a, b in zip(got, ref))


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict (weights are not loaded)."""
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}
