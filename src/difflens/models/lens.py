"""Logit lens: read residual-stream vectors through the model's final norm and unembedding.

The one readout of vectors as tokens in difflens (ADL's δ̄ tables, dictionary decoder
directions): ``softmax(W_U · final_norm(v))`` and its top tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from difflens.data.tokenize import decode_tokens

if TYPE_CHECKING:
    from difflens.models.arch import Architecture


@dataclass
class TokenReadout:
    """Top tokens of a distribution over the vocabulary.

    ``ids``: ``(n, top)`` token ids, ``probs``: ``(n, top)`` their probabilities and
    ``logits``: ``(n, top)`` their logits, one row per vector read (e.g. per position); largest
    first.
    """

    ids: torch.Tensor
    probs: torch.Tensor
    logits: torch.Tensor

    def tokens(self, tokenizer: Any, row: int, top: int = 20) -> list[str]:
        return decode_tokens(tokenizer, self.ids[row, :top].tolist())


@torch.inference_mode()
def logit_lens(arch: Architecture, vectors: torch.Tensor, top: int = 100) -> TokenReadout:
    """softmax(W_U · final_norm(v)) for each vector; the top ``top`` tokens.

    Args:
        vectors: ``(n, d)`` residual-stream vectors (δ̄ per position, −δ̄, means, directions).
    Returns:
        TokenReadout with ``(n, top)`` ids, probabilities and logits, on the CPU.
    """
    param = next(arch.unembed.parameters())
    x = vectors.to(device=param.device, dtype=param.dtype)
    logits = arch.logits(x).float()
    probs = torch.softmax(logits, dim=-1)
    values, ids = probs.topk(min(top, probs.shape[-1]), dim=-1)
    return TokenReadout(ids.cpu(), values.cpu(), logits.gather(-1, ids).cpu())
