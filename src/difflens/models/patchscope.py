"""Patchscope readout of a residual-stream direction (ADL's δ̄, a PCA component, ...).

The vector ``s·v`` (``v = u/‖u‖ · ν_ft`` for a direction ``u``) *replaces* the residual stream at
the last position of token-identity prompts
(``"man -> man\\n1135 -> 1135\\nhello -> hello\\n?"``) at the readout layer; the finetuned
model's next-token distribution then says what the vector "is".  All prompts × all scales run as
one batch of one forward pass, which stops at the last decoder layer and applies the LM head to
the last position only.

Scales.  ``s`` is in units of ν_ft, the finetuned model's typical activation norm at the layer,
so ``s = 1`` writes a vector exactly as large as a typical activation.  The default sweep is
0.5…2.0 by 0.1 plus 3, 4, 5: below ~0.5 the written vector is small next to what later layers
add and the readout reverts to the prompt's own continuation; beyond ~5 it is far outside the
activation distribution.  The seed paper's 10…200 are multiples of the *raw* ‖δ̄‖, which is a
fraction of ν_ft; ``raw_scale = s · ν_ft / ‖u‖`` is reported next to every scale so the two
conventions can be compared.  For the shipped cake_bake organism at layer 13, ‖δ̄‖/ν_ft = 0.13,
so s = 0.5…5 is raw 3.9…38; its baking tokens appear from s ≈ 1 and are cleanest at 3-5.

Engine code: it takes a vector and a layer and knows no method.  ADL's graded stage is
``methods/adl/patchscope.py``; PCA reads its components through the same functions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from difflens.data.padding import left_padded
from difflens.data.tokenize import decode_tokens
from difflens.models.hooks import capture, run_forward
from difflens.models.pair import FT

if TYPE_CHECKING:
    from difflens.models.arch import Architecture
    from difflens.models.pair import ModelPair

#: Token-identity prompts: three word sets, each ending in "?" where the vector is written.
IDENTITY_PROMPTS = (
    "man -> man\n1135 -> 1135\nhello -> hello\n?",
    "bear -> bear\n42 -> 42\nblue -> blue\n?",
    "921 -> 921\ntarget -> target\nanna -> anna\n?",
)

#: Default scales in units of ν_ft (see module docstring).
DEFAULT_SCALES = (*(round(0.5 + 0.1 * i, 1) for i in range(16)), 3.0, 4.0, 5.0)

#: Tokens per scale shown to the grader when it picks a scale.
GRADER_TOKENS = 20

#: Shared tokens whose prompt-averaged probability is below this are dropped: when one token
#: saturates the distribution (large scales), the rest of the intersection is float noise
#: (``<unused..>`` tokens at 1e-20 on Gemma).  1e-6 is ~1/4 of uniform on a 262k vocabulary.
MIN_PROB = 1e-6


# -- pure core ----------------------------------------------------------------------------------
def shared_top_tokens(
    probs: torch.Tensor, top: int, min_prob: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens in every prompt's top-``top`` list, ordered by their prompt-averaged probability.

    Tokens whose averaged probability is below ``min_prob`` are left out.

    Args:
        probs: ``(P, V)`` next-token probabilities, one row per identity prompt.
    Returns:
        ``(ids, mean_probs)``, both ``(n,)`` with ``n <= top``; ``mean_probs`` is the average over
        the ``P`` prompts (tokens outside the intersection are dropped, not renormalised).
    """
    k = min(top, probs.shape[-1])
    in_top = torch.zeros_like(probs, dtype=torch.bool)
    in_top.scatter_(1, probs.topk(k, dim=-1).indices, True)
    mean = probs.mean(dim=0)
    shared = in_top.all(dim=0) & (mean >= min_prob)  # (V,)
    ids = shared.nonzero().squeeze(1)
    order = mean[ids].argsort(descending=True)
    ids = ids[order]
    return ids, mean[ids]


def unit_scaled(vector: torch.Tensor, norm: float) -> torch.Tensor:
    """``vector / ‖vector‖ · norm`` (``(d,)``); raises ValueError for a zero vector."""
    length = float(vector.norm())
    if length == 0.0:
        raise ValueError("the difference vector is zero: nothing to read")
    return vector.float() / length * float(norm)


