"""Tokenisation: one BOS per text (:func:`encode`), single-token decoding, first-k windows.

First-k windows are equal-length token windows, BOS kept at position 0: ADL reads only the
first k positions of each text, so texts are cut to exactly k tokens; no padding is ever needed
and a batch is a plain ``(B, k)`` tensor.  Texts shorter than k tokens are dropped, and how many
is logged.  Batches of rows of different lengths are padded by :mod:`difflens.data.padding`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
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


# Characters tokenised per wanted token before falling back to the whole text: English runs at
# ~4 characters per token, so 12 leaves a wide margin for long words, numbers and URLs.
CHARS_PER_TOKEN = 12
# Tokens past the wanted ones that the prefix must yield: the last tokens of a cut text may merge
# differently from the whole text's, so the ones kept sit at least this far from the cut.
SAFETY_TOKENS = 2


def encode_first(tokenizer: Any, texts: list[str], n: int) -> list[list[int]]:
    """The first ``n`` ids of :func:`encode` for every text, tokenising only a prefix.

    ADL keeps 5 tokens of texts that run to thousands of characters; tokenising whole texts
    was 4.0 of the 4.8 s of a 10k-text collection on a GPU.  Each text is cut to
    ``n · CHARS_PER_TOKEN`` characters, at a space when there is one (a token never spans
    the cut then), and the texts are tokenised in one batched call; a text whose prefix yields
    fewer than ``n + SAFETY_TOKENS`` ids is tokenised whole, so the ids are those of the whole
    text (tested against :func:`encode` on the shipped corpora).

    Returns:
        one list of at most ``n`` ids per text (fewer when the whole text is shorter).
    """
    budget = max(64, n * CHARS_PER_TOKEN)
    prefixes = [_cut(text, budget) for text in texts]
    encoded = _encode_batch(tokenizer, prefixes)
    redo = [i for i, (ids, text, cut) in enumerate(zip(encoded, texts, prefixes, strict=True))
            if len(cut) < len(text) and len(ids) < n + SAFETY_TOKENS]
    for i, ids in zip(redo, _encode_batch(tokenizer, [texts[i] for i in redo]), strict=True):
        encoded[i] = ids
    return [ids[:n] for ids in encoded]


def _cut(text: str, budget: int) -> str:
    """``text`` cut to about ``budget`` characters, before a space when one is near the end."""
    if len(text) <= budget:
        return text
    space = text.rfind(" ", budget // 2, budget)
    return text[:space] if space > 0 else text[:budget]


def _encode_batch(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """:func:`encode` of many texts in one tokenizer call (fast tokenizers batch in Rust)."""
    if not texts:
        return []
    rows = tokenizer(texts, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is None:
        return [list(ids) for ids in rows]
    return [list(ids) if ids and ids[0] == bos else [bos, *ids] for ids in rows]


def decode_tokens(tokenizer: Any, ids: list[int]) -> list[str]:
    """Readable text of single tokens (byte-level and SentencePiece markers resolved by the
    tokenizer's own decoder, spaces kept)."""
    return [tokenizer.decode([int(i)]) for i in ids]


def first_k_tokens(tokenizer: Any, texts: list[str], k: int) -> Any:
    """The first ``k`` tokens of each text (only a prefix of each is tokenised).

    Returns:
        ``(N, k)`` LongTensor, N = number of texts with at least k tokens.
    Raises:
        DifflensError: if ``k <= 0`` or no text has ``k`` tokens.
    """
    import torch

    check_k(k)
    rows = [ids for ids in encode_first(tokenizer, texts, k) if len(ids) >= k]
    dropped = len(texts) - len(rows)
    if dropped:
        log.info("dropped %d of %d texts shorter than %d tokens", dropped, len(texts), k)
    if not rows:
        raise DifflensError(
            f"every text of the corpus is shorter than {k} tokens; use longer texts or a smaller k"
        )
    return torch.tensor(rows, dtype=torch.long)


def first_k_batches(tokenizer: Any, texts: list[str], k: int, batch_size: int,
                    chunk_texts: int | None = None) -> Iterator[Any]:
    """The rows of :func:`first_k_tokens` in ``(B, k)`` batches of ``batch_size`` (the last may
    be smaller), tokenised chunk by chunk while the caller works on the previous batches.

    The next chunk of ``chunk_texts`` texts (default ``max(batch_size, 256)``) is tokenised in
    a background thread — fast tokenizers run in Rust without the GIL — so on a GPU the
    tokenizer's time hides behind the forward passes instead of adding to them.  The batches
    are exactly ``first_k_tokens(...)[i : i + batch_size]``; texts shorter than ``k`` are dropped
    (logged at the end) and nothing is yielded when no text has ``k`` tokens (the caller decides
    whether that is an error: under torchrun one rank's share may be empty).
    """
    from concurrent.futures import ThreadPoolExecutor

    import torch

    check_k(k)
    chunk = max(1, chunk_texts or max(batch_size, 256))
    starts = range(0, len(texts), chunk)
    pending: list[list[int]] = []
    kept = 0

    def rows(lo: int) -> list[list[int]]:
        return [ids for ids in encode_first(tokenizer, texts[lo: lo + chunk], k) if len(ids) >= k]

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="difflens-tokenize") as pool:
        future = pool.submit(rows, 0) if len(texts) else None
        for lo in starts:
            ready = future.result() if future is not None else []
            nxt = lo + chunk
            future = pool.submit(rows, nxt) if nxt < len(texts) else None
            pending.extend(ready)
            while len(pending) >= batch_size:
                batch, pending = pending[:batch_size], pending[batch_size:]
                kept += len(batch)
                yield torch.tensor(batch, dtype=torch.long)
    if pending:
        kept += len(pending)
        yield torch.tensor(pending, dtype=torch.long)
    if kept < len(texts):
        log.info("dropped %d of %d texts shorter than %d tokens", len(texts) - kept, len(texts), k)


def check_k(k: int) -> None:
    if not isinstance(k, int) or k <= 0:
        raise DifflensError(f"k must be a positive number of tokens, got {k}; use e.g. --k 5")
