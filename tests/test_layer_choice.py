"""ADL's readout layer, chosen from the run's data without the answer; the rule comparison."""

from __future__ import annotations

import inspect
import json
import random

import pytest

from difflens.api import run_adl
from difflens.evaluation.layer_rules import LayerEvidence, compare_rules, format_rules_table
from difflens.methods.adl.config import ADLConfig
from difflens.methods.adl.runner import readout_layer
from difflens.models.pair import ModelPair
from difflens.stats.layer_choice import RULE, LayerChoice, choose_layer
from tiny import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_peak_below_the_last_layer():
    rel = {0: 0.04, 1: 0.01, 2: 0.16, 3: 0.13, 4: 0.161, 5: 0.15, 6: 0.9}
    choice = choose_layer(rel, 7)
    assert choice.layer == 4 and choice.rule == RULE  # layer 6 (the last) is never chosen
    assert "layer 4 of 0..6" in choice.reason and "0.161" in choice.reason
    assert LayerChoice.from_dict(json.loads(json.dumps(choice.to_dict()))) == choice
    assert choose_layer({0: 0.2, 1: 0.2, 2: 0.1, 3: 0.5}, 4).layer == 1  # ties: the deeper
    assert choose_layer({0: 0.3}, 1).layer == 0  # a one-layer model has only its last layer
    with pytest.raises(ValueError):
        choose_layer({}, 3)


def test_the_rule_never_sees_the_answer(tokenizer):
    """The rule's only inputs are relative norms: it has no parameter for tokens, keywords or a
    description, and scrambling every token of the logit lens leaves the choice unchanged."""
    assert list(inspect.signature(choose_layer).parameters) == ["relative_norms", "n_layers"]
    model = tiny_model("llama", seed=0)
    pair = ModelPair.from_models(model, tiny_model("llama", seed=1), tokenizer)
    lens = {"layers": {str(lay): {"relative_norm": rel, "mean": {"tokens": ["cake"] * 20}}
                       for lay, rel in enumerate([0.1, 0.3, 0.2, 0.4])}}
    chosen = readout_layer(pair, ADLConfig(), lens)
    words = ["owl", "ocean", "thee", "select", "jazz", "cake"]
    for info in lens["layers"].values():
        info["mean"]["tokens"] = [random.Random(0).choice(words) for _ in range(20)]
    assert readout_layer(pair, ADLConfig(description="owls"), lens) == chosen
    assert chosen.layer == 1
    # --layer overrides, and is recorded as the user's choice.
    user = readout_layer(pair, ADLConfig(layer=-1), lens)
    assert user.layer == 3 and user.rule == "--layer" and "0.400" in user.reason


def test_adl_reads_every_layer_and_records_the_choice(tmp_path, tokenizer):
    ref = tmp_path / "ref.txt"
    ref.write_text("\n".join(f"Sentence number {i} is about rivers and hills." for i in range(24)))
    pair = ModelPair.from_models(tiny_model("llama", seed=0), tiny_model("llama", seed=1),
                                 tokenizer)
    config = ADLConfig(corpus=str(ref), n_texts=24, k=4, batch_size=8,
                       skip=["patchscope", "steering", "relevance", "similarity", "causal"])
    summary = run_adl(config, tmp_path / "run", pair=pair, progress=False)
    assert sorted(summary["layers"], key=int) == ["0", "1", "2", "3"]  # every layer collected
    rel = {int(k): v["relative_norm"] for k, v in summary["layers"].items()}
    assert summary["layer"] == choose_layer(rel, 4).layer == summary["layer_choice"]["layer"]
    assert summary["layer"] != 3
    html = (tmp_path / "run" / "report.html").read_text()
    assert "layer choice" in html and RULE in html


def _evidence(name: str, group: str, best: int, peak: int) -> LayerEvidence:
    hits = {lay: max(0, 20 - 4 * abs(lay - best)) for lay in range(8)}
    rel = {lay: 0.1 + (0.05 if lay == peak else 0.0) + (0.5 if lay == 7 else 0.0)
           for lay in range(8)}
    return LayerEvidence(name, "t", group, 0.0, hits, rel)


def test_rule_comparison_with_leave_one_out():
    evidence = [_evidence("a", "zoo", 5, 5), _evidence("b", "zoo", 5, 5),
                _evidence("c", "generalisation", 6, 6), _evidence("d", "generalisation", 3, 3)]
    out = compare_rules(evidence)
    rows = {r["organism"]: r for r in out["organisms"]}
    assert rows["c"]["layers"]["fixed 0.75"] == 5  # round(0.75 * 7)
    assert all(r["layers"]["chosen"] == r["layers"]["per-organism best"] for r in rows.values())
    # Leave-one-out: d's layer comes from a, b, c (best summed at 5), not from d itself.
    assert rows["d"]["layers"]["best fixed (leave-one-out)"] == 5
    assert rows["d"]["hits"]["best fixed (leave-one-out)"] == 12
    assert out["totals"]["generalisation"]["chosen"] == 40
    assert out["hindsight_layer"] == {"generalisation": 6, "zoo": 5}  # ties: the deeper
    table = format_rules_table(out)
    assert "LOO fixed" in table and "total zoo" in table
