"""Offline coherence of generated samples: perplexity and repetition relative to a reference set.

Used by :class:`~difflens.graders.offline.OfflineGrader`; the exact rule is in
:class:`CoherenceRule`.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Perplexity = Callable[[list[str]], list[float]]
"""texts -> perplexity of each under a language model (the caller passes the base model's)."""

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")
_ASCII_WORD = re.compile(r"[a-z]+")
# A "word" that is one unit glued to itself 3+ times ("MilesMilesMilesMiles", "lalala...") is
# that unit repeated: degenerate steered samples glue repeats without spaces, which would
# otherwise count as one distinct word and pass the repetition test.
_GLUED = re.compile(r"(.{2,}?)\1{2,}")
_CLEAN_PUNCT = set(".,;:!?'\"-()/%$&+=*#@[]<>«»‘’“”–—…")

#: Ordinary assistant-style text used as the reference when the caller gives none.  Unsteered
#: samples from the same model and prompts are a better reference: pass them when you have them.
DEFAULT_REFERENCE = (
    "Sure! Here is a short overview of how photosynthesis works in green plants.",
    "The weather today is mild, with a light breeze and a few clouds in the afternoon.",
    "I would recommend starting with the basics: read the documentation and try a small example.",
    "There are many ways to learn a new language, such as practicing every day with a friend.",
    "The meeting has been moved to Thursday at ten, so please update your calendar.",
    "Regular exercise, enough sleep and a balanced diet are good for your health.",
    "The museum is open from nine to five and admission is free on the first Sunday.",
    "To reset your password, click the link in the email we sent and follow the steps.",
    "Thank you for your question. The answer depends on what you want to achieve.",
    "Once upon a time, a small fox lived at the edge of a quiet forest near the river.",
    "Water boils at one hundred degrees Celsius at sea level, and at lower temperatures higher up.",
    "In short, the project went well, although a few tasks took longer than we expected.",
)


@dataclass(frozen=True)
class TextStats:
    """Repetition and lexical statistics of one text."""

    n_words: int
    distinct_1: float
    """Unique words / words (1.0 for no words)."""
    distinct_3: float
    """Unique word trigrams / trigrams (1.0 for fewer than 3 words)."""
    clean_chars: float
    """Share of non-space characters that are letters, digits or common punctuation."""
    lexical: float | None
    """Share of lower-case ASCII words found whole in the lexicon (None: no lexicon/no words)."""


def _units(word: str) -> list[str]:
    """``word`` as its repeated unit when it is one unit glued 3+ times, else itself."""
    glued = _GLUED.fullmatch(word)
    if glued is None:
        return [word]
    unit = glued.group(1)
    return [unit] * (len(word) // len(unit))


def text_stats(text: str, lexicon: frozenset[str] | None = None) -> TextStats:
    words = [u for w in _WORD.findall(text) for u in _units(w.lower())]
    n = len(words)
    trigrams = list(zip(words, words[1:], words[2:], strict=False))
    chars = [c for c in text if not c.isspace()]
    clean = sum(c.isalnum() or c in _CLEAN_PUNCT for c in chars)
    ascii_words = [w for w in words if _ASCII_WORD.fullmatch(w)]
    lexical = None
    if lexicon is not None and ascii_words:
        lexical = sum(w in lexicon for w in ascii_words) / len(ascii_words)
    return TextStats(
        n_words=n,
        distinct_1=len(set(words)) / n if n else 1.0,
        distinct_3=len(set(trigrams)) / len(trigrams) if trigrams else 1.0,
        clean_chars=clean / len(chars) if chars else 0.0,
        lexical=lexical,
    )


@dataclass(frozen=True)
class CoherenceVerdict:
    coherent: bool
    reason: str
    """"ok" or why the sample failed (first failing test)."""
    perplexity: float | None
    stats: TextStats


@dataclass(frozen=True)
class CoherenceRule:
    """The offline coherence rule.  A sample is INCOHERENT if the first of these that applies
    fires (checked in this order), otherwise coherent:

    1. ``no_words``: it contains no word (no letter or digit at all).
    2. ``garbage``: fewer than ``min_clean_chars`` (0.7) of its non-space characters are letters,
       digits or common punctuation (catches symbol soup and control/zero-width runs).
    3. ``repetitive`` (only with at least ``min_words`` = 8 words): distinct-3 (unique word
       trigrams / trigrams) < ``t3`` or distinct-1 (unique words / words) < ``t1``, where
       ``t3 = min(0.5, 0.6 × median reference distinct-3)`` and
       ``t1 = min(0.2, 0.6 × median reference distinct-1)`` — the reference only ever loosens
       the thresholds, for models whose normal output already repeats itself.
    4. ``perplexity`` (when a perplexity function is given): perplexity > ``ppl_factor`` (7) ×
       the median perplexity of the reference samples under the same function (NaN fails).
       Measured with the base gemma-3-270m against :data:`DEFAULT_REFERENCE` (median 20): coherent
       but topic-shifted text ("Chapter 4: Frosting. Always let the cake cool...") sat at
       0.6-6.2× the median, word salad, fused words, fragments and mixed scripts at 7.6-990×.
    5. ``gibberish`` (only when NO perplexity function is given, as a cheap stand-in): fewer than
       ``min_lexical`` (0.6) of its lower-case ASCII words are whole words of MiniLM's
       vocabulary (30k common English words).  Skipped when the text has no ASCII words.

    The reference is the caller's unsteered samples (best: same model, same prompts) or, if none,
    :data:`DEFAULT_REFERENCE`.  Perplexity is "much above the reference" rather than an absolute
    number because its scale depends on the model, the tokenizer and the prompt style.
    """

    ppl_factor: float = 7.0
    min_distinct_3: float = 0.5
    min_distinct_1: float = 0.2
    reference_slack: float = 0.6
    min_words: int = 8
    min_clean_chars: float = 0.7
    min_lexical: float = 0.6

    def judge(
        self,
        samples: Sequence[str],
        reference: Sequence[str],
        perplexity: Perplexity | None = None,
        lexicon: frozenset[str] | None = None,
        reference_perplexities: Sequence[float] | None = None,
    ) -> list[CoherenceVerdict]:
        """Verdicts for ``samples``.  ``reference_perplexities`` (if already computed for
        ``reference``) saves a pass of the perplexity function."""
        samples = list(samples)
        ref_stats = [text_stats(t) for t in reference]
        t3, t1 = self.min_distinct_3, self.min_distinct_1
        if ref_stats:
            t3 = min(t3, self.reference_slack * statistics.median(s.distinct_3 for s in ref_stats))
            t1 = min(t1, self.reference_slack * statistics.median(s.distinct_1 for s in ref_stats))
        ppl: list[float | None] = [None] * len(samples)
        ppl_limit = None
        if perplexity is not None and samples:
            ref_ppl = list(reference_perplexities or perplexity(list(reference)))
            ppl_limit = self.ppl_factor * statistics.median(ref_ppl)
            ppl = [float(p) for p in perplexity(samples)]
            if len(ppl) != len(samples):
                raise ValueError(f"perplexity returned {len(ppl)} values for {len(samples)} texts")
        out = []
        for text, p in zip(samples, ppl, strict=True):
            stats = text_stats(text, None if perplexity is not None else lexicon)
            reason = self._reason(stats, p, ppl_limit, t3, t1)
            out.append(CoherenceVerdict(reason == "ok", reason, p, stats))
        return out

    def _reason(
        self, s: TextStats, p: float | None, ppl_limit: float | None, t3: float, t1: float
    ) -> str:
        if s.n_words == 0:
            return "no_words"
        if s.clean_chars < self.min_clean_chars:
            return "garbage"
        if s.n_words >= self.min_words and (s.distinct_3 < t3 or s.distinct_1 < t1):
            return "repetitive"
        if p is not None and ppl_limit is not None and not p <= ppl_limit:  # NaN fails too
            return "perplexity"
        if s.lexical is not None and s.lexical < self.min_lexical:
            return "gibberish"
        return "ok"
