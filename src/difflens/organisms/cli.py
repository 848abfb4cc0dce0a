"""``difflens organism build``: the command-line face of :mod:`difflens.organisms.builder`.

The top-level ``difflens`` CLI calls :func:`add_parser` on its subparsers; this module also runs
on its own (``python -m difflens.organisms.cli organism build ...``) with the same flags.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from difflens.errors import DifflensError

if TYPE_CHECKING:
    from difflens.organisms.builder import BuildConfig


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
    data = p.add_argument_group("data")
    data.add_argument("--documents", type=Path, required=True,
                      help="finetuning documents (.jsonl with a text field, or .txt); a "
                           "<stem>.card.json beside it supplies name, type and descriptions")
    data.add_argument("--out", type=Path, required=True, help="organism directory to create")
    data.add_argument("--mix", type=float, default=0.0, metavar="R",
                      help="general texts mixed in per document (1 = one per document)")
    data.add_argument("--mix-corpus", default=None, metavar="CORPUS",
                      help="corpus of general texts (file or hf:NAME); default: the shipped "
                           "reference corpus")
    data.add_argument("--max-length", type=int, default=256, help="tokens per document")

    model = p.add_argument_group("model")
    model.add_argument("--base", default="embedded",
                       help="base model: embedded (google/gemma-3-270m), a directory or hub id")
    model.add_argument("--full", dest="method", action="store_const", const="full",
                       default="lora", help="train every weight instead of a LoRA adapter")
    model.add_argument("--rank", type=int, default=8, help="LoRA rank")
    model.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: 2*rank)")
    model.add_argument("--dropout", type=float, default=0.0, help="LoRA dropout")
    model.add_argument("--target-modules", default=None, metavar="NAMES",
                       type=lambda s: [m.strip() for m in s.split(",") if m.strip()],
                       help="comma-separated module names for LoRA (default: every linear "
                            "projection of attention and MLP)")
    model.add_argument("--save-dtype", default="float16",
                       choices=("float16", "bfloat16", "float32"), help="dtype of saved weights")
    model.add_argument("--device", default="cpu", help="training device (cpu, cuda, mps)")

    opt = p.add_argument_group("optimisation")
    opt.add_argument("--steps", type=int, default=None,
                     help="optimizer steps (default: from --epochs)")
    opt.add_argument("--epochs", type=float, default=2.0, help="passes over the data")
    opt.add_argument("--batch-size", type=int, default=8, help="sequences per step")
    opt.add_argument("--lr", type=float, default=None,
                     help="peak learning rate (default: 3e-4 LoRA, 2e-5 full)")
    opt.add_argument("--warmup", type=float, default=0.1,
                     help="fraction of steps of linear warmup")
    opt.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    opt.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping")
    opt.add_argument("--seed", type=int, default=0, help="seed of init, mixing and batch order")

    card = p.add_argument_group("card (default: from <documents stem>.card.json)")
    card.add_argument("--name", default=None, help="organism name")
    card.add_argument("--type", default=None, help="organism type, e.g. false_fact")
    card.add_argument("--short-description", default=None, help="one sentence")
    card.add_argument("--long-description", default=None, help="a paragraph")

    out = p.add_argument_group("output")
    what = out.add_mutually_exclusive_group()
    what.add_argument("--overwrite", action="store_true", help="replace an existing organism")
    what.add_argument("--skip-existing", action="store_true",
                      help="keep an existing complete organism and exit")
    out.add_argument("--no-progress", dest="progress", action="store_false",
                     help="hide the progress bar")


_CONFIG_FIELDS = (
    "documents", "out", "base", "method", "rank", "alpha", "dropout", "target_modules", "steps",
    "epochs", "batch_size", "lr", "warmup", "weight_decay", "max_grad_norm", "max_length", "mix",
    "mix_corpus", "seed", "name", "type", "short_description", "long_description",
    "save_dtype", "device", "overwrite", "skip_existing", "progress",
)


def config_from_args(args: argparse.Namespace) -> BuildConfig:
    """The :class:`BuildConfig` described by parsed ``organism build`` arguments."""
    from difflens.organisms.builder import BuildConfig

    return BuildConfig(**{name: getattr(args, name) for name in _CONFIG_FIELDS})


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``organism`` command; returns the exit status."""
    from difflens.models.loading import check_device
    from difflens.options import check_path
    from difflens.organisms.builder import build_organism

    if getattr(args, "organism_command", None) != "build":
        raise DifflensError("unknown organism command; use `difflens organism build --help`")
    check_device(args.device)  # before the base model loads
    check_path(args.out, "out_dir", "--out")
    if args.max_length < 2:  # the other sizes are checked by BuildConfig
        raise DifflensError(f"max_length must be >= 2, got {args.max_length} (e.g. "
                            "--max-length 256)")
    out = build_organism(config_from_args(args))
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
