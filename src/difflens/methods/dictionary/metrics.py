"""Quality and model-specificity metrics of a trained dictionary.

* reconstruction: fraction of variance explained (FVE) per model, L0, dead-latent fraction
  (one-batch functions, and :class:`Evaluation` which streams them over many batches);
* model specificity of crosscoder latents from the decoder: the relative norm difference
  ``Δ_norm`` with its tags, and the cosine between the base and ft decoder vectors.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum
from typing import NamedTuple

import torch
from torch import Tensor

from difflens.methods.dictionary.dictionary import BASE, FT, SparseDictionary


def fve(x: Tensor, recon: Tensor) -> Tensor:
    """Fraction of variance explained per model: ``1 − Σ‖a−â‖² / Σ‖a−ā‖²``.

    ``x``, ``recon``: ``(B, M, d)`` (or ``(B, d)`` for one stream, giving shape ``(1,)``).
    Returns ``(M,)``.  ā is the batch mean, so a constant reconstruction at the mean scores 0.
    """
    if x.shape != recon.shape:
        raise ValueError(f"fve: shapes differ: {tuple(x.shape)} vs {tuple(recon.shape)}")
    if x.ndim == 2:
        x, recon = x.unsqueeze(1), recon.unsqueeze(1)
    x, recon = x.detach().double(), recon.detach().double()
    err = (x - recon).pow(2).sum(dim=(0, 2))
    var = (x - x.mean(0)).pow(2).sum(dim=(0, 2))
    return (1 - err / var).float()


def l0(latents: Tensor) -> float:
    """Mean number of active latents per sample; ``latents``: ``(B, F)``."""
    return float((latents != 0).sum(-1).float().mean())


def dead_fraction(latents: Tensor) -> float:
    """Fraction of latents that never fire in ``latents`` ``(B, F)``.

    For the training-time notion (silent for ``dead_tokens`` tokens) use
    ``dictionary.dead_mask().float().mean()``.
    """
    return float((latents != 0).any(0).logical_not().float().mean())


class EvalResult(NamedTuple):
    """Streaming evaluation over a data set."""

    fve: Tensor
    """``(M,)`` fraction of variance explained per model (pooled over all samples)."""
    l0: float
    """Mean active latents per sample."""
    dead_fraction: float
    """Fraction of latents that never fired on the evaluated data."""
    n_samples: int


class Evaluation:
    """Accumulate FVE / L0 / dead fraction of a dictionary over batches (O(M·d + F) memory).

    Runs the dictionary in ``eval()`` mode (inference threshold) without gradients and restores
    its previous mode.
    """

    def __init__(self, dictionary: SparseDictionary) -> None:
        self.dictionary = dictionary
        m, d = dictionary.n_models, dictionary.config.d_in
        self.err = torch.zeros(m, dtype=torch.float64)
        self.sum = torch.zeros(m, d, dtype=torch.float64)
        self.sq = torch.zeros(m, dtype=torch.float64)
        self.active = 0
        self.fired = torch.zeros(dictionary.config.width, dtype=torch.bool)
        self.n = 0

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Add a batch of raw activations (the dictionary's input shape)."""
        was_training = self.dictionary.training
        self.dictionary.eval()
        try:
            out = self.dictionary(x)
        finally:
            self.dictionary.train(was_training)
        xm = self.dictionary.prepare_input(x).double().cpu()
        recon = out.reconstruction.double().cpu().reshape(xm.shape)
        self.err += (xm - recon).pow(2).sum(dim=(0, 2))
        self.sum += xm.sum(0)
        self.sq += xm.pow(2).sum(dim=(0, 2))
        nz = out.latents != 0
        self.active += int(nz.sum())
        self.fired |= nz.any(0).cpu()
        self.n += x.shape[0]

    def result(self) -> EvalResult:
        var = self.sq - self.sum.pow(2).sum(-1) / max(self.n, 1)
        return EvalResult(
            fve=(1 - self.err / var).float(),
            l0=self.active / max(self.n, 1),
            dead_fraction=float((~self.fired).float().mean()),
            n_samples=self.n,
        )


def evaluate(dictionary: SparseDictionary, batches: Iterable[Tensor]) -> EvalResult:
    """One pass of :class:`Evaluation` over ``batches``."""
    ev = Evaluation(dictionary)
    for x in batches:
        ev.update(x)
    return ev.result()


class LatentTag(IntEnum):
    """Model specificity of a crosscoder latent, from Δ_norm."""

    FT_ONLY = 0
    """Δ_norm < 0.1: the base decoder vector is (almost) zero."""
    BASE_ONLY = 1
    """Δ_norm > 0.9: the ft decoder vector is (almost) zero."""
    SHARED = 2
    """|Δ_norm − 0.5| < 0.1: similar norms in both models."""
    OTHER = 3


def delta_norm(w_dec: Tensor, base: int = BASE, ft: int = FT) -> Tensor:
    """Relative decoder-norm difference per latent, ``(F,)`` in [0, 1].

    ``Δ = ½ ((‖d^base‖ − ‖d^ft‖) / max(‖d^base‖, ‖d^ft‖) + 1)``: 0 = ft-only, 1 = base-only,
    0.5 = equal norms.  ``w_dec``: ``(F, M, d)`` (``crosscoder.W_dec``).  A latent with both
    norms 0 gets 0.5.
    """
    norms = w_dec.detach().norm(dim=-1)
    nb, nf = norms[:, base], norms[:, ft]
    return 0.5 * ((nb - nf) / torch.maximum(nb, nf).clamp_min(1e-12) + 1)


def tag_latents(delta: Tensor) -> Tensor:
    """``(F,)`` int64 :class:`LatentTag` codes for Δ_norm values ``delta`` ``(F,)``."""
    tags = torch.full_like(delta, int(LatentTag.OTHER), dtype=torch.int64)
    tags[(delta - 0.5).abs() < 0.1] = int(LatentTag.SHARED)
    tags[delta < 0.1] = int(LatentTag.FT_ONLY)
    tags[delta > 0.9] = int(LatentTag.BASE_ONLY)
    return tags


def decoder_cosine(w_dec: Tensor, base: int = BASE, ft: int = FT) -> Tensor:
    """``(F,)`` cosine between each latent's base and ft decoder vectors (0 if one is zero)."""
    w = w_dec.detach()
    return torch.nn.functional.cosine_similarity(w[:, base], w[:, ft], dim=-1, eps=1e-12)


def delta_norm_histogram(delta: Tensor, bins: int = 20) -> tuple[Tensor, Tensor]:
    """Counts ``(bins,)`` and edges ``(bins + 1,)`` of Δ_norm over [0, 1]."""
    counts = torch.histc(delta.float(), bins=bins, min=0.0, max=1.0)
    return counts, torch.linspace(0.0, 1.0, bins + 1)
