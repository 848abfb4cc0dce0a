"""Optional token normalisation: readable, merged token labels for the orderings.

Tokenizers split one word into many entries (``"cake"``, ``" cake"``, ``" Cake"``, ``"CAKE"``)
and spend slots on punctuation and special tokens.  With normalisation on, each token is decoded
(byte-level and SentencePiece markers resolved by the tokenizer's own decoder), stripped and
lower-cased; tokens with the same key merge into one entry; keys without any letter or digit,
undecodable byte fragments (``"\\ufffd"``) and special tokens are dropped.
"""

from __future__ import annotations

from typing import Any

from difflens.data.tokenize import decode_tokens


def normalize_key(text: str) -> str | None:
    """Merge key of a decoded token, or None when the token should be dropped."""
    key = text.strip().lower()
    if not key or "\ufffd" in key or not any(ch.isalnum() for ch in key):
        return None
    return key


def group_variants(tokenizer: Any, ids: list[int], specials: set[int] | None = None
                   ) -> list[tuple[str, list[int], list[str]]]:
    """Group ``ids`` by normalised key, in order of each key's first id.

    Returns:
        ``[(key, member_ids, member_texts)]``; dropped tokens appear in no group.
    """
    specials = specials or set()
    groups: dict[str, tuple[list[int], list[str]]] = {}
    for token_id, text in zip(ids, decode_tokens(tokenizer, ids), strict=True):
        key = None if token_id in specials else normalize_key(text)
        if key is None:
            continue
        members, texts = groups.setdefault(key, ([], []))
        members.append(int(token_id))
        texts.append(text)
    return [(key, members, texts) for key, (members, texts) in groups.items()]
