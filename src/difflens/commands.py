"""Subcommand registration: each command's flags and handler, imported lazily when run."""

from __future__ import annotations

import argparse

from difflens.cli import add_model_args, layer_arg, load_options


def register_all(sub: argparse._SubParsersAction) -> None:
    _register_adl(sub)
    _register_mine(sub)
    _register_organism(sub)
    _register_report(sub)


def _register_mine(sub: argparse._SubParsersAction) -> None:
    try:
        from difflens.methods.mining.cli import add_parser
    except ImportError:  # pragma: no cover - mining not present in this build
        return
    add_parser(sub)


def _register_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="render the HTML report of a run directory",
                       description="Write RUN_DIR/report.html (self-contained, opens offline).")
    p.add_argument("run_dir", help="a directory written by difflens adl / mine")
    p.add_argument("--out", default=None, help="output file (default RUN_DIR/report.html)")
    p.set_defaults(handler=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from difflens.report.page import render_report

    print(render_report(args.run_dir, args.out))
    return 0


def _register_adl(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "adl", help="Activation Difference Lens (the main job)",
        description="Mean activation differences on the first k tokens of unrelated text, read "
                    "out with the logit lens. With no arguments: the embedded gemma-3-270m base "
                    "and the shipped cake_bake organism.")
    add_model_args(p)
    p.add_argument("--corpus", default="reference",
                   help="unrelated text: 'reference' (shipped), .txt/.jsonl/.parquet, hf:NAME")
    p.add_argument("--n-texts", type=int, default=None,
                   help="texts to read (default 10,000 on GPU, 2,000 on CPU)")
    p.add_argument("--k", type=int, default=5, help="first positions read per text (default 5)")
    p.add_argument("--layer", type=layer_arg, default=None,
                   help="readout layer: index or relative depth (default: per model family)")
    p.add_argument("--layers", type=layer_arg, nargs="*", default=[],
                   help="extra layers to sweep (every layer up to the deepest is read anyway)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", default=None, help="run directory (default runs/adl-<config hash>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_run_adl)


def _run_adl(args: argparse.Namespace) -> int:
    from pathlib import Path

    from difflens.methods.adl.config import ADLConfig
    from difflens.methods.adl.runner import run_adl
    from difflens.methods.adl.summary import print_summary
    from difflens.models.pair import ModelPair

    config = ADLConfig(base=args.base, finetuned=args.finetuned, corpus=args.corpus,
                       n_texts=args.n_texts, k=args.k, layer=args.layer, layers=args.layers,
                       batch_size=args.batch_size, device=args.device, dtype=args.dtype)
    from difflens.data.tokenize import check_k

    check_k(config.k)
    pair = ModelPair.load(config.base, config.finetuned, load_options(args))
    summary = run_adl(config, Path(args.out) if args.out else None, pair=pair,
                      progress=not args.quiet)
    print_summary(summary)
    return 0


def _register_organism(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("organism", help="build model organisms (finetunes with a known answer)")
    osub = p.add_subparsers(dest="organism_command", metavar="ACTION")
    try:
        from difflens.organisms.cli import add_parser
    except ImportError:  # builder not installed in this build
        return
    add_parser(osub)
