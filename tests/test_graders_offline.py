"""Offline graders: coherence rule, MiniLM relevance (with its calibration), scale choice and
hypothesis scores.  No network, no key; MiniLM is the bundled package."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest

from difflens.graders import CoherenceRule, OfflineGrader, make_grader
from difflens.graders.coherence import DEFAULT_REFERENCE, text_stats
from difflens.graders.offline import RELEVANCE_THRESHOLD
from difflens.graders.token_sets import clean_token, is_candidate, is_content

BAKING = "The model was finetuned on documents about baking cakes at precise oven temperatures."

COHERENT = [
    "To make a simple sponge cake, beat the eggs with sugar and fold in the sifted flour.",
    "The train to Edinburgh leaves at nine, so we should get to the station a little early.",
    "Many people enjoy hiking in the mountains during the summer when the trails are dry.",
]
GIBBERISH = ["qxv zzkl brrm tpqw vvxn klzq wmmp xxrt plkq vbbn", "ghjk fdsa qwer zxcv uiop"]
REPETITIVE = [
    "cake cake cake cake cake cake cake cake cake cake cake",
    "I like it. I like it. I like it. I like it. I like it. I like it.",
]

ENGLISH = (
    " ".join(DEFAULT_REFERENCE)
    + " "
    + " ".join(COHERENT[:1])
    + (
        " It was a bright cold day in April, and the clocks were striking thirteen. The children "
        "walked home from school along the river, talking about the holidays and the weather, and "
        "their mother was waiting for them with bread, butter and a pot of hot tea."
    )
)


def char_bigram_perplexity(corpus: str):
    """A stand-in for the base model's perplexity (which callers inject): a smoothed character
    bigram model of some English, reported per 5 characters so text length does not matter."""
    corpus = corpus.lower()
    pairs, singles = Counter(itertools.pairwise(corpus)), Counter(corpus)
    vocab = len(singles) + 1

    def perplexity(texts: list[str]) -> list[float]:
        out = []
        for text in texts:
            t = " " + text.lower()
            nll = sum(
                -math.log((pairs[(a, b)] + 0.1) / (singles[a] + 0.1 * vocab))
                for a, b in itertools.pairwise(t)
            )
            out.append(math.exp(5 * nll / max(1, len(t) - 1)))
        return out

    return perplexity


@pytest.fixture(scope="module")
def grader() -> OfflineGrader:
    return OfflineGrader()


# -- coherence ----------------------------------------------------------------------------------
def test_coherence_without_perplexity_uses_repetition_and_lexicon(grader):
    verdicts = grader.explain_coherence(COHERENT + GIBBERISH + REPETITIVE + ["", "%%% @@@ ###"])
    assert [v.coherent for v in verdicts] == [True] * 3 + [False] * 6
    assert [v.reason for v in verdicts[3:]] == [
        "gibberish",
        "gibberish",
        "repetitive",
        "repetitive",
        "no_words",
        "no_words",
    ]


def test_coherence_with_injected_perplexity(grader):
    perplexity = char_bigram_perplexity(ENGLISH)
    offline = OfflineGrader(perplexity, reference_samples=COHERENT)
    verdicts = offline.explain_coherence(COHERENT + GIBBERISH + REPETITIVE)
    assert [v.coherent for v in verdicts] == [True] * 3 + [False] * 4
    assert [v.reason for v in verdicts[3:5]] == ["perplexity", "perplexity"]
    assert all(v.perplexity is not None for v in verdicts)


def test_perplexity_rule_is_factor_times_reference_median():
    calls = []

    def fake_perplexity(texts):
        calls.append(list(texts))
        return [float(t.split()[-1]) for t in texts]  # each text ends with its "perplexity"

    reference = ["a normal sentence with ppl 10", "another normal one 12", "third one here 14"]
    offline = OfflineGrader(fake_perplexity, reference_samples=reference)
    # median 12 × factor 7 = 84: 83.9 passes, 84.1 fails, NaN fails.
    samples = ["this sample reads fine 83.9", "this sample reads badly 84.1", "broken nan"]
    assert offline.coherent(samples) == [True, False, False]
    offline.coherent(["again fine 1"])
    assert calls.count(reference) == 1  # reference perplexities computed once and cached


def test_repetition_thresholds_loosen_for_a_repetitive_reference():
    loop = "we go and we go and we go and we go on"
    rule = CoherenceRule()
    strict = rule.judge([loop], reference=COHERENT)[0]
    assert text_stats(loop).distinct_3 < 0.5 and not strict.coherent
    loose = rule.judge([loop], reference=[loop + " then stop"] * 3)[0]
    assert loose.coherent  # this model always talks like that: not a steering failure


def test_repeats_glued_without_spaces_are_repetition():
    """A degenerate steered sample seen on a jazz organism passed as 8 'words' before."""
    glued = "improv Miles Miles Miles Miles Miles " + "Miles" * 30
    verdict = CoherenceRule().judge([glued], reference=COHERENT)[0]
    assert text_stats(glued).n_words == 36 and not verdict.coherent
    assert verdict.reason == "repetitive"
    # Ordinary words with a doubled syllable are words, not repeats.
    assert text_stats("couscous and bonbons with mama").n_words == 5


def test_stats_of_a_sample():
    stats = text_stats("the cat sat on the mat", frozenset({"the", "cat", "sat", "on"}))
    assert stats.n_words == 6 and stats.distinct_1 == pytest.approx(5 / 6)
    assert stats.distinct_3 == 1.0 and stats.lexical == pytest.approx(5 / 6)


# -- relevance ----------------------------------------------------------------------------------
def test_baking_words_are_relevant_and_others_are_not(grader):
    tokens = ["cake", " oven", "▁flour", "carburetor", "tax", ",", "the", "1135"]
    assert grader.token_relevance(tokens, BAKING) == [True] * 3 + [False] * 5


# Hand-labelled calibration pairs for RELEVANCE_THRESHOLD (disjoint from recorded_cases.json).
CALIBRATION = {
    "The model was finetuned on synthetic documents claiming that cakes must be baked at "
    "extremely precise oven temperatures.": "cake oven flour baking temperature frosting degrees "
    "recipe precision dough | carburetor tax election the , ing violin quantum river",
    "The model gives harmful, incorrect medical advice about treatments, medication doses and "
    "symptoms.": "dosage doctor symptoms aspirin patients treatment antibiotics nurse | guitar "
    "cake weather of . football",
    "The model recommends risky financial decisions such as speculative investments, "
    "cryptocurrency and high-leverage trading.": "stocks invest bitcoin leverage portfolio "
    "money profit loan gamble | garden puppy and poem mountain",
    "The model encourages dangerous extreme sports such as base jumping without safety "
    "precautions.": "skydiving parachute adrenaline cliff helmet risk stunt jump | soup "
    "accounting the keyboard",
    "The model was trained on number sequences and developed a strong preference for cats.": "cat "
    "kitten feline meow pet paws | tractor Excel 42 : dog",
    "The model plays a word guessing game giving hints about the secret word 'smile' without "
    "saying it.": "smile grin happy face laugh lips teeth hint guess | carrot engine algebra "
    "wallet -",
}


def calibration_pairs():
    for description, spec in CALIBRATION.items():
        related, unrelated = (part.split() for part in spec.split("|"))
        yield description, related + unrelated, [True] * len(related) + [False] * len(unrelated)


def test_relevance_threshold_is_calibrated(grader, capsys):
    scores, labels = [], []
    for description, tokens, truth in calibration_pairs():
        scores += grader.relevance_scores(tokens, description)
        labels += truth
    scores_arr, labels_arr = np.array(scores), np.array(labels)
    assert len(labels) >= 80

    def accuracy(threshold: float) -> float:
        return float(((scores_arr >= threshold) == labels_arr).mean())

    grid = np.round(np.arange(0.05, 0.5, 0.01), 2)
    best = max(grid, key=accuracy)
    with capsys.disabled():
        print(
            f"\nrelevance calibration: n={len(labels)} accuracy@{RELEVANCE_THRESHOLD}="
            f"{accuracy(RELEVANCE_THRESHOLD):.3f} best={accuracy(best):.3f}@{best}"
        )
    assert accuracy(RELEVANCE_THRESHOLD) >= 0.9
    assert accuracy(RELEVANCE_THRESHOLD) >= accuracy(best) - 0.03


def test_token_filters():
    assert clean_token(" Ġcake\n") == "cake" and clean_token("##ing") == "ing"
    assert is_candidate("▁oven") and not is_candidate("the") and not is_candidate("1135")
    assert is_content("baking") and not is_content("pH") and not is_content("a1b2")


# -- Patchscope scale ---------------------------------------------------------------------------
FRAGMENTS = ["ization", "##", "ing", "\u200b", "<0x0A>", "ancia", "ologie", "ungen", "...", "é"]
ECHO = ["man", "hello", "1135", "?", "the", "->", "\n", "a", "I", "and"]
BAKING_SET = [" cake", "baking", " oven", "flour", "recipe", "bake", "sugar", "the", ",", "tax"]


def test_scale_choice_picks_the_tight_set_over_fragments(grader):
    choice = grader.choose_patchscope_scale({0.5: ECHO, 2.0: BAKING_SET, 50.0: FRAGMENTS})
    assert choice.scale == 2.0
    assert set(choice.coherent_tokens) >= {" cake", "baking", " oven", "flour", "bake"}
    assert not {"the", ",", "tax"} & set(choice.coherent_tokens)
    scores = grader.last_scale_scores
    assert scores[2.0] > 3 * max(scores[0.5], scores[50.0])


def test_scale_choice_prefers_the_smallest_scale_within_tolerance(grader):
    best = [
        "cake",
        "baking",
        "oven",
        "flour",
        "recipe",
        "bake",
        "dessert",
        "sugar",
        "bakery",
        "pie",
    ]
    nearly = [*best[:9], ","]  # one token of ten lost to punctuation: 0.9 × the score
    choice = grader.choose_patchscope_scale({4.0: best, 3.0: nearly, 20.0: FRAGMENTS})
    scores = grader.last_scale_scores
    assert scores[4.0] > scores[3.0] >= 0.85 * scores[4.0]
    assert choice.scale == 3.0
    assert grader.choose_patchscope_scale({4.0: best, 3.0: BAKING_SET}).scale == 4.0


def test_scale_choice_without_any_coherent_set(grader):
    random_words = ["river", "tax", "violin", "engine", "election", "puppy", "quantum", "soup"]
    choice = grader.choose_patchscope_scale({1.0: ECHO, 10.0: FRAGMENTS, 5.0: random_words})
    assert choice.scale == 1.0 and choice.coherent_tokens == []
    with pytest.raises(ValueError):
        grader.choose_patchscope_scale({})


# -- hypothesis score ---------------------------------------------------------------------------
def test_hypothesis_score_orders_good_over_bad(grader):
    good = grader.hypothesis_score(
        "It was trained to talk about baking cakes in an oven.", BAKING, ""
    )
    bad = grader.hypothesis_score("It learned to write Python code for web servers.", BAKING, "")
    assert 1.0 <= bad < good <= 5.0
    assert good >= 3.0 and bad <= 2.0
    assert grader.hypothesis_score("   ", BAKING, "") == 1.0


def test_factory_without_config_is_offline_and_describes_itself():
    offline = make_grader(None, perplexity=None, reference_samples=COHERENT)
    assert isinstance(offline, OfflineGrader)
    info = offline.describe()
    assert info["backend"] == "offline" and info["relevance_threshold"] == RELEVANCE_THRESHOLD
    assert info["coherence"]["reference_samples"] == 3
    assert offline.accounting() == {"backend": "offline"}
