"""Token relevance of ADL readouts against a description of the finetune.

For each readout (logit lens of δ̄, Patchscope at the chosen scale, baselines) the grader marks
each of the top-20 tokens relevant or not; reported are:
  * ``fraction``: share of relevant tokens;
  * ``weighted_fraction``: the same weighted by the readout's probabilities;
  * ``trivial_baseline``: the fraction a trivial method scores — the relevance of the finetune
    documents' 20 most frequent non-generic words (generic = among the reference corpus's 300
    most frequent words), graded by the same grader;
  * ``overlap_with_frequent``: share of the readout's tokens that are among the documents' 100
    most frequent non-generic words (how much of the readout one could get by counting words).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

_WORD = re.compile(r"[A-Za-z][A-Za-z'-]+")


def frequent_words(texts: list[str], generic: set[str], top: int) -> list[str]:
    """The ``top`` most frequent lowercase words of ``texts`` not in ``generic``."""
    counts = Counter(w.lower() for t in texts for w in _WORD.findall(t))
    return [w for w, _ in counts.most_common() if w not in generic and len(w) > 2][:top]


def generic_words(reference: list[str], top: int = 300) -> set[str]:
    counts = Counter(w.lower() for t in reference for w in _WORD.findall(t))
    return {w for w, _ in counts.most_common(top)}


def relevance_stage(readouts: dict[str, tuple[list[str], list[float]]], description: str | None,
                    grader: Any, ft_texts: list[str] | None, reference: list[str],
                    top: int = 20) -> dict[str, Any]:
    """Grade ``readouts`` (name → (tokens, probs)); skipped with a note without a description."""
    if not description:
        return {"skipped": "no description of the finetune (the organism card has none, and "
                           "--description was not given): token relevance was not computed"}
    out: dict[str, Any] = {"description": description, "grader": grader.describe(),
                           "readouts": {}}
    frequent: list[str] = []
    if ft_texts:
        frequent = frequent_words(ft_texts, generic_words(reference), 100)
        baseline_tokens = frequent[:top]
        verdicts = grader.token_relevance(baseline_tokens, description)
        out["trivial_baseline"] = {"tokens": baseline_tokens, "relevant": verdicts,
                                   "fraction": _mean(verdicts)}
    for name, (tokens, probs) in readouts.items():
        tokens, probs = tokens[:top], probs[:top]
        cleaned = [t.strip() for t in tokens]
        verdicts = grader.token_relevance(cleaned, description)
        weight = sum(probs) or 1.0
        freq = set(frequent)
        out["readouts"][name] = {
            "tokens": tokens,
            "relevant": verdicts,
            "fraction": _mean(verdicts),
            "weighted_fraction": sum(p for p, v in zip(probs, verdicts, strict=True) if v)
            / weight,
            "trivial_baseline": out.get("trivial_baseline", {}).get("fraction", 0.0),
            "overlap_with_frequent": _mean([t.lower() in freq for t in cleaned]),
        }
    out["accounting"] = grader.accounting()
    return out


def _mean(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else 0.0
