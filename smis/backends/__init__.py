"""Inference backends behind :class:`smis.pipeline.SMISPipeline`.

A backend runs the two networks on numpy arrays, so the pipeline and every front end stay the
same whether PyTorch or ONNX Runtime does the work:

- ``generate(labels, z)``: labels (N, H, W) int64 class ids, z (N, 8C, H/64, W/64) float32
  -> images (N, 3, H, W) float32 in [-1, 1];
- ``encode(photos, labels)``: photos (N, 3, H, W) float32 in [-1, 1] -> (mu, logvar) maps.

Modules: :mod:`.common` (dtype names, the label-branch cache both share), :mod:`.pytorch`
(:class:`TorchBackend`), :mod:`.onnx` (:class:`OnnxBackend`, ONNX Runtime sessions and providers).
"""

from __future__ import annotations

import os
from typing import Protocol

import numpy as np
import torch

from ..config import SMISConfig
from .common import LabelBranchCache, parse_dtype
from .onnx import OnnxBackend
from .pytorch import TorchBackend, auto_device

__all__ = ["Backend", "LabelBranchCache", "OnnxBackend", "TorchBackend", "auto_device", "load_backend",
           "parse_dtype"]


class Backend(Protocol):
    config: SMISConfig
    #: "pytorch" or "onnxruntime"
    name: str
    #: Where it runs, in words a visitor understands ("cpu", "cuda:0", "CUDAExecutionProvider").
    device: str

    def generate(self, labels: np.ndarray, z: np.ndarray) -> np.ndarray: ...

    def encode(self, photos: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def load_backend(kind: str, name_or_path: str | os.PathLike | None, device: str | None = None,
                 dtype: str | torch.dtype | None = None, revision: str | None = None, **kwargs) -> Backend:
    """Build a backend by name: ``"torch"`` or ``"onnx"``; the rest goes to its ``from_pretrained``."""
    if kind in ("torch", "pytorch"):
        return TorchBackend.from_pretrained(name_or_path, device=device, dtype=dtype, revision=revision, **kwargs)
    if kind in ("onnx", "onnxruntime"):
        return OnnxBackend.from_pretrained(name_or_path, device=device, dtype=dtype, revision=revision, **kwargs)
    raise ValueError(f"unknown backend {kind!r}; use 'torch' or 'onnx'")
