"""Per-class latent codes: the object a user re-rolls, mixes, morphs, saves and re-opens."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

CODES_FORMAT = "smis-codes/1"


def class_noise(seed: int, class_id: int, shape: tuple[int, ...]) -> np.ndarray:
    """N(0, 1) noise for one class, a function of (seed, class) only.

    So class c's code for a seed does not depend on which other classes exist or were re-rolled,
    and every backend sees the same numbers.
    """
    if seed < 0:
        raise ValueError(f"seeds are non-negative integers, got {seed}")
    return np.random.default_rng([int(seed), int(class_id)]).standard_normal(shape, dtype=np.float32)


@dataclass(frozen=True)
class ClassCodes:
    """Latent codes of one image, one (z, h, w) block per class: ``values`` is (C, z, h, w)."""

    values: np.ndarray
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        v = np.asarray(self.values, dtype=np.float32)
        if v.ndim != 4 or v.shape[0] != len(self.class_names):
            raise ValueError(
                f"codes must be (classes, z, h, w) with {len(self.class_names)} classes, got {v.shape}")
        if not np.all(np.isfinite(v)):
            raise ValueError("codes contain NaN or infinity")
        v = v.copy()
        v.setflags(write=False)
        object.__setattr__(self, "values", v)

    # -- construction --------------------------------------------------------------------
    @classmethod
    def sample(cls, class_names: Iterable[str], z_channels: int, grid: tuple[int, int],
               seed: int) -> ClassCodes:
        names = tuple(class_names)
        shape = (z_channels, *grid)
        return cls(np.stack([class_noise(seed, c, shape) for c in range(len(names))]), names)

    @classmethod
    def from_latent(cls, z: np.ndarray, class_names: Iterable[str]) -> ClassCodes:
        """(C*z, h, w) or (1, C*z, h, w) -> codes."""
        z = np.asarray(z, dtype=np.float32)
        if z.ndim == 4:
            if z.shape[0] != 1:
                raise ValueError("from_latent takes one image's latent")
            z = z[0]
        names = tuple(class_names)
        c = len(names)
        if z.shape[0] % c:
            raise ValueError(f"latent has {z.shape[0]} channels, not a multiple of {c} classes")
        return cls(z.reshape(c, z.shape[0] // c, *z.shape[1:]), names)

    # -- views ---------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def grid(self) -> tuple[int, int]:
        return int(self.values.shape[2]), int(self.values.shape[3])

    def latent(self) -> np.ndarray:
        """(C*z, h, w): the generator's Z for one image."""
        c, z, h, w = self.values.shape
        return self.values.reshape(c * z, h, w)

    # -- edits (all return new codes) ----------------------------------------------------
    def with_classes(self, sources: Mapping[int, ClassCodes]) -> ClassCodes:
        """These codes with class c taken from ``sources[c]``."""
        v = self.values.copy()
        for c, other in sources.items():
            self._check_compatible(other)
            v[c] = other.values[c]
        return ClassCodes(v, self.class_names)

    def resample(self, classes: Iterable[int], seed: int) -> ClassCodes:
        """New noise for ``classes`` only; every other class keeps its code exactly."""
        v = self.values.copy()
        for c in classes:
            v[c] = class_noise(seed, c, v.shape[1:])
        return ClassCodes(v, self.class_names)

    def lerp(self, other: ClassCodes, t: float) -> ClassCodes:
        """(1 - t) * self + t * other (t outside [0, 1] extrapolates, as the paper's morphing)."""
        self._check_compatible(other)
        return ClassCodes((1.0 - t) * self.values + t * other.values, self.class_names)

    def _check_compatible(self, other: ClassCodes) -> None:
        if other.values.shape != self.values.shape or other.class_names != self.class_names:
            raise ValueError(
                f"codes do not match: {other.values.shape} for classes {len(other.class_names)} vs "
                f"{self.values.shape} for {len(self.class_names)}; were they made by another model?")

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": CODES_FORMAT,
            "shape": list(self.values.shape),
            "class_names": list(self.class_names),
            "float32_le_base64": base64.b64encode(self.values.astype("<f4").tobytes()).decode(),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: Mapping) -> ClassCodes:
        if d.get("format") != CODES_FORMAT:
            raise ValueError(f"not SMIS codes (format {d.get('format')!r}, expected {CODES_FORMAT!r})")
        try:
            raw = base64.b64decode(d["float32_le_base64"], validate=True)
            arr = np.frombuffer(raw, dtype="<f4").reshape(d["shape"])
        except (KeyError, ValueError, TypeError) as err:
            raise ValueError(f"corrupt SMIS codes: {err}") from err
        return cls(arr.astype(np.float32), tuple(d["class_names"]))

    @classmethod
    def from_json(cls, s: str) -> ClassCodes:
        try:
            return cls.from_dict(json.loads(s))
        except json.JSONDecodeError as err:
            raise ValueError(f"SMIS codes are not valid JSON: {err}") from err

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ClassCodes) and self.class_names == other.class_names
                and np.array_equal(self.values, other.values))

    __hash__ = None  # type: ignore[assignment]
