"""From the pass's tensors to the summary's tables: fingerprint rows and decoded top contexts."""

from __future__ import annotations

import math
from typing import Any

import torch

from difflens.data.tokenize import decode_tokens
from difflens.methods.kl.aggregate import KLStats


def fingerprint_rows(stats: KLStats, tokenizer: Any, rows: int) -> dict[str, Any]:
    """The fingerprint ranked: ``{"top": [...], "bottom": [...], "total": Σ_v F_v}``.

    Each row: ``id``, ``token`` (decoded), ``contribution`` F_v (nats summed over positions),
    ``share`` F_v / Σ F (the fraction of the corpus' total forward KL), ``mean_p_ft``,
    ``mean_p_base`` (the token's mean probability over the counted positions)."""
    contribution, p_ft, p_base = stats.fingerprint
    n = max(1, stats.n_positions)
    total = float(contribution.sum())
    k = min(rows, contribution.numel())
    top = torch.topk(contribution, k).indices.tolist()
    bottom = torch.topk(-contribution, k).indices.tolist()

    def row(i: int, token: str) -> dict[str, Any]:
        value = float(contribution[i])
        return {"id": int(i), "token": token, "contribution": value,
                "share": value / total if total > 0 else 0.0,
                "mean_p_ft": float(p_ft[i]) / n, "mean_p_base": float(p_base[i]) / n}

    def table(ids: list[int]) -> list[dict[str, Any]]:
        return [row(i, tok) for i, tok in zip(ids, decode_tokens(tokenizer, ids), strict=True)]

    return {"top": table(top), "bottom": table(bottom), "total": total}


def decoded_contexts(stats: KLStats, tokenizer: Any) -> dict[str, list[dict[str, Any]]]:
    """Every store's entries with decoded tokens: ``text_index``, ``position``, ``score``,
    ``tokens`` (the window, decoded one by one), ``ids``, ``values`` (None where not counted),
    ``peak`` (index of the ranked position in the window), ``ft_next`` / ``base_next`` (each
    model's most likely next token there)."""
    out: dict[str, list[dict[str, Any]]] = {}
    stats._flush()
    for name, store in stats.stores.items():
        rows = []
        for j in range(len(store)):
            ids = [int(i) for i in store.ids[j] if int(i) >= 0]
            values = [None if math.isnan(float(v)) else float(v)
                      for v in store.values[j][: len(ids)]]
            text, pos = int(store.text[j]), int(store.pos[j])
            nexts = decode_tokens(tokenizer, [max(0, int(stats.top_ft[text, pos])),
                                              max(0, int(stats.top_base[text, pos]))])
            rows.append({"text_index": text, "position": pos, "score": float(store.score[j]),
                         "tokens": decode_tokens(tokenizer, ids), "ids": ids, "values": values,
                         "peak": pos - int(store.start[j]), "ft_next": nexts[0],
                         "base_next": nexts[1]})
        out[name] = rows
    return out
