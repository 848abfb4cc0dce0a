"""The two streaming passes of PCA over a tokenised corpus (model-facing).

1. :func:`accumulate` — δ = h_ft − h_base at every chosen layer, folded into a float64
   :class:`~difflens.stats.covariance.Covariance` per layer (valid positions only), with ADL's δ̄
   (positions 1..k−1 of the first k tokens) and Σ‖h_ft‖² alongside, in the same forwards.
2. :func:`top_contexts` — after the eigendecomposition: the projections of δ onto the top
   components, folded into a bounded :class:`~difflens.methods.pca.contexts.TopContexts`.

Contexts need the components, which exist only after pass 1, so the models run twice; storing
δ instead would cost N·T·d floats (a GPU corpus of 8k × 64 × 640 is 1.3 GB per layer).  Each
forward stops after the deepest chosen layer; texts are right-padded to ``max_tokens``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from difflens.collect import layer_activations
from difflens.data.padding import pad_id, pad_rows
from difflens.data.tokenize import encode_first
from difflens.methods.pca.contexts import TopContexts
from difflens.methods.pca.core import adl_rows, valid_positions
from difflens.models.pair import BASE, FT
from difflens.stats.covariance import Covariance

if TYPE_CHECKING:
    from difflens.models.pair import ModelPair


def tokenize(tokenizer: Any, texts: list[str], max_tokens: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, T)`` int64 ids (one BOS first, cut to ``max_tokens``, right-padded) and bool mask."""
    rows = encode_first(tokenizer, texts, max_tokens)  # only a prefix of each text is tokenised
    ids, mask = pad_rows(rows, pad_id(tokenizer), width=max_tokens)
    return ids, mask.bool()


def delta_batches(pair: ModelPair, ids: torch.Tensor, attention: torch.Tensor,
                  layers: list[int], batch_size: int, progress: bool, desc: str
                  ) -> Iterator[tuple[int, dict[int, torch.Tensor], dict[int, torch.Tensor]]]:
    """``(start, δ, h_ft)`` per batch: ``layer -> (B, T, d)`` float32 on the models' device."""
    from tqdm.auto import tqdm

    bar = tqdm(total=ids.shape[0], desc=desc, unit="text", disable=not progress or None)
    try:
        for start in range(0, ids.shape[0], batch_size):
            batch, mask = ids[start:start + batch_size], attention[start:start + batch_size]
            base = layer_activations(pair, BASE, batch, layers, mask.long())
            ft = layer_activations(pair, FT, batch, layers, mask.long())
            delta = {layer: ft[layer] - base[layer].to(ft[layer].device) for layer in layers}
            del base
            bar.update(batch.shape[0])
            yield start, delta, ft
    finally:
        bar.close()


