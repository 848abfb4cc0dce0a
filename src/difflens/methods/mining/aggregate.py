"""Diff Mining stage 2 (pure core): streaming, mergeable statistics of Δ.

Per token v over all valid positions P:
  * ``count_pos[v]``: positions where v is among the top-K of Δ_t with Δ_t[v] > 0
    (``count_neg``: top-K of −Δ_t with Δ_t[v] < 0).  Requiring the sign means two identical
    models count nothing, instead of whatever ``topk`` returns among ties at zero;
  * ``sum_delta[v]`` = Σ_t Δ_t[v] (float64), ``n_positive[v]`` = #{t: Δ_t[v] > 0},
    ``n_negative[v]`` = #{t: Δ_t[v] < 0}.
All of these are sums, so two accumulators over disjoint positions merge by addition.

A bounded sample of positions keeps its top-K ids and values (``(M, K)``) for NMF and example
contexts.  Positions are chosen by the smallest hash of their global id, not by arrival order or a
random generator: the sample of a merged accumulator is exactly the sample of the whole, and
memory stays flat however long the corpus is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from difflens.errors import DifflensError

# Largest |Δ| (in logits) still called "no difference": identical weights give exact zeros on
# the same code path and ~1e-6 along two paths, while any real finetune moves logits by ≫ 0.01.
NO_DIFFERENCE_ATOL = 1e-4
_HASH_MULT = 0x9E3779B1  # Knuth's multiplicative hash (golden ratio · 2^32), odd
_VOCAB_TENSORS = ("count_pos", "count_neg", "n_positive", "n_negative", "sum_delta")
_CHUNK = 64  # rows per sign-count chunk: a reused 64 × V float buffer (64 MB at V = 262k)


def position_keys(position_ids: torch.Tensor) -> torch.Tensor:
    """Pseudo-random but deterministic ``(n,)`` int64 keys in [0, 2^32) for position ids."""
    x = (position_ids.to(torch.int64) * _HASH_MULT) & 0xFFFFFFFF
    x ^= x >> 15  # mix high bits down so consecutive ids do not give ordered keys
    return (x * 0x2C1B3C6D) & 0xFFFFFFFF


@dataclass
class MiningCounts:
    """Mergeable Top-K counts and moments of Δ over a vocabulary of ``vocab`` tokens.

    Tensors: ``count_pos``, ``count_neg``, ``n_positive``, ``n_negative``: ``(V,)`` int64;
    ``sum_delta``: ``(V,)`` float64; sample ``sample_ids``: ``(M,)`` int64 global position ids,
    ``sample_idx``: ``(M, K)`` int32 top-K token ids, ``sample_val``: ``(M, K)`` float32 their Δ
    (≤ 0 entries mean "not promoted" and are ignored downstream).
    """

    vocab: int
    top_k: int
    sample_size: int = 65_536
    n_positions: int = 0
    max_abs_delta: float = 0.0
    count_pos: torch.Tensor = field(init=False)
    count_neg: torch.Tensor = field(init=False)
    n_positive: torch.Tensor = field(init=False)
    n_negative: torch.Tensor = field(init=False)
    sum_delta: torch.Tensor = field(init=False)
    sample_ids: torch.Tensor = field(init=False)
    sample_idx: torch.Tensor = field(init=False)
    sample_val: torch.Tensor = field(init=False)
    _scratch: torch.Tensor | None = field(init=False, default=None, repr=False)
    _pending: list = field(init=False, default_factory=list, repr=False)
    _pending_rows: int = field(init=False, default=0, repr=False)

    def __post_init__(self) -> None:
        if self.top_k > self.vocab:
            raise DifflensError(
                f"top-k {self.top_k} is larger than the vocabulary ({self.vocab} tokens); "
                f"use --top-k {min(100, self.vocab)} or less"
            )
        if self.top_k <= 0:
            raise DifflensError(f"top-k must be positive, got {self.top_k}")
        zeros = lambda dtype: torch.zeros(self.vocab, dtype=dtype)  # noqa: E731
        self.count_pos, self.count_neg = zeros(torch.int64), zeros(torch.int64)
        self.n_positive, self.n_negative = zeros(torch.int64), zeros(torch.int64)
        self.sum_delta = zeros(torch.float64)
        self.sample_ids = torch.zeros(0, dtype=torch.int64)
        self.sample_idx = torch.zeros((0, self.top_k), dtype=torch.int32)
        self.sample_val = torch.zeros((0, self.top_k), dtype=torch.float32)

    def update(self, delta: torch.Tensor, valid: torch.Tensor | None = None,
               position_ids: torch.Tensor | None = None) -> None:
        """Fold one batch in (``delta`` is not modified).

        Args:
            delta: ``(n, V)`` Δ rows, float32, on any device: the counts follow it there (on a
                GPU nothing but the ``(n, K)`` top-K of each batch comes back to the CPU).
            valid: ``(n,)`` bool; None = all rows count.  Invalid rows are skipped by weighting
                them 0 in the reductions (no copy of the ``(n, V)`` block is made).
            position_ids: ``(n,)`` global position ids (for the sample); None = continue
                numbering after the positions seen so far.
        """
        n, vocab = delta.shape
        if vocab != self.vocab:
            raise ValueError(f"delta has {vocab} columns, accumulator expects {self.vocab}")
        if position_ids is None:
            position_ids = torch.arange(self.n_positions, self.n_positions + n)
        valid = torch.ones(n, dtype=torch.bool) if valid is None else valid.cpu()
        if not bool(valid.any()):
            return
        self._to(delta.device)
        delta = delta.float()
        on = valid.to(delta.device)
        k = self.top_k
        top_val, top_idx = delta.topk(k, dim=1)
        low_val, low_idx = delta.topk(k, dim=1, largest=False)
        top_val, top_idx, low_val, low_idx = (t[on] for t in (top_val, top_idx, low_val,
                                                               low_idx))
        self.count_pos += torch.bincount(top_idx[top_val > 0], minlength=vocab)
        self.count_neg += torch.bincount(low_idx[low_val < 0], minlength=vocab)
        weight = on.to(delta.dtype)
        # Column sums as (1, n) @ (n, V) matmuls: BLAS, and invalid rows weigh 0.
        self.sum_delta += (weight @ delta).double()
        pos, neg = self._sign_counts(delta, weight)
        self.n_positive += pos
        self.n_negative += neg
        self.n_positions += int(valid.sum())
        self.max_abs_delta = max(self.max_abs_delta, float(top_val[:, 0].max()),
                                 float(-low_val[:, 0].min()))
        self._add_sample(position_ids[valid], top_idx.to(torch.int32).cpu(),
                         top_val.float().cpu())

    def _to(self, device: torch.device | str) -> None:
        """Move the ``(V,)`` accumulators (the sample always stays on the CPU)."""
        if self.count_pos.device == torch.device(device):
            return
        for name in _VOCAB_TENSORS:
            setattr(self, name, getattr(self, name).to(device))
        self._scratch = None

    def _sign_counts(self, delta: torch.Tensor, weight: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """#{Δ>0} and #{Δ<0} per column over weighted rows, ``(V,)`` int64 each.

        ``(delta > 0).sum(0)`` allocates a fresh ``(n, V)`` mask and reduces bools along the
        slow axis (~15× a float column sum at V = 262k on CPU); instead sign() goes into a
        reused chunk buffer and two matmuls give Σ sign = pos − neg and Σ |sign| = pos + neg.
        """
        vocab = delta.shape[1]
        diff = torch.zeros(vocab, dtype=torch.float64, device=delta.device)
        total = torch.zeros(vocab, dtype=torch.float64, device=delta.device)
        for start in range(0, delta.shape[0], _CHUNK):
            rows = delta[start:start + _CHUNK]
            buf = self._buffer(rows.shape[0], vocab, delta.device)
            torch.sign(rows, out=buf)
            w = weight[start:start + _CHUNK]
            diff += (w @ buf).double()
            total += (w @ buf.abs_()).double()
        return ((total + diff) / 2).round().long(), ((total - diff) / 2).round().long()

    def _buffer(self, rows: int, vocab: int, device: torch.device) -> torch.Tensor:
        if self._scratch is None or self._scratch.shape[1] != vocab:
            self._scratch = torch.empty((_CHUNK, vocab), dtype=torch.float32, device=device)
        return self._scratch[:rows]

    def _add_sample(self, ids: torch.Tensor, idx: torch.Tensor, val: torch.Tensor) -> None:
        self._pending.append((ids, idx, val))
        self._pending_rows += int(ids.shape[0])
        # Concatenate and shrink only when over budget: amortised O(1) per position.
        if self._pending_rows > self.sample_size:
            self._flush()

    def _flush(self) -> None:
        """Fold pending sample chunks in; keep the ``sample_size`` positions with the smallest
        hash keys, sorted by position id."""
        if self._pending:
            ids, idx, val = zip(*self._pending, strict=True)
            self.sample_ids = torch.cat([self.sample_ids, *ids])
            self.sample_idx = torch.cat([self.sample_idx, *idx])
            self.sample_val = torch.cat([self.sample_val, *val])
            self._pending, self._pending_rows = [], 0
        if self.sample_ids.shape[0] > self.sample_size:
            keys = position_keys(self.sample_ids) * (1 << 31) + self.sample_ids  # unique keys
            keep = keys.topk(self.sample_size, largest=False).indices
        else:
            keep = torch.arange(self.sample_ids.shape[0])
        keep = keep[self.sample_ids[keep].argsort()]
        self.sample_ids = self.sample_ids[keep]
        self.sample_idx, self.sample_val = self.sample_idx[keep], self.sample_val[keep]

    def finalize(self) -> MiningCounts:
        """Shrink the sample to its final size (sorted by position); check P > 0."""
        if self.n_positions == 0:
            raise DifflensError(
                "no valid positions to compare: every position is padding or masked; use "
                "longer texts, a larger --max-tokens, or drop --mask-bos/--mask-special"
            )
        self._to("cpu")
        self._flush()
        return self

    def merge(self, other: MiningCounts) -> MiningCounts:
        """Add ``other`` (disjoint positions) into ``self``; returns ``self``."""
        if (other.vocab, other.top_k) != (self.vocab, self.top_k):
            raise ValueError("cannot merge counts of different vocabularies or K")
        for name in _VOCAB_TENSORS:
            getattr(self, name).add_(getattr(other, name).to(getattr(self, name).device))
        self.n_positions += other.n_positions
        self.max_abs_delta = max(self.max_abs_delta, other.max_abs_delta)
        other._flush()
        self._add_sample(other.sample_ids, other.sample_idx, other.sample_val)
        return self

    def __getstate__(self) -> dict:
        """Pickled (sent between torchrun ranks) as its tensors on the CPU, pending sample
        folded in and without the ``64 × V`` scratch buffer."""
        return self.to_tensors()

    def __setstate__(self, state: tuple[dict[str, torch.Tensor], dict[str, str]]) -> None:
        self.__dict__.update(MiningCounts.from_tensors(*state).__dict__)

    @property
    def no_difference(self) -> bool:
        """True when Δ is zero up to float noise everywhere (e.g. a model paired with itself)."""
        return self.max_abs_delta <= NO_DIFFERENCE_ATOL

    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        self._to("cpu")
        self._flush()
        names = (*_VOCAB_TENSORS, "sample_ids", "sample_idx", "sample_val")
        meta = {"vocab": str(self.vocab), "top_k": str(self.top_k),
                "sample_size": str(self.sample_size), "n_positions": str(self.n_positions),
                "max_abs_delta": repr(self.max_abs_delta)}
        return {name: getattr(self, name) for name in names}, meta

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> MiningCounts:
        counts = cls(int(meta["vocab"]), int(meta["top_k"]), int(meta["sample_size"]),
                     int(meta["n_positions"]), float(meta["max_abs_delta"]))
        for name in (*_VOCAB_TENSORS, "sample_ids", "sample_idx", "sample_val"):
            setattr(counts, name, tensors[name])
        return counts


def merge_ranks(counts: MiningCounts) -> MiningCounts | None:
    """The counts of the whole corpus on torchrun's rank 0 (None on the other ranks; ``counts``
    itself when alone).

    Each rank's accumulator is gathered to rank 0 and folded in rank order with
    :meth:`MiningCounts.merge`: the ``(V,)`` counts add exactly (int64), ``sum_delta`` in
    float64, and the position sample keeps the smallest hash keys of the union — the very
    positions a single process would keep, since the rule depends only on the global ids.
    """
    from difflens import distributed as dd

    return dd.merged(counts, to_main=True)
