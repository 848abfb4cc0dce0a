"""The one grader interface shared by the LLM and the offline backends."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ScaleChoice:
    """The Patchscope scale a grader picked and the coherent tokens read at that scale."""

    scale: float
    coherent_tokens: list[str] = field(default_factory=list)
    """Tokens of the chosen scale that share its theme, in the order they were given (may be
    empty when no scale reads anything coherent)."""

    def to_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "coherent_tokens": list(self.coherent_tokens)}


class Grader(ABC):
    """Small typed judgements that ADL, Diff Mining and the agent need.

    Two backends implement it: :class:`~difflens.graders.llm_grader.LLMGrader` (asks an
    OpenAI-compatible endpoint) and :class:`~difflens.graders.offline.OfflineGrader` (no key,
    no network: perplexity, repetition statistics and MiniLM embeddings).  Callers should not care
    which one they hold; reports should record :meth:`describe` and :meth:`accounting`.
    """

    backend: str = "abstract"
    """"llm" or "offline"."""

    @abstractmethod
    def coherent(self, samples: list[str]) -> list[bool]:
        """Is each generated sample coherent text (not gibberish, not stuck repeating)?"""

    @abstractmethod
    def choose_patchscope_scale(self, token_lists: dict[float, list[str]]) -> ScaleChoice:
        """Given the top Patchscope tokens per scale, pick the scale whose tokens are most
        semantically coherent and list those coherent tokens."""

    @abstractmethod
    def token_relevance(self, tokens: list[str], description: str) -> list[bool]:
        """Is each token related to the finetuning described by ``description``?"""

    @abstractmethod
    def hypothesis_score(self, hypothesis: str, description: str, rubric: str) -> float:
        """Score a hypothesis of the finetuning objective against the true ``description`` with a
        1-5 ``rubric`` (an empty rubric means the default one); returns a float in [1, 5]."""

    def describe(self) -> dict[str, Any]:
        """JSON-safe description of the backend and its settings, for reports."""
        return {"backend": self.backend}

    def accounting(self) -> dict[str, Any]:
        """JSON-safe usage so far (LLM calls and tokens; nothing for offline graders)."""
        return {"backend": self.backend}
