"""Graders that ask an LLM behind any OpenAI-compatible endpoint."""

from __future__ import annotations

import math
import random
from typing import Any

from difflens.graders import prompts
from difflens.graders.base import Grader, ScaleChoice
from difflens.llm import LLMClient, LLMConfig


def _user(content: str) -> list[dict[str, Any]]:
    # User turns only: several local chat templates (Gemma, some llama.cpp builds) reject or
    # mangle system messages.
    return [{"role": "user", "content": content}]


class LLMGrader(Grader):
    """LLM-backed grader.

    - ``coherent``: one request per sample (independent verdicts, run concurrently).
    - ``choose_patchscope_scale``: one request showing every scale's tokens.
    - ``token_relevance``: the list is asked in ``relevance_orderings`` different orders
      (original, reversed, then seeded shuffles); a token counts as relevant only if every
      ordering says YES, which removes position bias and most one-off slips.
    - ``hypothesis_score``: ``score_repeats`` independent requests, averaged.

    Malformed answers are re-asked by the client (``LLMConfig.max_parse_retries``).
    """

    backend = "llm"

    def __init__(
        self,
        client: LLMClient | LLMConfig,
        *,
        relevance_orderings: int = 3,
        score_repeats: int = 3,
        seed: int = 0,
    ) -> None:
        if relevance_orderings < 1 or score_repeats < 1:
            raise ValueError("relevance_orderings and score_repeats must be >= 1")
        self.client = client if isinstance(client, LLMClient) else LLMClient(client)
        self.relevance_orderings = relevance_orderings
        self.score_repeats = score_repeats
        self.seed = seed

    # -- the four judgements --------------------------------------------------------------------
    def coherent(self, samples: list[str]) -> list[bool]:
        conversations = [_user(prompts.coherence_prompt(s)) for s in samples]
        results = self.client.chat_many(conversations, parse=prompts.parse_coherence)
        return [bool(r.parsed) for r in results]

    def choose_patchscope_scale(self, token_lists: dict[float, list[str]]) -> ScaleChoice:
        if not token_lists:
            raise ValueError("choose_patchscope_scale needs at least one scale")
        result = self.client.chat(
            _user(prompts.scale_prompt(token_lists)),
            parse=lambda text: prompts.parse_scale(text, token_lists),
        )
        return result.parsed

    def token_relevance(self, tokens: list[str], description: str) -> list[bool]:
        if not tokens:
            return []
        orders = self._orderings(len(tokens))
        conversations = [
            _user(prompts.relevance_prompt([tokens[i] for i in order], description))
            for order in orders
        ]
        results = self.client.chat_many(
            conversations, parse=lambda text: prompts.parse_relevance(text, len(tokens))
        )
        verdict = [True] * len(tokens)
        for order, result in zip(orders, results, strict=True):
            for position, original_index in enumerate(order):
                verdict[original_index] &= result.parsed[position]
        return verdict

    def hypothesis_score(self, hypothesis: str, description: str, rubric: str) -> float:
        prompt = prompts.hypothesis_prompt(hypothesis, description, rubric)
        results = self.client.chat_many(
            [_user(prompt)] * self.score_repeats, parse=prompts.parse_score
        )
        return sum(r.parsed for r in results) / len(results)

    # -- reporting ------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "model": self.client.config.model,
            "endpoint": self.client.endpoint,
            "relevance_orderings": self.relevance_orderings,
            "score_repeats": self.score_repeats,
        }

    def accounting(self) -> dict[str, Any]:
        return {"backend": self.backend, **self.client.usage()}

    def _orderings(self, n: int) -> list[list[int]]:
        """Original, reversed, then shuffles (deterministic per seed and list length), without
        duplicates: a 1-token list is asked once, a 2-token list twice."""
        identity = list(range(n))
        orders = [identity]
        candidates = [identity[::-1]]
        rng = random.Random(self.seed * 100_003 + n)
        for _ in range(20 * self.relevance_orderings):
            if len(orders) >= min(self.relevance_orderings, math.factorial(min(n, 10))):
                break
            order = candidates.pop() if candidates else rng.sample(identity, n)
            if order not in orders:
                orders.append(order)
        return orders
