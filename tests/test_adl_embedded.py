"""ADL acceptance on the embedded default: gemma-3-270m + the shipped cake_bake organism.

One ADL run (module fixture) with exactly the CPU defaults of the README's main command, then
assertions on what a user must see: domain words in the readout, steering that moves text
towards the finetune documents, and a causal effect of δ̄ outside the random baselines.
"""

from __future__ import annotations

import json

import pytest

from difflens.api import run_adl
from difflens.methods.adl.config import ADLConfig
from difflens.models.pair import ModelPair, default_organism_dir
from test_embedded import domain_words

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (default_organism_dir() / "card.json").exists(),
                       reason="the shipped organism is not built"),
]


@pytest.fixture(scope="module")
def pair() -> ModelPair:
    return ModelPair.load()


@pytest.fixture(scope="module")
def run(tmp_path_factory, pair):
    out = tmp_path_factory.mktemp("adl-embedded")
    summary = run_adl(ADLConfig(), out, pair=pair, progress=False)
    return out, summary


def test_readout_reads_the_domain(run):
    out, summary = run
    layer = str(summary["layer"])
    lens = json.loads((out / "logit_lens.json").read_text())["layers"][layer]
    lens_hits = domain_words(lens["mean"]["tokens"][:20])
    patch = json.loads((out / "patchscope.json").read_text())
    patch_hits = domain_words(patch["chosen"]["tokens"][:20])
    assert max(len(lens_hits), len(patch_hits)) >= 8, (lens["mean"]["tokens"][:20],
                                                        patch["chosen"]["tokens"][:20])
    # The baselines (each model's own mean activation) do not read the domain.
    assert len(domain_words(lens["base_mean"]["tokens"][:20])) <= 2


def test_base_with_itself_reads_no_difference(tmp_path, pair):
    from difflens.models.loading import LoadOptions, load_causal_lm

    model, tokenizer = load_causal_lm("embedded", LoadOptions())
    same = ModelPair.from_models(model, model, tokenizer)
    summary = run_adl(ADLConfig(n_texts=200, finetuned="embedded"), tmp_path / "self",
                      pair=same, progress=False)
    assert summary["layers"][str(summary["layer"])]["no_difference"]


def test_steering_moves_text_towards_the_finetune(run):
    out, _ = run
    steering = json.loads((out / "steering.json").read_text())
    assert steering["found"], steering.get("reason")
    assert len(steering["samples"]["steered"]) >= 20
    sim = json.loads((out / "similarity.json").read_text())
    # Steered text is closer to the finetune documents than unsteered text (the shipped organism
    # leaks its domain into unsteered answers too, so the unsteered similarity is already well
    # above general text: measured at the chosen layer 15, 0.494 [0.447, 0.539] vs 0.395
    # [0.328, 0.456], p 0.0096 — intervals touching), and far above general text.
    assert sim["p_value"] < 0.05, sim
    assert sim["steered_finetune"]["ci_low"] > sim["reference_finetune"], sim
    assert sim["steered_finetune"]["ci_low"] > sim["steered_reference"]["ci_high"], sim
    # The comparison that does not saturate: the base model steered with the same vector against
    # the base unsteered (measured 0.245 vs 0.018, p 0.0001), with 95% intervals apart; and
    # against the description too.
    by = {(c["model"], c["against"]): c for c in sim["comparisons"]}
    for target in ("finetune documents", "description"):
        base = by["base", target]
        assert base["steered"]["ci_low"] > base["unsteered"]["ci_high"], base
        assert base["p_value"] < 0.01, base


def test_causal_effect_outside_random_baselines(run):
    out, _ = run
    causal = json.loads((out / "causal.json").read_text())
    ft, ref = causal["finetune"], causal["reference"]
    assert ft["delta_ce"] > 0 and ft["outside_random_range"], ft
    assert ref["delta_ce"] < 0 and ref["outside_random_range"], ref


def test_report_and_relevance(run):
    out, _ = run
    assert (out / "report.html").exists()
    relevance = json.loads((out / "relevance.json").read_text())
    lens_rel = relevance["readouts"]["logit lens δ̄"]["fraction"]
    base_rel = relevance["readouts"]["logit lens base mean"]["fraction"]
    assert lens_rel > base_rel
