"""Paired (base, ft) activations generated from a known sparse dictionary, for tests and demos.

Each ground-truth latent ``i`` has a unit direction ``u_i`` (shared by both models) and a
presence per model ``(p_i^base, p_i^ft)``; a sample activates each latent independently with
probability ``active_per_sample / n_latents`` and magnitude ``c ~ U(0.5, 1.5)``, and::

    a^base = Σ_i c_i p_i^base u_i + noise,     a^ft = Σ_i c_i p_i^ft u_i + noise

Kinds of latents (:class:`LatentKind`):

* ``FT_ONLY``   presence (0, 1): introduced by the finetune;
* ``SHARED``    presence (1, 1);
* ``WEAK_BASE`` presence (``weak_scale``, 1): present in both, weakly in the base model - the
  case an L1 crosscoder wrongly calls finetune-only (complete shrinkage), and Latent Scaling
  exposes;
* ``BASE_ONLY`` presence (1, 0): forgotten by the finetune (none by default).
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

import torch
from torch import Tensor


class LatentKind(IntEnum):
    """Ground-truth kind of a planted latent."""

    FT_ONLY = 0
    SHARED = 1
    WEAK_BASE = 2
    BASE_ONLY = 3


class SyntheticPairs(NamedTuple):
    """Generated data and its ground truth (``L`` planted latents)."""

    activations: Tensor
    """``(N, 2, d)`` paired activations, ``[:, 0]`` base, ``[:, 1]`` ft."""
    directions: Tensor
    """``(L, d)`` unit direction of each planted latent."""
    presence: Tensor
    """``(L, 2)`` scale of each latent in (base, ft)."""
    kinds: Tensor
    """``(L,)`` int64 :class:`LatentKind`."""
    codes: Tensor
    """``(N, L)`` latent magnitudes ``c`` per sample (0 where inactive)."""


def make_synthetic_pairs(
    n_samples: int = 4096,
    d: int = 32,
    *,
    n_ft_only: int = 8,
    n_shared: int = 16,
    n_weak: int = 8,
    n_base_only: int = 0,
    weak_scale: float = 0.3,
    active_per_sample: float = 4.0,
    noise: float = 0.02,
    seed: int = 0,
) -> SyntheticPairs:
    """Generate :class:`SyntheticPairs` (deterministic for a ``seed``).

    Directions are orthonormal when ``L ≤ d`` (a clean recovery target) and random unit vectors
    otherwise (superposition).  ``noise`` is the std of i.i.d. Gaussian noise per coordinate.
    """
    gen = torch.Generator().manual_seed(seed)
    counts = {
        LatentKind.FT_ONLY: n_ft_only,
        LatentKind.SHARED: n_shared,
        LatentKind.WEAK_BASE: n_weak,
        LatentKind.BASE_ONLY: n_base_only,
    }
    presence_of = {
        LatentKind.FT_ONLY: (0.0, 1.0),
        LatentKind.SHARED: (1.0, 1.0),
        LatentKind.WEAK_BASE: (weak_scale, 1.0),
        LatentKind.BASE_ONLY: (1.0, 0.0),
    }
    kinds = torch.cat([torch.full((n,), int(kind)) for kind, n in counts.items()]).long()
    presence = torch.tensor([presence_of[LatentKind(int(k))] for k in kinds]).reshape(-1, 2)
    n_latents = kinds.numel()

    gauss = torch.randn(d, max(n_latents, 1), generator=gen)
    if n_latents <= d:
        directions = torch.linalg.qr(gauss).Q.T[:n_latents]  # orthonormal rows
    else:
        directions = (gauss / gauss.norm(dim=0, keepdim=True)).T

    p_active = min(1.0, active_per_sample / max(n_latents, 1))
    active = torch.rand(n_samples, n_latents, generator=gen) < p_active
    magnitude = 0.5 + torch.rand(n_samples, n_latents, generator=gen)
    codes = magnitude * active

    # (N, L) x (L, 2) presence x (L, d) directions -> (N, 2, d)
    acts = torch.einsum("nl,lm,ld->nmd", codes, presence, directions)
    acts = acts + noise * torch.randn(n_samples, 2, d, generator=gen)
    return SyntheticPairs(acts, directions, presence, kinds, codes)
