"""python -m export: ONNX graphs, TensorRT engines, FLOP counts, metadata.

    python -m export onnx --model path/to/model [--out DIR] [--fp16] [--no-encoder] [--no-split] [--check]
    python -m export onnx --preset demo --tiny --out /tmp/demo-onnx      # random weights (trials)
    python -m export tensorrt --onnx path/to/model/generator.onnx [--fp32] [--max-batch 8]
    python -m export flops [--preset demo] [--height 512 --width 256]
    python -m export inspect path/to/model/generator.onnx
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from smis.backends.onnx import ensure_graphs
from smis.config import PRESETS, SIZE_MULTIPLE, get_config
from smis.hub import BUNDLED_MODEL_DIR
from smis.model import GroupDNet
from smis.onnx_format import SOURCE_KEY, config_from_metadata, weights_file_digest

from .flops import block_table, encoder_gflop, generator_gflop
from .onnx import export_model, op_types, parity, random_model, read_metadata
from .tensorrt import TensorRTUnavailable, build_engine

logger = logging.getLogger("export")


def _load_model(args: argparse.Namespace) -> GroupDNet:
    if args.model:
        return GroupDNet.from_pretrained(args.model, revision=args.revision)
    logger.info("no --model: exporting %s%s with random weights (for trials only)", args.preset,
                " (tiny)" if args.tiny else "")
    return random_model(get_config(args.preset, tiny=args.tiny), seed=args.seed, batches=1)


def _into_export_cache(folder: Path) -> bool:
    """Whether ``export onnx --model folder`` writes into the ONNX backend's export cache instead of
    next to the weights: for a bundled model (any folder under smis/assets) or a folder this user
    cannot write to, so a checkout or an installed package stays as it was."""
    return folder.resolve().is_relative_to(BUNDLED_MODEL_DIR.resolve().parent) or not os.access(folder, os.W_OK)


def cmd_onnx(args: argparse.Namespace) -> int:
    model = _load_model(args)
    folder = Path(args.model) if args.model and Path(args.model).is_dir() else None
    if not args.out and folder is None:
        raise SystemExit("error: --out is required unless --model is a local folder")
    # Lets the ONNX backend notice graphs left behind after the weights changed.
    metadata = {SOURCE_KEY: weights_file_digest(folder)} if folder else None
    options = dict(encoder=not args.no_encoder, split=not args.no_split, uint8=not args.no_uint8, opset=args.opset)
    if args.out or not _into_export_cache(folder):
        result = export_model(model, Path(args.out or folder), fp16=args.fp16, metadata=metadata, **options)
        files = result.files
    else:
        # The cache folder is the ONNX backend's (keyed by the weights' hash, under $SMIS_CACHE or
        # ~/.cache/smis): ensure_graphs picks it, and calls back here only when it lacks the graphs.
        done = []

        def exporter(_, target: Path, fp16: bool, metadata: dict[str, str]) -> None:
            done.append(export_model(model, target, fp16=fp16, metadata=metadata, **options))

        files = ensure_graphs(folder, args.fp16, use_folder=False, exporter=exporter)
        result = done[0] if done else None
        print(f"{folder} is bundled or read-only: its graphs are in the export cache, where "
              f"SMISPipeline.from_pretrained(..., backend=\"onnx\") finds them")
    for kind, path in files.items():
        size = path.stat().st_size / 2**20
        print(f"{kind:10s} {path}  ({size:.1f} MiB)")
    print(f"exported in {result.seconds:.1f} s; onnx.checker passed" if result
          else "already exported from these weights: nothing to do")
    if args.check:
        bound = 5e-2 if args.fp16 else 1e-4
        worst = 0.0
        for kind in ("generator", "encoder"):
            if kind in files:
                err = parity(model, files[kind], batch=2)
                worst = max(worst, err)
                print(f"parity {kind}: max abs error vs PyTorch {err:.2e} (bound {bound:.0e})")
        if worst > bound:
            print("parity FAILED", file=sys.stderr)
            return 1
    return 0


def cmd_tensorrt(args: argparse.Namespace) -> int:
    try:
        result = build_engine(args.onnx, args.out, fp16=not args.fp32, route=args.route, opt_batch=args.opt_batch,
                              max_batch=args.max_batch, height=args.height, width=args.width,
                              workspace_gib=args.workspace_gib)
    except TensorRTUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{result.precision} engine via {result.route} in {result.seconds:.0f} s: {result.path}")
    return 0


def cmd_flops(args: argparse.Namespace) -> int:
    names = [args.preset] if args.preset else list(PRESETS)
    print("| preset | size | generator GFLOP/image | encoder GFLOP/image |")
    print("|---|---|---:|---:|")
    for name in names:
        cfg = get_config(name, tiny=args.tiny)
        h, w = args.height or cfg.height, args.width or cfg.width
        print(f"| {name}{' (tiny)' if args.tiny else ''} | {h}x{w} | {generator_gflop(cfg, h, w):.1f} | "
              f"{encoder_gflop(cfg, h, w):.2f} |")
    if args.preset and args.blocks:
        print()
        for block, gf in block_table(get_config(args.preset, tiny=args.tiny)):
            print(f"{block:12s} {gf:9.2f} GFLOP")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    meta = read_metadata(args.file)
    config = config_from_metadata(meta, args.file)
    print(f"{args.file}: {meta.get('smis.graph')} of {config.name} ({config.num_classes} classes, native "
          f"{config.height}x{config.width}), {meta.get('smis.precision')}, exported with {meta.get('smis.exporter')}")
    for key in ("smis.inputs", "smis.outputs", "smis.latent_layout"):
        print(f"{key}:")
        for k, v in json.loads(meta[key]).items():
            print(f"  {k}: {v}")
    print("classes:", ", ".join(f"{i}={n}" for i, n in enumerate(config.class_names)))
    print("ops:", ", ".join(sorted(op_types(args.file))))
    return 0


def _multiple(text: str) -> int:
    v = int(text)
    if v < SIZE_MULTIPLE or v % SIZE_MULTIPLE:
        raise argparse.ArgumentTypeError(f"must be a positive multiple of {SIZE_MULTIPLE}")
    return v


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    o = sub.add_parser("onnx", help="export generator.onnx and encoder.onnx")
    src = o.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="model folder or Hub repo id")
    src.add_argument("--preset", choices=sorted(PRESETS), help="random weights of a preset (trials)")
    o.add_argument("--tiny", action="store_true", help="with --preset: its tiny twin")
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--revision", help="Hub revision for --model")
    o.add_argument("--out", help="output folder (default: the --model folder; for a bundled or read-only one, "
                                   "the export cache the ONNX backend reads, $SMIS_CACHE or ~/.cache/smis)")
    o.add_argument("--fp16", action="store_true", help="fp16 weights and arithmetic (float32 inputs/outputs)")
    o.add_argument("--no-encoder", action="store_true", help="skip encoder.onnx")
    o.add_argument("--no-split", action="store_true",
                   help="skip generator-maps.onnx / generator-render.onnx (the re-roll fast path)")
    o.add_argument("--no-uint8", action="store_true", help="no image_uint8 output on the generator")
    o.add_argument("--opset", type=int, default=17)
    o.add_argument("--check", action="store_true", help="compare with PyTorch through ONNX Runtime")
    o.set_defaults(func=cmd_onnx)

    t = sub.add_parser("tensorrt", help="build a TensorRT engine from an exported graph")
    t.add_argument("--onnx", required=True, help="generator.onnx or encoder.onnx")
    t.add_argument("--out", help="engine folder (default: next to the .onnx)")
    t.add_argument("--fp32", action="store_true", help="fp32 engine (default fp16)")
    t.add_argument("--route", default="auto", choices=["auto", "tensorrt", "onnxruntime"])
    t.add_argument("--opt-batch", type=int, default=1)
    t.add_argument("--max-batch", type=int, default=8)
    t.add_argument("--height", type=_multiple)
    t.add_argument("--width", type=_multiple)
    t.add_argument("--workspace-gib", type=float, default=4.0)
    t.set_defaults(func=cmd_tensorrt)

    f = sub.add_parser("flops", help="GFLOP per image of the presets")
    f.add_argument("--preset", choices=sorted(PRESETS))
    f.add_argument("--tiny", action="store_true")
    f.add_argument("--height", type=_multiple)
    f.add_argument("--width", type=_multiple)
    f.add_argument("--blocks", action="store_true", help="with --preset: GFLOP per block")
    f.set_defaults(func=cmd_flops)

    i = sub.add_parser("inspect", help="print what an exported .onnx carries")
    i.add_argument("file")
    i.set_defaults(func=cmd_inspect)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if getattr(args, "tiny", False) and getattr(args, "model", None):
        raise SystemExit("error: --tiny goes with --preset, not --model")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
