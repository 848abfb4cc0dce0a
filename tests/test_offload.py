"""Models spread over devices (accelerate ``device_map``), with disk offload as the stand-in.

A CPU machine has one device, so the multi-device case is exercised with accelerate's disk
offload: every other decoder layer lives on ``disk`` and accelerate's hooks bring its weights in
at forward time (the same dispatch machinery as a model split over GPUs).  Collection hooks,
steering hooks during generation, the LM-head path of Diff Mining and the per-token KL must give
the results of the unsharded model.
"""

from __future__ import annotations

import pytest
import torch

from difflens.collect import collect_mean_diff
from difflens.data.corpus import load_texts
from difflens.models.generation import SamplingConfig, Steer, generate
from difflens.models.pair import ModelPair

pytestmark = pytest.mark.usefixtures("one_thread")


def _offloaded(path, folder):
    """``path`` loaded with odd decoder layers offloaded to disk under ``folder``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    n = AutoConfig.from_pretrained(path).num_hidden_layers
    device_map = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu",
                  "lm_head": "cpu"}
    device_map.update({f"model.layers.{i}": "disk" if i % 2 else "cpu" for i in range(n)})
    model = AutoModelForCausalLM.from_pretrained(path, device_map=device_map,
                                                 offload_folder=str(folder))
    assert "disk" in set(model.hf_device_map.values())
    return model.eval()


@pytest.fixture(scope="module")
def pairs(tiny_dir, tiny_ft_dir, tmp_path_factory):
    plain = ModelPair.load(str(tiny_dir), str(tiny_ft_dir))
    folder = tmp_path_factory.mktemp("offload")
    sharded = ModelPair(_offloaded(str(tiny_dir), folder / "base"),
                        _offloaded(str(tiny_ft_dir), folder / "ft"), plain.tokenizer,
                        "base", "ft")
    return plain, sharded


def test_collection_equals_the_unsharded_model(pairs):
    plain, sharded = pairs
    texts = load_texts("reference")[:16]
    layers = list(range(plain.num_layers))
    want = collect_mean_diff(plain, texts, layers, k=5, batch_size=8, progress=False)
    got = collect_mean_diff(sharded, texts, layers, k=5, batch_size=8, progress=False)
    for layer in layers:
        assert torch.allclose(got.mean_diff(layer), want.mean_diff(layer), atol=1e-6), layer


def test_steered_generation_equals_the_unsharded_model(pairs):
    plain, sharded = pairs
    vector = torch.randn(plain.arch().hidden_size, generator=torch.Generator().manual_seed(0))
    prompts = ["hello there", "what is up", "tell me more"]
    steering = [Steer(vector, 1, 2.0), None, Steer(vector, 2, 4.0)]  # layers 1 on disk, 2 not
    config = SamplingConfig(max_new_tokens=8)
    want = generate(plain, prompts, config, steering)
    got = generate(sharded, prompts, config, steering)
    assert got.texts == want.texts
    assert generate(plain, prompts, config).texts != want.texts  # the steering did something


def test_logit_differences_and_kl_equal_the_unsharded_model(pairs, tmp_path):
    from difflens.methods.kl.config import KLConfig
    from difflens.methods.kl.runner import run_kl
    from difflens.methods.mining.extract import batch_delta, tokenize_padded

    plain, sharded = pairs
    texts = load_texts("reference")[:8]
    ids, attention = tokenize_padded(plain.tokenizer, texts, 16)
    last = plain.num_layers - 1
    vocab = len(plain.tokenizer)
    want = batch_delta(plain, ids, attention, last, vocab)
    got = batch_delta(sharded, ids, attention, last, vocab)
    assert torch.allclose(got, want, atol=1e-5)
    config = KLConfig(n_texts=8, max_tokens=16, layers=[1, -1])
    a = run_kl(config, tmp_path / "plain", pair=plain, progress=False)
    b = run_kl(config, tmp_path / "sharded", pair=sharded, progress=False)
    assert a["stats"]["forward"]["mean"] == pytest.approx(b["stats"]["forward"]["mean"], rel=1e-5)
    assert [r["token"] for r in a["fingerprint"]["top"][:10]] == \
        [r["token"] for r in b["fingerprint"]["top"][:10]]
