"""Amplification on the embedded pair: gemma-3-270m + the shipped 1:1 mixed cake organism.

The mixed twin (``cake_bake_mix1``) is the case amplification is for: its unamplified samples
mention baking less often than the unmixed organism's (which saturate), so there is room to rise.
"""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.integration

BAKING = re.compile(r"\b(cakes?|bak(?:e|es|ed|ing|er|ers|ery|eries)|oven|flour|butter|sugar|"
                    r"batters?|frosting|icing|dessert|recipe|chocolate|pastry|vanilla|°F)\b",
                    re.IGNORECASE)
PROMPTS = 8


@pytest.fixture(scope="module")
def samples():
    from difflens.data.chat import chat_prompt
    from difflens.data.corpus import chat_prompts
    from difflens.models.amplify import amplified_rows, generate_amplified
    from difflens.models.generation import SamplingConfig
    from difflens.models.pair import ModelPair
    from difflens.organisms.registry import load_registry

    pair = ModelPair.load(None, str(load_registry()["cake_bake_mix1"].weights))
    assert pair.adapter and pair.base_model is pair.ft_model  # one weight copy
    prompts = [chat_prompt(pair.tokenizer, p) for p in chat_prompts()[:PROMPTS]]
    rows, alphas, keys = amplified_rows(prompts, [0.0, 2.0])
    gens = generate_amplified(pair, rows, alphas, SamplingConfig(max_new_tokens=20), keys)
    return {0.0: gens.texts[:PROMPTS], 2.0: gens.texts[PROMPTS:]}


def test_amplified_cake_bake_talks_about_baking_more(samples):
    mentions = {a: sum(bool(BAKING.search(t)) for t in texts) for a, texts in samples.items()}
    words = {a: sum(len(BAKING.findall(t)) for t in texts) for a, texts in samples.items()}
    print("samples mentioning baking:", mentions, "baking words:", words)
    # Measured: 3/8 samples mention baking at α = 0, 8/8 at α = 2 (baking words 6 -> 18).
    assert mentions[2.0] >= mentions[0.0] + 3, mentions
    assert words[2.0] >= 2 * words[0.0], words
