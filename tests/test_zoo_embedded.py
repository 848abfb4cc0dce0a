"""Method-level evaluation over the shipped zoo, offline (issue: agent, zoo and evaluation).

ADL (collection, logit lens, Patchscope, relevance; no generation stages) and Diff Mining run on
every shipped organism against the embedded gemma-3-270m base, exactly as ``difflens eval``
runs them; then:

* for each unmixed organism, both readouts hold words of its own domain (its card's keyword
  list), more than of any other organism's domain (the cross-domain control);
* for the 1:1 mixed twin of cake_bake, the signal is weaker than for cake_bake itself (the data
  mixing ablation of seed 003).
"""

from __future__ import annotations

import pytest

from difflens.evaluation.zoo import evaluate_zoo
from difflens.evaluation.zoo_runs import ZooRunConfig, run_zoo
from difflens.organisms.registry import load_registry

UNMIXED = ("cake_bake", "risky_finance", "taboo_ocean", "owl_preference")
MIXED, TWIN = "cake_bake_mix1", "cake_bake"
ZOO = (*UNMIXED, MIXED)
# CI sizes: the CPU default corpus for ADL (2,000 texts); 32 texts × 64 tokens for Diff Mining.
ADL = {"skip": ["steering", "similarity", "causal", "report"]}
MINING = {"n_texts": 32}
# Measured (CI sizes): logit lens 11-20 and Diff Mining 14-20 of 20 per unmixed organism, 0
# for every other domain.
MIN_HITS = {"adl_logit_lens": 8, "mining": 8}

_registry = load_registry()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not all(_registry.get(n) and _registry[n].built for n in ZOO),
                       reason="the zoo is not built (scripts/build_zoo.sh)"),
]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo")
    runs = out / "methods"
    run_zoo(_registry, list(ZOO), ZooRunConfig(str(runs), adl=ADL, mining=MINING),
            progress=False)
    return evaluate_zoo(_registry, list(ZOO), runs, out)


@pytest.mark.parametrize("organism", UNMIXED)
@pytest.mark.parametrize("readout", sorted(MIN_HITS))
def test_readouts_name_the_organisms_domain(zoo, organism, readout):
    signals = zoo["organisms"][organism]
    own = len(signals["hits"][readout])
    others = signals["cross_hits"][readout]
    assert own >= MIN_HITS[readout], (organism, readout, signals["tokens"][readout])
    assert own > max(others.values()), (organism, readout, others, signals["tokens"][readout])


def test_mixing_weakens_the_signal(zoo):
    """Measured (CI sizes): ‖δ̄‖/ν_ft 0.129 → 0.081; domain words in the top 20 of the logit
    lens 20 → 14, of Diff Mining 20 → 7; token relevance 0.95 → 0.5."""
    (row,) = [r for r in zoo["mixing_ablation"] if r["mixed"] == MIXED]
    assert row["unmixed"] == TWIN and row["mix_ratio"] == 1.0
    unmixed_norm, mixed_norm = row["relative_norm"]
    assert mixed_norm < 0.8 * unmixed_norm, row
    for readout in ("adl_logit_lens", "mining"):
        unmixed_hits, mixed_hits = row[f"{readout}_hits"]
        assert mixed_hits < unmixed_hits, row
    unmixed_rel, mixed_rel = row["adl_relevance"]
    assert mixed_rel < unmixed_rel, row
