"""ADL's first stage: mean activation differences and norms, saved as one artifact."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from difflens.collect import collect_mean_diff, collect_norms
from difflens.io.artifacts import read_json, read_tensors, write_json, write_tensors
from difflens.stats import DiffMoments

if TYPE_CHECKING:
    from difflens.models.pair import ModelPair

DIFF_FILE = "activation_diff.safetensors"
NORMS_FILE = "norms.json"


@dataclass
class DiffCollection:
    """Mean differences per layer/position plus each model's typical activation norm.

    ``stats.mean_diff(layer)``: δ̄ ``(k, d)``; ``norms[side][layer]``: ν, the mean ‖h‖ over
    positions ≥ 5 (steering and Patchscope strengths are in units of ν_ft).
    """

    stats: DiffMoments
    norms: dict[str, dict[int, float]]

    def save(self, run: Path) -> None:
        tensors, meta = self.stats.to_tensors()
        write_tensors(run / DIFF_FILE, tensors, meta)
        write_json(run / NORMS_FILE, self.norms)

    @classmethod
    def load(cls, run: Path) -> DiffCollection:
        tensors, meta = read_tensors(run / DIFF_FILE)
        raw = read_json(run / NORMS_FILE)
        norms = {side: {int(k): float(v) for k, v in per.items()} for side, per in raw.items()}
        return cls(DiffMoments.from_tensors(tensors, meta), norms)

    def vector(self, layer: int, positions: slice = slice(1, None)) -> torch.Tensor:
        """δ̄ averaged over ``positions`` (default 1..k-1: BOS kept apart): ``(d,)``."""
        return self.stats.mean_diff(layer)[positions].mean(dim=0)


def collect(pair: ModelPair, texts: list[str], layers: list[int], k: int, batch_size: int,
            progress: bool = True) -> DiffCollection:
    """Stream the corpus once through both models, reading every layer in ``layers``."""
    stats = collect_mean_diff(pair, texts, layers, k=k, batch_size=batch_size, progress=progress)
    norms = collect_norms(pair, texts, layers, progress=progress)
    return DiffCollection(stats, norms)
