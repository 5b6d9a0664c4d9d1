"""Evaluate a GroupDNet model folder on a held-out split: FID / KID, diversity, mCSD / mOCD
(and segmentation mIoU / accuracy when a parser is given).

    python -m train.evaluate --model runs/ccp/model --data data/ccp --format ccp --split val \\
        --num-masks 20 --n 100 --m 19 --out outputs/eval-ccp

Writes ``metrics.json`` and ``metrics.md`` to ``--out``. Which networks were used is part of
every number's name:

- the distance for mCSD / mOCD / diversity is LPIPS v0.1 (AlexNet) when ``--alexnet-weights`` and
  ``--lpips-weights`` are available, otherwise the shipped substitute "VGG-relu3 perceptual
  distance" (not LPIPS; not comparable with the paper's numbers);
- FID / KID use InceptionV3 pool3 features when ``--inception-weights`` are available, otherwise
  the substitute Frechet distance on pooled VGG-relu3 features (not FID).

Without a path, ImageNet weights are looked up in torchvision's cache (``$TORCH_HOME/hub/
checkpoints``) and, with ``--download-weights``, downloaded there.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from smis.backends import auto_device
from smis.functional import to_uint8
from smis.hub import METRICS_NAME, class_control
from smis.labels import resize_labels
from smis.parsing import HumanParser
from smis.pipeline import SMISPipeline

from . import features as feat
from . import metrics as M
from .data import build_dataset
from .formats import resolve_format
from .inception import InceptionV3Pool

logger = logging.getLogger(__name__)

#: A segmentation network for the mIoU hook: images (N, 3, H, W) in [-1, 1] -> class ids (N, H, W).
Parser = Callable[[torch.Tensor], torch.Tensor]

FID_SUBSTITUTE_NAME = ("Frechet distance on pooled VGG-relu3 features, not FID (normalised VGG19 relu1_1-relu3_1, "
                       "global average pooled, 448-d)")
KID_SUBSTITUTE_NAME = "KID on pooled VGG-relu3 features, not Inception KID"


# ---------------------------------------------------------------------------------------------
# Choosing the feature networks
# ---------------------------------------------------------------------------------------------
def load_distance_net(lpips_weights: str | None = None, alexnet_weights: str | None = None,
                      download: bool = False, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """LPIPS (AlexNet) if its weights can be had, else the substitute VGG-relu3 network.

    Explicit paths that do not load are errors; weights that are merely absent fall back to the
    substitute with a warning. Returns the network and a description for the report.
    """
    heads = lpips_weights or feat.find_lpips_heads()
    if heads is not None:
        try:
            net = feat.LPIPSAlex.from_pretrained(heads, alexnet_weights, download=download)
            return net.to(device), {"name": M.LPIPS_NAME, "network": net.name, "substitute": False,
                                    "lpips_weights": str(heads),
                                    "alexnet_weights": alexnet_weights or "torch hub cache"}
        except feat.FeatureWeightsUnavailable as err:
            if lpips_weights or alexnet_weights:
                raise
            logger.warning("LPIPS unavailable (%s)", err)
    elif alexnet_weights:
        raise feat.FeatureWeightsUnavailable(f"--alexnet-weights needs the LPIPS heads too; {feat.LPIPS_HINT}")
    logger.warning("using the substitute VGG-relu3 perceptual distance (not LPIPS) for mCSD/mOCD/diversity")
    net = feat.NormalisedVGG19Relu31.from_pretrained()
    return net.to(device), {"name": M.PERCEPTUAL_DISTANCE_NAME, "network": net.name, "substitute": True,
                            "weights": str(feat.NORMALISED_VGG19_FILE.name)}


def describe_fid_net(net: torch.nn.Module) -> dict:
    """How the report names FID / KID computed on ``net``'s features (substitutes say so)."""
    if isinstance(net, InceptionV3Pool):
        return {"fid_name": f"FID (InceptionV3 pool3, {net.variant} weights)", "kid_name": "KID (InceptionV3 pool3)",
                "network": f"{net.name}-{net.variant}", "substitute": False}
    if isinstance(net, feat.PooledFeatures) and isinstance(net.net, feat.NormalisedVGG19Relu31):
        return {"fid_name": FID_SUBSTITUTE_NAME, "kid_name": KID_SUBSTITUTE_NAME, "network": net.name,
                "substitute": True}
    name = getattr(net, "name", type(net).__name__)
    return {"fid_name": f"Frechet distance on {name} features, not Inception FID",
            "kid_name": f"KID on {name} features, not Inception KID", "network": name, "substitute": True}


