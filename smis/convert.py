"""Import checkpoints of the released reference code (``latest_net_G.pth``, ``latest_net_E.pth``).

    python -m smis.convert --preset deepfashion \\
        --generator checkpoints/deepfashion/latest_net_G.pth \\
        --encoder checkpoints/deepfashion/latest_net_E.pth --out models/deepfashion

The files are plain state dicts; they are read with ``torch.load(weights_only=True)`` (no code
runs). Every tensor is renamed onto our modules and its shape checked against the preset; the
result is a normal model folder (``config.json`` + ``model.safetensors``).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

import torch

from .config import PRESETS, SMISConfig, get_config
from .hub import CheckpointError
from .model import GroupDNet

logger = logging.getLogger(__name__)

# Module names of the reference code -> ours (the networks are the same, the names are not).
_RENAMES = (
    (".mlp_shared.0.", ".shared."),
    (".mlp_gamma.", ".gamma."),
    (".mlp_beta.", ".beta."),
    (".param_free_norm.", ".norm."),
)
# Old-style torch.nn.utils.spectral_norm tensors -> parametrization tensors.
_SPECTRAL = (
    ("weight_orig", "parametrizations.weight.original"),
    ("weight_u", "parametrizations.weight.0._u"),
    ("weight_v", "parametrizations.weight.0._v"),
)
#: Reference tensors that have no counterpart because the reference never uses them.
_UNUSED = {
    # The reference ADE20K generator builds an up_4 block but never calls it.
    "ade20k": re.compile(r"^up_4\."),
}


def rename_official(key: str, net: str) -> str:
    """One reference-code tensor name -> our name (``net`` is ``"G"`` or ``"E"``)."""
    key = key.removeprefix("module.")
    if net == "E":
        key = re.sub(r"^layer(\d+)\.", lambda m: f"layers.{int(m.group(1)) - 1}.", key)
    for old, new in _RENAMES:
        key = key.replace(old, new)
    for old, new in _SPECTRAL:
        if key.endswith("." + old):
            key = key[: -len(old)] + new
    return ("generator." if net == "G" else "encoder.") + key


def convert_state(config: SMISConfig, generator_sd: dict[str, torch.Tensor],
                  encoder_sd: dict[str, torch.Tensor] | None) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map reference state dicts onto a fresh model of ``config``; returns (state, notes)."""
    model = GroupDNet(config)
    own = model.state_dict()
    notes: list[str] = []
    out: dict[str, torch.Tensor] = {}
    unused = _UNUSED.get(config.name)
    sources = [("G", generator_sd)] + ([("E", encoder_sd)] if encoder_sd is not None else [])
    unknown: list[str] = []
    for net, sd in sources:
        has_orig = {k[: -len("_orig")] for k in sd if k.endswith("weight_orig")}
        for k, v in sd.items():
            if not isinstance(v, torch.Tensor):
                continue
            bare = k.removeprefix("module.")
            if bare in has_orig or k in has_orig:  # the derived weight stored beside weight_orig
                continue
            if net == "G" and unused is not None and unused.search(bare):
                notes.append(f"dropped {k} (built but never used by the reference code)")
                continue
            ours = rename_official(k, net)
            if ours not in own:
                unknown.append(f"{net}:{k} -> {ours}")
                continue
            if tuple(v.shape) != tuple(own[ours].shape):
                raise CheckpointError(
                    f"{net}:{k} has shape {tuple(v.shape)} but preset {config.name!r} needs "
                    f"{tuple(own[ours].shape)} for {ours}; is this the right preset for the checkpoint?")
            out[ours] = v.to(own[ours].dtype)
    if unknown:
        raise CheckpointError(
            f"{len(unknown)} tensors of the checkpoint have no place in preset {config.name!r}, e.g. "
            + "; ".join(unknown[:5]) + ". Is this the right preset?")
    # Filled from the fresh model: BatchNorm step counters (older checkpoints lack them) and, when no
    # encoder checkpoint was given, the encoder (left at its random init, with a note).
    fill = [k for k in own if k not in out
            and (k.endswith("num_batches_tracked") or (encoder_sd is None and k.startswith("encoder.")))]
    if encoder_sd is None and any(k.startswith("encoder.") for k in fill):
        notes.append("no encoder checkpoint: the encoder keeps its random init (encode/mix/morph unusable)")
    out.update({k: own[k] for k in fill})
    missing = [k for k in own if k not in out]
    if missing:
        raise CheckpointError(
            f"the checkpoint lacks {len(missing)} tensors preset {config.name!r} needs, e.g. "
            + ", ".join(missing[:5]))
    return out, notes


def load_official(path: str | Path) -> dict[str, torch.Tensor]:
    """A reference ``.pth`` state dict, read without executing any pickled code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated / non-tensor pickles
        raise CheckpointError(
            f"{path} could not be read as a plain state dict ({type(err).__name__}: {err}); "
            "it may be truncated or not a reference-code checkpoint") from err
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path} holds a {type(sd).__name__}, not a state dict")
    return sd


def convert(preset: str, generator: str | Path, encoder: str | Path | None, out: str | Path,
            dtype: torch.dtype | None = None, **preset_kwargs) -> list[str]:
    """Convert and save a model folder; returns notes about what was dropped or filled."""
    config = get_config(preset, **preset_kwargs)
    state, notes = convert_state(config, load_official(generator),
                                 load_official(encoder) if encoder else None)
    model = GroupDNet(config)
    model.load_state_dict(state, strict=True)
    model.save_pretrained(out, dtype=dtype, metadata={"source": "converted from the reference code"})
    return notes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m smis.convert", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", required=True, choices=[k for k in PRESETS if k != "demo"])
    p.add_argument("--generator", required=True, help="latest_net_G.pth of the reference code")
    p.add_argument("--encoder", help="latest_net_E.pth (optional: without it encode/mix/morph are unusable)")
    p.add_argument("--out", required=True, help="output model folder")
    p.add_argument("--fp16", action="store_true", help="store weights in float16 (half the size)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        notes = convert(args.preset, args.generator, args.encoder, args.out,
                        torch.float16 if args.fp16 else None)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for n in notes:
        logger.info("note: %s", n)
    logger.info("wrote %s (load it with SMISPipeline.from_pretrained(%r))", args.out, str(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
