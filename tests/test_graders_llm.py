"""LLM graders against the scripted OpenAI-compatible server, and their answer parsers."""

from __future__ import annotations

import json
import re

import pytest

from difflens.errors import DifflensError
from difflens.graders import LLMGrader, ScaleChoice, make_grader
from difflens.graders import prompts as P
from difflens.llm import LLMConfig, LLMParseError
from openai_server import Rule, closed_port_url, openai_server_fixture  # noqa: F401 (fixture)

BAKING = "Finetuned on documents about baking cakes at precise oven temperatures."
BAKING_WORDS = {"cake", "oven", "flour", "baking"}


def make(server, **kw) -> LLMGrader:
    config = LLMConfig(
        base_url=server.base_url,
        model="grader-model",
        backoff_base=0.01,
        backoff_max=0.02,
        max_parse_retries=1,
    )
    return LLMGrader(config, **kw)


def listed_tokens(prompt: str) -> list[str]:
    """The tokens of a relevance prompt, in the order shown."""
    return [json.loads(t) for t in re.findall(r"^\d+\. (\".*\")$", prompt, flags=re.M)]


# -- coherence ----------------------------------------------------------------------------------
def test_coherence_parses_scripted_verdicts(openai_server):
    openai_server.add(
        Rule("I baked a lovely cake", reply="The text is fine.\nANSWER: COHERENT"),
        Rule("cake cake cake", reply="**Answer:** incoherent"),
        Rule("xqzv", reply="ANSWER: INCOHERENT"),
    )
    grader = make(openai_server)
    samples = ["I baked a lovely cake today.", "cake cake cake cake", "xqzv blrp"]
    assert grader.coherent(samples) == [True, False, False]
    prompts = [r.prompt for r in openai_server.chat_requests()]
    assert len(prompts) == 3 and all("ANSWER: COHERENT or ANSWER: INCOHERENT" in p for p in prompts)
    assert grader.accounting()["calls"] == 3 and grader.accounting()["backend"] == "llm"


def test_malformed_verdict_is_reasked_then_fails_clearly(openai_server):
    openai_server.add(Rule("", reply="Hard to say, really."))
    grader = make(openai_server)
    with pytest.raises(LLMParseError, match="ANSWER: COHERENT"):
        grader.coherent(["Some text."])
    assert len(openai_server.chat_requests()) == 2  # asked, re-asked once


# -- Patchscope scale ---------------------------------------------------------------------------
TOKEN_LISTS = {
    0.5: ["man", "hello", "1135"],
    2.0: [" cake", " oven", "the", " flour"],
    20.0: ["ization", "##", "ungen"],
}


def test_scale_choice_parses_scale_and_tokens(openai_server):
    openai_server.add(
        Rule("Scale 2:", reply='BEST_SCALE: 2.0\nCOHERENT_TOKENS: ["cake", " oven", "flour"]')
    )
    choice = make(openai_server).choose_patchscope_scale(TOKEN_LISTS)
    # Original spelling (leading spaces) and order are kept; "the" was not listed.
    assert choice == ScaleChoice(2.0, [" cake", " oven", " flour"])
    prompt = openai_server.chat_requests()[0].prompt
    assert 'Scale 0.5: ["man", "hello", "1135"]' in prompt and 'Scale 20: ["ization"' in prompt


def test_scale_not_offered_is_reasked(openai_server):
    openai_server.add(
        Rule("Scale 2:", reply="BEST_SCALE: 3\nCOHERENT_TOKENS: []", times=1),
        Rule(
            "not one of the scales offered (0.5, 2, 20)",
            reply="BEST_SCALE: 20\nCOHERENT_TOKENS: none",
        ),
    )
    assert make(openai_server).choose_patchscope_scale(TOKEN_LISTS) == ScaleChoice(20.0, [])


# -- relevance ----------------------------------------------------------------------------------
def test_relevance_asks_several_orderings_and_requires_agreement(openai_server):
    def answer(body):
        tokens = listed_tokens(body["messages"][-1]["content"])
        # A position-biased grader: always says YES to whatever is listed first.
        lines = [
            f"{i}: {'YES' if t.strip() in BAKING_WORDS or i == 1 else 'NO'}"
            for i, t in enumerate(tokens, 1)
        ]
        return "\n".join(lines)

    openai_server.add(Rule("Description of the finetuning", reply=answer))
    grader = make(openai_server, relevance_orderings=3)
    tokens = ["tax", " cake", "oven", "carburetor", "flour", ",", "violin"]
    assert grader.token_relevance(tokens, BAKING) == [
        False,  # "tax" was first in one ordering only: the other orderings veto it
        True,
        True,
        False,
        True,
        False,
        False,
    ]
    orders = [listed_tokens(r.prompt) for r in openai_server.chat_requests()]
    # Sent concurrently, so in any order: the original, the reverse, and one shuffle.
    assert len(orders) == 3 and tokens in orders and tokens[::-1] in orders
    (shuffled,) = [o for o in orders if o not in (tokens, tokens[::-1])]
    assert sorted(shuffled) == sorted(tokens)
    assert BAKING in openai_server.chat_requests()[0].prompt


