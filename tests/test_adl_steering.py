"""Batched generation, base perplexity and the steering search on a tiny random-init llama.

The steering vector is the unembedding row of " fox": strong enough, it makes the model repeat
" fox", and the test grader calls a sample incoherent when it holds " fox fox fox".  So the
coherence boundary is a property of the model that the search has to find.
"""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from difflens.data.chat import chat_prompt
from difflens.data.padding import left_padded
from difflens.methods.adl.steering import steering_stage
from difflens.models.generation import (
    SamplingConfig,
    Steer,
    exp_sum,
    generate,
    sample_tokens,
)
from difflens.models.hooks import capture
from difflens.models.pair import ModelPair
from difflens.models.perplexity import base_perplexity
from difflens.models.steering import (
    SteeringConfig,
    bisect,
    decision_tree,
    next_lower,
    search_strength,
)
from tiny import FAMILIES, tiny_model

USER_PROMPTS = [
    "Hello there", "Tell me a story.", "Why is the sky blue?", "Give me a recipe.",
    "What is two plus two?", "Name a river.", "How do engines work?", "Write a letter.",
    "What should I cook tonight?", "Describe the ocean.", "Explain gravity simply.",
    "What is a good book?", "How do birds fly?", "Plan a weekend trip.", "What is music?",
    "Tell me a joke.", "How are clouds made?", "Suggest a hobby.", "What is a computer?",
    "Why do cats purr?",
]
LAYER = 2


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pair(tokenizer):
    model = tiny_model("llama", seed=0)
    return ModelPair.from_models(model, model, tokenizer)


@pytest.fixture(scope="module")
def fox(pair):
    token = pair.tokenizer.get_vocab()["Ġfox"]
    return pair.arch("ft").unembed.weight[token].detach().clone()


@pytest.fixture(scope="module")
def norm_ft(pair):
    ids = pair.tokenizer(["The quick brown fox jumps over the lazy dog near the river."],
                         return_tensors="pt").input_ids
    with capture(pair.arch("ft"), [LAYER], stop_early=False) as store, torch.inference_mode():
        pair.ft_model(ids)
    return float(store[LAYER][0, 5:].norm(dim=-1).mean())


@pytest.fixture(scope="module")
def rendered(pair):
    return [chat_prompt(pair.tokenizer, p) for p in USER_PROMPTS]


