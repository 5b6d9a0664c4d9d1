"""The human parser's data: a split decoded once into memory (uint8), the batches of each step and
their augmentation on the training device.

Colour jitter, then one affine warp per image for the random scale (0.75-1.25), crop position and
left-right flip (CCP's classes have no left/right, so a flip keeps the labels). Pixels the warp
brings in from outside the photo are grey and ignored by the loss. A step's draws depend only on
(seed, step, rank), so a resumed run replays exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from smis.parsing import IGNORE_INDEX, ParserConfig

from ..data import SMISDataset, build_dataset
from .options import ParserTrainOptions


def open_split(opts: ParserTrainOptions, split: str, config: ParserConfig,
               max_items: int | None = None) -> SMISDataset:
    """``split`` of ``opts.data`` at the parser's size, without augmentation (that happens in
    memory, per batch: :func:`augment_batch`)."""
    return build_dataset(opts.format, opts.data, split, config.height, config.width, on_bad=opts.on_bad,
                         max_items=max_items)


@dataclass
class InMemorySplit:
    """A split as tensors: photos uint8 (N, 3, H, W) and labels uint8 (N, H, W)."""

    images: torch.Tensor
    labels: torch.Tensor
    paths: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def to(self, device: torch.device) -> InMemorySplit:
        return InMemorySplit(self.images.to(device), self.labels.to(device), self.paths)


def load_split(dataset: Sequence[dict[str, Any]], num_classes: int, workers: int = 0,
               progress: bool = True, what: str = "data") -> InMemorySplit:
    """Decode a dataset of ``{"image": [-1, 1] (3, H, W), "label": (H, W), "path"}`` into memory."""
    if len(dataset) == 0:
        raise ValueError(f"the {what} split is empty")
    names = getattr(dataset, "class_names", None)
    if names is not None and len(names) != num_classes:
        raise ValueError(f"the {what} split has {len(names)} classes ({', '.join(names)}) but the parser has "
                         f"{num_classes}; pass a dataset with the parser's classes or another --preset")
    loader = DataLoader(dataset, batch_size=16, num_workers=workers, shuffle=False)
    images, labels, paths = [], [], []
    for batch in tqdm(loader, desc=f"loading {what}", disable=not progress, leave=False):
        images.append(((batch["image"] + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8))
        lab = batch["label"]
        if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= num_classes):
            raise ValueError(f"the {what} split holds class ids {int(lab.min())}..{int(lab.max())}, "
                             f"outside 0..{num_classes - 1}")
        labels.append(lab.to(torch.uint8))
        paths += list(batch.get("path", [""] * len(lab)))
    return InMemorySplit(torch.cat(images), torch.cat(labels), paths)


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """sqrt(median frequency / frequency), clipped to [0.2, 10]; 1 for absent classes."""
    counts = torch.bincount(labels.flatten().long(), minlength=num_classes)[:num_classes].double()
    freq = counts / counts.sum()
    present = freq > 0
    w = torch.ones(num_classes, dtype=torch.float64)
    w[present] = (freq[present].median() / freq[present]).sqrt().clamp(0.2, 10.0)
    return w.float()


def augment_batch(images: torch.Tensor, labels: torch.Tensor, gen: torch.Generator,
                  scale: tuple[float, float] = (0.75, 1.25), jitter: float = 0.3,
                  flip: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 photos (B, 3, H, W) + labels (B, H, W) -> augmented [-1, 1] photos and int64 labels.

    ``gen`` is a CPU generator (draws are device independent). Out-of-photo pixels are 0 (grey)
    in the image and :data:`IGNORE_INDEX` in the labels.
    """
    b = images.shape[0]
    dev = images.device
    x = images.float() / 255.0

    def draw(lo: float, hi: float) -> torch.Tensor:
        return (torch.rand(b, generator=gen) * (hi - lo) + lo).to(dev)

    # 1. Colour jitter (before the warp, so the padding stays exactly grey).
    if jitter > 0:
        x = x * draw(1 - jitter, 1 + jitter).view(b, 1, 1, 1)
        mean = x.mean((1, 2, 3), keepdim=True)
        x = (x - mean) * draw(1 - jitter, 1 + jitter).view(b, 1, 1, 1) + mean
        gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        x = (x - gray) * draw(1 - jitter, 1 + jitter).view(b, 1, 1, 1) + gray
        x = x.clamp(0, 1)
    x = x * 2 - 1
    # 2. Scale, crop position and flip as one affine warp (output coords -> input coords).
    s = draw(*scale)
    span = (1 - 1 / s).abs()
    tx = (torch.rand(b, generator=gen).to(dev) * 2 - 1) * span
    ty = (torch.rand(b, generator=gen).to(dev) * 2 - 1) * span
    sx = 1 / s
    if flip:
        sx = sx * torch.where(torch.rand(b, generator=gen).to(dev) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2] = sx, tx
    theta[:, 1, 1], theta[:, 1, 2] = 1 / s, ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # Labels shifted by one so that the zero padding marks "outside the photo".
    y = F.grid_sample(labels[:, None].float() + 1, grid, mode="nearest", padding_mode="zeros",
                      align_corners=False)[:, 0].long() - 1
    y[y < 0] = IGNORE_INDEX
    return x, y



def batch_indices(step: int, n: int, global_batch: int, seed: int) -> torch.Tensor:
    """The dataset indices of optimiser step ``step``: walks a fresh permutation per epoch."""
    out = []
    start = step * global_batch
    while len(out) < global_batch:
        epoch, offset = divmod(start + len(out), n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        out += perm[offset:offset + global_batch - len(out)].tolist()
    return torch.tensor(out)
