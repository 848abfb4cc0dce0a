"""Closed-form Latent Scaling: how much of a crosscoder latent is present in each model.

For a latent ``j`` with activation ``f_j(x_n)`` and a direction ``d_j``, Latent Scaling fits one
scalar per model and target, ``β = argmin_β Σ_n ‖β f_j(x_n) d_j − y_n‖²``, whose solution is::

    β_j = d_jᵀ (Σ_n f_j(x_n) y_n) / (‖d_j‖² Σ_n f_j(x_n)²)

Only samples where the latent fires contribute.  Per model ``m`` ∈ {base, ft} the targets are:

* ``error``: ``y = a^m − (â^m − f_j d_j^m)``, model m's activation minus the crosscoder's
  reconstruction *without latent j* - i.e. the reconstruction error with latent j's own
  contribution to model m (decoder ``d_j^m``) added back;
* ``reconstruction``: ``y = â^m`` (the full crosscoder reconstruction of model m);
* ``activation``: ``y = a^m`` (the raw activation).

The direction ``d_j`` is the same for both models: by default the **ft** decoder vector
``d_j^ft`` (``direction_model=FT``), as in the paper - for a latent the crosscoder calls
ft-only, ``d_j^base ≈ 0``, so only the ft direction can measure whether the concept is present
in the base model.  Ratios::

    ν^ε = β^error_base / β^error_ft      high: complete shrinkage (the base model has the
                                          concept, the L1 loss shrank d_j^base to zero)
    ν^r = β^recon_base / β^recon_ft      high: latent decoupling (other latents reconstruct the
                                          concept in the base model)

ν ≈ 0 for both means truly finetune-specific.

Units: the fit runs in the dictionary's normalised space (raw inputs scaled by the stored
factors ``s_m``), where the decoder vectors and Δ_norm live; there a latent equally present in
both raw models gets ν = s_base/s_ft, not 1.  ``raw_units=True`` reports β in raw units instead
(``β^m · s_dir / s_m``, ``dir`` the direction model), where that latent gets ν = 1 and a latent
present at 0.3x in the base model gets ν = 0.3.  Either way ν ≈ 0 keeps its meaning.

Streaming: per batch only the projections ``y_n · d_j`` (``(B, J)``) are formed; nothing of size
``N × J × d`` exists.  Sums are float64; accumulators of several processes can be merged.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import Tensor

from difflens.errors import DifflensError
from difflens.methods.dictionary.dictionary import BASE, FT, SparseDictionary

TARGETS = ("error", "reconstruction", "activation")


class LatentScalingResult(NamedTuple):
    """β and ν for a set of latents; ``β`` rows are indexed by model (``BASE``, ``FT``)."""

    latents: Tensor
    """``(J,)`` latent indices."""
    beta_error: Tensor
    """``(2, J)`` β for the error target (see module doc)."""
    beta_reconstruction: Tensor
    """``(2, J)`` β for the reconstruction target."""
    beta_activation: Tensor
    """``(2, J)`` β for the raw-activation target."""
    nu_error: Tensor
    """``(J,)`` ν^ε = β^error_base / β^error_ft."""
    nu_reconstruction: Tensor
    """``(J,)`` ν^r = β^reconstruction_base / β^reconstruction_ft."""
    n_active: Tensor
    """``(J,)`` number of samples on which the latent fired (β is NaN where 0)."""


@contextmanager
def _eval_mode(module: torch.nn.Module):
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


class LatentScaling:
    """One-pass accumulator of the closed-form β for chosen latents of a crosscoder.

    ``latents``: indices ``(J,)`` (``None``: all).  ``direction_model``: whose decoder vector is
    the fitted direction (default ``FT``).  ``raw_units``: report β in raw activation units
    (see the module doc).  The crosscoder runs in ``eval()`` mode (inference
    threshold) during :meth:`update`; its previous mode is restored.
    """

    def __init__(
        self, crosscoder: SparseDictionary, latents: Tensor | list[int] | None = None, *,
        direction_model: int = FT, raw_units: bool = False,
    ) -> None:
        if crosscoder.n_models != 2:
            raise DifflensError(
                f"Latent Scaling compares two models; this dictionary has {crosscoder.n_models} "
                "input stream(s): use a (base, ft) crosscoder"
            )
        width = crosscoder.config.width
        idx = torch.arange(width) if latents is None else torch.as_tensor(latents).long().cpu()
        if idx.ndim != 1 or (idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= width)):
            raise DifflensError(f"latent indices must be a 1-d list within [0, {width})")
        self.crosscoder = crosscoder
        self.latents = idx
        self.direction_model = direction_model
        self.raw_units = raw_units
        n = idx.numel()
        self.numerator = torch.zeros(2, len(TARGETS), n, dtype=torch.float64)  # Σ f_j (y·d_j)
        self.f_sq = torch.zeros(n, dtype=torch.float64)  # Σ f_j²
        self.n_active = torch.zeros(n, dtype=torch.int64)

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Add a batch of raw paired activations ``(B, 2, d)``."""
        cc = self.crosscoder
        xn = cc.normalizer.normalize(cc.prepare_input(x))
        with _eval_mode(cc):
            out = cc.forward_normalized(xn)
        idx = self.latents.to(xn.device)
        f = out.latents[:, idx].double()  # (B, J)
        xn, recon = xn.double(), out.reconstruction.double()  # (B, 2, d)
        w_dec = cc.W_dec.detach()[idx].double()  # (J, M, d)
        direction = w_dec[:, self.direction_model]  # (J, d)
        for m in (BASE, FT):
            proj_x = xn[:, m] @ direction.T  # (B, J) = a^m · d_j
            proj_r = recon[:, m] @ direction.T  # (B, J) = â^m · d_j
            own = (w_dec[:, m] * direction).sum(-1)  # (J,) = d_j^m · d_j
            proj_e = proj_x - proj_r + f * own  # (a^m − â^m + f_j d_j^m) · d_j
            for t, proj in enumerate((proj_e, proj_r, proj_x)):
                self.numerator[m, t] += (f * proj).sum(0).cpu()
        self.f_sq += f.pow(2).sum(0).cpu()
        self.n_active += (f > 0).sum(0).cpu()

    def merge(self, other: LatentScaling) -> LatentScaling:
        """Fold another accumulator over the same latents into this one; returns self."""
        if not torch.equal(other.latents, self.latents):
            raise DifflensError("cannot merge Latent Scaling accumulators over different latents")
        self.numerator += other.numerator
        self.f_sq += other.f_sq
        self.n_active += other.n_active
        return self

    def result(self) -> LatentScalingResult:
        """β per model and target, and the ratios ν^ε, ν^r."""
        w_dec = self.crosscoder.W_dec.detach()[self.latents.to(self.crosscoder.W_dec.device)]
        direction = w_dec[:, self.direction_model].double().cpu()
        denom = direction.pow(2).sum(-1) * self.f_sq  # ‖d_j‖² Σ f_j²
        denom = torch.where(denom > 0, denom, torch.full_like(denom, float("nan")))
        beta = self.numerator / denom  # (2, 3, J)
        if self.raw_units:
            scale = self.crosscoder.normalizer.scale.detach().double().cpu()
            beta = beta * (scale[self.direction_model] / scale)[:, None, None]
        return LatentScalingResult(
            latents=self.latents.clone(),
            beta_error=beta[:, 0],
            beta_reconstruction=beta[:, 1],
            beta_activation=beta[:, 2],
            nu_error=beta[BASE, 0] / beta[FT, 0],
            nu_reconstruction=beta[BASE, 1] / beta[FT, 1],
            n_active=self.n_active.clone(),
        )


def latent_scaling(
    crosscoder: SparseDictionary, batches: Iterable[Tensor],
    latents: Tensor | list[int] | None = None, *, direction_model: int = FT,
    raw_units: bool = False,
) -> LatentScalingResult:
    """Latent Scaling of ``latents`` in one streaming pass over raw ``(B, 2, d)`` batches."""
    acc = LatentScaling(crosscoder, latents, direction_model=direction_model, raw_units=raw_units)
    for x in batches:
        acc.update(x)
    return acc.result()
