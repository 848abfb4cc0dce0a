"""``difflens weights``: flags and handler (registered by :func:`add_parser`)."""

from __future__ import annotations

import argparse

from difflens.cli_args import add_model_args, add_run_dir_args, load_options, model_sources


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``weights`` subcommand on the top-level subparsers."""
    p = sub.add_parser(
        "weights", help="weight-space lens: which modules a finetune changed, read from the "
                        "weights alone (no data)",
        description="Per linear module: ‖ΔW‖_F, ‖ΔW‖_F/‖W_base‖_F, stable rank and top singular "
                    "values (LoRA: exactly from the factors; full finetunes: streamed tensor by "
                    "tensor), and the top singular vectors in the residual stream read through "
                    "the base's unembedding. --finetuned takes an adapter or model directory, "
                    "an organism directory or a shipped organism's name. With no arguments: "
                    "the embedded gemma-3-270m base and the shipped cake_bake organism.")
    add_model_args(p, exclude=("dtype", "allow_pickle"))  # weights are read as float32
    from difflens.methods.weights.config import WeightsConfig
    from difflens.options import add_arguments

    add_arguments(p, WeightsConfig)
    add_run_dir_args(p, "weights")
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from difflens.api import run_weights
    from difflens.methods.weights.config import WeightsConfig
    from difflens.methods.weights.summary import print_summary
    from difflens.options import check_path, from_args

    config = from_args(WeightsConfig, args)
    config.validate()  # ranges and paths before anything is read
    model_sources(args)
    options = load_options(args)
    if args.out:
        check_path(args.out, "out_dir", "--out")
    summary = run_weights(config, Path(args.out) if args.out else None,
                          progress=not args.quiet, trust_remote_code=options.trust_remote_code)
    print_summary(summary)
    return 0
