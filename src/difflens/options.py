"""The config is the CLI: dataclass fields that carry their flag, help, range, choices, path kind.

A method's config dataclass declares each field with :func:`option`::

    n_texts: int | None = option(None, help="texts to read", min=1, example=2000)

and the same declaration serves three purposes:

* :func:`add_arguments` generates the argparse flags (``--n-texts``, its help and default), so
  a default lives in one place;
* :func:`from_args` builds the config back from parsed arguments;
* :func:`validate` checks every declared range, choice and path kind of a config (from the CLI
  or from Python) before any model loads, raising :class:`DifflensError` with one line that
  says what is wrong and how to fix it (``n_texts must be a positive integer, got 0
  (e.g. --n-texts 2000)``).

``None`` is always accepted for a field whose default is ``None``: it stands for a default
derived at run time (from the device, the model, ...), resolved in one function per method.
This module is light (no torch): building the parser for ``difflens --help`` imports it.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any

from difflens.errors import DifflensError

KEY = "difflens_option"
#: Path kinds: an existing file / directory / either, an output directory or file (may not
#: exist yet; it, or its nearest existing parent, must be a writable directory).
PATH_KINDS = ("file", "dir", "file_or_dir", "out_dir", "out_file")
LAYER = "layer"  # value type: an index (12, -1) or a relative depth (0.75)


@dataclass(frozen=True)
class Option:
    """What a config field means on the command line and which values it accepts."""

    help: str
    type: Any = None  # int, float, str, bool or LAYER; default: the type of the default
    flag: str | None = None  # default: --field-name
    aliases: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None
    min_open: bool = False  # the value must be > min (not >= min)
    max_open: bool = False  # the value must be < max (not <= max)
    choices: tuple[Any, ...] | None = None
    path: str | None = None  # one of PATH_KINDS
    nargs: str | None = None  # argparse nargs for list fields ("*", "+")
    example: Any = None  # shown in the error message (default: the field's default)
    metavar: str | None = None
    cli: bool = True  # False: a Python-only field (no flag)
    const: Any = None  # a flag without a value that sets this (``--full`` -> method="full")
    required: bool = False
    check: Callable[[Any], None] | None = None  # extra check of one value (raises DifflensError)

    def flag_name(self, name: str) -> str:
        return self.flag or "--" + name.replace("_", "-")


def option(default: Any = MISSING, *, default_factory: Any = MISSING, **kw: Any) -> Any:
    """A dataclass field carrying an :class:`Option` (keyword arguments: its attributes)."""
    meta = {KEY: Option(**kw)}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def meta(**kw: Any) -> dict[str, Option]:
    """Field metadata carrying an :class:`Option`, for fields written with ``field(...)``
    (list defaults: ``field(default_factory=list, metadata=meta(help=...))``)."""
    return {KEY: Option(**kw)}


def declared(cls_or_obj: Any) -> list[tuple[Field, Option]]:
    """``(field, option)`` of every declared field, in declaration order."""
    return [(f, f.metadata[KEY]) for f in fields(cls_or_obj) if KEY in f.metadata]


def field_default(f: Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


def value_type(f: Field, opt: Option) -> Any:
    """The declared type, else the default's, else the annotation's (``int | None`` → int)."""
    if opt.type is not None:
        return opt.type
    default = field_default(f)
    if isinstance(default, list | tuple) and default:
        default = default[0]
    if default is not None and not isinstance(default, list | tuple):
        return type(default)
    names = set(re.findall(r"[A-Za-z_]+", f.type if isinstance(f.type, str) else repr(f.type)))
    for name, kind in (("bool", bool), ("float", float), ("int", int)):
        if name in names:
            return kind
    return str


# ---- argparse -------------------------------------------------------------------------------
def layer_arg(text: str) -> int | float:
    """``12`` → layer index 12, ``-1`` → last layer, ``0.75`` → relative depth."""
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"invalid layer {text!r}: give an index (12, -1) or a relative depth (0.75)"
            ) from None


def add_arguments(parser: Any, cls: type, *, exclude: Iterable[str] = (),
                  only: Iterable[str] | None = None, groups: dict[str, Any] | None = None,
                  overrides: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """Add a flag per declared field of ``cls`` to ``parser``; returns the field names added.

    ``groups`` maps field names to an argument group to put them in; ``overrides`` replaces
    argparse keywords of one flag (e.g. a command-specific help).  The options are recorded on
    the parser (``parser.difflens_options``) for the generated bad-input tests.
    """
    exclude, names = set(exclude), []
    only = set(only) if only is not None else None
    record = _record(parser)
    for f, opt in declared(cls):
        if not opt.cli or f.name in exclude or (only is not None and f.name not in only):
            continue
        target = (groups or {}).get(f.name, parser)
        kind, default = value_type(f, opt), field_default(f)
        kwargs: dict[str, Any] = {"dest": f.name, "help": opt.help, "default": default}
        if kind is bool:
            kwargs["action"] = "store_false" if default else "store_true"
        elif opt.const is not None:
            kwargs.update(action="store_const", const=opt.const)
        else:
            kwargs["type"] = layer_arg if kind == LAYER else kind
            if opt.choices is not None:
                kwargs["choices"] = list(opt.choices)
            if opt.nargs is not None:
                kwargs["nargs"] = opt.nargs
            if opt.metavar is not None:
                kwargs["metavar"] = opt.metavar
            if opt.required:
                kwargs["required"] = True
        kwargs.update((overrides or {}).get(f.name, {}))
        flag = opt.flag_name(f.name)
        target.add_argument(flag, *opt.aliases, **kwargs)
        record.append((flag, f, opt))
        names.append(f.name)
    return names


def _record(parser: Any) -> list:
    # Argument groups share their parser's namespace: record on the parser they belong to.
    owner = getattr(parser, "_difflens_parser", parser)
    if not hasattr(owner, "difflens_options"):
        owner.difflens_options = []
    return owner.difflens_options


def group(parser: argparse.ArgumentParser, title: str) -> Any:
    """An argument group whose generated flags are recorded on ``parser``."""
    g = parser.add_argument_group(title)
    g._difflens_parser = parser
    return g


def from_args(cls: type, args: argparse.Namespace, **extra: Any) -> Any:
    """The ``cls`` instance described by parsed arguments (declared fields present in ``args``,
    then ``extra``)."""
    values = {}
    for f, _opt in declared(cls):
        if hasattr(args, f.name):
            value = getattr(args, f.name)
            values[f.name] = list(value) if isinstance(value, tuple) else value
    values.update(extra)
    return cls(**values)


# ---- validation -----------------------------------------------------------------------------
def validate(config: Any, skip: Iterable[str] = ()) -> None:
    """Check every declared field of ``config``; the first problem raises one line."""
    skip = set(skip)
    for f, opt in declared(config):
        if f.name in skip:
            continue
        value = getattr(config, f.name)
        if value is None:
            if field_default(f) is None and not opt.required:
                continue
            raise DifflensError(f"{f.name} is required; pass {opt.flag_name(f.name)} "
                                f"{_example(f, opt)}")
        values = value if opt.nargs is not None and isinstance(value, list | tuple) else [value]
        for one in values:
            check_value(f, opt, one)


def check_value(f: Field, opt: Option, value: Any) -> None:
    """One value of a declared field: type, range, choices, path kind, then ``opt.check``."""
    name, flag, kind = f.name, opt.flag_name(f.name), value_type(f, opt)
    hint = f"(e.g. {flag} {_example(f, opt)})"
    if kind is bool:
        if not isinstance(value, bool):
            raise DifflensError(f"{name} must be true or false, got {value!r}")
        return
    if kind in (int, float, LAYER):
        ok = isinstance(value, int) and not isinstance(value, bool)
        if kind is not int:
            ok = ok or isinstance(value, float)
        if not ok:
            what = "an integer" if kind is int else "a number"
            raise DifflensError(f"{name} must be {what}, got {value!r} {hint}")
        _check_range(name, opt, kind, value, hint)
    elif kind is str and not isinstance(value, str | os.PathLike):
        raise DifflensError(f"{name} must be a string, got {value!r} {hint}")
    if opt.choices is not None and value not in opt.choices:
        raise DifflensError(f"{name} must be one of {', '.join(map(str, opt.choices))}, got "
                            f"{value!r} (e.g. {flag} {opt.choices[0]})")
    if opt.path is not None:
        check_path(value, opt.path, flag)
    if opt.check is not None:
        opt.check(value)


def _check_range(name: str, opt: Option, kind: Any, value: float, hint: str) -> None:
    low, high = opt.min, opt.max
    too_low = low is not None and (value <= low if opt.min_open else value < low)
    too_high = high is not None and (value >= high if opt.max_open else value > high)
    if not (too_low or too_high):
        return
    if kind is int and high is None and low in (0, 1) and not opt.min_open:
        what = "a positive integer" if low == 1 else "a non-negative integer"
    elif low is not None and high is not None:
        left, right = "(" if opt.min_open else "[", ")" if opt.max_open else "]"
        what = f"in {left}{_num(low)}, {_num(high)}{right}"
    elif low is not None:
        what = f"{'>' if opt.min_open else '>='} {_num(low)}"
    else:
        what = f"{'<' if opt.max_open else '<='} {_num(high)}"
    raise DifflensError(f"{name} must be {what}, got {value!r} {hint}")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _example(f: Field, opt: Option) -> str:
    if opt.example is not None:
        return str(opt.example)
    default = field_default(f)
    if isinstance(default, list | tuple):
        default = " ".join(map(str, default)) or None
    if default is not None and default is not False and default != "":
        return str(default)
    if opt.choices:
        return str(opt.choices[0])
    if opt.min is not None:
        return _num(opt.min + 1 if opt.min_open else opt.min)
    return "VALUE"


def check_path(value: Any, kind: str, flag: str) -> Path:
    """One-line errors for a path of the wrong kind (see :data:`PATH_KINDS`); writes nothing."""
    path = Path(value).expanduser()
    if kind in ("file", "dir", "file_or_dir"):
        if not path.exists():
            raise DifflensError(f"{path} does not exist; check the path given to {flag}")
        if kind == "file" and path.is_dir():
            raise DifflensError(f"{path} is a directory, not a file; give {flag} a file")
        if kind == "dir" and not path.is_dir():
            raise DifflensError(f"{path} is not a directory; give {flag} a directory")
        if not os.access(path, os.R_OK):
            raise DifflensError(f"{path} is not readable (permission denied); check {flag}")
        return path
    if kind == "out_dir" and path.exists() and not path.is_dir():
        raise DifflensError(f"{path} is a file, not a directory; give {flag} a directory")
    if kind == "out_file" and path.is_dir():
        raise DifflensError(f"{path} is a directory; give {flag} a file name")
    parent = path if kind == "out_dir" else path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise DifflensError(f"cannot write {path}: {parent} is a file, not a directory; "
                            f"choose another {flag}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DifflensError(f"cannot write {path}: {parent} is not writable (permission "
                            f"denied); choose another {flag}")
    return path
