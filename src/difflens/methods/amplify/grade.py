"""What amplification surfaces: the rate of the finetune's behaviour and coherence, per α.

**Rate, offline** (no key): each sample's score is its mean cosine (MiniLM) to the finetune's
documents, ``s_i = e_i · mean_j e_j`` — the same score as ADL's steering similarity.  A sample
*shows the finetune's domain* when its score exceeds the ``quantile`` (0.95) of the same score
over general reference texts: it is closer to the finetune's data than 95% of ordinary text
is.  The threshold depends on the documents and the reference only, never on the samples, so
the rates of different α (and of α = 0, the unamplified baseline) are comparable.  Without
documents the finetune's description stands in for them (one "document").

**Rate, LLM**: one yes/no question per sample (does this text show the behaviour described?).

**Coherence**: the grader's ``coherent`` verdicts; the offline grader compares with the α = 0
samples (its reference), so coherence is relative to the unamplified finetune.

Every rate is a mean of 0/1 verdicts with a percentile bootstrap interval over samples.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from difflens.stats.bootstrap import bootstrap_mean

BEHAVIOUR_PROMPT = (
    "A language model was finetuned. What the finetuning taught it:\n\n{description}\n\n"
    "Here is a text the model wrote in reply to an unrelated, neutral request:\n\n"
    "<text>\n{sample}\n</text>\n\n"
    "Does this text show the finetuned behaviour or talk about the finetuning's topic? "
    "Answer with one word: YES or NO."
)


def _parse_yes_no(text: str) -> bool:
    words = re.findall(r"[A-Za-z]+", text.upper())
    for word in reversed(words):
        if word in ("YES", "NO"):
            return word == "YES"
    raise ValueError(f"expected YES or NO, got {text[:80]!r}")


class EmbeddingRate:
    """Offline rate rule (module docstring): samples vs finetune documents, thresholded at a
    quantile of reference texts."""

    backend = "offline"

    def __init__(self, ft_texts: list[str], ref_texts: list[str], quantile: float,
                 embedder: Any = None) -> None:
        if embedder is None:
            from difflens.embeddings import load_embedder

            embedder = load_embedder()
        self.embedder = embedder
        self.center = np.asarray(embedder.embed(list(ft_texts)), dtype=np.float64).mean(axis=0)
        ref = np.asarray(embedder.embed(list(ref_texts)), dtype=np.float64) @ self.center
        self.threshold = float(np.quantile(ref, quantile))
        self.quantile = quantile
        self.n_docs, self.n_ref = len(ft_texts), len(ref_texts)

    def scores(self, samples: list[str]) -> list[float]:
        """``(n,)`` mean cosine of each sample to the finetune documents."""
        if not samples:
            return []
        emb = np.asarray(self.embedder.embed([s if s.strip() else " " for s in samples]),
                         dtype=np.float64)
        return [float(v) for v in emb @ self.center]

    def describe(self) -> dict[str, Any]:
        return {"backend": "offline", "rule": f"mean cosine to the finetune documents above "
                f"the {self.quantile:g} quantile of reference texts", "threshold": self.threshold,
                "n_documents": self.n_docs, "n_reference": self.n_ref}


class LLMRate:
    """LLM rate rule: one YES/NO request per sample, sent concurrently."""

    backend = "llm"

    def __init__(self, grader: Any, description: str) -> None:
        self.client, self.description = grader.client, description

    def verdicts(self, samples: list[str]) -> list[bool]:
        conversations = [[{"role": "user", "content": BEHAVIOUR_PROMPT.format(
            description=self.description, sample=s)}] for s in samples]
        return [bool(r.parsed) for r in self.client.chat_many(conversations,
                                                                parse=_parse_yes_no)]

    def describe(self) -> dict[str, Any]:
        return {"backend": "llm", "rule": "LLM YES/NO: does the sample show the finetuned "
                                          "behaviour?", "model": self.client.config.model}


def grade_alpha(samples: list[str], rate: EmbeddingRate | LLMRate | None, grader: Any,
                n_boot: int, seed: int) -> dict[str, Any]:
    """Rate and coherence of one α's samples, each with its bootstrap interval.

    Returns ``{"rate": {mean, ci_low, ci_high, n}, "coherence": {...}, "shows": [bool],
    "coherent": [bool]}`` (rate and shows None without a rate rule) plus, offline, ``"score"``
    (mean similarity with interval) and ``"scores"`` (per sample).
    """
    out: dict[str, Any] = {}
    shows: list[bool] | None = None
    if rate is None:
        pass
    elif isinstance(rate, EmbeddingRate):
        scores = rate.scores(samples)
        shows = [s > rate.threshold for s in scores]
        out["scores"] = scores
        out["score"] = bootstrap_mean(scores, n_boot, seed)
    else:
        shows = rate.verdicts(samples)
    coherent = [bool(v) for v in grader.coherent(samples)] if samples else []
    out.update(shows=shows, coherent=coherent,
               rate=None if shows is None
               else bootstrap_mean([float(v) for v in shows], n_boot, seed),
               coherence=bootstrap_mean([float(v) for v in coherent], n_boot, seed))
    return out
