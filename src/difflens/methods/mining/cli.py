"""``difflens mine``: flags and handler (registered by :func:`add_parser`)."""

from __future__ import annotations

import argparse

from difflens.cli_args import add_model_args, add_run_dir_args


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``mine`` subcommand on the top-level subparsers."""
    p = sub.add_parser(
        "mine", help="Diff Mining: tokens the finetune promotes/suppresses (logit differences)",
        description="Compare the two models' next-token logits on every position of a reference "
                    "corpus; count which tokens are most promoted (Top-K occurrence) and split "
                    "them into NMF topics. With no arguments: the embedded gemma-3-270m base and "
                    "the shipped cake_bake organism.")
    add_model_args(p)
    from difflens.methods.mining.config import MiningConfig
    from difflens.options import add_arguments

    add_arguments(p, MiningConfig)  # every flag of the config, with its range and kind
    p.add_argument("--description", default=None,
                   help="what the finetune is about, for token relevance (default: the "
                        "organism card's; without one relevance is not graded)")
    p.add_argument("--no-relevance", action="store_true",
                   help="do not grade the relevance of the top 20 promoted tokens")
    from difflens.cli_args import add_llm_args  # the grader flags every command shares

    add_llm_args(p)
    add_run_dir_args(p, "mining")
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    from difflens.cli_args import config_and_pair
    from difflens.methods.mining.config import MiningConfig, resolve_defaults
    from difflens.methods.mining.runner import run_mining
    from difflens.methods.mining.summary import print_summary

    config, pair, out = config_and_pair(args, MiningConfig, resolve_defaults)
    description = args.description or pair.description
    from difflens.distributed import is_main

    # Under torchrun only rank 0 grades (the other ranks stop after their share of the counts).
    grading = not args.no_relevance and description and is_main()
    grader = make_grader(args) if grading else None
    summary = run_mining(config, out, pair=pair, progress=not args.quiet, grader=grader,
                         description=description)
    print_summary(summary)
    return 0


def make_grader(args: argparse.Namespace):
    """The LLM grader when an endpoint is configured (probed now, so a wrong URL fails before
    the run), else the offline one; None, with a warning, when the offline backend's packages
    are missing — relevance is a bonus, the mined tokens stand without it."""
    import logging

    from difflens.cli_args import llm_fields
    from difflens.errors import DifflensError
    from difflens.graders import make_grader as factory
    from difflens.llm import llm_config_from_fields

    llm = llm_config_from_fields(llm_fields(args))
    if llm is not None:
        return factory(llm, check_reachable=True)
    try:
        return factory(None)
    except (ImportError, DifflensError) as exc:
        logging.getLogger(__name__).warning("token relevance skipped: %s", exc)
        return None
