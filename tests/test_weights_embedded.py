"""The weight-space lens on the embedded default: gemma-3-270m + the shipped cake_bake LoRA.

One run with the defaults (module fixture), then what a user must see: every adapted module
ranked, exact factor-path statistics, readouts of the top modules, and cake-baking words among
the top readout tokens — with the base's layers never loaded.
"""

from __future__ import annotations

import pytest
import torch

from difflens.api import run_weights
from difflens.evaluation.zoo import keyword_hits
from difflens.methods.weights.config import WeightsConfig
from difflens.methods.weights.result import WeightsResult, weights_tokens
from difflens.models.pair import default_organism_dir
from difflens.organisms.registry import load_registry

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (default_organism_dir() / "card.json").exists(),
                       reason="the shipped organism is not built"),
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("weights-embedded")
    return out, run_weights(WeightsConfig(), out, progress=False)


def test_every_adapted_module_is_ranked(run):
    out, summary = run
    assert summary["method"] == "lora" and summary["hidden"] == 640
    assert summary["n_modules"] == summary["n_changed"] == 18 * 7
    heat = summary["heatmap"]
    assert heat["layers"] == list(range(18)) and len(heat["kinds"]) == 7
    assert all(v is not None and v > 0 for row in heat["values"] for v in row)
    rows = WeightsResult.load(out).modules()
    assert all(r["rank"] == 8 and len(r["sigma"]) == 8 for r in rows)
    for r in rows:  # rank-8 ΔW: 1 ≤ stable rank ≤ 8, ‖ΔW‖² = Σσ² over all 8 values
        assert 1.0 <= r["stable_rank"] <= 8.0
        assert r["norm"] ** 2 == pytest.approx(sum(s * s for s in r["sigma"]), rel=1e-4)
    # Measured: the MLP gate/up projections of the upper layers change most (‖ΔW‖_F ≈ 0.9,
    # about 2% of ‖W‖_F).
    top = summary["top_modules"][0]
    assert top["kind"] in ("mlp.gate_proj", "mlp.up_proj") and top["layer"] >= 9
    assert 0.005 < top["relative"] < 0.1
    assert (out / "report.html").exists()


def test_factor_path_matches_the_dense_delta_of_the_shipped_adapter(run):
    from safetensors import safe_open

    _, summary = run
    name = summary["top_modules"][0]["name"]
    path = default_organism_dir() / "adapter" / "adapter_model.safetensors"
    with safe_open(str(path), framework="pt") as fh:
        A = fh.get_tensor(f"base_model.model.{name}.lora_A.weight").double()
        B = fh.get_tensor(f"base_model.model.{name}.lora_B.weight").double()
    dense = (16.0 / 8) * B @ A  # lora_alpha / r of the shipped adapter
    want = torch.linalg.svdvals(dense)[:8]
    got = summary["top_modules"][0]["sigma"]
    assert got == pytest.approx(want.tolist(), rel=1e-4)


def test_top_readouts_hold_cake_baking_words(run):
    out, summary = run
    assert len(summary["readouts"]) == 12
    keywords = load_registry()["cake_bake"].domain_keywords
    tokens = weights_tokens(out, 20)
    # Measured: 5 of 20 (' oven', ' baking', ' ovens', ' baked', ' kitchen').
    assert len(keyword_hits(tokens, keywords)) >= 3, tokens
    first = summary["readouts"][0]["vectors"][0]
    assert len(keyword_hits(first[first["best"]]["tokens"], keywords)) >= 5


def test_readout_head_reads_only_the_final_norm_and_unembedding():
    from difflens.methods.weights.checkpoint import Checkpoint, readout_head
    from difflens.models.embedded import embedded_base_dir

    arch, _ = readout_head(Checkpoint(embedded_base_dir(), "base"), "cpu", False)
    assert all(p.is_meta for p in arch.layers.parameters())
    assert not arch.unembed.weight.is_meta and not arch.final_norm.weight.is_meta
