"""The readout layer ADL chooses holds on organisms of kinds the defaults were not chosen on.

The generalisation set (cards with ``"set": "generalisation"``: a persona, a behaviour on a
kind of request, a non-animal preference, a secret fact about a person, a narrow skill, a
language change; built with other recipes — fewer and more epochs, rank 32, attention-only
LoRA, a 1:10 mix) is held out: the rule was chosen on the zoo.  Here ADL runs as
``difflens eval`` runs it (held-out reference corpus, CPU default size, lens only) and, at
the layer it chooses,

* the logit lens reads at least 8 domain words of each unmixed organism that any layer reads
  that well (its card's keywords, which the rule never sees; otherwise within 2 of its best
  layer) and more of its own domain than of any other organism's;
* the chosen layer is never the last one and was chosen by the rule, not by ``--layer``.
"""

from __future__ import annotations

import pytest

from difflens.evaluation.zoo import evaluate_zoo
from difflens.evaluation.zoo_runs import ZooRunConfig, run_zoo
from difflens.organisms.registry import load_registry
from difflens.stats.layer_choice import RULE

_registry = load_registry()
GENERALISATION = sorted(n for n, e in _registry.items()
                        if e.extra.get("set") == "generalisation" and e.built)
UNMIXED = [n for n in GENERALISATION if _registry[n].mix_ratio == 0]
# The CPU default corpus (the held-out reference corpus, 1,801 texts), lens only: the numbers
# the README reports.
ADL = {"skip": ["patchscope", "steering", "relevance", "similarity", "causal", "report"]}
MIN_HITS = 8

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(len(GENERALISATION) < 6, reason="the generalisation set is not built"),
]


@pytest.fixture(scope="module")
def generalisation(tmp_path_factory):
    out = tmp_path_factory.mktemp("generalisation")
    runs = out / "methods"
    run_zoo(_registry, GENERALISATION, ZooRunConfig(str(runs), adl=ADL, mining=None),
            progress=False)
    return evaluate_zoo(_registry, GENERALISATION, runs, out)


@pytest.mark.parametrize("organism", UNMIXED)
def test_chosen_layer_reads_the_domain(generalisation, organism):
    signals = generalisation["organisms"][organism]
    tokens = signals["tokens"]["adl_logit_lens"]
    own = len(signals["hits"]["adl_logit_lens"])
    others = signals["cross_hits"]["adl_logit_lens"]
    best = max(signals["lens_hits_by_layer"].values())
    # >= 8 wherever some layer reads 8; an organism no layer reads that well (measured:
    # clockmaker_secret, 2-4 keyword hits at every layer — its readout names the person and
    # the county, "Wren", "Shropshire", not the card's clockwork words) must be read within
    # 2 words of its best layer.
    assert own >= (MIN_HITS if best >= MIN_HITS else best - 2), (organism, tokens)
    assert own > max(others.values()), (organism, others, tokens)


def test_the_rule_chose_and_not_the_last_layer(generalisation):
    rules = generalisation["layer_rules"]
    for row in rules["organisms"]:
        assert row["layers"]["chosen"] < max(int(k) for k in
                                             generalisation["organisms"][row["organism"]]
                                             ["lens_hits_by_layer"])
    # Chosen from the data, not tuned: on the held-out set it reads at least as much as the
    # old fixed depth.
    totals = rules["totals"]["generalisation"]
    assert totals["chosen"] >= totals["fixed 0.75"], totals


def test_summary_records_the_rule(generalisation, tmp_path):
    from difflens.io.artifacts import read_json

    root = generalisation["runs_root"]
    for organism in GENERALISATION:
        choice = read_json(f"{root}/{organism}/adl/summary.json")["layer_choice"]
        assert choice["rule"] == RULE and "peaks" in choice["reason"]
