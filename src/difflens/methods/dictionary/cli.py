"""``difflens cache``, ``difflens train crosscoder|diff-sae`` and ``difflens analyze``.

Flags and handlers only: the work is in :mod:`.runner` and :mod:`.analysis`, imported when a
command runs, so building the parser stays cheap.
"""

from __future__ import annotations

import argparse
from typing import Any

from difflens.cli import add_model_args, layer_arg, load_options

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
                    "after its last finished shard. With no model arguments: the embedded "
                    "gemma-3-270m base and the shipped cake_bake organism.",
        conflict_handler="resolve")  # --dtype below is the storage dtype, not the model's
    add_model_args(p)
    p.add_argument("--model-dtype", default="float32", choices=_MODEL_DTYPES,
                   help="dtype the models run in (default float32)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="storage dtype of the activations (bfloat16 halves the disk)")
    p.add_argument("--corpus", default="reference",
                   help="text: 'reference' (shipped), .txt/.jsonl/.parquet, hf:NAME")
    p.add_argument("--n-texts", type=int, default=None, help="texts to read (default: all)")
    p.add_argument("--max-tokens", type=int, default=128,
                   help="tokens per text, BOS included (default 128)")
    p.add_argument("--layer", type=layer_arg, nargs="+", default=[0.75],
                   help="layer(s): index or relative depth (default 0.75)")
    p.add_argument("--keep-bos", action="store_true",
                   help="also cache the BOS position (left out by default: outlier norms)")
    p.add_argument("--min-position", type=int, default=0,
                   help="cache positions >= this only (default 0: all)")
    p.add_argument("--tokens-per-shard", type=int, default=1 << 15,
                   help="rows per shard file (default 32768)")
    p.add_argument("--batch-size", type=int, default=16, help="texts per forward (default 16)")
    p.add_argument("--out", required=True, help="cache directory")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_run_cache)


def _run_cache(args: argparse.Namespace) -> int:
    from difflens.methods.dictionary.runner import CacheConfig, build_cache
    from difflens.models.pair import ModelPair

    config = CacheConfig(corpus=args.corpus, n_texts=args.n_texts, max_tokens=args.max_tokens,
                         layers=list(args.layer), dtype=args.dtype, keep_bos=args.keep_bos,
                         min_position=args.min_position, tokens_per_shard=args.tokens_per_shard,
                         batch_size=args.batch_size)
    config.validate()  # before minutes of model loading
    args.dtype = args.model_dtype  # load_options reads the model dtype from args.dtype
    pair = ModelPair.load(args.base, args.finetuned, load_options(args))
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
        q.add_argument("--cache", required=True, help="activation cache (difflens cache --out)")
        q.add_argument("--layer", type=layer_arg, default=None,
                       help="layer of the cache (needed when it holds several)")
        q.add_argument("--base", default=None, help="if given, must be the cache's base model")
        q.add_argument("--finetuned", default=None,
                       help="if given, must be the cache's finetuned model")
        q.add_argument("--width", type=int, default=None, help="latents (default 8 x d)")
        q.add_argument("--k", type=int, default=100, help="BatchTopK: active latents per token")
        q.add_argument("--sparsity", choices=["batchtopk", "l1"], default="batchtopk")
        q.add_argument("--l1-coef", type=float, default=1.0, help="L1: penalty coefficient")
        q.add_argument("--threshold-decay", type=float, default=None,
                       help="BatchTopK: EMA decay of the inference threshold (default "
                            "min(0.999, 1 - 20 / steps): it follows the last ~5%% of the run)")
        q.add_argument("--steps", type=int, default=10_000)
        q.add_argument("--lr", type=float, default=None,
                       help="Adam learning rate (default 2e-4 / sqrt(width / 16384))")
        q.add_argument("--batch-size", type=int, default=4096, help="tokens per step")
        q.add_argument("--warmup-steps", type=int, default=None,
                       help="linear warm-up (default min(1000, steps / 20))")
        q.add_argument("--seed", type=int, default=0, help="initialisation and shuffle seed")
        q.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
        q.add_argument("--val-fraction", type=float, default=0.1,
                       help="share of texts held out for validation (default 0.1)")
        q.add_argument("--buffer-rows", type=int, default=1 << 16,
                       help="shuffle buffer in tokens (default 65536)")
        q.add_argument("--checkpoint-every", type=int, default=1000)
        q.add_argument("--out", required=True, help="output directory")
        q.add_argument("--quiet", action="store_true", help="no progress bar")
        q.set_defaults(handler=_run_train, dictionary_kind=kind)


