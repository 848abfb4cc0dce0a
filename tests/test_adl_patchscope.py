"""Patchscope readout on a tiny random-init llama (nothing downloaded)."""

from __future__ import annotations

import json

import pytest
import torch

from difflens.graders.base import ScaleChoice
from difflens.methods.adl.patchscope import patchscope_stage
from difflens.models.hooks import capture
from difflens.models.pair import ModelPair
from difflens.models.patchscope import (
    DEFAULT_SCALES,
    IDENTITY_PROMPTS,
    choose_scale,
    patchscope_probs,
    shared_top_tokens,
    unit_scaled,
)
from tiny import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pair(tokenizer):
    model = tiny_model("llama", seed=0)
    return ModelPair.from_models(model, model, tokenizer)


@pytest.fixture(scope="module")
def target(pair):
    """A token id and its unembedding row: the vector whose readout must be that token."""
    token = pair.tokenizer.get_vocab()["Ġfox"]
    return token, pair.arch("ft").unembed.weight[token].detach().clone()


@pytest.fixture(scope="module")
def norm_ft(pair):
    """ν_ft at layer 2 of the tiny model (mean activation norm over positions >= 5)."""
    ids = pair.tokenizer(["The quick brown fox jumps over the lazy dog near the river."],
                         return_tensors="pt").input_ids
    with capture(pair.arch("ft"), [2], stop_early=False) as store, torch.inference_mode():
        pair.ft_model(ids)
    return float(store[2][0, 5:].norm(dim=-1).mean())


class LargestScaleGrader:
    """Picks the largest offered scale (or a fixed, possibly unoffered, one)."""

    def __init__(self, fixed: float | None = None) -> None:
        self.fixed = fixed
        self.seen: dict[float, list[str]] = {}

    def choose_patchscope_scale(self, token_lists: dict[float, list[str]]) -> ScaleChoice:
        self.seen = token_lists
        scale = self.fixed if self.fixed is not None else max(token_lists)
        return ScaleChoice(scale, token_lists.get(scale, [])[:3])


def test_shared_top_tokens_intersects_and_averages():
    probs = torch.tensor([
        [0.40, 0.30, 0.20, 0.05, 0.05, 0.00],
        [0.10, 0.50, 0.05, 0.30, 0.05, 0.00],
    ])
    ids, mean = shared_top_tokens(probs, top=3)
    # top-3: row0 {0,1,2}, row1 {1,3,0}: shared {0,1}; means 0.25 and 0.40.
    assert ids.tolist() == [1, 0]
    assert torch.allclose(mean, torch.tensor([0.40, 0.25]))
    ids, _ = shared_top_tokens(probs, top=1)
    assert ids.tolist() == []  # the two prompts' favourites differ
    ids, _ = shared_top_tokens(probs[:1], top=2)
    assert ids.tolist() == [0, 1]  # one prompt: its own top list
    ids, _ = shared_top_tokens(probs, top=3, min_prob=0.3)
    assert ids.tolist() == [1]  # averaged 0.25 is below the floor


def test_default_scales_and_unit_scaling():
    assert DEFAULT_SCALES[:3] == (0.5, 0.6, 0.7) and DEFAULT_SCALES[15] == 2.0
    assert DEFAULT_SCALES[-3:] == (3.0, 4.0, 5.0) and len(DEFAULT_SCALES) == 19
    v = unit_scaled(torch.tensor([3.0, 4.0]), 10.0)
    assert torch.allclose(v, torch.tensor([6.0, 8.0]))
    with pytest.raises(ValueError):
        unit_scaled(torch.zeros(3), 1.0)


def test_write_at_last_layer_is_the_logit_lens(pair, target):
    _, vec = target
    arch = pair.arch("ft")
    v = unit_scaled(vec, 1.0)
    probs = patchscope_probs(pair, v, arch.num_layers - 1, [2.0])  # (1, P, V)
    expected = torch.softmax(arch.logits(2.0 * v).float(), dim=-1)
    for row in probs[0]:
        assert torch.allclose(row, expected, atol=1e-5)


def test_rows_do_not_depend_on_the_batch(pair, target):
    _, vec = target
    v = unit_scaled(vec, 0.2)
    together = patchscope_probs(pair, v, 1, [1.0, 3.0])
    alone = patchscope_probs(pair, v, 1, [3.0])
    assert torch.allclose(together[1], alone[0], atol=1e-5)


def test_known_direction_reads_its_token(pair, target, norm_ft):
    token, vec = target
    grader = LargestScaleGrader()
    out = patchscope_stage(pair, vec, 2, norm_ft, grader, scales=[0.5, 1.0, 5.0], top=20)
    json.dumps(out)  # JSON-able as returned
    assert out["layer"] == 2 and out["prompts"] == list(IDENTITY_PROMPTS)
    by_scale = {row["scale"]: row for row in out["scales"]}
    assert by_scale[5.0]["ids"][0] == token
    assert by_scale[5.0]["tokens"][0] == " fox"
    probs = by_scale[5.0]["probs"]
    assert probs == sorted(probs, reverse=True)
    assert by_scale[5.0]["raw_scale"] == pytest.approx(5.0 * norm_ft / float(vec.norm()))
    assert out["chosen"]["scale"] == 5.0 and not out["chosen"]["snapped"]
    assert out["chosen"]["coherent_tokens"][0] == " fox"
    assert set(grader.seen) == {0.5, 1.0, 5.0}
    assert all(len(tokens) <= 20 for tokens in grader.seen.values())


def test_unoffered_scale_is_snapped():
    result = {"scales": [{"scale": s, "tokens": ["a", "b"], "probs": [0.5, 0.1]}
                         for s in (0.5, 1.0, 3.0)]}
    chosen = choose_scale(result, LargestScaleGrader(fixed=2.9))
    assert chosen["scale"] == 3.0 and chosen["snapped"]


def test_zero_vector_is_skipped(pair):
    d = pair.arch("ft").hidden_size
    out = patchscope_stage(pair, torch.zeros(d), 2, 1.0, LargestScaleGrader())
    assert "skipped" in out and out["vector_norm"] == 0.0