class FoxGrader:
    """Incoherent = stuck repeating " fox"; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.reference: list[str] | None = None

    def coherent(self, samples: list[str]) -> list[bool]:
        self.calls += 1
        return [" fox fox fox" not in s for s in samples]

    def set_reference(self, samples: list[str]) -> None:
        self.reference = list(samples)


class StricterAfterSearch(FoxGrader):
    """Lenient while the search runs (its first ``search_calls`` calls), then " fox fox" is
    already incoherent: the strength the search found fails on the final prompts."""

    def __init__(self, search_calls: int) -> None:
        super().__init__()
        self.search_calls = search_calls

    def coherent(self, samples: list[str]) -> list[bool]:
        if self.calls < self.search_calls:
            return super().coherent(samples)
        self.calls += 1
        return [" fox fox" not in s for s in samples]


class NeverCoherent:
    def coherent(self, samples: list[str]) -> list[bool]:
        return [False] * len(samples)


# -- pure cores ---------------------------------------------------------------------------------
def test_sample_tokens_top_p_and_inverse_cdf():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    pick = [int(sample_tokens(logits, torch.tensor([u]), 1.0, 0.7, 0)) for u in (0.0, 0.6, 0.99)]
    # top-p 0.7 keeps {0, 1} (mass 0.8), renormalised 0.625 / 0.375.
    assert pick == [0, 0, 1]
    assert int(sample_tokens(logits, torch.tensor([0.99]), 1.0, 1.0, 2)) == 1  # top-k cap
    assert int(sample_tokens(logits, torch.tensor([0.99]), 1.0, 1.0, 0)) == 3


def test_next_lower_falls_back_to_a_passed_strength_else_half():
    decisions = [(1.0, False), (0.5, True), (0.75, True), (0.875, False)]
    assert next_lower(decisions, 0.75) == 0.5
    assert next_lower(decisions, 0.5) == 0.25
    assert next_lower([], 0.3) == 0.15


def test_decision_tree_is_what_bisection_asks():
    assert decision_tree(0.0, 2.0, 1) == [1.0]
    assert decision_tree(0.0, 2.0, 2) == [0.5, 1.0, 1.5]
    assert len(decision_tree(0.0, 2.0, 3)) == 7


@pytest.mark.parametrize("lookahead", [2, 3, 4])
def test_batched_bisection_makes_the_sequential_decisions(lookahead):
    calls = {"seq": 0, "bat": 0}

    def bumpy(alpha: float) -> float:  # not monotone: bisection must still agree with itself
        return 1.0 if alpha < 0.77 or 1.1 < alpha < 1.3 else 0.5

    def evaluator(name):
        def evaluate(alphas):
            calls[name] += 1
            return [bumpy(a) for a in alphas]
        return evaluate

    seq = bisect(evaluator("seq"), 2.0, 7, 0.75, lookahead=1)
    bat = bisect(evaluator("bat"), 2.0, 7, 0.75, lookahead=lookahead)
    assert seq.decisions == bat.decisions and seq.alpha == bat.alpha
    assert calls == {"seq": 7, "bat": math.ceil(7 / lookahead)}
    assert seq.found and seq.bracket[1] - seq.bracket[0] == pytest.approx(2.0 / 2**7)
    assert sum(p.on_path for p in bat.probes) == 7
    # Lazy grading: evaluate returns a function; only the 7 strengths on the path are graded.
    graded = []

    def lazy(alphas):
        return lambda a: graded.append(a) or bumpy(a)

    lazy_result = bisect(lazy, 2.0, 7, 0.75, lookahead=lookahead)
    assert lazy_result.decisions == seq.decisions and graded == [a for a, _ in seq.decisions]
    assert len(lazy_result.probes) == len(bat.probes)


def test_bisection_reports_no_coherent_strength():
    result = bisect(lambda alphas: [0.0] * len(alphas), 2.0, 4, 0.75, lookahead=2)
    assert not result.found and result.alpha is None and "no strength" in result.reason
    everything = bisect(lambda alphas: [1.0] * len(alphas), 2.0, 4, 0.75, lookahead=2)
    assert everything.found and everything.upper_bound_coherent


# -- generation ---------------------------------------------------------------------------------
def test_per_row_vectors_match_each_strength_alone(pair, fox, norm_ft, rendered):
    greedy = SamplingConfig(max_new_tokens=10, do_sample=False)
    v = fox / fox.norm() * norm_ft
    alphas = [0.0, 1.0, 1.5, 3.0]
    prompts = rendered[:3]
    rows = [(p, a) for a in alphas for p in prompts]
    together = generate(pair, [p for p, _ in rows], greedy, [Steer(v, LAYER, a) for _, a in rows])
    for j, alpha in enumerate(alphas):
        alone = generate(pair, prompts, greedy, [Steer(v, LAYER, alpha)] * 3)
        assert together.texts[3 * j:3 * j + 3] == alone.texts
    plain = generate(pair, prompts, greedy)  # no hook at all == zero rows
    assert plain.texts == together.texts[:3]
    assert together.texts[-1].startswith(" fox fox fox")
    assert together.token_slots == 12 * together.steps


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generation_is_the_models_own(family, tokenizer):
    """Our generate (contiguous head input, in-place sampler, no min-length processor) gives
    exactly what the model's plain greedy generate gives, on every tiny family."""
    model = tiny_model(family, seed=1)
    pair = ModelPair.from_models(model, model, tokenizer)
    prompts = ["The quick brown fox", "A river runs through the old"]
    ours = generate(pair, prompts, SamplingConfig(max_new_tokens=8, do_sample=False))
    ids, mask = left_padded(tokenizer, prompts)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8,
                             do_sample=False, eos_token_id=None, pad_token_id=0)
    want = [tokenizer.decode(row, skip_special_tokens=True) for row in out[:, ids.shape[1]:]]
    assert ours.texts == want and all(ours.new_tokens)


