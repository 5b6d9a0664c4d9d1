"""Metrics of the paper, as pure functions: LPIPS-style distances, mCSD / mOCD, diversity, FID,
KID and segmentation mIoU / accuracy.

Distances take a *feature network*: any callable mapping images in [-1, 1] (N, 3, H, W) to a list
of feature maps, optionally with a ``channel_weights()`` method (LPIPS' learned linear heads; none
means uniform weights, the lpips package's ``lpips=False`` baseline). See :mod:`train.features`.

Generators are callables ``generate(labels, z) -> images`` with the signature of
``smis.backends.Backend.generate``: labels (N, H, W) int64 and z (N, 8C, h, w) float32 arrive as
numpy arrays, images (N, 3, H, W) in [-1, 1] come back as an array or a tensor. A backend's
``generate`` fits as is; :func:`model_generate_fn` wraps a raw :class:`smis.model.GroupDNet` (or
any torch function ``f(z, labels)``).
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .features import LPIPSAlex, NormalisedVGG19Relu31

logger = logging.getLogger(__name__)

FeatureNet = Callable[[torch.Tensor], Sequence[torch.Tensor]]
GenerateFn = Callable[[np.ndarray, np.ndarray], "torch.Tensor | np.ndarray"]
#: ``encode(photos (N, 3, H, W) float32 in [-1, 1], labels (N, H, W) int64) -> (mu, logvar)``, as
#: ``smis.backends.Backend.encode``.
EncodeFn = Callable[[np.ndarray, np.ndarray], "tuple[np.ndarray, np.ndarray]"]

#: How reports name :func:`perceptual_distance`.
PERCEPTUAL_DISTANCE_NAME = ("VGG-relu3 perceptual distance, not LPIPS (normalised VGG19 relu1_1-relu3_1, "
                            "unit-normalised channels, uniform weights)")
LPIPS_NAME = "LPIPS v0.1 (AlexNet, linear heads)"


# ---------------------------------------------------------------------------------------------
# LPIPS-style distances
# ---------------------------------------------------------------------------------------------
def normalize_channels(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Unit length along the channel axis at every position (lpips' ``normalize_tensor``)."""
    return features / (features.pow(2).sum(1, keepdim=True).sqrt() + eps)


