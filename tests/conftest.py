from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

from tiny import save_tiny, tiny_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tokenizer) -> Path:
    """A saved tiny llama checkpoint directory."""
    return save_tiny(tmp_path_factory.mktemp("tiny-llama"), "llama", 0, tokenizer)


@pytest.fixture(scope="session")
def tiny_ft_dir(tmp_path_factory, tokenizer) -> Path:
    """A second tiny llama with different weights (a 'full finetune' of tiny_dir)."""
    return save_tiny(tmp_path_factory.mktemp("tiny-llama-ft"), "llama", 1, tokenizer)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine spinning
    OpenMP threads made them 15-50x slower: modules of tiny-model tests use this fixture.

    Module-scoped, so it is set up before the module's own module-scoped fixtures: results they
    build (e.g. a reference activation cache) and results the tests build then come from the
    same thread count, which byte-for-byte comparisons need."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
