"""What the training loop shows and measures while it runs (cheap, every sample grid).

- **The progress grid** (:func:`render_sample_grid`): fixed training masks rendered with fixed
  codes, and one class re-rolled, by the EMA model.

- **Reconstruction distance**: encode a val photo with its mask, generate from the posterior mean on
  the same mask, compare with the photo (L1 in [-1, 1] units, and the perceptual loss's distance
  when the run has one). Falls when the codes carry the photo's appearance.
- **KL in nats per image** of the val photos' posteriors (how much the codes carry), and per class
  the **spread of the encoder's means** over the photos (std of mu_c, averaged over its 8 numbers):
  near 0, the encoder reads nothing from that class's pixels.
- **Re-roll locality per class**: re-draw one class's code (everything else fixed) and measure the
  mean absolute change inside that class's region and outside it. A class whose inside change stays
  near 0 has a collapsed code (re-rolling it does nothing), the failure the pilot run showed.

- **The discriminator's view** (:func:`discriminator_probe`): D's mean logit on training photos,
  on val photos and on generated images, and the fraction of each it calls real (the sign statistic
  r_t of Karras et al., "Training GANs with limited data", 2020). Training photos scored well above
  val photos mean D memorises the training set, the overfitting that differentiable augmentation
  (``--diffaug``) is for; a gap near 0 means it does not, whatever else limits the samples.

The same probe on any model folder (``python -m train.monitor --model M --data D``) prints a
table per class, with which end of a dead code is dead: the encoder (no spread), the decoder (no
change inside the class), or both; on a training state (``--state S``) it adds D's view.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from smis import GroupDNet, MultiscaleDiscriminator, SMISConfig, hub
from smis.codes import ClassCodes
from smis.functional import kl_per_class, one_hot, to_uint8
from smis.labels import ids_to_color

from .checkpoint import TrainingStateError, load_state
from .data import build_dataset
from .history import OVERFIT_GAP
from .options import TrainOptions

logger = logging.getLogger(__name__)


class SampleGrids:
    """The fixed masks of the progress grid and the val images of the probe, picked once per run
    (``enabled`` on rank 0 only; nothing to show elsewhere or with ``--sample-every 0``)."""

    def __init__(self, dataset: Dataset, opts: TrainOptions, config: SMISConfig, perceptual: nn.Module | None,
                 enabled: bool = True):
        r = opts.run
        self.samples = fixed_samples(dataset, r.sample_count) if enabled and r.sample_every else []
        self.val = val_samples(opts, config) if enabled and r.sample_every and r.val_count else []
        self.reroll = reroll_class(self.samples[0]["label"], config.num_classes) if self.samples else 0
        #: What the grid's rows show (stored in the PNG).
        self.rows = f"mask; photo; fixed codes seeds 0-2; re-roll {config.class_names[self.reroll]!r}"
        self.perceptual = perceptual

    def __bool__(self) -> bool:
        return bool(self.samples)

    def __call__(self, ema: GroupDNet, autocast: Callable[[], AbstractContextManager],
                 disc: nn.Module | None = None) -> tuple[dict[str, float], Image.Image]:
        """(the val probe's numbers, ``{}`` without val images; the progress grid) of ``ema``.

        With ``disc``, the probe also has D's view of the fixed training photos and the val photos.
        """
        probe = {}
        if self.val:
            with autocast():
                probe = val_probe(ema, self.val, self.perceptual)
                if disc is not None:
                    probe.update(discriminator_probe(disc, ema, self.samples, self.val))
        return probe, render_sample_grid(ema, self.samples, self.reroll)


def fixed_samples(dataset: Dataset, count: int) -> list[dict[str, Any]]:
    """``count`` samples spread over the dataset, read without augmentation (the same every run)."""
    n = len(dataset)
    picks = sorted({int(i) for i in np.linspace(0, n - 1, num=min(count, n))})
    out = []
    for i in picks:
        if hasattr(dataset, "load_arrays"):  # train.data.SMISDataset: skip its random augmentation
            arr = dataset.load_arrays(i, augment=False)
            out.append({"image": torch.from_numpy(arr["image"]).permute(2, 0, 1).float() / 127.5 - 1.0,
                        "label": torch.from_numpy(arr["label"])})
        else:
            s = dataset[i]
            out.append({"image": s["image"], "label": s["label"]})
    return out


def val_samples(opts: TrainOptions, config: SMISConfig) -> list[dict[str, Any]]:
    """Up to ``--val-count`` val images for :func:`val_probe` (none if the dataset has no val split)."""
    d = opts.data
    try:
        val = build_dataset(d.format, d.data, "val", config.height, config.width, augment=False,
                            on_bad="skip", seed=opts.run.seed)
    except (ValueError, OSError) as err:
        logger.warning("no val split for the reconstruction / re-roll probe (%s); it is skipped", err)
        return []
    return fixed_samples(val, opts.run.val_count)


def reroll_class(label: torch.Tensor, num_classes: int) -> int:
    """The largest class of a mask other than class 0 (usually background)."""
    counts = torch.bincount(label.flatten(), minlength=num_classes)
    counts[0] = -1 if num_classes > 1 else counts[0]
    return int(counts.argmax())


@torch.no_grad()
def render_sample_grid(model: GroupDNet, samples: list[dict[str, Any]], reroll_class: int,
                       code_rows: int = 3) -> Image.Image:
    """The progress grid: one column per fixed mask.

    Rows: the mask, the real photo, ``code_rows`` rows of fixed codes (seed r, the same codes in
    every column), and a last row on the first mask where only ``reroll_class`` is re-rolled.
    """
    cfg = model.config
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    labels = torch.stack([s["label"] for s in samples]).to(device)
    n = labels.shape[0]
    grid = cfg.latent_grid(*labels.shape[-2:])

    def codes(seed: int) -> ClassCodes:
        return ClassCodes.sample(cfg.class_names, cfg.z_channels, grid, seed)

    def render(z: np.ndarray, lab: torch.Tensor) -> np.ndarray:
        return to_uint8(model(torch.from_numpy(z).to(device), lab).float()).cpu().numpy()

    rows = [np.stack([ids_to_color(s["label"].numpy(), cfg.palette) for s in samples]),
            to_uint8(torch.stack([s["image"] for s in samples])).numpy()]
    for r in range(code_rows):
        rows.append(render(np.stack([codes(r).latent()] * n), labels))
    base = codes(0)
    rerolled = np.stack([base.resample([reroll_class], 1000 + k).latent() for k in range(n)])
    rows.append(render(rerolled, labels[:1].expand(n, *labels.shape[1:])))
    model.train(was_training)
    tiles = np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)
    return Image.fromarray(tiles)


def prior_codes(config: SMISConfig, labels: torch.Tensor, seeds: range) -> list[ClassCodes]:
    """One prior draw of every class's code per seed, on the latent grid of ``labels``' size."""
    grid = config.latent_grid(*labels.shape[-2:])
    return [ClassCodes.sample(config.class_names, config.z_channels, grid, s) for s in seeds]


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
        kl = kl_per_class(mu, logvar, cfg.num_classes)  # (N, C) nats
        onehot = one_hot(labels, cfg.num_classes)
        present = onehot.flatten(2).amax(-1) > 0  # (N, C)
        out: dict[str, float] = {
            "val/rec_l1": float((fake - real).abs().mean()),
            "val/kl_nats_per_image": float(kl.sum(1).mean()),
        }
        mu_c = mu.float().flatten(2).mean(-1).view(n, cfg.num_classes, -1)  # (N, C, z_channels)
        for c, name in enumerate(cfg.class_names):  # what each class's code carries, where present
            if bool(present[:, c].any()):
                out[f"val/kl_nats/{name}"] = float(kl[present[:, c], c].mean())
            if int(present[:, c].sum()) >= 2:
                out[f"val/mu_spread/{name}"] = float(mu_c[present[:, c], c].std(0).mean())
        if perceptual is not None:
            out["val/rec_perceptual"] = float(perceptual(fake, real))

        # Re-roll one class at a time from fixed prior codes.
        base = prior_codes(cfg, labels, range(seed, seed + n))
        z0 = torch.from_numpy(np.stack([b.latent() for b in base])).to(device)
        img0 = model(z0, labels).float()
        ins, outs = [], []
        for c, name in enumerate(cfg.class_names):
            if not bool(present[:, c].any()):
                continue
            z1 = torch.from_numpy(np.stack([b.resample([c], seed + 10_000 + i).latent()
                                            for i, b in enumerate(base)])).to(device)
            diff = (model(z1, labels).float() - img0).abs().mean(1)  # (N, H, W)
            m = onehot[:, c]
            inside = (diff * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1)
            outside = (diff * (1 - m)).flatten(1).sum(1) / (1 - m).flatten(1).sum(1).clamp_min(1)
            out[f"val/reroll_in/{name}"] = float(inside[present[:, c]].mean())
            out[f"val/reroll_out/{name}"] = float(outside[present[:, c]].mean())
            ins.append(out[f"val/reroll_in/{name}"])
            outs.append(out[f"val/reroll_out/{name}"])
        if ins:
            out["val/reroll_in_mean"] = float(np.mean(ins))
            out["val/reroll_out_mean"] = float(np.mean(outs))
            out["val/reroll_in_min"] = float(np.min(ins))
        return out
    finally:
        model.train(was_training)


@torch.no_grad()
def discriminator_probe(disc: nn.Module, model: GroupDNet, train: list[dict[str, Any]],
                        val: list[dict[str, Any]], seed: int = 0, batch_size: int = 16) -> dict[str, float]:
    """D's view of training photos, val photos and ``model``'s images on the val masks (prior codes).

    Per group: ``val/d_logit/<group>``, D's logit averaged over patches and scales, then images;
    ``val/d_real/<group>``, the fraction of images D calls real (ADA's r_t = E[sign D(x)], mapped to
    0..1); ``val/d_overfit`` = logit(train photos) - logit(val photos) and ``val/d_overfit_se``, its
    standard error (photos differ a lot: tens of photos per side give a gap only to about ±0.2).
    D runs in eval mode, so the probe does not move its spectral-norm estimates.
    """
    if not train or not val:
        return {}
    cfg = model.config
    device = next(model.parameters()).device
    was_training, d_training = model.training, disc.training
    model.eval()
    disc.eval()

    def score(samples: list[dict[str, Any]], generated: bool = False) -> torch.Tensor:
        logits = []
        for i in range(0, len(samples), batch_size):
            chunk = samples[i:i + batch_size]
            labels = torch.stack([s["label"] for s in chunk]).to(device)
            if generated:  # the codes val_probe renders the same images with
                codes = prior_codes(cfg, labels, range(seed + i, seed + i + len(chunk)))
                image = model(torch.from_numpy(np.stack([c.latent() for c in codes])).to(device), labels)
            else:
                image = torch.stack([s["image"] for s in chunk]).to(device)
            outs = disc(model.label_tensor(labels).to(image.dtype), image)
            logits.append(torch.stack([o[-1].float().flatten(1).mean(1) for o in outs]).mean(0))  # (n,)
        return torch.cat(logits)

    try:
        groups = {"train": score(train), "val": score(val), "generated": score(val, generated=True)}
        out = {}
        for name, logits in groups.items():
            out[f"val/d_logit/{name}"] = float(logits.mean())
            out[f"val/d_real/{name}"] = float((logits > 0).float().mean())
        out["val/d_overfit"] = out["val/d_logit/train"] - out["val/d_logit/val"]
        t, v = groups["train"], groups["val"]
        var = (t.var() / len(t) if len(t) > 1 else 0.0) + (v.var() / len(v) if len(v) > 1 else 0.0)
        out["val/d_overfit_se"] = float(var) ** 0.5
        return out
    finally:
        model.train(was_training)
        disc.train(d_training)


def discriminator_table(probe: dict[str, float]) -> str:
    """:func:`discriminator_probe`'s numbers as a Markdown table with a one-line reading."""
    lines = ["| images | D's mean logit | called real |", "|---|---|---|"]
    for name, what in (("train", "training photos"), ("val", "val photos"), ("generated", "generated (val masks)")):
        lines.append(f"| {what} | {probe[f'val/d_logit/{name}']:+.3f} | {probe[f'val/d_real/{name}']:.0%} |")
    gap, se = probe["val/d_overfit"], probe.get("val/d_overfit_se", 0.0)
    said = f"train - val logit {gap:+.3f} ± {se:.3f}"
    if gap > OVERFIT_GAP and gap > 2 * se:
        reading = f"{said}: D memorises the training set (try --diffaug)"
    elif gap > 2 * se:
        reading = f"{said}: D prefers the training photos a little (less than {OVERFIT_GAP})"
    else:
        reading = f"{said}: no sign that D memorises the training set"
    return "\n".join(lines) + "\n\n" + reading


# ---------------------------------------------------------------------------------------------
# Command line: the probe on a model folder
# ---------------------------------------------------------------------------------------------
#: The verdict's thresholds: an encoder whose means vary less than this over the photos reads nothing
#: (working codes: 0.2-0.6); a code whose re-roll changes its class less than this many times the rest
#: does not show (the project's per-class bar for mCSD / mOCD).
SPREAD_READS = 0.1
RATIO_DRAWS = 2.0


def probe_table(probe: dict[str, float], class_names: list[str]) -> str:
    """The probe's per-class numbers as a Markdown table, with a verdict per class."""
    lines = ["| class | KL (nats) | encoder spread | re-roll inside | outside | inside / outside | verdict |",
             "|---|---|---|---|---|---|---|"]
    for name in class_names:
        if f"val/reroll_in/{name}" not in probe:
            continue
        kl, spread = probe.get(f"val/kl_nats/{name}"), probe.get(f"val/mu_spread/{name}")
        inside, outside = probe[f"val/reroll_in/{name}"], probe[f"val/reroll_out/{name}"]
        ratio = inside / outside if outside > 0 else float("inf")
        reads = spread is None or spread >= SPREAD_READS
        draws = ratio >= RATIO_DRAWS
        verdict = ("works" if reads and draws else "decoder ignores the code" if reads
                   else "encoder reads nothing" if draws else "dead at both ends")
        cells = [f"{v:.3f}" if v is not None else "n/a" for v in (kl, spread, inside, outside)]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ratio:.2f} | {verdict} |")
    return "\n".join(lines)


