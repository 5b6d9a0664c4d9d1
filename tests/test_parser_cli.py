"""``python -m train.human_parser``'s flags are generated from ParserTrainOptions by train/cli.py's rules."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from train.cli import NEGATED, SWITCH, add_dataclass_arguments
from train.human_parser.__main__ import build_arg_parser, main, options_from_args
from train.human_parser.loop import train
from train.human_parser.options import ParserTrainOptions

#: Every flag the hand-written CLI had (a flag may gain an alias, never lose its name).
FLAGS = """--evaluate --export-onnx --data --format --train-split --val-split --on-bad --workers --max-items
--preset --height --width --batch-size --steps --lr --warmup --poly-power --weight-decay --grad-clip --loss
--ohem-keep --label-smoothing --scale --jitter --flip --amp --channels-last --compile --seed --device --outdir
--resume --log-every --val-every --ckpt-every --keep --max-minutes --stop-at --no-progress --no-onnx""".split()


def test_every_flag_is_kept_and_documented():
    p = build_arg_parser()
    strings = {s for a in p._actions for s in a.option_strings}
    assert set(FLAGS) <= strings
    helps = {a.dest: a.help for a in p._actions}
    assert all(helps[name] for name in ParserTrainOptions.__dataclass_fields__), "a field lacks its #: comment"
    titles = [g.title for g in p._action_groups]
    assert {"data", "model", "augmentation", "run folder"} <= set(titles)


def test_cli_gives_the_options():
    ns = vars(build_arg_parser().parse_args(
        ["--data", "d", "--scale", "0.5", "1.5", "--flip", "false", "--no-onnx", "--compile", "--channels-last",
         "true", "--preset", "tiny", "--max-items", "3", "--no-progress", "--loss", "ohem", "--amp", "bf16"]))
    opts = options_from_args(ns)
    assert opts == ParserTrainOptions(data="d", scale=(0.5, 1.5), flip=False, onnx=False, compile=True,
                                         channels_last=True, preset="tiny", max_items=3, progress=False,
                                         loss="ohem", amp="bf16")
    assert build_arg_parser().parse_args([]).scale == [0.75, 1.25]
    for bad in (["--preset", "huge"], ["--flip", "maybe"], ["--amp", "fp16"], ["--scale", "1"]):
        with pytest.raises(SystemExit):
            build_arg_parser().parse_args(bad)
    with pytest.raises(AttributeError):  # frozen, like python -m train's options
        opts.steps = 3


@dataclass(frozen=True)
class Toy:
    """A program's options."""

    #: Loose field, no section.
    name: str = "x"
    # -- first ---------------
    #: A pair.
    pair: tuple[int, int] = field(default=(1, 2), metadata={"metavar": ("A", "B")})
    #: On by default.
    color: bool = field(default=True, metadata=NEGATED)
    # -- second --------------
    #: Off by default.
    fast: bool = field(default=False, metadata=SWITCH)
    #: Maybe a number.
    limit: float | None = None


def test_add_dataclass_arguments_for_any_program():
    p = argparse.ArgumentParser()
    add_dataclass_arguments(p, Toy)
    ns = p.parse_args(["--pair", "3", "4", "--no-color", "--fast", "--limit", "2.5"])
    assert Toy(**{**vars(ns), "pair": tuple(ns.pair)}) == Toy(pair=(3, 4), color=False, fast=True, limit=2.5)
    assert vars(p.parse_args([])) == {"name": "x", "pair": [1, 2], "color": True, "fast": False, "limit": None}
    groups = {g.title: [a.dest for a in g._group_actions] for g in p._action_groups}
    assert groups["first"] == ["pair", "color"] and groups["second"] == ["fast", "limit"]
    assert {a.dest: a.help for a in p._actions}["pair"] == "A pair."


