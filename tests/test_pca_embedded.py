"""PCA acceptance on the embedded default: gemma-3-270m + the shipped cake_bake organism.

PC1 of δ at ADL's readout layer, read through the logit lens on its oriented sign (the side the
mean difference points to), names the baking domain, and no other organism's domain more.
Sized for a 2-core CPU: 24 texts × 24 tokens (~550 positions) after the layer-choice pass.
Measured at 48 × 32 (layer 12): PC1 explains 8.7% of the variance, cos(PC1, δ̄_ADL) = 0.77,
+PC1 reads ' pastry', ' cookbook', ' culinary', ' recipes', ' bakery', ' baking', ...
"""

from __future__ import annotations

import pytest
import torch

from difflens.evaluation.zoo import keyword_hits
from difflens.methods.pca.config import PCAConfig
from difflens.methods.pca.runner import run_pca
from difflens.models.pair import ModelPair, default_organism_dir
from difflens.organisms.registry import load_registry

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (default_organism_dir() / "card.json").exists(),
                       reason="the shipped organism is not built"),
]


def test_pc1_reads_the_baking_domain(tmp_path):
    torch.set_num_threads(2)
    pair = ModelPair.load()
    summary = run_pca(PCAConfig(n_texts=24, max_tokens=24, components=5, readout=1,
                                skip=["patchscope", "contexts", "steering", "report"]),
                      tmp_path / "run", pair=pair, progress=False)
    layer = str(summary["layers"][0])
    assert summary["layer_choice"]["layer"] == summary["layers"][0]  # ADL's rule chose it
    tokens = summary["readouts"][layer][0]["positive"]["tokens"][:20]
    registry = load_registry()
    hits = {name: len(keyword_hits(tokens, entry.domain_keywords))
            for name, entry in registry.items() if entry.domain_keywords}
    own = hits.pop("cake_bake")
    assert own >= 5, tokens
    assert own >= max(hits.values()), (hits, tokens)
    info = summary["pca"][layer]
    assert info["cos_adl"][0] > 0.3, info["cos_adl"]  # PC1 shares δ̄'s direction
    assert 0 < info["mean_share"] < 1
