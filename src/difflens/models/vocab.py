"""What two models can be compared over, token by token: the shared vocabulary, whether the LM
head is shared, the special tokens, and which positions of a padded corpus count.

Decided once here for every method that reads next-token distributions of both models over a
corpus (Diff Mining's logit differences, the per-token KL).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from difflens.data.padding import pad_id, pad_rows
from difflens.data.tokenize import encode_first
from difflens.errors import DifflensError
from difflens.models.pair import BASE, FT

if TYPE_CHECKING:
    from difflens.models.arch import Architecture
    from difflens.models.pair import ModelPair


def tokenize_padded(tokenizer: Any, texts: list[str], max_tokens: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenise ``texts`` (one BOS first), cut to ``max_tokens``, pad right.

    Returns:
        ``ids``: ``(N, T)`` int64 and ``attention``: ``(N, T)`` bool, T = ``max_tokens``.
    """
    rows = encode_first(tokenizer, texts, max_tokens)  # only a prefix of each is tokenised
    ids, mask = pad_rows(rows, pad_id(tokenizer), width=max_tokens)
    return ids, mask.bool()


def special_ids(tokenizer: Any) -> list[int]:
    """Ids of special tokens: BOS/EOS/pad and added special tokens such as chat-turn markers."""
    found = set(getattr(tokenizer, "all_special_ids", []) or [])
    for token_id, added in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items():
        if getattr(added, "special", False):
            found.add(int(token_id))
    return sorted(found)


def valid_positions(ids: torch.Tensor, attention: torch.Tensor, tokenizer: Any,
                    mask_bos: bool = False, mask_special: bool = False) -> torch.Tensor:
    """``(N, T)`` bool: positions that count (not padding; optionally not BOS / special)."""
    valid = attention.clone()
    if mask_bos and tokenizer.bos_token_id is not None:
        valid &= ids != tokenizer.bos_token_id
    if mask_special:
        specials = torch.tensor(special_ids(tokenizer), dtype=torch.long)
        valid &= ~torch.isin(ids, specials)
    return valid


def _sizes(pair: ModelPair) -> tuple[dict[str, int], dict[str, int], int]:
    sizes = {side: int(pair.arch(side).unembed.weight.shape[0]) for side in (BASE, FT)}
    inputs = {side: int(pair.arch(side).embed.weight.shape[0]) for side in (BASE, FT)}
    return sizes, inputs, len(pair.tokenizer)


def shared_vocab(pair: ModelPair) -> int:
    """Number of leading token ids both models score: min of the two unembedding sizes, cut to
    the tokenizer's length (rows past it are padding no text can produce)."""
    sizes, inputs, n_tok = _sizes(pair)
    smallest = min(*sizes.values(), *inputs.values())
    if n_tok > smallest:
        raise DifflensError(
            f"mismatched vocabularies: the tokenizer has {n_tok} tokens but the base model "
            f"scores {sizes[BASE]} and the finetuned model {sizes[FT]} (embeddings "
            f"{inputs[BASE]} / {inputs[FT]}); pair the finetune with its own base and tokenizer"
        )
    return min(*sizes.values(), n_tok)


def vocab_note(pair: ModelPair) -> str | None:
    """One line saying that the comparison is restricted to the shared vocabulary, when the two
    heads (or the tokenizer) differ in size; None when they all agree."""
    sizes, _inputs, n_tok = _sizes(pair)
    shared = shared_vocab(pair)
    if sizes[BASE] == sizes[FT] == shared:
        return None
    return (f"the base model scores {sizes[BASE]} tokens, the finetuned model {sizes[FT]} and "
            f"the tokenizer has {n_tok}: compared over the {shared} shared token ids "
            f"(0..{shared - 1}); each model's distribution is renormalised over them")


def shares_head(base: Architecture, ft: Architecture) -> bool:
    """True when both sides unembed with the same plain linear map and no softcap, so that
    Δ = W·(norm_ft(h_ft) − norm_base(h_base)) exactly (a bias cancels)."""
    ub, uf = base.unembed, ft.unembed
    plain = type(ub) is torch.nn.Linear and type(uf) is torch.nn.Linear  # not a LoRA wrapper
    if not plain or base.logit_softcap or ft.logit_softcap:
        return False
    if ub is uf or ub.weight is uf.weight:
        return True
    return ub.weight.shape == uf.weight.shape and bool(torch.equal(ub.weight, uf.weight))
