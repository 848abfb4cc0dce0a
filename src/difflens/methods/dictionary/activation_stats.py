"""The activation cache's per-layer statistics: per-model mean and variance of the cached rows
(the engine's mergeable :class:`~difflens.stats.Moments`, float64) and the mean L2 norms per
model and of ``ft − base`` — the normalisation scales of a crosscoder and of a diff-SAE and the
decoder bias they start from.  Mergeable, so shards (and torchrun ranks) are summed exactly."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from difflens.stats import Moments
from difflens.stats.moments import summing_device


class RunningStats:
    """Statistics of activation rows ``(N, M, d)``: ``count``, ``mean`` and ``m2`` ``(M, d)``
    (a :class:`Moments`), ``norm_sum`` ``(M,)`` and ``diff_norm_sum`` (when ``M = 2``)."""

    def __init__(self, n_models: int, d: int) -> None:
        self.moments = Moments((n_models, d))
        self.norm_sum = torch.zeros(n_models, dtype=torch.float64)
        self.diff_norm_sum = 0.0

    @classmethod
    def of(cls, x: Tensor) -> RunningStats:
        """Statistics of rows ``x`` ``(N, M, d)``, computed in float64 on ``x``'s device (the
        CPU for MPS, which has no float64); returned on the CPU."""
        n, n_models, d = x.shape
        stats = cls(n_models, d)
        if n == 0:
            return stats
        x64 = x.detach().to(summing_device(x), torch.float64)
        stats.moments.update(x64)
        stats.moments.to("cpu")
        stats.norm_sum = x64.norm(dim=-1).sum(0).cpu()
        if n_models == 2:
            stats.diff_norm_sum = float((x64[:, 1] - x64[:, 0]).norm(dim=-1).sum())
        return stats

    def merge(self, other: RunningStats) -> RunningStats:
        """Fold ``other`` (statistics of other rows) into these; merging shards' statistics in
        shard order repeats exactly what a single pass did."""
        self.moments.merge(other.moments)
        self.norm_sum = self.norm_sum + other.norm_sum
        self.diff_norm_sum += other.diff_norm_sum
        return self

    def update(self, x: Tensor) -> None:
        """Add rows ``x`` ``(N, M, d)``."""
        self.merge(RunningStats.of(x))

    @property
    def count(self) -> int:
        return self.moments.count

    @property
    def mean(self) -> Tensor:
        """``(M, d)`` mean activation per model."""
        return self.moments.mean

    @property
    def m2(self) -> Tensor:
        """``(M, d)`` sum of squared deviations from the mean."""
        return self.moments.m2

    @property
    def variance(self) -> Tensor:
        """``(M, d)`` population variance per coordinate."""
        return self.moments.variance

    @property
    def mean_norm(self) -> Tensor:
        """``(M,)`` mean ‖a^m‖."""
        return self.norm_sum / max(self.count, 1)

    @property
    def diff_mean_norm(self) -> float:
        """Mean ‖a^ft − a^base‖."""
        return self.diff_norm_sum / max(self.count, 1)

    def to_json(self) -> dict[str, Any]:
        # Python floats round-trip exactly through JSON, so a resumed run continues bit-exactly.
        m = self.moments
        return {"count": m.count, "mean": m.mean.tolist(), "m2": m.m2.tolist(),
                "norm_sum": self.norm_sum.tolist(), "diff_norm_sum": self.diff_norm_sum}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunningStats:
        mean = torch.tensor(data["mean"], dtype=torch.float64)
        stats = cls(mean.shape[0], mean.shape[1])
        stats.moments = Moments(tuple(mean.shape), int(data["count"]), mean,
                                torch.tensor(data["m2"], dtype=torch.float64))
        stats.norm_sum = torch.tensor(data["norm_sum"], dtype=torch.float64)
        stats.diff_norm_sum = float(data["diff_norm_sum"])
        return stats
