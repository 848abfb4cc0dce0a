"""Configuration of sparse dictionaries (crosscoder, diff-SAE) and of their training.

Two dataclasses, one per concern: :class:`DictionaryConfig` describes the dictionary itself and
is saved with it (``config.json``); :class:`TrainConfig` describes one training run and is saved
with the trainer checkpoints.  Every field carries a comment saying what it means and why the
default is what it is.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from difflens.data.corpus import check_corpus_source
from difflens.errors import DifflensError
from difflens.models.loading import check_device
from difflens.options import LAYER, meta, option, validate

Sparsity = Literal["batchtopk", "l1"]
ComputePath = Literal["auto", "dense", "sparse"]
COMPUTE_PATHS = ("auto", "dense", "sparse")
WIDTH_PER_D = 8  # latents per activation dimension when no width is given
CACHE_DTYPES = ("float32", "bfloat16")


def check_cache_dir(value: str) -> None:
    """A cache path must at least be a directory (its manifest is checked when it opens)."""
    path = Path(value).expanduser()
    if not path.is_dir():
        why = "a file" if path.exists() else "no such directory"
        raise DifflensError(f"{path} is not an activation cache ({why}); pass the --out "
                            "directory of `difflens cache`")


def default_width(d_in: int) -> int:
    """The dictionary width when none is given: 8 × d (the low end of the usual 8-32 × d)."""
    return WIDTH_PER_D * d_in


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

    compute_path: ComputePath = "auto"
    """How BatchTopK forwards compute (the result is the same up to float rounding, the latents
    chosen identical): ``"sparse"`` touches only the ``k·B`` active entries after the dense
    encoder (fastest when ``k ≪ width``), ``"dense"`` masks the dense latents and uses dense
    matrix products (what a plain PyTorch loop does; fastest for small widths), ``"auto"``
    times both on the first training batch of each shape and keeps the faster
    (``SparseDictionary.path_choice`` records the choice and the timings)."""

    def __post_init__(self) -> None:
        if self.compute_path not in COMPUTE_PATHS:
            raise DifflensError(
                f"DictionaryConfig.compute_path must be one of {', '.join(COMPUTE_PATHS)}; got "
                f"{self.compute_path!r}"
            )
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


@dataclass
class CacheConfig:
    """What ``difflens cache`` stores; every field except ``batch_size`` is part of the cache's
    identity.  The fields are also the command's flags."""

    corpus: str = option("reference", check=check_corpus_source,
                         help="text: 'reference' (shipped), .txt/.jsonl/.parquet, hf:NAME")
    n_texts: int | None = option(None, min=1, example=1000, help="texts to read (default: all)")
    max_tokens: int = option(128, min=2, help="tokens per text, BOS included (default 128)")
    layers: list[int | float] = field(default_factory=lambda: [0.75], metadata=meta(
        flag="--layer", type=LAYER, nargs="+",
        help="layer(s): index or relative depth (default 0.75)"))
    dtype: str = option("float32", choices=CACHE_DTYPES,
                        help="storage dtype of the activations (bfloat16 halves the disk)")
    keep_bos: bool = option(False, help="also cache the BOS position (left out by default: "
                                        "outlier norms)")
    min_position: int = option(0, min=0, help="cache positions >= this only (default 0: all)")
    tokens_per_shard: int = option(1 << 15, min=1, help="rows per shard file (default 32768)")
    batch_size: int = option(16, min=1, help="texts per forward (default 16)")

    def validate(self) -> None:
        validate(self)
        if self.min_position >= self.max_tokens:
            raise DifflensError(f"min_position ({self.min_position}) must be below max_tokens "
                                f"({self.max_tokens}); lower --min-position or raise "
                                "--max-tokens")


