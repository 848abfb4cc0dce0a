"""Patchscope stage of ADL (seed 003): δ̄ read through Patchscope over a sweep of scales, and
the grader's choice of scale.

The readout itself (identity prompts, scales in units of ν_ft, the batched forward) is engine
code in :mod:`difflens.models.patchscope`; this module only runs it on δ̄ and grades it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from difflens.models.patchscope import choose_scale, patchscope_readout

if TYPE_CHECKING:
    import torch

    from difflens.models.pair import ModelPair


def patchscope_stage(
    pair: ModelPair, vector: torch.Tensor, layer: int, norm_ft: float, grader: Any,
    scales: Sequence[float] | None = None, top: int = 100,
) -> dict[str, Any]:
    """Patchscope of δ̄ at ``layer`` over a sweep of scales, graded.

    Args:
        vector: raw δ̄ ``(d,)`` (rescaled here to norm ``norm_ft``).
        norm_ft: ν_ft at ``layer``.
        grader: anything with ``choose_patchscope_scale(dict[float, list[str]]) -> ScaleChoice``.
        scales: multiples of ν_ft (default :data:`DEFAULT_SCALES`).
        top: size of each prompt's top list intersected across prompts.
    Returns:
        ``{"layer", "norm_ft", "vector_norm", "prompts", "top", "mode",
        "scales": [{"scale", "raw_scale", "tokens", "ids", "probs"}, ...],
        "chosen": {"scale", "coherent_tokens", "tokens", "probs", "snapped"}, "grader"}``;
        ``probs`` are prompt-averaged probabilities of the tokens shared by every prompt's top
        list, largest first.  A zero ``vector`` gives ``{"skipped": reason, ...}`` instead.
    """
    if float(vector.norm()) == 0.0:
        return {"skipped": "δ̄ is zero at this layer (the models do not differ)",
                "layer": layer, "norm_ft": float(norm_ft), "vector_norm": 0.0}
    result = patchscope_readout(pair, vector, layer, norm_ft, scales, top)
    result["chosen"] = choose_scale(result, grader)
    describe = getattr(grader, "describe", None)
    result["grader"] = describe() if callable(describe) else {"backend": type(grader).__name__}
    return result
