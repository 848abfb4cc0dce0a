"""How often two graders (or a grader and recorded labels) agree.

``recorded_cases.json`` holds hand-written labels in the role of an LLM grader's answers: token
relevance cases and coherence samples.  :func:`measure_agreement` grades them with any grader and
compares, which is how the offline backend's agreement in docs/graders.md was measured, and how a
new LLM endpoint can be sanity-checked before a run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources
from typing import Any

from difflens.graders.base import Grader


def agreement(a: Sequence[bool], b: Sequence[bool]) -> dict[str, Any]:
    """Accuracy and Cohen's kappa of two boolean label lists.

    kappa = (p_o − p_e) / (1 − p_e); it is ``None`` when undefined (both raters gave one and the
    same label to everything, p_e = 1).
    """
    if len(a) != len(b):
        raise ValueError(f"label lists differ in length: {len(a)} vs {len(b)}")
    n = len(a)
    if n == 0:
        return {"n": 0, "accuracy": None, "kappa": None, "rate_a": None, "rate_b": None}
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    rate_a = sum(map(bool, a)) / n
    rate_b = sum(map(bool, b)) / n
    expected = rate_a * rate_b + (1 - rate_a) * (1 - rate_b)
    kappa = None if expected >= 1.0 else (observed - expected) / (1.0 - expected)
    return {"n": n, "accuracy": observed, "kappa": kappa, "rate_a": rate_a, "rate_b": rate_b}


def load_recorded_cases() -> dict[str, Any]:
    """The bundled recorded cases: ``{"relevance": [{description, tokens, labels}], "coherence":
    [{text, label}]}``."""
    text = resources.files("difflens.graders").joinpath("recorded_cases.json").read_text("utf-8")
    return json.loads(text)


def measure_agreement(grader: Grader, cases: dict[str, Any] | None = None) -> dict[str, Any]:
    """Grade the recorded cases with ``grader`` and compare with their labels.

    Returns ``{"relevance": agreement, "coherence": agreement, "disagreements": [...]}`` where
    each disagreement names the case, the recorded label and the grader's answer.
    """
    cases = cases or load_recorded_cases()
    expected: list[bool] = []
    got: list[bool] = []
    disagreements: list[dict[str, Any]] = []
    for case in cases["relevance"]:
        answers = grader.token_relevance(list(case["tokens"]), case["description"])
        for token, label, answer in zip(case["tokens"], case["labels"], answers, strict=True):
            expected.append(bool(label))
            got.append(answer)
            if bool(label) != answer:
                disagreements.append(
                    {"kind": "relevance", "case": token, "recorded": label, "grader": answer}
                )
    relevance = agreement(expected, got)

    texts = [c["text"] for c in cases["coherence"]]
    labels = [bool(c["label"]) for c in cases["coherence"]]
    answers = grader.coherent(texts)
    for text, label, answer in zip(texts, labels, answers, strict=True):
        if label != answer:
            disagreements.append(
                {"kind": "coherence", "case": text[:80], "recorded": label, "grader": answer}
            )
    return {
        "relevance": relevance,
        "coherence": agreement(labels, answers),
        "disagreements": disagreements,
    }
