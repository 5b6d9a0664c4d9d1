"""Resumable training state and inference snapshots, written so a kill at any moment is harmless.

- ``checkpoints/training-state-<step>.pt``: G, E, D, EMA, optimisers, grad scalers, step, data
  position and every process's RNG states. Only tensors and plain containers, so it loads with
  ``torch.load(weights_only=True)``.
- ``snapshots/model-<step>/``: the EMA weights as a model folder (``GroupDNet.save_pretrained``:
  ``config.json`` + safetensors), what ``python -m train.publish`` and the pipeline read.

Both are written under a temporary name in the same folder, fsynced, then renamed into place
(``os.replace`` is atomic on POSIX), so a reader sees either the old set or the new one, never a
partial file. Temporary leftovers of a killed run are removed on the next start.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from smis import hub
from smis.config import SMISConfig
from smis.generator import BLOCK_NAMES, block_names

logger = logging.getLogger(__name__)

STATE_DIR = "checkpoints"
#: The discriminator's weights in a published model folder (read by ``--init-from``, not by inference).
DISCRIMINATOR_NAME = "discriminator.safetensors"
SNAPSHOT_DIR = "snapshots"
_STATE_RE = re.compile(r"^training-state-(\d{8,})\.pt$")
_SNAP_RE = re.compile(r"^model-(\d{8,})$")
_TMP_PREFIX = ".tmp-"


class TrainingStateError(RuntimeError):
    """A training-state file that cannot be loaded."""


def state_path(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / STATE_DIR / f"training-state-{step:08d}.pt"


def snapshot_path(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / SNAPSHOT_DIR / f"model-{step:08d}"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: str | os.PathLike, write: Any) -> Path:
    """``write(file)`` into a temporary file beside ``path``, fsync, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{_TMP_PREFIX}{os.getpid()}-{path.name}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return path


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file beside ``path``, fsync, then ``os.replace``."""
    return _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """A small text file (``status.json``) replaced whole: a kill never leaves half of it."""
    return _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def save_snapshot(model: torch.nn.Module, run_dir: str | os.PathLike, step: int,
                  metadata: dict[str, str] | None = None) -> Path:
    """``model.save_pretrained`` into a temporary folder, fsync its files, rename it into place."""
    final = snapshot_path(run_dir, step)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{_TMP_PREFIX}{os.getpid()}-{final.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        files = model.save_pretrained(tmp, metadata=metadata)
        for f in files:
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
        if final.exists():  # same step saved again (e.g. a resumed run that stops at once)
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _fsync_dir(final.parent)
    return final


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete training states in ``run_dir``, oldest first."""
    folder = Path(run_dir) / STATE_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STATE_RE.match(p.name))]
    return sorted(found)


