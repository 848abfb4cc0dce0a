"""Graders that need no key and no network: perplexity, repetition statistics and MiniLM."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from difflens.graders import token_sets
from difflens.graders.base import Grader, ScaleChoice
from difflens.graders.coherence import (
    DEFAULT_REFERENCE,
    CoherenceRule,
    CoherenceVerdict,
    Perplexity,
)
from difflens.graders.embeddings import Embedder, minilm, wordpiece_vocabulary

#: Token relevance threshold on cosine(token, description) with MiniLM.  Calibrated on the
#: hand-labelled pairs in tests/test_graders_offline.py (accuracy and the best threshold there are
#: printed by that test); unrelated words score ~0.0-0.15, domain words ~0.2-0.6.
RELEVANCE_THRESHOLD = 0.2

#: Hypothesis score = 1 + 4 × clip((cos − LOW) / (HIGH − LOW), 0, 1) with cos = cosine(hypothesis,
#: description).  Crude: it rewards topical overlap and ignores the rubric's finer points.
HYPOTHESIS_LOW, HYPOTHESIS_HIGH = 0.15, 0.75


class OfflineGrader(Grader):
    """Offline counterpart of every LLM grader.

    - ``coherent``: :class:`~difflens.graders.coherence.CoherenceRule` (perplexity from the
      injected ``perplexity`` function and repetition relative to ``reference_samples``;
      a lexicon check stands in for perplexity when none is given).
    - ``choose_patchscope_scale``: semantic tightness of each scale's tokens with MiniLM
      (see :func:`~difflens.graders.token_sets.set_score`), smallest scale within tolerance of
      the best.
    - ``token_relevance``: cosine(MiniLM(token), MiniLM(description)) >= ``relevance_threshold``;
      punctuation, numbers and function words are never relevant.
    - ``hypothesis_score``: cosine(hypothesis, description) mapped linearly to 1-5.  Crude; the
      rubric is ignored.  Use an LLM grader for scores you intend to report.
    """

    backend = "offline"

    def __init__(
        self,
        perplexity: Perplexity | None = None,
        *,
        reference_samples: Sequence[str] | None = None,
        embed: Embedder | None = None,
        coherence_rule: CoherenceRule | None = None,
        tightness: token_sets.TightnessSettings | None = None,
        relevance_threshold: float = RELEVANCE_THRESHOLD,
    ) -> None:
        self.perplexity = perplexity
        self.rule = coherence_rule or CoherenceRule()
        self.tightness = tightness or token_sets.TightnessSettings()
        self.relevance_threshold = relevance_threshold
        self._embed = embed or minilm()
        self._lock = threading.Lock()
        self._reference: list[str] = []
        self._reference_ppl: list[float] | None = None
        self.set_reference(reference_samples)
        self.last_scale_scores: dict[float, float] = {}
        """Per-scale tightness scores of the last :meth:`choose_patchscope_scale` call."""

    def set_reference(self, samples: Sequence[str] | None) -> None:
        """Use these unsteered samples as the coherence reference (None: the bundled default)."""
        cleaned = [s for s in (samples or ()) if s.strip()]
        with self._lock:
            self._reference = cleaned or list(DEFAULT_REFERENCE)
            self._reference_ppl = None  # recomputed lazily, once

    # -- the four judgements --------------------------------------------------------------------
    def coherent(self, samples: list[str]) -> list[bool]:
        return [v.coherent for v in self.explain_coherence(samples)]

    def explain_coherence(self, samples: list[str]) -> list[CoherenceVerdict]:
        """Like :meth:`coherent`, with the reason, perplexity and statistics of each verdict."""
        if not samples:
            return []
        lexicon = None if self.perplexity is not None else wordpiece_vocabulary()
        return self.rule.judge(
            samples,
            self._reference,
            perplexity=self.perplexity,
            lexicon=lexicon,
            reference_perplexities=self._reference_perplexities(),
        )

    def choose_patchscope_scale(self, token_lists: dict[float, list[str]]) -> ScaleChoice:
        choice, scores = token_sets.choose_scale(token_lists, self._embed, self.tightness)
        self.last_scale_scores = scores
        return choice

    def token_relevance(self, tokens: list[str], description: str) -> list[bool]:
        scores = self.relevance_scores(tokens, description)
        return [bool(s >= self.relevance_threshold) for s in scores]

    def relevance_scores(self, tokens: list[str], description: str) -> list[float]:
        """The cosine similarities behind :meth:`token_relevance` (0 for non-candidates)."""
        if not tokens:
            return []
        return [float(s) for s in token_sets.relevance_scores(tokens, description, self._embed)]

    def hypothesis_score(self, hypothesis: str, description: str, rubric: str) -> float:
        if not hypothesis.strip():
            return 1.0
        vectors = self._embed([hypothesis, description])
        cosine = float(vectors[0] @ vectors[1])
        fraction = (cosine - HYPOTHESIS_LOW) / (HYPOTHESIS_HIGH - HYPOTHESIS_LOW)
        return 1.0 + 4.0 * float(np.clip(fraction, 0.0, 1.0))

    # -- reporting ------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "embedder": "all-MiniLM-L6-v2 (bundled)",
            "coherence": {
                **asdict(self.rule),
                "perplexity": self.perplexity is not None,
                "reference_samples": len(self._reference),
            },
            "scale_choice": asdict(self.tightness),
            "relevance_threshold": self.relevance_threshold,
            "hypothesis_cosine_range": [HYPOTHESIS_LOW, HYPOTHESIS_HIGH],
        }

    def _reference_perplexities(self) -> list[float] | None:
        if self.perplexity is None:
            return None
        with self._lock:
            if self._reference_ppl is None:
                self._reference_ppl = [float(p) for p in self.perplexity(list(self._reference))]
            return self._reference_ppl
