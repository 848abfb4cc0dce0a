"""Configuration of sparse dictionaries (crosscoder, diff-SAE) and of their training.

Two dataclasses, one per concern: :class:`DictionaryConfig` describes the dictionary itself and
is saved with it (``config.json``); :class:`TrainConfig` describes one training run and is saved
with the trainer checkpoints.  Every field carries a comment saying what it means and why the
default is what it is.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from difflens.errors import DifflensError

Sparsity = Literal["batchtopk", "l1"]


@dataclass
class DictionaryConfig:
    """Architecture and loss of a crosscoder / diff-SAE."""

    d_in: int
    """Width ``d`` of the activations of each model (e.g. 640 for Gemma-3-270m)."""

    width: int
    """Number of latents ``F`` in the dictionary (typically 8-32 x ``d_in``)."""

    sparsity: Sparsity = "batchtopk"
    """``"batchtopk"``: keep the ``k·B`` largest scaled activations of the batch (the seed's
    recommendation: no shrinkage pressure, so no false model-specific latents).  ``"l1"``: ReLU
    latents penalised by ``l1_coef · Σ_i f_i Σ_m ‖d_i^m‖`` (the original crosscoder loss)."""

    k: int = 100
    """Average number of active latents per sample for BatchTopK (the target after annealing)."""

    l1_coef: float = 1.0
    """λ of the L1 penalty, in normalised units (activations of mean norm √d).  Only for
    ``sparsity="l1"``."""

    aux_k: int | None = None
    """Number of dead latents used per sample by the AuxK loss; ``None`` means ``d_in // 2``
    (the heuristic of Gao et al., 'Scaling and evaluating sparse autoencoders', App. B.1)."""

    aux_k_alpha: float = 1 / 32
    """Weight α of the AuxK loss (Gao et al. use 1/32).  0 disables it."""

    dead_tokens: int = 10_000_000
    """A latent that has not fired for this many training tokens counts as dead: it feeds the
    AuxK loss and the dead fraction.  10M tokens follows EleutherAI ``sparsify``."""

    threshold_decay: float = 0.999
    """Decay of the EMA that tracks the smallest kept scaled activation of each training batch.
    The EMA is the inference threshold θ used instead of batch top-k in ``eval()`` mode, so that
    a sample's latents do not depend on the other samples of its batch."""

    dec_init_norm: float = 0.1
    """Norm of every per-model decoder vector ``d_i^m`` at initialisation.  Small, as in the
    crosscoder literature (Anthropic's crosscoder note, ``crosscode``: 0.1): the initial
    reconstruction is small, and for L1 the penalty starts small.  The encoder starts as the
    transpose of the decoder.  Decoder norms are free during training (they are what Δ_norm
    measures), so no renormalisation is applied later."""

    norm_target: float | None = None
    """Mean activation norm each model is scaled to before encoding; ``None`` means ``√d_in``.
    The scale factors are estimated once and stored with the dictionary."""

    seed: int = 0
    """Seed of the parameter initialisation (a private ``torch.Generator``, so the global RNG
    is neither used nor disturbed)."""

    def __post_init__(self) -> None:
        for name in ("d_in", "width", "k", "dead_tokens"):
            if getattr(self, name) < 1:
                value = getattr(self, name)
                raise DifflensError(f"DictionaryConfig.{name} must be >= 1; got {value}")
        if self.sparsity not in ("batchtopk", "l1"):
            raise DifflensError(
                f"DictionaryConfig.sparsity must be 'batchtopk' or 'l1'; got {self.sparsity!r}"
            )
        if not 0.0 <= self.threshold_decay < 1.0:
            raise DifflensError(
                f"DictionaryConfig.threshold_decay must be in [0, 1); got {self.threshold_decay}"
            )

    @property
    def effective_aux_k(self) -> int:
        """AuxK latents per sample after resolving the ``None`` default."""
        return self.aux_k if self.aux_k is not None else max(1, self.d_in // 2)

    @property
    def effective_norm_target(self) -> float:
        """Target mean norm after resolving the ``None`` default (√d_in)."""
        return self.norm_target if self.norm_target is not None else math.sqrt(self.d_in)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (all fields are plain Python values)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DictionaryConfig:
        """Inverse of :meth:`to_dict`; unknown keys are a user error, not silently dropped."""
        return _from_dict(cls, data)


@dataclass
class TrainConfig:
    """One training run of a dictionary."""

    steps: int = 10_000
    """Number of optimiser steps; the learning-rate schedule is laid out over this many."""

    batch_size: int = 4096
    """Samples (token positions) per step.  Incoming activation chunks of any size are re-cut
    into batches of exactly this many rows."""

    lr: float | None = None
    """Adam learning rate; ``None`` means ``2e-4 / √(width / 2**14)`` (the ``sparsify`` rule:
    wider dictionaries take smaller steps)."""

    warmup_steps: int = 1000
    """Linear learning-rate warm-up from 0 over this many steps."""

    decay_start: float = 0.8
    """Fraction of ``steps`` after which the learning rate decays linearly to 0 at the end."""

    k_anneal_start: int | None = None
    """BatchTopK only: start from this larger k and anneal linearly to ``DictionaryConfig.k``
    (a large early k revives latents before the dictionary settles).  ``None``: no annealing."""

    k_anneal_steps: int = 0
    """Number of steps over which k is annealed from ``k_anneal_start`` to ``k``."""

    norm_sample_rows: int = 16_384
    """If the dictionary's normalisation scales are not fitted yet, estimate them from the first
    this many rows of the stream (those rows are still trained on).  0: leave scales at 1."""

    checkpoint_every: int = 1000
    """Write a resumable checkpoint every this many steps (and at the end); 0: only at the end.
    Needs an output directory."""

    keep_checkpoints: int = 2
    """How many most recent checkpoints to keep on disk."""

    log_every: int = 10
    """Refresh the progress bar's loss / FVE / L0 / dead fraction and the returned log every
    this many steps (each refresh synchronises with the device)."""

    device: str = "cpu"
    """``"cpu"`` or ``"cuda"`` (or any torch device string).  Batches are moved there."""

    progress: bool = True
    """Show a tqdm progress bar."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                value = getattr(self, name)
                raise DifflensError(f"TrainConfig.{name} must be >= 1; got {value}")
        if not 0.0 <= self.decay_start <= 1.0:
            raise DifflensError(
                f"TrainConfig.decay_start must be in [0, 1]; got {self.decay_start}"
            )

    def learning_rate(self, width: int) -> float:
        """The base learning rate for a dictionary of ``width`` latents."""
        return self.lr if self.lr is not None else 2e-4 / math.sqrt(width / 2**14)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`."""
        return _from_dict(cls, data)


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise DifflensError(
            f"{cls.__name__} has no field(s) {', '.join(unknown)}; the file was written by a "
            "newer difflens or edited by hand: upgrade difflens or remove those keys"
        )
    return cls(**data)
