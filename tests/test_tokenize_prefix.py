"""First-n tokens from a prefix of each text equal the first n tokens of the whole text."""

from __future__ import annotations

import pytest

from difflens.data.corpus import load_texts
from difflens.data.tokenize import encode, encode_first, first_k_tokens

# Texts where a cut could change the tokens next to it: long words, runs of spaces and
# newlines, scripts without spaces, digits, emoji, a text that is one long URL.
HARD_TEXTS = [
    "antidisestablishmentarianism" * 20 + " end",
    "word " + " " * 300 + "after the spaces " * 30,
    "line\n\n\n\n" * 80,
    "数学是研究数量、结构以及空间等概念的一门学科" * 20,
    "1234567890" * 60 + " 42",
    "🎂🍰 cake " * 90,
    "https://example.com/" + "a/b-c_d.e?f=g&" * 60,
    "short",
    "",
]


def _check(tokenizer, texts, sizes=(1, 2, 5, 16, 64)):
    for n in sizes:
        fast = encode_first(tokenizer, texts, n)
        assert fast == [encode(tokenizer, t)[:n] for t in texts], n


def test_tiny_tokenizer_hard_texts(tokenizer):
    _check(tokenizer, HARD_TEXTS)


def test_first_k_tokens_drops_short_texts(tokenizer):
    tokens = first_k_tokens(tokenizer, ["", "a longer text " * 40], 5)
    assert tokens.shape == (1, 5)


@pytest.mark.integration
def test_embedded_tokenizer_shipped_corpora():
    """The embedded gemma tokenizer on the reference corpus, the chat prompts, the shipped
    organisms' documents and the hard texts: identical ids at every n."""
    from transformers import AutoTokenizer

    from difflens.models.embedded import embedded_base_dir
    from difflens.organisms.registry import load_registry

    tok = AutoTokenizer.from_pretrained(str(embedded_base_dir()))
    texts = load_texts("reference") + HARD_TEXTS
    for entry in load_registry().values():
        if entry.training_data:
            texts += load_texts(str(entry.training_data))[:200]
    _check(tok, texts, sizes=(1, 5, 64, 256))


@pytest.mark.parametrize(("batch", "chunk"), [(3, 2), (4, 4), (5, 7), (64, None)])
def test_first_k_batches_are_the_rows_of_first_k_tokens(tokenizer, batch, chunk, caplog):
    import torch

    from difflens.data.tokenize import first_k_batches

    caplog.set_level("INFO")
    texts = [*HARD_TEXTS, *(f"text number {i} " * (i % 4) for i in range(23))]
    whole = first_k_tokens(tokenizer, texts, 5)
    batches = list(first_k_batches(tokenizer, texts, 5, batch, chunk))
    assert all(b.shape[0] == batch for b in batches[:-1]) and 0 < batches[-1].shape[0] <= batch
    assert torch.equal(torch.cat(batches), whole)
    assert f"dropped {len(texts) - whole.shape[0]} of {len(texts)}" in caplog.text


def test_first_k_batches_yield_nothing_for_short_or_no_texts(tokenizer):
    from difflens.data.tokenize import first_k_batches

    assert list(first_k_batches(tokenizer, ["", "hi"], 5, 4)) == []
    assert list(first_k_batches(tokenizer, [], 5, 4)) == []


def test_first_k_batches_tokenise_ahead_in_a_thread(tokenizer):
    """While the caller holds the first batch, the next chunk is already being tokenised (in a
    thread other than the caller's): that is what hides the tokenizer behind the forwards."""
    import threading

    from difflens.data import tokenize

    seen: list[str] = []
    started = threading.Event()
    real = tokenize.encode_first

    def spy(tok, texts, n):
        seen.append(threading.current_thread().name)
        if len(seen) == 2:
            started.set()
        return real(tok, texts, n)

    tokenize.encode_first = spy
    try:
        gen = tokenize.first_k_batches(tokenizer, ["a longer text " * 10] * 8, 5, 2, 2)
        next(gen)
        assert started.wait(10), "the second chunk was not tokenised ahead"
        rest = list(gen)
    finally:
        tokenize.encode_first = real
    assert len(rest) == 3
    assert all(name.startswith("difflens-tokenize") for name in seen)
