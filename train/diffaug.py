"""Differentiable augmentation of what the discriminator sees (DiffAugment, Zhao et al., NeurIPS 2020).

With few photos (CCP: 850) D memorises the training set; augmenting both its real and its fake
inputs with the same family of differentiable transforms keeps it from doing so while G still
gets gradients through them. GroupDNet's D is conditional and its feature-matching loss compares
fake_i with real_i, so here each pair (fake_i, real_i) gets the *same* draw, and the label map
moves with the image:

- ``color``: brightness, saturation and contrast jitter (DiffAugment's ranges), image only;
- ``translation``: a shift of up to 1/8 of the height and width, whole pixels, the image padded
  with grey (0) and the label map with no class (all zeros), so both stay aligned and exact;
- ``cutout``: a square of half the height / width set to grey in the image (the label map keeps
  the layout; both halves of a pair lose the same square, so it tells D nothing).

``policy`` is a comma-separated subset, e.g. ``"color,translation,cutout"`` (``""``: off).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

POLICIES = ("color", "translation", "cutout")


def parse_policy(policy: str) -> tuple[str, ...]:
    """``"color,translation"`` -> ("color", "translation"); unknown names are a ValueError."""
    names = tuple(p.strip() for p in policy.split(",") if p.strip())
    unknown = [n for n in names if n not in POLICIES]
    if unknown:
        raise ValueError(f"unknown DiffAugment policy {unknown}; choose from {', '.join(POLICIES)}")
    return names


def _per_pair(values: torch.Tensor) -> torch.Tensor:
    """Draws for N pairs -> the same draws for the batch [fake_1..fake_N, real_1..real_N]."""
    return torch.cat([values, values])


def _color(x: torch.Tensor, n: int) -> torch.Tensor:
    shape = (n, 1, 1, 1)
    x = x + _per_pair(torch.rand(shape, device=x.device) - 0.5).to(x.dtype)
    mean = x.mean(1, keepdim=True)
    x = (x - mean) * _per_pair(torch.rand(shape, device=x.device) * 2).to(x.dtype) + mean
    mean = x.mean((1, 2, 3), keepdim=True)
    return (x - mean) * _per_pair(torch.rand(shape, device=x.device) + 0.5).to(x.dtype) + mean


def _translate(x: torch.Tensor, label: torch.Tensor, n: int, ratio: float = 0.125) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = x.shape[-2:]
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = _per_pair(torch.randint(-sy, sy + 1, (n,), device=x.device))
    dx = _per_pair(torch.randint(-sx, sx + 1, (n,), device=x.device))
    # Source row / column of every output pixel; out-of-range sources read the zero padding.
    rows = (torch.arange(h, device=x.device)[None] - dy[:, None] + 1).clamp(0, h + 1)  # (B, h)
    cols = (torch.arange(w, device=x.device)[None] - dx[:, None] + 1).clamp(0, w + 1)  # (B, w)

    def shift(t: torch.Tensor) -> torch.Tensor:
        t = F.pad(t, (1, 1, 1, 1))
        b, c = t.shape[:2]
        t = t.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2))
        return t.gather(3, cols[:, None, None, :].expand(b, c, h, w))
    return shift(x), shift(label)


def _cutout(x: torch.Tensor, n: int, ratio: float = 0.5) -> torch.Tensor:
    h, w = x.shape[-2:]
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = _per_pair(torch.randint(0, h + (1 - ch % 2), (n,), device=x.device))
    cx = _per_pair(torch.randint(0, w + (1 - cw % 2), (n,), device=x.device))
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    inside = ((ys - cy[:, None, None]).abs() <= ch // 2) & ((xs - cx[:, None, None]).abs() <= cw // 2)
    return x * (~inside)[:, None].to(x.dtype)


def diff_augment(label: torch.Tensor, images: torch.Tensor, policy: tuple[str, ...]) -> tuple[torch.Tensor,
                                                                                             torch.Tensor]:
    """Augment D's batch ``[label; label]``, ``[fake; real]`` (2N each): pair i gets one draw.

    Differentiable in ``images``; the label map is only moved (translation), never blended.
    """
    if not policy:
        return label, images
    if images.shape[0] % 2 or label.shape[0] != images.shape[0]:
        raise ValueError("diff_augment expects the batches [fake; real] and [label; label] of equal, even size")
    n = images.shape[0] // 2
    if "color" in policy:
        images = _color(images, n)
    if "translation" in policy:
        images, label = _translate(images, label, n)
    if "cutout" in policy:
        images = _cutout(images, n)
    return label, images
