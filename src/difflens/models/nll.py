"""Next-token cross-entropy from hidden states, unembedded in chunks (no B×T×V logits).

Shared by ADL's causal test and the offline coherence grader's perplexity: with a 262k-token
vocabulary, full logits of a batch are gigabytes, and unembedding one text at a time streams
the whole head per text; chunks of valid positions across texts do neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from difflens.models.arch import Architecture

# Logit elements per unembedding chunk (32M floats = 128 MB): bounds memory at vocab 262k.
CHUNK_ELEMENTS = 1 << 25


def token_ce(
    arch: Architecture, hidden: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Summed next-token cross-entropy per row, from pre-final-norm hidden states.

    Only positions whose next token is real (mask 1) are unembedded, in chunks, so memory is
    bounded by ``CHUNK_ELEMENTS`` logits whatever the vocabulary.

    Args:
        hidden: ``(R, T, d)``; tokens, mask: ``(R, T)``.
    Returns:
        ``(R,)`` float64 sums of −log p(token_{t+1} | ≤ t) over valid t.
    """
    valid = mask[:, 1:].to(hidden.device).bool()
    rows, cols = valid.nonzero(as_tuple=True)
    h = hidden[:, :-1][rows, cols]  # (P, d)
    y = tokens[:, 1:].to(hidden.device)[rows, cols]  # (P,)
    vocab = getattr(arch.unembed, "out_features", None) or arch.unembed.weight.shape[0]
    step = max(1, CHUNK_ELEMENTS // vocab)
    losses = torch.empty(h.shape[0], dtype=torch.float64, device=hidden.device)
    for s in range(0, h.shape[0], step):
        logits = arch.logits(h[s : s + step]).float()
        # logsumexp − target logit: the same value as F.cross_entropy without writing a
        # second (chunk × vocab) log-softmax tensor.
        target = logits.gather(1, y[s : s + step, None])[:, 0]
        losses[s : s + step] = torch.logsumexp(logits, dim=-1) - target
    return torch.zeros(hidden.shape[0], dtype=torch.float64, device=hidden.device).index_add_(
        0, rows, losses
    )
