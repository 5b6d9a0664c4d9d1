"""Helpers shared by the training tests (tiny synthetic datasets and options); no tests here."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from smis import labels as L

REPO = Path(__file__).resolve().parents[1]
CCP_EXAMPLES = REPO / "smis" / "assets" / "examples" / "ccp"
H, W = 128, 64  # the tiny demo preset's size (10 CCP classes)


def blob_sample(seed: int, height: int = H, width: int = W) -> tuple[np.ndarray, np.ndarray]:
    """A label map of random rectangles and a photo coloured by the palette plus noise (uint8)."""
    rng = np.random.default_rng(seed)
    lab = np.zeros((height, width), np.uint8)
    for c in range(1, len(L.CCP10_CLASSES)):
        y, x = rng.integers(0, height - 24), rng.integers(0, width - 16)
        lab[y:y + rng.integers(12, 48), x:x + rng.integers(8, 32)] = c
    pal = np.array(L.CCP10_PALETTE, np.float32)
    img = (pal[lab] * 0.8 + rng.normal(0, 8, (height, width, 3))).clip(0, 255).astype(np.uint8)
    return img, lab


class BlobDataset(Dataset):
    """In-memory pairs in train.data's sample format; after ``nan_after`` reads every photo is NaN."""

    class_names = L.CCP10_CLASSES
    palette = L.CCP10_PALETTE

    def __init__(self, n: int = 8, seed: int = 0, nan_after: int | None = None):
        self.items = [blob_sample(seed * 1000 + i) for i in range(n)]
        self.nan_after = nan_after
        self.reads = 0

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        img, lab = self.items[i]
        x = torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1.0
        self.reads += 1
        if self.nan_after is not None and self.reads > self.nan_after:
            x = torch.full_like(x, float("nan"))
        return {"image": x, "label": torch.from_numpy(lab.astype(np.int64)), "path": f"blob-{i}"}


def write_generic(root: Path, n: int = 8, seed: int = 0) -> Path:
    """The same kind of pairs as a generic-format folder (images/, labels/, classes.json)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)
    for i in range(n):
        img, lab = blob_sample(seed * 1000 + i)
        Image.fromarray(img).save(root / "images" / f"{i:04d}.png")
        Image.fromarray(lab).save(root / "labels" / f"{i:04d}.png")
    (root / "classes.json").write_text(json.dumps(
        {"names": list(L.CCP10_CLASSES), "colors": [list(c) for c in L.CCP10_PALETTE]}))
    return root


def tiny_options(**kw):
    """Options for a tiny CPU run (demo preset's tiny twin, small D, no VGG, no workers); ``kw`` are
    flat options (one per flag)."""
    from train.options import TrainOptions

    base = dict(data=".", preset="demo", tiny=True, d_ndf=16, batch_size=2, steps=4, vgg="none", workers=0,
                augment=False, log_every=1, ckpt_every=2, ckpt_minutes=0.0, sample_every=0, progress=False,
                tensorboard=False, seed=0)
    base.update(kw)
    return TrainOptions.from_dict(base)


def train_cli(*args: str) -> list[str]:
    """``python -m train`` with tiny settings (the caller adds --data and --outdir)."""
    return [sys.executable, "-m", "train", "--preset", "demo", "--tiny", "--d-ndf", "16", "--vgg", "none",
            "--workers", "0", "--no-progress", "--no-tensorboard", "--sample-every", "0", "--log-every", "1",
            "--ckpt-minutes", "0", *args]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env
