"""Logit lens readout of activation-difference vectors (pure tensor core)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from difflens.models.arch import Architecture


@dataclass
class TokenReadout:
    """Top tokens of a distribution over the vocabulary.

    ``ids``: ``(n, top)`` token ids, ``probs``: ``(n, top)`` their probabilities, one row per
    vector read (e.g. per position).
    """

    ids: torch.Tensor
    probs: torch.Tensor

    def tokens(self, tokenizer: Any, row: int, top: int = 20) -> list[str]:
        return decode_tokens(tokenizer, self.ids[row, :top].tolist())


def decode_tokens(tokenizer: Any, ids: list[int]) -> list[str]:
    """Readable form of single tokens (byte-level markers resolved, spaces kept)."""
    return [tokenizer.decode([i]) for i in ids]


@torch.inference_mode()
def logit_lens(arch: Architecture, vectors: torch.Tensor, top: int = 100) -> TokenReadout:
    """softmax(W_U · final_norm(v)) for each vector; the top ``top`` tokens.

    Args:
        vectors: ``(n, d)`` residual-stream vectors (δ̄ per position, −δ̄, means, ...).
    Returns:
        TokenReadout with ``(n, top)`` ids and probabilities.
    """
    param = next(arch.unembed.parameters())
    x = vectors.to(device=param.device, dtype=param.dtype)
    probs = torch.softmax(arch.logits(x).float(), dim=-1)
    values, ids = probs.topk(min(top, probs.shape[-1]), dim=-1)
    return TokenReadout(ids.cpu(), values.cpu())
