"""Command lines generated from typed, frozen option dataclasses (``python -m train`` and
``python -m train.human_parser`` both build theirs here).

Every field is one flag, ``--field-name``: its default is the field's, its help the ``#:`` comment
above it, its argument group the ``# -- title ---`` comment above it (or the one the caller
gives), its parsing follows the type (``Literal`` -> choices, ``bool`` -> ``true``/``false``,
``dict[str, int]`` -> ``KEY=INT,...``, ``tuple[float, float]`` -> two values). A field's
``metadata`` says the rest: ``SWITCH`` (a bare ``--flag`` sets it), ``NEGATED`` (``--no-flag``
clears it), ``choices`` / ``required`` / ``metavar`` (passed on to argparse), ``also`` (an alias
flag). :func:`options_to_cli` goes the other way: flat options -> the command that gives them.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
from collections.abc import Sequence
from typing import Any, Literal, get_args, get_origin, get_type_hints

SWITCH = {"cli": "switch"}
NEGATED = {"cli": "negated"}


def flag(name: str) -> str:
    """``field_name`` -> ``--field-name``."""
    return "--" + name.replace("_", "-")


def field_hints(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    """(field, type hint with ``None`` removed) for every field of the dataclass ``cls``."""
    hints = get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        args = [a for a in get_args(hints[f.name]) if a is not type(None)]
        optional = type(None) in get_args(hints[f.name])
        out.append((f, args[0] if optional and len(args) == 1 else hints[f.name]))
    return out


def field_sections(cls: type) -> dict[str, str]:
    """The ``# -- title ---`` comment above each field of ``cls`` (its argument group), if any."""
    sections: dict[str, str] = {}
    current = None
    for line in inspect.getsource(cls).splitlines():
        text = line.strip()
        if m := re.match(r"#\s*--\s*(.+?)\s*-*$", text):
            current = m.group(1)
        elif (m := re.match(r"(\w+)\s*:", text)) and current and not text.startswith("#"):
            sections.setdefault(m.group(1), current)
    return sections


def field_help(cls: type) -> dict[str, str]:
    """The ``#:`` comment lines above each field of ``cls``, joined (rst markup dropped)."""
    helps: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(cls).splitlines():
        text = line.strip()
        if text.startswith("#:"):
            pending.append(text[2:].strip())
        elif (m := re.match(r"(\w+)\s*:", text)) and pending:
            helps[m.group(1)] = " ".join(pending).replace("``", "").replace("%", "%%")
            pending = []
    return helps


def _widths(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not value.strip().isdigit():
            raise argparse.ArgumentTypeError(f"expected KEY=INT[,KEY=INT...], got {part!r}")
        out[key.strip()] = int(value)
    return out


def _bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def add_field_argument(group: Any, f: dataclasses.Field, hint: Any, default: Any, help: str | None) -> None:
    """The flag of one option field (the rules are in the module docstring); ``tuple[float, float]``
    fields take that many values (``metadata["metavar"]`` names them)."""
    meta = f.metadata
    kw: dict[str, Any] = {"dest": f.name, "default": default, "help": help}
    if meta.get("cli") == "switch":
        group.add_argument(flag(f.name), action="store_true", **kw)
    elif meta.get("cli") == "negated":
        group.add_argument(flag("no_" + f.name), action="store_false", **kw)
    else:
        if get_origin(hint) is Literal:
            kw["choices"] = get_args(hint)
        elif get_origin(hint) is tuple:
            args = get_args(hint)
            kw["nargs"] = "+" if len(args) == 2 and args[1] is Ellipsis else len(args)
            kw["type"] = args[0]
            kw["default"] = list(default) if default is not None else None
        else:
            kw["type"] = _bool if hint is bool else _widths if get_origin(hint) is dict else hint
        kw.update({k: v for k, v in meta.items() if k in ("choices", "required", "metavar")})
        group.add_argument(flag(f.name), **kw)
    if "also" in meta:
        alias, extra = meta["also"]
        group.add_argument(alias, dest=f.name, **extra)


def add_dataclass_arguments(cli: argparse.ArgumentParser, cls: type, defaults: Any | None = None,
                            title: str | None = None) -> None:
    """One flag per field of the dataclass ``cls``: in the argument group ``title`` if given, else
    fields under a ``# -- title ---`` comment form that argument group (the others go to ``cli``)."""
    defaults = cls() if defaults is None else defaults
    helps, sections = field_help(cls), field_sections(cls)
    groups: dict[str, Any] = {}
    for f, hint in field_hints(cls):
        name = title or sections.get(f.name)
        if name is None:
            target = cli
        else:
            target = groups.get(name) or groups.setdefault(name, cli.add_argument_group(name))
        add_field_argument(target, f, hint, getattr(defaults, f.name), helps.get(f.name))


def options_to_cli(options: dict[str, Any], classes: Sequence[type], prog: str,
                   always: tuple[str, ...] = ("data", "preset")) -> str:
    """The command line that gives these flat options (non-default ones, plus ``always``).

    ``classes``: the dataclasses whose fields the flat options are, in flag order (the five groups
    of ``train.options``, or ``train.human_parser.options.ParserTrainOptions`` alone). Parsing the
    result's arguments with the flags of :func:`add_dataclass_arguments` gives the same options back.
    """
    defaults: dict[str, Any] = {}
    for cls in classes:
        defaults.update(dataclasses.asdict(cls()))
    args = [prog]
    for f in (f for cls in classes for f, _ in field_hints(cls)):
        if f.name not in options:
            continue
        value, kind = options[f.name], f.metadata.get("cli")
        default = defaults[f.name]
        if f.name not in always and (value == default or (isinstance(default, tuple) and list(default) == value)):
            continue
        if kind == "switch":
            args.append(flag(f.name))
        elif kind == "negated":
            args.append(flag("no_" + f.name))
        elif isinstance(value, dict):
            args.append(f"{flag(f.name)} " + ",".join(f"{k}={v}" for k, v in value.items()))
        elif isinstance(value, bool):
            args.append(f"{flag(f.name)} {str(value).lower()}")
        elif isinstance(value, (list, tuple)):
            args.append(f"{flag(f.name)} " + " ".join(str(v) for v in value))
        elif value is not None:
            args.append(f"{flag(f.name)} {value}")
    return " ".join(args)