# -- the CLI and the published folder, recorded before train/parser.py became train/human_parser/ -
#: flag -> (dest, default, nargs, choices, type, action) of every option, help text left out.
CLI = {
    "--evaluate": ("evaluate", None, None, None, None, "_StoreAction"),
    "--export-onnx": ("export_onnx", None, None, None, None, "_StoreAction"),
    "--publish": ("publish", None, 2, None, None, "_StoreAction"),
    "--data": ("data", "", None, None, "str", "_StoreAction"),
    "--format": ("format", "generic", None, None, "str", "_StoreAction"),
    "--train-split": ("train_split", "train", None, None, "str", "_StoreAction"),
    "--val-split": ("val_split", "val", None, None, "str", "_StoreAction"),
    "--on-bad": ("on_bad", "skip", None, ("skip", "error"), None, "_StoreAction"),
    "--workers": ("workers", 4, None, None, "int", "_StoreAction"),
    "--max-items": ("max_items", None, None, None, "int", "_StoreAction"),
    "--preset": ("preset", "ccp", None, ("ccp", "tiny"), "str", "_StoreAction"),
    "--height": ("height", None, None, None, "int", "_StoreAction"),
    "--width": ("width", None, None, None, "int", "_StoreAction"),
    "--batch-size": ("batch_size", 16, None, None, "int", "_StoreAction"),
    "--steps": ("steps", 16000, None, None, "int", "_StoreAction"),
    "--lr": ("lr", 0.002, None, None, "float", "_StoreAction"),
    "--warmup": ("warmup", 300, None, None, "int", "_StoreAction"),
    "--poly-power": ("poly_power", 0.9, None, None, "float", "_StoreAction"),
    "--weight-decay": ("weight_decay", 0.05, None, None, "float", "_StoreAction"),
    "--grad-clip": ("grad_clip", 5.0, None, None, "float", "_StoreAction"),
    "--loss": ("loss", "weighted", None, ("weighted", "ohem", "ce"), None, "_StoreAction"),
    "--ohem-keep": ("ohem_keep", 0.2, None, None, "float", "_StoreAction"),
    "--label-smoothing": ("label_smoothing", 0.0, None, None, "float", "_StoreAction"),
    "--scale": ("scale", [0.75, 1.25], 2, None, "float", "_StoreAction"),
    "--jitter": ("jitter", 0.3, None, None, "float", "_StoreAction"),
    "--flip": ("flip", True, None, None, "_bool", "_StoreAction"),
    "--amp": ("amp", "none", None, ("none", "bf16"), None, "_StoreAction"),
    "--channels-last": ("channels_last", None, None, None, "_bool", "_StoreAction"),
    "--compile": ("compile", False, 0, None, None, "_StoreTrueAction"),
    "--seed": ("seed", 0, None, None, "int", "_StoreAction"),
    "--device": ("device", "auto", None, None, "str", "_StoreAction"),
    "--outdir": ("outdir", None, None, None, "str", "_StoreAction"),
    "--resume": ("resume", None, None, None, "str", "_StoreAction"),
    "--log-every": ("log_every", 50, None, None, "int", "_StoreAction"),
    "--val-every": ("val_every", 500, None, None, "int", "_StoreAction"),
    "--ckpt-every": ("ckpt_every", 500, None, None, "int", "_StoreAction"),
    "--keep": ("keep", 2, None, None, "int", "_StoreAction"),
    "--max-minutes": ("max_minutes", None, None, None, "float", "_StoreAction"),
    "--stop-at": ("stop_at", None, None, None, "int", "_StoreAction"),
    "--no-progress": ("progress", True, 0, None, None, "_StoreFalseAction"),
    "--no-onnx": ("onnx", True, 0, None, None, "_StoreFalseAction"),
}


def test_the_cli_is_exactly_the_recorded_one():
    """Names, destinations, defaults, value counts, choices and types of every flag (help aside)."""
    got = {}
    for a in build_arg_parser()._actions:
        if a.dest == "help":
            continue
        assert len(a.option_strings) == 1, a.option_strings
        got[a.option_strings[0]] = (a.dest, a.default, a.nargs, tuple(a.choices) if a.choices else None,
                                    getattr(a.type, "__name__", a.type), type(a).__name__)
    assert got == CLI


