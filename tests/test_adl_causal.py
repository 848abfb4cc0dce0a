"""ADL causal test (projection replacement) on tiny random-init models.

The finetune is built so that the answer is known: a copy of the base whose layer-L MLP
down-projection bias is shifted by c·u.  Then h_ft = h_base + c·u at layer L (exactly, every
position), δ̄ = c·u, and replacing ft's component along δ̄ by base's makes the finetune *equal* to
the base from layer L on.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from difflens.collect import collect_mean_diff
from difflens.errors import DifflensError
from difflens.methods.adl.causal import (
    BASE_DIFF,
    RANDOM,
    base_difference_directions,
    causal_stage,
    forward_ce,
    random_directions,
    replace_projections,
    token_batch,
)
from difflens.models import nll
from difflens.models.hooks import capture, replace_projection, run_forward
from difflens.models.pair import BASE, FT, ModelPair
from tiny import tiny_config, tiny_model

FT_DOCS = [f"Cake batter with flour, butter and sugar goes into the oven {i}." for i in range(12)]
REF = [f"The quick brown fox jumps over the lazy dog near river {i}." for i in range(12)]


pytestmark = pytest.mark.usefixtures("one_thread")


def _biased_pair(tokenizer, layer: int, direction: torch.Tensor, scale: float) -> ModelPair:
    """Base = tiny llama with MLP biases; ft = base with c·u added to layer's down_proj bias."""
    from transformers import AutoModelForCausalLM

    config = tiny_config("llama")
    config.mlp_bias = True
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(config).eval()
    ft = copy.deepcopy(base)
    with torch.no_grad():
        ft.model.layers[layer].mlp.down_proj.bias += scale * direction / direction.norm()
    return ModelPair.from_models(base, ft, tokenizer)


def _token_direction(pair: ModelPair, tokenizer) -> torch.Tensor:
    """A residual direction that raises the finetune docs' tokens over the reference's."""
    w = pair.base_model.lm_head.weight.detach()

    def ids(texts):
        return torch.tensor(sorted({i for t in texts for i in tokenizer(t)["input_ids"]}))

    return w[ids(FT_DOCS)].mean(0) - w[ids(REF)].mean(0)


def _delta_bar(pair: ModelPair, layer: int) -> torch.Tensor:
    stats = collect_mean_diff(pair, FT_DOCS + REF, [layer], k=5, progress=False)
    return stats.mean_diff(layer)[1:].mean(0)


