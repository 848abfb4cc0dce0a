"""The KL pass: one forward of each model per batch, the divergence and norms of every position.

Each side runs to its last decoder layer and stops there (the model's own LM head never runs);
the residual outputs of the measured layers and of the last layer are read by hooks.  The last
layer's states at valid positions ``(P, d)`` go through :func:`~difflens.methods.kl.core
.position_kl`, which unembeds them itself (final norm, head, softcap) in vocabulary tiles, and
the measured layers give ‖h_ft − h_base‖ from the same passes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from difflens.methods.kl.aggregate import KLStats
from difflens.methods.kl.core import position_kl
from difflens.models.hooks import capture, run_forward
from difflens.models.pair import BASE, FT

if TYPE_CHECKING:
    from difflens.models.pair import ModelPair


def side_states(pair: ModelPair, side: str, ids: torch.Tensor, attention: torch.Tensor,
                layers: list[int]) -> dict[int, torch.Tensor]:
    """Residual outputs ``layer -> (B, T, d)`` of one side (the forward stops after the
    deepest of ``layers``)."""
    with pair.use(side) as (model, arch), capture(arch, layers) as store, \
            torch.inference_mode():
        run_forward(model, input_ids=ids, attention_mask=attention.long())
    return dict(store)


@torch.inference_mode()
def batch_values(pair: ModelPair, ids: torch.Tensor, attention: torch.Tensor,
                 valid: torch.Tensor, layers: list[int], vocab: int, fingerprint: bool,
                 path: str | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The statistics of one batch.

    Args:
        ids, attention, valid: ``(B, T)``; layers: measured layers (norms); vocab: shared V.
    Returns:
        ``values`` ``(B, T, 3 + L)`` float32 (forward, reverse, symmetric KL, then the norm at
        each layer; NaN at positions that do not count), ``top_ft``, ``top_base`` ``(B, T)``
        each model's most likely next token (−1 where not counted), and the batch's
        fingerprint sums ``(3, V)`` float64 (None without the fingerprint).
    """
    device = pair.device
    ids, attention = ids.to(device), attention.to(device)
    last = pair.num_layers - 1
    read = sorted({*layers, last})
    base = side_states(pair, BASE, ids, attention, read)
    ft = side_states(pair, FT, ids, attention, read)
    b, t = ids.shape
    where = valid.to(device)
    values = torch.full((b, t, 3 + len(layers)), torch.nan, device=device)
    if not bool(where.any()):  # every position masked: nothing to unembed
        none = torch.full((b, t), -1, dtype=torch.long, device=device)
        return values, none, none.clone(), None
    # Under device_map="auto" the last layer may sit on another device than the embeddings.
    at = where.to(ft[last].device)
    kl, sums = position_kl(pair.arch(FT), pair.arch(BASE), ft[last][at],
                           base[last].to(ft[last].device)[at], vocab, fingerprint, path)
    values[..., 0][where] = kl.forward.float().to(device)
    values[..., 1][where] = kl.reverse.float().to(device)
    values[..., 2][where] = kl.symmetric.float().to(device)
    for i, layer in enumerate(layers):
        diff = ft[layer].float() - base[layer].to(ft[layer].device).float()
        values[..., 3 + i][where] = diff[where.to(diff.device)].norm(dim=-1).to(device)
    tops = []
    for top in (kl.top_ft, kl.top_base):
        full = torch.full((b, t), -1, dtype=torch.long, device=device)
        full[where] = top.to(device)
        tops.append(full)
    packed = None
    if sums is not None:
        packed = torch.stack([sums.contribution, sums.p_ft, sums.p_base])
    return values, tops[0], tops[1], packed


def kl_pass(pair: ModelPair, ids: torch.Tensor, attention: torch.Tensor, valid: torch.Tensor,
            layers: list[int], vocab: int, stats: KLStats, batch_size: int,
            fingerprint: bool = True, progress: bool = True, path: str | None = None) -> KLStats:
    """Stream the corpus ``(N, T)`` through both models into ``stats`` (returned)."""
    from tqdm.auto import tqdm

    n = ids.shape[0]
    bar = tqdm(total=n, desc="per-token KL", unit="text", disable=not progress or None)
    try:
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            rows = slice(start, stop)
            values, top_ft, top_base, sums = batch_values(
                pair, ids[rows], attention[rows], valid[rows], layers, vocab, fingerprint, path)
            stats.update(values, ids[rows], top_ft, top_base, sums)
            bar.update(stop - start)
    finally:
        bar.close()
    return stats