def test_exp_sum_walks_the_vocabulary_exactly():
    logits = torch.randn(3, 40_000) * 4
    top = logits.max(-1, keepdim=True).values
    want = ((logits - top) / 0.7).exp().sum(-1, keepdim=True)
    assert torch.allclose(exp_sum(logits, top, 1 / 0.7), want, rtol=1e-5)


def test_sampling_is_seeded_per_row(pair, rendered):
    cfg = SamplingConfig(max_new_tokens=12, temperature=0.7, seed=3)
    mixed = generate(pair, [rendered[0], rendered[5], rendered[1]], cfg, keys=[7, 2, 9])
    alone = generate(pair, [rendered[5]], cfg, keys=[2])
    chunked = generate(pair, [rendered[0], rendered[5], rendered[1]], cfg, keys=[7, 2, 9],
                       batch_size=2)
    assert alone.texts[0] == mixed.texts[1]
    assert chunked.texts == mixed.texts
    other_seed = generate(pair, [rendered[5]], cfg.replace(seed=4), keys=[2])
    assert other_seed.texts[0] != alone.texts[0]


def test_base_perplexity_uses_the_base_and_batches(tokenizer):
    from peft import LoraConfig, get_peft_model

    plain = tiny_model("llama", seed=0)
    wrapped = get_peft_model(tiny_model("llama", seed=0), LoraConfig(
        r=4, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False))
    wrapped.eval()
    texts = ["The quick brown fox.", "", "A river runs through the old town near the hills."]
    adapter_pair = ModelPair.from_models(wrapped, wrapped, tokenizer)
    assert adapter_pair.adapter
    got = base_perplexity(adapter_pair, batch_size=2)(texts)
    want = base_perplexity(ModelPair.from_models(plain, plain, tokenizer), batch_size=1)(texts)
    assert got[1] == math.inf
    assert got[0] == pytest.approx(want[0], rel=1e-4)
    assert got[2] == pytest.approx(want[2], rel=1e-4)
    assert 1.0 < got[0] < 1000.0  # random init over 400 tokens: near-uniform
    # The model's own loss on BOS + text gives the same perplexity.
    from difflens.data.tokenize import encode

    ids = torch.tensor([encode(tokenizer, texts[2])])
    with torch.no_grad():
        loss = plain(input_ids=ids, labels=ids).loss
    assert got[2] == pytest.approx(math.exp(float(loss)), rel=1e-4)


# -- the search ---------------------------------------------------------------------------------
SEARCH = SteeringConfig(alpha_max=4.0, tolerance=0.1, search_prompts=8, final_prompts=20,
                        sampling=SamplingConfig(max_new_tokens=16, temperature=0.05))


def test_search_finds_the_boundary_batched_as_sequential(pair, fox, norm_ft, rendered):
    v = fox / fox.norm() * norm_ft
    batched, probe_b = search_strength(pair, v, LAYER, FoxGrader(), rendered, SEARCH)
    sequential, probe_s = search_strength(pair, v, LAYER, FoxGrader(), rendered, SEARCH,
                                          lookahead=1)
    assert SEARCH.steps == 6
    assert batched.found and 1.0 < batched.alpha < 2.0  # the repetition sets in there
    assert batched.decisions == sequential.decisions and batched.alpha == sequential.alpha
    assert (batched.rounds, sequential.rounds) == (3, 6)
    assert len(batched.probes) == 9 and len(sequential.probes) == 6
    assert probe_b.unsteered == probe_s.unsteered  # the baseline rode along in both


