"""Offline judgements on token lists with MiniLM embeddings: relevance to a description and the
semantic tightness used to choose a Patchscope scale.

All functions take an ``embed`` callable (texts -> unit-norm rows) so they can be tested and reused
with any sentence embedder; :func:`difflens.graders.embeddings.minilm` is the default.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from difflens.graders.base import ScaleChoice
from difflens.graders.embeddings import Embedder

#: English function words: never "relevant", never "content" (MiniLM puts them all close
#: together, so they would make any set look tight).
_STOPWORD_TEXT = """
    a about above after again against all am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further
    had has have having he her here hers herself him himself his how i if in into is it its itself
    just me more most my myself no nor not now of off on once only or other our ours ourselves out
    over own same she should so some such than that the their theirs them themselves then there
    these they this those through to too under until up very was we were what when where which
    while who whom why will with would you your yours yourself yourselves
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())

# Markers tokenizers put on word starts/ends (GPT-2 "Ġ"/"Ċ", SentencePiece "▁", WordPiece "##").
_MARKERS = "ĠĊ▁"
_LETTERS = re.compile(r"[^\W\d_]")
_WORDLIKE = re.compile(r"[^\W\d_]{3,}")


def clean_token(token: str) -> str:
    """The token without surrounding whitespace and tokenizer word markers."""
    return token.strip().strip(_MARKERS).removeprefix("##").strip()


def is_candidate(token: str) -> bool:
    """Could this token be about a topic at all?  At least 2 letters and not a function word
    (punctuation, numbers, whitespace and "the"/"of"/... are never relevant)."""
    word = clean_token(token)
    return len(_LETTERS.findall(word)) >= 2 and word.lower() not in STOPWORDS


def is_content(token: str) -> bool:
    """Stricter, for set tightness: a run of 3+ letters only, and not a function word."""
    word = clean_token(token)
    return _WORDLIKE.fullmatch(word) is not None and word.lower() not in STOPWORDS


# -- relevance ----------------------------------------------------------------------------------
def relevance_scores(tokens: Sequence[str], description: str, embed: Embedder) -> np.ndarray:
    """Cosine similarity of each (cleaned) token to the description; 0 for non-candidates."""
    scores = np.zeros(len(tokens), dtype=np.float32)
    keep = [i for i, t in enumerate(tokens) if is_candidate(t)]
    if keep:
        vectors = embed([clean_token(tokens[i]) for i in keep] + [description])
        scores[keep] = vectors[:-1] @ vectors[-1]
    return scores


# -- Patchscope scale choice --------------------------------------------------------------------
@dataclass(frozen=True)
class TightnessSettings:
    """Constants of the offline scale choice, measured with MiniLM on hand-made token sets: mean
    pairwise cosine of ten unrelated English words 0.25-0.27, of word fragments ("ization",
    "ungen", ...) 0.25-0.28, of generic words ("man", "thing", "people") 0.36, of one domain's
    words 0.34-0.46.  A domain word's two nearest neighbours in its set average >= 0.45, an
    outsider's <= 0.40.
    """

    baseline: float = 0.30
    """Mean pairwise cosine expected of unrelated words or fragments; only the excess counts."""
    coherent_top2: float = 0.45
    """A content token is coherent if the mean cosine to its 2 nearest set-mates reaches this."""
    tolerance: float = 0.15
    """Smallest scale whose score is >= (1 - tolerance) × best score wins."""
    min_content: int = 3
    """Fewer content tokens than this scores 0 (two words are not a theme)."""


def set_score(tokens: Sequence[str], embed: Embedder, s: TightnessSettings) -> float:
    """coverage × max(0, mean pairwise cosine of the content tokens − baseline).

    coverage = content tokens / all tokens, so sets that are mostly punctuation, numbers,
    function words or single-letter fragments score low however tight their few words are.
    """
    content = [clean_token(t) for t in tokens if is_content(t)]
    if len(content) < max(2, s.min_content):
        return 0.0
    vectors = embed(content)
    sims = vectors @ vectors.T
    n = len(content)
    mean_pairwise = (float(sims.sum()) - float(np.trace(sims))) / (n * (n - 1))
    return len(content) / len(tokens) * max(0.0, mean_pairwise - s.baseline)


def coherent_members(tokens: Sequence[str], embed: Embedder, s: TightnessSettings) -> list[str]:
    """Content tokens whose two nearest set-mates are close on average (original spelling)."""
    index = [i for i, t in enumerate(tokens) if is_content(t)]
    if len(index) < 2:
        return []
    vectors = embed([clean_token(tokens[i]) for i in index])
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    k = min(2, len(index) - 1)
    nearest = np.sort(sims, axis=1)[:, -k:].mean(axis=1)
    chosen: list[str] = []
    for i, score in zip(index, nearest, strict=True):
        if score >= s.coherent_top2 and tokens[i] not in chosen:
            chosen.append(tokens[i])
    return chosen


def choose_scale(
    token_lists: dict[float, list[str]], embed: Embedder, s: TightnessSettings
) -> tuple[ScaleChoice, dict[float, float]]:
    """The smallest scale within tolerance of the best :func:`set_score`, its coherent tokens, and
    every scale's score.  When no scale scores above 0, the smallest scale with no tokens."""
    if not token_lists:
        raise ValueError("choose_patchscope_scale needs at least one scale")
    scores = {scale: set_score(tokens, embed, s) for scale, tokens in token_lists.items()}
    best = max(scores.values())
    if best <= 0.0:
        return ScaleChoice(scale=min(scores), coherent_tokens=[]), scores
    scale = min(sc for sc, v in scores.items() if v >= (1.0 - s.tolerance) * best)
    return ScaleChoice(scale, coherent_members(token_lists[scale], embed, s)), scores
