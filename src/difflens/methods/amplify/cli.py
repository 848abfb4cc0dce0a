"""``difflens amplify``: flags and handler (registered by :func:`add_parser`)."""

from __future__ import annotations

import argparse

from difflens.cli_args import add_model_args, add_run_dir_args, load_options


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``amplify`` subcommand on the top-level subparsers."""
    p = sub.add_parser(
        "amplify", help="amplification: sample with the finetune's logit difference "
                        "amplified, or export a scaled LoRA adapter",
        description="Sample neutral chat prompts from softmax(z_ft + α(z_ft − z_base)) at "
                    "several strengths α, measure how often the finetune's domain shows up and "
                    "how coherent the samples stay, and find the largest coherent α. With "
                    "--export DIR: write the finetune's LoRA adapter scaled by --scale / "
                    "--scale-layers / --scale-modules instead (no generation). With no "
                    "arguments: the embedded gemma-3-270m base and the shipped cake_bake "
                    "organism.")
    add_model_args(p)
    from difflens.methods.amplify.config import AmplifyConfig, LoraScaleConfig
    from difflens.options import add_arguments, group

    add_arguments(p, AmplifyConfig)
    add_arguments(group(p, "LoRA weight amplification"), LoraScaleConfig)
    from difflens.cli_args import add_llm_args

    add_llm_args(p)
    add_run_dir_args(p, "amplify")
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from difflens.cli_args import llm_fields
    from difflens.errors import DifflensError
    from difflens.methods.amplify.config import AmplifyConfig, LoraScaleConfig
    from difflens.options import check_path, from_args, validate

    lora = from_args(LoraScaleConfig, args)
    validate(lora)
    if lora.export:
        return export(args, lora)
    if lora.given():
        raise DifflensError("--scale, --scale-layers and --scale-modules scale a LoRA adapter "
                            "for --export DIR; add --export DIR (or drop them)")
    # Flags first (ranges, choices, paths, device), then the models.
    config = from_args(AmplifyConfig, args, **llm_fields(args))
    config.validate()
    options = load_options(args)
    if args.out:
        check_path(args.out, "out_dir", "--out")
    from difflens.api import run_amplify
    from difflens.methods.amplify.summary import print_summary
    from difflens.models.pair import ModelPair

    pair = ModelPair.load(config.base, config.finetuned, options)
    summary = run_amplify(config, Path(args.out) if args.out else None, pair=pair,
                          progress=not args.quiet)
    print_summary(summary)
    return 0


def export(args: argparse.Namespace, lora) -> int:
    """Write the scaled adapter; the spec and the adapter are checked before anything is
    written (one line each)."""
    from difflens.cli_args import model_sources
    from difflens.methods.amplify.lora import export_scaled, parse_spec
    from difflens.models.pair import default_organism_dir

    spec = parse_spec(lora.scale, lora.scale_layers, lora.scale_modules)
    source = model_sources(args).finetuned or default_organism_dir()
    path = export_scaled(source, lora.export, spec)
    print(f"scaled LoRA adapter written to {path} (load it like any PEFT adapter: "
          f"--finetuned {path})")
    return 0