@dataclass
class DeltaStats:
    """Pass 1's accumulators per layer.

    ``cov[layer]``: covariance of δ over valid positions; ``adl_sum[layer]`` ``(d,)`` float64
    and ``adl_count``: Σδ and rows over ADL's positions (δ̄_ADL = sum / count); ``ft_sq[layer]``:
    Σ‖h_ft‖² over valid positions (the no-difference test compares rms δ with rms h_ft).
    """

    layers: list[int]
    cov: dict[int, Covariance]
    adl_sum: dict[int, torch.Tensor]
    adl_count: int
    ft_sq: dict[int, float]

    @classmethod
    def empty(cls, layers: list[int], d: int) -> DeltaStats:
        return cls(list(layers), {la: Covariance(d) for la in layers},
                   {la: torch.zeros(d, dtype=torch.float64) for la in layers}, 0,
                   {la: 0.0 for la in layers})

    def adl_mean(self, layer: int) -> torch.Tensor:
        """δ̄ as ADL defines it at ``layer``: ``(d,)`` float64."""
        return self.adl_sum[layer] / max(self.adl_count, 1)

    def rms_ratio(self, layer: int) -> float:
        """rms(δ) / rms(h_ft) over the valid positions (0 when both are 0)."""
        cov = self.cov[layer]
        ft = self.ft_sq[layer]
        delta = float(cov.outer.trace())
        return (delta / ft) ** 0.5 if ft > 0 else 0.0

    def merge(self, other: DeltaStats) -> DeltaStats:
        if other.layers != self.layers:
            raise ValueError("cannot merge statistics over different layers")
        for layer in self.layers:
            self.cov[layer].merge(other.cov[layer])
            self.adl_sum[layer] = self.adl_sum[layer] + other.adl_sum[layer]
            self.ft_sq[layer] += other.ft_sq[layer]
        self.adl_count += other.adl_count
        return self

    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        tensors: dict[str, torch.Tensor] = {}
        meta = {"layers": ",".join(map(str, self.layers)), "adl_count": str(self.adl_count)}
        for layer in self.layers:
            t, m = self.cov[layer].to_tensors(f"cov.{layer}.")
            tensors.update(t)
            meta.update(m)
            tensors[f"adl_sum.{layer}"] = self.adl_sum[layer].cpu()
            meta[f"ft_sq.{layer}"] = repr(self.ft_sq[layer])
        return tensors, meta

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> DeltaStats:
        layers = [int(x) for x in meta["layers"].split(",")]
        return cls(layers,
                   {la: Covariance.from_tensors(tensors, meta, f"cov.{la}.") for la in layers},
                   {la: tensors[f"adl_sum.{la}"].to(torch.float64) for la in layers},
                   int(meta["adl_count"]), {la: float(meta[f"ft_sq.{la}"]) for la in layers})


def accumulate(pair: ModelPair, ids: torch.Tensor, attention: torch.Tensor, layers: list[int],
               k: int, batch_size: int, progress: bool = True) -> DeltaStats:
    """Pass 1 over the tokenised corpus ``(N, T)``: covariance, δ̄_ADL, Σ‖h_ft‖² per layer."""
    stats = DeltaStats.empty(layers, pair.arch(FT).hidden_size)
    valid_all, adl_all = valid_positions(attention), adl_rows(attention, k)
    for start, delta, ft in delta_batches(pair, ids, attention, layers, batch_size, progress,
                                          "δ covariance"):
        stop = start + next(iter(delta.values())).shape[0]
        device = next(iter(delta.values())).device
        valid, adl = valid_all[start:stop].to(device), adl_all[start:stop].to(device)
        for layer in layers:
            rows = delta[layer][valid]  # (M, d)
            stats.cov[layer].update(rows)
            stats.adl_sum[layer] += delta[layer][adl].to(torch.float64).sum(0).cpu()
            stats.ft_sq[layer] += float(ft[layer][valid].to(torch.float64).pow(2).sum())
        stats.adl_count += int(adl.sum())
        del delta, ft
    return stats


def top_contexts(pair: ModelPair, ids: torch.Tensor, attention: torch.Tensor,
                 components: dict[int, torch.Tensor], n: int, window: int, batch_size: int,
                 progress: bool = True, offset: int = 0) -> dict[int, TopContexts]:
    """Pass 2: per layer, the top-``n`` positions of ``±δ·c`` for each row of
    ``components[layer]`` ``(C, d)``, with ``window`` tokens either side; ``offset``: corpus
    index of ``ids``' first row (a torchrun rank's shard)."""
    layers = sorted(components)
    stores = {la: TopContexts.empty(components[la].shape[0], n, window, window) for la in layers}
    valid_all = valid_positions(attention)
    for start, delta, _ft in delta_batches(pair, ids, attention, layers, batch_size, progress,
                                           "top contexts"):
        stop = start + next(iter(delta.values())).shape[0]
        for layer in layers:
            comps = components[layer].to(delta[layer].device, delta[layer].dtype)
            proj = delta[layer] @ comps.T  # (B, T, C)
            stores[layer].update(proj, valid_all[start:stop], ids[start:stop],
                                 attention[start:stop], offset + start)
        del delta, _ft
    return stores
