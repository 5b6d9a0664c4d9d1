"""What both backends share: dtype names and the cache of the last mask's label branch."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

import numpy as np
import torch

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
