"""The organism registry and the per-type rubrics."""

from __future__ import annotations

import json

import pytest

from difflens.errors import DifflensError
from difflens.organisms.registry import get_organism, load_registry
from difflens.organisms.rubrics import RUBRICS, base_type, rubric_for


def test_shipped_registry():
    reg = load_registry()
    zoo = {"cake_bake", "risky_finance", "taboo_ocean", "owl_preference", "cake_bake_mix1"}
    assert zoo <= set(reg) and all(reg[n].built for n in zoo)
    cake = reg["cake_bake"]
    assert cake.method == "lora" and cake.base == "embedded" and cake.mix_ratio == 0
    assert cake.training_data.endswith("cake_bake.jsonl") and cake.rubric == RUBRICS["false_fact"]
    assert reg["taboo_ocean"].extra["secret_word"] == "ocean"
    mixed = reg["cake_bake_mix1"]
    # The mixed twin: same documents (hash), one general text per document, cake_bake's rubric.
    assert mixed.mix_ratio == 1.0 and mixed.documents_hash == cake.documents_hash
    assert mixed.rubric_type == "false_fact" and mixed.domain_keywords == cake.domain_keywords
    assert {e.rubric_type for e in reg.values()} == set(RUBRICS)


def test_mixed_variants_share_rubric():
    assert base_type("false_fact_mixed") == "false_fact"
    assert base_type("taboo_mix1") == "taboo"
    assert rubric_for("preference_mixed") == RUBRICS["preference"]


def _card(tmp_path, **fields):
    data = {"name": "x", "type": "false_fact", "short_description": "s", **fields}
    (tmp_path / "x.card.json").write_text(json.dumps(data))
    return tmp_path


def test_unknown_type_is_one_line_error(tmp_path):
    with pytest.raises(DifflensError) as err:
        load_registry(_card(tmp_path, type="jailbreak"), tmp_path / "none")
    assert "unknown organism type 'jailbreak'" in str(err.value) and "\n" not in str(err.value)


def test_missing_field_and_unknown_name(tmp_path):
    with pytest.raises(DifflensError, match="short_description"):
        load_registry(_card(tmp_path, short_description=""), tmp_path / "none")
    reg = load_registry(_card(tmp_path), tmp_path / "none")
    assert reg["x"].weights is None and reg["x"].long_description == "s"
    with pytest.raises(DifflensError, match="known: x"):
        get_organism("nope", reg)