@dataclass
class TrainRunConfig:
    """``difflens train crosscoder|diff-sae``: the flags, resolved into the dictionary, training
    and reading configs by :meth:`resolve` (the one place the derived defaults live)."""

    cache: str = option(None, required=True, check=check_cache_dir,
                        help="activation cache (difflens cache --out)")
    layer: int | float | None = option(None, type=LAYER,
                                       help="layer of the cache (needed when it holds several)")
    base: str | None = option(None, help="if given, must be the cache's base model")
    finetuned: str | None = option(None, help="if given, must be the cache's finetuned model")
    width: int | None = option(None, min=1, example=4096,
                               help=f"latents (default {WIDTH_PER_D} x d)")
    k: int = option(100, min=1, help="BatchTopK: active latents per token")
    sparsity: str = option("batchtopk", choices=("batchtopk", "l1"), help="sparsity penalty")
    l1_coef: float = option(1.0, min=0, help="L1: penalty coefficient")
    threshold_decay: float | None = option(
        None, min=0, max=1, max_open=True, example=0.999,
        help="BatchTopK: EMA decay of the inference threshold (default min(0.999, 1 - 20 / "
             "steps): it follows the last ~5%% of the run)")
    steps: int = option(10_000, min=1, help="optimiser steps")
    lr: float | None = option(None, min=0, min_open=True, example=2e-4,
                              help="Adam learning rate (default 2e-4 / sqrt(width / 16384))")
    batch_size: int = option(4096, min=1, help="tokens per step")
    warmup_steps: int | None = option(None, min=0, example=100,
                                      help="linear warm-up (default min(1000, steps / 20))")
    seed: int = option(0, help="initialisation and shuffle seed")
    compute_path: str = option(
        "auto", choices=COMPUTE_PATHS,
        help="training forward: dense or sparse matrix products, or auto (default: time both "
             "on the first batch and keep the faster; same step either way)")
    device: str = option("cpu", check=check_device, help="cpu, cuda, cuda:N")
    val_fraction: float = option(0.1, min=0, max=1, min_open=True, max_open=True,
                                 help="share of texts held out for validation (default 0.1)")
    buffer_rows: int = option(1 << 16, min=1, help="shuffle buffer in tokens (default 65536)")
    data_split: str = option(
        "stream", choices=("stream", "shards"),
        help="under torchrun: every rank reads the whole shuffled stream and keeps its share "
             "of each batch (stream: equals 1 process, resumes at any number of ranks), or "
             "reads only its own shards (shards: 1/N of the reading; resumes only with the "
             "same number of ranks); alone both are the same")
    checkpoint_every: int = option(1000, min=0, help="checkpoint every this many steps (0: "
                                                     "only at the end)")
    out: str = option(None, required=True, path="out_dir", help="output directory")
    progress: bool = option(True, flag="--quiet", help="no progress bar")

    def validate(self) -> None:
        validate(self)

    def resolve(self) -> tuple[dict[str, Any], TrainConfig, dict[str, Any]]:
        """``(dictionary fields without d_in/width-if-unset, TrainConfig, read fields)``.

        The width default (8 × d) needs the cache's d: :func:`default_width`, applied by
        ``train_on_cache`` when ``width`` is absent."""
        warmup = self.warmup_steps if self.warmup_steps is not None \
            else min(1000, self.steps // 20)
        train = TrainConfig(steps=self.steps, batch_size=self.batch_size, lr=self.lr,
                            warmup_steps=warmup, checkpoint_every=self.checkpoint_every,
                            device=self.device, progress=self.progress)
        decay = self.threshold_decay
        if decay is None:  # an EMA slower than the run would leave θ at its untrained value
            decay = min(0.999, max(0.0, 1 - 20 / self.steps))
        dictionary: dict[str, Any] = {"k": self.k, "sparsity": self.sparsity,
                                      "l1_coef": self.l1_coef, "seed": self.seed,
                                      "threshold_decay": decay,
                                      "compute_path": self.compute_path}
        if self.width is not None:
            dictionary["width"] = self.width
        read = {"val_fraction": self.val_fraction, "shuffle_seed": self.seed,
                "buffer_rows": self.buffer_rows, "data_split": self.data_split}
        return dictionary, train, read


@dataclass
class AnalyzeTarget:
    """The ``difflens analyze`` flags that say what to read and where to write."""

    cache: str | None = option(None, check=check_cache_dir,
                               help="activation cache (default: the training one)")
    layer: int | float | None = option(None, type=LAYER, help="default: the training layer")
    out: str | None = option(None, path="out_dir",
                             help="run directory (default DICTIONARY/analysis)")


@dataclass
class AnalysisConfig:
    """What ``difflens analyze`` computes (the fields with a flag are the command's)."""

    top_contexts: int = option(10, min=1, help="contexts per latent")
    window: tuple[int, int] = option((12, 4), cli=False, type=int, nargs="2",
                                     help="tokens shown before / after the activating token")
    max_latents: int = option(30, min=1, help="latents read out in detail per group "
                                              "(default 30)")
    min_scaled: int = option(10, min=0, cli=False,
                             help="if fewer ft-only latents, add the lowest-Δ_norm live ones")
    max_scaled: int = option(512, min=1, cli=False,
                             help="cap on ft-only latents that get Latent Scaling")
    seed: int = option(0, cli=False, help="seed of the random control latents")
    lens_tokens: int = option(10, min=1, cli=False, help="top logit-lens tokens per latent")
    steer_latents: int = option(3, min=0, help="latents to steer along")
    steer_alphas: tuple[float, ...] = option(
        (0.1, 0.25), nargs="+", type=float,
        help="steering strengths in units of the mean ft activation norm at the layer "
             "(default 0.1 0.25: on gemma-3-270m 0.25 is on topic, 0.5 repeats)")
    steer_prompts: int = option(2, min=1, help="chat prompts per strength")
    max_new_tokens: int = option(32, min=1, help="tokens per steered sample")
    skip: list[str] = field(default_factory=list, metadata=meta(
        nargs="*", choices=("lens", "steering"), help="readouts to skip: lens steering"))

    def identity(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "skip"}

    def validate(self) -> None:
        validate(self)


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise DifflensError(
            f"{cls.__name__} has no field(s) {', '.join(unknown)}; the file was written by a "
            "newer difflens or edited by hand: upgrade difflens or remove those keys"
        )
    return cls(**data)
