"""ADL's token readouts: logit lens of δ̄ per layer and position, with baselines."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from difflens.data.tokenize import decode_tokens
from difflens.methods.adl.collect_stage import DiffCollection
from difflens.models.lens import logit_lens

if TYPE_CHECKING:
    from difflens.models.pair import ModelPair

# Relative norm below which δ̄ is "no difference": float noise of identical models is ~1e-7.
NO_DIFFERENCE_RTOL = 1e-4


def lens_readouts(pair: ModelPair, diff: DiffCollection, top: int = 100) -> dict[str, Any]:
    """Logit-lens tables for every collected layer.

    Returns ``{"layers": {layer: {"positions": [...], "mean": {...}, "negative": {...},
    "base_mean": {...}, "ft_mean": {...}, "norm": [...], "relative_norm": float,
    "no_difference": bool}}}``; each readout is ``{"tokens": [...], "ids": [...],
    "probs": [...]}`` with ``top`` entries.  ``mean`` reads δ̄ averaged over positions 1..k-1.
    """
    arch = pair.arch("ft")
    out: dict[str, Any] = {"layers": {}}
    for layer in diff.stats.layers:
        delta = diff.stats.mean_diff(layer)  # (k, d)
        k = delta.shape[0]
        avg = delta[1:].mean(0) if k > 1 else delta[0]
        base_mean = diff.stats.mean_activation("base", layer)[1:].mean(0)
        ft_mean = diff.stats.mean_activation("ft", layer)[1:].mean(0)
        vectors = torch.cat([delta, torch.stack([avg, -avg, base_mean, ft_mean])])
        readout = logit_lens(arch, vectors, top)
        rows = [_row(pair.tokenizer, readout, i) for i in range(vectors.shape[0])]
        norm_ft = diff.norms["ft"].get(layer) or float(diff.stats.norms["ft"][layer].mean.mean())
        rel = float(avg.norm()) / max(norm_ft, 1e-12)
        out["layers"][str(layer)] = {
            "positions": rows[:k],
            "mean": rows[k],
            "negative": rows[k + 1],
            "base_mean": rows[k + 2],
            "ft_mean": rows[k + 3],
            "norm": [float(x) for x in delta.norm(dim=-1)],
            "relative_norm": rel,
            "no_difference": rel < NO_DIFFERENCE_RTOL,
        }
    return out


def _row(tokenizer: Any, readout: Any, i: int) -> dict[str, Any]:
    ids = readout.ids[i].tolist()
    return {"tokens": decode_tokens(tokenizer, ids), "ids": ids,
            "probs": [round(float(p), 6) for p in readout.probs[i]]}
