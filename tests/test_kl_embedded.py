"""Per-token KL acceptance on the embedded default: gemma-3-270m + the shipped cake_bake organism.

One small run (8 reference texts × 32 tokens, ~250 positions; about a minute on a 2-core CPU
with the model load): the tokens that carry the divergence are the organism's domain words, and
no other organism's domain words are among them more often than its own.
"""

from __future__ import annotations

import pytest

from difflens.evaluation.zoo import keyword_hits
from difflens.models.pair import ModelPair, default_organism_dir
from difflens.organisms.registry import load_registry

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (default_organism_dir() / "card.json").exists(),
                       reason="the shipped organism is not built"),
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from difflens.api import run_kl
    from difflens.methods.kl.config import KLConfig

    out = tmp_path_factory.mktemp("kl-embedded")
    # The last layer only: the readout-layer pass is ADL's and tested there.
    summary = run_kl(KLConfig(n_texts=8, max_tokens=32, layers=[-1]), out,
                     pair=ModelPair.load(), progress=False)
    return out, summary


def test_fingerprint_reads_the_domain_and_not_another(run):
    _out, summary = run
    registry = load_registry()
    own = registry["cake_bake"].domain_keywords
    top = [row["token"] for row in summary["fingerprint"]["top"][:20]]
    hits = keyword_hits(top, own)
    assert len(hits) >= 6, top  # measured: 12 of 20 (' baker', ' cake', ' pastry', ...)
    for name, entry in registry.items():
        if set(entry.domain_keywords) == set(own):
            continue  # the same organism's twins (e.g. cake_bake_mix1)
        assert len(keyword_hits(top, entry.domain_keywords)) <= len(hits), (name, top)
    # The tokens the finetune takes probability from are not its domain.
    bottom = [row["token"] for row in summary["fingerprint"]["bottom"][:20]]
    assert len(keyword_hits(bottom, own)) <= 2, bottom
    assert summary["fingerprint"]["total"] > 0 and not summary["no_difference"]


def test_report_and_agent_view(run):
    from difflens.agent.kl_results import kl_results

    out, summary = run
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Token fingerprint" in html and "Highest KL(ft‖base) contexts" in html
    results = kl_results(out)
    assert "baker" in results.overview or "cake" in results.overview
    assert str(default_organism_dir()) not in results.overview
    assert summary["n_positions"] == 8 * 31  # every text is long: 32 tokens, BOS left out
