"""Architecture access and hooks on every supported family (tiny random-init models)."""

from __future__ import annotations

import pytest
import torch

from difflens.errors import DifflensError
from difflens.models.arch import architecture
from difflens.models.hooks import add_vector, capture, replace_projection, run_forward
from tiny import FAMILIES, tiny_model


@pytest.mark.parametrize("family", FAMILIES)
def test_architecture_parts_reproduce_the_model(family):
    model = tiny_model(family)
    arch = architecture(model)
    assert arch.num_layers == 4 and arch.hidden_size == 32
    ids = torch.randint(3, 400, (2, 7))
    with torch.inference_mode():
        out = model(ids, output_hidden_states=True)
        # hidden_states[-1] is already final-normed in HF; the last layer's raw output is what
        # the logit lens normalises, and must reproduce the model's logits exactly.
        with capture(arch, [3], stop_early=False) as store:
            model(ids)
        lens = arch.logits(store[3])
    torch.testing.assert_close(lens, out.logits, atol=1e-4, rtol=1e-4)
    assert arch.embed.weight.shape == (400, 32)


@pytest.mark.parametrize("family", FAMILIES)
def test_capture_stops_early_and_matches_hidden_states(family):
    model = tiny_model(family)
    arch = architecture(model)
    ids = torch.randint(3, 400, (2, 6))
    calls = []
    handle = arch.layers[3].register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.inference_mode(), capture(arch, [0, 1]) as store:
            assert run_forward(model, input_ids=ids) is None
    finally:
        handle.remove()
    assert not calls, "layers after the last requested one must not run"
    with torch.inference_mode():
        hs = model(ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(store[1], hs[2])


def test_layer_addressing():
    arch = architecture(tiny_model("llama"))
    assert arch.resolve_layer(0) == 0
    assert arch.resolve_layer(-1) == 3
    assert arch.resolve_layer(0.5) == 2  # round(0.5 * 3)
    assert arch.resolve_layer(1.0) == 3
    with pytest.raises(DifflensError, match="out of range: this model has 4 layers"):
        arch.resolve_layer(4)
    with pytest.raises(DifflensError, match="outside"):
        arch.resolve_layer(1.5)


def test_add_vector_at_positions_and_removal_on_error():
    model = tiny_model("llama")
    arch = architecture(model)
    ids = torch.randint(3, 400, (2, 5))
    vec = torch.randn(32)
    with torch.inference_mode():
        with capture(arch, [1], stop_early=False) as clean:
            model(ids)
        with add_vector(arch, 1, vec, positions=[2]), capture(arch, [1], stop_early=False) as s:
            model(ids)
        with add_vector(arch, 1, vec, positions=torch.tensor([0, 4])), \
                capture(arch, [1], stop_early=False) as per_row:
            model(ids)
    diff = s[1] - clean[1]
    torch.testing.assert_close(diff[:, 2], vec.expand(2, 32))
    assert diff[:, [0, 1, 3, 4]].abs().max() == 0
    rowdiff = per_row[1] - clean[1]
    torch.testing.assert_close(rowdiff[0, 0], vec)
    torch.testing.assert_close(rowdiff[1, 4], vec)
    with pytest.raises(RuntimeError), add_vector(arch, 1, vec):
        raise RuntimeError("body failed")
    assert not arch.layers[1]._forward_hooks, "hook must be removed when the body raises"


def test_replace_projection_sets_component():
    model = tiny_model("qwen2")
    arch = architecture(model)
    ids = torch.randint(3, 400, (2, 5))
    direction = torch.randn(32)
    target = torch.full((2, 5), 3.0)
    with torch.inference_mode(), replace_projection(arch, 2, direction, target), \
            capture(arch, [2], stop_early=False) as store:
        model(ids)
    proj = store[2] @ (direction / direction.norm())
    torch.testing.assert_close(proj, target, atol=1e-4, rtol=1e-4)
    assert not arch.layers[2]._forward_hooks