def list_snapshots(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete EMA model folders in ``run_dir``, oldest first."""
    folder = Path(run_dir) / SNAPSHOT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _SNAP_RE.match(p.name)) and p.is_dir()]
    return sorted(found)


def latest_snapshot(run_dir: str | os.PathLike) -> Path:
    snaps = list_snapshots(run_dir)
    if not snaps:
        raise FileNotFoundError(f"{run_dir} has no model snapshot ({SNAPSHOT_DIR}/model-*/): "
                                "is it a training run folder, and has it saved a checkpoint yet?")
    return snaps[-1][1]


def check_new_run(run_dir: str | os.PathLike) -> None:
    """A ``ValueError`` if ``run_dir`` already holds training states: a new run must not write over
    them (continuing it takes ``--resume auto``)."""
    if list_checkpoints(run_dir):
        raise ValueError(f"{run_dir} already holds checkpoints: pass --resume auto to continue that run, "
                         "or choose another --outdir")


def clean_temporaries(run_dir: str | os.PathLike) -> None:
    """Remove half-written files a killed run left behind (they never had a final name)."""
    for sub in (STATE_DIR, SNAPSHOT_DIR):
        folder = Path(run_dir) / sub
        if folder.is_dir():
            for p in folder.glob(f"{_TMP_PREFIX}*"):
                logger.info("removing unfinished %s", p)
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)


def prune(run_dir: str | os.PathLike, keep: int) -> None:
    """Keep the newest ``keep`` training states and snapshots."""
    for items in (list_checkpoints(run_dir), list_snapshots(run_dir)):
        for _, p in items[:-keep] if keep > 0 else []:
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """A training state (``weights_only=True``), or :class:`TrainingStateError` saying why not."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, pickle refused, I/O error...
        raise TrainingStateError(f"cannot load training state {path}: {err}") from err
    if not isinstance(state, dict) or "step" not in state or "model" not in state:
        raise TrainingStateError(f"{path} is not a GroupDNet training state")
    return state


def find_resume(run_dir: str | os.PathLike) -> tuple[Path, dict[str, Any]] | None:
    """The newest training state in ``run_dir`` that loads (older ones are tried if it does not)."""
    for step, path in reversed(list_checkpoints(run_dir)):
        try:
            return path, load_state(path)
        except TrainingStateError as err:
            logger.warning("skipping checkpoint of step %d: %s", step, err)
    return None


def load_init(source: str, net: torch.nn.Module, disc: torch.nn.Module,
              ema: torch.nn.Module | None) -> str:
    """``--init-from``: load weights into a new run's networks; returns a one-line description.

    ``source``: a training-state file (G + E, D and EMA are loaded; optimisers start fresh) or a
    model folder / Hub repo id (its G + E go into the live and EMA networks; D starts fresh).
    Tensor names and shapes must match the run's model; its config may differ in fields that do
    not change shapes (name, code layout). Raises :class:`TrainingStateError` naming what is
    wrong, before any weight is changed.
    """
    hint = ("--init-from needs weights of the same architecture: use the preset and widths they were "
            "trained with, or start without --init-from")
    path = Path(source).expanduser()
    source_config = None
    if path.is_file():
        state = load_state(path)
        if state.get("config"):
            source_config = SMISConfig.from_dict(json.loads(state["config"]))
        parts = [("G + E", net, state["model"]), ("D", disc, state.get("D"))]
        if ema is not None:
            parts.append(("EMA", ema, state.get("ema", state["model"])))
        what = f"training state {path} (step {state.get('step')}): G, E, D and EMA; optimisers fresh"
    else:
        try:
            folder = hub.resolve_model_dir(source)
            weights = hub.load_state(folder)
        except hub.CheckpointError as err:
            raise TrainingStateError(f"--init-from {source}: {err}") from err
        source_config = SMISConfig.load(folder / hub.CONFIG_NAME)
        parts = [("G + E", net, weights)] + ([("EMA", ema, weights)] if ema is not None else [])
        try:
            d = load_discriminator(folder)
        except TrainingStateError as err:
            raise TrainingStateError(f"--init-from {source}: {err}") from err
        if d is not None:  # published for fine-tuning (python -m train.publish)
            parts.append(("D", disc, d))
            what = f"model {folder}: G + E (EMA weights) and D ({DISCRIMINATOR_NAME})"
        else:
            what = f"model {folder}: G + E (EMA weights); D fresh (the folder has no {DISCRIMINATOR_NAME})"
    own_config = getattr(net, "config", None)
    grown = _enhancer_keys(source_config, own_config)
    if grown:  # coarse-to-fine growth: the smaller model's tensors load, the new blocks keep their init
        parts = [(name, module, {**{k: v for k, v in module.state_dict().items() if k.startswith(grown)}, **tensors})
                 if name in ("G + E", "EMA") and tensors is not None else (name, module, tensors)
                 for name, module, tensors in parts]
        what += (f"; grown from {source_config.height}x{source_config.width} to {own_config.height}x"
                 f"{own_config.width}: the enhancer ({', '.join(p.rstrip('.') for p in grown)}) starts fresh")
    # Check everything first, then load: a mismatch changes nothing.
    for name, module, tensors in parts:
        if tensors is None:
            raise TrainingStateError(f"--init-from {source}: it has no {name} weights")
        try:
            hub.check_state(module, tensors, f"{source} ({name})", hint)
        except hub.CheckpointError as err:
            raise TrainingStateError(str(err)) from err
    for name, module, tensors in parts:
        hub.load_into(module, tensors, f"{source} ({name})", hint)
    if source_config is not None and own_config is not None:
        ignore = ("name:", "discriminator.") + (("height:", "width:", "generator.enhancer_channels:") if grown else ())
        changed = [d for d in source_config.differences(own_config) if not d.startswith(ignore)]
        if changed:  # same shapes, other behaviour (e.g. label pooling): fine-tuning adapts to it
            what += "; the run's config differs from the source's in " + "; ".join(changed)
    return what


def save_discriminator(folder: Path, tensors: dict[str, torch.Tensor], dtype: torch.dtype | None = None,
                       metadata: dict[str, str] | None = None) -> None:
    """``folder/discriminator.safetensors``: D beside a published model, for fine-tuning with ``--init-from``."""
    save_file({k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
               for k, v in tensors.items()},
              str(Path(folder) / DISCRIMINATOR_NAME), metadata={**(metadata or {}), "role": "discriminator"})


def load_discriminator(folder: Path) -> dict[str, torch.Tensor] | None:
    """The D a model folder carries (:func:`save_discriminator`), or None; raises :class:`TrainingStateError`
    for a corrupt file."""
    path = Path(folder) / DISCRIMINATOR_NAME
    if not path.is_file():
        return None
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as err:
        raise TrainingStateError(f"{path} is corrupt ({err})") from err


def enhancer_prefixes(config: SMISConfig) -> tuple[str, ...]:
    """Name prefixes of a coarse-to-fine model's enhancer tensors (the rest is the global generator and
    the encoder); () for a model without an enhancer."""
    if not config.generator.enhancer_channels:
        return ()
    return tuple(f"generator.{n}." for n in block_names(config)[len(BLOCK_NAMES):]) + ("generator.conv_img_hd.",)


def _enhancer_keys(source: SMISConfig | None, own: SMISConfig | None) -> tuple[str, ...]:
    """Name prefixes of ``own``'s enhancer tensors when it is grown from ``source``, a model without one; or ()."""
    if source is None or own is None or source.generator.enhancer_channels:
        return ()
    return enhancer_prefixes(own)


# ---------------------------------------------------------------------------------------------
# RNG states as tensors (so the state file stays weights_only-loadable)
# ---------------------------------------------------------------------------------------------

def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """This process's torch (CPU and CUDA), numpy and Python RNG states, as tensors and numbers."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(np_kind), "keys": torch.from_numpy(np_keys.astype(np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "python": {"version": int(py_version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": py_gauss},
    }
    if device is not None and device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    if device is not None and device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
