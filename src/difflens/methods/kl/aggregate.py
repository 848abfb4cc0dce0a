"""Streaming, mergeable aggregates of per-position KL and activation-difference norms.

Per batch the pass hands over ``(B, T, S)`` values — S statistics per position: forward,
reverse and symmetric KL, then ‖h_ft − h_base‖ at each measured layer; NaN where a position
does not count — plus the per-token fingerprint sums.  :class:`KLStats` folds them into:

* per position index ``t`` and statistic: count, Σx, Σx² (float64) → means per position and
  over the corpus;
* a histogram per statistic over fixed log-spaced edges (:data:`EDGES`, shared by every run so
  two halves merge by addition);
* the per-position values themselves, ``(N, T, S)`` float32 plus each model's top next token:
  4·S bytes a position (10 MB for 8,192 texts × 64 tokens × 5 statistics, flat next to the
  1 GB model), which makes the quantiles exact and lets any text be drawn with per-token heat.
  Nothing of size positions × vocabulary exists anywhere;
* a :class:`TopStore` per ranked statistic: the N highest positions with their windows of
  token ids and values (bounded: N windows);
* the fingerprint (``(V,)`` float64 sums).

``merge`` of two accumulators over consecutive text ranges equals one accumulator over both.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from difflens.errors import DifflensError

KL_STATS = ("forward", "reverse", "symmetric")
QUANTILES = (0.5, 0.9, 0.99, 0.999)
#: Histogram edges (shared by every run): 8 bins a decade over 1e-6 .. 1e5, plus one bin below
#: (exact zeros included) and one above.  Covers KL in nats and activation norms alike.
EDGES = tuple(10 ** (k / 8) for k in range(-48, 41))


def norm_name(layer: int) -> str:
    return f"norm_{layer}"


def stat_names(layers: list[int]) -> list[str]:
    """The S statistics of a run, in order: the three KL directions, then one norm a layer."""
    return [*KL_STATS, *(norm_name(layer) for layer in layers)]


class TopStore:
    """The ``n`` highest-scoring positions, each with a window of its text.

    Per entry: ``score``, ``text`` (global text index), ``pos``, ``start`` (first position of
    the window), ``ids`` ``(W,)`` token ids and ``values`` ``(W,)`` the same statistic at each
    window position (−1 / NaN past the text's ends or at positions that do not count);
    W = before + 1 + after.  Ordered by score, ties by (text, position), so streaming, merging
    and a dense sort agree exactly.
    """

    def __init__(self, n: int, before: int, after: int) -> None:
        self.n, self.before, self.after = n, before, after
        width = before + 1 + after
        self.score = torch.empty(0, dtype=torch.float64)
        self.text = torch.empty(0, dtype=torch.long)
        self.pos = torch.empty(0, dtype=torch.long)
        self.start = torch.empty(0, dtype=torch.long)
        self.ids = torch.empty(0, width, dtype=torch.long)
        self.values = torch.empty(0, width, dtype=torch.float32)

    _FIELDS = ("score", "text", "pos", "start", "ids", "values")

    def update(self, scores: torch.Tensor, ids: torch.Tensor, text_offset: int) -> None:
        """Offer a batch: ``scores`` ``(B, T)`` (NaN where a position does not count), ``ids``
        ``(B, T)``; row ``i`` is text ``text_offset + i``."""
        scores = scores.detach().cpu().double()
        flat = scores.reshape(-1)
        keep = (~torch.isnan(flat)).nonzero().squeeze(1)
        if keep.numel() == 0:
            return
        t = scores.shape[1]
        order = _ranked(flat[keep], keep // t, keep % t)[: self.n]
        chosen = keep[order]
        rows, cols = chosen // t, chosen % t
        width = self.before + 1 + self.after
        start = (cols - self.before).clamp_min(0)
        offsets = start[:, None] + torch.arange(width)
        inside = offsets < t
        grab = offsets.clamp_max(t - 1)
        window_ids = torch.where(inside, ids.cpu()[rows[:, None], grab], -1)
        window_values = torch.where(inside, scores[rows[:, None], grab].float(), math.nan)
        self._absorb(flat[chosen], rows + text_offset, cols, start, window_ids, window_values)

    def merge(self, other: TopStore) -> TopStore:
        """Fold ``other`` (same n and window) into this store; returns self."""
        self._absorb(other.score, other.text, other.pos, other.start, other.ids, other.values)
        return self

    def _absorb(self, *new: torch.Tensor) -> None:
        parts = [torch.cat([getattr(self, name), extra]) for name, extra in zip(
            self._FIELDS, new, strict=True)]
        order = _ranked(parts[0], parts[1], parts[2])[: self.n]
        for name, part in zip(self._FIELDS, parts, strict=True):
            setattr(self, name, part[order])

    def __len__(self) -> int:
        return int(self.score.shape[0])

    def to_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.{name}": getattr(self, name) for name in self._FIELDS}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str, n: int, before: int,
                     after: int) -> TopStore:
        store = cls(n, before, after)
        for name in cls._FIELDS:
            setattr(store, name, tensors[f"{prefix}.{name}"])
        return store


def _ranked(score: torch.Tensor, text: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Indices ordering entries by score descending, then text, then position (stable sorts
    applied from the last key to the first)."""
    order = torch.argsort(pos, stable=True)
    order = order[torch.argsort(text[order], stable=True)]
    return order[torch.argsort(-score[order], stable=True)]


class KLStats:
    """The streaming accumulator of a KL pass (see the module docstring).

    Args:
        max_tokens: T, positions per text; layers: the measured layers (norm statistics);
        vocab: V of the fingerprint (0: no fingerprint); ranked: statistics that get a
        :class:`TopStore`; top_n, before, after: the stores' size and windows.
    """

    def __init__(self, max_tokens: int, layers: list[int], vocab: int, ranked: list[str],
                 top_n: int, before: int, after: int) -> None:
        self.max_tokens, self.layers, self.vocab = max_tokens, list(layers), vocab
        self.names = stat_names(self.layers)
        s = len(self.names)
        self.count = torch.zeros(max_tokens, dtype=torch.long)
        self.sums = torch.zeros(s, max_tokens, dtype=torch.float64)
        self.squares = torch.zeros(s, max_tokens, dtype=torch.float64)
        self.hist = torch.zeros(s, len(EDGES) + 1, dtype=torch.long)
        self.values = torch.empty(0, max_tokens, s, dtype=torch.float32)
        self.top_ft = torch.empty(0, max_tokens, dtype=torch.int32)
        self.top_base = torch.empty(0, max_tokens, dtype=torch.int32)
        self.fingerprint = torch.zeros(3, vocab, dtype=torch.float64)  # contribution, p_ft, p_base
        self.stores = {name: TopStore(top_n, before, after) for name in ranked}
        self._chunks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    @property
    def n_texts(self) -> int:
        return int(self.values.shape[0]) + sum(c[0].shape[0] for c in self._chunks)

    @property
    def n_positions(self) -> int:
        return int(self.count.sum())

    def update(self, values: torch.Tensor, ids: torch.Tensor, top_ft: torch.Tensor,
               top_base: torch.Tensor, sums: torch.Tensor | None = None) -> None:
        """Add one batch of consecutive texts.

        Args:
            values: ``(B, T, S)`` statistics per position, NaN where a position does not count.
            ids: ``(B, T)`` token ids; top_ft, top_base: ``(B, T)`` each model's top next token.
            sums: ``(3, V)`` fingerprint sums of the batch (contribution, Σp_ft, Σp_base).
        """
        values = values.detach().cpu().float()
        valid = ~torch.isnan(values[..., 0])
        x = torch.nan_to_num(values.double(), nan=0.0)
        self.count += valid.sum(0)
        self.sums += x.sum(0).T
        self.squares += (x * x).sum(0).T
        edges = torch.tensor(EDGES, dtype=torch.float64)
        for i in range(len(self.names)):
            kept = values[..., i][valid].double()
            bins = torch.bucketize(kept, edges, right=True)
            self.hist[i] += torch.bincount(bins, minlength=len(EDGES) + 1)
        offset = self.n_texts
        for name, store in self.stores.items():
            store.update(values[..., self.names.index(name)], ids, offset)
        self._chunks.append((values, top_ft.detach().cpu().int(), top_base.detach().cpu().int()))
        if sums is not None:
            self.fingerprint += sums.detach().cpu().double()

    def _flush(self) -> None:
        if self._chunks:
            self.values = torch.cat([self.values, *(c[0] for c in self._chunks)])
            self.top_ft = torch.cat([self.top_ft, *(c[1] for c in self._chunks)])
            self.top_base = torch.cat([self.top_base, *(c[2] for c in self._chunks)])
            self._chunks = []

    def merge(self, other: KLStats) -> KLStats:
        """Fold ``other`` — the texts that follow this accumulator's — into it; returns self."""
        if other.names != self.names or other.max_tokens != self.max_tokens:
            raise ValueError("cannot merge KL statistics of different layers or lengths")
        self._flush()
        other._flush()
        offset = self.n_texts
        self.count += other.count
        self.sums += other.sums
        self.squares += other.squares
        self.hist += other.hist
        self.fingerprint += other.fingerprint
        for name, store in self.stores.items():
            moved = TopStore(store.n, store.before, store.after)
            theirs = other.stores[name]
            moved._absorb(theirs.score, theirs.text + offset, theirs.pos, theirs.start,
                          theirs.ids, theirs.values)
            store.merge(moved)
        self.values = torch.cat([self.values, other.values])
        self.top_ft = torch.cat([self.top_ft, other.top_ft])
        self.top_base = torch.cat([self.top_base, other.top_base])
        return self

    # ---- read-outs --------------------------------------------------------------------------
    def check_positions(self) -> None:
        if self.n_positions == 0:
            raise DifflensError("no valid positions: every position is padding or masked; use "
                                "longer texts, a larger --max-tokens, or --keep-bos")

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per statistic: count, mean, std, max, exact quantiles (corpus-wide)."""
        self._flush()
        self.check_positions()
        n = self.n_positions
        out = {}
        for i, name in enumerate(self.names):
            column = self.values[..., i]
            kept = column[~torch.isnan(column)].double()
            mean = float(self.sums[i].sum()) / n
            var = max(0.0, float(self.squares[i].sum()) / n - mean * mean)
            qs = torch.quantile(kept, torch.tensor(QUANTILES, dtype=torch.float64)) \
                if kept.numel() <= 16_000_000 else _sorted_quantiles(kept)
            out[name] = {"count": n, "mean": mean, "std": math.sqrt(var),
                         "max": float(kept.max()),
                         "quantiles": {str(q): float(v) for q, v in zip(QUANTILES, qs,
                                                                         strict=True)}}
        return out

    def per_position(self) -> dict[str, list[float | None]]:
        """Mean of each statistic per position index (None where no text has that position)."""
        return {name: [float(s) / int(c) if int(c) else None
                       for s, c in zip(self.sums[i], self.count, strict=True)]
                for i, name in enumerate(self.names)}

    def histograms(self) -> dict[str, list[int]]:
        return {name: self.hist[i].tolist() for i, name in enumerate(self.names)}

    def column(self, name: str) -> torch.Tensor:
        """``(N, T)`` float32 values of one statistic (NaN where a position does not count)."""
        self._flush()
        return self.values[..., self.names.index(name)]

    # ---- persistence ------------------------------------------------------------------------
    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        self._flush()
        tensors = {"count": self.count, "sums": self.sums, "squares": self.squares,
                   "hist": self.hist, "values": self.values, "top_ft": self.top_ft,
                   "top_base": self.top_base, "fingerprint": self.fingerprint}
        meta = {"layers": ",".join(map(str, self.layers)), "vocab": str(self.vocab),
                "ranked": ",".join(self.stores), "max_tokens": str(self.max_tokens)}
        for name, store in self.stores.items():
            tensors.update(store.to_tensors(f"store.{name}"))
            meta["store"] = f"{store.n},{store.before},{store.after}"
        return tensors, meta

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> KLStats:
        layers = [int(x) for x in meta["layers"].split(",") if x]
        ranked = [x for x in meta["ranked"].split(",") if x]
        n, before, after = (int(x) for x in meta.get("store", "1,0,0").split(","))
        stats = cls(int(meta["max_tokens"]), layers, int(meta["vocab"]), [], n, before, after)
        for name in ("count", "sums", "squares", "hist", "values", "top_ft", "top_base",
                     "fingerprint"):
            setattr(stats, name, tensors[name])
        stats.stores = {name: TopStore.from_tensors(tensors, f"store.{name}", n, before, after)
                        for name in ranked}
        return stats


def _sorted_quantiles(x: torch.Tensor) -> torch.Tensor:
    """Linear-interpolated quantiles (torch.quantile's rule) for tensors it refuses (> 16M)."""
    ordered, _ = torch.sort(x)
    at = torch.tensor(QUANTILES, dtype=torch.float64) * (x.numel() - 1)
    lo, hi = at.floor().long(), at.ceil().long()
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (at - lo)