def _run_train(args: argparse.Namespace) -> int:
    from difflens.methods.dictionary.config import TrainConfig
    from difflens.methods.dictionary.runner import ReadConfig, train_on_cache

    warmup = args.warmup_steps if args.warmup_steps is not None else min(1000, args.steps // 20)
    train = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                        warmup_steps=warmup, checkpoint_every=args.checkpoint_every,
                        device=args.device, progress=not args.quiet)
    decay = args.threshold_decay
    if decay is None:  # an EMA slower than the run would leave θ at its untrained value
        decay = min(0.999, max(0.0, 1 - 20 / args.steps))
    dictionary: dict[str, Any] = {"k": args.k, "sparsity": args.sparsity,
                                  "l1_coef": args.l1_coef, "seed": args.seed,
                                  "threshold_decay": decay}
    if args.width is not None:
        dictionary["width"] = args.width
    read = ReadConfig(val_fraction=args.val_fraction, shuffle_seed=args.seed,
                      buffer_rows=args.buffer_rows)
    result = train_on_cache(args.dictionary_kind, args.cache, args.out, dictionary=dictionary,
                            train=train, read=read, layer=args.layer, base=args.base,
                            finetuned=args.finetuned)
    last = result.log[-1] if result.log else {}
    fve = ", ".join(f"{v:.3f}" for v in last.get("fve", []))
    print(f"trained {args.dictionary_kind} for {result.step} steps -> {args.out}/dictionary"
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
    p.add_argument("--cache", default=None, help="activation cache (default: the training one)")
    p.add_argument("--layer", type=layer_arg, default=None, help="default: the training layer")
    p.add_argument("--top-contexts", type=int, default=10, help="contexts per latent")
    p.add_argument("--max-latents", type=int, default=30,
                   help="latents read out in detail per group (default 30)")
    p.add_argument("--steer-latents", type=int, default=3, help="latents to steer along")
    p.add_argument("--steer-alphas", type=float, nargs="+", default=[0.1, 0.25],
                   help="steering strengths in units of the mean ft activation norm at the layer "
                        "(default 0.1 0.25: on gemma-3-270m 0.25 is on topic, 0.5 repeats)")
    p.add_argument("--steer-prompts", type=int, default=2, help="chat prompts per strength")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--skip", nargs="*", default=[], choices=["lens", "steering"])
    p.add_argument("--no-models", action="store_true",
                   help="do not load the models (no logit lens, steering or decoded text)")
    p.add_argument("--out", default=None, help="run directory (default DICTIONARY/analysis)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_run_analyze)


def _run_analyze(args: argparse.Namespace) -> int:
    from pathlib import Path

    from difflens.io.artifacts import read_json
    from difflens.methods.dictionary.analysis import AnalysisConfig, analyze
    from difflens.methods.dictionary.cache import ActivationCache, check_cache_matches
    from difflens.methods.dictionary.runner import TRAINING_FILE

    config = AnalysisConfig(top_contexts=args.top_contexts, max_latents=args.max_latents,
                            steer_latents=args.steer_latents,
                            steer_alphas=tuple(args.steer_alphas),
                            steer_prompts=args.steer_prompts,
                            max_new_tokens=args.max_new_tokens, skip=list(args.skip))
    pair = None
    if not args.no_models:
        from difflens.errors import DifflensError
        from difflens.models.pair import ModelPair

        record = Path(args.dictionary) / TRAINING_FILE
        cache_dir = args.cache or (read_json(record).get("cache") if record.is_file() else None)
        if cache_dir is None:
            raise DifflensError(f"{args.dictionary} records no activation cache; pass --cache")
        cache = ActivationCache(cache_dir)
        check_cache_matches(cache, args.base, args.finetuned)
        pair = ModelPair.load(args.base or cache.models["base"],
                              args.finetuned or cache.models["finetuned"], load_options(args))
    device = args.device
    if device == "auto":  # models spread by device_map: run the dictionary on the first GPU
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    metrics = analyze(args.dictionary, args.out, cache=args.cache, layer=args.layer, pair=pair,
                      config=config, device=device, progress=not args.quiet)
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
