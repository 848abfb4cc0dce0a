"""Token relevance: which mined tokens relate to a description of the finetune.

The judgement itself belongs to a grader (``difflens.graders``: an LLM or the offline
embedding backend); this module only asks and summarises, so Diff Mining does not depend on any
grader implementation — anything with ``token_relevance(tokens, description) -> list[bool]``
works.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol


class RelevanceGrader(Protocol):
    def token_relevance(self, tokens: list[str], description: str) -> list[bool]: ...


@dataclass
class Relevance:
    """Per-token verdicts and the fraction judged relevant (the seeds' token-relevance score)."""

    tokens: list[str]
    relevant: list[bool]
    fraction: float
    description: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def relevance(tokens: list[str], description: str, grader: RelevanceGrader) -> Relevance:
    """Ask ``grader`` which of ``tokens`` relate to ``description``."""
    if not tokens:
        return Relevance([], [], 0.0, description)
    verdicts = [bool(v) for v in grader.token_relevance(list(tokens), description)]
    if len(verdicts) != len(tokens):
        raise ValueError(f"grader returned {len(verdicts)} verdicts for {len(tokens)} tokens")
    return Relevance(list(tokens), verdicts, sum(verdicts) / len(verdicts), description)
