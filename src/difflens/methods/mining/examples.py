"""Example contexts: corpus positions where the finetuned model promotes a token the most.

A second, cheap pass over the sampled top-K ids/values ``(M, K)`` kept by
:class:`~difflens.methods.mining.aggregate.MiningCounts` — no model is run.  The examples are
thus drawn from exactly the positions the Top-K occurrence rate counts, ranked by Δ.
"""

from __future__ import annotations

from typing import Any

import torch

from difflens.methods.mining.aggregate import MiningCounts

CONTEXT_TOKENS = 24  # tokens of left context shown (the promoted token follows them)


def example_contexts(counts: MiningCounts, groups: list[tuple[str, list[int]]],
                     ids: torch.Tensor, attention: torch.Tensor, tokenizer: Any,
                     n_examples: int = 3, window: int = CONTEXT_TOKENS) -> list[dict[str, Any]]:
    """For each ``(label, token_ids)`` group, the ``n_examples`` sampled positions with the
    largest Δ on any of its ids.

    Args:
        ids, attention: the tokenised corpus, ``(N, T)``.
    Returns:
        ``[{"token": label, "examples": [{"context", "promoted", "next", "delta",
        "text_index", "position"}]}]`` in the order of ``groups``.
    """
    t_len = ids.shape[1]
    wanted = torch.tensor(sorted({i for _, members in groups for i in members}), dtype=torch.long)
    hit = torch.isin(counts.sample_idx.long(), wanted) & (counts.sample_val > 0)
    rows, cols = hit.nonzero(as_tuple=True)  # a few entries per candidate token: small
    tok = counts.sample_idx[rows, cols].long()
    val = counts.sample_val[rows, cols]
    out = []
    for label, members in groups:
        mine = torch.isin(tok, torch.tensor(members, dtype=torch.long))
        r, v, tk = rows[mine], val[mine], tok[mine]
        order = torch.argsort(v, descending=True)[:n_examples]
        examples = []
        for j in order.tolist():
            pid = int(counts.sample_ids[r[j]])
            text, pos = divmod(pid, t_len)
            left = ids[text, max(0, pos - window + 1): pos + 1].tolist()
            nxt = None
            if pos + 1 < t_len and bool(attention[text, pos + 1]):
                nxt = tokenizer.decode([int(ids[text, pos + 1])])
            examples.append({
                "context": tokenizer.decode(left, skip_special_tokens=True),
                "promoted": tokenizer.decode([int(tk[j])]),
                "next": nxt,
                "delta": round(float(v[j]), 4),
                "text_index": text,
                "position": pos,
            })
        out.append({"token": label, "examples": examples})
    return out