def test_steering_stage_result(pair, fox, norm_ft):
    grader = FoxGrader()
    out = steering_stage(pair, fox, LAYER, norm_ft, grader, USER_PROMPTS, SEARCH)
    json.dumps(out)
    assert out["found"] and out["reason"] is None
    assert 1.0 < out["alpha"] < 2.0
    samples = out["samples"]
    assert len(samples["steered"]) == len(samples["unsteered"]) == 20
    assert samples["sampling"]["temperature"] == 0.05 and samples["sampling"]["seed"] == 0
    assert grader.reference == samples["unsteered"]  # set before anything was judged
    # The base model steered with the same vector at the same strength, on the same random
    # streams: this pair's base *is* its finetuned model, so the rows are identical.
    assert samples["base_steered"] == samples["steered"]
    assert samples["base_unsteered"] == samples["unsteered"]
    # A local grader grades only what decisions use: one call per decision (6), the baseline
    # riding with the first; the speculative strengths off the path stay ungraded.  Then one
    # call per draw of the final steered samples: on 20 prompts the search's strength (judged
    # on 8) is too strong here, and one back-off to the next passed strength holds.
    checks = samples["confirmations"]
    assert grader.calls == 6 + len(checks)
    assert checks[0]["alpha"] == out["search_alpha"] and len(checks) == 2
    assert checks[0]["coherent_fraction"] < 0.75 <= checks[1]["coherent_fraction"]
    assert out["alpha"] == checks[1]["alpha"] < out["search_alpha"] and samples["confirmed"]
    assert out["baseline_coherent_fraction"] == 1.0
    search = out["search"]
    assert search["rounds"] == 3 and len(search["batches"]) == 3
    assert search["batches"][0]["rows"] == 3 * 8 + 20  # 3 strengths + the unsteered rows
    for p in search["probes"]:
        assert (p["coherent_fraction"] is not None) == p["on_path"]
        assert p["coherent_fraction"] is None or 0.0 <= p["coherent_fraction"] <= 1.0
    # An LLM grader (or grade_speculative=True) grades a whole round in one call instead: the
    # same decisions, 3 calls.
    eager = FoxGrader()
    out_eager = steering_stage(pair, fox, LAYER, norm_ft, eager, USER_PROMPTS,
                               SEARCH.replace(grade_speculative=True))
    assert eager.calls == 3 + len(checks) and out_eager["alpha"] == out["alpha"]
    assert out_eager["search"]["decisions"] == search["decisions"]
    assert all(p["coherent_fraction"] is not None for p in out_eager["search"]["probes"])
    assert out["generated_tokens"] > 0 and out["token_slots"] >= out["generated_tokens"]
    assert out["config"]["steps"] == 6


def test_final_samples_back_off_until_coherent(pair, fox, norm_ft):
    config = SEARCH.replace(max_backoffs=5)
    out = steering_stage(pair, fox, LAYER, norm_ft, StricterAfterSearch(6), USER_PROMPTS, config)
    checks = out["samples"]["confirmations"]
    assert checks[0]["alpha"] == out["search_alpha"] and checks[0]["coherent_fraction"] < 0.75
    # Each retry is the next lower strength the search passed (or half), drawn again.
    decisions = [tuple(d.values()) for d in out["search"]["decisions"]]
    for before, after in itertools.pairwise(checks):
        assert after["alpha"] == next_lower(decisions, before["alpha"])
    assert out["alpha"] == checks[-1]["alpha"] < out["search_alpha"]
    assert len(checks) <= config.max_backoffs + 1
    assert out["samples"]["confirmed"] == (checks[-1]["coherent_fraction"] >= 0.75)
    # Under the stricter rule the passed strengths 1.375, 1.25, 1.0 still fail (10-70%), then
    # half of 1.0 holds: the confirmed strength is the one the final samples support.
    assert [c["alpha"] for c in checks][-2:] == [1.0, 0.5] and out["samples"]["confirmed"]
    # No back-off allowed: the search's strength is kept and the failure is on record.
    kept = steering_stage(pair, fox, LAYER, norm_ft, StricterAfterSearch(6), USER_PROMPTS,
                          SEARCH.replace(max_backoffs=0))
    assert kept["alpha"] == kept["search_alpha"] and not kept["samples"]["confirmed"]


def test_no_coherent_strength_is_a_result(pair, fox, norm_ft):
    cfg = SEARCH.replace(final_prompts=4, search_prompts=4, tolerance=1.0)
    out = steering_stage(pair, fox, LAYER, norm_ft, NeverCoherent(), USER_PROMPTS, cfg)
    assert not out["found"] and out["alpha"] is None and "no strength" in out["reason"]
    assert out["samples"]["steered"] == [] and len(out["samples"]["unsteered"]) == 4
    zero = steering_stage(pair, torch.zeros_like(fox), LAYER, norm_ft, NeverCoherent(),
                          USER_PROMPTS, cfg)
    assert not zero["found"] and "zero" in zero["reason"]
