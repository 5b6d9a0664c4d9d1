"""GroupDNet = generator + encoder, saved and loaded as one model folder."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from . import hub
from .config import SMISConfig
from .encoder import Encoder
from .functional import instance_edges, label_input, one_hot
from .generator import Generator


class GroupDNet(nn.Module):
    """The inference-time model: G and E (the discriminator lives in train/)."""

    def __init__(self, config: SMISConfig):
        super().__init__()
        self.config = config
        self.generator = Generator(config)
        self.encoder = Encoder(config)

    def label_tensor(self, labels: torch.Tensor, instances: torch.Tensor | None = None,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Class ids (N, H, W) or (N, 1, H, W) -> the label input of G's CG-Norms and of D.

        The one-hot; with ``config.instance_edges`` each class's channel is followed by the edges of
        ``instances`` (an instance-id map like ``labels``), or of the class map when there is none.
        """
        onehot = one_hot(labels, self.config.num_classes, dtype)
        if not self.config.instance_edges:
            return onehot
        ids = labels if instances is None else instances
        edges = instance_edges(ids.unsqueeze(1) if ids.dim() == 3 else ids)
        return label_input(onehot, edges.to(dtype))

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.generator(z, self.label_tensor(labels).to(z.dtype))

    def encode(self, image: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(image, one_hot(labels, self.config.num_classes, image.dtype))

    def fit_codes(self, image: torch.Tensor, labels: torch.Tensor, z: torch.Tensor, steps: int = 20,
                  lr: float = 0.05, full_steps: int | None = None) -> torch.Tensor:
        """Refine codes ``z`` (the encoder's means, usually) so that the generator gives ``image``'s own
        appearance back: ``steps`` Adam steps on z alone (the weights stay frozen) against each class's
        mean colour inside its region plus half the pixel L1.

        Why: the encoder's means are shrunk towards the prior by the KL term, so a photo re-synthesised
        from them drifts towards average colours (an orange top comes back brown); the generator itself
        can draw the photo's colours when given the right codes. Measured on CCP val with the bundled
        model: the per-class colour error falls from 16.6 to about 5 in 20 steps (model card).

        With a local enhancer the codes are the global generator's: the first steps fit them on its image
        (``Generator.preview``, at its size: about half the work of a full step), the last ``full_steps``
        (default: a quarter of ``steps``) on the full image, so what the enhancer adds to the colours is
        fitted too (CCP examples at 384x256: colour error 9.2 with none, 7.9 with 5 of 20, 6.3 with all, at
        1.0, 1.24 and 2.1x the time when every step still recomputed the label branch, which is now computed
        once). ``image`` (N, 3, H, W) in [-1, 1], ``labels`` (N, H, W) class ids,
        ``z`` like ``encode``'s mu.
        """
        if steps <= 0:
            return z
        label = self.label_tensor(labels)  # full size: preview() pools it as forward() does
        with torch.no_grad():  # the part of G that ignores z: once, not at every step
            features = self.generator.label_features(label)
        f = self.config.enhancer_factor
        full_steps = 0 if f == 1 else min(int(steps), int(steps) // 4 if full_steps is None else max(0, full_steps))

        def targets(image: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
            onehot = one_hot(labels, self.config.num_classes, torch.float32)
            area = onehot.sum((2, 3)).clamp_min(1.0)[..., None]  # (N, C, 1)
            means = torch.einsum("nchw,nkhw->nck", onehot, image) / area
            return onehot, area, means, (onehot.sum((2, 3)) > 0).float()[..., None], image

        full = targets(image.float(), labels)
        small = targets(F.avg_pool2d(image.float(), f), labels[..., ::f, ::f]) if f > 1 else full
        z = z.detach().float().clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr)
        needs = [p.requires_grad for p in self.parameters()]
        self.requires_grad_(False)
        try:
            with torch.enable_grad():
                for i in range(int(steps)):
                    at_full = i >= steps - full_steps
                    onehot, area, target_means, present, target = full if at_full else small
                    render = self.generator if at_full else self.generator.preview
                    fake = render(z, label, label_features=features).float()
                    means = torch.einsum("nchw,nkhw->nck", onehot, fake) / area
                    colour = ((means - target_means).abs() * present).sum() / (3 * present.sum()).clamp_min(1.0)
                    loss = colour + 0.5 * (fake - target).abs().mean()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
        finally:
            for p, r in zip(self.parameters(), needs):
                p.requires_grad_(r)
        return z.detach()

    # -- persistence ---------------------------------------------------------------------
    def save_pretrained(self, folder: str | os.PathLike, dtype: torch.dtype | None = None,
                        max_shard_bytes: int | None = None,
                        metadata: dict[str, str] | None = None) -> list[Path]:
        """Write ``config.json`` + safetensors (``dtype=torch.float16`` halves the size)."""
        return hub.save_state(folder, self.config, self.state_dict(), dtype, max_shard_bytes, metadata)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike | None = None,
                        revision: str | None = None,
                        cache_dir: str | os.PathLike | None = None) -> GroupDNet:
        """Load from a local folder or a Hub repo id (``None``: ``$SMIS_MODEL`` or the bundled one)."""
        folder = hub.resolve_model_dir(name_or_path, revision, cache_dir)
        config = SMISConfig.load(folder / hub.CONFIG_NAME)
        model = cls(config)
        hub.load_into(model, hub.load_state(folder), str(folder))
        return model.eval()


def bake_spectral_norm(module: nn.Module) -> nn.Module:
    """Replace spectral-norm parametrizations by their current normalised weight, in place.

    For inference and export only: the result has plain conv weights (no power iteration, no
    ``vdot``), and gives the same outputs as the parametrized module in eval mode.
    """
    for m in list(module.modules()):
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    return module