def test_relevance_with_missing_lines_is_reasked(openai_server):
    openai_server.add(
        Rule("Description of the finetuning", reply="1: YES"),
        Rule("missing 2", reply="1: yes\n2) no"),
    )
    grader = make(openai_server, relevance_orderings=1)
    assert grader.token_relevance(["cake", "tax"], BAKING) == [True, False]
    assert grader.token_relevance([], BAKING) == []


def test_short_lists_are_not_asked_in_duplicate_orderings(openai_server):
    def all_yes(body):
        n = len(listed_tokens(body["messages"][-1]["content"]))
        return "\n".join(f"{i}: YES" for i in range(1, n + 1))

    openai_server.add(Rule("Description of the finetuning", reply=all_yes))
    grader = make(openai_server, relevance_orderings=3)
    assert grader.token_relevance(["cake"], BAKING) == [True]
    assert len(openai_server.chat_requests()) == 1
    assert grader.token_relevance(["cake", "oven"], BAKING) == [True, True]
    assert len(openai_server.chat_requests()) == 3  # original and reversed only


# -- hypothesis score ---------------------------------------------------------------------------
def test_hypothesis_score_averages_repeats(openai_server):
    openai_server.add(
        Rule("Hypothesis to grade", reply="Close, misses the temperatures.\nSCORE: 3", times=1),
        Rule("Hypothesis to grade", reply="SCORE: 4", times=1),
        Rule("Hypothesis to grade", reply="Reasoning...\n**SCORE:** 5"),
    )
    grader = make(openai_server, score_repeats=3)
    score = grader.hypothesis_score("It bakes cakes.", BAKING, "5: exact\n1: wrong")
    assert score == pytest.approx(4.0)
    prompt = openai_server.chat_requests()[0].prompt
    assert "5: exact\n1: wrong" in prompt and "It bakes cakes." in prompt and BAKING in prompt


def test_empty_rubric_uses_the_default(openai_server):
    openai_server.add(Rule("names the specific finetuning objective", reply="SCORE: 2"))
    assert make(openai_server, score_repeats=1).hypothesis_score("x", BAKING, "") == 2.0


# -- parsers ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ANSWER: COHERENT", True),
        ("answer: incoherent", False),
        ("It starts coherent but ends in noise.\nANSWER: INCOHERENT", False),
        ("```\nANSWER: **COHERENT**\n```", True),
    ],
)
def test_parse_coherence(text, expected):
    assert P.parse_coherence(text) is expected


def test_parsers_reject_malformed_answers():
    with pytest.raises(ValueError, match="missing 3"):
        P.parse_relevance("1: YES\n2: NO", 3)
    with pytest.raises(ValueError, match="contradictory"):
        P.parse_relevance("1: YES\n1: NO", 1)
    with pytest.raises(ValueError, match="only 1 tokens"):
        P.parse_relevance("1: YES\n2: NO", 1)
    with pytest.raises(ValueError, match="between 1 and 5"):
        P.parse_score("SCORE: 7")
    with pytest.raises(ValueError, match="SCORE"):
        P.parse_score("I would say four.")
    with pytest.raises(ValueError, match="copy them exactly"):
        P.parse_scale('BEST_SCALE: 2\nCOHERENT_TOKENS: ["pizza"]', TOKEN_LISTS)
    with pytest.raises(ValueError, match="BEST_SCALE"):
        P.parse_scale("I like scale two", TOKEN_LISTS)


def test_parse_scale_accepts_plain_lists():
    choice = P.parse_scale("BEST_SCALE: 2\nCOHERENT_TOKENS: cake, 'oven'\nBecause...", TOKEN_LISTS)
    assert choice == ScaleChoice(2.0, [" cake", " oven"])
    assert P.parse_relevance("Here you go:\n1. YES\n2 - no\n**3**: Yes", 3) == [True, False, True]


# -- factory ------------------------------------------------------------------------------------
def test_make_grader_with_config_is_llm_and_can_fail_fast(openai_server):
    config = LLMConfig(base_url=openai_server.base_url, model="grader-model")
    grader = make_grader(config, check_reachable=True)
    assert isinstance(grader, LLMGrader)
    assert grader.describe()["model"] == "grader-model"
    with pytest.raises(DifflensError, match=r"^cannot reach LLM endpoint"):
        make_grader(LLMConfig(base_url=closed_port_url(), model="m"), check_reachable=True)
