"""Command-line flags derived from config dataclasses, so a flag never carries a default of its own: an unset
flag means "the recipe's value", and a bad value fails when the command starts, naming the allowed ones."""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import fields

NONE_WORDS = ("none", "off")


def field_types(cls) -> dict[str, object]:
    """The resolved annotation of each dataclass field."""
    return typing.get_type_hints(cls)


def _parser_for(tp):
    """(argparse type, choices, nargs) for an annotation: Literal -> choices, X | None -> X or 'none',
    list -> comma-separated."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        inner = [a for a in args if a is not type(None)][0]
        conv, choices, nargs = _parser_for(inner)
        return (
            (lambda v: None if v.lower() in NONE_WORDS else conv(v)),
            None if choices is None else (*choices, None),
            nargs,
        )
    if origin is typing.Literal:
        return type(args[0]), args, None
    if origin in (list, tuple):
        item = args[0]
        return (lambda v: [item(x) for x in v.split(",") if x]), None, None
    if tp is bool:
        return _boolean, None, None
    return tp, None, None


def _boolean(v: str) -> bool:
    if v.lower() in ("1", "true", "yes", "on"):
        return True
    if v.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}")


def add_config_args(
    parser: argparse.ArgumentParser, cls, prefix: str = "", skip=(), unset=None, help_of: dict | None = None
) -> list[str]:
    """One --[prefix-]name flag per field of `cls` (not in `skip`), default `unset`; returns the field names."""
    names = []
    types_ = field_types(cls)
    for f in fields(cls):
        if f.name in skip or not f.init:
            continue
        conv, choices, nargs = _parser_for(types_[f.name])
        flag = "--" + (prefix + "-" if prefix else "") + f.name.replace("_", "-")
        parser.add_argument(
            flag,
            dest=(prefix + "_" if prefix else "") + f.name,
            type=conv,
            choices=choices,
            nargs=nargs,
            default=unset,
            metavar=None if choices else f.name.upper(),
            help=(help_of or {}).get(f.name, f"{cls.__name__}.{f.name}"),
        )
        names.append(f.name)
    return names


def picked(args: argparse.Namespace, names: list[str], prefix: str = "") -> dict:
    """The parsed values of `names` (flags added with `prefix`), keyed by field name."""
    return {n: getattr(args, (prefix + "_" if prefix else "") + n) for n in names}
