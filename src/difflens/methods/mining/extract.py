"""Diff Mining stage 1 (pure core): per-position logit differences Δ_t = z^ft_t − z^base_t.

Texts are cut to ``T`` tokens and padded right; every non-padding position ``t`` yields the
difference of the two models' next-token logits over the shared vocabulary.  Δ is produced one
batch at a time, ``(B·T, V)``, and handed to a streaming accumulator: the ``N×T×V`` tensor is
never built (at V = 262k it would be 100+ GB for the default corpus).

Both lenses read the residual stream after a decoder layer and unembed it with the model's own
final norm and LM head (:meth:`Architecture.logits`): ``raw`` reads the last layer, which is
exactly how the models compute their output logits (tested on eight families), and
``logit-lens`` reads an earlier layer and stops the forward pass there.  Reading the hidden state
instead of ``model(...).logits`` lets a pair that shares its LM head — every LoRA adapter that
leaves the head alone — unembed the *difference* of the normalised states once, halving the
cost of the 262k-row matmul that dominates CPU runtime, and giving exact zeros when the two
sides agree.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from difflens.errors import DifflensError
from difflens.models.hooks import capture, run_forward
from difflens.models.pair import BASE, FT
from difflens.models.vocab import (  # noqa: F401 (the engine's, re-exported for mining)
    shared_vocab,
    shares_head,
    special_ids,
    tokenize_padded,
    valid_positions,
)

if TYPE_CHECKING:
    from difflens.models.pair import ModelPair


@dataclass
class DeltaBatch:
    """One batch of logit differences, flattened over (text, position).

    ``delta``: ``(B·T, V)`` float32 Δ over the shared vocabulary; ``valid``: ``(B·T,)`` bool,
    False for padding and masked positions (their rows hold meaningless values);
    ``position_ids``: ``(B·T,)`` int64 global ids ``text_index · T + t``.
    """

    delta: torch.Tensor
    valid: torch.Tensor
    position_ids: torch.Tensor


def check_top_k(top_k: int, vocab: int) -> None:
    if top_k > vocab:
        raise DifflensError(
            f"top-k {top_k} is larger than the shared vocabulary ({vocab} tokens); "
            f"use --top-k {min(100, vocab)} or less"
        )


def lens_layer(pair: ModelPair, lens: str, layer: int | float | None) -> int:
    """Index of the layer read: the last one for ``raw``, else ``layer`` (default 0.75 depth)."""
    from difflens.methods.mining.config import DEFAULT_LENS_DEPTH

    arch = pair.arch(FT)
    if lens == "raw":
        return arch.num_layers - 1
    return arch.resolve_layer(DEFAULT_LENS_DEPTH if layer is None else layer)


def _side_hidden(pair: ModelPair, side: str, ids: torch.Tensor, attention: torch.Tensor,
                 layer: int, shared: bool, vocab: int) -> torch.Tensor:
    """Normalised hidden state ``(B, T, d)`` (shared head) or logits ``(B, T, V)`` of a side."""
    with pair.use(side) as (model, arch), capture(arch, [layer]) as store:
        run_forward(model, input_ids=ids, attention_mask=attention.long())
        hidden = store[layer]
        return arch.final_norm(hidden) if shared else arch.logits(hidden)[..., :vocab]


@torch.inference_mode()
def batch_delta(pair: ModelPair, ids: torch.Tensor, attention: torch.Tensor, layer: int,
                vocab: int, shared: bool | None = None) -> torch.Tensor:
    """Δ for one batch.

    Args:
        ids, attention: ``(B, T)`` token ids and bool mask.
        layer: decoder layer whose output is unembedded (the last one for raw logits).
        vocab: shared vocabulary size V.
        shared: whether the pair shares its LM head (:func:`shares_head`; computed when None —
            pass it when calling per batch, the check may compare two 262k-row matrices).
    Returns:
        ``(B, T, V)`` float32 Δ = z^ft − z^base, on the models' device (the accumulator
        reduces it there; only ``(B·T, K)`` top-K results ever move to the CPU).
    """
    device = pair.device
    ids, attention = ids.to(device), attention.to(device)
    base_arch, ft_arch = pair.arch(BASE), pair.arch(FT)
    if shared is None:
        shared = shares_head(base_arch, ft_arch)
    base = _side_hidden(pair, BASE, ids, attention, layer, shared, vocab)
    ft = _side_hidden(pair, FT, ids, attention, layer, shared, vocab)
    if shared:
        weight = ft_arch.unembed.weight[:vocab]
        diff = torch.nn.functional.linear((ft - base.to(ft.device)).to(weight.device), weight)
    else:
        diff = ft.sub_(base.to(ft.device))  # devices differ only under device_map="auto"
    return diff.float()


def delta_batches(pair: ModelPair, ids: torch.Tensor, valid: torch.Tensor,
                  attention: torch.Tensor, layer: int, vocab: int, batch_size: int,
                  progress: bool = True) -> Iterator[DeltaBatch]:
    """Stream :class:`DeltaBatch` es over a tokenised corpus ``(N, T)``.

    Consumers should ``del`` each batch after use: a reference kept across ``next()`` doubles
    peak memory (two 0.5 GB blocks at V = 262k, B·T = 512).
    """
    from tqdm.auto import tqdm

    n, t = ids.shape
    shared = shares_head(pair.arch(BASE), pair.arch(FT))
    bar = tqdm(total=n, desc="logit differences", unit="text", disable=not progress or None)
    try:
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            delta = batch_delta(pair, ids[start:stop], attention[start:stop], layer, vocab,
                                shared)
            bar.update(stop - start)
            positions = torch.arange(start * t, stop * t, dtype=torch.long)
            batch = DeltaBatch(delta.reshape(-1, vocab), valid[start:stop].reshape(-1), positions)
            del delta
            yield batch
            # Drop this block before computing the next one, so that at most one (B·T, V)
            # block is alive (the consumer must drop its reference too).
            del batch
    finally:
        bar.close()
