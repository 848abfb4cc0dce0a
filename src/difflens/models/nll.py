"""Next-token cross-entropy from hidden states, unembedded in chunks (no B×T×V logits).

Shared by ADL's causal test and the offline coherence grader's perplexity: with a 262k-token
vocabulary, full logits of a batch are gigabytes, and unembedding one text at a time streams
the whole head per text; chunks of valid positions across texts do neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from difflens.models.arch import Architecture

# Logit elements per unembedding chunk of the generic path (32M floats = 128 MB).
CHUNK_ELEMENTS = 1 << 25
# Logit elements per (positions × vocabulary) tile of the fast path: 4M floats = 16 MB stays in
# a CPU's last-level cache between the matmul and the log-sum-exp; GPUs take bigger tiles.
TILE_ELEMENTS_CPU = 1 << 22
TILE_ELEMENTS_GPU = 1 << 26
_MAX_POSITIONS = 16_384  # positions per pass over the vocabulary (bounds the running sums)
_MIN_TILE = 1024  # vocabulary rows per tile at least (small tiles waste the matmul)


def token_ce(
    arch: Architecture, hidden: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Summed next-token cross-entropy per row, from pre-final-norm hidden states.

    Only positions whose next token is real (mask 1) are unembedded.  With a plain linear
    unembedding the vocabulary is walked in tiles with a running log-sum-exp, so the head's
    weights are read once per call and no ``positions × vocab`` tensor exists (on gemma-3-270m,
    a 262k vocabulary, 1.4× faster on CPU than whole-vocabulary chunks); any other unembedding
    (e.g. a LoRA-wrapped head) goes through ``arch.logits`` in chunks of ``CHUNK_ELEMENTS``.

    Args:
        hidden: ``(R, T, d)``; tokens, mask: ``(R, T)``.
    Returns:
        ``(R,)`` float64 sums of −log p(token_{t+1} | ≤ t) over valid t.
    """
    valid = mask[:, 1:].to(hidden.device).bool()
    rows, cols = valid.nonzero(as_tuple=True)
    h = hidden[:, :-1][rows, cols]  # (P, d)
    y = tokens[:, 1:].to(hidden.device)[rows, cols]  # (P,)
    if type(arch.unembed) is torch.nn.Linear:
        losses = torch.cat([_tiled_ce(arch, h[s : s + _MAX_POSITIONS], y[s : s + _MAX_POSITIONS])
                            for s in range(0, h.shape[0], _MAX_POSITIONS)]) if len(h) else \
            torch.empty(0, device=hidden.device)
    else:
        losses = _chunked_ce(arch, h, y)
    return torch.zeros(hidden.shape[0], dtype=torch.float64, device=hidden.device).index_add_(
        0, rows, losses.double()
    )


def _softcap(z: torch.Tensor, cap: float | None) -> torch.Tensor:
    return torch.tanh(z / cap) * cap if cap else z


def _tiled_ce(arch: Architecture, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(P,)`` float32 CE of targets ``y`` from hidden ``h (P, d)``: online log-sum-exp over
    vocabulary tiles of ``arch.unembed`` (a plain ``nn.Linear``)."""
    weight, bias = arch.unembed.weight, arch.unembed.bias
    normed = arch.final_norm(h)
    budget = TILE_ELEMENTS_CPU if h.device.type == "cpu" else TILE_ELEMENTS_GPU
    tile = max(_MIN_TILE, budget // max(1, h.shape[0]))
    target = (normed * weight[y]).sum(-1) + (bias[y] if bias is not None else 0)
    target = _softcap(target.float(), arch.logit_softcap)
    run_max = torch.full((h.shape[0],), -torch.inf, device=h.device)
    run_sum = torch.zeros(h.shape[0], device=h.device)
    for v in range(0, weight.shape[0], tile):
        z = torch.nn.functional.linear(
            normed, weight[v : v + tile], None if bias is None else bias[v : v + tile])
        z = _softcap(z.float(), arch.logit_softcap)
        new_max = torch.maximum(run_max, z.amax(1))
        run_sum = run_sum * torch.exp(run_max - new_max) + torch.exp(z - new_max[:, None]).sum(1)
        run_max = new_max
    return run_max + torch.log(run_sum) - target


def _chunked_ce(arch: Architecture, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Generic path: ``arch.logits`` on chunks of positions (whole vocabulary per chunk)."""
    vocab = getattr(arch.unembed, "out_features", None) or arch.unembed.weight.shape[0]
    step = max(1, CHUNK_ELEMENTS // vocab)
    losses = torch.empty(h.shape[0], device=h.device)
    for s in range(0, h.shape[0], step):
        logits = arch.logits(h[s : s + step]).float()
        # logsumexp − target logit: the same value as F.cross_entropy without writing a
        # second (chunk × vocab) log-softmax tensor.
        target = logits.gather(1, y[s : s + step, None])[:, 0]
        losses[s : s + step] = torch.logsumexp(logits, dim=-1) - target
    return losses