def layer_distance_maps(x: torch.Tensor, y: torch.Tensor, net: FeatureNet) -> list[torch.Tensor]:
    """Per-layer LPIPS distance maps (N, 1, h_l, w_l) between images ``x`` and ``y`` in [-1, 1].

    Each map is the channel-weighted squared difference of unit-normalised features, weights from
    ``net.channel_weights()`` when it has them, else all ones.
    """
    if x.shape != y.shape:
        raise ValueError(f"images to compare must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    feats = net(torch.cat([x, y]))
    weights = net.channel_weights() if hasattr(net, "channel_weights") else None
    maps = []
    for i, f in enumerate(feats):
        fx, fy = f.float().chunk(2)
        diff = (normalize_channels(fx) - normalize_channels(fy)).pow(2)
        if weights is not None:
            diff = diff * weights[i].to(diff).view(1, -1, 1, 1)
        maps.append(diff.sum(1, keepdim=True))
    return maps


def _as_mask(mask: torch.Tensor, batch: int) -> torch.Tensor:
    m = torch.as_tensor(mask)
    if m.dim() == 2:
        m = m[None, None]
    elif m.dim() == 3:
        m = m[:, None]
    if m.dim() != 4 or m.shape[1] != 1 or m.shape[0] not in (1, batch):
        raise ValueError(f"a mask must be (H, W), (N, H, W) or (N, 1, H, W) with N = 1 or {batch}, "
                         f"got {tuple(torch.as_tensor(mask).shape)}")
    return m.float()


def reduce_distance_maps(maps: Sequence[torch.Tensor], mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over layers of each map's spatial mean, or its mean inside ``mask`` -> (N,).

    The mask (at image resolution, 1 = inside) is area-downsampled to each layer's size and used as
    weights, so an all-ones mask gives exactly the plain spatial mean. Where the mask is empty the
    result is NaN. Note that features near the region's border also see pixels outside it (the
    network's receptive field); a masked distance is "the distance map averaged over the region",
    as in lpips' ``spatial=True`` mode, not a distance between cut-out images.
    """
    n = maps[0].shape[0]
    if mask is None:
        return sum(m.mean((1, 2, 3)) for m in maps)
    full = _as_mask(mask, n).to(maps[0].device)
    total = torch.zeros(n, device=maps[0].device)
    for m in maps:
        w = F.adaptive_avg_pool2d(full, m.shape[-2:]).expand(n, -1, -1, -1)
        den = w.sum((1, 2, 3))
        num = (m * w).sum((1, 2, 3))
        total = total + torch.where(den > 0, num / den.clamp_min(1e-12), torch.full_like(den, float("nan")))
    return total


def lpips_distance(x: torch.Tensor, y: torch.Tensor, net: FeatureNet,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """LPIPS formula between ``x`` and ``y`` (N, 3, H, W) in [-1, 1] -> (N,).

    Unit-normalise each layer's channels, square the difference, weight the channels (the net's
    linear heads, or uniformly), average over space (or over ``mask``'s region only) and sum over
    layers. With :class:`train.features.LPIPSAlex` this is LPIPS v0.1.
    """
    return reduce_distance_maps(layer_distance_maps(x, y, net), mask)


_SUBSTITUTE_NET: dict[str, torch.nn.Module] = {}


def substitute_net(device: str | torch.device = "cpu") -> torch.nn.Module:
    """The shipped normalised VGG19 (relu1_1..relu3_1) on ``device``, loaded once per device."""
    key = str(device)
    if key not in _SUBSTITUTE_NET:
        _SUBSTITUTE_NET[key] = NormalisedVGG19Relu31.from_pretrained().to(device)
    return _SUBSTITUTE_NET[key]


def perceptual_distance(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None,
                        net: FeatureNet | None = None) -> torch.Tensor:
    """VGG-relu3 perceptual distance, **not LPIPS**: the LPIPS formula on the normalised VGG19's
    relu1_1, relu2_1, relu3_1 with uniform channel weights -> (N,).

    The substitute for LPIPS where AlexNet / lpips weights are absent; report it under
    :data:`PERCEPTUAL_DISTANCE_NAME`. Values are not comparable with published LPIPS numbers.
    """
    return lpips_distance(x, y, net if net is not None else substitute_net(x.device), mask)


def distance_name(net: FeatureNet) -> str:
    """How a report should name the distance computed with ``net``."""
    if isinstance(net, LPIPSAlex):
        return LPIPS_NAME
    if isinstance(net, NormalisedVGG19Relu31):
        return PERCEPTUAL_DISTANCE_NAME
    return f"LPIPS-style distance on {getattr(net, 'name', type(net).__name__)} features"


# ---------------------------------------------------------------------------------------------
# Sampling codes and pairs, running a generator
# ---------------------------------------------------------------------------------------------
def latent_noise(shape: Sequence[int], seed: int, *keys: int) -> np.ndarray:
    """N(0, 1) float32 noise that depends only on (seed, keys): results do not depend on run order."""
    return np.random.default_rng([int(seed), *map(int, keys)]).standard_normal(tuple(shape), dtype=np.float32)


def sample_pairs(n: int, m: int, seed: int, *keys: int) -> list[tuple[int, int]]:
    """``m`` distinct unordered pairs (i < j) of indices among ``n`` samples."""
    total = n * (n - 1) // 2
    if n < 2 or m < 1 or m > total:
        raise ValueError(f"cannot draw {m} distinct pairs from {n} samples (at most {total}); "
                         "raise n or lower m")
    rng = np.random.default_rng([int(seed), *map(int, keys)])
    picks = np.sort(rng.choice(total, size=m, replace=False))
    combos = itertools.combinations(range(n), 2)
    chosen, want = [], iter(picks.tolist())
    target = next(want)
    for idx, pair in enumerate(combos):
        if idx == target:
            chosen.append(pair)
            target = next(want, None)
            if target is None:
                break
    return chosen


def model_generate_fn(model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                      device: str | torch.device | None = None) -> GenerateFn:
    """Wrap a raw :class:`smis.model.GroupDNet` (or any torch ``f(z, labels)``) as a ``generate`` callable."""
    if device is not None:
        dev = torch.device(device)
    else:
        params = list(model.parameters()) if isinstance(model, torch.nn.Module) else []
        dev = params[0].device if params else torch.device("cpu")

    @torch.inference_mode()
    def generate(labels: np.ndarray, z: np.ndarray) -> torch.Tensor:
        return model(torch.as_tensor(z, device=dev), torch.as_tensor(labels, device=dev)).float()

    return generate


def _generate(generate: GenerateFn, labels: torch.Tensor, z: np.ndarray, batch_size: int,
              device: torch.device) -> torch.Tensor:
    """Images (K, 3, H, W) on ``device`` for one label map (H, W) and K latents."""
    out = []
    lab_np = labels.cpu().numpy()
    for i in range(0, len(z), batch_size):
        zb = np.ascontiguousarray(z[i:i + batch_size], dtype=np.float32)
        img = generate(np.ascontiguousarray(np.broadcast_to(lab_np, (len(zb), *lab_np.shape))), zb)
        out.append(torch.as_tensor(img).float().to(device))
    return torch.cat(out)


def _pair_distances(images: torch.Tensor, index: dict[int, int], pairs: Sequence[tuple[int, int]],
                    net: FeatureNet, masks: Sequence[torch.Tensor | None], batch_size: int) -> list[torch.Tensor]:
    """Distances of ``pairs`` (sample ids, mapped to rows by ``index``), once per mask."""
    results: list[list[torch.Tensor]] = [[] for _ in masks]
    with torch.no_grad():
        for s in range(0, len(pairs), batch_size):
            chunk = pairs[s:s + batch_size]
            x = images[[index[i] for i, _ in chunk]]
            y = images[[index[j] for _, j in chunk]]
            maps = layer_distance_maps(x, y, net)
            for r, mask in zip(results, masks):
                r.append(reduce_distance_maps(maps, mask).cpu())
    return [torch.cat(r) for r in results]


# ---------------------------------------------------------------------------------------------
# mCSD / mOCD and overall diversity
# ---------------------------------------------------------------------------------------------
@dataclass
class ClassDiversity:
    """L_c (inside class c) and L_!=c (outside it) for one class, over all evaluated masks."""

    class_id: int
    name: str
    #: L_c: mean distance inside class c's area between pairs that differ only in Z_c.
    csd: float
    #: L_!=c: mean distance outside class c's area, same pairs (None if c covers every mask).
    ocd: float | None
    num_masks: int
    num_pairs: int


@dataclass
class SMISDiversity:
    """mCSD = mean_c L_c (higher is better), mOCD = mean_c L_!=c (lower is better)."""

    mcsd: float
    mocd: float
    per_class: list[ClassDiversity] = field(default_factory=list)
    n: int = 0
    m: int = 0
    num_masks: int = 0
    distance: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["per_class"] = {c.name: {k: v for k, v in asdict(c).items() if k != "name"} for c in self.per_class}
        return d


def smis_diversity(generate: GenerateFn, masks: Sequence[torch.Tensor | np.ndarray], net: FeatureNet,
                   latent_shape: Sequence[int], *, z_channels: int = 8, n: int = 100, m: int = 19,
                   classes: Sequence[int] | None = None, class_names: Sequence[str] | None = None,
                   seed: int = 0, batch_size: int = 8, device: str | torch.device | None = None,
                   progress: bool = False) -> SMISDiversity:
    """The paper's mCSD / mOCD.

    For every mask and every class c present in it (restricted to ``classes`` if given): fix all
    codes, then draw ``n`` samples that differ only in Z_c (channels [z*c, z*c + z)); take ``m``
    distinct pairs among them; L_c is the mean distance inside class c's area, L_!=c the mean
    distance of the same pairs outside it. Values are averaged over pairs and masks per class;
    mCSD / mOCD are the means over classes. Paper: n = 100, m = 19, LPIPS (AlexNet).

    Only the samples that appear in the ``m`` pairs are generated (a sample is a pure function of
    (seed, mask, class, index)), which gives the same numbers as generating all ``n``.
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    shape = tuple(int(s) for s in latent_shape)
    num_classes = shape[0] // z_channels
    if shape[0] % z_channels:
        raise ValueError(f"latent has {shape[0]} channels, not a multiple of z_channels={z_channels}")
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    wanted = set(range(num_classes)) if classes is None else {int(c) for c in classes}
    inside: dict[int, list[torch.Tensor]] = {}
    outside: dict[int, list[torch.Tensor]] = {}
    seen: dict[int, int] = {}
    label_maps = [torch.as_tensor(np.asarray(mk)).long() for mk in masks]
    for k, lab in enumerate(label_maps):
        if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= num_classes):
            raise ValueError(f"mask {k} holds class ids {int(lab.min())}..{int(lab.max())}, but the model has "
                             f"{num_classes} classes")
    jobs = [(k, int(c)) for k, lab in enumerate(label_maps) for c in torch.unique(lab).tolist() if int(c) in wanted]
    for k, c in tqdm(jobs, disable=not progress, desc="mCSD/mOCD", unit="class"):
        lab = label_maps[k]
        base = latent_noise(shape, seed, 0, k)
        pairs = sample_pairs(n, m, seed, 3, k, c)
        needed = sorted({i for p in pairs for i in p})
        z = np.repeat(base[None], len(needed), axis=0)
        for row, i in enumerate(needed):
            z[row, z_channels * c:z_channels * (c + 1)] = latent_noise((z_channels, *shape[1:]), seed, 1, k, c, i)
        images = _generate(generate, lab, z, batch_size, dev)
        region = (lab == c).to(dev)
        d_in, d_out = _pair_distances(images, {i: r for r, i in enumerate(needed)}, pairs, net,
                                      [region, ~region], batch_size)
        inside.setdefault(c, []).append(d_in)
        if not bool(region.all()):
            outside.setdefault(c, []).append(d_out)
        seen[c] = seen.get(c, 0) + 1
    per_class = []
    for c in sorted(inside):
        d_in = torch.cat(inside[c])
        d_out = torch.cat(outside[c]) if c in outside else None
        per_class.append(ClassDiversity(c, names[c], float(d_in.nanmean()),
                                        float(d_out.nanmean()) if d_out is not None else None,
                                        seen[c], len(d_in)))
    if not per_class:
        raise ValueError("no class to evaluate: the masks contain none of the requested classes")
    ocds = [p.ocd for p in per_class if p.ocd is not None and math.isfinite(p.ocd)]
    return SMISDiversity(
        mcsd=float(np.mean([p.csd for p in per_class])),
        mocd=float(np.mean(ocds)) if ocds else float("nan"),
        per_class=per_class, n=n, m=m, num_masks=len(label_maps), distance=distance_name(net))


def overall_diversity(generate: GenerateFn, masks: Sequence[torch.Tensor | np.ndarray], net: FeatureNet,
                      latent_shape: Sequence[int], *, n: int = 100, m: int = 19, seed: int = 0,
                      batch_size: int = 8, device: str | torch.device | None = None,
                      progress: bool = False) -> dict:
    """Overall diversity: mean distance between ``m`` pairs of ``n`` samples per mask, all codes re-drawn."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    shape = tuple(int(s) for s in latent_shape)
    dists = []
    for k, mk in enumerate(tqdm(masks, disable=not progress, desc="diversity", unit="mask")):
        lab = torch.as_tensor(np.asarray(mk)).long()
        pairs = sample_pairs(n, m, seed, 4, k)
        needed = sorted({i for p in pairs for i in p})
        z = np.stack([latent_noise(shape, seed, 2, k, i) for i in needed])
        images = _generate(generate, lab, z, batch_size, dev)
        dists.append(_pair_distances(images, {i: r for r, i in enumerate(needed)}, pairs, net, [None], batch_size)[0])
    d = torch.cat(dists)
    return {"mean": float(d.mean()), "std": float(d.std()) if len(d) > 1 else 0.0, "num_pairs": len(d),
            "num_masks": len(masks), "n": n, "m": m, "distance": distance_name(net)}


# ---------------------------------------------------------------------------------------------
# Reconstruction fidelity: does a photo's own code give its colours back?
# ---------------------------------------------------------------------------------------------
def quantize(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> the nearest 8-bit value (as if saved to PNG), still in [-1, 1]."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


def class_mean_colours(images: torch.Tensor, labels: torch.Tensor,
                       num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean RGB (0-255) of every class in every image, and each class's share of the image.

    ``images`` (N, 3, H, W) in [-1, 1], ``labels`` (N, H, W) class ids (others are ignored).
    Returns ``(means (N, C, 3), share (N, C))``; the mean of an absent class is 0.
    """
    rgb = (images.float().clamp(-1, 1) + 1) * 127.5
    valid = (labels >= 0) & (labels < num_classes)
    onehot = F.one_hot(labels.long().clamp(0, num_classes - 1), num_classes).permute(0, 3, 1, 2).float()
    onehot = onehot * valid.unsqueeze(1)
    area = onehot.sum((2, 3))  # (N, C)
    sums = torch.einsum("nchw,nkhw->nck", onehot, rgb)
    return sums / area.clamp_min(1).unsqueeze(-1), area / float(labels[0].numel())


def reconstruction_fidelity(encode: EncodeFn, generate: GenerateFn, dataset: Sequence[dict],
                            class_names: Sequence[str], *, min_share: float = 0.01, batch_size: int = 8,
                            progress: bool = True) -> dict:
    """Encode every photo of ``dataset``, render its mask from the posterior means, compare with the photo.

    The per-class mean-colour error: for each photo and each class covering at least ``min_share``
    of it, |mean RGB of the re-synthesis in that region - mean RGB of the photo there|, averaged over
    the three channels (0-255); ``colour_error`` is the mean over all those (photo, class) pairs and
    ``per_class`` the mean per class with its pair count. ``l1`` is the mean absolute difference of
    the whole image in the same 0-255 units. ``other_photo_error`` is the colour error against the
    *next* photo of the split (its codes would give this much): the scale a value is read on.
    Both images are quantised to 8 bits first, as a viewer sees them.
    """
    num_classes = len(class_names)
    errors: list[torch.Tensor] = []
    presents: list[torch.Tensor] = []
    real_means: list[torch.Tensor] = []
    l1_sum, values = 0.0, 0
    for s in tqdm(range(0, len(dataset), batch_size), disable=not progress, desc="reconstruction", unit="batch"):
        samples = [dataset[i] for i in range(s, min(s + batch_size, len(dataset)))]
        labels = torch.stack([torch.as_tensor(x["label"]) for x in samples]).long()
        real = torch.stack([torch.as_tensor(x["image"]) for x in samples]).float()
        mu, _ = encode(np.ascontiguousarray(real.numpy(), dtype=np.float32), labels.numpy())
        fake = torch.as_tensor(generate(labels.numpy(), np.ascontiguousarray(mu, dtype=np.float32))).float()
        real, fake = quantize(real), quantize(fake)
        l1_sum += float((fake - real).abs().sum()) * 127.5
        values += real.numel()
        m_fake, share = class_mean_colours(fake, labels, num_classes)
        m_real, _ = class_mean_colours(real, labels, num_classes)
        errors.append((m_fake - m_real).abs().mean(-1))
        presents.append(share >= min_share)
        real_means.append(m_real)
    err, present, m_real = torch.cat(errors), torch.cat(presents), torch.cat(real_means)
    other = (m_real.roll(1, 0) - m_real).abs().mean(-1)
    both = present & present.roll(1, 0)
    per_class = {}
    for c, name in enumerate(class_names):
        k = int(present[:, c].sum())
        per_class[name] = {"error": float(err[present[:, c], c].mean()) if k else None, "pairs": k}
    return {"colour_error": float(err[present].mean()) if bool(present.any()) else None,
            "other_photo_error": float(other[both].mean()) if bool(both.any()) else None,
            "l1": l1_sum / max(values, 1), "per_class": per_class, "min_share": min_share,
            "num_images": len(dataset), "units": "0-255"}


# ---------------------------------------------------------------------------------------------
# FID and KID
# ---------------------------------------------------------------------------------------------
def feature_statistics(features: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64."""
    f = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor) else features)
    f = f.detach().to("cpu", torch.float64)
    if f.dim() != 2 or f.shape[0] < 2:
        raise ValueError(f"need features (N, D) with N >= 2, got {tuple(f.shape)}")
    mu = f.mean(0)
    x = f - mu
    return mu, x.T @ x / (f.shape[0] - 1)


def _sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh((a + a.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def _trace_sqrt_product(s1: torch.Tensor, s2: torch.Tensor, method: str, eps: float) -> float:
    """tr(sqrt(s1 @ s2)) for covariance matrices."""
    if method == "auto":
        method = "scipy" if importlib.util.find_spec("scipy") is not None else "eigh"
    if method == "eigh":
        # sqrt(s1) s2 sqrt(s1) is symmetric PSD and has the same eigenvalues as s1 s2.
        r = _sqrtm_psd(s1)
        vals = torch.linalg.eigvalsh(r @ s2 @ r)
        return float(vals.clamp_min(0).sqrt().sum())
    if method == "scipy":
        import scipy.linalg  # optional (requirements-train.txt): "auto" picks it only where installed

        a, b = s1.numpy(), s2.numpy()
        with warnings.catch_warnings():
            # Few samples make the product singular; the result is checked just below.
            warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
            covmean = scipy.linalg.sqrtm(a @ b)
        if not np.isfinite(covmean).all():
            # Near-singular product (few samples): offset both diagonals, as pytorch-fid does.
            logger.warning("FID: singular covariance product; adding %g to the diagonals", eps)
            off = np.eye(a.shape[0]) * eps
            covmean = scipy.linalg.sqrtm((a + off) @ (b + off))
        if np.iscomplexobj(covmean):
            covmean = covmean.real
        return float(np.trace(covmean))
    raise ValueError(f"unknown method {method!r}; use 'auto', 'scipy' or 'eigh'")


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor,
                     method: str = "auto", eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr(sqrt(S1 S2)): the Frechet distance of two Gaussians.

    ``method``: ``"scipy"`` (``scipy.linalg.sqrtm``, pytorch-fid's way), ``"eigh"`` (torch
    symmetric eigen-decompositions; exact for PSD matrices, no scipy needed) or ``"auto"``.
    """
    mu1, mu2, s1, s2 = (torch.as_tensor(t, dtype=torch.float64) for t in (mu1, mu2, sigma1, sigma2))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.numel(), mu1.numel()):
        raise ValueError(f"statistics do not match: mu {tuple(mu1.shape)} / {tuple(mu2.shape)}, "
                         f"sigma {tuple(s1.shape)} / {tuple(s2.shape)}")
    diff = float((mu1 - mu2).pow(2).sum())
    return diff + float(torch.trace(s1) + torch.trace(s2)) - 2 * _trace_sqrt_product(s1, s2, method, eps)


def fid_from_features(real: torch.Tensor | np.ndarray, fake: torch.Tensor | np.ndarray,
                      method: str = "auto") -> float:
    """Frechet distance between the Gaussians fitted to two feature sets (N, D) — FID on Inception pool3."""
    return frechet_distance(*feature_statistics(real), *feature_statistics(fake), method=method)


def polynomial_mmd2(x: torch.Tensor, y: torch.Tensor, degree: int = 3, coef0: float = 1.0) -> float:
    """Unbiased MMD^2 with the kernel k(a, b) = (a.b / d + coef0) ** degree (KID's kernel)."""
    x, y = x.to(torch.float64), y.to(torch.float64)
    d = x.shape[1]
    kxx = (x @ x.T / d + coef0) ** degree
    kyy = (y @ y.T / d + coef0) ** degree
    kxy = (x @ y.T / d + coef0) ** degree
    m, n = len(x), len(y)
    return float((kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
                 + (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
                 - 2 * kxy.mean())


def kid_from_features(real: torch.Tensor | np.ndarray, fake: torch.Tensor | np.ndarray,
                      num_subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> dict:
    """Kernel Inception Distance: mean and std of unbiased polynomial MMD^2 over random subsets.

    ``subset_size`` is capped at the smaller feature set (one subset when that is both whole sets).
    Returns ``{"mean", "std", "num_subsets", "subset_size"}``.
    """
    r = torch.as_tensor(np.asarray(real) if not isinstance(real, torch.Tensor) else real).detach().cpu()
    f = torch.as_tensor(np.asarray(fake) if not isinstance(fake, torch.Tensor) else fake).detach().cpu()
    size = min(subset_size, len(r), len(f))
    if size < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(r)} and {len(f)}")
    if size == len(r) == len(f):
        num_subsets = 1  # every subset would be the whole of both sets
    rng = np.random.default_rng(seed)
    vals = [polynomial_mmd2(r[rng.choice(len(r), size, replace=False)], f[rng.choice(len(f), size, replace=False)])
            for _ in range(num_subsets)]
    return {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "num_subsets": num_subsets,
            "subset_size": size}


# ---------------------------------------------------------------------------------------------
# Segmentation scores
# ---------------------------------------------------------------------------------------------
def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int | None = None) -> torch.Tensor:
    """(C, C) int64 counts: row = true class, column = predicted class.

    Target pixels equal to ``ignore_index`` (or outside 0..C-1) are left out.
    """
    p = torch.as_tensor(pred).reshape(-1).long().cpu()
    t = torch.as_tensor(target).reshape(-1).long().cpu()
    if p.shape != t.shape:
        raise ValueError(f"prediction and truth differ in size: {tuple(pred.shape)} vs {tuple(target.shape)}")
    keep = (t >= 0) & (t < num_classes)
    if ignore_index is not None:
        keep &= t != ignore_index
    p, t = p[keep], t[keep]
    if p.numel() and (p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f"predicted class ids must lie in 0..{num_classes - 1}")
    return torch.bincount(t * num_classes + p, minlength=num_classes ** 2).view(num_classes, num_classes)


def segmentation_scores(confusion: torch.Tensor, class_names: Sequence[str] | None = None) -> dict:
    """Pixel accuracy, mIoU and per-class IoU / accuracy from a confusion matrix.

    Classes absent from both prediction and truth have no IoU (``None``), are left out of the mean
    and listed under ``"absent_classes"``. A class predicted but never true has IoU 0 and counts.
    """
    cm = torch.as_tensor(confusion).to(torch.float64)
    c = cm.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(c)]
    tp = cm.diagonal()
    truth = cm.sum(1)
    predicted = cm.sum(0)
    union = truth + predicted - tp
    per_class, ious, absent = {}, [], []
    for i in range(c):
        iou = float(tp[i] / union[i]) if union[i] > 0 else None
        acc = float(tp[i] / truth[i]) if truth[i] > 0 else None
        per_class[names[i]] = {"iou": iou, "accuracy": acc, "true_pixels": int(truth[i]),
                               "predicted_pixels": int(predicted[i])}
        if iou is None:
            absent.append(names[i])
        else:
            ious.append(iou)
    total = float(cm.sum())
    return {
        "pixel_accuracy": float(tp.sum() / total) if total > 0 else float("nan"),
        "mean_iou": float(np.mean(ious)) if ious else float("nan"),
        "num_classes_in_mean": len(ious),
        "absent_classes": absent,
        "per_class": per_class,
    }
