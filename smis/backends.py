"""Inference backends behind :class:`smis.pipeline.SMISPipeline`.

A backend runs the two networks on numpy arrays, so the pipeline and every front end stay the
same whether PyTorch or ONNX Runtime does the work:

- ``generate(labels, z)``: labels (N, H, W) int64 class ids, z (N, 8C, H/64, W/64) float32
  -> images (N, 3, H, W) float32 in [-1, 1];
- ``encode(photos, labels)``: photos (N, 3, H, W) float32 in [-1, 1] -> (mu, logvar) maps.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import numpy as np
import torch

from . import hub
from .config import SMISConfig
from .model import GroupDNet, bake_spectral_norm

logger = logging.getLogger(__name__)


class Backend(Protocol):
    config: SMISConfig
    #: "pytorch" or "onnxruntime"
    name: str
    #: Where it runs, in words a visitor understands ("cpu", "cuda:0", "CUDAExecutionProvider").
    device: str

    def generate(self, labels: np.ndarray, z: np.ndarray) -> np.ndarray: ...

    def encode(self, photos: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def auto_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """``None`` (float32), a ``torch.dtype``, or a name: float32 / fp32, float16 / fp16 / half, bfloat16 / bf16."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}")
    return _DTYPES[name]


T = TypeVar("T")


class LabelBranchCache(Generic[T]):
    """The label branch (every CG-Norm's scale and shift maps) of the last mask a backend rendered.

    Those maps do not depend on the codes, so a re-roll, mix or morph on an unchanged mask, or a
    batch of codes on one mask, reuses them. Thread-safe: front ends call from several workers.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: (size, hash) of the cached mask; ``None`` while nothing is cached.
        self.key: tuple | None = None
        self._value: T | None = None

    @staticmethod
    def one_mask(labels: np.ndarray) -> bool:
        """Whether every label map of the batch (N, ...) is the same (so one label branch serves all)."""
        return bool(np.all(labels == labels[:1]))

    def get(self, mask: np.ndarray, compute: Callable[[], T]) -> T:
        """The maps of ``mask`` (one label map): cached, or ``compute()`` replacing the old ones."""
        key = (mask.shape, hashlib.blake2b(np.ascontiguousarray(mask).tobytes(), digest_size=16).digest())
        with self._lock:
            if key != self.key:
                self._value = None  # free the old maps before computing the new ones
                self._value = compute()
                self.key = key
            return self._value

    def clear(self) -> None:
        """Forget the cached maps (the next mask, even the same one, runs the label branch)."""
        with self._lock:
            self.key = self._value = None


class TorchBackend:
    """PyTorch eager (optionally ``torch.compile``) on any device, fp32 / fp16 / bf16.

    The label-map branch of the generator (every CG-Norm's gamma and beta) does not depend on the
    codes, so it is computed once per distinct mask and kept for the next call: a re-roll, a
    mix or a morph on an unchanged mask runs only the code-dependent path, and a batch of codes
    on one mask shares one label branch (``cache_label_features=False`` turns this off).
    """

    name = "pytorch"
    #: The model folder it was loaded from (``None``: built from a model in memory).
    model_dir: Path | None = None

    def __init__(self, model: GroupDNet, device: str | torch.device | None = None,
                 dtype: str | torch.dtype | None = None, compile: bool = False,
                 cache_label_features: bool = True):
        self.config = model.config
        self.torch_device = torch.device(device or auto_device())
        self.dtype = parse_dtype(dtype)
        if self.torch_device.type == "cpu" and self.dtype == torch.float16:
            raise ValueError("float16 is not supported on CPU; use float32 or bfloat16")
        # The backend owns its model: bake spectral norm (no per-call power iteration / vdot).
        self.model = bake_spectral_norm(model.eval()).to(self.torch_device, self.dtype)
        if self.torch_device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        gen = self.model.generator
        self._gen = torch.compile(gen.forward) if compile else gen.forward
        self.cache_label_features = cache_label_features
        self.label_cache: LabelBranchCache[list] = LabelBranchCache()
        self.device = str(self.torch_device)
        if self.torch_device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(max(1, os.cpu_count() or 1))

    @torch.inference_mode()
    def generate(self, labels: np.ndarray, z: np.ndarray) -> np.ndarray:
        labels = np.asarray(labels, dtype=np.int64)
        zt = torch.from_numpy(np.array(z, dtype=np.float32)).to(self.torch_device, self.dtype)
        if not (self.cache_label_features and self.label_cache.one_mask(labels)):
            return self._gen(zt, self._label_tensor(labels)).float().cpu().numpy()
        label = self._label_tensor(labels[:1])
        features = self.label_cache.get(labels[0], lambda: self.model.generator.label_features(label))
        return self._gen(zt, label, features).float().cpu().numpy()

    def _label_tensor(self, labels: np.ndarray) -> torch.Tensor:
        lab = torch.from_numpy(np.array(labels, dtype=np.int64)).to(self.torch_device)
        return self.model.label_tensor(lab, dtype=self.dtype)

    @torch.inference_mode()
    def encode(self, photos: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = torch.from_numpy(np.array(photos, dtype=np.float32)).to(self.torch_device, self.dtype)
        lab = torch.from_numpy(np.array(labels, dtype=np.int64)).to(self.torch_device)
        mu, logvar = self.model.encode(x, lab)
        return mu.float().cpu().numpy(), logvar.float().cpu().numpy()


def load_backend(kind: str, name_or_path: str | os.PathLike | None, device: str | None = None,
                 dtype: str | torch.dtype | None = None, revision: str | None = None,
                 **kwargs) -> Backend:
    """Build a backend by name: ``"torch"`` or ``"onnx"``."""
    if kind in ("torch", "pytorch"):
        folder = hub.resolve_model_dir(name_or_path, revision)
        backend = TorchBackend(GroupDNet.from_pretrained(folder), device, dtype, **kwargs)
        backend.model_dir = folder
        return backend
    if kind in ("onnx", "onnxruntime"):
        from .onnx_backend import OnnxBackend

        return OnnxBackend.from_pretrained(name_or_path, device=device, dtype=dtype, revision=revision, **kwargs)
    raise ValueError(f"unknown backend {kind!r}; use 'torch' or 'onnx'")
