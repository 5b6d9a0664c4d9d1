"""Pure tensor operations shared by the networks, the pipeline, training and export."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def one_hot(labels: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Class ids (N, 1, H, W) or (N, H, W) -> one-hot (N, C, H, W).

    Written as a comparison with a class-index ramp so that it exports to ONNX as one op.
    """
    if labels.dim() == 3:
        labels = labels.unsqueeze(1)
    ramp = torch.arange(num_classes, device=labels.device).view(1, -1, 1, 1)
    return (labels.long() == ramp).to(dtype)


def instance_edges(instances: torch.Tensor) -> torch.Tensor:
    """Boundary map of an instance-id map (N, 1, H, W): 1.0 where a 4-neighbour differs.

    Written with padding and maxima (no in-place slice updates) so that it exports to ONNX cleanly.
    """
    t = instances
    dx = (t[..., :, 1:] != t[..., :, :-1]).float()
    dy = (t[..., 1:, :] != t[..., :-1, :]).float()
    e = torch.maximum(F.pad(dx, (1, 0)), F.pad(dx, (0, 1)))
    return torch.maximum(e, torch.maximum(F.pad(dy, (0, 0, 1, 0)), F.pad(dy, (0, 0, 0, 1))))


def label_input(onehot: torch.Tensor, edges: torch.Tensor | None = None) -> torch.Tensor:
    """The label tensor CG-Norm and D see: the one-hot, or (class, edge) pairs per class.

    With edges, channel 2c is class c's one-hot and 2c+1 the instance-edge map (as the reference
    code interleaves them), so a convolution with ``groups = C`` still sees one class per group.
    """
    if edges is None:
        return onehot
    n, c, h, w = onehot.shape
    pair = torch.stack([onehot, edges.expand(n, c, h, w)], dim=2)
    return pair.reshape(n, 2 * c, h, w)


def class_bboxes(onehot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-(sample, class) bounding boxes of a one-hot map (N, C, H, W).

    Returns ``(y0, y1, x0, x1)`` inclusive, each (N, C) int64. Absent classes get the full frame,
    so cropping them is the identity (their split image is all zeros anyway).
    """
    n, c, h, w = onehot.shape
    rows = onehot.amax(dim=3) > 0  # (N, C, H)
    cols = onehot.amax(dim=2) > 0  # (N, C, W)
    ar_h = torch.arange(h, device=onehot.device)
    ar_w = torch.arange(w, device=onehot.device)
    big = h + w + 1
    y0 = torch.where(rows, ar_h, big).amin(-1)
    y1 = torch.where(rows, ar_h, -1).amax(-1)
    x0 = torch.where(cols, ar_w, big).amin(-1)
    x1 = torch.where(cols, ar_w, -1).amax(-1)
    present = y1 >= 0
    y0 = torch.where(present, y0, 0)
    y1 = torch.where(present, y1, h - 1)
    x0 = torch.where(present, x0, 0)
    x1 = torch.where(present, x1, w - 1)
    return y0, y1, x0, x1


def split_and_zoom(image: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """The encoder's input: each class's pixels, cropped to the class's box and resized.

    ``image`` (N, 3, H, W), ``onehot`` (N, C, H, W) -> (N, 3C, H, W), channels [3c, 3c+3) holding
    ``M_c * X`` cropped to class c's bounding box and resized back to H x W with nearest
    sampling (index = box start + floor(j * box size / H), as ``F.interpolate(mode="nearest")``).
    Vectorised over samples and classes: two gathers, no Python loop.
    """
    n, c, h, w = onehot.shape
    split = image.unsqueeze(1) * onehot.unsqueeze(2)  # (N, C, 3, H, W)
    y0, y1, x0, x1 = class_bboxes(onehot)
    jy = torch.arange(h, device=image.device)
    jx = torch.arange(w, device=image.device)
    iy = y0.unsqueeze(-1) + (jy * (y1 - y0 + 1).unsqueeze(-1)) // h  # (N, C, H)
    ix = x0.unsqueeze(-1) + (jx * (x1 - x0 + 1).unsqueeze(-1)) // w  # (N, C, W)
    ch = image.shape[1]
    iy = iy.view(n, c, 1, h, 1).expand(n, c, ch, h, w)
    split = torch.gather(split, 3, iy)
    ix = ix.view(n, c, 1, 1, w).expand(n, c, ch, h, w)
    split = torch.gather(split, 4, ix)
    return split.reshape(n, c * ch, h, w)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """z = mu + eps * exp(logvar / 2)."""
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + eps * torch.exp(0.5 * logvar)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)), summed over every element as SPADE does."""
    return kl_per_class(mu, logvar, 1).sum()


def kl_per_class(mu: torch.Tensor, logvar: torch.Tensor, num_classes: int) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) in nats for each (sample, class): (N, C).

    Class c owns channels [z*c, z*c + z) of ``mu`` / ``logvar`` (any grid size); its KL sums those
    channels over the grid.
    """
    mu, logvar = mu.float(), logvar.float()
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())
    return kl.reshape(mu.shape[0], num_classes, -1).sum(-1)


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1], (..., 3, H, W) -> uint8 RGB (..., H, W, 3): round half up, then clip."""
    d = image.dim()
    return ((image + 1.0) * 127.5 + 0.5).clamp(0.0, 255.0).to(torch.uint8).permute(*range(d - 3), d - 2, d - 1, d - 3)


def pool_label(label: torch.Tensor, factor: int, mode: str = "nearest") -> torch.Tensor:
    """The label tensor (N, C, H, W) at 1/``factor`` of its size, for a CG-Block's label branch.

    ``nearest``: the top-left pixel of each cell (SPADE's nearest resize); ``max``: 1 where the
    class covers any pixel of the cell; ``area``: the fraction of the cell it covers.
    """
    if factor == 1:
        return label
    if mode == "nearest":
        return label[:, :, ::factor, ::factor]
    if mode == "max":
        return F.max_pool2d(label, factor)
    if mode == "area":
        return F.avg_pool2d(label, factor)
    raise ValueError(f"unknown label pooling {mode!r}; use nearest, max or area")


def fit_label(label: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The label tensor nearest-resized to the spatial size of the features ``x`` (no-op if equal)."""
    if label.shape[-2:] == x.shape[-2:]:
        return label
    return F.interpolate(label, size=x.shape[-2:], mode="nearest")
