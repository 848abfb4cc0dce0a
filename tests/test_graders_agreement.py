"""Agreement statistics, the recorded cases, and offline-vs-recorded agreement floors."""

from __future__ import annotations

import json
import re

import pytest

from difflens.graders import LLMGrader, OfflineGrader, agreement, load_recorded_cases
from difflens.graders import measure_agreement as measure
from difflens.llm import LLMConfig
from openai_server import Rule, openai_server_fixture  # noqa: F401 (fixture)

# Floors sit a little below the numbers measured when the cases were written (see
# docs/graders.md); a drop below them means the offline rules or thresholds regressed.
RELEVANCE_FLOOR = {"accuracy": 0.8, "kappa": 0.6}
COHERENCE_FLOOR = {"accuracy": 0.8, "kappa": 0.6}


def test_agreement_accuracy_and_kappa():
    a = [True, True, False, False, True, False, True, False]
    b = [True, False, False, False, True, True, True, False]
    result = agreement(a, b)
    assert result["n"] == 8 and result["accuracy"] == 0.75
    # p_e = 0.5·0.5 + 0.5·0.5 = 0.5 -> kappa = (0.75 - 0.5) / 0.5
    assert result["kappa"] == pytest.approx(0.5)
    assert agreement(a, a)["kappa"] == 1.0
    assert agreement(a, [not x for x in a])["kappa"] == -1.0
    assert agreement([True] * 3, [True] * 3)["kappa"] is None  # undefined, not NaN
    assert agreement([], [])["accuracy"] is None
    with pytest.raises(ValueError, match="differ in length"):
        agreement([True], [True, False])
    json.dumps(result)


def test_recorded_cases_are_well_formed():
    cases = load_recorded_cases()
    n_tokens = sum(len(c["tokens"]) for c in cases["relevance"])
    assert n_tokens >= 40 and len(cases["coherence"]) >= 20
    for case in cases["relevance"]:
        assert len(case["tokens"]) == len(case["labels"]) and case["description"]
        assert any(case["labels"]) and not all(case["labels"])
    labels = [c["label"] for c in cases["coherence"]]
    assert any(labels) and not all(labels)


def test_offline_agrees_with_recorded_answers(capsys):
    result = measure(OfflineGrader())
    with capsys.disabled():
        for kind in ("relevance", "coherence"):
            r = result[kind]
            print(
                f"\noffline vs recorded {kind}: n={r['n']} acc={r['accuracy']:.3f} "
                f"kappa={r['kappa']:.3f}",
                end="",
            )
        print("\n" + "\n".join(map(str, result["disagreements"])))
    for key, floor in RELEVANCE_FLOOR.items():
        assert result["relevance"][key] >= floor
    for key, floor in COHERENCE_FLOOR.items():
        assert result["coherence"][key] >= floor


def test_measure_agreement_works_for_an_llm_grader(openai_server):
    """The same tool checks a real endpoint; here the server answers exactly as recorded."""
    cases = load_recorded_cases()
    by_description = {
        c["description"]: dict(zip(c["tokens"], c["labels"], strict=True))
        for c in cases["relevance"]
    }
    coherent = {c["text"]: c["label"] for c in cases["coherence"]}

    def relevance(body):
        prompt = body["messages"][-1]["content"]
        labels = next(v for d, v in by_description.items() if d in prompt)
        tokens = [json.loads(t) for t in re.findall(r"^\d+\. (\".*\")$", prompt, flags=re.M)]
        return "\n".join(f"{i}: {'YES' if labels[t] else 'NO'}" for i, t in enumerate(tokens, 1))

    def coherence(body):
        prompt = body["messages"][-1]["content"]
        text = prompt.split("<<<\n", 1)[1].rsplit("\n>>>", 1)[0]
        return "ANSWER: " + ("COHERENT" if coherent[text] else "INCOHERENT")

    openai_server.add(
        Rule("Description of the finetuning", reply=relevance),
        Rule("ANSWER: COHERENT or ANSWER: INCOHERENT", reply=coherence),
    )
    config = LLMConfig(base_url=openai_server.base_url, model="m", concurrency=4)
    result = measure(LLMGrader(config, relevance_orderings=2))
    assert result["relevance"]["accuracy"] == 1.0 and result["coherence"]["kappa"] == 1.0
    assert result["disagreements"] == []
