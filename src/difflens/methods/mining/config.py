"""Diff Mining configuration: one dataclass, one comment per field."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from difflens.errors import DifflensError

LENSES = ("raw", "logit-lens")
NMF_VALUES = ("relu", "binary")

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
class MiningConfig:
    """Everything that determines a Diff Mining run's results (hashed to name its run dir)."""

    base: str | None = None  # base model source; None = embedded gemma-3-270m
    finetuned: str | None = None  # finetuned source; None = the shipped organism
    corpus: str = "reference"  # reference text (see difflens.data.corpus)
    n_texts: int | None = None  # texts read; None = 8,192 on GPU, 256 on CPU
    max_tokens: int = 64  # T: tokens per text (BOS included), padded right
    top_k: int = 100  # K: top entries of Δ_t (and of −Δ_t) counted per position
    lens: str = "raw"  # "raw" = final logits, "logit-lens" = unembed a middle layer
    layer: float | int | None = None  # logit-lens layer (index or depth); None = 0.75 depth
    mask_bos: bool = False  # drop positions whose input token is BOS
    mask_special: bool = False  # drop positions whose input token is special (chat turns, ...)
    topics: int = 3  # NMF topics; 0 skips NMF
    nmf_values: str = "relu"  # matrix entries: "relu" = ReLU(Δ) of top-K entries, "binary" = 1
    nmf_orthogonal: float = 0.0  # λ of the orthogonality-regularised refinement; 0 = plain NMF
    nmf_positions: int = 65_536  # positions kept (hash sample) for NMF and examples
    normalize: bool = False  # merge case/space variants, drop punctuation/special tokens
    top: int = 100  # tokens kept per ordering in orderings.json
    n_examples: int = 3  # example contexts per top token
    batch_size: int | None = None  # texts per forward; None = 32 on GPU, 8 on CPU
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0  # NMF initialisation

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        """One-line errors for values that cannot work, before anything is loaded or written."""
        if self.lens not in LENSES:
            raise DifflensError(f"unknown lens {self.lens!r}; use one of {', '.join(LENSES)}")
        if self.nmf_values not in NMF_VALUES:
            raise DifflensError(
                f"unknown NMF values {self.nmf_values!r}; use one of {', '.join(NMF_VALUES)}")
        for name in ("max_tokens", "top_k", "top", "nmf_positions"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                flag = name.replace("_", "-")
                raise DifflensError(f"{name} must be a positive integer, got {value!r}; "
                                    f"pass e.g. --{flag} {getattr(MiningConfig, name)}")
        for name in ("n_texts", "batch_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise DifflensError(f"{name} must be a positive integer, got {value!r}")
        if self.topics < 0 or self.n_examples < 0 or self.nmf_orthogonal < 0:
            raise DifflensError("topics, n_examples and nmf_orthogonal must not be negative")