@pytest.fixture(scope="module")
def known_pair(tokenizer):
    """(pair, layer, δ̄) with the shift pointing towards the finetune docs' tokens."""
    probe = _biased_pair(tokenizer, 1, torch.ones(32), 0.0)
    u = _token_direction(probe, tokenizer)
    pair = _biased_pair(tokenizer, 1, u, 5.0)
    return pair, 1, _delta_bar(pair, 1)


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2"])
def test_chunked_ce_equals_model_loss(tokenizer, family, monkeypatch):
    model = tiny_model(family)
    pair = ModelPair.from_models(model, model, tokenizer)
    tokens, mask = token_batch(tokenizer, [*FT_DOCS[:3], "Short one.", "A river runs."], 64)
    # Force several vocabulary tiles (fast path) and several position chunks (generic path).
    monkeypatch.setattr(nll, "_MIN_TILE", 64)
    monkeypatch.setattr(nll, "TILE_ELEMENTS_CPU", 64)
    monkeypatch.setattr(nll, "CHUNK_ELEMENTS", 400 * 7)
    ce, hidden = forward_ce(pair, FT, tokens, mask, read_layer=model.config.num_hidden_layers - 1)
    arch = pair.arch(FT)
    valid = mask[:, 1:].bool()
    h, y = hidden[:, :-1][valid], tokens[:, 1:][valid]
    torch.testing.assert_close(nll._tiled_ce(arch, h, y), nll._chunked_ce(arch, h, y),
                               rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        for i in range(tokens.shape[0]):
            n = int(mask[i].sum())
            row = tokens[i : i + 1, :n]
            loss = model(input_ids=row, labels=row).loss  # mean over n - 1 predictions
            torch.testing.assert_close(ce[i].float(), loss * (n - 1), rtol=1e-4, atol=1e-4)


def test_replacement_along_delta_restores_base(known_pair):
    pair, layer, delta = known_pair
    tokens, mask = token_batch(pair.tokenizer, FT_DOCS[:4] + REF[:4], 64)
    unit = delta / delta.norm()
    inputs = {"input_ids": tokens, "attention_mask": mask}
    with torch.no_grad():
        base_logits = pair.base_model(**inputs).logits
        ft_logits = pair.ft_model(**inputs).logits
    with pair.use(BASE) as (model, arch), capture(arch, [layer]) as store, torch.no_grad():
        run_forward(model, **inputs)
    x_base = store[layer]

    def intervened(direction):
        u = direction / direction.norm()
        with (pair.use(FT) as (model, arch), torch.no_grad(),
              replace_projections(arch, layer, u[None], (x_base @ u)[None]),
              capture(arch, [layer], stop_early=False) as seen):
            logits = model(**inputs).logits
        return seen[layer], logits

    x_int, logits_int = intervened(delta)
    valid = mask.bool()
    # Along v̂ the intervened ft equals base; here ft − base lies wholly along v̂, so all of it.
    torch.testing.assert_close((x_int @ unit)[valid], (x_base @ unit)[valid], atol=1e-5, rtol=0)
    torch.testing.assert_close(x_int[valid], x_base[valid], atol=1e-4, rtol=1e-5)

    def kl(p_logits):  # KL(p || base) over valid positions
        p = p_logits.log_softmax(-1)[valid]
        q = base_logits.log_softmax(-1)[valid]
        return float((p.exp() * (p - q)).sum(-1).mean())

    kl_ft, kl_int = kl(ft_logits), kl(logits_int)
    randoms = random_directions(8, delta.shape[0], torch.Generator().manual_seed(0))
    kl_random = [kl(intervened(r)[1]) for r in randoms]
    assert kl_int < 1e-6 < kl_ft
    assert kl_int < min(kl_random)
    # Random directions remove only a sliver of the shift: ft stays about as far from base.
    assert sum(kl_random) / len(kl_random) > 0.8 * kl_ft


def test_stacked_directions_equal_hooks_replace_projection(known_pair):
    pair, layer, delta = known_pair
    tokens, mask = token_batch(pair.tokenizer, REF[:3], 64)
    dirs = torch.cat([(delta / delta.norm())[None],
                      random_directions(2, 32, torch.Generator().manual_seed(1))])
    base_ce, x_base = forward_ce(pair, BASE, tokens, mask, read_layer=layer)
    targets = torch.einsum("btd,md->mbt", x_base, dirs)
    stacked, _ = forward_ce(pair, FT, tokens.repeat(3, 1), mask.repeat(3, 1),
                            edit=(layer, dirs, targets))
    for g in range(3):
        with (pair.use(FT) as (model, arch), torch.no_grad(),
              replace_projection(arch, layer, dirs[g], targets[g])):
            logits = model(input_ids=tokens, attention_mask=mask).logits
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:],
                                                reduction="none")
        expected = (nll * mask[:, 1:]).sum(1)
        torch.testing.assert_close(stacked[g * 3 : g * 3 + 3].float(), expected,
                                   rtol=1e-4, atol=1e-4)
    # δ̄ replacement turns ft into base exactly (row CE sums agree).
    torch.testing.assert_close(stacked[:3], base_ce, rtol=1e-5, atol=1e-4)


def test_causal_stage_signs_flags_and_baselines(known_pair):
    pair, layer, delta = known_pair
    result = causal_stage(pair, delta, layer, FT_DOCS, REF, n_random=16, batch_size=8)
    json.dumps(result)  # JSON-able as is
    ft, ref = result["finetune"], result["reference"]
    assert result["layer"] == layer and result["n_random"] == 16
    for entry in (ft, ref):
        assert set(entry["baselines"]) == {RANDOM, BASE_DIFF}
        for stats in entry["baselines"].values():
            vals = stats["delta_ce"]
            assert len(vals) == 16
            assert stats["min"] == min(vals) and stats["max"] == max(vals)
            assert stats["mean"] == pytest.approx(sum(vals) / 16)
        # Replacing along δ̄ makes ft equal to base here, so CE(intervened) = CE(base).
        assert entry["ce_intervened"] == pytest.approx(entry["ce_base"], abs=1e-5)
        assert entry["delta_ce"] == pytest.approx(entry["ce_intervened"] - entry["ce_ft"])
    # The shift favours the finetune docs' tokens: removing it hurts them and helps the rest.
    assert ft["delta_ce"] > 0 > ref["delta_ce"]
    assert ft["sign_as_expected"] and ref["sign_as_expected"]
    assert ft["outside_random_range"] and ref["outside_random_range"]
    assert result["all_expected"]
    assert ft["n_texts"] == len(FT_DOCS) and ft["n_tokens"] > 0


