"""Sparse selection, encode-gradient and decode kernels for top-k style dictionaries.

Why this module exists: with ``k ≈ 100`` of ``F ≈ 8192`` latents active, a dense implementation
spends five ``B × F × D`` matrix products per step (encoder forward, encoder weight-gradient,
decoder forward, decoder weight-gradient, latent gradient), while only the encoder forward truly
needs to be dense.  Here the other four touch only the ``nnz ≈ k·B`` active entries:

* decode: ``embedding_bag`` (sum of the weighted decoder rows of each sample);
* decoder weight-gradient and encoder weight-gradient: ``embedding_bag`` over the same entries
  sorted by latent (sum of the weighted inputs / output-gradients that each latent saw);
* latent-value gradient: ``sampled_addmm`` (a dot product per active entry only).

All of these are exact (no approximation) and deterministic on CPU.  ``D`` below is the
flattened input width ``n_models · d``.

The sparse kernels win when ``k ≪ F``; at small widths (or on hardware where dense matrix
products are very fast) the dense path - what a plain PyTorch loop does - is quicker.  The
dictionary measures both on its real batch (:func:`time_calls`) and keeps the faster one.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class SparseCode:
    """Positions of the active latents of a batch, sorted row-major (by sample, then latent).

    ``rows``/``cols``: ``(nnz,)`` int64.  Derived index structures are computed once, on first
    use, and shared by the forward and backward passes.
    """

    rows: Tensor
    cols: Tensor
    batch_size: int
    width: int
    _cache: dict[str, Tensor] = field(default_factory=dict, repr=False)

    @property
    def nnz(self) -> int:
        return int(self.rows.numel())

    def row_offsets(self) -> Tensor:
        """``(B,)`` start of each sample's entries (``embedding_bag`` offsets)."""
        if "row_offsets" not in self._cache:
            # rows are sorted: a binary search per sample, cheaper than bincount + cumsum.
            starts = torch.arange(self.batch_size, device=self.rows.device)
            self._cache["row_offsets"] = torch.searchsorted(self.rows, starts)
        return self._cache["row_offsets"]

    def column_order(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(order, rows[order], offsets)``: entries grouped by latent, for weight gradients."""
        if "order" not in self._cache:
            # int32 keys sort faster; stable keeps rows ascending within each latent.
            order = torch.argsort(self.cols.to(torch.int32), stable=True)
            latents = torch.arange(self.width, device=self.cols.device)
            self._cache["order"] = order
            self._cache["rows_by_col"] = self.rows[order]
            self._cache["col_offsets"] = torch.searchsorted(self.cols[order], latents)
        return self._cache["order"], self._cache["rows_by_col"], self._cache["col_offsets"]

    def csr_pattern(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """``(B, F)`` sparse CSR tensor of ones with this pattern (for ``sampled_addmm``)."""
        if "crow" not in self._cache:
            bounds = torch.arange(self.batch_size + 1, device=self.rows.device)
            self._cache["crow"] = torch.searchsorted(self.rows, bounds)
        ones = torch.ones(self.nnz, dtype=dtype, device=self.rows.device)
        with warnings.catch_warnings():
            # "Sparse CSR tensor support is in beta": we only use the stable sampled_addmm path.
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(
                self._cache["crow"], self.cols, ones, size=(self.batch_size, self.width),
                check_invariants=False,
            )

    def mask(self) -> Tensor:
        """``(B, F)`` bool mask of the active entries (for the dense path)."""
        if "mask" not in self._cache:
            mask = torch.zeros(self.batch_size, self.width, dtype=torch.bool,
                               device=self.rows.device)
            self._cache["mask"] = mask.index_put_((self.rows, self.cols), mask.new_ones(()))
        return self._cache["mask"]

    def to_dense(self, values: Tensor) -> Tensor:
        """``(B, F)`` dense latents with ``values`` ``(nnz,)`` at this pattern (differentiable)."""
        dense = values.new_zeros(self.batch_size, self.width)
        return dense.index_put((self.rows, self.cols), values)


def _from_mask(mask: Tensor) -> SparseCode:
    idx = mask.nonzero()  # row-major order, which embedding_bag needs
    code = SparseCode(idx[:, 0], idx[:, 1], mask.shape[0], mask.shape[1])
    code._cache["mask"] = mask  # the dense path multiplies by it: no need to rebuild it
    return code


def largest(scores: Tensor, count: int, hint: float | None = None) -> Tensor:
    """The ``min(count, numel)`` largest entries of ``scores`` (any shape), unordered.

    ``hint`` is a guess of the smallest of them (e.g. the previous batch's cutoff): when at
    least ``count`` entries reach ``0.8 · hint`` only those are searched — several times faster
    on a ``B × F`` score matrix; the result does not depend on it."""
    flat = scores.reshape(-1)
    count = min(int(count), flat.numel())
    candidates = flat
    if hint is not None and hint > 0:
        subset = flat[flat >= 0.8 * hint]
        if subset.numel() >= count:
            candidates = subset
    return torch.topk(candidates, count, sorted=False).values


def batch_topk(scores: Tensor, k_total: int, hint: float | None = None) -> tuple[SparseCode, float]:
    """Keep the ``k_total`` largest positive entries of ``scores`` ``(B, F)`` over the whole batch.

    Returns the pattern and the cutoff (the smallest kept score, 0.0 if nothing is positive).
    ``hint`` is a guess of the cutoff (e.g. the previous batch's): when at least ``k_total``
    scores reach ``0.8 · hint`` the exact selection runs only on those candidates instead of all
    ``B·F`` scores, several times faster.  The result does not depend on ``hint``.  Exact ties at
    the cutoff are all kept (measure-zero for float activations).
    """
    flat = scores.reshape(-1)
    k_total = min(int(k_total), flat.numel())
    if k_total <= 0:
        return _from_mask(torch.zeros_like(scores, dtype=torch.bool)), 0.0
    cutoff = float(largest(scores, k_total, hint).min())
    mask = scores >= cutoff if cutoff > 0 else scores > 0
    if cutoff <= 0:  # fewer positive scores than k_total: keep all positive ones
        positive = flat[flat > 0]
        cutoff = float(positive.min()) if positive.numel() else 0.0
    return _from_mask(mask), cutoff


def threshold_select(scores: Tensor, threshold: float) -> SparseCode:
    """Keep the entries of ``scores`` ``(B, F)`` strictly above ``threshold`` (and above 0)."""
    return _from_mask(scores > max(float(threshold), 0.0))


def rowwise_topk(scores: Tensor, columns: Tensor, k: int, width: int) -> tuple[SparseCode, Tensor]:
    """Per-sample top-``k`` among a subset of latents, e.g. the dead ones for AuxK.

    ``scores``: ``(B, C)`` scores of the latents ``columns`` ``(C,)``.  Returns the pattern (in
    the full ``width``-latent index space; non-positive picks dropped) and the positions of the
    picks in ``scores`` as a flat ``(nnz,)`` index, to gather values with.
    """
    batch, n_cols = scores.shape
    k = min(int(k), n_cols)
    top, local = torch.topk(scores, k, dim=1, sorted=False)  # (B, k)
    # Order each row's picks by latent (a cheap per-row sort, no global sort) so that the code
    # is row-major like the others.
    local, perm = torch.sort(local, dim=1)
    keep = (torch.gather(top, 1, perm) > 0).reshape(-1)
    rows = torch.arange(batch, device=scores.device).repeat_interleave(k)[keep]
    local = local.reshape(-1)[keep]
    return SparseCode(rows, columns[local], batch, width), rows * n_cols + local


class _EncodeGather(torch.autograd.Function):
    """Values of the active pre-activations, with a sparse backward to the encoder.

    Forward returns the given ``values`` (computed by the caller's dense, gradient-free encoder
    matmul).  Backward: ``∂W_enc[j] = Σ_{n: (n, j) active} g_nj · x_n``, ``∂b_enc[j] = Σ g_nj``,
    ``∂x_n = Σ_j g_nj W_enc[j]`` - cost ``O(nnz · D)`` instead of ``O(B · F · D)``.  Every active
    value is > 0, so the ReLU passes the gradient unchanged.
    """

    @staticmethod
    def forward(ctx, values, x, w_enc, b_enc, code):
        ctx.code = code
        ctx.save_for_backward(x, w_enc)
        return values.clone()

    @staticmethod
    def backward(ctx, grad):
        x, w_enc = ctx.saved_tensors
        code: SparseCode = ctx.code
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            grad_x = F.embedding_bag(
                code.cols, w_enc, code.row_offsets(), mode="sum", per_sample_weights=grad
            )
        if ctx.needs_input_grad[2]:
            order, rows_by_col, col_offsets = code.column_order()
            grad_w = F.embedding_bag(
                rows_by_col, x, col_offsets, mode="sum", per_sample_weights=grad[order]
            )
        if ctx.needs_input_grad[3]:
            grad_b = torch.zeros(code.width, dtype=grad.dtype, device=grad.device)
            grad_b.index_add_(0, code.cols, grad)
        return None, grad_x, grad_w, grad_b, None


class _SparseDecode(torch.autograd.Function):
    """``out_n = Σ_{j active in n} v_nj · W_dec[j]`` with a sparse backward."""

    @staticmethod
    def forward(ctx, values, w_dec, code):
        ctx.code = code
        ctx.save_for_backward(values, w_dec)
        return F.embedding_bag(
            code.cols, w_dec, code.row_offsets(), mode="sum", per_sample_weights=values
        )

    @staticmethod
    def backward(ctx, grad):
        values, w_dec = ctx.saved_tensors
        code: SparseCode = ctx.code
        grad_values = grad_w = None
        grad = grad.contiguous()
        if ctx.needs_input_grad[0]:
            # One dot product <grad_n, W_dec[j]> per active entry (SDDMM).
            pattern = code.csr_pattern(grad.dtype)
            sampled = torch.sparse.sampled_addmm(pattern, grad, w_dec.T, beta=0.0)
            grad_values = sampled.values()
        if ctx.needs_input_grad[1]:
            order, rows_by_col, col_offsets = code.column_order()
            grad_w = F.embedding_bag(
                rows_by_col, grad, col_offsets, mode="sum", per_sample_weights=values[order]
            )
        return grad_values, grad_w, None


def encode_gather(
    values: Tensor, x: Tensor, w_enc: Tensor, b_enc: Tensor, code: SparseCode
) -> Tensor:
    """Attach encoder gradients to active latent ``values`` ``(nnz,)``.

    ``x``: ``(B, D)`` encoder input; ``w_enc``: ``(F, D)``; ``b_enc``: ``(F,)``.  The caller
    computed ``values = relu(x @ w_enc.T + b_enc)[code.rows, code.cols]`` without gradients.
    """
    return _EncodeGather.apply(values, x, w_enc, b_enc, code)


def sparse_decode(values: Tensor, w_dec: Tensor, code: SparseCode) -> Tensor:
    """``(B, D)`` = dense latents ``(B, F)`` (given sparsely by ``values``/``code``) @ ``w_dec``.

    ``w_dec``: ``(F, D)``.  No bias is added.  Differentiable in ``values`` and ``w_dec``.
    """
    return _SparseDecode.apply(values, w_dec, code)


def time_calls(calls: dict[str, Callable[[], object]], device: torch.device,
               repeats: int = 3, max_repeats: int = 9, margin: float = 0.1) -> dict[str, float]:
    """Seconds of one call of each of ``calls``: the fastest of the timed rounds.

    Each call runs once untimed first (allocations, first-call overheads).  The rounds
    interleave the calls so that a slow spell of a shared machine hits all of them, and the
    minimum is kept because interference only ever adds time.  After ``repeats`` rounds, more
    (up to ``max_repeats``) run while the two fastest are within ``margin`` of each other, so a
    close call gets more evidence.  On CUDA the device is synchronised around every call
    (kernels run asynchronously).
    """
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda _device: None)
    for call in calls.values():
        call()
    best = dict.fromkeys(calls, float("inf"))
    for round_ in range(max(repeats, max_repeats)):
        if round_ >= repeats and len(best) > 1:
            first, second = sorted(best.values())[:2]
            if second > first * (1 + margin):
                break
        for name, call in calls.items():
            sync(device)
            start = time.perf_counter()
            call()
            sync(device)
            best[name] = min(best[name], time.perf_counter() - start)
    return best
