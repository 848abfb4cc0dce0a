"""Diff Mining stage 4 (pure core): NMF topics of the promoted-token matrix.

The sample of positions kept by :class:`MiningCounts` gives a sparse matrix X, positions ×
tokens, with one entry per (position, top-K token) whose Δ is positive: ReLU(Δ) or 1.  NMF
factors X ≈ W·H (scikit-learn's names; Frobenius loss): ``W`` ``(M, n)`` says how much each
position uses each topic, ``H`` ``(n, C)`` is each topic's weight on each token.  Topics separate
finetuning objectives that promote different token sets in different contexts.

scikit-learn (and scipy) are the optional ``mining`` extra, imported inside the functions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from difflens.data.tokenize import decode_tokens
from difflens.errors import DifflensError

TOP_TOKENS = 20  # tokens listed per topic (also the head used for "concentration")


def build_matrix(idx: torch.Tensor, val: torch.Tensor, binary: bool = False
                 ) -> tuple[Any, torch.Tensor]:
    """Sparse CSR matrix of the positive top-K entries, assembled without a Python loop.

    Args:
        idx: ``(M, K)`` token ids of each kept position's top-K.
        val: ``(M, K)`` their Δ (entries ≤ 0 are skipped).
        binary: 1 instead of ReLU(Δ) as the entry value.
    Returns:
        ``(X, columns)``: X is a ``(M, C)`` float32 ``scipy.sparse.csr_matrix`` over the C
        distinct tokens present, ``columns`` ``(C,)`` their token ids (column j = token
        ``columns[j]``; compacting keeps NMF's H at C rather than 262k columns).
    """
    import scipy.sparse as sp

    # numpy, not torch: these are single passes over M·K small arrays, where torch's thread
    # pool costs more than it saves (5× slower on a busy 2-core machine).
    m = idx.shape[0]
    values = val.detach().cpu().numpy().astype(np.float32, copy=False)
    keep = values > 0
    tokens = idx.detach().cpu().numpy()[keep]  # row-major: each row's entries contiguous
    # Compact the columns to the tokens present with a bincount (O(V + nnz), no sort).
    present = np.bincount(tokens, minlength=1) > 0
    columns = np.flatnonzero(present)
    column_of = (np.cumsum(present) - 1).astype(np.int32)
    data = np.ones(tokens.shape, dtype=np.float32) if binary else values[keep]
    # CSR directly: no COO sort, no duplicate summing (top-K ids of one row are distinct).
    indptr = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(keep.sum(axis=1), out=indptr[1:])
    x = sp.csr_matrix((data, column_of[tokens], indptr), shape=(m, int(columns.size)))
    return x, torch.from_numpy(columns.astype(np.int64))


def factorize(x: Any, n_topics: int, seed: int = 0, max_iter: int = 400
              ) -> tuple[np.ndarray, np.ndarray]:
    """Plain NMF (Frobenius loss, NNDSVDa init).  Returns ``W`` ``(M, n)``, ``H`` ``(n, C)``."""
    try:
        from sklearn.decomposition import NMF
    except ImportError:
        raise DifflensError(
            "NMF topics need scikit-learn; run: pip install 'difflens[mining]' (or pass "
            "--topics 0)"
        ) from None
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    model = NMF(n_components=n_topics, init="nndsvda", beta_loss="frobenius", max_iter=max_iter,
                random_state=seed)
    with warnings.catch_warnings():  # a few hundred iterations suffice for token lists
        warnings.simplefilter("ignore", ConvergenceWarning)
        w = model.fit_transform(x)
    return w.astype(np.float32), model.components_.astype(np.float32)


def orthogonal_refine(x: Any, w: np.ndarray, h: np.ndarray, lam: float, steps: int = 100
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Push topics apart: multiplicative updates of ½‖X − WH‖²_F + λ·s·‖HHᵀ − diag(HHᵀ)‖²_F.

    Rows of H are rescaled to unit norm after every step (the scale moves into W, so WH is
    unchanged and the penalty cannot be dodged by shrinking H); the off-diagonal of HHᵀ is then
    the inter-topic cosine.  ``s`` = mean squared column norm of W puts λ in units of the fit
    term, so λ ≈ 0.1–1 is a useful range whatever the size of X.  Non-negativity holds because
    every update multiplies by a ratio of non-negative terms (the gradient of the penalty,
    4·offdiag(HHᵀ)·H, is non-negative and joins the denominator).

    Args:
        x: ``(M, C)`` sparse matrix; w: ``(M, n)``, h: ``(n, C)`` starting factors.
    """
    coo = x.tocoo()
    indices = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
    xs = torch.sparse_coo_tensor(indices, torch.from_numpy(coo.data), x.shape,
                                 dtype=torch.float32, check_invariants=True).coalesce()
    xt = xs.t().coalesce()
    wt, ht = torch.from_numpy(w).double(), torch.from_numpy(h).double()
    xs, xt = xs.double(), xt.double()
    eps = 1e-12
    n = ht.shape[0]
    off = 1.0 - torch.eye(n, dtype=torch.float64)
    for _ in range(steps):
        norms = ht.norm(dim=1).clamp_min(eps)
        ht, wt = ht / norms[:, None], wt * norms[None, :]
        s = float((wt * wt).sum(0).mean())
        gram = ht @ ht.T
        numer = torch.sparse.mm(xt, wt).T  # WᵀX, (n, C)
        denom = (wt.T @ wt) @ ht + 4.0 * lam * s * (gram * off) @ ht + eps
        ht = ht * numer / denom
        numer = torch.sparse.mm(xs, ht.T)  # XHᵀ, (M, n)
        wt = wt * numer / (wt @ (ht @ ht.T) + eps)
    return wt.float().numpy(), ht.float().numpy()


def describe_topics(w: np.ndarray, h: np.ndarray, columns: torch.Tensor, tokenizer: Any,
                    top: int = TOP_TOKENS) -> dict[str, Any]:
    """Per topic: top tokens and weights, prevalence, concentration; inter-topic cosine.

    * prevalence: the topic's share of the reconstructed mass Σ_{p,v} W_pk·H_kv;
    * dominant_share: fraction of non-empty positions whose largest W entry is this topic;
    * concentration: share of the topic's H mass carried by its ``top`` tokens (1 = the topic
      is exactly those tokens).
    """
    mass = w.sum(axis=0) * h.sum(axis=1)
    total = float(mass.sum()) or 1.0
    used = w.sum(axis=1) > 0
    dominant = np.bincount(w[used].argmax(axis=1), minlength=h.shape[0]) / max(int(used.sum()), 1)
    unit = h / np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-12)
    topics = []
    for k in range(h.shape[0]):
        order = np.argsort(-h[k], kind="stable")[:top]
        order = order[h[k, order] > 0]
        ids = columns[torch.from_numpy(order)].tolist()
        weight_sum = float(h[k].sum()) or 1.0
        topics.append({
            "topic": k,
            "tokens": decode_tokens(tokenizer, ids),
            "ids": ids,
            "weights": [round(float(v), 6) for v in h[k, order]],
            "prevalence": round(float(mass[k]) / total, 6),
            "dominant_share": round(float(dominant[k]), 6),
            "concentration": round(float(h[k, order].sum()) / weight_sum, 6),
        })
    cosine = (unit @ unit.T).round(6).tolist()
    return {"topics": topics, "cosine": cosine}


