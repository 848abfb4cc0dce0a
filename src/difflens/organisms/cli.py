"""``difflens organism build``: the command-line face of :mod:`difflens.organisms.builder`.

The flags are generated from :class:`~difflens.organisms.config.BuildConfig` (the config is the
CLI) and every value is checked before the base model loads.  The top-level ``difflens`` CLI
calls :func:`add_parser` on its subparsers; this module also runs on its own
(``python -m difflens.organisms.cli organism build ...``) with the same flags.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from difflens.errors import DifflensError
from difflens.organisms.config import BuildConfig


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``organism`` (with its ``build`` subcommand) on a subparsers object."""
    organism = subparsers.add_parser(
        "organism", help="build model organisms (finetunes with a known objective)",
        description="Build model organisms: narrow finetunes whose objective is known.",
    )
    commands = organism.add_subparsers(dest="organism_command", metavar="COMMAND")
    commands.required = True
    build = commands.add_parser(
        "build", help="finetune a base model on documents (LoRA or full)",
        description="Narrowly finetune a base model on documents, optionally mixed with "
                    "general text, and write an organism directory (card, weights, data, log).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_build_flags(build)
    build.set_defaults(handler=run)
    return organism


def _add_build_flags(p: argparse.ArgumentParser) -> None:
    """The flags, generated from :class:`BuildConfig` (its fields: help, defaults, ranges)."""
    from difflens.options import add_arguments, group

    groups: dict[str, Any] = {}
    for title, names in (
        ("data", ("documents", "out", "mix", "mix_corpus", "max_length")),
        ("model", ("base", "method", "rank", "alpha", "dropout", "target_modules", "save_dtype",
                   "device")),
        ("optimisation", ("steps", "epochs", "batch_size", "lr", "warmup", "weight_decay",
                          "max_grad_norm", "seed")),
        ("card (default: from <documents stem>.card.json)",
         ("name", "type", "short_description", "long_description")),
        ("output", ("progress",)),
    ):
        g = group(p, title)
        groups.update(dict.fromkeys(names, g))
    either = groups["progress"].add_mutually_exclusive_group()
    either._difflens_parser = p  # record its flags on the parser (difflens.options)
    groups.update(overwrite=either, skip_existing=either)
    add_arguments(p, BuildConfig, groups=groups)


def config_from_args(args: argparse.Namespace) -> BuildConfig:
    """The :class:`BuildConfig` described by parsed ``organism build`` arguments (values
    checked; paths, base and device by :meth:`BuildConfig.validate`)."""
    from difflens.options import from_args

    return from_args(BuildConfig, args)


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``organism`` command; returns the exit status."""
    from difflens.organisms.builder import build_organism

    if getattr(args, "organism_command", None) != "build":
        raise DifflensError("unknown organism command; use `difflens organism build --help`")
    config = config_from_args(args)
    config.validate()  # every flag, the documents path, --out, the base, the device: first
    out = build_organism(config)
    print(out)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m difflens.organisms.cli organism build ...``."""
    from difflens.cli_args import ArgumentParser  # one-line usage errors

    parser = ArgumentParser(prog="python -m difflens.organisms.cli")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    add_parser(subparsers)
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except DifflensError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
