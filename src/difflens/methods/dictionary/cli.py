"""``difflens cache``, ``difflens train crosscoder|diff-sae`` and ``difflens analyze``.

Flags and handlers only: the flags are generated from the configs in :mod:`.config`; the work is
in :mod:`.runner` and :mod:`.analysis`, imported when a command runs, so building the parser
stays cheap.
"""

from __future__ import annotations

import argparse
from typing import Any

from difflens.cli_args import add_model_args, load_options, model_sources
from difflens.methods.dictionary.config import (
    AnalysisConfig,
    AnalyzeTarget,
    CacheConfig,
    TrainRunConfig,
)
from difflens.options import add_arguments, check_path, from_args

_MODEL_DTYPES = ["float32", "bfloat16", "float16"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``cache``, ``train`` and ``analyze`` on the top-level subparsers."""
    _add_cache(sub)
    _add_train(sub)
    _add_analyze(sub)


# ---- cache ----------------------------------------------------------------------------------
def _add_cache(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cache", help="cache paired base/finetuned activations (for crosscoders, diff-SAEs)",
        description="Run both models over a corpus and store their residual activations at the "
                    "chosen layers, in verified shards with metadata; an interrupted run resumes "
                    "after its last finished shard. Under torchrun each rank writes its own "
                    "range of shards and rank 0 the one manifest (resume with the same "
                    "--nproc_per_node). With no model arguments: the embedded "
                    "gemma-3-270m base and the shipped cake_bake organism.")
    add_model_args(p, exclude=("dtype",))  # --dtype below is the storage dtype
    models = next(g for g in p._action_groups if g.title == "models")
    models.add_argument("--model-dtype", default="float32", choices=_MODEL_DTYPES,
                        help="dtype the models run in (default float32)")
    add_arguments(p, CacheConfig)
    p.add_argument("--out", required=True, help="cache directory")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_run_cache)


def _run_cache(args: argparse.Namespace) -> int:
    from difflens.data.corpus import check_corpus
    from difflens.methods.dictionary.runner import build_cache
    from difflens.models.pair import ModelPair

    config = from_args(CacheConfig, args)
    config.validate()  # before minutes of model loading
    sources = model_sources(args)
    options = load_options(args, dtype=args.model_dtype)
    check_path(args.out, "out_dir", "--out")
    check_corpus(config.corpus, limit=config.n_texts)
    pair = ModelPair.load(sources.base, sources.finetuned, options)
    cache = build_cache(pair, config, args.out, progress=not args.quiet)
    size = sum(e["bytes"] for e in cache.shards) / 2**20
    print(f"cache: {cache.path} - {cache.n_rows} tokens of {cache.n_sequences} texts, layer(s) "
          f"{', '.join(map(str, cache.layers))}, {len(cache.shards)} shard(s), {size:.1f} MiB")
    return 0


# ---- train ----------------------------------------------------------------------------------
def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a crosscoder or diff-SAE on an activation cache")
    kinds = p.add_subparsers(dest="train_kind", metavar="KIND", required=True)
    for name, kind, text in (
        ("crosscoder", "crosscoder", "one dictionary over (base, ft) activation pairs"),
        ("diff-sae", "diff_sae", "a sparse autoencoder on ft - base differences"),
    ):
        q = kinds.add_parser(name, help=text, description=f"Train {text}; resumes from the last "
                             "checkpoint in --out when run again with the same arguments.")
        add_arguments(q, TrainRunConfig)
        q.set_defaults(handler=_run_train, dictionary_kind=kind)


def _run_train(args: argparse.Namespace) -> int:
    from difflens.methods.dictionary.runner import ReadConfig, train_on_cache

    run = from_args(TrainRunConfig, args)
    run.validate()
    dictionary, train, read = run.resolve()
    result = train_on_cache(args.dictionary_kind, run.cache, run.out, dictionary=dictionary,
                            train=train, read=ReadConfig(**read), layer=run.layer,
                            base=run.base, finetuned=run.finetuned)
    last = result.log[-1] if result.log else {}
    fve = ", ".join(f"{v:.3f}" for v in last.get("fve", []))
    print(f"trained {args.dictionary_kind} for {result.step} steps -> {run.out}/dictionary"
          + (f" (last batch: FVE {fve}, L0 {last['l0']:.1f}, dead {last['dead']:.3f})"
             if last else ""))
    return 0


# ---- analyze --------------------------------------------------------------------------------
def _add_analyze(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze", help="analyse a trained crosscoder / diff-SAE (Δ_norm, Latent Scaling, ...)",
        description="Per-latent Δ_norm, decoder cosine and tag; Latent Scaling of the "
                    "finetune-only latents against random shared ones; FVE, L0, dead latents; "
                    "max-activating contexts, logit lens and steering of the chosen latents. "
                    "The models default to the ones the cache was built from.")
    p.add_argument("dictionary", help="a `difflens train` --out directory (or a dictionary dir)")
    add_model_args(p)
    add_arguments(p, AnalyzeTarget)
    add_arguments(p, AnalysisConfig)
    p.add_argument("--no-models", action="store_true",
                   help="do not load the models (no logit lens, steering or decoded text)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_run_analyze)


def _run_analyze(args: argparse.Namespace) -> int:
    from pathlib import Path

    from difflens.io.artifacts import read_optional_json
    from difflens.methods.dictionary.analysis import analyze
    from difflens.methods.dictionary.cache import ActivationCache, check_cache_matches
    from difflens.methods.dictionary.runner import TRAINING_FILE
    from difflens.options import validate

    check_path(args.dictionary, "dir", "DICTIONARY")
    target = from_args(AnalyzeTarget, args)
    validate(target)
    config = from_args(AnalysisConfig, args)
    config.steer_alphas = tuple(config.steer_alphas)
    config.validate()
    sources = model_sources(args)
    options = load_options(args)
    record = read_optional_json(Path(args.dictionary) / TRAINING_FILE) or {}
    cache_dir = target.cache or record.get("cache")
    pair = None
    if not args.no_models:
        from difflens.errors import DifflensError
        from difflens.models.pair import ModelPair

        if cache_dir is None:
            raise DifflensError(f"{args.dictionary} records no activation cache; pass --cache")
        cache = ActivationCache(cache_dir)
        check_cache_matches(cache, sources.base, sources.finetuned, target.layer)
        pair = ModelPair.load(sources.base or cache.models["base"],
                              sources.finetuned or cache.models["finetuned"], options)
    elif cache_dir is not None and target.layer is not None:
        ActivationCache(cache_dir).resolve_layer(target.layer)  # a bad --layer: one line now
    device = options.device
    if device == "auto":  # models spread by device_map: run the dictionary on the first GPU
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    metrics = analyze(args.dictionary, target.out, cache=target.cache, layer=target.layer,
                      pair=pair, config=config, device=device, progress=not args.quiet)
    print(summary_text(metrics))
    return 0


def summary_text(metrics: dict[str, Any]) -> str:
    """A few lines for the terminal from ``metrics.json``."""
    fve = ", ".join(f"{k} {v:.3f}" for k, v in metrics["fve"].items())
    lines = [f"{metrics['kind']} (width {metrics['width']}, layer {metrics['layer']}) on "
             f"{metrics['n_rows']} validation tokens: FVE {fve}; L0 {metrics['l0']:.1f}; "
             f"dead {metrics['dead_fraction']:.3f}"]
    if "tags" in metrics:
        lines.append("latents: " + ", ".join(f"{k} {v}" for k, v in metrics["tags"].items()))
        for group, s in metrics.get("latent_scaling", {}).items():
            if s["n"]:
                nu_e, nu_r = s["median_nu_error"], s["median_nu_reconstruction"]
                lines.append(f"Latent Scaling {group} (n={s['n']}): median nu_error "
                             f"{_fmt(nu_e)}, nu_reconstruction {_fmt(nu_r)}")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
