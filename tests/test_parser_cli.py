"""``python -m train.parser``'s flags are generated from ParserTrainOptions by train/options.py's rules."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import pytest

from train import parser as tp
from train.options import NEGATED, SWITCH, add_dataclass_arguments

#: Every flag the hand-written CLI had (a flag may gain an alias, never lose its name).
FLAGS = """--evaluate --export-onnx --data --format --train-split --val-split --on-bad --workers --max-items
--preset --height --width --batch-size --steps --lr --warmup --poly-power --weight-decay --grad-clip --loss
--ohem-keep --label-smoothing --scale --jitter --flip --amp --channels-last --compile --seed --device --outdir
--resume --log-every --val-every --ckpt-every --keep --max-minutes --stop-at --no-progress --no-onnx""".split()


def test_every_flag_is_kept_and_documented():
    p = tp.build_parser()
    strings = {s for a in p._actions for s in a.option_strings}
    assert set(FLAGS) <= strings
    helps = {a.dest: a.help for a in p._actions}
    assert all(helps[name] for name in tp.ParserTrainOptions.__dataclass_fields__), "a field lacks its #: comment"
    titles = [g.title for g in p._action_groups]
    assert {"data", "model", "augmentation", "run folder"} <= set(titles)


def test_cli_gives_the_options():
    ns = vars(tp.build_parser().parse_args(
        ["--data", "d", "--scale", "0.5", "1.5", "--flip", "false", "--no-onnx", "--compile", "--channels-last",
         "true", "--preset", "tiny", "--max-items", "3", "--no-progress", "--loss", "ohem", "--amp", "bf16"]))
    opts = tp.options_from_args(ns)
    assert opts == tp.ParserTrainOptions(data="d", scale=(0.5, 1.5), flip=False, onnx=False, compile=True,
                                         channels_last=True, preset="tiny", max_items=3, progress=False,
                                         loss="ohem", amp="bf16")
    assert tp.build_parser().parse_args([]).scale == [0.75, 1.25]
    for bad in (["--preset", "huge"], ["--flip", "maybe"], ["--amp", "fp16"], ["--scale", "1"]):
        with pytest.raises(SystemExit):
            tp.build_parser().parse_args(bad)
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
