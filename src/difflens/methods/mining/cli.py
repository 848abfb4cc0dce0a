"""``difflens mine``: flags and handler (registered by :func:`add_parser`)."""

from __future__ import annotations

import argparse

from difflens.cli import add_model_args, layer_arg, load_options


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``mine`` subcommand on the top-level subparsers."""
    p = sub.add_parser(
        "mine", help="Diff Mining: tokens the finetune promotes/suppresses (logit differences)",
        description="Compare the two models' next-token logits on every position of a reference "
                    "corpus; count which tokens are most promoted (Top-K occurrence) and split "
                    "them into NMF topics. With no arguments: the embedded gemma-3-270m base and "
                    "the shipped cake_bake organism.")
    add_model_args(p)
    p.add_argument("--corpus", default="reference",
                   help="reference text: 'reference' (shipped), .txt/.jsonl/.parquet, hf:NAME")
    p.add_argument("--n-texts", type=int, default=None,
                   help="texts to read (default 8,192 on GPU, 256 on CPU)")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per text (default 64)")
    p.add_argument("--top-k", type=int, default=100,
                   help="top entries of Δ counted per position (default 100)")
    p.add_argument("--lens", choices=["raw", "logit-lens"], default="raw",
                   help="raw final logits (default) or the logit lens of --layer")
    p.add_argument("--layer", type=layer_arg, default=None,
                   help="logit-lens layer: index or relative depth (default 0.75)")
    p.add_argument("--topics", type=int, default=3, help="NMF topics; 0 skips NMF (default 3)")
    p.add_argument("--nmf-values", choices=["relu", "binary"], default="relu",
                   help="NMF matrix entries: ReLU(Δ) (default) or 1")
    p.add_argument("--nmf-orthogonal", type=float, default=0.0, metavar="LAMBDA",
                   help="orthogonality penalty pushing NMF topics apart (default 0: plain NMF)")
    p.add_argument("--normalize", action="store_true",
                   help="merge case/space variants; drop punctuation and special tokens")
    p.add_argument("--mask-bos", action="store_true", help="ignore positions whose token is BOS")
    p.add_argument("--mask-special", action="store_true",
                   help="ignore positions whose token is special (chat-template turns, ...)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="texts per forward (default 32 on GPU, 8 on CPU)")
    p.add_argument("--description", default=None,
                   help="what the finetune is about, for token relevance (default: the "
                        "organism card's; without one relevance is not graded)")
    p.add_argument("--no-relevance", action="store_true",
                   help="do not grade the relevance of the top 20 promoted tokens")
    from difflens.commands import add_llm_args  # the grader flags every command shares

    add_llm_args(p)
    p.add_argument("--out", default=None, help="run directory (default runs/mining-<hash>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from difflens.methods.mining.config import MiningConfig
    from difflens.methods.mining.runner import run_mining
    from difflens.methods.mining.summary import print_summary
    from difflens.models.pair import ModelPair

    config = MiningConfig(
        base=args.base, finetuned=args.finetuned, corpus=args.corpus, n_texts=args.n_texts,
        max_tokens=args.max_tokens, top_k=args.top_k, lens=args.lens, layer=args.layer,
        mask_bos=args.mask_bos, mask_special=args.mask_special, topics=args.topics,
        nmf_values=args.nmf_values, nmf_orthogonal=args.nmf_orthogonal,
        normalize=args.normalize, batch_size=args.batch_size, device=args.device,
        dtype=args.dtype)
    config.validate()  # before minutes of model loading
    pair = ModelPair.load(config.base, config.finetuned, load_options(args))
    description = args.description or pair.description
    grader = None if args.no_relevance or not description else make_grader(args)
    summary = run_mining(config, Path(args.out) if args.out else None, pair=pair,
                         progress=not args.quiet, grader=grader, description=description)
    print_summary(summary)
    return 0


def make_grader(args: argparse.Namespace):
    """The LLM grader when an endpoint is configured (probed now, so a wrong URL fails before
    the run), else the offline one; None, with a warning, when the offline backend's packages
    are missing — relevance is a bonus, the mined tokens stand without it."""
    import logging

    from difflens.commands import llm_fields
    from difflens.errors import DifflensError
    from difflens.graders import make_grader as factory

    fields = llm_fields(args)
    if fields:
        from difflens.llm import LLMConfig

        model = {"model": fields["llm_model"]} if fields["llm_model"] else {}
        llm = LLMConfig(base_url=fields["llm_base_url"], api_key_env=fields["llm_api_key_env"],
                        **model)
        return factory(llm, check_reachable=True)
    try:
        return factory(None)
    except (ImportError, DifflensError) as exc:
        logging.getLogger(__name__).warning("token relevance skipped: %s", exc)
        return None
