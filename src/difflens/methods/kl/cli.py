"""``difflens kl``: flags and handler (registered by :func:`add_parser`)."""

from __future__ import annotations

import argparse

from difflens.cli_args import add_model_args, load_options


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
    p.add_argument("--out", default=None, help="run directory (default runs/kl-<hash>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from difflens.api import run_kl
    from difflens.data.corpus import check_corpus
    from difflens.methods.kl.config import KLConfig, resolve_defaults
    from difflens.methods.kl.summary import print_summary
    from difflens.models.device import is_gpu
    from difflens.models.pair import ModelPair
    from difflens.options import check_path, from_args

    # Flags first (ranges, choices, paths, device), then the corpus, then the models.
    config = from_args(KLConfig, args)
    config.validate()  # before minutes of model loading
    options = load_options(args)
    if args.out:
        check_path(args.out, "out_dir", "--out")
    check_corpus(config.corpus, limit=resolve_defaults(config, is_gpu(options.device)).n_texts)
    pair = ModelPair.load(config.base, config.finetuned, options)
    summary = run_kl(config, Path(args.out) if args.out else None, pair=pair,
                     progress=not args.quiet)
    print_summary(summary)
    return 0