def load_fid_net(inception_weights: str | None = None, download: bool = False,
                 device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """InceptionV3 pool3 if its weights can be had, else pooled VGG-relu3 features (substitute)."""
    try:
        net = InceptionV3Pool.from_pretrained(inception_weights, download=download)
        return net.to(device), {**describe_fid_net(net), "weights": inception_weights or "torch hub cache"}
    except feat.FeatureWeightsUnavailable as err:
        if inception_weights:
            raise
        logger.warning("Inception weights unavailable (%s); reporting the substitute Frechet distance", err)
    net = feat.PooledFeatures(feat.NormalisedVGG19Relu31.from_pretrained())
    return net.to(device), describe_fid_net(net)


# ---------------------------------------------------------------------------------------------
# The evaluation
# ---------------------------------------------------------------------------------------------
def upscaled_generate(generate: M.GenerateFn, size: tuple[int, int], height: int, width: int) -> M.GenerateFn:
    """A smaller model as seen at ``height`` x ``width``: each label map resized (nearest) to the model's
    ``size``, its images upscaled with a Lanczos filter (what the demo showed) -- the baseline a grown
    model must beat (``--baseline``)."""
    def up(labels: np.ndarray, z: np.ndarray) -> torch.Tensor:
        small = np.stack([resize_labels(np.asarray(lab), *size) for lab in labels])
        images = to_uint8(torch.as_tensor(np.asarray(generate(small, z))).float().cpu()).numpy()
        big = [np.asarray(Image.fromarray(im).resize((width, height), Image.LANCZOS)) for im in images]
        return torch.from_numpy(np.stack(big)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return up


def spread_indices(count: int, total: int) -> list[int]:
    """``count`` indices spread evenly over ``range(total)`` (all of them if count >= total)."""
    if count >= total:
        return list(range(total))
    return sorted({int(round(v)) for v in np.linspace(0, total - 1, count)})


def evaluate(generate: M.GenerateFn, config: Any, dataset: Sequence[dict], *, distance_net: torch.nn.Module,
             fid_net: torch.nn.Module, n: int = 100, m: int = 19, num_masks: int = 10,
             num_fid: int | None = None, fid_samples: int = 1, batch_size: int = 8, seed: int = 0,
             device: str | torch.device = "cpu", parser: Parser | None = None,
             kid_subsets: int = 100, kid_subset_size: int = 1000, fid_method: str = "auto",
             encode: M.EncodeFn | None = None, baseline: M.GenerateFn | None = None,
             progress: bool = True) -> dict:
    """All metrics for one generator on one dataset split; returns the ``metrics.json`` content.

    ``config``: the model's :class:`smis.config.SMISConfig`; ``dataset``: samples ``{"image",
    "label"}`` at the model's size. FID / KID compare ``num_fid`` real photos (all by default) with
    ``fid_samples`` generated images per label map (random codes; more than one steadies the
    distance on a small split, the first is the same draw as with one). mCSD / mOCD and diversity use ``num_masks``
    label maps spread over the split. ``parser`` (optional) labels generated and real images for
    mIoU / accuracy against the ground-truth maps. ``encode`` (optional, a backend's ``encode``)
    adds the reconstruction fidelity of every photo of the split (encode -> generate from the posterior
    means: per-class mean-colour error and L1, :func:`train.metrics.reconstruction_fidelity`). ``baseline``
    (optional, e.g. :func:`upscaled_generate` of a smaller model) draws the same codes for the same masks and
    gets its own FID / KID against the same real features (``fid_baseline``). FID /
    KID are named after ``fid_net`` (:func:`describe_fid_net`); ``fid_method`` picks the matrix square root (see
    :func:`train.metrics.frechet_distance`).
    """
    dev = torch.device(device)
    total = len(dataset)
    if total == 0:
        raise ValueError("the evaluation split is empty")
    if fid_samples < 1:
        raise ValueError(f"fid_samples must be >= 1, got {fid_samples}")
    latent_shape = config.latent_shape()
    out: dict[str, Any] = {}

    # 1. FID / KID (and segmentation) over the split: real photos vs one generated image per mask.
    count = total if num_fid is None else min(num_fid, total)
    real_feats, fake_feats, base_feats = [], [], []
    conf_fake = torch.zeros(config.num_classes, config.num_classes, dtype=torch.int64)
    conf_real = conf_fake.clone()
    pixels = torch.zeros(config.num_classes, dtype=torch.int64)
    starts = range(0, count, batch_size)
    for s in tqdm(starts, disable=not progress, desc="FID images", unit="batch"):
        samples = [dataset[i] for i in range(s, min(s + batch_size, count))]
        labels = torch.stack([torch.as_tensor(x["label"]) for x in samples]).long()
        real = torch.stack([torch.as_tensor(x["image"]) for x in samples]).float()
        pixels += torch.bincount(labels[(labels >= 0) & (labels < config.num_classes)], minlength=config.num_classes)
        real = M.quantize(real).to(dev)
        with torch.no_grad():
            real_feats.append(fid_net(real).float().cpu())
            if parser is not None:
                conf_real += M.confusion_matrix(parser(real), labels, config.num_classes)
        for k in range(fid_samples):  # draw k of image i: keys (5, i) for the first, (5, i, k) after
            z = np.stack([M.latent_noise(latent_shape, seed, 5, i, *((k,) if k else ()))
                          for i in range(s, s + len(samples))])
            fake = M.quantize(torch.as_tensor(generate(labels.numpy(), z)).float()).to(dev)
            with torch.no_grad():
                fake_feats.append(fid_net(fake).float().cpu())
                if parser is not None:
                    conf_fake += M.confusion_matrix(parser(fake), labels, config.num_classes)
            if baseline is not None:
                base = M.quantize(torch.as_tensor(baseline(labels.numpy(), z)).float()).to(dev)
                with torch.no_grad():
                    base_feats.append(fid_net(base).float().cpu())
    rf, ff = torch.cat(real_feats), torch.cat(fake_feats)
    # Each class's share of the label pixels of those images (which classes a per-class bar covers).
    out["class_pixel_share"] = dict(zip(config.class_names, (pixels.double() / max(int(pixels.sum()), 1)).tolist()))
    fid_info = describe_fid_net(fid_net)
    if count >= 2:
        if count <= rf.shape[1]:
            logger.warning("FID from %d images of %d-d features: the covariances are singular and the value is "
                           "strongly biased upwards; compare only runs with the same count", count, rf.shape[1])
        out["fid"] = {"name": fid_info["fid_name"], "value": M.fid_from_features(rf, ff, fid_method),
                      "num_real": len(rf), "num_fake": len(ff), "samples_per_mask": fid_samples,
                      "feature_dim": int(rf.shape[1]),
                      "substitute": fid_info["substitute"],
                      # The same distance between two halves of the real photos: the floor at this count.
                      "real_halves": M.fid_from_features(rf[0::2], rf[1::2], fid_method) if count >= 4 else None}
        kid = M.kid_from_features(rf, ff, num_subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
        out["kid"] = {"name": fid_info["kid_name"], **kid, "num_real": len(rf), "num_fake": len(ff),
                      "substitute": fid_info["substitute"]}
        if base_feats:
            bf = torch.cat(base_feats)
            out["fid_baseline"] = {
                "value": M.fid_from_features(rf, bf, fid_method), "num_fake": len(bf),
                "kid": M.kid_from_features(rf, bf, num_subsets=kid_subsets, subset_size=kid_subset_size,
                                           seed=seed)["mean"]}
    else:
        logger.warning("FID/KID need at least 2 images; skipped")
        out["fid"] = out["kid"] = None

    # 2. Diversity and mCSD / mOCD on a few label maps.
    picks = spread_indices(num_masks, total)
    masks = [torch.as_tensor(dataset[i]["label"]).long() for i in picks]
    out["diversity"] = M.overall_diversity(generate, masks, distance_net, latent_shape, n=n, m=m, seed=seed,
                                           batch_size=batch_size, device=dev, progress=progress)
    smis = M.smis_diversity(generate, masks, distance_net, latent_shape, z_channels=config.z_channels, n=n, m=m,
                            class_names=config.class_names, seed=seed, batch_size=batch_size, device=dev,
                            progress=progress)
    out["smis"] = smis.to_dict()
    out["smis"]["mask_indices"] = picks

    # 3. Reconstruction: a photo's own codes should give its colours back.
    out["reconstruction"] = (M.reconstruction_fidelity(encode, generate, dataset, config.class_names,
                                                       batch_size=batch_size, progress=progress)
                             if encode is not None else None)

    # 4. Segmentation (hook: the parser is optional).
    if parser is not None:
        out["segmentation"] = {
            "generated": M.segmentation_scores(conf_fake, config.class_names),
            "real_photos": M.segmentation_scores(conf_real, config.class_names),
            "num_images": count,
        }
    else:
        out["segmentation"] = None
    return out


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------
def _fmt(v: float | None, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}f}"


def to_markdown(results: dict) -> str:
    """The human-readable table of ``metrics.json``."""
    r = results
    dist = r["distance"]["name"]
    lines = [f"# Evaluation of `{r['model']['path']}` ({r['model']['name']})", "",
             f"Data: `{r['data']['root']}` ({r['data']['format']}, split `{r['data']['split']}`, "
             f"{r['data']['num_images']} images at {r['model']['height']}x{r['model']['width']}); seed {r['seed']}.",
             "", f"Distance for diversity / mCSD / mOCD: **{dist}**.", ""]
    if r.get("truncation", 1.0) != 1.0:
        lines += [f"> Every random code was scaled by psi = {r['truncation']:g} (`--truncation`): not comparable "
                  "with evaluations at the prior (psi = 1).", ""]
    if r["distance"].get("substitute") or (r.get("fid") and r["fid"].get("substitute")):
        lines += ["> Substitute networks were used (no ImageNet AlexNet / Inception weights): these numbers "
                  "are not comparable with the paper's LPIPS / FID.", ""]
    lines += ["| metric | value | computed on |", "|---|---|---|"]
    if r.get("fid"):
        f = r["fid"]
        lines.append(f"| {f['name']} (lower is better) | {_fmt(f['value'], 3)} | {f['num_real']} real vs "
                     f"{f['num_fake']} generated images, {f['feature_dim']}-d features; real half vs real half: "
                     f"{_fmt(f.get('real_halves'), 3)} |")
    base = r.get("fid_baseline")
    if base and r.get("fid"):
        b = r.get("baseline") or {}
        lines.append(f"| the same distance for the baseline `{b.get('path', '?')}` ({b.get('how', '')}) | "
                     f"{_fmt(base['value'], 3)} | same real photos, the same masks and codes "
                     f"({base['num_fake']} images); this model minus the baseline: "
                     f"{_fmt(r['fid']['value'] - base['value'], 3)} |")
    if r.get("kid"):
        k = r["kid"]
        lines.append(f"| {k['name']} (lower is better) | {_fmt(k['mean'], 5)} ± {_fmt(k['std'], 5)} | "
                     f"{k['num_subsets']} subsets of {k['subset_size']} |")
    d = r["diversity"]
    lines.append(f"| overall diversity (higher is better) | {_fmt(d['mean'])} | {d['num_pairs']} pairs "
                 f"({d['m']} per mask of n={d['n']} samples, {d['num_masks']} masks), all codes re-drawn |")
    s = r["smis"]
    pairs = sum(c["num_pairs"] for c in s["per_class"].values())
    lines.append(f"| mCSD (higher is better) | {_fmt(s['mcsd'])} | {len(s['per_class'])} classes, "
                 f"{s['num_masks']} masks, n={s['n']}, m={s['m']} ({pairs} pairs) |")
    lines.append(f"| mOCD (lower is better) | {_fmt(s['mocd'])} | same pairs, outside each class |")
    rec = r.get("reconstruction")
    if rec:
        lines.append(f"| colour error of a photo's own codes, 0-255 (lower is better) | "
                     f"{_fmt(rec['colour_error'], 1)} | "
                     f"{rec['num_images']} photos encoded"
                     + (f", codes fitted by {r['refine_steps']} steps (--refine)" if r.get("refine_steps") else "")
                     + " and re-rendered; per-class mean RGB vs the photo's, classes "
                     f"covering >= {100 * rec['min_share']:g} % (another photo's colours: "
                     f"{_fmt(rec['other_photo_error'], 1)}) |")
        lines.append(f"| reconstruction L1, 0-255 (lower is better) | {_fmt(rec['l1'], 1)} | same images |")
    seg = r.get("segmentation")
    if seg:
        g, rp = seg["generated"], seg["real_photos"]
        ratio = g["mean_iou"] / rp["mean_iou"] if rp["mean_iou"] else None
        lines.append(f"| mIoU, generated (parser) | {_fmt(g['mean_iou'])} | {seg['num_images']} images, "
                     f"{g['num_classes_in_mean']} classes (real photos: {_fmt(rp['mean_iou'])}; "
                     f"generated / real: {_fmt(ratio, 2)}) |")
        lines.append(f"| pixel accuracy, generated | {_fmt(g['pixel_accuracy'])} | real photos: "
                     f"{_fmt(rp['pixel_accuracy'])} |")
    share = r.get("class_pixel_share") or {}
    lines += ["", "## Per class", "",
              "| class | share of the pixels | L_c (inside) | L_≠c (outside) | L_c / L_≠c | masks | pairs |",
              "|---|---|---|---|---|---|---|"]
    ratios = class_control(r)
    for name, c in s["per_class"].items():
        ratio = ratios.get(name)
        pct = f"{100 * share[name]:.2f} %" if name in share else "n/a"
        lines.append(f"| {name} | {pct} | {_fmt(c['csd'])} | {_fmt(c['ocd'])} | {_fmt(ratio, 2)} | "
                     f"{c['num_masks']} | {c['num_pairs']} |")
    if rec:
        lines += ["", "| class | colour error of its own codes (0-255) | photos |", "|---|---|---|"]
        for name, c in rec["per_class"].items():
            lines.append(f"| {name} | {_fmt(c['error'], 1)} | {c['pairs']} |")
    if seg:
        lines += ["", "| class | IoU generated | IoU real | accuracy generated |", "|---|---|---|---|"]
        for name, c in seg["generated"]["per_class"].items():
            lines.append(f"| {name} | {_fmt(c['iou'])} | {_fmt(seg['real_photos']['per_class'][name]['iou'])} | "
                         f"{_fmt(c['accuracy'])} |")
        absent = seg["generated"]["absent_classes"]
        if absent:
            lines += ["", f"Absent from both prediction and truth (not in the mean): {', '.join(absent)}."]
    return "\n".join(lines) + "\n"


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_reports(results: dict, out_dir: str | Path) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    j, md = out / METRICS_NAME, out / "metrics.md"
    j.write_text(json.dumps(_json_safe(results), indent=2) + "\n")
    md.write_text(to_markdown(results))
    return j, md


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="GroupDNet model folder (config.json + safetensors) or Hub id")
    p.add_argument("--data", required=True, help="dataset root")
    p.add_argument("--format", default="auto",
                   help="dataset layout, see train/formats.py (default: auto, found from the folder)")
    p.add_argument("--split", default="val", help="held-out split (default: val)")
    p.add_argument("--out", default="outputs/eval",
                   help="folder for metrics.json and metrics.md (default: outputs/eval)")
    p.add_argument("--lpips-weights", help="lpips' weights/v0.1/alex.pth (found automatically if lpips is installed)")
    p.add_argument("--alexnet-weights", help="torchvision alexnet-owt-7be5be79.pth (.pth or .safetensors)")
    p.add_argument("--inception-weights", help="pytorch-fid pt_inception-2015-12-05-6726825d.pth or torchvision "
                                               "inception_v3_google-0cc3c7bd.pth")
    p.add_argument("--download-weights", action="store_true",
                   help="download missing AlexNet / Inception weights into torchvision's cache")
    p.add_argument("--parser", help="human-parser folder (smis.parsing.HumanParser) for mIoU / accuracy")
    p.add_argument("--n", type=int, default=100,
                   help="samples per (mask, class) for mCSD/mOCD and per mask for diversity (default and paper: 100)")
    p.add_argument("--m", type=int, default=19, help="pairs among those samples (default and paper: 19)")
    p.add_argument("--num-masks", type=int, default=10,
                   help="label maps, spread over the split, for mCSD/mOCD and diversity (default: 10)")
    p.add_argument("--num-fid", type=int, default=None, help="images for FID/KID (default: the whole split)")
    p.add_argument("--fid-samples", type=int, default=1,
                   help="generated images per label map for FID/KID (default: 1; more steadies a small split)")
    p.add_argument("--fid-method", default="auto", choices=["auto", "scipy", "eigh"],
                   help="matrix square root: scipy.linalg.sqrtm (pytorch-fid's; auto = if scipy is installed) or "
                        "torch eigen-decompositions (exact for covariances, faster) (default: auto)")
    p.add_argument("--kid-subsets", type=int, default=100, help="random subsets for KID (default: 100)")
    p.add_argument("--kid-subset-size", type=int, default=1000,
                   help="images per KID subset, capped at the set size (default: 1000)")
    p.add_argument("--batch-size", type=int, default=8, help="images per generator / feature call (default: 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of every code and pair drawn (default: 0)")
    p.add_argument("--truncation", type=float, default=1.0, metavar="PSI",
                   help="scale every random code by PSI before the generator (the truncation trick: fewer "
                        "unusual draws, less diversity; default: 1, the prior the model was trained with)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: auto)")
    p.add_argument("--backend", default="torch", choices=["torch", "onnx"], help="inference backend (default: torch)")
    p.add_argument("--no-reconstruction", action="store_true",
                   help="skip the reconstruction fidelity (encode every photo, render it from its own codes: "
                        "per-class mean-colour error and L1)")
    p.add_argument("--refine", type=int, default=0, metavar="STEPS",
                   help="fit each photo's codes by STEPS gradient steps before re-rendering it, as the demo's photo "
                        "flow does (SMISPipeline.encode(refine=...); default: 0, the encoder's means)")
    p.add_argument("--baseline", metavar="MODEL",
                   help="another model folder to compare in the same evaluation: the same masks and codes, its "
                        "images upscaled to this model's size with a Lanczos filter when it is smaller (e.g. the "
                        "192x128 model a 384x256 one was grown from); adds its Frechet distance and KID")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _encoder(pipe: Any, refine: int) -> M.EncodeFn:
    """The backend's ``encode``, its means then fitted by ``refine`` steps (:meth:`SMISPipeline.fit_codes`)."""
    if refine <= 0:
        return pipe.backend.encode

    def encode(photos: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu, logvar = pipe.backend.encode(photos, labels)
        return pipe.fit_codes(photos, labels, mu, refine), logvar

    return encode


def _baseline(args: argparse.Namespace, config: Any, device: str) -> tuple[M.GenerateFn | None, dict | None]:
    """``--baseline``: the other model's generate at this model's size, and how it was made (for the report)."""
    if not args.baseline:
        return None, None
    pipe = SMISPipeline.from_pretrained(args.baseline, backend=args.backend, device=device)
    other = pipe.config
    if tuple(other.class_names) != tuple(config.class_names):
        raise ValueError(f"the baseline's classes {other.class_names} differ from the model's {config.class_names}")
    if tuple(other.latent_shape()) != tuple(config.latent_shape()):
        raise ValueError(f"the baseline's codes {tuple(other.latent_shape())} differ from the model's "
                         f"{tuple(config.latent_shape())}: the same codes cannot be drawn for both")
    size = (other.height, other.width)
    if size == (config.height, config.width):
        return pipe.backend.generate, {"path": str(args.baseline), "how": f"{size[0]}x{size[1]}, as is"}
    if other.height > config.height or other.width > config.width:
        raise ValueError(f"the baseline ({size[0]}x{size[1]}) is larger than the model "
                         f"({config.height}x{config.width}); evaluate the larger one with the smaller as baseline")
    return (upscaled_generate(pipe.backend.generate, size, config.height, config.width),
            {"path": str(args.baseline),
             "how": f"{size[0]}x{size[1]}, masks resized (nearest), images upscaled with Lanczos"})


def main(argv: Sequence[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name, v in (("--n", args.n), ("--m", args.m), ("--num-masks", args.num_masks),
                    ("--batch-size", args.batch_size), ("--fid-samples", args.fid_samples)):
        if v < 1:
            print(f"error: {name} must be positive, got {v}", file=sys.stderr)
            return 2
    if not 0.0 <= args.truncation <= 4.0:
        print(f"error: --truncation must be between 0 and 4, got {args.truncation}", file=sys.stderr)
        return 2
    if args.m > args.n * (args.n - 1) // 2:
        print(f"error: --m {args.m} pairs cannot be drawn from --n {args.n} samples; raise --n or lower --m",
              file=sys.stderr)
        return 2
    t0 = time.time()
    device = args.device or auto_device()
    try:
        # Feature networks first: a wrong weights path fails before the model and data are read.
        distance_net, distance_info = load_distance_net(args.lpips_weights, args.alexnet_weights,
                                                        args.download_weights, device)
        fid_net, fid_info = load_fid_net(args.inception_weights, args.download_weights, device)
        pipe = SMISPipeline.from_pretrained(args.model, backend=args.backend, device=device)
        config = pipe.config
        fmt = resolve_format(args.format, args.data)
        dataset = build_dataset(fmt, args.data, args.split, config.height, config.width,
                                augment=False, on_bad="skip")
        if dataset.num_classes != config.num_classes:
            raise ValueError(f"the dataset has {dataset.num_classes} classes but the model {config.num_classes}; "
                             "pass the --format the model was trained on")
        if tuple(dataset.class_names) != tuple(config.class_names):
            logger.warning("dataset class names differ from the model's; assuming the same ids")
        parser = None
        if args.parser:
            parser = HumanParser.from_pretrained(args.parser, device=device)
            if tuple(parser.class_names) != tuple(config.class_names):
                raise ValueError(f"the parser's classes {parser.class_names} differ from the model's "
                                 f"{config.class_names}; use a parser trained on the same label set")
        baseline, baseline_info = _baseline(args, config, device)
        generate = pipe.backend.generate
        if args.truncation != 1.0:
            psi = float(args.truncation)

            def generate(labels, z, _generate=pipe.backend.generate):
                return _generate(labels, (np.asarray(z) * psi).astype(np.float32))
        results = evaluate(generate, config, dataset, distance_net=distance_net, fid_net=fid_net,
                           n=args.n, m=args.m, num_masks=args.num_masks, num_fid=args.num_fid,
                           fid_samples=args.fid_samples,
                           batch_size=args.batch_size, seed=args.seed, device=device, parser=parser,
                           kid_subsets=args.kid_subsets, kid_subset_size=args.kid_subset_size,
                           fid_method=args.fid_method, progress=not args.quiet,
                           encode=None if args.no_reconstruction else _encoder(pipe, args.refine),
                           baseline=baseline)
    except (ValueError, feat.FeatureWeightsUnavailable) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report = {
        "model": {"path": str(args.model), "name": config.name, "classes": list(config.class_names),
                  "height": config.height, "width": config.width, "backend": pipe.backend.name,
                  "device": pipe.backend.device},
        "data": {"root": str(args.data), "format": fmt, "split": args.split, "num_images": len(dataset)},
        "seed": args.seed, "truncation": args.truncation, "refine_steps": args.refine,
        **({"baseline": baseline_info} if baseline_info else {}),
        "distance": distance_info,
        "fid_features": fid_info,
        **results,
        "seconds": round(time.time() - t0, 1),
    }
    j, md = write_reports(report, args.out)
    print(to_markdown(report))
    logger.info("wrote %s and %s", j, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
