"""``difflens kl``: flags and handler (registered by :func:`add_parser`)."""

from __future__ import annotations

import argparse

from difflens.cli_args import add_model_args, add_run_dir_args


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``kl`` subcommand on the top-level subparsers."""
    p = sub.add_parser(
        "kl", help="per-token KL between the models' next-token distributions, and where the "
                   "activations differ",
        description="Run both models over a corpus; at every position measure KL(p_ft‖p_base) "
                    "(reverse and symmetric too) and ‖h_ft − h_base‖ at chosen layers; report "
                    "the highest-divergence contexts and the tokens that carry the divergence. "
                    "With no arguments: the embedded gemma-3-270m base and the shipped "
                    "cake_bake organism.")
    add_model_args(p)
    from difflens.methods.kl.config import KLConfig
    from difflens.options import add_arguments

    add_arguments(p, KLConfig)  # every flag of the config, with its range and kind
    add_run_dir_args(p, "kl")
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    from difflens.api import run_kl
    from difflens.cli_args import config_and_pair
    from difflens.methods.kl.config import KLConfig, resolve_defaults
    from difflens.methods.kl.summary import print_summary

    config, pair, out = config_and_pair(args, KLConfig, resolve_defaults)
    summary = run_kl(config, out, pair=pair, progress=not args.quiet)
    print_summary(summary)
    return 0