def load_training_state(path: str) -> tuple[GroupDNet, nn.Module]:
    """The EMA G + E and D of a training state (``training-state-*.pt``), in eval mode."""
    state = load_state(path)
    if not state.get("config") or state.get("D") is None:
        raise ValueError(f"{path} has no config or no discriminator weights")
    config = SMISConfig.from_dict(json.loads(state["config"]))
    model, disc = GroupDNet(config), MultiscaleDiscriminator(config)
    hub.load_into(model, state.get("ema", state["model"]), f"{path} (EMA G + E)")  # CheckpointError: a ValueError
    hub.load_into(disc, state["D"], f"{path} (D)")
    return model.eval(), disc.eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.monitor",
                                description="The training loop's val probe on a model folder: per class, "
                                            "what the code carries and where it shows; on a training state "
                                            "also the discriminator's view of training vs val photos.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="model folder (config.json + safetensors) or Hub id")
    src.add_argument("--state", help="training state (runs/NAME/checkpoints/training-state-*.pt): its EMA "
                                     "model, plus D's view of training and val photos")
    p.add_argument("--data", required=True, help="dataset root")
    p.add_argument("--format", default="auto", help="dataset layout (default: auto, found from the folder)")
    p.add_argument("--split", default="val", help="split (default: val)")
    p.add_argument("--images", type=int, default=16, help="images spread over the split (default: 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the re-rolled codes (default: 0)")
    p.add_argument("--d-images", type=int, default=200,
                   help="with --state: training photos D scores, against every photo of the split (default: 200)")
    p.add_argument("--json", help="also write the numbers to this file")
    args = p.parse_args(argv)
    disc = None
    try:
        if args.state:
            model, disc = load_training_state(args.state)
        else:
            model = GroupDNet.from_pretrained(args.model)
        cfg = model.config
        data = build_dataset(args.format, args.data, args.split, cfg.height, cfg.width, augment=False,
                             on_bad="skip")
        train = (build_dataset(args.format, args.data, "train", cfg.height, cfg.width, augment=False,
                               on_bad="skip") if disc is not None else None)
    except (ValueError, OSError, TrainingStateError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if len(data) == 0 or args.images < 1 or (train is not None and len(train) == 0):
        print("error: no images to probe (empty split or --images < 1)", file=sys.stderr)
        return 2
    samples = fixed_samples(data, args.images)
    with torch.no_grad():
        probe = val_probe(model, samples, seed=args.seed)
        if disc is not None:
            probe.update(discriminator_probe(disc, model, fixed_samples(train, args.d_images),
                                             fixed_samples(data, len(data)), args.seed))
    print(f"{args.model or args.state} on {args.data} ({args.split}, {len(samples)} images): "
          f"reconstruction L1 {probe['val/rec_l1']:.4f}, KL {probe['val/kl_nats_per_image']:.2f} nats/image")
    print(probe_table(probe, list(cfg.class_names)))
    if disc is not None:
        print()
        print(discriminator_table(probe))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(probe, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
