"""Diff Mining stage 3 (pure core): token orderings from the streaming counts.

Promoted tokens (Δ > 0), each ordering best first:
  * ``topk_occurrence``: r_v = 100·c⁺_v / P, the share of positions where v is among the K most
    promoted tokens — the seed paper's main ordering;
  * ``fraction_positive``: f_v = #{Δ_t[v] > 0} / P;
  * ``average_diff``: mean Δ_t[v].
Suppressed tokens mirror them with c⁻, the fraction of negative differences and −mean Δ.
"""

from __future__ import annotations

from typing import Any

import torch

from difflens.data.tokenize import decode_tokens
from difflens.methods.mining.aggregate import MiningCounts
from difflens.methods.mining.normalize import group_variants

# With normalisation, variants are looked up among this many times ``top`` raw candidates:
# decoding all 262k tokens would take seconds for entries that can never make the list.
CANDIDATE_FACTOR = 4


def token_table(counts: MiningCounts) -> dict[str, torch.Tensor]:
    """Per-token statistics, each ``(V,)`` float64."""
    p = float(counts.n_positions)
    return {
        "rate_pos": 100.0 * counts.count_pos.double() / p,
        "rate_neg": 100.0 * counts.count_neg.double() / p,
        "frac_positive": counts.n_positive.double() / p,
        "frac_negative": counts.n_negative.double() / p,
        "avg_diff": counts.sum_delta / p,
    }


# (list name, score column, tie-break column, raw count column) per direction.
_PROMOTED = (("topk_occurrence", "rate_pos", "avg_diff", "count_pos"),
             ("fraction_positive", "frac_positive", "avg_diff", None),
             ("average_diff", "avg_diff", "rate_pos", None))
_SUPPRESSED = (("topk_occurrence", "rate_neg", "neg_avg_diff", "count_neg"),
               ("fraction_negative", "frac_negative", "neg_avg_diff", None),
               ("average_diff", "neg_avg_diff", "rate_neg", None))


def rank(score: torch.Tensor, tiebreak: torch.Tensor, limit: int) -> list[int]:
    """Ids of the ``limit`` best tokens with a positive score, by score then tie-break."""
    order = torch.argsort(tiebreak, descending=True, stable=True)
    order = order[torch.argsort(score[order], descending=True, stable=True)]
    order = order[score[order] > 0]
    return order[:limit].tolist()


def orderings(counts: MiningCounts, tokenizer: Any, top: int = 100, normalize: bool = False,
              specials: set[int] | None = None) -> dict[str, Any]:
    """All orderings, ``top`` rows each (empty lists when the models do not differ).

    Each row: ``{"token", "ids", "rate", "count", "frac", "avg_diff"}`` where ``rate`` is the
    Top-K occurrence rate in % (c⁺ or c⁻), ``frac`` the fraction of positions with the
    direction's sign and ``avg_diff`` the mean Δ; normalised rows also list ``variants``.
    """
    table = token_table(counts)
    table["neg_avg_diff"] = -table["avg_diff"]
    out: dict[str, Any] = {"n_positions": counts.n_positions, "vocab": counts.vocab,
                           "top_k": counts.top_k, "no_difference": counts.no_difference,
                           "normalized": normalize, "promoted": {}, "suppressed": {}}
    for direction, spec in (("promoted", _PROMOTED), ("suppressed", _SUPPRESSED)):
        sign = "pos" if direction == "promoted" else "neg"
        for name, score, tie, _count in spec:
            if counts.no_difference:
                out[direction][name] = []
                continue
            limit = top * CANDIDATE_FACTOR if normalize else top
            ids = rank(table[score], table[tie], limit)
            groups = (group_variants(tokenizer, ids, specials) if normalize else
                      [(text, [i], [text]) for i, text in zip(ids, decode_tokens(tokenizer, ids),
                                                              strict=True)])
            rows = [_row(table, counts, sign, label, members, texts, normalize)
                    for label, members, texts in groups]
            if normalize:  # merged scores can reorder the groups
                key = {"topk_occurrence": "rate", "fraction_positive": "frac",
                       "fraction_negative": "frac", "average_diff": "avg_diff"}[name]
                flip = -1.0 if (direction == "suppressed" and key == "avg_diff") else 1.0
                rows.sort(key=lambda r: flip * r[key], reverse=True)
            out[direction][name] = rows[:top]
    return out


def _row(table: dict[str, torch.Tensor], counts: MiningCounts, sign: str, label: str,
         members: list[int], texts: list[str], normalize: bool) -> dict[str, Any]:
    """One ordering row.  Merged variants add their counts (a position where two variants are
    both in the top-K counts twice — rare) and keep the strongest variant's fraction/mean."""
    idx = torch.tensor(members, dtype=torch.long)
    count_col = counts.count_pos if sign == "pos" else counts.count_neg
    frac = table[f"frac_{'positive' if sign == 'pos' else 'negative'}"][idx]
    avg = table["avg_diff"][idx]
    row: dict[str, Any] = {
        "token": label,
        "ids": members,
        "rate": round(float(table[f"rate_{sign}"][idx].sum()), 4),
        "count": int(count_col[idx].sum()),
        "frac": round(float(frac.max()), 6),
        "avg_diff": round(float(avg.max() if sign == "pos" else avg.min()), 6),
    }
    if normalize:
        row["variants"] = texts
    return row