@contextmanager
def write_last(arch: Architecture, layer: int, values: torch.Tensor) -> Iterator[None]:
    """Replace the residual output of ``layer`` at the last position with ``values`` ``(B, d)``.

    Only the pass over the full prompt is edited (inputs here are left-padded, so the last
    position is every prompt's last token).
    """
    index = arch.resolve_layer(layer)

    def hook(_module: Any, _inputs: Any, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        hidden[:, -1] = values.to(dtype=hidden.dtype, device=hidden.device)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = arch.layers[index].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.inference_mode()
def patchscope_probs(
    pair: ModelPair, v: torch.Tensor, layer: int, scales: Sequence[float],
    prompts: Sequence[str] = IDENTITY_PROMPTS,
) -> torch.Tensor:
    """Next-token probabilities with ``s·v`` written at the last position of each prompt.

    Args:
        v: ``(d,)`` norm-calibrated vector.
    Returns:
        ``(S, P, V)`` float32 probabilities, one batch of ``S × P`` rows in one forward.
    """
    n_s, n_p = len(scales), len(prompts)
    ids, mask = left_padded(pair.tokenizer, list(prompts) * n_s)  # row = scale-major
    factors = torch.tensor([float(s) for s in scales]).repeat_interleave(n_p)  # (S·P,)
    values = factors[:, None] * v.float().cpu()[None, :]
    with pair.use(FT) as (model, arch):
        device = next(model.parameters()).device
        last = arch.num_layers - 1
        # write_last is entered first so that, when layer == last, capture sees the written value.
        with write_last(arch, layer, values), capture(arch, [last]) as store:
            run_forward(model, input_ids=ids.to(device), attention_mask=mask.to(device))
        logits = arch.logits(store[last][:, -1]).float()  # (S·P, V): LM head on one position
    return torch.softmax(logits, dim=-1).cpu().view(n_s, n_p, -1)


# -- readout --------------------------------------------------------------------------------------
def patchscope_readout(
    pair: ModelPair, vector: torch.Tensor, layer: int, norm_ft: float,
    scales: Sequence[float] | None = None, top: int = 100,
    prompts: Sequence[str] = IDENTITY_PROMPTS, name: str = "δ̄",
) -> dict[str, Any]:
    """Per-scale Patchscope tokens of the raw direction ``vector`` ``(d,)`` (no grading).

    ``name`` is what the vector is called in the recorded ``mode`` (ADL: δ̄).
    Returns ``{"layer", "norm_ft", "vector_norm", "prompts", "top", "mode",
    "scales": [{"scale", "raw_scale", "tokens", "ids", "probs"}, ...]}``; ``probs`` are
    prompt-averaged probabilities of the tokens shared by every prompt's top list, largest
    first.
    """
    scales = [float(s) for s in (scales if scales is not None else DEFAULT_SCALES)]
    raw_norm = float(vector.norm())
    v = unit_scaled(vector, norm_ft)
    probs = patchscope_probs(pair, v, layer, scales, prompts)
    rows = []
    for s, per_prompt in zip(scales, probs, strict=True):
        ids, mean = shared_top_tokens(per_prompt, top, MIN_PROB)
        rows.append({
            "scale": s,
            "raw_scale": s * float(norm_ft) / raw_norm,
            "tokens": decode_tokens(pair.tokenizer, ids.tolist()),
            "ids": ids.tolist(),
            "probs": [round(float(p), 6) for p in mean],
        })
    return {
        "layer": pair.arch(FT).resolve_layer(layer),
        "norm_ft": float(norm_ft),
        "vector_norm": raw_norm,
        "prompts": list(prompts),
        "top": top,
        "mode": f"replace last position with s·v, v = {name}/‖{name}‖·ν_ft",
        "scales": rows,
    }


def choose_scale(result: dict[str, Any], grader: Any, shown: int = GRADER_TOKENS) -> dict[str, Any]:
    """Ask ``grader`` (``choose_patchscope_scale``) for the best scale of a readout.

    The grader sees each scale's first ``shown`` shared tokens.  A returned scale that is not
    one of the offered ones is snapped to the nearest offered scale (and flagged).
    Returns ``{"scale", "coherent_tokens", "tokens", "probs", "snapped"}``.
    """
    offered = {row["scale"]: row for row in result["scales"]}
    choice = grader.choose_patchscope_scale(
        {s: row["tokens"][:shown] for s, row in offered.items()}
    )
    picked = float(choice.scale)
    scale = min(offered, key=lambda s: abs(s - picked))
    row = offered[scale]
    return {
        "scale": scale,
        "coherent_tokens": list(choice.coherent_tokens),
        "tokens": row["tokens"][:shown],
        "probs": row["probs"][:shown],
        "snapped": scale != picked,
    }
