"""``python -m train.human_parser``: train the human parser (the default mode), or evaluate, export
or publish a parser folder (see the package docstring and docs/PARSER.md)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from smis.hub import CheckpointError
from smis.parsing import ONNX_NAME, ParserNet, export_onnx

from .. import checkpoint as ckpt
from .. import dist
from ..cli import add_dataclass_arguments
from .evaluate import run_evaluate
from .loop import train
from .options import PROG, ParserTrainOptions
from .publish import publish_run


def build_arg_parser() -> argparse.ArgumentParser:
    """The modes, then one flag per :class:`ParserTrainOptions` field (train/cli.py's rules)."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Train the human parser of smis.parsing (one process, or torchrun on several GPUs); "
                    "or evaluate / export a parser folder.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("modes (default: train)")
    g.add_argument("--evaluate", metavar="PARSER_DIR", help="score a parser folder on --data/--val-split and exit")
    g.add_argument("--export-onnx", metavar="PARSER_DIR", help="write PARSER_DIR/model.onnx and exit")
    g.add_argument("--publish", nargs=2, metavar=("RUN_DIR", "OUT"),
                   help="write a shippable parser folder OUT from a run: best weights, model.onnx, the card "
                        "(per-class IoU, weak classes, exact command), training curve and log")
    add_dataclass_arguments(p, ParserTrainOptions)
    return p


#: The mode flags of :func:`build_arg_parser` (not options).
MODES = ("evaluate", "export_onnx", "publish")


def options_from_args(ns: dict[str, Any]) -> ParserTrainOptions:
    """The options of a parsed command line (``vars(build_arg_parser().parse_args(...))``; modes ignored)."""
    return ParserTrainOptions.from_dict({k: v for k, v in ns.items() if k not in MODES})


def main(argv: list[str] | None = None) -> int:
    cli = build_arg_parser()
    ns = vars(cli.parse_args(argv))
    evaluate_dir, export_dir, publish = (ns[m] for m in MODES)
    opts = options_from_args(ns)
    is_main = int(os.environ.get("RANK", "0")) == 0  # torchrun's rank, known before the group is joined
    logging.basicConfig(level=logging.INFO if is_main else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if publish:
            print(publish_run(*publish))
            return 0
        if export_dir:
            path = export_onnx(ParserNet.from_pretrained(export_dir), Path(export_dir) / ONNX_NAME)
            print(path)
            return 0
        if not opts.data or not Path(opts.data).is_dir():
            cli.error(f"--data {opts.data!r}: no such dataset folder")
        if evaluate_dir:
            print(json.dumps(run_evaluate(evaluate_dir, opts), indent=2))
            return 0
        opts.validate()
        summary = train(opts)
    except (ValueError, CheckpointError, ckpt.TrainingStateError) as err:
        cli.error(str(err))
    finally:
        dist.shutdown()
    if is_main:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