#: What a tiny run and ``--publish`` of it write (``model.onnx``: onnx + onnxscript are installed).
RUN_FILES = ["best/README.md", "best/config.json", "best/metrics.json", "best/model.onnx", "best/model.safetensors",
             "checkpoints/training-state-00000004.pt", "checkpoints/training-state-00000006.pt",
             "final/README.md", "final/config.json", "final/metrics.json", "final/model.safetensors",
             "log.jsonl", "parser_options.json"]
PUBLISHED_FILES = ["README.md", "config.json", "log.jsonl", "metrics.json", "model.onnx", "model.safetensors",
                   "training_curve.png"]
CONFIG_KEYS = ["_format", "bottom_classes", "class_names", "decoder", "depths", "dropout", "edge_rows", "expansion",
               "feet_classes", "head_classes", "height", "max_bottom_cut", "max_top_cut", "min_confidence", "min_feet",
               "min_foreground", "min_heads_tall", "min_person_height", "palette", "stem", "top_classes",
               "torso_classes", "width", "widths"]
METRICS_KEYS = ["step", "val"]
VAL_KEYS = ["absent_classes", "majority_baseline", "mean_accuracy", "mean_iou", "num_classes_in_mean", "per_class",
            "pixel_accuracy"]
PER_CLASS_KEYS = ["accuracy", "iou", "predicted_pixels", "true_pixels"]
LOG_KEYS = [["grad_norm", "img_per_s", "loss", "lr", "minutes", "step"], ["step", "val"]]
STATE_KEYS = ["best", "best_step", "config", "kind", "model", "optimizer", "step"]


def test_a_published_parser_folder_keeps_its_format(tmp_path):
    pytest.importorskip("onnxscript")
    examples = Path(__file__).resolve().parents[1] / "smis" / "assets" / "examples" / "ccp"
    gen = torch.Generator().manual_seed(0)
    data = [{"image": torch.rand(3, 64, 64, generator=gen) * 2 - 1,
             "label": torch.randint(0, 10, (64, 64), generator=gen)} for _ in range(4)]
    opts = ParserTrainOptions(data=str(examples), val_split="all", preset="tiny", height=64, width=64,
                                 batch_size=2, steps=6, warmup=0, log_every=2, val_every=3, ckpt_every=4,
                                 outdir=str(tmp_path / "run"), progress=False, workers=0)
    train(opts, data, data)
    run, out = tmp_path / "run", tmp_path / "shipped"
    assert main(["--publish", str(run), str(out)]) == 0

    def files(folder: Path) -> list[str]:
        return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())

    assert files(run) == RUN_FILES
    assert files(out) == PUBLISHED_FILES
    assert sorted(json.loads((run / "parser_options.json").read_text())) == sorted(
        ParserTrainOptions.__dataclass_fields__)
    assert sorted({tuple(sorted(r)) for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())}) == [
        tuple(k) for k in LOG_KEYS]
    state = torch.load(run / "checkpoints" / "training-state-00000006.pt", weights_only=True)
    assert sorted(state) == STATE_KEYS
    for folder in (run / "best", run / "final", out):
        assert sorted(json.loads((folder / "config.json").read_text())) == CONFIG_KEYS
        metrics = json.loads((folder / "metrics.json").read_text())
        assert sorted(metrics) == METRICS_KEYS
        assert sorted(metrics["val"]) == VAL_KEYS
        assert all(sorted(v) == PER_CLASS_KEYS for v in metrics["val"]["per_class"].values())
    config = json.loads((out / "config.json").read_text())
    assert config["min_foreground"] != json.loads((run / "best" / "config.json").read_text())["min_foreground"]
