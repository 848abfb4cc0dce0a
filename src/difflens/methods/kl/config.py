"""Per-token KL configuration: one dataclass, one comment per field."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from difflens import pair_options
from difflens.options import LAYER, meta, option

DIVERGENCES = ("forward", "reverse", "symmetric")
DTYPES = pair_options.MODEL_DTYPES

# Texts read when ``n_texts`` is not given.  On a GPU: Diff Mining's 8,192 texts × 64 tokens.
# On a CPU every position costs two decoder passes and two sweeps of the 262k-row head per
# model (the second for the exact fingerprint): 6.9 positions/s for gemma-3-270m on 2 busy
# cores (benchmarks/kl.py).  64 texts × 64 tokens is ~4,000 positions, about 10 minutes; the
# shipped organism's fingerprint already reads 12 of 20 domain words from 248 positions.
GPU_DEFAULT_TEXTS = 8192
CPU_DEFAULT_TEXTS = 64
GPU_BATCH_SIZE = 32
CPU_BATCH_SIZE = 8
MAX_TOP_CONTEXTS = 10_000  # the stores hold N windows of ids and values: keep them small


@dataclass
class KLConfig(pair_options.RunConfig):
    """Everything that determines a per-token KL run's results (hashed to name its run dir).

    The fields are also the ``difflens kl`` flags (:mod:`difflens.options`)."""

    base: str | None = pair_options.base_model()
    finetuned: str | None = pair_options.finetuned_model()
    corpus: str = pair_options.corpus(
        "text read by both models", "'reference' (shipped), .txt/.jsonl (text or chat "
        "'messages' records)/.parquet, hf:NAME")
    n_texts: int | None = option(None, min=1, example=64,
                                 help="texts to read (default 8,192 on GPU, 64 on CPU)")
    max_tokens: int = option(64, min=1, help="tokens per text, BOS included (default 64)")
    divergence: str = option(
        "forward", choices=DIVERGENCES,
        help="what ranks positions: KL(p_ft‖p_base) (forward, default), KL(p_base‖p_ft) "
             "(reverse) or their mean (symmetric); all three are reported")
    layers: list[float | int] = field(default_factory=list, metadata=meta(
        type=LAYER, nargs="+",
        help="layers whose ‖h_ft − h_base‖ is measured: indices or relative depths (default: "
             "the readout layer chosen as ADL does, and the last layer)"))
    keep_bos: bool = option(False, help="count the BOS position too (its context is the same "
                                        "in every text, so it is left out by default)")
    mask_special: bool = option(
        False, help="ignore positions whose token is special (chat-template turn markers, EOS)")
    top_contexts: int = option(20, min=1, max=MAX_TOP_CONTEXTS,
                               help="highest-KL / highest-norm positions kept (default 20)")
    before: int = option(24, min=0, max=512, cli=False, help="context tokens kept before a peak")
    after: int = option(6, min=0, max=512, cli=False, help="context tokens kept after a peak")
    fingerprint: bool = option(
        True, flag="--no-fingerprint",
        help="skip the token fingerprint (saves the second sweep over the vocabulary)")
    fingerprint_rows: int = option(100, min=1, cli=False,
                                   help="fingerprint rows kept per sign in summary.json")
    readout_k: int = option(5, min=2, cli=False,
                            help="first tokens per text read to choose the readout layer")
    batch_size: int | None = option(None, min=1, example=8,
                                    help="texts per forward (default 32 on GPU, 8 on CPU)")
    device: str = pair_options.device()
    dtype: str = pair_options.model_dtype()


def resolve_defaults(config: KLConfig, gpu: bool) -> KLConfig:
    """``config`` with the device-dependent sizes (``None`` fields) filled in."""
    return replace(config,
                   n_texts=config.n_texts or (GPU_DEFAULT_TEXTS if gpu else CPU_DEFAULT_TEXTS),
                   batch_size=config.batch_size or (GPU_BATCH_SIZE if gpu else CPU_BATCH_SIZE))
