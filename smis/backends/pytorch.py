"""The PyTorch backend: GroupDNet eager (optionally ``torch.compile``) on any device, fp32 / fp16 / bf16."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .. import hub
from ..model import GroupDNet, bake_spectral_norm
from .common import LabelBranchCache, parse_dtype


def auto_device() -> str:
    """``"cuda"`` where CUDA works, else ``"mps"`` (Apple), else ``"cpu"``."""
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


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

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike | None = None, device: str | torch.device | None = None,
                        dtype: str | torch.dtype | None = None, revision: str | None = None,
                        **kwargs) -> TorchBackend:
        """A model folder or Hub repo id (``None``: ``$SMIS_MODEL`` or the bundled model); ``kwargs``
        go to the constructor (``compile``, ``cache_label_features``)."""
        folder = hub.resolve_model_dir(name_or_path, revision)
        backend = cls(GroupDNet.from_pretrained(folder), device, dtype, **kwargs)
        backend.model_dir = folder
        return backend

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
