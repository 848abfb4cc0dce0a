"""ModelPair loading (dirs, PEFT adapters) and paired activation streaming on tiny models."""

from __future__ import annotations

import pytest
import torch

from difflens.collect import collect_mean_diff, layer_activations, paired_activations
from difflens.data.tokenize import first_k_tokens
from difflens.models.pair import BASE, FT, ModelPair
from difflens.stats import DiffMoments, Moments
from tiny import tiny_model

TEXTS = [f"Text number {i} talks about rivers, engines and letters to friends." for i in range(40)]


def _adapter(tmp_path, tiny_dir, tokenizer, effect: float):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "down_proj"]))
    torch.manual_seed(0)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, effect) if effect else p.data.zero_()
    out = tmp_path / f"adapter-{effect}"
    peft_model.save_pretrained(out)
    return out


def test_pair_with_itself_gives_exactly_zero(tiny_dir):
    pair = ModelPair.load(base=tiny_dir, finetuned=tiny_dir)
    stats = collect_mean_diff(pair, TEXTS, [0.5, -1], k=5, batch_size=16, progress=False)
    assert stats.count == len(TEXTS)
    for layer in stats.layers:
        assert torch.count_nonzero(stats.mean_diff(layer)) == 0


def test_zero_effect_adapter_and_disabled_pass_equals_base(tmp_path, tiny_dir, tokenizer):
    pair = ModelPair.load(base=tiny_dir, finetuned=_adapter(tmp_path, tiny_dir, tokenizer, 0.0))
    assert pair.adapter and pair.base_model is pair.ft_model
    stats = collect_mean_diff(pair, TEXTS, [1, 3], k=4, progress=False)
    assert all(torch.count_nonzero(stats.mean_diff(layer)) == 0 for layer in (1, 3))

    effective = ModelPair.load(base=tiny_dir,
                               finetuned=_adapter(tmp_path, tiny_dir, tokenizer, 0.5))
    plain = ModelPair.load(base=tiny_dir, finetuned=tiny_dir)
    tokens = first_k_tokens(plain.tokenizer, TEXTS, 6)
    base_via_adapter = layer_activations(effective, BASE, tokens, [2])[2]
    plain_base = layer_activations(plain, BASE, tokens, [2])[2]
    ft = layer_activations(effective, FT, tokens, [2])[2]
    torch.testing.assert_close(base_via_adapter, plain_base, rtol=0, atol=1e-6)
    assert (ft - plain_base).abs().max() > 1e-3, "the adapter must change activations"


def test_streaming_moments_equal_naive_and_merge(tmp_path, tiny_dir, tiny_ft_dir):
    pair = ModelPair.load(base=tiny_dir, finetuned=tiny_ft_dir)
    tokens = first_k_tokens(pair.tokenizer, TEXTS, 5)
    layers = [1, 3]
    halves = []
    for part in (tokens[:17], tokens[17:]):
        acc = DiffMoments(layers, 5, 32)
        for batch in paired_activations(pair, part, layers, batch_size=6, progress=False):
            for layer in layers:
                acc.update(layer, batch.base[layer], batch.ft[layer])
        halves.append(acc)
    merged = halves[0].merge(halves[1])
    full_base = layer_activations(pair, BASE, tokens, layers)
    full_ft = layer_activations(pair, FT, tokens, layers)
    for layer in layers:
        delta = (full_ft[layer] - full_base[layer]).double()
        torch.testing.assert_close(merged.diff[layer].mean, delta.mean(0))
        torch.testing.assert_close(merged.diff[layer].variance, delta.var(0, unbiased=False))
        torch.testing.assert_close(merged.norms["ft"][layer].mean,
                                   full_ft[layer].double().norm(dim=-1).mean(0))
        assert torch.count_nonzero(merged.mean_diff(layer)) > 0


def test_moments_merge_of_scalars():
    data = torch.randn(101, 3, dtype=torch.float64) * 5 + 2
    a, b = Moments((3,)), Moments((3,))
    a.update(data[:30])
    b.update(data[30:])
    a.merge(b)
    torch.testing.assert_close(a.mean, data.mean(0))
    torch.testing.assert_close(a.second_moment, (data**2).mean(0))


def test_first_k_keeps_bos_and_drops_short(tokenizer, caplog):
    caplog.set_level("INFO")
    tokens = first_k_tokens(tokenizer, ["hi", *TEXTS[:3]], 6)
    assert tokens.shape == (3, 6)
    assert (tokens[:, 0] == tokenizer.bos_token_id).all()
    assert "dropped 1 of 4 texts shorter than 6 tokens" in caplog.text


@pytest.mark.parametrize("family", ["gpt2", "gemma3"])
def test_pair_from_models_of_other_families(family):
    base, ft = tiny_model(family, 0), tiny_model(family, 1)
    from tiny import tiny_tokenizer

    pair = ModelPair.from_models(base, ft, tiny_tokenizer())
    tokens = first_k_tokens(pair.tokenizer, TEXTS[:8], 5)
    batch = next(paired_activations(pair, tokens, [2], progress=False))
    assert batch.base[2].shape == (8, 5, 32)
    assert (batch.ft[2] - batch.base[2]).abs().max() > 0


def test_collect_mean_diff_streams_the_same_rows_as_first_k_tokens(tiny_dir, tiny_ft_dir):
    """The tokenise-ahead stream gives the moments of the rows of ``first_k_tokens``, the sums
    come back to the CPU, and a corpus without a k-token text is one clear error."""
    from difflens.errors import DifflensError

    pair = ModelPair.load(base=tiny_dir, finetuned=tiny_ft_dir)
    texts = ["hi", *TEXTS, ""]
    stats = collect_mean_diff(pair, texts, [2], k=5, batch_size=4, progress=False)
    tokens = first_k_tokens(pair.tokenizer, texts, 5)
    delta = (layer_activations(pair, FT, tokens, [2])[2]
             - layer_activations(pair, BASE, tokens, [2])[2]).double()
    assert stats.count == tokens.shape[0]
    assert stats.diff[2].mean.device.type == "cpu" and stats.means["ft"][2].device.type == "cpu"
    torch.testing.assert_close(stats.diff[2].mean, delta.mean(0))
    with pytest.raises(DifflensError, match="shorter than 5 tokens"):
        collect_mean_diff(pair, ["hi", ""], [2], k=5, progress=False)
