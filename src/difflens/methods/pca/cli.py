"""``difflens pca``: flags and handler (registered by :func:`add_parser`)."""

from __future__ import annotations

import argparse

from difflens.cli_args import add_llm_args, add_model_args, add_run_dir_args


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``pca`` subcommand on the top-level subparsers."""
    p = sub.add_parser(
        "pca", help="PCA of activation differences: the main directions of h_ft − h_base",
        description="Principal components of δ = h_ft − h_base over every token position of "
                    "unrelated text (BOS and padding excluded) at ADL's readout layer, read "
                    "through the logit lens (both signs) and Patchscope, with their "
                    "top-activating contexts and steering along PC1. With no arguments: the "
                    "embedded gemma-3-270m base and the shipped cake_bake organism.")
    add_model_args(p)
    from difflens.methods.pca.config import PCAConfig
    from difflens.options import add_arguments

    add_arguments(p, PCAConfig)  # every flag of the config, with its range and kind
    add_llm_args(p)
    add_run_dir_args(p, "pca")
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    from difflens.api import run_pca
    from difflens.cli_args import config_and_pair, llm_fields
    from difflens.methods.pca.config import PCAConfig, resolve_defaults
    from difflens.methods.pca.summary import print_summary

    config, pair, out = config_and_pair(args, PCAConfig, resolve_defaults, **llm_fields(args))
    summary = run_pca(config, out, pair=pair, progress=not args.quiet)
    print_summary(summary)
    return 0
