"""What the training loop measures on held-out images while it runs (cheap, every sample grid).

- **Reconstruction distance**: encode a val photo with its mask, generate from the posterior mean on
  the same mask, compare with the photo (L1 in [-1, 1] units, and the perceptual loss's distance
  when the run has one). Falls when the codes carry the photo's appearance.
- **KL in nats per image** of the val photos' posteriors (how much the codes carry).
- **Re-roll locality per class**: re-draw one class's code (everything else fixed) and measure the
  mean absolute change inside that class's region and outside it. A class whose inside change stays
  near 0 has a collapsed code (re-rolling it does nothing), the failure the pilot run showed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from smis import GroupDNet
from smis.codes import ClassCodes
from smis.functional import kl_per_class, one_hot


@torch.no_grad()
def val_probe(model: GroupDNet, samples: list[dict[str, Any]], perceptual: nn.Module | None = None,
              seed: int = 0) -> dict[str, float]:
    """The numbers above for ``samples`` (dicts with ``image`` (3, H, W) in [-1, 1] and ``label``)."""
    if not samples:
        return {}
    cfg = model.config
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        real = torch.stack([s["image"] for s in samples]).to(device)
        labels = torch.stack([s["label"] for s in samples]).to(device)
        n = real.shape[0]
        mu, logvar = model.encode(real, labels)
        fake = model(mu, labels).float()
        out: dict[str, float] = {
            "val/rec_l1": float((fake - real).abs().mean()),
            "val/kl_nats_per_image": float(kl_per_class(mu, logvar, cfg.num_classes).sum(1).mean()),
        }
        if perceptual is not None:
            out["val/rec_perceptual"] = float(perceptual(fake, real))

        # Re-roll one class at a time from fixed prior codes.
        grid = cfg.latent_grid(*labels.shape[-2:])
        base = [ClassCodes.sample(cfg.class_names, cfg.z_channels, grid, seed + i) for i in range(n)]
        z0 = torch.from_numpy(np.stack([b.latent() for b in base])).to(device)
        img0 = model(z0, labels).float()
        onehot = one_hot(labels, cfg.num_classes)
        ins, outs = [], []
        for c, name in enumerate(cfg.class_names):
            present = onehot[:, c].flatten(1).sum(1) > 0
            if not bool(present.any()):
                continue
            z1 = torch.from_numpy(np.stack([b.resample([c], seed + 10_000 + i).latent()
                                            for i, b in enumerate(base)])).to(device)
            diff = (model(z1, labels).float() - img0).abs().mean(1)  # (N, H, W)
            m = onehot[:, c]
            inside = (diff * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1)
            outside = (diff * (1 - m)).flatten(1).sum(1) / (1 - m).flatten(1).sum(1).clamp_min(1)
            out[f"val/reroll_in/{name}"] = float(inside[present].mean())
            out[f"val/reroll_out/{name}"] = float(outside[present].mean())
            ins.append(out[f"val/reroll_in/{name}"])
            outs.append(out[f"val/reroll_out/{name}"])
        if ins:
            out["val/reroll_in_mean"] = float(np.mean(ins))
            out["val/reroll_out_mean"] = float(np.mean(outs))
            out["val/reroll_in_min"] = float(np.min(ins))
        return out
    finally:
        model.train(was_training)
