"""Per-position KL between the two models' next-token distributions, without P × V tensors.

Pure tensor functions: hidden states in, per-position divergences and per-token sums out.

**Single sweep (the KL).**  The vocabulary is walked in tiles of ``t`` rows of the LM head; for
each position the sweep keeps, in float64, an online softmax of both sides (running maxima
``m_ft``, ``m_base``; ``S_ft = Σ e^{z_ft − m_ft}``, ``S_base``) and the two weighted sums
``A = Σ e^{z_ft − m_ft}(z_ft − z_base)`` and ``B = Σ e^{z_base − m_base}(z_base − z_ft)``,
rescaled whenever a maximum moves.  At the end ``lse = m + log S`` and

    KL(p_ft‖p_base) = A/S_ft − lse_ft + lse_base,   KL(p_base‖p_ft) = B/S_base − lse_base + lse_ft

(shift-invariant: any constant added to a side's logits cancels).  Tiles are float32, the
per-position accumulators float64.  A model paired with itself gives A = B = 0 and equal
normalisers, so exactly 0.

**The fingerprint** ``F_v = Σ_positions p_ft(v)·(log p_ft(v) − log p_base(v))`` (it sums to
the corpus' total forward KL) needs each position's *final* normalisers before any tile's
probabilities are known, so it is a second sweep over the same tiles, recomputing the tile
logits from the kept normalised states ``(P, d)``.  No exact single-sweep form exists: a tile's
contribution ``Σ_p e^{z_pv − lse_p}(…)`` weighs each position by a factor known only at the
end, so it cannot be rescaled afterwards without keeping ``P × V`` values.  Measured on the
embedded pair (benchmarks/kl.py; 4 texts × 32 tokens, 2 busy CPU cores), against a floor of two
plain forwards with the LM head over the same tokens: the single sweep costs 0.59× the floor
(the cache-sized tiles beat the model's own full-vocabulary head), the exact fingerprint's
second sweep brings it to 0.81×, the generic chunked path is 0.97× and the naive way (full
logits of both models, ``kl_div``) 0.89× with +680 MB peak memory.  So the fingerprint is
exact and on by default; ``--no-fingerprint`` skips its sweep.

**Heads.**  A plain ``nn.Linear`` head is tiled (its weight rows sliced, bias and the family's
final logit softcap applied per tile); any other head — a LoRA-wrapped ``lm_head`` — goes
through ``arch.logits`` on chunks of positions with the whole vocabulary per chunk, which is
exact in one sweep (fingerprint included) and bounded by ``CHUNK_ELEMENTS``.  The two sides'
tiles are separate matmuls even when the head is shared: stacking both sides into one matmul
saves little on a cache-sized tile and could round the two sides' rows differently, which
would break the exact zero of identical models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from difflens.models.nll import TILE_ELEMENTS_CPU, TILE_ELEMENTS_GPU

if TYPE_CHECKING:
    from difflens.models.arch import Architecture

#: Logit elements per side per chunk of the generic (non-Linear head) path: 8M floats, 32 MB.
CHUNK_ELEMENTS = 1 << 23
MIN_TILE = 1024  # vocabulary rows per tile at least (small tiles waste the matmul)


@dataclass
class PositionKL:
    """Per-position results of one sweep, for ``P`` positions.

    ``forward``, ``reverse``: ``(P,)`` float64 KL(p_ft‖p_base), KL(p_base‖p_ft) in nats;
    ``lse_ft``, ``lse_base``: ``(P,)`` float64 log-normalisers over the shared vocabulary;
    ``top_ft``, ``top_base``: ``(P,)`` int64 each model's most likely next token.
    """

    forward: torch.Tensor
    reverse: torch.Tensor
    lse_ft: torch.Tensor
    lse_base: torch.Tensor
    top_ft: torch.Tensor
    top_base: torch.Tensor

    @property
    def symmetric(self) -> torch.Tensor:
        """``(P,)`` the mean of the two directions (half Jeffreys' divergence)."""
        return (self.forward + self.reverse) / 2


@dataclass
class TokenSums:
    """Per-vocabulary-entry sums over positions (the fingerprint), ``(V,)`` float64 each.

    ``contribution``: Σ p_ft(v)(log p_ft(v) − log p_base(v)); ``p_ft``, ``p_base``: Σ p(v).
    """

    contribution: torch.Tensor
    p_ft: torch.Tensor
    p_base: torch.Tensor

    @classmethod
    def zeros(cls, vocab: int) -> TokenSums:
        return cls(*(torch.zeros(vocab, dtype=torch.float64) for _ in range(3)))

    def add(self, other: TokenSums) -> TokenSums:
        for name in ("contribution", "p_ft", "p_base"):
            getattr(self, name).add_(getattr(other, name).to(getattr(self, name).device))
        return self


def tiled_head(arch: Architecture) -> bool:
    """Whether ``arch``'s head can be sliced into vocabulary tiles (a plain ``nn.Linear``)."""
    return type(arch.unembed) is torch.nn.Linear


def tile_size(positions: int, device: torch.device) -> int:
    """Vocabulary rows per tile: ``positions × rows`` logits fit the cache-sized budget of
    :mod:`difflens.models.nll` (16 MB on CPU), at least :data:`MIN_TILE`."""
    budget = TILE_ELEMENTS_CPU if device.type == "cpu" else TILE_ELEMENTS_GPU
    return max(MIN_TILE, budget // max(1, positions))


def _tile_logits(arch: Architecture, normed: torch.Tensor, start: int, stop: int
                 ) -> torch.Tensor:
    """``(P, stop − start)`` float32 logits of vocabulary rows ``start:stop``, softcapped."""
    weight, bias = arch.unembed.weight, arch.unembed.bias
    z = torch.nn.functional.linear(normed, weight[start:stop],
                                   None if bias is None else bias[start:stop]).float()
    cap = arch.logit_softcap
    return torch.tanh(z / cap) * cap if cap else z


@torch.inference_mode()
def kl_sweep(arch_ft: Architecture, arch_base: Architecture, h_ft: torch.Tensor,
             h_base: torch.Tensor, vocab: int, tile: int | None = None) -> PositionKL:
    """Forward and reverse KL per position in one sweep over vocabulary tiles.

    Args:
        h_ft, h_base: ``(P, d)`` last-layer residual states (before the final norm).
        vocab: shared vocabulary size V (rows ``0..V-1`` of both heads).
        tile: vocabulary rows per tile (default :func:`tile_size`).
    """
    nf, nb = arch_ft.final_norm(h_ft), arch_base.final_norm(h_base.to(h_ft.device))
    p, dev = nf.shape[0], nf.device
    tile = tile or tile_size(p, dev)
    f64 = torch.float64
    m_f = torch.full((p,), -torch.inf, device=dev)
    m_b = torch.full((p,), -torch.inf, device=dev)
    s_f, s_b, a, b = (torch.zeros(p, dtype=f64, device=dev) for _ in range(4))
    top_f = torch.zeros(p, dtype=torch.long, device=dev)
    top_b = torch.zeros(p, dtype=torch.long, device=dev)
    for v in range(0, vocab, tile):
        stop = min(v + tile, vocab)
        zf = _tile_logits(arch_ft, nf, v, stop)
        zb = _tile_logits(arch_base, nb, v, stop).to(dev)
        d = zf - zb
        for z, m, s, acc, top, sign in ((zf, m_f, s_f, a, top_f, 1.0),
                                        (zb, m_b, s_b, b, top_b, -1.0)):
            t_max, t_arg = z.max(1)
            new = torch.maximum(m, t_max)
            scale = torch.exp((m - new).double())  # 0 on the first tile (m = -inf)
            w = torch.exp(z - new[:, None])
            s.mul_(scale).add_(w.sum(1).double())
            acc.mul_(scale).add_((w * d).sum(1).double(), alpha=sign)
            moved = t_max > m  # first maximum wins ties, as argmax does
            top.copy_(torch.where(moved, t_arg + v, top))
            m.copy_(new)
    lse_f, lse_b = m_f.double() + torch.log(s_f), m_b.double() + torch.log(s_b)
    forward = (a / s_f - lse_f + lse_b).clamp_min_(0)  # ≥ 0 up to rounding
    reverse = (b / s_b - lse_b + lse_f).clamp_min_(0)
    return PositionKL(forward, reverse, lse_f, lse_b, top_f, top_b)


@torch.inference_mode()
def fingerprint_sweep(arch_ft: Architecture, arch_base: Architecture, h_ft: torch.Tensor,
                      h_base: torch.Tensor, lse_ft: torch.Tensor, lse_base: torch.Tensor,
                      vocab: int, tile: int | None = None) -> TokenSums:
    """The second sweep: per-token sums over the ``P`` positions, given their normalisers.

    Args:
        h_ft, h_base: ``(P, d)`` as for :func:`kl_sweep`; lse_ft, lse_base: ``(P,)`` from it.
    Returns:
        :class:`TokenSums` of ``(V,)`` float64 on the states' device.
    """
    nf, nb = arch_ft.final_norm(h_ft), arch_base.final_norm(h_base.to(h_ft.device))
    dev = nf.device
    tile = tile or tile_size(nf.shape[0], dev)
    gap = (lse_ft - lse_base).float()[:, None]  # log p_ft − log p_base = z_ft − z_base − gap
    lf = lse_ft.float()[:, None]
    lb = lse_base.float()[:, None]
    sums = TokenSums(*(torch.zeros(vocab, dtype=torch.float64, device=dev) for _ in range(3)))
    for v in range(0, vocab, tile):
        stop = min(v + tile, vocab)
        zf = _tile_logits(arch_ft, nf, v, stop)
        zb = _tile_logits(arch_base, nb, v, stop).to(dev)
        pf = torch.exp(zf - lf)
        sums.contribution[v:stop] = (pf * (zf - zb - gap)).sum(0, dtype=torch.float64)
        sums.p_ft[v:stop] = pf.sum(0, dtype=torch.float64)
        sums.p_base[v:stop] = torch.exp(zb - lb).sum(0, dtype=torch.float64)
    return sums


@torch.inference_mode()
def kl_chunked(arch_ft: Architecture, arch_base: Architecture, h_ft: torch.Tensor,
               h_base: torch.Tensor, vocab: int, fingerprint: bool = True,
               chunk: int | None = None) -> tuple[PositionKL, TokenSums | None]:
    """The generic path: ``arch.logits`` on chunks of positions, whole vocabulary per chunk
    (any head, e.g. LoRA-wrapped); exact in one sweep, fingerprint included.

    Args:
        h_ft, h_base: ``(P, d)``; chunk: positions per chunk (default: ``CHUNK_ELEMENTS / V``).
    """
    p, dev = h_ft.shape[0], h_ft.device
    chunk = chunk or max(1, CHUNK_ELEMENTS // vocab)
    out = {name: torch.zeros(p, dtype=torch.float64, device=dev)
           for name in ("forward", "reverse", "lse_ft", "lse_base")}
    tops = {name: torch.zeros(p, dtype=torch.long, device=dev) for name in ("ft", "base")}
    sums = TokenSums(*(torch.zeros(vocab, dtype=torch.float64, device=dev) for _ in range(3))) \
        if fingerprint else None
    for s in range(0, p, chunk):
        zf = arch_ft.logits(h_ft[s:s + chunk])[..., :vocab].float()
        zb = arch_base.logits(h_base[s:s + chunk].to(dev))[..., :vocab].float().to(dev)
        lf, lb = torch.log_softmax(zf, -1), torch.log_softmax(zb, -1)
        pf, pb = lf.exp(), lb.exp()
        diff = lf - lb
        contrib = pf * diff
        out["forward"][s:s + chunk] = contrib.sum(1, dtype=torch.float64).clamp_min(0)
        out["reverse"][s:s + chunk] = (-(pb * diff)).sum(1, dtype=torch.float64).clamp_min(0)
        out["lse_ft"][s:s + chunk] = torch.logsumexp(zf, -1).double()
        out["lse_base"][s:s + chunk] = torch.logsumexp(zb, -1).double()
        tops["ft"][s:s + chunk] = zf.argmax(-1)
        tops["base"][s:s + chunk] = zb.argmax(-1)
        if sums is not None:
            sums.contribution += contrib.sum(0, dtype=torch.float64)
            sums.p_ft += pf.sum(0, dtype=torch.float64)
            sums.p_base += pb.sum(0, dtype=torch.float64)
    kl = PositionKL(out["forward"], out["reverse"], out["lse_ft"], out["lse_base"], tops["ft"],
                    tops["base"])
    return kl, sums


def position_kl(arch_ft: Architecture, arch_base: Architecture, h_ft: torch.Tensor,
                h_base: torch.Tensor, vocab: int, fingerprint: bool = True,
                path: str | None = None) -> tuple[PositionKL, TokenSums | None]:
    """KL per position (and the fingerprint sums when asked) by the best exact path.

    ``path``: ``"tiled"`` (plain linear heads: one sweep for the KL, a second for the
    fingerprint), ``"chunked"`` (any head) or None to choose (tiled when both heads allow).
    """
    if path is None:
        path = "tiled" if tiled_head(arch_ft) and tiled_head(arch_base) else "chunked"
    if path == "chunked":
        return kl_chunked(arch_ft, arch_base, h_ft, h_base, vocab, fingerprint)
    kl = kl_sweep(arch_ft, arch_base, h_ft, h_base, vocab)
    sums = fingerprint_sweep(arch_ft, arch_base, h_ft, h_base, kl.lse_ft, kl.lse_base, vocab) \
        if fingerprint else None
    return kl, sums
