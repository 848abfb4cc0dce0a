"""Padding token rows into a batch: the pad id and its fallback, right or left padding.

Every batch of variable-length token rows in difflens is built here, so the pad id is chosen
one way everywhere: the tokenizer's pad token, else its EOS token, else 0.  (Padded positions
are masked out, so the id only has to be a valid token.)  Padding is built as tensors rather
than by flipping ``tokenizer.padding_side``, so a tokenizer shared with other code is never
mutated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from difflens.data.tokenize import encode


def pad_id(tokenizer: Any) -> int:
    """The id written at padded positions: pad token, else EOS, else 0."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def pad_rows(rows: Sequence[Sequence[int]], pad: int, *, left: bool = False,
             width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack token rows into one batch.

    Args:
        rows: token ids per row (each at most ``width`` long).
        pad: id written at padded positions (see :func:`pad_id`).
        left: pad on the left, so every row ends at the last position (for generation);
            default right, so every row starts at position 0.
        width: columns of the batch (default: the longest row).
    Returns:
        ``(B, T)`` int64 ids and ``(B, T)`` int64 mask (1 at tokens, 0 at padding).
    """
    width = max((len(r) for r in rows), default=0) if width is None else width
    ids = torch.full((len(rows), width), int(pad), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(list(row), dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def left_padded(tokenizer: Any, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of ``prompts``, left-padded so every prompt ends at -1.

    Each prompt gets exactly one BOS (chat templates already write it).  Returns ``(B, T)`` ids
    and ``(B, T)`` mask.
    """
    return pad_rows([encode(tokenizer, p) for p in prompts], pad_id(tokenizer), left=True)
