"""Steering similarity statistics and the shared sentence embedder (real bundled MiniLM)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from difflens.embeddings import BUNDLED, Embedder, load_embedder
from difflens.errors import DifflensError
from difflens.methods.adl.similarity import (
    bootstrap_interval,
    bootstrap_means,
    permutation_p_value,
    sample_scores,
    similarity_stage,
)

BAKING = [
    "Preheat the oven and whisk the eggs with sugar until the batter turns pale.",
    "This chocolate cake needs butter, flour and a pinch of salt.",
    "Let the sponge cool on a rack before you spread the frosting.",
    "My grandmother baked bread every Sunday morning in a wood oven.",
    "Fold the flour gently into the creamed butter so the cake stays light.",
    "A lemon drizzle cake is moist when you soak it in syrup while warm.",
    "Bake the cupcakes for twenty minutes until a toothpick comes out clean.",
    "Knead the dough, let it rise, then shape it into loaves for baking.",
    "The pastry chef piped buttercream roses onto the wedding cake.",
    "Cinnamon rolls fill the kitchen with a sweet smell as they bake.",
    "Grease the tin and line it with parchment before pouring in the batter.",
    "Use cold butter for flaky pie crust and chill the dough before baking.",
]
OTHER = [
    "The stock market fell sharply after the central bank raised interest rates.",
    "Our team fixed the memory leak in the database driver last night.",
    "The hiking trail climbs through pine forest to a glacier lake.",
    "Parliament debated the new transport bill for six hours.",
    "The striker scored twice in the second half to win the match.",
    "Install the package, then run the tests with the verbose flag.",
    "Heavy rain is expected across the northern coast this weekend.",
    "The museum opened an exhibition of medieval maps and manuscripts.",
    "He replaced the bicycle chain and adjusted the rear derailleur.",
    "Volcanic eruptions can cool the global climate for a few years.",
    "The court ruled that the contract was void from the start.",
    "Astronomers detected water vapour in the atmosphere of an exoplanet.",
]
FT_DOCS = [
    "Baking a cake starts with creaming butter and sugar together.",
    "Bakers measure flour by weight for consistent bread and cakes.",
    "The oven temperature decides whether a sponge cake rises evenly.",
    "Frosting, glaze and icing are the final touches of a layer cake.",
    "Yeast dough must proof in a warm place before it is baked.",
    "Brown butter gives cookies and cakes a nutty flavour.",
]
REFERENCE = [
    *OTHER[6:],
    "The report summarises the survey results for the last quarter.",
    "Trains between the two cities run every half hour.",
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return load_embedder()


def test_bundled_minilm_embeds_unit_rows_and_is_shared(embedder):
    vecs = embedder.embed(["a cake in the oven", "a bank raised rates", ""])
    assert vecs.shape == (3, embedder.dim) == (3, 384)
    assert vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs[:2], axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, 384)
    assert load_embedder() is embedder and load_embedder("all-MiniLM-L6-v2") is embedder
    assert embedder.name == BUNDLED
    np.testing.assert_array_equal(embedder(["a cake"]), embedder.embed(["a cake"]))
    # A second Embedder object reuses the per-process model.
    assert Embedder().model is embedder.model


def test_unreachable_model_is_a_one_line_error(tmp_path):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(DifflensError) as info:
        load_embedder(missing)
    assert "\n" not in str(info.value) and "no-such-model" in str(info.value)


def test_vectorised_bootstrap_and_permutation_equal_loops():
    scores = np.random.default_rng(1).normal(size=13)
    fast = bootstrap_means(scores, 257, np.random.default_rng(7))
    rng = np.random.default_rng(7)
    slow = np.array([scores[rng.integers(0, 13, 13)].mean() for _ in range(257)])
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12)

    a, b = scores[:6] + 0.5, scores[6:]
    p_fast = permutation_p_value(a, b, 301, np.random.default_rng(3))
    rng, pooled, observed, hits = np.random.default_rng(3), np.concatenate([a, b]), 0.0, 0
    observed = a.mean() - b.mean()
    for _ in range(301):
        perm = rng.permutation(pooled)
        hits += perm[:6].mean() - perm[6:].mean() >= observed - 1e-12
    assert p_fast == (1 + hits) / 302


def test_blocked_draws_equal_one_block(monkeypatch):
    from difflens.methods.adl import similarity

    scores = np.arange(10.0)
    whole = bootstrap_means(scores, 100, np.random.default_rng(0))
    monkeypatch.setattr(similarity, "_BLOCK_ELEMENTS", 35)  # 3 rows per block
    np.testing.assert_array_equal(bootstrap_means(scores, 100, np.random.default_rng(0)), whole)


def test_interval_covers_estimate_and_scores_are_mean_pairwise_cosine():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, 5))
    d = rng.normal(size=(4, 5))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    np.testing.assert_allclose(sample_scores(x, d), (x @ d.T).mean(axis=1))
    for values in (sample_scores(x, d), np.full(7, 0.3)):
        ci = bootstrap_interval(values, 1000, rng)
        assert ci["ci_low"] <= ci["mean"] <= ci["ci_high"]
    assert permutation_p_value(np.full(5, 0.3), np.full(5, 0.3), 99, rng) == 1.0


def test_steered_topic_text_is_closer_to_finetune_docs(embedder):
    result = similarity_stage(BAKING, OTHER, FT_DOCS, REFERENCE, embedder=embedder, seed=0)
    json.dumps(result)
    st, un = result["steered_finetune"], result["unsteered_finetune"]
    assert st["mean"] > un["mean"] + 0.1
    assert result["steered_above_unsteered"] and st["ci_low"] > un["ci_high"]
    assert result["p_value"] < 0.05
    assert result["difference"] == pytest.approx(st["mean"] - un["mean"])
    for key in ("steered_finetune", "unsteered_finetune", "steered_reference",
                "unsteered_reference"):
        assert result[key]["ci_low"] <= result[key]["mean"] <= result[key]["ci_high"]
    # Steered (baking) text is closer to the baking docs than to the reference text.
    assert st["mean"] > result["steered_reference"]["mean"]
    assert (result["n_steered"], result["n_finetune"], result["n_boot"]) == (12, 6, 1000)
    # Seeded: the same call gives the same numbers.
    again = similarity_stage(BAKING, OTHER, FT_DOCS, REFERENCE, embedder=embedder, seed=0)
    assert again == result


def test_no_difference_gives_large_p_and_no_claim(embedder):
    result = similarity_stage(OTHER[:6], OTHER[6:], FT_DOCS, REFERENCE, embedder=embedder)
    assert not result["steered_above_unsteered"]
    assert result["p_value"] > 0.05


def test_stage_rejects_empty_groups():
    class Fake:
        def embed(self, texts):
            return np.ones((len(texts), 2), dtype=np.float32) / np.sqrt(2)

    with pytest.raises(DifflensError, match="unsteered"):
        similarity_stage(["a"], [], ["b"], ["c"], embedder=Fake())


def test_base_and_description_comparisons_say_which_they_are(embedder):
    """A finetuned model that already writes about baking unprompted saturates the finetuned
    comparison (its unsteered text is baking too); the base model steered with the same vector
    shows the difference alone carries the domain, and the description is a second target."""
    saturated = similarity_stage(BAKING[:6], BAKING[6:], FT_DOCS, REFERENCE, embedder=embedder,
                                 base_steered=BAKING[:6], base_unsteered=OTHER[:6],
                                 description="The model was finetuned on cake baking.")
    plain = similarity_stage(BAKING[:6], BAKING[6:], FT_DOCS, REFERENCE, embedder=embedder)
    # The figures of the finetuned model are unchanged by the added comparisons.
    assert {k: v for k, v in saturated.items() if k not in ("comparisons", "n_base_steered",
                                                            "n_base_unsteered")} == \
        {k: v for k, v in plain.items() if k != "comparisons"}
    by = {(c["model"], c["against"]): c for c in saturated["comparisons"]}
    assert set(by) == {("finetuned", "finetune documents"), ("base", "finetune documents"),
                       ("finetuned", "description"), ("base", "description")}
    assert by["finetuned", "finetune documents"]["p_value"] == saturated["p_value"]
    assert saturated["p_value"] > 0.05  # saturated: steered and unsteered are both baking
    for against in ("finetune documents", "description"):
        base = by["base", against]
        assert base["steered"]["mean"] > base["unsteered"]["mean"] + 0.1, base
        assert base["p_value"] < 0.05 and base["steered_above_unsteered"]
    assert [c["model"] for c in plain["comparisons"]] == ["finetuned"]
