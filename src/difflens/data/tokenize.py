"""Tokenisation: one BOS per text (:func:`encode`), single-token decoding, first-k windows.

First-k windows are equal-length token windows, BOS kept at position 0: ADL reads only the
first k positions of each text, so texts are cut to exactly k tokens; no padding is ever needed
and a batch is a plain ``(B, k)`` tensor.  Texts shorter than k tokens are dropped, and how many
is logged.  Batches of rows of different lengths are padded by :mod:`difflens.data.padding`.
"""

from __future__ import annotations

import logging
from typing import Any

from difflens.errors import DifflensError

log = logging.getLogger(__name__)


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` with exactly one BOS first when the tokenizer has a BOS token."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos, *ids]
    return ids


def decode_tokens(tokenizer: Any, ids: list[int]) -> list[str]:
    """Readable text of single tokens (byte-level and SentencePiece markers resolved by the
    tokenizer's own decoder, spaces kept)."""
    return [tokenizer.decode([int(i)]) for i in ids]


def first_k_tokens(tokenizer: Any, texts: list[str], k: int) -> Any:
    """Tokenise ``texts`` and keep the first ``k`` tokens of each.

    Returns:
        ``(N, k)`` LongTensor, N = number of texts with at least k tokens.
    Raises:
        DifflensError: if ``k <= 0`` or no text has ``k`` tokens.
    """
    import torch

    check_k(k)
    rows = []
    for text in texts:
        ids = encode(tokenizer, text)
        if len(ids) >= k:
            rows.append(ids[:k])
    dropped = len(texts) - len(rows)
    if dropped:
        log.info("dropped %d of %d texts shorter than %d tokens", dropped, len(texts), k)
    if not rows:
        raise DifflensError(
            f"every text of the corpus is shorter than {k} tokens; use longer texts or a smaller k"
        )
    return torch.tensor(rows, dtype=torch.long)


def check_k(k: int) -> None:
    if not isinstance(k, int) or k <= 0:
        raise DifflensError(f"k must be a positive number of tokens, got {k}; use e.g. --k 5")
