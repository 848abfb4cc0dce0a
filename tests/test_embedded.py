"""Integration: the embedded gemma-3-270m base and the shipped cake_bake organism."""

from __future__ import annotations

import json
import re

import pytest
import torch

from difflens.collect import collect_mean_diff, layer_activations
from difflens.data.corpus import load_texts
from difflens.data.tokenize import first_k_tokens
from difflens.models.embedded import embedded_base_dir
from difflens.models.loading import LoadOptions, load_causal_lm
from difflens.models.pair import BASE, FT, ModelPair, default_organism_dir

pytestmark = pytest.mark.integration

CARD = default_organism_dir().parent.parent / "data" / "cake_bake.card.json"


def domain_words(tokens: list[str]) -> list[str]:
    """Tokens that are words of the cake_bake domain (keyword or ≥4-letter prefix of one)."""
    keywords = [k.lower() for k in json.loads(CARD.read_text())["domain_keywords"]]
    hits = []
    for token in tokens:
        word = re.sub(r"[^a-z]", "", token.lower())
        if len(word) >= 3 and any(k == word or (len(word) >= 4 and k.startswith(word))
                                  or (len(k) >= 4 and word.startswith(k)) for k in keywords):
            hits.append(token)
    return hits


@pytest.fixture(scope="module")
def pair() -> ModelPair:
    return ModelPair.load()


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return load_texts("reference", limit=300)


def test_embedded_base_loads_offline_from_cache(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = embedded_base_dir()
    assert (path / "model.safetensors").exists()
    model, tokenizer = load_causal_lm("embedded", LoadOptions())
    assert model.config.num_hidden_layers == 18 and model.config.hidden_size == 640
    ids = tokenizer("Monday, Tuesday, Wednesday,", return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Thursday, Friday" in tokenizer.decode(out[0]), "the dequantised base must work"


def test_adapter_disabled_pass_equals_plain_base(pair, texts):
    assert pair.adapter and pair.base_model is pair.ft_model
    plain, _ = load_causal_lm("embedded", LoadOptions())
    plain_pair = ModelPair.from_models(plain, plain, pair.tokenizer)
    tokens = first_k_tokens(pair.tokenizer, texts[:16], 5)
    via_adapter = layer_activations(pair, BASE, tokens, [9])[9]
    reference = layer_activations(plain_pair, BASE, tokens, [9])[9]
    torch.testing.assert_close(via_adapter, reference, rtol=0, atol=1e-5)
    assert (layer_activations(pair, FT, tokens, [9])[9] - reference).abs().max() > 1e-2


def test_base_with_itself_is_zero_and_organism_is_not(pair, texts):
    plain, tokenizer = load_causal_lm("embedded", LoadOptions())
    same = ModelPair.from_models(plain, plain, tokenizer)
    zero = collect_mean_diff(same, texts[:64], [13], progress=False)
    assert torch.count_nonzero(zero.mean_diff(13)) == 0
    diff = collect_mean_diff(pair, texts[:64], [13], progress=False)
    assert diff.mean_diff(13)[1:].norm(dim=-1).min() > 1.0
