"""Streaming first and second moments, mergeable (Chan et al. parallel update).

Sums are kept in float64: a mean over 10^5 fp32 activations accumulated in fp32 loses digits,
and the accumulators are tiny (k × d per layer), so precision is free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


def summing_device(x: torch.Tensor) -> torch.device:
    """Where float64 sums of ``x`` are taken: ``x``'s own device, except on Apple's MPS, which
    has no float64 (the CPU then)."""
    return torch.device("cpu") if x.device.type == "mps" else x.device


@dataclass
class Moments:
    """Running mean and elementwise second central moment of vectors of shape ``shape``.

    ``update(x)`` takes ``(N, *shape)``; nothing of size N is kept.
    """

    shape: tuple[int, ...]
    count: int = 0
    mean: torch.Tensor = field(default=None)  # type: ignore[assignment]
    m2: torch.Tensor = field(default=None)  # type: ignore[assignment]  # Σ (x - mean)^2

    def __post_init__(self) -> None:
        if self.mean is None:
            self.mean = torch.zeros(self.shape, dtype=torch.float64)
        if self.m2 is None:
            self.m2 = torch.zeros(self.shape, dtype=torch.float64)

    def update(self, x: torch.Tensor) -> None:
        """Add a batch ``x`` of shape ``(N, *shape)``.

        The sums live on ``x``'s device (float64): on a GPU, copying every batch to the host
        and reducing it there in float64 cost more than the forward passes that made it.
        :meth:`to` brings them back to the CPU for merging and saving.
        """
        x = x.detach().to(device=summing_device(x), dtype=torch.float64)
        n = x.shape[0]
        if n == 0:
            return
        self.to(x.device)
        batch_mean = x.mean(dim=0)
        batch_m2 = ((x - batch_mean) ** 2).sum(dim=0)
        self._combine(n, batch_mean, batch_m2)

    def merge(self, other: Moments) -> Moments:
        """Fold ``other`` (same shape) into this accumulator; returns self."""
        if other.shape != self.shape:
            raise ValueError(f"cannot merge moments of shape {other.shape} into {self.shape}")
        if other.count:
            device = self.mean.device
            self._combine(other.count, other.mean.to(device), other.m2.to(device))
        return self

    def to(self, device: torch.device | str) -> Moments:
        """Move the sums to ``device`` (in place); returns self."""
        self.mean, self.m2 = self.mean.to(device), self.m2.to(device)
        return self

    def _combine(self, n: int, mean: torch.Tensor, m2: torch.Tensor) -> None:
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total

    @property
    def variance(self) -> torch.Tensor:
        """Population variance (elementwise)."""
        return self.m2 / max(self.count, 1)

    @property
    def second_moment(self) -> torch.Tensor:
        """E[x²] elementwise."""
        return self.variance + self.mean**2

    def state(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}


@dataclass
class DiffMoments:
    """Per-layer, per-position statistics of a paired activation stream.

    For each layer: moments of δ = h_ft − h_base (shape ``(k, d)``), the mean activation of each
    model (``(k, d)``, the logit-lens baselines) and moments of the norms ‖h_base‖, ‖h_ft‖ and
    ‖δ‖ (shape ``(k,)``).
    """

    layers: list[int]
    k: int
    d: int
    diff: dict[int, Moments] = field(default_factory=dict)
    norms: dict[str, dict[int, Moments]] = field(default_factory=dict)
    means: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict)  # Σ h per side

    def __post_init__(self) -> None:
        for layer in self.layers:
            self.diff.setdefault(layer, Moments((self.k, self.d)))
            for side in ("base", "ft"):
                self.means.setdefault(side, {}).setdefault(
                    layer, torch.zeros(self.k, self.d, dtype=torch.float64))
            for side in ("base", "ft", "diff"):
                self.norms.setdefault(side, {}).setdefault(layer, Moments((self.k,)))

    def update(self, layer: int, h_base: torch.Tensor, h_ft: torch.Tensor) -> None:
        """Add a batch at ``layer``: ``h_base``, ``h_ft`` of shape ``(B, k, d)``.

        Accumulates on the activations' device (see :meth:`Moments.update`); call
        :meth:`to` ``("cpu")`` before merging across processes or saving.
        """
        h_base = h_base.detach().to(summing_device(h_base), torch.float64)
        h_ft = h_ft.detach().to(h_base.device, torch.float64)
        delta = h_ft - h_base
        self.diff[layer].update(delta)
        for side, h in (("base", h_base), ("ft", h_ft)):
            self.means[side][layer] = self.means[side][layer].to(h.device) + h.sum(0)
        self.norms["base"][layer].update(h_base.norm(dim=-1))
        self.norms["ft"][layer].update(h_ft.norm(dim=-1))
        self.norms["diff"][layer].update(delta.norm(dim=-1))

    def merge(self, other: DiffMoments) -> DiffMoments:
        """Fold another accumulator over the same layers/k/d into this one; returns self."""
        if (other.layers, other.k, other.d) != (self.layers, self.k, self.d):
            raise ValueError("cannot merge DiffMoments over different layers, k or d")
        for layer in self.layers:
            self.diff[layer].merge(other.diff[layer])
            for side in self.means:
                mine = self.means[side][layer]
                self.means[side][layer] = mine + other.means[side][layer].to(mine.device)
            for side in self.norms:
                self.norms[side][layer].merge(other.norms[side][layer])
        return self

    def to(self, device: torch.device | str) -> DiffMoments:
        """Move every sum to ``device`` (in place); returns self."""
        for layer in self.layers:
            self.diff[layer].to(device)
            for side in self.means:
                self.means[side][layer] = self.means[side][layer].to(device)
            for per in self.norms.values():
                per[layer].to(device)
        return self

    @property
    def count(self) -> int:
        return self.diff[self.layers[0]].count if self.layers else 0

    def mean_diff(self, layer: int) -> torch.Tensor:
        """δ̄ at ``layer``: ``(k, d)`` float32."""
        return self.diff[layer].mean.float()

    def mean_activation(self, side: str, layer: int) -> torch.Tensor:
        """Mean activation of one model (``"base"``/``"ft"``) at ``layer``: ``(k, d)``."""
        return (self.means[side][layer] / max(self.count, 1)).float()

    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """Flatten to ``(tensors, metadata)`` for a safetensors file."""
        tensors: dict[str, torch.Tensor] = {}
        for layer in self.layers:
            tensors[f"diff.mean.{layer}"] = self.diff[layer].mean
            tensors[f"diff.m2.{layer}"] = self.diff[layer].m2
            for side in self.means:
                tensors[f"sum.{side}.{layer}"] = self.means[side][layer]
            for side, per in self.norms.items():
                tensors[f"norm.{side}.mean.{layer}"] = per[layer].mean
                tensors[f"norm.{side}.m2.{layer}"] = per[layer].m2
        meta = {"layers": ",".join(map(str, self.layers)), "k": str(self.k), "d": str(self.d),
                "count": str(self.count)}
        return tensors, meta

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> DiffMoments:
        """Inverse of :meth:`to_tensors`."""
        layers = [int(x) for x in meta["layers"].split(",")]
        out = cls(layers, int(meta["k"]), int(meta["d"]))
        count = int(meta["count"])
        for layer in layers:
            out.diff[layer] = Moments((out.k, out.d), count, tensors[f"diff.mean.{layer}"],
                                      tensors[f"diff.m2.{layer}"])
            for side in out.means:
                out.means[side][layer] = tensors[f"sum.{side}.{layer}"]
            for side in out.norms:
                out.norms[side][layer] = Moments((out.k,), count,
                                                 tensors[f"norm.{side}.mean.{layer}"],
                                                 tensors[f"norm.{side}.m2.{layer}"])
        return out
