"""Saving and loading GroupDNet weights: ``config.json`` + safetensors, local or on the Hub.

A model folder holds ``config.json`` and either ``model.safetensors`` or shards
``model-0000i-of-0000n.safetensors`` with ``model.safetensors.index.json`` (the Hugging Face
layout). Tensor names are ``generator.*`` and ``encoder.*``. Loading is strict: every tensor must
be there with the shape the config implies, or the error says which ones are not.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .config import SMISConfig

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
#: What ``python -m train.evaluate`` writes into a model folder it evaluated (kept by ``train.publish``).
METRICS_NAME = "metrics.json"
#: A class whose re-roll changes its own region less than this many times the rest of the image is
#: called weak (the project's per-class bar for mCSD / mOCD).
WEAK_CODE_RATIO = 2.0

#: The folder of the models shipped inside the package; each is loadable by its folder name ("ccp-demo").
ASSETS_DIR = Path(__file__).parent / "assets"
#: The bundled default model (trained on CCP at 384x256, grown from the 192x128 "ccp-demo", which stays
#: loadable by name), shipped inside the package.
BUNDLED_MODEL_DIR = ASSETS_DIR / "ccp-demo-384"
#: Environment variable that overrides the default model (a folder or a Hub repo id).
MODEL_ENV = "SMIS_MODEL"


class CheckpointError(ValueError):
    """A weights file or folder that cannot be loaded into the model its config describes."""


def default_model_location() -> str:
    """``$SMIS_MODEL`` if set, else the bundled model folder."""
    return os.environ.get(MODEL_ENV) or str(BUNDLED_MODEL_DIR)


def bundled_model_names() -> list[str]:
    """The names of the models shipped in the package (folders of :data:`ASSETS_DIR` with a config)."""
    return sorted(p.name for p in ASSETS_DIR.iterdir() if (p / CONFIG_NAME).is_file()) if ASSETS_DIR.is_dir() else []


def resolve_model_dir(name_or_path: str | os.PathLike | None, revision: str | None = None,
                      cache_dir: str | os.PathLike | None = None) -> Path:
    """A local folder, the name of a bundled model (:func:`bundled_model_names`, when no folder of that
    name is in the working directory), or a Hub repo id downloaded into the Hugging Face cache."""
    target = str(name_or_path) if name_or_path is not None else default_model_location()
    path = Path(target).expanduser()
    if not path.exists() and target in bundled_model_names():
        path = ASSETS_DIR / target
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file():
            raise CheckpointError(f"{path} has no {CONFIG_NAME}; is it a GroupDNet model folder?")
        return path
    if path.exists():
        raise CheckpointError(f"{path} is a file; pass the folder that holds {CONFIG_NAME}")
    if name_or_path is None and target == str(BUNDLED_MODEL_DIR):
        raise CheckpointError(
            f"the bundled model is missing ({BUNDLED_MODEL_DIR}); pass a model folder or Hub repo "
            f"id, or set {MODEL_ENV}")
    looks_like_repo = target.count("/") == 1 and not target.startswith((".", "/", "~"))
    if not looks_like_repo:
        raise CheckpointError(f"no model folder at {target!r} (and it is not a Hub repo id 'owner/name', nor a "
                              f"bundled model: {', '.join(bundled_model_names()) or 'none'})")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        local = snapshot_download(
            target, revision=revision, cache_dir=cache_dir,
            allow_patterns=["*.json", "*.safetensors", "*.md", "*.onnx"])
    except RepositoryNotFoundError as err:
        raise CheckpointError(f"Hub repo {target!r} does not exist or is private (log in first)") from err
    except LocalEntryNotFoundError as err:
        raise CheckpointError(
            f"cannot download {target!r}: the Hub is unreachable (or HF_HUB_OFFLINE=1) and it is not "
            "in the local cache. Download it on a connected machine, or pass a local folder.") from err
    except HfHubHTTPError as err:
        raise CheckpointError(f"the Hub refused {target!r}: {err}") from err
    return Path(local)


def class_control(metrics: dict) -> dict[str, float]:
    """Per class, L_c / L_≠c: how much re-rolling its code changes its own region against the rest
    (the per-class mCSD / mOCD of ``train.evaluate``'s ``metrics.json``). Classes without pairs are left out."""
    per_class = (metrics.get("smis") or {}).get("per_class") or {}
    return {name: c["csd"] / c["ocd"] for name, c in per_class.items()
            if c.get("ocd") and c.get("csd") is not None}


def measured_class_control(folder: str | os.PathLike, class_names: tuple[str, ...]) -> dict[str, float]:
    """:func:`class_control` from a model folder's ``metrics.json``; ``{}`` when it has none, or when
    it was measured on other classes (a warning says so: the figures belong to another model)."""
    path = Path(folder) / METRICS_NAME
    if not path.is_file():
        return {}
    try:
        metrics = json.loads(path.read_text())
        measured = tuple((metrics.get("model") or {}).get("classes") or ())
        ratios = class_control(metrics)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
        logger.warning("%s is not a train.evaluate metrics file (%s); per-class figures not shown", path, err)
        return {}
    if measured and measured != tuple(class_names):
        logger.warning("%s was measured on other classes (%s); per-class figures not shown", path,
                       ", ".join(measured))
        return {}
    return ratios


def save_state(folder: str | os.PathLike, config: SMISConfig, state: dict[str, torch.Tensor],
               dtype: torch.dtype | None = None, max_shard_bytes: int | None = None,
               metadata: dict[str, str] | None = None) -> list[Path]:
    """Write ``config.json`` and the tensors (optionally cast and sharded). Returns the files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config.save(folder / CONFIG_NAME)
    tensors = {}
    for k, v in state.items():
        v = v.detach().to("cpu")
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        tensors[k] = v.contiguous()
    meta = {"format": "pt", "config": config.to_json(), **(metadata or {})}
    for old in list(folder.glob("model*.safetensors")) + [folder / INDEX_NAME]:
        old.unlink(missing_ok=True)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    if max_shard_bytes is None or total <= max_shard_bytes:
        save_file(tensors, str(folder / WEIGHTS_NAME), metadata=meta)
        return [folder / CONFIG_NAME, folder / WEIGHTS_NAME]
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k in sorted(tensors):
        nbytes = tensors[k].numel() * tensors[k].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = tensors[k]
        size += nbytes
    weight_map = {}
    files = [folder / CONFIG_NAME]
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / name), metadata=meta)
        weight_map.update({k: name for k in shard})
        files.append(folder / name)
    (folder / INDEX_NAME).write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    files.append(folder / INDEX_NAME)
    return files


def load_state(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a model folder (single file or shards), with clear errors."""
    folder = Path(folder)
    single = folder / WEIGHTS_NAME
    index = folder / INDEX_NAME
    if single.is_file():
        files = [single]
    elif index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as err:
            raise CheckpointError(f"{index} is corrupt: {err}") from err
        files = [folder / n for n in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{folder} lacks shard files {missing}; download them again")
    else:
        raise CheckpointError(
            f"{folder} has no {WEIGHTS_NAME} (nor {INDEX_NAME}); weights must be safetensors. "
            "Reference-code .pth checkpoints can be converted with `python -m smis.convert`.")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            state.update(load_file(str(f), device="cpu"))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(
                f"{f} is truncated or corrupt ({err}); download or export it again") from err
    return state


def check_state(module: nn.Module, state: dict[str, torch.Tensor], source: str, hint: str | None = None) -> None:
    """Raise :class:`CheckpointError` naming missing, unexpected and mis-shaped tensors (none: return).

    ``hint``: the message's last sentence (what to do); by default, use the matching config.json.
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} with other shapes (e.g. {'; '.join(shapes[:3])})")
        raise CheckpointError(
            f"the weights in {source} do not match {'the model' if hint else 'its config.json'}: "
            + ", ".join(parts) + ". " + (hint or "Use the config.json saved with these weights."))


def load_into(module: nn.Module, state: dict[str, torch.Tensor], source: str, hint: str | None = None) -> None:
    """Strict load after :func:`check_state` (nothing is changed if it fails)."""
    check_state(module, state, source, hint)
    own = module.state_dict()
    cast = {k: v.to(own[k].dtype) for k, v in state.items()}
    module.load_state_dict(cast, strict=True)
