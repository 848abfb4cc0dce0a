"""Readouts: the residual-stream singular vectors of ΔW as tokens, through the base model's
final norm and unembedding (:func:`difflens.models.lens.logit_lens`).

A singular vector's sign is arbitrary (u σ vᵀ = (−u) σ (−v)ᵀ), so both signs are read.  The
"best" sign is the one whose top tokens stand further out of the logit distribution (larger
mean z-score of their logits, z over the whole vocabulary): a direction that points at a
cluster of tokens has one heavy tail, its opposite a thin one.  On five shipped organisms this
picked the side holding the domain words for 163 of 212 hits on the first singular vectors
(the alternative "larger top-k probability mass" picked 117; skewness 99).
"""

from __future__ import annotations

from typing import Any

import torch

from difflens.data.tokenize import decode_tokens
from difflens.models.lens import logit_lens

PLUS, MINUS = "+", "-"


def _side(ids: torch.Tensor, probs: torch.Tensor, logits: torch.Tensor, tokenizer: Any,
          allowed: torch.Tensor | None, top: int, mean: float, std: float) -> dict[str, Any]:
    """One signed readout as a JSON row (only ``allowed`` ids when the vocabularies differ);
    ``mean``, ``std``: of this vector's logits over the vocabulary."""
    if allowed is not None:
        keep = allowed[ids]
        ids, probs, logits = ids[keep], probs[keep], logits[keep]
    ids, probs, logits = ids[:top], probs[:top], logits[:top]
    z = float(((logits - mean) / (std or 1.0)).mean()) if len(logits) else 0.0
    return {"ids": ids.tolist(), "tokens": decode_tokens(tokenizer, ids.tolist()),
            "probs": [round(float(p), 6) for p in probs],
            "logits": [round(float(x), 4) for x in logits],
            "mass": round(float(probs.sum()), 6), "z": round(z, 4)}


@torch.inference_mode()
def _logit_moments(arch: Any, vectors: torch.Tensor) -> tuple[list[float], list[float]]:
    """Mean and standard deviation over the vocabulary of each vector's logits, ``(n,)`` each
    (the lens keeps only the top logits; the z-score of the sign choice needs the rest)."""
    param = next(arch.unembed.parameters())
    logits = arch.logits(vectors.to(device=param.device, dtype=param.dtype)).float()
    return logits.mean(-1).tolist(), logits.std(-1).tolist()


def read_module(arch: Any, tokenizer: Any, vectors: torch.Tensor, sigma: list[float], top: int,
                allowed: torch.Tensor | None = None) -> list[dict[str, Any]]:
    """Readouts of one module's residual-side singular vectors.

    Args:
        arch: the base's :class:`~difflens.models.arch.Architecture` (final norm, unembed).
        vectors: ``(n, d)`` unit singular vectors, largest σ first.
        sigma: their singular values (``n`` of them).
        top: tokens per readout.
        allowed: ``(V,)`` bool, the ids both vocabularies share (None: all).
    Returns:
        One row per vector: ``{"index", "sigma", "+": readout, "-": readout, "best": sign}``.
    """
    n = vectors.shape[0]
    if n == 0:
        return []
    # Filtering to a shared vocabulary drops ids after the top-k: read more, keep `top`.
    k = top if allowed is None else min(int(allowed.numel()), top * 8)
    both = torch.cat([vectors, -vectors]).float()
    lens = logit_lens(arch, both, top=k)
    mean, std = _logit_moments(arch, both)
    rows = []
    for i in range(n):
        plus = _side(lens.ids[i], lens.probs[i], lens.logits[i], tokenizer, allowed, top,
                     mean[i], std[i])
        minus = _side(lens.ids[n + i], lens.probs[n + i], lens.logits[n + i], tokenizer,
                      allowed, top, mean[n + i], std[n + i])
        best = PLUS if plus["z"] >= minus["z"] else MINUS
        rows.append({"index": i, "sigma": float(sigma[i]), PLUS: plus, MINUS: minus,
                     "best": best})
    return rows


def shared_ids(base_tokenizer: Any, ft_tokenizer: Any, vocab: int) -> tuple[torch.Tensor | None,
                                                                             str | None]:
    """``(allowed, note)``: None, None when the vocabularies agree; else the ``(vocab,)`` mask
    of ids that are the same token in both, and a note saying so."""
    if ft_tokenizer is None:
        return None, None
    a, b = base_tokenizer.get_vocab(), ft_tokenizer.get_vocab()
    if a == b:
        return None, None
    inverse = {i: t for t, i in b.items()}
    allowed = torch.zeros(vocab, dtype=torch.bool)
    for token, i in a.items():
        if i < vocab and inverse.get(i) == token:
            allowed[i] = True
    note = (f"the vocabularies differ ({len(a)} vs {len(b)} tokens); readouts use the "
            f"{int(allowed.sum())} ids that are the same token in both")
    return allowed, note
