"""The decode loop of steered generation: same tokens as before, static cache, GPU fallback.

Pinned tokens were produced by the implementation this loop replaced (transformers' ``generate``
with a per-row sampler drawing one uniform per row per step), so they prove the rewrite changed
no token.  The static-cache path runs on CPU here without CUDA graphs; the CUDA-graph path
cannot run on CPU, which is exactly what makes it exercise the fallback.
"""

from __future__ import annotations

import logging

import pytest
import torch

from difflens.data.padding import left_padded
from difflens.models import generation
from difflens.models.generation import (
    SamplingConfig,
    Steer,
    cut_at_end,
    decode,
    generate,
    row_seed,
    row_uniforms,
    steps_run,
)
from difflens.models.hooks import add_vector
from difflens.models.pair import ModelPair
from tiny import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["The quick brown fox", "A river runs through the old", "Cake batter"]
# (do_sample, token ids up to each row's end token, texts) from the previous implementation
# (transformers generate + per-row logits-processor sampler), tiny llama seed 0, seed 11.
PINNED = {
    True: ([[281, 324, 334, 50, 110, 95, 26, 22], [250, 179, 179, 49, 101, 173, 29, 163],
            [153, 2]],
           ["earloupeedP�}84", "���O��;�", "�"]),
    False: ([[23, 33, 300, 128, 356, 173, 308, 210], [334] * 8, [334] * 8],
            ["5?Sc� qu�cer\x13", "peed" * 8, "peed" * 8]),
}


@pytest.fixture(scope="module")
def pair(tokenizer):
    model = tiny_model("llama", seed=0)
    return ModelPair.from_models(model, model, tokenizer)


def steering():
    v = torch.randn(32, generator=torch.Generator().manual_seed(7)) * 4
    return [None, Steer(v, 2, 1.0), Steer(v, 1, 2.5)]


@pytest.mark.parametrize(("seed", "key"), [(0, 0), (11, 5), (3, 1_000_002)])
@pytest.mark.parametrize("steps", [1, 7, 16, 17, 300])
def test_row_uniforms_are_one_draw_per_step(seed, key, steps):
    table = row_uniforms(seed, [key, key + 1], steps)
    g = torch.Generator().manual_seed(row_seed(seed, key))
    one_by_one = torch.cat([torch.rand(1, generator=g) for _ in range(steps)])
    assert table.shape == (2, steps) and torch.equal(table[0], one_by_one)
    assert not torch.equal(table[0], table[1])


@pytest.mark.parametrize("do_sample", [True, False])
def test_tokens_are_those_of_the_previous_implementation(pair, do_sample):
    steps: list[list[int]] = []
    cfg = SamplingConfig(max_new_tokens=8, do_sample=do_sample, seed=11)
    out = generate(pair, PROMPTS, cfg, steering(), keys=[5, 0, 5],
                   on_token=lambda rows, tokens: steps.append(tokens))
    ids, texts = PINNED[do_sample]
    assert out.texts == texts
    assert out.new_tokens == [len(row) for row in ids]
    streamed = [[step[r] for step in steps][:len(ids[r])] for r in range(3)]
    assert streamed == ids
    if do_sample:  # row 2 ended at step 2: it is reported with the pad id afterwards
        assert {step[2] for step in steps[2:]} == {pair.tokenizer.pad_token_id}
        assert out.steps == 8 and out.token_slots == 24


def test_pure_helpers_cut_and_count():
    new = torch.tensor([[5, 2, 0, 0], [7, 8, 9, 2], [3, 3, 3, 3]])
    assert steps_run(new, [2]) == 4  # row 2 never ended
    assert steps_run(new[:2, :], [2]) == 4
    # deferred stop checks decode past the last end: the surplus steps are cut
    assert steps_run(torch.tensor([[5, 2, 0, 0, 0], [2, 0, 0, 0, 0]]), [2]) == 2

    class Tok:
        def decode(self, ids, skip_special_tokens=True):
            return ",".join(map(str, ids))

    assert cut_at_end(Tok(), new, [2]) == (["5", "7,8,9", "3,3,3,3"], [2, 4, 4])


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
@pytest.mark.parametrize("do_sample", [True, False])
def test_static_cache_decodes_the_same_tokens(family, do_sample, tokenizer):
    """The GPU path's cache (no CUDA graphs on CPU): same tokens as the dynamic cache, also
    past gemma3's 16-token sliding window (its static layers roll) and with a steering hook."""
    model = tiny_model(family, seed=2)
    ids, mask = left_padded(tokenizer, PROMPTS)
    cfg = SamplingConfig(max_new_tokens=24, do_sample=do_sample, temperature=1.0, seed=4)
    arch = ModelPair.from_models(model, model, tokenizer).arch("ft")
    v = torch.randn(3, arch.hidden_size, generator=torch.Generator().manual_seed(1))
    with add_vector(arch, 1, v):
        dynamic = decode(model, ids, mask, cfg, [0, 1, 2], [2], 0)
        static = decode(model, ids, mask, cfg, [0, 1, 2], [2], 0, static=True)
    assert dynamic.shape[1] > 16 and torch.equal(static, dynamic)


