"""Diff Mining configuration: one dataclass, one comment per field."""

from __future__ import annotations

from dataclasses import dataclass, replace

from difflens import pair_options
from difflens.options import LAYER, option

LENSES = ("raw", "logit-lens")
NMF_VALUES = ("relu", "binary")
DTYPES = pair_options.MODEL_DTYPES

# Texts read when ``n_texts`` is not given.  On a GPU: the seed paper's 8,192 texts × 64 tokens.
# On a CPU every position costs two decoder passes plus a 262k-row head matmul (~30 positions/s
# for gemma-3-270m on 2 busy cores; 512 texts took 29 min), so the default is 32× smaller:
# 16,384 positions, still hundreds of counts for every top token (the shipped organism shows
# 16/20 domain tokens from 512 positions).  Measurements in docs/mining.md.
GPU_DEFAULT_TEXTS = 8192
CPU_DEFAULT_TEXTS = 256
# Texts per forward pass.  On CPU a batch of 8 × 64 positions × 262k logits is 0.5 GB per
# tensor; larger batches only add memory, not speed.
GPU_BATCH_SIZE = 32
CPU_BATCH_SIZE = 8
# Depth read by the logit lens when no layer is given: the last quarter of the network is where
# logit-lens readouts become interpretable on the models measured (DESIGN.md §3).
DEFAULT_LENS_DEPTH = 0.75


@dataclass
class MiningConfig(pair_options.RunConfig):
    """Everything that determines a Diff Mining run's results (hashed to name its run dir).

    The fields are also the ``difflens mine`` flags (:mod:`difflens.options`)."""

    base: str | None = pair_options.base_model()
    finetuned: str | None = pair_options.finetuned_model()
    corpus: str = pair_options.corpus("reference text")
    n_texts: int | None = option(None, min=1, example=256,
                                 help="texts to read (default 8,192 on GPU, 256 on CPU)")
    max_tokens: int = option(64, min=1, help="tokens per text (default 64)")  # BOS included
    top_k: int = option(100, min=1, help="top entries of Δ counted per position (default 100)")
    lens: str = option("raw", choices=LENSES,
                       help="raw final logits (default) or the logit lens of --layer")
    layer: float | int | None = option(
        None, type=LAYER, help="logit-lens layer: index or relative depth (default 0.75)")
    mask_bos: bool = option(False, help="ignore positions whose token is BOS")
    mask_special: bool = option(
        False, help="ignore positions whose token is special (chat-template turns, ...)")
    topics: int = option(3, min=0, help="NMF topics; 0 skips NMF (default 3)")
    nmf_values: str = option("relu", choices=NMF_VALUES,
                             help="NMF matrix entries: ReLU(Δ) (default) or 1")
    nmf_orthogonal: float = option(
        0.0, min=0, metavar="LAMBDA", example=0.1,
        help="orthogonality penalty pushing NMF topics apart (default 0: plain NMF)")
    nmf_positions: int = option(65_536, min=1, cli=False,
                                help="positions kept (hash sample) for NMF and examples")
    normalize: bool = option(False, help="merge case/space variants; drop punctuation and "
                                         "special tokens")
    top: int = option(100, min=1, cli=False, help="tokens kept per ordering in orderings.json")
    n_examples: int = option(3, min=0, cli=False, help="example contexts per top token")
    batch_size: int | None = option(None, min=1, example=8,
                                    help="texts per forward (default 32 on GPU, 8 on CPU)")
    device: str = pair_options.device()
    dtype: str = pair_options.model_dtype()
    seed: int = option(0, cli=False, help="NMF initialisation")


def resolve_defaults(config: MiningConfig, gpu: bool) -> MiningConfig:
    """``config`` with the device-dependent sizes (``None`` fields) filled in."""
    return replace(config,
                   n_texts=config.n_texts or (GPU_DEFAULT_TEXTS if gpu else CPU_DEFAULT_TEXTS),
                   batch_size=config.batch_size or (GPU_BATCH_SIZE if gpu else CPU_BATCH_SIZE))
