"""A streaming covariance of vectors, mergeable across batches and processes.

The state is the raw float64 sums ``(n, Σx, Σxxᵀ)``: adding a batch is one ``xᵀx`` matmul, and
two accumulators merge by adding their sums, in any order and any split (scale-out runs shard a
corpus and add the shards).  The covariance is formed once, at the end:
``C = (Σxxᵀ − n·μμᵀ) / (n − 1)``.  In float64 the cancellation in that difference costs ~1e-16
of ``‖E[xxᵀ]‖``, harmless even when the mean carries most of the second moment (it does for
activation differences of a narrow finetune, where ‖δ̄‖² is a large share of E‖δ‖²).

Memory is ``d² · 8`` bytes (3.3 MB at d = 640, 134 MB at d = 4096); the sums live on the device
of the first batch, so a GPU run never copies activations to the host.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Covariance:
    """Streaming ``(n, Σx, Σxxᵀ)`` of ``d``-dimensional rows (float64).

    ``update(x)`` takes ``(N, d)``; nothing of size N is kept.
    """

    d: int
    count: int = 0
    total: torch.Tensor = field(default=None)  # type: ignore[assignment]  # (d,) Σx
    outer: torch.Tensor = field(default=None)  # type: ignore[assignment]  # (d, d) Σxxᵀ

    def __post_init__(self) -> None:
        if self.total is None:
            self.total = torch.zeros(self.d, dtype=torch.float64)
        if self.outer is None:
            self.outer = torch.zeros(self.d, self.d, dtype=torch.float64)
        if self.total.shape != (self.d,) or self.outer.shape != (self.d, self.d):
            raise ValueError(f"sums of shape {tuple(self.total.shape)} / "
                             f"{tuple(self.outer.shape)} do not match d = {self.d}")

    def update(self, x: torch.Tensor) -> Covariance:
        """Add rows ``x`` ``(N, d)`` (any float dtype, any device); returns self."""
        if x.dim() != 2 or x.shape[1] != self.d:
            raise ValueError(f"expected rows of shape (N, {self.d}), got {tuple(x.shape)}")
        if x.shape[0] == 0:
            return self
        x = x.detach().to(torch.float64)
        if self.total.device != x.device:
            self.total, self.outer = self.total.to(x.device), self.outer.to(x.device)
        self.total += x.sum(0)
        self.outer += x.T @ x
        self.count += int(x.shape[0])
        return self

    def merge(self, other: Covariance) -> Covariance:
        """Fold ``other`` (same ``d``) into this accumulator; returns self."""
        if other.d != self.d:
            raise ValueError(f"cannot merge a covariance of d = {other.d} into d = {self.d}")
        device = self.total.device
        self.total = self.total + other.total.to(device)
        self.outer = self.outer + other.outer.to(device)
        self.count += other.count
        return self

    @property
    def mean(self) -> torch.Tensor:
        """``(d,)`` float64 mean (zeros when empty)."""
        return self.total / max(self.count, 1)

    def second_moment(self) -> torch.Tensor:
        """``(d, d)`` float64 uncentred second moment ``E[xxᵀ]``."""
        return self.outer / max(self.count, 1)

    def covariance(self, correction: int = 1) -> torch.Tensor:
        """``(d, d)`` float64 centred covariance, ``Σ(x−μ)(x−μ)ᵀ / (n − correction)``
        (``correction=1``: unbiased, as :func:`torch.cov`); zeros for fewer than 2 rows."""
        n = self.count
        if n - correction <= 0:
            return torch.zeros_like(self.outer)
        mu = self.mean
        cov = (self.outer - n * torch.outer(mu, mu)) / (n - correction)
        return (cov + cov.T) / 2  # exactly symmetric for eigh

    def to_tensors(self, prefix: str = "") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """``(tensors, metadata)`` for a safetensors file, keys under ``prefix``."""
        return ({f"{prefix}total": self.total.cpu(), f"{prefix}outer": self.outer.cpu()},
                {f"{prefix}count": str(self.count), f"{prefix}d": str(self.d)})

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict[str, str],
                     prefix: str = "") -> Covariance:
        """Inverse of :meth:`to_tensors`."""
        return cls(int(meta[f"{prefix}d"]), int(meta[f"{prefix}count"]),
                   tensors[f"{prefix}total"].to(torch.float64),
                   tensors[f"{prefix}outer"].to(torch.float64))
