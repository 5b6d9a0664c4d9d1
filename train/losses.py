"""GroupDNet's objective (SPADE's): hinge GAN, feature matching, VGG19 perceptual loss, KL.

Losses are pure functions of network outputs; the only module is the perceptual loss, which owns a
frozen feature network. Everything is computed in float32 whatever the autocast dtype.
:class:`GroupDNetObjective` puts them together into the generator step's and the discriminator
step's losses (the training loop does the optimiser steps).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

import torch
import torch.nn.functional as F
from torch import nn

from smis.functional import kl_per_class, reparameterize

from . import features as feat
from .diffaug import diff_augment, parse_policy
from .options import ObjectiveOptions

logger = logging.getLogger(__name__)

#: Weights of relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 in the perceptual loss (SPADE's VGGLoss).
VGG_LAYER_WEIGHTS: tuple[float, ...] = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)

Features = list[list[torch.Tensor]]  # per D scale, per layer; the last layer is the patch logits


def split_halves(outputs: Features) -> tuple[Features, Features]:
    """D's outputs on ``cat([fake, real])`` -> (fake outputs, real outputs)."""
    fake, real = [], []
    for scale in outputs:
        fake.append([t[: t.shape[0] // 2] for t in scale])
        real.append([t[t.shape[0] // 2:] for t in scale])
    return fake, real


def d_hinge_loss(fake: Features, real: Features) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss on fakes, loss on reals): mean(relu(1 + D(fake))), mean(relu(1 - D(real))), averaged over scales."""
    lf = sum(F.relu(1.0 + s[-1].float()).mean() for s in fake) / len(fake)
    lr = sum(F.relu(1.0 - s[-1].float()).mean() for s in real) / len(real)
    return lf, lr


def g_hinge_loss(fake: Features) -> torch.Tensor:
    """The generator's hinge loss: -mean(D(fake)), averaged over scales."""
    return -sum(s[-1].float().mean() for s in fake) / len(fake)


def feature_matching_loss(fake: Features, real: Features) -> torch.Tensor:
    """L1 between D's intermediate features of fake and real, summed over layers, averaged over scales."""
    total = fake[0][0].new_zeros((), dtype=torch.float32)
    for f_scale, r_scale in zip(fake, real):
        for f, r in zip(f_scale[:-1], r_scale[:-1]):
            total = total + F.l1_loss(f.float(), r.detach().float())
    return total / len(fake)


def kl_loss(mu: torch.Tensor, logvar: torch.Tensor, onehot: torch.Tensor, free_bits: float = 0.0,
            per_image: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The KL term and the KL in nats per image (for logs).

    ``free_bits = 0`` and ``per_image = False`` is SPADE's term: the KL summed over every element
    of the batch. ``free_bits > 0``: each present class of each image may use that many nats for
    free, ``max(KL_ic, free_bits)`` (Kingma et al. 2016), so no class's code is squeezed back onto
    the prior while the decoder still ignores it; absent classes are left out. ``per_image``:
    averaged over the batch instead of summed (the weight then does not depend on the batch size).
    """
    n, c = onehot.shape[:2]
    kl = kl_per_class(mu, logvar, c)  # (N, C) nats
    nats = kl.sum(1).mean().detach()
    if free_bits > 0:
        present = onehot.detach().flatten(2).amax(-1) > 0
        kl = torch.where(present, kl.clamp_min(free_bits), torch.zeros_like(kl))
    total = kl.sum()
    return (total / n if per_image else total), nats


def class_appearance_loss(fake: torch.Tensor, real: torch.Tensor, onehot: torch.Tensor,
                          pool: int = 4) -> torch.Tensor:
    """Class-balanced reconstruction: L1 of ``pool``-times average-pooled colours inside each class.

    Every class present in an image counts the same, whatever its area, so the shoes' and the hair's
    appearance (which their own codes must carry) weigh as much as the background's. Pooling keeps
    the term about colour and shading, leaving texture to the GAN and perceptual terms. Classes
    smaller than one pooled cell are left out.
    """
    f = F.avg_pool2d(fake.float(), pool)
    r = F.avg_pool2d(real.float(), pool)
    m = F.avg_pool2d(onehot.float(), pool)  # (N, C, h, w) class fraction of each cell
    d = (f - r.detach()).abs().mean(1, keepdim=True)  # (N, 1, h, w)
    area = m.sum((2, 3))
    per_class = (m * d).sum((2, 3)) / area.clamp_min(1e-6)
    present = area >= 1.0
    if not bool(present.any()):
        return per_class.sum() * 0.0
    return per_class[present].mean()


def _plain(module: nn.Module) -> nn.Module:
    """The module itself under ``torch.compile`` and DDP wrappers."""
    module = getattr(module, "_orig_mod", module)
    return getattr(module, "module", module)


def latent_regression_loss(encoder: nn.Module, fake: torch.Tensor, onehot: torch.Tensor, z: torch.Tensor,
                           min_pixels: int = 16) -> torch.Tensor:
    """Per-class latent regression: L1 between the code G was given and the code E reads back from G's image.

    BicycleGAN's cLR term (Zhu et al. 2017) per class: class c's code is encoded from class c's pixels
    alone, so reading ``z_c`` back from the fake forces G to draw each class's code *inside that
    class* -- the gradient a code the decoder ignores never gets from the image losses. The encoder
    is a fixed reader here (eval mode, no parameter gradients as the reader, as in BicycleGAN): G
    learns from the term, E only through the code ``z`` it gave G (the target is detached). Every
    class with at least ``min_pixels`` pixels in an image counts the same.
    """
    enc = _plain(encoder)
    was_training = enc.training
    needs = [p.requires_grad for p in enc.parameters()]
    enc.eval().requires_grad_(False)
    try:
        mu, _ = enc(fake, onehot)
    finally:
        enc.train(was_training)
        for p, r in zip(enc.parameters(), needs):
            p.requires_grad_(r)
    n, c = onehot.shape[:2]
    d = (mu.float() - z.detach().float()).abs().view(n, c, -1).mean(-1)  # (N, C)
    present = onehot.detach().flatten(2).sum(-1) >= min_pixels
    if not bool(present.any()):
        return d.sum() * 0.0
    return d[present].mean()


def pick_present_classes(onehot: torch.Tensor, min_pixels: int = 16,
                         class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """One class per image among those with at least ``min_pixels`` pixels (N,): uniformly, or in
    proportion to ``class_weights`` (C,) (all > 0); the largest class where none has that many."""
    area = onehot.detach().float().flatten(2).sum(-1)  # (N, C)
    present = area >= min_pixels
    fallback = F.one_hot(area.argmax(1), area.shape[1]).bool()
    weights = torch.where(present.any(1, keepdim=True), present, fallback).float()
    if class_weights is not None:
        weights = weights * class_weights.to(weights.device, weights.dtype)
    return torch.multinomial(weights, 1).squeeze(1)


class ClassDeficit:
    """Each class's running shortfall of the mode-seeking target (the hinge's value when that class
    was picked), an exponential average over its own picks.

    It starts at the target (nothing known: full shortfall). :meth:`weights` turns it into picking
    weights for ``--mode-seek-pick deficit``: shortfall / target + ``floor``, so classes that meet the
    target are still picked now and then (their shortfall stays measured) and the others get the picks
    that still move something. Kept per process (each rank's picks) and saved with the training state.
    """

    def __init__(self, num_classes: int, target: float, decay: float = 0.9, floor: float = 0.05):
        self.target, self.decay, self.floor = float(target), float(decay), float(floor)
        self.value = torch.full((num_classes,), self.target)
        self.picks = torch.zeros(num_classes, dtype=torch.long)

    def update(self, classes: torch.Tensor, hinge: torch.Tensor) -> None:
        """Fold in one step's picks: ``classes`` (N,) and the hinge value of each (N,)."""
        for c, h in zip(classes.tolist(), hinge.detach().float().cpu().tolist()):
            self.value[c] = self.decay * self.value[c] + (1 - self.decay) * h
            self.picks[c] += 1

    def weights(self) -> torch.Tensor:
        return self.value / max(self.target, 1e-8) + self.floor

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"value": self.value.clone(), "picks": self.picks.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        value, picks = state["value"], state["picks"]
        if value.shape != self.value.shape:
            raise ValueError(f"the saved mode-seeking shortfall has {value.numel()} classes, the model "
                             f"{self.value.numel()}")
        self.value, self.picks = value.float().cpu().clone(), picks.long().cpu().clone()


def redraw_class_codes(z: torch.Tensor, classes: torch.Tensor, z_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``z`` (N, C * z_channels, h, w) with class ``classes[i]``'s code of image i drawn anew from N(0, 1);
    returns (new z, the mean |dz| over that code's elements per image). The other codes are kept
    (detached)."""
    n = z.shape[0]
    owner = torch.arange(z.shape[1], device=z.device) // z_channels  # class of each channel
    mask = (owner.unsqueeze(0) == classes.unsqueeze(1)).view(n, -1, 1, 1).expand_as(z)
    z = z.detach()
    new = torch.where(mask, torch.randn_like(z), z)
    dz = ((new - z).abs() * mask).flatten(1).sum(1) / mask.flatten(1).sum(1)
    return new, dz


def class_mode_seeking_loss(fake_a: torch.Tensor, fake_b: torch.Tensor, onehot: torch.Tensor,
                            classes: torch.Tensor, dz: torch.Tensor, target: float, pool: int = 4,
                            reduction: str = "mean") -> torch.Tensor:
    """Per-class mode seeking (MSGAN, Mao et al. 2019, restricted to one class's region).

    ``fake_a`` / ``fake_b`` differ only in class ``classes[i]``'s code, by ``dz[i]`` (mean |dz|). The
    change inside that class (L1 of ``pool``-times average-pooled colours, so noise does not count)
    per unit of ``dz`` is pushed up to ``target``: ``mean_i relu(target - change_i / dz_i)``. A hinge,
    not MSGAN's reciprocal, so a class whose code does nothing gets a bounded push and a class that
    already varies that much gets none. ``reduction="none"``: the hinge of each image (N,).
    """
    n = fake_a.shape[0]
    d = F.avg_pool2d(fake_a.float() - fake_b.float(), pool).abs().mean(1)  # (N, h, w)
    m = F.avg_pool2d(onehot.detach().float(), pool)[torch.arange(n, device=onehot.device), classes]
    change = (m * d).sum((1, 2)) / m.sum((1, 2)).clamp_min(1e-6)
    hinge = F.relu(target - change / dz.clamp_min(1e-6))
    return hinge if reduction == "none" else hinge.mean()


class PerceptualLoss(nn.Module):
    """sum_i w_i * L1(phi_i(fake), phi_i(real)) over a frozen feature network's outputs.

    ``features``: a module mapping images in [-1, 1] to a list of feature maps (relu1_1 first).
    """

    def __init__(self, features: nn.Module, weights: Sequence[float] = VGG_LAYER_WEIGHTS):
        super().__init__()
        self.features = features.eval().requires_grad_(False)
        self.weights = tuple(float(w) for w in weights)

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        x = torch.cat([fake, real], dim=0)
        feats = self.features(x)
        if len(feats) < len(self.weights):
            raise RuntimeError(f"the feature network gave {len(feats)} maps, the loss needs {len(self.weights)}")
        total = fake.new_zeros((), dtype=torch.float32)
        for w, f in zip(self.weights, feats):
            a, b = f.float().chunk(2, dim=0)
            total = total + w * F.l1_loss(a, b.detach())
        return total


class VggUnavailable(RuntimeError):
    """The full VGG19 weights could not be loaded (no download, no ``--vgg-weights``)."""


def build_perceptual(kind: str, weights_path: str | None = None) -> tuple[PerceptualLoss | None, str]:
    """The perceptual loss for ``--vgg`` and a one-line description for logs and model cards."""
    if kind in ("none", "double-fm"):
        what = ("off (--vgg none)" if kind == "none"
                else "off, replaced by doubling the feature-matching weight (--vgg double-fm)")
        return None, what
    if kind == "full":
        try:
            net = feat.VGG19Features.from_pretrained(weights_path)
        except feat.FeatureWeightsUnavailable as err:
            raise VggUnavailable(
                "the VGG19 perceptual loss needs torchvision's ImageNet VGG19 weights and they could not be "
                f"loaded ({err}). Pass a local copy with --vgg-weights PATH (torchvision's "
                "vgg19-dcbb9e9d.pth or the same tensors as safetensors), or train without the full loss: "
                "--vgg partial (offline VGG19 up to relu3_1), --vgg none, or --vgg double-fm "
                "(feature matching x2). The choice is written to training_options.json and the model card."
            ) from err
        src = weights_path or "torchvision ImageNet weights"
        return PerceptualLoss(net, VGG_LAYER_WEIGHTS), f"VGG19 relu1_1..relu5_1 ({src}), weights 1/32..1"
    if kind == "partial":
        net = feat.NormalisedVGG19Relu31.from_pretrained(weights_path)
        return (PerceptualLoss(net, VGG_LAYER_WEIGHTS[:3]),
                "partial: normalised VGG19 (Gatys et al.) relu1_1..relu3_1 only, weights 1/32, 1/16, 1/8 "
                "(offline substitute for the full VGG19 loss)")
    raise ValueError(f"unknown perceptual loss {kind!r}")


def _sample(mu: torch.Tensor, logvar: torch.Tensor, noise: float) -> torch.Tensor:
    """z = mu + noise * eps * sigma (``reparameterize`` when ``noise`` is 1)."""
    if noise == 1.0:
        return reparameterize(mu, logvar)
    return mu + noise * (reparameterize(mu, logvar) - mu)


class GroupDNetObjective:
    """The losses of one training step, SPADE's order: :meth:`g_step`, then :meth:`d_step` on
    :meth:`d_fake`. The networks are passed in (plain, DDP-wrapped or compiled, as the loop runs them).

    ``autocast``: a context factory for the forward passes (``nullcontext`` without mixed precision).
    """

    def __init__(self, opts: ObjectiveOptions, perceptual: nn.Module | None,
                 autocast: Callable[[], AbstractContextManager]):
        self.opts = opts
        self.perceptual = perceptual
        self.autocast = autocast
        self.diffaug = parse_policy(opts.diffaug)
        self.deficit: ClassDeficit | None = None  # made on the first g_step (the class count comes with the data)

    def discriminate(self, d: nn.Module, label: torch.Tensor, fake: torch.Tensor, real: torch.Tensor):
        """D on the batch [fake; real] with its labels (DiffAugmented when ``--diffaug``), split in halves."""
        return split_halves(d(*diff_augment(torch.cat([label, label]), torch.cat([fake, real]), self.diffaug)))

    def g_step(self, g: nn.Module, e: nn.Module, d: nn.Module, real: torch.Tensor, onehot: torch.Tensor,
               label: torch.Tensor, noise: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """G + E's loss: hinge + feature matching + VGG + KL (+ class-balanced reconstruction,
        + latent regression, + per-class mode seeking).

        ``noise``: the factor on the sampling noise, z = mu + noise * eps * sigma (1: the paper).
        Returns (loss, fake, the logged terms). ``d`` should not collect parameter gradients here.
        """
        o = self.opts
        with self.autocast():
            mu, logvar = e(real, onehot)
            mu, logvar = mu.float(), logvar.float()
            z = _sample(mu, logvar, noise)
            b = min(o.mode_seek_images, z.shape[0]) if o.lambda_mode_seek > 0 else 0
            if b:
                # One G pass over the batch and, for its first b images, the same masks with one class's
                # code re-drawn (one pass: DDP-safe, one update of the batch-norm statistics).
                if self.deficit is None:
                    self.deficit = ClassDeficit(onehot.shape[1], o.mode_seek_target)
                classes = pick_present_classes(
                    onehot[:b], class_weights=self.deficit.weights() if o.mode_seek_pick == "deficit" else None)
                z_b, dz = redraw_class_codes(z[:b], classes, z.shape[1] // onehot.shape[1])
                fake, fake_b = g(torch.cat([z, z_b]), torch.cat([label, label[:b]])).split([z.shape[0], b])
            else:
                fake = g(z, label)
            fake_out, real_out = self.discriminate(d, label, fake, real)
            l_gan = g_hinge_loss(fake_out)
            l_feat = feature_matching_loss(fake_out, real_out) * o.feat_weight
            l_vgg = self.perceptual(fake, real) * o.lambda_vgg if self.perceptual is not None else l_gan.new_zeros(())
            l_kl, kl_nats = kl_loss(mu, logvar, onehot, o.kl_free_bits, o.kl_per_image)
            l_kl = l_kl * o.lambda_kl
            l_rec = (class_appearance_loss(fake, real, onehot, o.rec_pool) * o.lambda_rec
                     if o.lambda_rec > 0 else l_gan.new_zeros(()))
            l_lat = (latent_regression_loss(e, fake, onehot, z) * o.lambda_latent
                     if o.lambda_latent > 0 else l_gan.new_zeros(()))
            if b:
                hinge = class_mode_seeking_loss(fake[:b], fake_b, onehot[:b], classes, dz, o.mode_seek_target,
                                                o.rec_pool, reduction="none")
                self.deficit.update(classes, hinge)
                l_ms = hinge.mean() * o.lambda_mode_seek
            else:
                l_ms = l_gan.new_zeros(())
            loss = l_gan + l_feat + l_vgg + l_kl + l_rec + l_lat + l_ms
        with torch.no_grad():
            l1 = (fake.detach().float() - real.float()).abs().mean()
        return loss, fake, {"G/gan": l_gan, "G/feat": l_feat, "G/vgg": l_vgg, "G/kl": l_kl, "G/rec": l_rec,
                            "G/latent": l_lat, "G/mode_seek": l_ms, "G/total": loss, "G/l1": l1,
                            "KL/nats_per_image": kl_nats, "G/noise": l1.new_tensor(noise)}

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        """What the objective carries between steps (the mode-seeking shortfall), for the training state."""
        return {"mode_seek_deficit": self.deficit.state_dict()} if self.deficit is not None else {}

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        saved = state.get("mode_seek_deficit")
        if saved is not None:
            self.deficit = ClassDeficit(saved["value"].numel(), self.opts.mode_seek_target)
            self.deficit.load_state_dict(saved)

    def class_log(self, class_names: Sequence[str]) -> dict[str, float]:
        """The per-class shortfall for the metrics log (``mode_seek/deficit/<class>``); empty before any pick."""
        if self.deficit is None:
            return {}
        return {f"mode_seek/deficit/{name}": round(float(v), 6) for name, v in zip(class_names, self.deficit.value)}

    @torch.no_grad()
    def d_fake(self, g: nn.Module, e: nn.Module, real: torch.Tensor, onehot: torch.Tensor, label: torch.Tensor,
               fake: torch.Tensor, noise: float = 1.0) -> torch.Tensor:
        """The fake D sees: the G step's (``reuse_fake``), or SPADE's new one from the updated G (new eps)."""
        if self.opts.reuse_fake:
            return fake.detach()
        with self.autocast():
            mu, logvar = e(real, onehot)
            return g(_sample(mu.float(), logvar.float(), noise), label)

    def d_step(self, d: nn.Module, real: torch.Tensor, label: torch.Tensor,
               fake: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """D's hinge loss on [fake; real] in one batch; returns (loss, the logged terms)."""
        with self.autocast():
            fake_out, real_out = self.discriminate(d, label, fake.to(real.dtype), real)
            l_fake, l_real = d_hinge_loss(fake_out, real_out)
            loss = l_fake + l_real
        return loss, {"D/fake": l_fake, "D/real": l_real, "D/total": loss}
