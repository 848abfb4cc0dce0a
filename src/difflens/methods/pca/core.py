"""PCA of activation differences, pure core: tensors in, tensors out (no model, no file).

δ = h_ft − h_base at one layer, one row per valid token position.  The covariance is streamed
(:class:`~difflens.stats.covariance.Covariance`) and decomposed once at the end.

**Sign rule.**  An eigenvector's sign is arbitrary.  Each component ``c`` is oriented so that
the mean difference δ̄_all (over every valid position) projects positively onto it: ``+c`` is
then the way the finetune moved the activations, and steering along ``+c`` pushes the model
further the way the finetune did.  When the mean is (numerically) orthogonal to ``c``
(``|μ·c| ≤ 1e-6·‖μ‖``, e.g. a model paired with itself), the largest-magnitude entry of ``c``
is made positive instead, so the result is still deterministic.  Readouts show both signs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from difflens.stats.covariance import Covariance

#: Below this ratio rms(δ) / rms(h_ft) the models are treated as identical (ADL's threshold
#: on ‖δ̄‖/ν_ft).
NO_DIFFERENCE_RTOL = 1e-4
#: Relative size of μ·c under which the mean does not decide a component's sign.
SIGN_RTOL = 1e-6


def valid_positions(attention: torch.Tensor) -> torch.Tensor:
    """``(N, T)`` bool: positions that count — real tokens (``attention``) past position 0.

    Position 0 holds BOS (texts are encoded with exactly one BOS first); without a BOS token it
    holds the first word, still the attention sink with atypical norms, so it is left out too.
    Padding never counts.
    """
    valid = attention.bool().clone()
    valid[:, 0] = False
    return valid


def adl_rows(attention: torch.Tensor, k: int) -> torch.Tensor:
    """``(N, T)`` bool: the positions ADL's δ̄ averages — 1..k−1 of texts with ≥ k tokens.

    ADL reads the first ``k`` tokens of each text (texts shorter than ``k`` are dropped) and
    averages δ over positions 1..k−1, BOS apart."""
    full = attention[:, :k].bool().all(dim=1)  # (N,)
    rows = torch.zeros_like(attention, dtype=torch.bool)
    rows[:, 1:k] = full[:, None]
    return rows


@dataclass
class PCAFit:
    """The decomposition of one layer's covariance.

    ``components``: ``(C, d)`` float32 unit rows, oriented (module docstring), largest variance
    first; ``eigenvalues``: ``(C,)`` float64 variances along them; ``total_variance``: trace of
    the covariance; ``mean``: ``(d,)`` float64 mean δ over valid positions; ``second_moment``:
    E‖δ‖² (uncentred); ``signs``: ``(C,)`` ±1 applied to eigh's vectors; ``count``: rows.
    """

    components: torch.Tensor
    eigenvalues: torch.Tensor
    total_variance: float
    mean: torch.Tensor
    second_moment: float
    signs: torch.Tensor
    count: int

    @property
    def explained(self) -> torch.Tensor:
        """``(C,)`` share of the total (centred) variance per component."""
        return self.eigenvalues / self.total_variance if self.total_variance > 0 else \
            torch.zeros_like(self.eigenvalues)

    @property
    def mean_share(self) -> float:
        """‖μ‖² / E‖δ‖²: how much of the uncentred second moment the mean carries (the rest
        is the covariance's trace · (n−1)/n)."""
        return float(self.mean.norm() ** 2 / self.second_moment) if self.second_moment else 0.0


def fit(cov: Covariance, n_components: int) -> PCAFit:
    """Eigendecomposition of ``cov``'s centred covariance; the top ``n_components``, oriented.

    Raises ValueError when ``n_components`` exceeds ``d`` (callers check it first, with a
    user-facing message).
    """
    if not 1 <= n_components <= cov.d:
        raise ValueError(f"n_components must be in [1, {cov.d}], got {n_components}")
    matrix = cov.covariance().cpu()
    values, vectors = torch.linalg.eigh(matrix)  # ascending
    order = torch.argsort(values, descending=True)[:n_components]
    values = values[order].clamp_min(0.0)
    comps = vectors[:, order].T.contiguous()  # (C, d) float64
    mean = cov.mean.cpu()
    comps, signs = orient(comps, mean)
    return PCAFit(comps.float(), values, float(matrix.trace().clamp_min(0.0)), mean,
                  float(cov.second_moment().trace().cpu()), signs, cov.count)


def orient(components: torch.Tensor, mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Components ``(C, d)`` with their signs fixed by the sign rule; returns ``(oriented,
    signs)`` with ``signs`` ``(C,)`` ±1."""
    comps = components.to(torch.float64)
    proj = comps @ mean.to(torch.float64)  # (C,)
    by_mean = proj.abs() > SIGN_RTOL * float(mean.norm())
    largest = comps.gather(1, comps.abs().argmax(dim=1, keepdim=True)).squeeze(1)
    signs = torch.where(by_mean, proj.sign(), largest.sign())
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return (comps * signs[:, None]).to(components.dtype), signs


def cosines(components: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """``(C,)`` cosine of each row of ``components`` ``(C, d)`` with ``vector`` ``(d,)`` (zeros
    for a zero vector)."""
    v = vector.to(torch.float64)
    norm = float(v.norm())
    if norm == 0.0:
        return torch.zeros(components.shape[0], dtype=torch.float64)
    c = components.to(torch.float64)
    return (c @ v) / (c.norm(dim=1).clamp_min(1e-30) * norm)
