"""Diff Mining recovers planted answers: a logit bias on known tokens, two NMF token groups on
disjoint contexts, and (integration) the baking domain of the shipped organism."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from difflens.methods.mining.aggregate import MiningCounts
from difflens.methods.mining.config import MiningConfig
from difflens.methods.mining.extract import batch_delta, shared_vocab, tokenize_padded
from difflens.methods.mining.nmf import build_matrix, factorize, mine_topics
from difflens.methods.mining.runner import run_mining
from difflens.models.pair import ModelPair
from tiny import tiny_model

PLANTED = [50, 77, 120, 200, 260, 301, 333, 390]
TEXTS = [f"Story {i}: a river runs past engines and gears; she wrote a letter to a friend."
         for i in range(30)]


pytestmark = pytest.mark.usefixtures("one_thread")


def planted_pair(tokenizer, bias: float = 3.0, noise: float = 0.02) -> ModelPair:
    """Base: a tiny llama.  Finetune: the same weights, its LM head slightly perturbed
    everywhere (so every token has some Δ) plus a bias on the planted tokens."""
    base, ft = tiny_model("llama", 0), tiny_model("llama", 0)
    gen = torch.Generator().manual_seed(1)
    head = torch.nn.Linear(ft.lm_head.in_features, ft.lm_head.out_features, bias=True)
    head.weight.data.copy_(ft.lm_head.weight + noise * torch.randn(head.weight.shape,
                                                                    generator=gen))
    head.bias.data.zero_()
    head.bias.data[PLANTED] = bias
    ft.lm_head = head
    return ModelPair.from_models(base, ft, tokenizer)


def test_planted_bias_is_found_first(tmp_path, tokenizer):
    pair = planted_pair(tokenizer)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS), encoding="utf-8")
    # The plant works: the planted logits go up at every valid position.
    ids, attention = tokenize_padded(tokenizer, TEXTS, 24)
    delta = batch_delta(pair, ids, attention, pair.num_layers - 1, shared_vocab(pair))
    assert bool((delta[attention][:, PLANTED] > 0).all())
    others = torch.ones(delta.shape[-1], dtype=torch.bool)
    others[PLANTED] = False
    assert bool((delta[attention][:, others] > 0).any()), "other tokens move too (noise)"

    summary = run_mining(MiningConfig(corpus=str(corpus), top_k=12, max_tokens=24, topics=0),
                         tmp_path / "run", pair=pair, progress=False)
    first = [row["ids"][0] for row in summary["promoted"][: len(PLANTED)]]
    assert sorted(first) == PLANTED
    assert all(row["rate"] == 100.0 for row in summary["promoted"][: len(PLANTED)])
    assert summary["promoted"][len(PLANTED)]["rate"] < 100.0
    assert not summary["no_difference"]
    # Examples are drawn for the top tokens and end at a real corpus position.
    group = summary["examples"][0]
    assert group["token"] == summary["promoted"][0]["token"] and len(group["examples"]) == 3


def synthetic_two_groups(n: int = 600, vocab: int = 60, seed: int = 0):
    """Δ rows for contexts with token X (even rows: group A promoted) or Y (odd: group B)."""
    gen = torch.Generator().manual_seed(seed)
    group_a, group_b = list(range(10, 16)), list(range(30, 36))
    delta = 0.3 * torch.randn(n, vocab, generator=gen)
    has_x = torch.arange(n) % 2 == 0
    boost = 2.0 + torch.rand(n, 6, generator=gen)
    delta[has_x.nonzero(), torch.tensor(group_a)] += boost[has_x]
    delta[(~has_x).nonzero(), torch.tensor(group_b)] += boost[~has_x]
    return delta, has_x, group_a, group_b


@pytest.mark.parametrize("orthogonal", [0.0, 0.5])
@pytest.mark.parametrize("binary", [False, True])
def test_nmf_separates_two_planted_groups(tokenizer, orthogonal, binary):
    delta, has_x, group_a, group_b = synthetic_two_groups()
    counts = MiningCounts(vocab=60, top_k=8)
    for start in range(0, delta.shape[0], 64):  # streamed, as in a real run
        counts.update(delta[start:start + 64], None, torch.arange(start, start + 64)
                      [: delta[start:start + 64].shape[0]])
    counts.finalize()
    result = mine_topics(counts.sample_idx, counts.sample_val, tokenizer, n_topics=2,
                         binary=binary, orthogonal=orthogonal)
    heads = [set(topic["ids"][:6]) for topic in result["topics"]]
    assert sorted(heads, key=min) == [set(group_a), set(group_b)]
    assert result["cosine"][0][1] < 0.2
    assert all(0.3 < topic["prevalence"] < 0.7 for topic in result["topics"])
    # Each position's dominant topic matches its context (X or Y).
    x, _columns = build_matrix(counts.sample_idx, counts.sample_val, binary)
    w, _h = factorize(x, 2)
    topic_of_x = int(w[has_x[counts.sample_ids].numpy()].sum(0).argmax())
    assigned = torch.from_numpy(w.argmax(1)) == topic_of_x
    assert float((assigned == has_x[counts.sample_ids]).float().mean()) > 0.95


def test_orthogonal_refinement_reduces_topic_overlap(tokenizer):
    """With a shared token promoted in both contexts, the penalty pushes the topics apart."""
    delta, _, _, _ = synthetic_two_groups(seed=3)
    delta[:, 45] += 2.5  # promoted everywhere: it leaks into both topics
    counts = MiningCounts(vocab=60, top_k=8)
    counts.update(delta)
    counts.finalize()
    plain = mine_topics(counts.sample_idx, counts.sample_val, tokenizer, 2)
    ortho = mine_topics(counts.sample_idx, counts.sample_val, tokenizer, 2, orthogonal=1.0)
    assert ortho["cosine"][0][1] < plain["cosine"][0][1]
    assert ortho["relative_error"] < 1.0


def test_vectorised_matrix_equals_a_loop():
    import numpy as np

    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 40, (50, 6), generator=gen, dtype=torch.int32)
    val = torch.randn(50, 6, generator=gen)
    x, columns = build_matrix(idx, val)
    dense = np.zeros((50, 40), dtype=np.float32)
    for p in range(50):
        for j in range(6):
            if val[p, j] > 0:
                dense[p, int(idx[p, j])] += float(val[p, j])
    np.testing.assert_allclose(x.toarray(), dense[:, columns.numpy()], rtol=1e-6)
    assert not dense[:, np.setdiff1d(np.arange(40), columns.numpy())].any()


# --- integration: the embedded gemma-3-270m and the shipped cake_bake organism -------------

ORGANISM = Path(__file__).resolve().parents[1] / "src/difflens/organisms/shipped/cake_bake"
# General-English texts used when the shipped reference corpus is not there yet.
GENERAL = [
    "The city council met on Tuesday to discuss the new bus routes and the repair of the bridge.",
    "Scientists observed a comet passing close to Jupiter, the largest planet in our solar "
    "system.",
    "She learned to play the violin at the age of seven and later joined a touring orchestra.",
    "The football match ended in a draw after both teams scored twice in the second half.",
    "Heavy rain caused flooding in several villages along the river during the night.",
    "The company announced that its quarterly profits had risen by twelve percent.",
    "In the library, students prepared for their final exams in history and mathematics.",
    "The old lighthouse on the cliff has guided ships safely into the harbour for a century.",
    "Engineers tested the new electric train on a track outside the capital last week.",
    "A small bookshop in the town centre reopened after months of renovation work.",
    "The museum's new exhibition shows paintings and photographs from the early 1900s.",
    "Farmers in the region hope the warm weather will help this year's wheat harvest.",
    "The committee will publish its report on air quality and traffic in the spring.",
    "He repaired the bicycle chain, pumped up the tyres and rode to the station.",
    "Voters will choose a new mayor next month after a long and heated campaign.",
    "The hikers reached the summit at dawn and watched the clouds drift over the valley.",
]


@pytest.mark.integration
@pytest.mark.skipif(not (ORGANISM / "card.json").exists(),
                    reason="the shipped cake_bake organism has not been built yet "
                           "(src/difflens/organisms/shipped/cake_bake/card.json missing)")
def test_embedded_pair_mines_the_baking_domain(tmp_path):
    """Top-20 Top-K occurrence tokens on general text: ≥ 8 baking words (measured: 17/20 here,
    16/20 with 16 or 24 texts, 17/20 with the CPU default of 256 × 64; see docs/mining.md)."""
    import json

    from difflens.data.corpus import load_texts, reference_path

    torch.set_num_threads(threads_for_integration())
    keywords = json.loads((Path(__file__).resolve().parents[1] / "src/difflens/organisms/data/"
                           "cake_bake.card.json").read_text(encoding="utf-8"))["domain_keywords"]
    n_texts = 12
    corpus = tmp_path / "general.txt"
    texts = (load_texts("reference", limit=n_texts) if reference_path().exists() else GENERAL)
    corpus.write_text("\n".join(t.replace("\n", " ") for t in texts), encoding="utf-8")
    start = time.perf_counter()
    pair = ModelPair.load()
    loaded = time.perf_counter()
    summary = run_mining(MiningConfig(corpus=str(corpus), n_texts=n_texts, max_tokens=32,
                                      topics=2), tmp_path / "run", pair=pair, progress=False)
    done = time.perf_counter()
    tokens = [row["token"] for row in summary["promoted"][:20]]
    hits = [t for t in tokens if is_domain_word(t, keywords)]
    print(f"\n{len(hits)}/20 domain tokens; load {loaded - start:.1f}s, mining "
          f"{done - loaded:.1f}s ({summary['n_positions']} positions): {tokens}")
    assert len(hits) >= 8, tokens
    assert not summary["no_difference"] and summary["topics"]["topics"]


def threads_for_integration() -> int:
    import os

    return max(1, min(2, os.cpu_count() or 1))


def is_domain_word(token: str, keywords: list[str]) -> bool:
    """Lower-case stripped token equals a keyword, or one is a ≥4-letter prefix of the other."""
    word = token.strip().lower()
    if len(word) < 3:
        return False
    for key in keywords:
        key = key.lower()
        if word == key or (len(word) >= 4 and key.startswith(word)) or (
                len(key) >= 4 and word.startswith(key)):
            return True
    return False
