"""``python -m train.graft``: put a retrained global generator under a coarse-to-fine model's enhancer.

pix2pixHD grows a model in phases: the global generator at the small size, then the local enhancer
at 2x over it (frozen), then both. A GroupDNet's codes enter only in the global generator, so
whatever a class's code can do is learned there; retraining the global generator alone at the small
size costs a quarter of the pixels of a joint step at the large one. This command takes the global
generator and the encoder from one model and the enhancer (and the large-size discriminator) from
another, checks they fit, and writes a model folder that ``--init-from`` continues and the
pipeline loads::

    python -m train.graft --global runs/ccp192-legwear/snapshots/model-00000720 \\
        --enhancer runs/ccp384-enh/checkpoints/training-state-00000301.pt --out runs/ccp384-graft

Each source is a model folder, a Hub repo id or a training-state file (its EMA weights, and its D).
The folder gets ``graft.json`` (the sources) and, when the global source has one, its
``training_log/`` (the lineage of the codes' weights), so ``--init-step auto`` continues its steps.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

from smis import GroupDNet, hub
from smis.config import SMISConfig

from .checkpoint import TrainingStateError, enhancer_prefixes, load_discriminator, load_state, save_discriminator
from .history import MODEL_LOG_DIR

#: Config fields a graft may change: the size and the enhancer come from the enhancer's side.
_SIZE_FIELDS = ("name:", "height:", "width:", "generator.enhancer_channels:", "discriminator.")


class GraftError(ValueError):
    """Two models that cannot be grafted, with what is wrong and what to do."""


def _read(source: str) -> tuple[SMISConfig, dict[str, torch.Tensor], dict[str, torch.Tensor] | None, Path | None]:
    """(config, G + E tensors, D tensors or None, model folder or None) of a model folder or training state."""
    path = Path(source).expanduser()
    if path.is_file():
        try:
            state = load_state(path)
        except TrainingStateError as err:
            raise GraftError(str(err)) from err
        if not state.get("config"):
            raise GraftError(f"{path} has no model config (a training state from an older version): "
                             "publish a snapshot of it and graft the folder")
        return SMISConfig.from_dict(json.loads(state["config"])), state.get("ema", state["model"]), state.get("D"), None
    try:
        folder = hub.resolve_model_dir(source)
        weights = hub.load_state(folder)
    except hub.CheckpointError as err:
        raise GraftError(str(err)) from err
    try:
        disc = load_discriminator(folder)
    except TrainingStateError as err:
        raise GraftError(str(err)) from err
    return SMISConfig.load(folder / hub.CONFIG_NAME), weights, disc, folder


def graft(global_source: str, enhancer_source: str, out: str | Path, dtype: torch.dtype | None = None) -> dict:
    """Write the grafted model folder ``out``; returns what went where (also in ``out/graft.json``)."""
    g_config, g_weights, _, g_folder = _read(global_source)
    e_config, e_weights, e_disc, _ = _read(enhancer_source)
    if not e_config.generator.enhancer_channels:
        raise GraftError(f"--enhancer {enhancer_source} has no local enhancer (generator.enhancer_channels is 0): "
                         "pass the coarse-to-fine model there and the smaller one as --global")
    changed = [d for d in g_config.differences(e_config) if not d.startswith(_SIZE_FIELDS)]
    if changed:
        raise GraftError(f"--global {global_source} and --enhancer {enhancer_source} differ beyond the size: "
                         + "; ".join(changed) + ". Graft a global generator trained with the enhancer model's config")
    if (g_config.height, g_config.width) != e_config.global_size():
        raise GraftError(f"--global {global_source} was trained at {g_config.height}x{g_config.width}, the enhancer "
                         f"model's global generator runs at {e_config.global_size()[0]}x{e_config.global_size()[1]}")
    prefixes = enhancer_prefixes(e_config)
    merged = {k: v for k, v in g_weights.items() if not k.startswith(prefixes)}
    merged.update({k: v for k, v in e_weights.items() if k.startswith(prefixes)})
    model = GroupDNet(e_config)
    try:  # every tensor of the enhancer model present, nothing else, shapes equal
        hub.check_state(model, merged, f"the graft of {global_source} under {enhancer_source}",
                        "graft a global generator of the enhancer model's widths and groups")
    except hub.CheckpointError as err:
        raise GraftError(str(err)) from err
    out = Path(out)
    hub.save_state(out, e_config, merged, dtype=dtype)
    if e_disc is not None:
        save_discriminator(out, e_disc, dtype)
    if g_folder is not None and (g_folder / MODEL_LOG_DIR).is_dir():
        shutil.rmtree(out / MODEL_LOG_DIR, ignore_errors=True)
        shutil.copytree(g_folder / MODEL_LOG_DIR, out / MODEL_LOG_DIR)
    record = {"global_and_encoder": str(global_source), "enhancer": str(enhancer_source),
              "discriminator": str(enhancer_source) if e_disc is not None else None,
              "tensors": {"from_global": len(merged) - sum(k.startswith(prefixes) for k in merged),
                          "from_enhancer": sum(k.startswith(prefixes) for k in merged)}}
    (out / "graft.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.graft", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--global", dest="global_source", required=True,
                   help="model folder, Hub repo id or training state: its global generator and encoder")
    p.add_argument("--enhancer", required=True,
                   help="coarse-to-fine model (folder, repo id or training state): its config, enhancer and D")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--fp16", action="store_true", help="store the weights as float16")
    args = p.parse_args(argv)
    try:
        record = graft(args.global_source, args.enhancer, args.out, torch.float16 if args.fp16 else None)
    except GraftError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {record['tensors']['from_global']} tensors from {args.global_source}, "
          f"{record['tensors']['from_enhancer']} from {args.enhancer}"
          + (", D from it too" if record["discriminator"] else ", no D (--init-from starts one fresh)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