def mine_topics(idx: torch.Tensor, val: torch.Tensor, tokenizer: Any, n_topics: int = 3,
                binary: bool = False, orthogonal: float = 0.0, seed: int = 0,
                top: int = TOP_TOKENS) -> dict[str, Any]:
    """Build the matrix, factor it and describe the topics (``{"skipped": why}`` if empty)."""
    x, columns = build_matrix(idx, val, binary)
    nonempty = int((np.diff(x.indptr) > 0).sum())
    n = min(n_topics, nonempty, x.shape[1])
    if n < 1:
        return {"skipped": "no promoted entries to factor (the models do not differ)"}
    w, h = factorize(x, n, seed)
    result = {"n_topics": n, "n_positions": int(x.shape[0]), "n_tokens": int(x.shape[1]),
              "nnz": int(x.nnz), "values": "binary" if binary else "relu",
              "orthogonal": orthogonal}
    if orthogonal > 0:
        w, h = orthogonal_refine(x, w, h, orthogonal)
    result["relative_error"] = round(_relative_error(x, w, h), 6)
    result.update(describe_topics(w, h, columns, tokenizer, top))
    return result


def _relative_error(x: Any, w: np.ndarray, h: np.ndarray) -> float:
    """‖X − WH‖_F / ‖X‖_F without forming WH: ‖X‖² − 2⟨X, WH⟩ + ‖WᵀW ∘ HHᵀ‖_sum."""
    xx = float(x.multiply(x).sum())
    cross = float((x @ h.T * w).sum())  # ⟨X, WH⟩ = Σ (X Hᵀ) ∘ W
    wh = float(((w.T @ w) * (h @ h.T)).sum())
    return float(np.sqrt(max(xx - 2 * cross + wh, 0.0) / max(xx, 1e-30)))