def test_failed_gpu_path_warns_once_and_decodes_eagerly(pair, monkeypatch, caplog):
    """Forced on the CPU, the CUDA-graph path raises: one warning, then the eager tokens."""
    cfg = SamplingConfig(max_new_tokens=8, seed=11)
    want = generate(pair, PROMPTS, cfg, steering(), keys=[5, 0, 5])
    monkeypatch.setattr(generation, "_GRAPHS_FAILED", False)
    monkeypatch.setattr(generation, "static_cache_supported", lambda model: True)
    monkeypatch.setattr("difflens.models.device.is_gpu", lambda device: True)
    with caplog.at_level(logging.WARNING, logger="difflens.models.generation"):
        first = generate(pair, PROMPTS, cfg, steering(), keys=[5, 0, 5])
        second = generate(pair, PROMPTS, cfg, steering(), keys=[5, 0, 5])
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "decoding eagerly" in warnings[0]
    assert "\n" not in warnings[0]
    assert first.texts == second.texts == want.texts == PINNED[True][1]


@pytest.mark.parametrize(("family", "tokens"), [("llama", 12), ("gemma3", 6)])
def test_graph_step_inputs_give_the_eager_tokens(family, tokens, tokenizer, monkeypatch):
    """Everything of the CUDA-graph step but the capture, on CPU: the 4-D masks built outside
    the model, the fixed input buffers refilled every step and the static cache's own write
    position give the tokens of the eager dynamic-cache loop."""
    from difflens.models import cuda_graphs

    replays = []

    class Replayed(cuda_graphs.GraphStep):
        def _capture(self, ids, masks, positions):
            static_masks = self._buffers(ids, masks, positions)
            step = self

            class Graph:
                def replay(self):
                    replays.append(1)
                    step.logits = step._call(step.inputs["ids"], static_masks,
                                             step.inputs["positions"])
            self.graph = Graph()

    monkeypatch.setattr(cuda_graphs, "GraphStep", Replayed)
    model = tiny_model(family, seed=3)
    ids, mask = left_padded(tokenizer, PROMPTS)
    # gemma3's sliding window is 16 here: prompt + new tokens must fit for graphs to be used
    assert ids.shape[1] + tokens <= 16 or family == "llama"
    cfg = SamplingConfig(max_new_tokens=tokens, temperature=1.0, seed=2)
    eager = decode(model, ids, mask, cfg, [0, 1, 2], [2], 0)
    replayed = decode(model, ids, mask, cfg, [0, 1, 2], [2], 0, static=True, graphs=True)
    assert len(replays) == tokens - 1  # every step after the prompt pass was a replay
    assert eager.shape[1] == tokens and torch.equal(replayed, eager)


def test_a_replay_with_wrong_tokens_is_caught_by_the_first_call_check(pair, monkeypatch, caplog):
    """A graph that replays stale inputs gives wrong tokens without raising: the first graph
    call of the process is compared with the eager loop, so it ends in one warning and the
    eager tokens, and later calls stay eager."""
    from difflens.models import cuda_graphs

    class Stale(cuda_graphs.GraphStep):
        def _capture(self, ids, masks, positions):
            static_masks = self._buffers(ids, masks, positions)
            step = self
            frozen = step._call(step.inputs["ids"], static_masks, step.inputs["positions"])

            class Graph:
                def replay(self):  # the captured step's logits again: a stale graph
                    step.logits = frozen

            self.graph = Graph()

    cfg = SamplingConfig(max_new_tokens=8, seed=11)
    want = generate(pair, PROMPTS, cfg, steering(), keys=[5, 0, 5])
    monkeypatch.setattr(cuda_graphs, "GraphStep", Stale)
    monkeypatch.setattr(generation, "_GRAPHS_FAILED", False)
    monkeypatch.setattr(generation, "_GRAPHS_CHECKED", False)
    monkeypatch.setattr(generation, "static_cache_supported", lambda model: True)
    monkeypatch.setattr(generation, "sliding_windows_fit", lambda model, slots: True,
                        raising=False)
    monkeypatch.setattr(cuda_graphs, "sliding_windows_fit", lambda model, slots: True)
    monkeypatch.setattr("difflens.models.device.is_gpu", lambda device: True)
    with caplog.at_level(logging.WARNING, logger="difflens.models.generation"):
        first = generate(pair, PROMPTS, cfg, steering(), keys=[5, 0, 5])
        second = generate(pair, PROMPTS, cfg, steering(), keys=[5, 0, 5])
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "other tokens than eager" in warnings[0], warnings
    assert first.texts == second.texts == want.texts
    assert generation._GRAPHS_FAILED and not generation._GRAPHS_CHECKED
