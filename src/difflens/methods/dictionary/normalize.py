"""Per-model activation scaling, stored with the dictionary.

Base and finetuned activations can differ in overall norm (and residual norms differ wildly
between model families), so each model ``m`` gets one scalar ``s_m`` chosen so that the scaled
activations ``s_m · a^m`` have mean norm ``target`` (default √d, i.e. unit RMS per coordinate).
That makes the hyper-parameters (λ, learning rate) portable across models and layers, and keeps
one model from dominating the shared reconstruction loss.

A dictionary always receives and returns raw activations; it applies ``s_m`` on the way in and
``1/s_m`` on the way out.  Losses, latents and decoder vectors live in the scaled space.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from difflens.errors import DifflensError


class Normalizer(nn.Module):
    """One scale factor per model; buffers ``scale`` ``(M,)`` and ``fitted`` (0-d bool)."""

    def __init__(self, n_models: int) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(n_models))
        self.register_buffer("fitted", torch.tensor(False))

    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted)

    def normalize(self, x: Tensor) -> Tensor:
        """Raw ``(B, M, d)`` -> scaled ``(B, M, d)``."""
        return x * self.scale[:, None].to(x.dtype)

    def denormalize(self, x: Tensor) -> Tensor:
        """Scaled ``(B, M, d)`` -> raw ``(B, M, d)`` (inverse of :meth:`normalize`)."""
        return x / self.scale[:, None].to(x.dtype)

    @torch.no_grad()
    def set_scales(self, scale: Tensor) -> None:
        """Install scale factors ``(M,)`` (e.g. from :func:`estimate_scales`)."""
        scale = torch.as_tensor(scale, dtype=self.scale.dtype)
        if scale.shape != self.scale.shape:
            raise DifflensError(
                f"got {tuple(scale.shape)} scale factors for a dictionary over "
                f"{self.scale.numel()} model(s); pass one factor per model"
            )
        if not bool(torch.isfinite(scale).all()) or bool((scale <= 0).any()):
            raise DifflensError(
                f"normalisation scales must be finite and positive, got {scale.tolist()}; the "
                "sample was probably all zeros - estimate the scales on real activations"
            )
        self.scale.copy_(scale.to(self.scale.device))
        self.fitted.fill_(True)


class NormStats:
    """Streaming mean of the per-model activation norm: ``update`` batches, then ``scales``."""

    def __init__(self, n_models: int) -> None:
        self.norm_sum = torch.zeros(n_models, dtype=torch.float64)
        self.count = 0

    def update(self, x: Tensor) -> None:
        """Add ``x`` ``(B, M, d)``."""
        norms = x.detach().to(dtype=torch.float64).norm(dim=-1)  # (B, M)
        self.norm_sum += norms.sum(0).cpu()
        self.count += x.shape[0]

    def scales(self, target: float) -> Tensor:
        """``(M,)`` float32 factors ``target / mean‖a^m‖``."""
        if self.count == 0:
            raise DifflensError("no activations seen; pass at least one batch to estimate scales")
        mean_norm = self.norm_sum / self.count
        return (target / mean_norm).to(torch.float32)


def estimate_scales(batches: Iterable[Tensor], target: float) -> Tensor:
    """Scale factors ``(M,)`` from activation batches ``(B, M, d)`` (one pass, O(M) memory)."""
    stats: NormStats | None = None
    for x in batches:
        if stats is None:
            stats = NormStats(x.shape[1])
        stats.update(x)
    if stats is None:
        raise DifflensError("no activations seen; pass at least one batch to estimate scales")
    return stats.scales(target)
