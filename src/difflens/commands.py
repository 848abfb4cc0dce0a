"""Subcommand registration: each command's flags and handler, imported lazily when run."""

from __future__ import annotations

import argparse

from difflens.cli import add_model_args, layer_arg, load_options


def add_llm_args(p: argparse.ArgumentParser) -> None:
    """Grader endpoint flags (any OpenAI-compatible server); offline graders without them."""
    import os

    g = p.add_argument_group("graders (default: offline, no key needed)")
    g.add_argument("--llm-base-url", default=os.environ.get("DIFFLENS_LLM_BASE_URL"),
                   help="OpenAI-compatible endpoint, e.g. https://api.openai.com/v1 or "
                        "http://localhost:8000/v1 (env DIFFLENS_LLM_BASE_URL)")
    g.add_argument("--llm-model", default=os.environ.get("DIFFLENS_LLM_MODEL"),
                   help="grader model name (env DIFFLENS_LLM_MODEL)")
    g.add_argument("--llm-api-key-env", default=os.environ.get("DIFFLENS_LLM_API_KEY_ENV",
                                                               "OPENAI_API_KEY"),
                   help="NAME of the environment variable holding the API key")
    g.add_argument("--offline", action="store_true",
                   help="use the offline graders even when an endpoint is configured")


def llm_fields(args: argparse.Namespace) -> dict:
    if args.offline or not args.llm_base_url:
        return {}
    return {"llm_base_url": args.llm_base_url, "llm_model": args.llm_model,
            "llm_api_key_env": args.llm_api_key_env}


def register_all(sub: argparse._SubParsersAction) -> None:
    _register_adl(sub)
    _register_mine(sub)
    _register_organism(sub)
    _register_report(sub)
    _register_eval(sub)
    from difflens.methods.dictionary.cli import add_parsers as add_dictionary_parsers

    add_dictionary_parsers(sub)


def _register_eval(sub: argparse._SubParsersAction) -> None:
    from difflens.evaluation.cli import add_parser

    add_parser(sub)


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
                   help="readout layer: index or relative depth (default: chosen from the "
                        "data, where ‖δ̄‖/ν_ft peaks below the last layer)")
    p.add_argument("--layers", type=layer_arg, nargs="*", default=[],
                   help="layers to check are in range (every layer is read anyway)")
    p.add_argument("--batch-size", type=int, default=256, help="texts per forward")
    p.add_argument("--ft-docs", default=None,
                   help="finetune documents for similarity / causal / relevance baseline "
                        "(default: the organism's documents.jsonl)")
    p.add_argument("--description", default=None,
                   help="what the finetune is about, for token relevance (default: the card's)")
    p.add_argument("--final-prompts", type=int, default=20,
                   help="neutral chat prompts for steered / unsteered samples (default 20)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="tokens per generated sample (default 32 on CPU, 64 on GPU)")
    p.add_argument("--causal-texts", type=int, default=None,
                   help="texts per dataset in the causal test (default 16 on CPU, 128 on GPU)")
    p.add_argument("--causal-tokens", type=int, default=None,
                   help="tokens per text in the causal test (default 32 on CPU, 64 on GPU)")
    p.add_argument("--n-random", type=int, default=16,
                   help="random baselines of each kind in the causal test (default 16)")
    p.add_argument("--skip", nargs="*", default=[],
                   help="stages to skip: patchscope steering relevance similarity causal report")
    add_llm_args(p)
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
                       batch_size=args.batch_size, device=args.device, dtype=args.dtype,
                       ft_docs=args.ft_docs, description=args.description,
                       final_prompts=args.final_prompts, max_new_tokens=args.max_new_tokens,
                       causal_texts=args.causal_texts, causal_tokens=args.causal_tokens,
                       n_random=args.n_random, skip=args.skip,
                       **llm_fields(args))
    from difflens.data.tokenize import check_k

    check_k(config.k)
    pair = ModelPair.load(config.base, config.finetuned, load_options(args))
    summary = run_adl(config, Path(args.out) if args.out else None, pair=pair,
                      progress=not args.quiet)
    print_summary(summary)
    return 0


def _register_organism(sub: argparse._SubParsersAction) -> None:
    from difflens.organisms.cli import add_parser

    add_parser(sub)
