"""Top-activating contexts per component: a bounded, mergeable top-N store (pure core).

For every component ``c`` and sign ``s ∈ {+, −}`` the store keeps the ``n`` positions with the
largest ``s · (δ · c)`` seen so far, each with its window of surrounding token ids and the
projection of δ at every token of the window (the per-token heat of the report).  Memory is
``C × 2 × n × W`` entries whatever the corpus size; two stores over different texts merge into
the store of their union (top-``n`` of the concatenation), so shards of a corpus can be
processed apart and combined.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from difflens.data.tokenize import decode_tokens

SIGNS = ("positive", "negative")


@dataclass
class TopContexts:
    """Best ``n`` positions per component and sign, with their token windows.

    ``values``: ``(C, 2, n)`` float32 signed projections (``-inf`` = empty slot), largest first;
    ``text``, ``pos``: ``(C, 2, n)`` int64 text index and position (−1 when empty);
    ``tokens``: ``(C, 2, n, W)`` int64 ids of positions ``pos − left … pos + right`` (−1 outside
    the text or at padding); ``heat``: ``(C, 2, n, W)`` float32 signed projection at each of
    them (NaN where the position does not count: outside, padding, position 0).
    """

    left: int
    right: int
    values: torch.Tensor
    text: torch.Tensor
    pos: torch.Tensor
    tokens: torch.Tensor
    heat: torch.Tensor

    @classmethod
    def empty(cls, n_components: int, n: int, left: int, right: int) -> TopContexts:
        shape = (n_components, 2, n)
        width = left + right + 1
        return cls(left, right, torch.full(shape, float("-inf")),
                   torch.full(shape, -1, dtype=torch.long), torch.full(shape, -1, dtype=torch.long),
                   torch.full((*shape, width), -1, dtype=torch.long),
                   torch.full((*shape, width), float("nan")))

    @property
    def n(self) -> int:
        return int(self.values.shape[-1])

    def update(self, proj: torch.Tensor, valid: torch.Tensor, ids: torch.Tensor,
               attention: torch.Tensor, text_offset: int) -> TopContexts:
        """Add one batch; returns self.

        Args:
            proj: ``(B, T, C)`` projections δ·c.
            valid: ``(B, T)`` bool, positions that may be chosen (and get heat).
            ids, attention: ``(B, T)`` token ids and mask of the batch.
            text_offset: corpus index of the batch's first text.
        """
        proj, valid = proj.float().cpu(), valid.bool().cpu()
        ids, attention = ids.cpu(), attention.bool().cpu()
        _, t_n, c_n = proj.shape
        signs = torch.tensor([1.0, -1.0])
        signed = (proj.permute(2, 0, 1)[:, None] * signs[None, :, None, None])  # (C, 2, B, T)
        signed = signed.masked_fill(~valid[None, None], float("-inf")).reshape(c_n, 2, -1)
        k = min(self.n, signed.shape[-1])
        values, flat = signed.topk(k, dim=-1)  # (C, 2, k)
        b, t = flat // t_n, flat % t_n
        cols = t[..., None] + torch.arange(-self.left, self.right + 1)  # (C, 2, k, W)
        inside = (cols >= 0) & (cols < t_n)
        cols = cols.clamp(0, t_n - 1)
        rows = b[..., None].expand_as(cols)
        comp = torch.arange(c_n)[:, None, None, None].expand_as(cols)
        sign = signs[None, :, None, None]
        present = inside & attention[rows, cols]
        empty = torch.isinf(values)
        tokens = torch.where(present & ~empty[..., None], ids[rows, cols], -1)
        heat = torch.where(inside & valid[rows, cols] & ~empty[..., None],
                           proj[rows, cols, comp] * sign, float("nan"))
        text = torch.where(empty, -1, b + text_offset)
        pos = torch.where(empty, -1, t)
        return self._keep(values, text, pos, tokens, heat)

    def merge(self, other: TopContexts) -> TopContexts:
        """Fold ``other`` (same components, n and window) into this store; returns self."""
        if (other.values.shape, other.left, other.right) != (self.values.shape, self.left,
                                                              self.right):
            raise ValueError("cannot merge top-context stores of different shapes")
        return self._keep(other.values, other.text, other.pos, other.tokens, other.heat)

    def _keep(self, values: torch.Tensor, text: torch.Tensor, pos: torch.Tensor,
              tokens: torch.Tensor, heat: torch.Tensor) -> TopContexts:
        values = torch.cat([self.values, values], dim=-1)
        text, pos = torch.cat([self.text, text], dim=-1), torch.cat([self.pos, pos], dim=-1)
        tokens, heat = torch.cat([self.tokens, tokens], dim=2), torch.cat([self.heat, heat], 2)
        # Order by value, ties by (text, position): the result does not depend on the order in
        # which batches or shards arrive.
        key = text * (int(pos.max()) + 2) + pos
        order = torch.argsort(key, dim=-1, stable=True)
        values, text, pos = (x.gather(-1, order) for x in (values, text, pos))
        index = order[..., None].expand(*order.shape, tokens.shape[-1])
        tokens, heat = tokens.gather(2, index), heat.gather(2, index)
        order = torch.argsort(values, dim=-1, descending=True, stable=True)[..., : self.n]
        self.values, self.text, self.pos = (x.gather(-1, order) for x in (values, text, pos))
        index = order[..., None].expand(*order.shape, tokens.shape[-1])
        self.tokens, self.heat = tokens.gather(2, index), heat.gather(2, index)
        return self

    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        return ({"values": self.values, "text": self.text, "pos": self.pos,
                 "tokens": self.tokens, "heat": self.heat},
                {"left": str(self.left), "right": str(self.right)})

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict[str, str]
                     ) -> TopContexts:
        return cls(int(meta["left"]), int(meta["right"]), tensors["values"], tensors["text"],
                   tensors["pos"], tensors["tokens"], tensors["heat"])

    def decoded(self, tokenizer: Any) -> list[dict[str, list[dict[str, Any]]]]:
        """JSON-able rows: per component ``{"positive": [...], "negative": [...]}``, each entry
        ``{"value", "text_index", "position", "tokens", "heat", "center"}`` (``tokens`` decoded
        one by one, ``center`` the index of the top position in them; heat null where the
        position does not count)."""
        out = []
        for c in range(self.values.shape[0]):
            per: dict[str, list[dict[str, Any]]] = {}
            for s, sign in enumerate(SIGNS):
                rows = []
                for j in range(self.n):
                    if int(self.text[c, s, j]) < 0:
                        continue
                    keep = self.tokens[c, s, j] >= 0
                    ids = self.tokens[c, s, j][keep].tolist()
                    heat = self.heat[c, s, j][keep].tolist()
                    rows.append({
                        "value": round(float(self.values[c, s, j]), 5),
                        "text_index": int(self.text[c, s, j]),
                        "position": int(self.pos[c, s, j]),
                        "tokens": decode_tokens(tokenizer, ids),
                        "heat": [None if h != h else round(h, 4) for h in heat],
                        "center": int(keep[: self.left].sum()),
                    })
                per[sign] = rows
            out.append(per)
        return out