def test_seeded_determinism_and_stacking_invariance(known_pair):
    pair, layer, delta = known_pair
    kw = {"n_random": 4, "n_texts": 6}
    a = causal_stage(pair, delta, layer, FT_DOCS, REF, seed=3, batch_size=6, **kw)
    b = causal_stage(pair, delta, layer, FT_DOCS, REF, seed=3, batch_size=6, **kw)
    assert a == b
    # batch_size 24 stacks 4 directions per forward: same numbers up to float summation order.
    stacked = causal_stage(pair, delta, layer, FT_DOCS, REF, seed=3, batch_size=24, **kw)
    for name in ("finetune", "reference"):
        for kind in (RANDOM, BASE_DIFF):
            assert stacked[name]["baselines"][kind]["delta_ce"] == pytest.approx(
                a[name]["baselines"][kind]["delta_ce"], abs=1e-5)
    c = causal_stage(pair, delta, layer, FT_DOCS, REF, seed=4, batch_size=6, **kw)
    assert c["finetune"]["baselines"][RANDOM]["delta_ce"] != \
        a["finetune"]["baselines"][RANDOM]["delta_ce"]


def test_adapter_pair_with_lora_on_the_unembedding(tokenizer):
    from peft import LoraConfig, get_peft_model

    model = tiny_model("llama")
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["down_proj", "lm_head"]))
    torch.manual_seed(0)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.3)
    peft_model.eval()
    pair = ModelPair.from_models(peft_model, peft_model, tokenizer)
    assert pair.adapter
    delta = _delta_bar(pair, 2)
    result = causal_stage(pair, delta, 2, FT_DOCS, REF, n_random=2, n_texts=4, batch_size=4)
    tokens, mask = token_batch(tokenizer, REF, 64)
    with torch.no_grad(), peft_model.disable_adapter():
        plain = model(input_ids=tokens[:1, : int(mask[0].sum())],
                      labels=tokens[:1, : int(mask[0].sum())]).loss
    base_ce, _ = forward_ce(pair, BASE, tokens[:1], mask[:1])
    assert float(base_ce[0]) / (int(mask[0].sum()) - 1) == pytest.approx(float(plain), rel=1e-5)
    assert result["reference"]["ce_base"] != pytest.approx(result["reference"]["ce_ft"])


def test_bad_inputs_are_one_line_errors(known_pair):
    pair, layer, delta = known_pair
    with pytest.raises(DifflensError, match="zero"):
        causal_stage(pair, torch.zeros(32), layer, FT_DOCS, REF)
    with pytest.raises(DifflensError, match="dimensions"):
        causal_stage(pair, torch.ones(31), layer, FT_DOCS, REF)
    with pytest.raises(DifflensError, match="reference"):
        causal_stage(pair, delta, layer, FT_DOCS, [])
    with pytest.raises(DifflensError, match="positions"):
        base_difference_directions(torch.randn(5, 32), 3, torch.Generator())


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma2", "gemma3", "gpt2", "gpt_neox"])
def test_replayed_prefix_equals_full_edited_pass(tokenizer, family):
    """Recording layers 0..L of the plain pass and replaying them gives the same edited CEs,
    and the replayed outputs really are what the later layers read."""
    base, ft = tiny_model(family, seed=0), tiny_model(family, seed=1)
    pair = ModelPair.from_models(base, ft, tokenizer)
    layer = 1
    tokens, mask = token_batch(pair.tokenizer, REF[:3], 16)
    dirs = random_directions(2, base.config.hidden_size, torch.Generator().manual_seed(2))
    _, x_base = forward_ce(pair, BASE, tokens, mask, read_layer=layer)
    targets = torch.einsum("btd,md->mbt", x_base, dirs)
    edit = (layer, dirs, targets)
    stacked = tokens.repeat(2, 1), mask.repeat(2, 1)
    full, _ = forward_ce(pair, FT, *stacked, edit=edit)
    prefix: list = [None] * (layer + 1)
    plain, _ = forward_ce(pair, FT, tokens, mask, record=prefix)
    assert all(out is not None for out in prefix)
    replayed, _ = forward_ce(pair, FT, *stacked, edit=edit, replay=prefix)
    torch.testing.assert_close(replayed, full, rtol=1e-5, atol=1e-5)
    assert not torch.equal(replayed[:3], plain)  # the edit still applies (tiny: tiny effects)
    # Corrupting the recorded layer-L output changes the result: later layers read the replay.
    from difflens.models.hooks import _hidden, _with_hidden

    prefix[layer] = _with_hidden(prefix[layer], _hidden(prefix[layer]) * 0.5)
    corrupted, _ = forward_ce(pair, FT, *stacked, edit=edit, replay=prefix)
    assert not torch.equal(corrupted, full)
    # Hooks and patched forwards are gone afterwards.
    with pair.use(FT) as (_model, arch):
        assert all("forward" not in vars(block) for block in arch.layers)
