"""Subcommand registration: each command's flags and handler, imported lazily when run."""

from __future__ import annotations

import argparse

from difflens.cli_args import add_llm_args, add_model_args, llm_fields

__all__ = ["add_llm_args", "llm_fields", "register_all"]


def register_all(sub: argparse._SubParsersAction) -> None:
    _register_adl(sub)
    _register_mine(sub)
    _register_kl(sub)
    _register_amplify(sub)
    _register_pca(sub)
    _register_weights(sub)
    _register_organism(sub)
    _register_report(sub)
    _register_eval(sub)
    _register_agent(sub)
    _register_serve(sub)
    from difflens.methods.dictionary.cli import add_parsers as add_dictionary_parsers

    add_dictionary_parsers(sub)


def _register_serve(sub: argparse._SubParsersAction) -> None:
    from difflens.serve.cli import add_parser

    add_parser(sub)


def _register_agent(sub: argparse._SubParsersAction) -> None:
    from difflens.agent.cli import add_parser

    add_parser(sub)


def _register_eval(sub: argparse._SubParsersAction) -> None:
    from difflens.evaluation.cli import add_parser

    add_parser(sub)


def _register_weights(sub: argparse._SubParsersAction) -> None:
    from difflens.methods.weights.cli import add_parser

    add_parser(sub)


def _register_mine(sub: argparse._SubParsersAction) -> None:
    try:
        from difflens.methods.mining.cli import add_parser
    except ImportError:  # pragma: no cover - mining not present in this build
        return
    add_parser(sub)


def _register_pca(sub: argparse._SubParsersAction) -> None:
    from difflens.methods.pca.cli import add_parser

    add_parser(sub)


def _register_amplify(sub: argparse._SubParsersAction) -> None:
    from difflens.methods.amplify.cli import add_parser

    add_parser(sub)


def _register_kl(sub: argparse._SubParsersAction) -> None:
    from difflens.methods.kl.cli import add_parser

    add_parser(sub)


def _register_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="render the HTML report of a run directory",
                       description="Write RUN_DIR/report.html (self-contained, opens offline).")
    p.add_argument("run_dir", help="a directory written by difflens adl / mine")
    p.add_argument("--out", default=None, help="output file (default RUN_DIR/report.html)")
    p.set_defaults(handler=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from difflens.errors import DifflensError
    from difflens.io.artifacts import read_json
    from difflens.options import check_path
    from difflens.report.page import render_report

    run = Path(args.run_dir)
    if args.out:
        check_path(args.out, "out_file", "--out")
    for file in sorted(Path(run).glob("*.json")):  # a corrupt artifact: one line naming it
        read_json(file)
    try:
        print(render_report(run, args.out))
    except OSError as exc:
        raise DifflensError(f"cannot write the report: {exc.strerror or exc} "
                            f"({exc.filename or args.out}); choose another --out") from None
    return 0


def _register_adl(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "adl", help="Activation Difference Lens (the main job)",
        description="Mean activation differences on the first k tokens of unrelated text, read "
                    "out with the logit lens. With no arguments: the embedded gemma-3-270m base "
                    "and the shipped cake_bake organism.")
    add_model_args(p)
    from difflens.methods.adl.config import ADLConfig
    from difflens.options import add_arguments

    add_arguments(p, ADLConfig)
    add_llm_args(p)
    p.add_argument("--out", default=None, help="run directory (default runs/adl-<config hash>)")
    # The flags above are generated from ADLConfig; --out is checked like its path fields.
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_run_adl)


def _run_adl(args: argparse.Namespace) -> int:
    from difflens.api import run_adl
    from difflens.cli_args import config_and_pair
    from difflens.methods.adl.config import ADLConfig, resolve_defaults
    from difflens.methods.adl.summary import print_summary

    # Flags, --out and the corpus are checked before the models load (config_and_pair).
    config, pair, out = config_and_pair(args, ADLConfig, resolve_defaults, **llm_fields(args))
    summary = run_adl(config, out, pair=pair, progress=not args.quiet)
    print_summary(summary)
    return 0


def _register_organism(sub: argparse._SubParsersAction) -> None:
    from difflens.organisms.cli import add_parser

    add_parser(sub)
