"""Sparse dictionaries for model diffing: crosscoders, diff-SAEs and Latent Scaling.

The pure tensor core: everything here works on activation tensors and knows nothing about
models.  Paired activations are ``(B, 2, d)`` with ``[:, BASE]`` the base model and ``[:, FT]``
the finetuned one.

Typical use::

    cfg = DictionaryConfig(d_in=640, width=8192, k=100)
    cc = Crosscoder(cfg)
    Trainer(cc, TrainConfig(steps=20_000, batch_size=4096), out_dir="runs/cc").fit(batches)
    cc.eval()
    tags = tag_latents(delta_norm(cc.W_dec))
    ls = latent_scaling(cc, batches, latents=(tags == LatentTag.FT_ONLY).nonzero().squeeze(1))
"""

from __future__ import annotations

from difflens.methods.dictionary.config import DictionaryConfig, TrainConfig
from difflens.methods.dictionary.crosscoder import Crosscoder, DiffSAE, load_dictionary
from difflens.methods.dictionary.dictionary import (
    BASE,
    FT,
    DictionaryOutput,
    Losses,
    SparseDictionary,
)
from difflens.methods.dictionary.latent_scaling import (
    LatentScaling,
    LatentScalingResult,
    latent_scaling,
)
from difflens.methods.dictionary.metrics import (
    EvalResult,
    Evaluation,
    LatentTag,
    dead_fraction,
    decoder_cosine,
    delta_norm,
    delta_norm_histogram,
    evaluate,
    fve,
    l0,
    tag_latents,
)
from difflens.methods.dictionary.normalize import Normalizer, NormStats, estimate_scales
from difflens.methods.dictionary.synthetic import LatentKind, SyntheticPairs, make_synthetic_pairs
from difflens.methods.dictionary.train import Trainer, TrainResult

__all__ = [
    "BASE",
    "FT",
    "Crosscoder",
    "DictionaryConfig",
    "DictionaryOutput",
    "DiffSAE",
    "EvalResult",
    "Evaluation",
    "LatentKind",
    "LatentScaling",
    "LatentScalingResult",
    "LatentTag",
    "Losses",
    "NormStats",
    "Normalizer",
    "SparseDictionary",
    "SyntheticPairs",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "dead_fraction",
    "decoder_cosine",
    "delta_norm",
    "delta_norm_histogram",
    "estimate_scales",
    "evaluate",
    "fve",
    "l0",
    "latent_scaling",
    "load_dictionary",
    "make_synthetic_pairs",
    "tag_latents",
]
